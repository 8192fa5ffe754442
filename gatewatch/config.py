"""The configuration file: typed, frozen, unknown keys rejected, every error reported with its field path.

A file declares an `edge` section (the gateway), a `balancer` section (pools and, optionally, its own
listeners), or both. A route's `upstream` names either a pool of this file's balancer section (the balancer runs
in-process) or an entry of `edge.upstreams` (a URL: a separate `gatewatch` balancer, or any upstream that
balances itself).

Primitives: `GatewatchConfig` (the root), `config_version(cfg)` (a short hash naming it in telemetry),
`load_config(path) -> GatewatchConfig` raising `ConfigError`, whose
`.problems` lists `field.path: message` strings: schema problems (types, unknown keys, ranges) first; when the
schema holds, the cross-reference problems (unknown upstreams, duplicates, address conflicts), sections in file
order. The parts each layer owns are defined there: routes in `gatewatch.edge.config`, pools and retries in
`gatewatch.balancer.config`, telemetry in `gatewatch.telemetry.config`.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import re
import ssl
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, Field, SecretStr, ValidationError, model_validator

from gatewatch.balancer.config import PoolConfig
from gatewatch.config_problems import closest, pydantic_problems
from gatewatch.edge.config import RemoteUpstreamConfig, RouteConfig
from gatewatch.io.tls import served_certificate
from gatewatch.schema import NAME_PATTERN, Strict
from gatewatch.telemetry.config import TelemetryConfig


def parse_address(text: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port). Raises ValueError with a message fit for a config error."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([^:\[\]\s]+):(\d{1,5})", text)
    if not m:
        raise ValueError(f"expected 'host:port', got {text!r}")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
    if int(port) > 65535:
        raise ValueError(f"port {port} is out of range 0-65535")
    return host, int(port)


def _checked_networks(v: tuple[str, ...]) -> tuple[str, ...]:
    for net in v:
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ValueError(f"{net!r} is not an IP network (e.g. 10.0.0.0/8 or 192.0.2.7)") from None
    return v


def _checked_address(v: str) -> str:
    parse_address(v)
    return v


Address = Annotated[str, AfterValidator(_checked_address)]


class ListenerCertificateConfig(Strict):
    cert_file: str  # PEM: the certificate, then its chain
    key_file: str  # PEM private key (unencrypted)

    @model_validator(mode="after")
    def _loads(self):
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(self.cert_file, self.key_file)
            served_certificate(self.cert_file)
        except (OSError, ssl.SSLError, ValueError) as err:
            raise ValueError(f"cannot load cert_file {self.cert_file!r} with key_file {self.key_file!r}: "
                             f"{getattr(err, 'strerror', None) or err}") from None
        return self


class ListenerTLSConfig(Strict):
    """TLS termination on a listener (docs/configuration.md "TLS"). The first certificate is served when the
    client sends no SNI or a name none of them carries; the others are chosen by the DNS names in their SAN."""

    certificates: tuple[ListenerCertificateConfig, ...] = Field(min_length=1)
    min_version: Literal["1.2", "1.3"] = "1.2"  # RFC 9325 §3.1.1: never below TLS 1.2
    handshake_timeout_s: float = Field(default=10.0, gt=0, le=300)  # a client that stalls its handshake is closed
    # Client certificates (mTLS): `optional` verifies one when sent, `required` refuses a handshake without one.
    client_auth: Literal["none", "optional", "required"] = "none"
    client_ca_file: str | None = None  # the CAs client certificates must chain to
    # The verified client identity, forwarded upstream (Envoy's X-Forwarded-Client-Cert format); whatever a client
    # sends under this name is always removed. null: not forwarded.
    client_cert_header: str | None = Field(default="X-Forwarded-Client-Cert", pattern=r"^[A-Za-z0-9-]{1,64}$")

    @model_validator(mode="after")
    def _client_ca(self):
        if self.client_auth != "none" and self.client_ca_file is None:
            raise ValueError(f"client_auth {self.client_auth!r} needs client_ca_file (the CAs to verify against)")
        if self.client_auth == "none" and self.client_ca_file is not None:
            raise ValueError("client_ca_file is set but client_auth is 'none': set client_auth to optional or "
                             "required, or drop client_ca_file")
        if self.client_ca_file is not None:
            try:
                ssl.create_default_context(cafile=self.client_ca_file)
            except (OSError, ssl.SSLError) as err:
                raise ValueError(f"client_ca_file: cannot load {self.client_ca_file!r}: "
                                 f"{getattr(err, 'strerror', None) or err}") from None
        return self


class ListenerHTTP2Config(Strict):
    """HTTP/2 on a listener (docs/http2.md): h2 by ALPN on TLS listeners, h2c by prior knowledge on plaintext
    ones. The limits are advertised in SETTINGS (RFC 9113 §6.5.2) and enforced."""

    enabled: bool = True
    max_concurrent_streams: int = Field(default=100, ge=1, le=10000)  # over it: REFUSED_STREAM
    max_header_list_size: int = Field(default=16384, ge=1024, le=1 << 20)  # over it: 431 on the stream
    initial_window_size: int = Field(default=65535, ge=1024, le=2**31 - 1)  # per stream, request body buffered
    connection_window_size: int = Field(default=1 << 20, ge=65535, le=2**31 - 1)  # all streams together
    max_frame_size: int = Field(default=16384, ge=16384, le=2**24 - 1)  # RFC 9113 §6.5.2 bounds
    # Rapid reset (CVE-2023-44487): streams the client resets (or we refuse) within reset_window_s; over
    # max_resets the connection ends with GOAWAY ENHANCE_YOUR_CALM.
    max_resets: int = Field(default=200, ge=1)
    reset_window_s: float = Field(default=10.0, gt=0, le=3600)
    max_streams_per_s: int = Field(default=5000, ge=1)  # new streams per connection and second; over: refused


class ListenerConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    address: Address
    # What to do with an inbound `traceparent`: continue it, start a new root that links to it, or ignore it.
    # Unset: `link` on edge listeners (a public client neither picks our trace ids nor turns our telemetry off
    # with sampled=00), `continue` on balancer listeners (behind a Gatewatch edge, the trace goes on).
    incoming_trace_context: Literal["continue", "link", "ignore"] | None = None
    # Networks whose inbound trace context is continued whatever the above says (an internal caller, a mesh).
    trusted_trace_sources: Annotated[tuple[str, ...], AfterValidator(_checked_networks)] = ()
    max_header_size: int = Field(default=8190, ge=1024, le=65536)
    # Keep X-Forwarded-Proto/-Host set by a proxy in front (the edge, for a balancer tier); else overwrite them.
    trust_forwarded_headers: bool = False
    # Answer with `traceresponse` (W3C Trace Context level 2) so a client can quote its trace id.
    trace_response_header: bool = True
    # What this listener refuses or normalises so routing and the upstream never read a request differently
    # (docs/refusals.md): an encoded slash or backslash in the path (%2F, %5C) is refused (400), unescaped into a
    # separator before routing, or kept encoded (unsafe if an upstream decodes it); `//` merged into `/`; a path
    # parameter (`;`) refused or kept; a header name with `_` (an alias of the `-` one for CGI-style backends)
    # dropped, refused or allowed.
    escaped_slashes: Literal["reject", "unescape", "keep"] = "reject"
    merge_slashes: bool = True
    path_parameters: Literal["reject", "keep"] = "reject"
    headers_with_underscores: Literal["drop", "reject", "allow"] = "drop"
    tls: ListenerTLSConfig | None = None  # terminate TLS (https); absent: plaintext HTTP/1.1
    http2: ListenerHTTP2Config = ListenerHTTP2Config()  # HTTP/2 (h2 by ALPN, h2c by prior knowledge)
    # Bind with SO_REUSEPORT, so that a second `gatewatch run` (of the same user: the kernel refuses another uid)
    # can bind the same address and take over before this one drains (docs/operations.md "Rolling restarts").
    # Off by default: two processes started by mistake on one port would silently share its traffic.
    # `workers` > 1 always sets it (the workers share the port).
    reuse_port: bool = False
    # L4 TCP pass-through (docs/tcp.md), balancer listeners only: `mode: tcp` relays each connection's bytes to an
    # instance of `pool`; the HTTP keys above (but name, address, reuse_port) are then a config error.
    mode: Literal["http", "tcp"] = "http"
    pool: str | None = Field(default=None, pattern=NAME_PATTERN)  # tcp: the balancer pool connections go to
    connect_timeout_s: float = Field(default=5.0, gt=0, le=300)  # tcp: per connect attempt to an instance
    connect_attempts: int = Field(default=3, ge=1, le=10)  # tcp: instances tried (nothing was sent yet: safe)
    idle_timeout_s: float = Field(default=3600.0, gt=0, le=604800)  # tcp: no byte either way this long: closed
    max_connections: int = Field(default=10000, ge=1, le=1_000_000)  # tcp: over it, accepted and reset at once
    proxy_protocol: Literal["none", "v1", "v2"] = "none"  # tcp: HAProxy PROXY protocol header towards instances


# Keys of a listener that only a `mode: tcp` listener reads, and those only an HTTP listener reads.
TCP_LISTENER_KEYS = ("pool", "connect_timeout_s", "connect_attempts", "idle_timeout_s", "max_connections",
                     "proxy_protocol")
HTTP_LISTENER_KEYS = ("incoming_trace_context", "trusted_trace_sources", "max_header_size",
                      "trust_forwarded_headers", "trace_response_header", "escaped_slashes", "merge_slashes",
                      "path_parameters", "headers_with_underscores", "tls", "http2")


def _listener_mode_problems(section: str, i: int, lst: ListenerConfig, pools: dict[str, PoolConfig]) -> list[str]:
    """A listener's keys against its mode: a key the mode ignores is an error (it would silently do nothing)."""
    where = f"{section}.listeners[{i}]"
    out = []
    if lst.mode == "tcp":
        if section != "balancer":
            out.append(f"{where}.mode: a tcp listener relays to a pool of this process: declare it under "
                       "balancer.listeners")
        if lst.pool is None:
            out.append(f"{where}.pool: required with mode: tcp (which pool takes the connections?)")
        elif lst.pool not in pools:
            hint = closest(lst.pool, sorted(pools))
            out.append(f"{where}.pool: unknown pool {lst.pool!r}" + (f"; did you mean {hint!r}?" if hint else ""))
        elif pools[lst.pool].hash_key is not None and pools[lst.pool].hash_key.source != "client_address":
            out.append(f"{where}.pool: pool {lst.pool!r} hashes on {pools[lst.pool].hash_key.describe()}, which a "
                       "TCP connection does not have: set its hash_key.source to client_address")
        out += [f"{where}.{key}: an HTTP listener setting; this listener has mode: tcp (remove it)"
                for key in HTTP_LISTENER_KEYS if key in lst.model_fields_set]
    else:
        out += [f"{where}.{key}: a tcp listener setting; this listener has mode: http (set mode: tcp or remove it)"
                for key in TCP_LISTENER_KEYS if key in lst.model_fields_set]
    return out


class EdgeConfig(Strict):
    listeners: tuple[ListenerConfig, ...] = Field(min_length=1)
    routes: tuple[RouteConfig, ...] = ()
    upstreams: tuple[RemoteUpstreamConfig, ...] = ()


class BalancerConfig(Strict):
    listeners: tuple[ListenerConfig, ...] = ()  # empty: the balancer serves only the edge in this process
    routes: tuple[RouteConfig, ...] = ()  # for requests arriving on the balancer's own listeners
    pools: tuple[PoolConfig, ...] = Field(min_length=1)


# RFC 6750 §2.1 b64token: what a bearer token may contain.
BEARER_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # use with fullmatch
ADMIN_TOKEN_MIN_LENGTH = 16


class AdminConfig(Strict):
    """The admin listener (docs/admin.md). The bearer token is never written in this file: `token_file` (a file
    holding it, re-read when it changes) or `token_env` (an environment variable's name). With a token, every
    POST needs it; with `protect_reads`, every GET too except /healthz and /readyz (probes)."""

    address: Address = "127.0.0.1:9901"
    token_file: str | None = None
    token_env: str | None = Field(default=None, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    protect_reads: bool = False
    # Binding a non-loopback address without a token exposes drain/reload to the network: refused unless this says
    # it is intended (e.g. inside a container network whose admin port is not published).
    allow_remote_without_token: bool = False
    # A link from the admin page's recent decisions and events to the trace, e.g.
    # "https://grafana.example/explore?schemaVersion=1&panes=...{trace_id}...".
    trace_url_template: str | None = Field(default=None, pattern=r"^https?://[^\s]*\{trace_id\}[^\s]*$")

    def token(self) -> str | None:
        """The configured bearer token (read now), or None. Raises ValueError naming the field when it cannot be
        read or is not a usable token."""
        if self.token_file is not None:
            field = "token_file"
            try:
                value = Path(self.token_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as err:
                raise ValueError(f"token_file: cannot read {self.token_file!r}: "
                                 f"{getattr(err, 'strerror', None) or err}") from None
        elif self.token_env is not None:
            field = "token_env"
            value = os.environ.get(self.token_env, "").strip()
            if not value:
                raise ValueError(f"token_env: the environment variable {self.token_env} is not set or empty")
        else:
            return None
        if not BEARER_TOKEN.fullmatch(value):
            raise ValueError(f"{field}: the token must be one RFC 6750 b64token (letters, digits, -._~+/ and "
                             "trailing =); `gatewatch apikey generate` makes one")
        if len(value) < ADMIN_TOKEN_MIN_LENGTH:
            raise ValueError(f"{field}: the token is {len(value)} characters; use at least "
                             f"{ADMIN_TOKEN_MIN_LENGTH} random ones")
        return value

    @model_validator(mode="after")
    def _secured(self):
        if self.token_file is not None and self.token_env is not None:
            raise ValueError("set one of token_file, token_env")
        has_token = self.token() is not None
        if self.protect_reads and not has_token:
            raise ValueError("protect_reads needs a token (token_file or token_env)")
        host = parse_address(self.address)[0]
        if not has_token and not self.allow_remote_without_token and not is_loopback_host(host):
            raise ValueError(f"address {self.address} is reachable from other hosts and no token is set: anyone "
                             "there could drain instances and reload; set token_file or token_env, or "
                             "allow_remote_without_token: true if the network is private")
        return self


def is_loopback_host(host: str) -> bool:
    """A loopback address (127.0.0.0/8, ::1) or `localhost` / `*.localhost` (RFC 6761 §6.3); any other name may
    resolve to anything."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class DrainConfig(Strict):
    """What SIGTERM does, in order (docs/operations.md "Rolling restarts"): `/readyz` answers 503 at once and
    traffic is still served for `readiness_delay_s` (a load balancer or kubelet takes the process out of rotation);
    then the listeners stop accepting, responses say `Connection: close`, a keep-alive connection idle for
    `idle_close_s` is closed, and requests in flight get until `grace_s` to finish."""

    readiness_delay_s: float = Field(default=0.0, ge=0, le=300)
    grace_s: float = Field(default=15.0, gt=0, le=3600)
    idle_close_s: float = Field(default=1.0, gt=0, le=300)


class GatewatchConfig(Strict):
    # The HTTP/1.1 I/O ends: "fast" (raw asyncio protocols + llhttp, the default) or "aiohttp" (the reference
    # implementation, slower; kept to prove the engine does not depend on either).
    data_plane: Literal["fast", "aiohttp"] = "fast"
    # Worker processes sharing the listeners (SO_REUSEPORT), each with its own telemetry pipeline and its own
    # admin listener (admin port + worker index). 1 = this process serves.
    workers: int = Field(default=1, ge=1, le=64)
    admin: AdminConfig = AdminConfig()
    drain: DrainConfig = DrainConfig()  # SIGTERM: readiness first, then stop accepting, then in-flight requests
    telemetry: TelemetryConfig = TelemetryConfig()
    edge: EdgeConfig | None = None
    balancer: BalancerConfig | None = None

    @model_validator(mode="after")
    def _one_section(self) -> "GatewatchConfig":
        if self.edge is None and self.balancer is None:
            raise ValueError("declare an 'edge' section, a 'balancer' section, or both")
        return self


class ConfigError(Exception):
    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: {len(problems)} problem(s)\n" + "\n".join(problems))


def _pydantic_problems(err: ValidationError) -> list[str]:
    return pydantic_problems(err, GatewatchConfig)  # in the user's terms, with fixes suggested


def semantic_errors(cfg: GatewatchConfig) -> list[str]:
    """Checks that need the whole file: names that refer to each other, duplicates, conflicting addresses."""
    problems: list[str] = []
    pools = {p.name for p in cfg.balancer.pools} if cfg.balancer else set()
    pool_configs = {p.name: p for p in cfg.balancer.pools} if cfg.balancer else {}
    remotes = {u.name for u in cfg.edge.upstreams} if cfg.edge else set()

    def unique(items, what: str, path: str) -> None:
        seen: set[str] = set()
        for i, name in enumerate(items):
            if name in seen:
                problems.append(f"{path}[{i}].{what}: duplicate {what} {name!r}")
            seen.add(name)

    if cfg.balancer:
        unique([p.name for p in cfg.balancer.pools], "name", "balancer.pools")
        for pi, pool in enumerate(cfg.balancer.pools):
            seen_ids: set[str] = set()
            for ii, inst in enumerate(pool.instances):
                if inst.instance_id in seen_ids:
                    problems.append(f"balancer.pools[{pi}].instances[{ii}]: duplicate instance {inst.instance_id!r}")
                seen_ids.add(inst.instance_id)
        http_listeners = [lst for lst in cfg.balancer.listeners if lst.mode == "http"]  # tcp ones name a pool
        if http_listeners and not cfg.balancer.routes:
            problems.append("balancer.routes: required when balancer.listeners is set (which pool serves a request?)")
        if cfg.balancer.routes and not http_listeners:
            problems.append("balancer.listeners: balancer.routes are set but no listener would serve them")
    if cfg.edge:
        unique([u.name for u in cfg.edge.upstreams], "name", "edge.upstreams")
        for i, u in enumerate(cfg.edge.upstreams):
            if u.name in pools:
                problems.append(f"edge.upstreams[{i}].name: {u.name!r} is also a pool name; names must be unique")
        if not cfg.edge.routes:
            problems.append("edge.routes: at least one route is needed")

    sections = []
    if cfg.edge:
        sections.append(("edge", cfg.edge.listeners, cfg.edge.routes, pools | remotes))
    if cfg.balancer:
        sections.append(("balancer", cfg.balancer.listeners, cfg.balancer.routes, pools))
    addresses: dict[tuple[str, int], str] = {}
    admin = parse_address(cfg.admin.address)
    if admin[1]:
        addresses[admin] = "admin.address"
    for section, listeners, routes, targets in sections:
        unique([r.name for r in routes], "name", f"{section}.routes")
        unique([lst.name for lst in listeners], "name", f"{section}.listeners")
        for i, lst in enumerate(listeners):
            problems.extend(_listener_mode_problems(section, i, lst, pool_configs))
            addr = parse_address(lst.address)
            if addr[1] and addr in addresses:
                problems.append(f"{section}.listeners[{i}].address: {lst.address} is already used by {addresses[addr]}")
            addresses.setdefault(addr, f"{section}.listeners[{i}]")
        for i, route in enumerate(routes):
            if route.upstream is None and not route.upstreams and route.aggregate is None:
                problems.append(f"{section}.routes[{i}].upstream: missing required key")
            # the upstream, each side of a weighted split, the mirror's shadow (issue 19)
            refs = [(f"{section}.routes[{i}].upstream", route.upstream)] if route.upstream is not None else []
            refs += [(f"{section}.routes[{i}].upstreams[{j}].name", s.name) for j, s in enumerate(route.upstreams)]
            if route.mirror is not None:
                refs.append((f"{section}.routes[{i}].mirror.upstream", route.mirror.upstream))
            if route.aggregate is not None:  # each call's upstream, and its path's parameters (issue 19)
                problems.extend(_aggregate_problems(f"{section}.routes[{i}].aggregate", route))
                refs += [(f"{section}.routes[{i}].aggregate.calls[{j}].upstream", c.upstream)
                         for j, c in enumerate(route.aggregate.calls)]
            for where, name in refs:
                if name not in targets:
                    kind = "pool" if section == "balancer" else "upstream"
                    hint = closest(name, sorted(targets))
                    problems.append(f"{where}: unknown {kind} {name!r}" + (f"; did you mean {hint!r}?" if hint else ""))
            sp = route.rewrite.strip_prefix
            if sp is not None:
                path = route.match.path
                if path.kind != "prefix" or not _segment_prefix(path.value, sp):
                    problems.append(
                        f"{section}.routes[{i}].rewrite.strip_prefix: {sp!r} must be a prefix of the route's"
                        " match.path.prefix"
                    )
            if any(lst.headers_with_underscores != "allow" for lst in listeners):
                for j, h in enumerate(route.match.headers):
                    if "_" in h.name:  # dropped or refused before routing: the condition would never see it
                        problems.append(
                            f"{section}.routes[{i}].match.headers[{j}].name: {h.name!r} has an underscore, and this"
                            " section's listeners drop or refuse such headers (headers_with_underscores): match the"
                            " '-' spelling, or set headers_with_underscores: allow on the listeners")
    return problems


def _aggregate_problems(where: str, route) -> list[str]:
    """An aggregate call's path may use only the route's own path parameters (`match.path.template`)."""
    from gatewatch.edge.config import TEMPLATE_PARAM

    path = route.match.path
    params = set(TEMPLATE_PARAM.findall(path.template)) if path.template is not None else set()
    out = []
    for j, call in enumerate(route.aggregate.calls):
        unknown = sorted(call.params - params)
        if unknown:
            have = f"the route's match.path.template has {', '.join(sorted(params))}" if params else \
                "the route's match.path has no template parameters"
            out.append(f"{where}.calls[{j}].path: {', '.join('{' + u + '}' for u in unknown)} is not a path "
                       f"parameter of this route ({have})")
    return out


def _segment_prefix(path: str, prefix: str) -> bool:
    prefix = prefix.rstrip("/") or "/"
    return prefix == "/" or path == prefix or path.startswith(prefix + "/") or (path.rstrip("/") == prefix)


def parse_config(data: Any, source: str = "<config>") -> GatewatchConfig:
    if data is None:
        raise ConfigError(source, ["(root): the file is empty"])
    if not isinstance(data, dict):
        raise ConfigError(source, [f"(root): expected a mapping of sections, got {type(data).__name__}"])
    try:
        cfg = GatewatchConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(source, _pydantic_problems(err)) from None
    problems = semantic_errors(cfg)
    if problems:
        # Report sections in the order the file declares them (a stable sort keeps each section's own order).
        order = {key: i for i, key in enumerate(data)}
        problems.sort(key=lambda p: order.get(re.split(r"[.\[:]", p, 1)[0], len(order)))
        raise ConfigError(source, problems)
    return cfg


def load_config(path: str | Path) -> GatewatchConfig:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(source, [f"(file): cannot read: {err.strerror or err}"]) from None
    except UnicodeDecodeError:
        raise ConfigError(source, ["(file): not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "(file)"
        problem = getattr(err, "problem", None) or str(err)
        raise ConfigError(source, [f"{where}: invalid YAML: {problem}"]) from None
    return parse_config(data, source)


def config_version(cfg: GatewatchConfig) -> str:
    """A short hash of the effective configuration (defaults filled in, secrets included so that rotating one is
    a new version): the same config gives the same version in every process and after every restart."""
    def plain(value: Any) -> Any:
        return value.get_secret_value() if isinstance(value, SecretStr) else str(value)

    canonical = json.dumps(cfg.model_dump(mode="python"), sort_keys=True, default=plain, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]
