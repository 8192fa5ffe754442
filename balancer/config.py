"""Typed, frozen configuration of the balancer layer: pools of instances, how to pick among them, how to tell
which are healthy, and when to fail over.

Primitives: `InstanceConfig`, `PoolConfig` (with `DiscoveryConfig` (`dns` / `file` / `kubernetes`),
`HealthCheckConfig`, `OutlierConfig`, `FailoverConfig`, `SlowStartConfig`, `AffinityConfig`, `HashKeyConfig`,
`LeastRequestConfig`), `Algorithm`, `RetryConfig` (per
route; lives here because retries are the balancer's business). Validation of names across sections (routes that
name a pool, duplicate ids) lives in `gatewatch.config.semantic_errors`, which sees the whole file.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
from enum import StrEnum
from typing import Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails

from gatewatch.schema import HTTP_TOKEN, NAME_PATTERN, Strict


class Algorithm(StrEnum):
    ROUND_ROBIN = "round_robin"
    WEIGHTED_ROUND_ROBIN = "weighted_round_robin"
    RANDOM = "random"  # weighted random
    LEAST_REQUEST = "least_request"  # power of `choice_count` choices on in-flight / weight
    LEAST_CONNECTIONS = "least_connections"  # full scan: fewest in-flight per unit of weight
    RING_HASH = "ring_hash"  # consistent hashing (ketama-style ring), keyed by `hash_key`
    MAGLEV = "maglev"  # consistent hashing with Google's Maglev table, keyed by `hash_key`


HASHING = frozenset({Algorithm.RING_HASH, Algorithm.MAGLEV})
WEIGHTED = frozenset({Algorithm.WEIGHTED_ROUND_ROBIN, Algorithm.RANDOM, Algorithm.LEAST_REQUEST,
                      Algorithm.LEAST_CONNECTIONS})


class UpstreamTLSConfig(Strict):
    """TLS from Gatewatch to a pool's instances or a URL upstream (client side). Verified by default: the
    certificate must chain to `ca_file` (else the system's CAs) and carry `server_name` (else the host). The
    files are read when the config loads, so a missing or mismatched one is a config error, not a 502 later."""

    ca_file: str | None = None
    server_name: str | None = Field(default=None, min_length=1, max_length=253)  # SNI and the name verified
    verify: bool = True  # false: no chain or name check (a lab only; the config says so in review)
    client_cert: str | None = None  # mTLS to the upstream: certificate chain (PEM) ...
    client_key: str | None = None  # ... and its key (PEM); both or neither
    min_version: Literal["1.2", "1.3"] = "1.2"  # RFC 9325 §3.1.1: never below TLS 1.2

    @model_validator(mode="after")
    def _files_load(self):
        if (self.client_cert is None) != (self.client_key is None):
            raise ValueError("'client_cert' and 'client_key' go together (mTLS needs both)")
        if not self.verify and self.ca_file is not None:
            raise ValueError("'ca_file' with 'verify: false' would be ignored; drop one")
        # Load what the forwarders will load (gatewatch.io.tls.client_context), each file on its own so the
        # error names the one that is wrong.
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.ca_file is not None:
            try:
                ctx.load_verify_locations(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as err:
                raise ValueError(f"ca_file: cannot load {self.ca_file!r}: {err}") from None
        if self.client_cert is not None:
            try:
                ctx.load_cert_chain(self.client_cert, self.client_key)
            except (OSError, ssl.SSLError) as err:
                raise ValueError(f"client_cert/client_key: cannot load {self.client_cert!r} with "
                                 f"{self.client_key!r}: {err}") from None
        return self


class InstanceConfig(Strict):
    host: str = Field(min_length=1, max_length=253)
    port: int = Field(ge=1, le=65535)
    weight: int = Field(default=1, ge=1, le=10_000)
    id: str | None = Field(default=None, pattern=NAME_PATTERN)
    zone: str | None = Field(default=None, pattern=NAME_PATTERN)
    priority: int = Field(default=0, ge=0, le=7)  # 0 takes traffic first; higher levels are failover targets
    draining: bool = False  # no new requests; in-flight ones finish (also settable at run time: admin API)

    @field_validator("host")
    @classmethod
    def _host_has_no_scheme_or_port(cls, v: str) -> str:
        if "/" in v or " " in v or (v.count(":") == 1):
            raise ValueError("must be a bare host name or IP address (put the port in 'port', no scheme)")
        return v

    @property
    def instance_id(self) -> str:
        """The instance's name in telemetry: the configured id, else `host:port`."""
        return self.id or f"{self.host}:{self.port}"


def _status_ranges(v: tuple[str | int, ...]) -> tuple[str | int, ...]:
    for item in v:
        text = str(item)
        m = re.fullmatch(r"([1-5]\d\d)(?:-([1-5]\d\d))?", text)
        if not m or (m.group(2) and int(m.group(2)) < int(m.group(1))):
            raise ValueError(f"{text!r} is not a status code or range like 200-399")
    return v


def status_set(v: tuple[str | int, ...]) -> frozenset[int]:
    out: set[int] = set()
    for item in v:
        lo, _, hi = str(item).partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return frozenset(out)


class HealthCheckConfig(Strict):
    """Active health checks: one probe per instance every `interval_s` (± `jitter_s`); `unhealthy_threshold`
    consecutive failures mark it unhealthy, `healthy_threshold` consecutive passes bring it back."""

    type: Literal["http", "tcp"] = "http"
    path: str = "/healthz"
    method: Literal["GET", "HEAD", "OPTIONS"] = "GET"
    host: str | None = None  # Host header of HTTP probes (default: the instance's host:port)
    expected_statuses: tuple[str | int, ...] = ("200-399",)
    timeout_s: float = Field(default=1.0, gt=0, le=60)
    interval_s: float = Field(default=5.0, gt=0, le=3600)
    jitter_s: float = Field(default=0.5, ge=0, le=60)
    healthy_threshold: int = Field(default=2, ge=1, le=100)  # "rise"
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)  # "fall"

    _statuses = field_validator("expected_statuses")(classmethod(lambda cls, v: _status_ranges(v)))

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c in v for c in " \r\n"):
            raise ValueError("must be an absolute path without spaces")
        return v

    @model_validator(mode="after")
    def _timeout_below_interval(self):
        if self.timeout_s > self.interval_s:
            raise ValueError("timeout_s must not exceed interval_s (probes would overlap)")
        return self


class OutlierConfig(Strict):
    """Passive health: eject an instance after consecutive failures seen on real traffic. The n-th ejection of
    an instance lasts `base_ejection_s × n` (capped at `max_ejection_s`); at most `max_ejection_percent` of a
    pool is ejected at once."""

    consecutive_5xx: int | None = Field(default=5, ge=1, le=1000)  # any 5xx answer or gateway error
    consecutive_gateway_errors: int | None = Field(default=3, ge=1, le=1000)  # connect failure/reset/timeout/502-504
    base_ejection_s: float = Field(default=30.0, gt=0, le=3600)
    max_ejection_s: float = Field(default=300.0, gt=0, le=86400)
    max_ejection_percent: int = Field(default=50, ge=0, le=100)
    trace_ids_kept: int = Field(default=5, ge=1, le=50)  # failing requests linked from an ejection event
    # With active health checks: an ejected instance whose check saw it down and now sees it back returns at
    # once instead of waiting out its ejection (Envoy's successful_active_health_check_uneject_host).
    uneject_on_active_recovery: bool = True

    @model_validator(mode="after")
    def _sane(self):
        if self.base_ejection_s > self.max_ejection_s:
            raise ValueError("base_ejection_s must not exceed max_ejection_s")
        if not self.consecutive_5xx and not self.consecutive_gateway_errors:
            raise ValueError("set consecutive_5xx or consecutive_gateway_errors (or remove outlier_detection)")
        return self


class FailoverConfig(Strict):
    """Priority groups (`instances[].priority`): traffic goes to the lowest priority level whose usable share is at
    least `min_healthy_percent`, and back as soon as it recovers; when no level is, to the level with the best
    share. When that level's usable share is below `panic_threshold_percent`, the balancer ignores health in it
    and spreads load over all its non-draining instances instead of crushing the survivors (0 disables panic
    mode)."""

    min_healthy_percent: int = Field(default=70, ge=1, le=100)
    panic_threshold_percent: int = Field(default=50, ge=0, le=100)

    @model_validator(mode="after")
    def _panic_below_failover(self):
        if self.panic_threshold_percent > self.min_healthy_percent:
            raise ValueError("panic_threshold_percent must not exceed min_healthy_percent (a level healthy enough "
                             "to take traffic cannot be in panic)")
        return self


class SlowStartConfig(Strict):
    """An instance that just became healthy ramps its effective weight from `min_weight_percent` to 100 % over
    `window_s` (linear at aggression 1, faster start above 1)."""

    window_s: float = Field(default=30.0, gt=0, le=3600)
    min_weight_percent: int = Field(default=10, ge=1, le=100)
    aggression: float = Field(default=1.0, gt=0, le=10)


class HashKeyConfig(Strict):
    """What consistent hashing (and hash affinity) hashes: a header, a cookie, a query parameter, or the client
    address. A request without the key is balanced at random (and says so in its pick)."""

    source: Literal["header", "cookie", "query", "client_address"]
    name: str | None = Field(default=None, min_length=1, max_length=256)

    @model_validator(mode="after")
    def _name_needed(self):
        if self.source != "client_address" and not self.name:
            raise ValueError(f"'name' is required when source is {self.source!r}")
        if self.source == "header" and not HTTP_TOKEN.fullmatch(self.name or ""):
            raise ValueError("'name' must be a valid header name")
        return self

    def describe(self) -> str:
        return self.source if self.source == "client_address" else f"{self.source}:{self.name}"


class AffinityConfig(Strict):
    """Session affinity by a cookie the balancer sets (opaque value naming the instance). Requests carrying
    it go back to that instance while it is usable; otherwise they are balanced normally and re-pinned."""

    cookie: str = Field(default="gw_affinity", pattern=r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$")
    ttl_s: int | None = Field(default=None, ge=1, le=31_536_000)  # None: a session cookie
    path: str = "/"
    secure: bool = False
    http_only: bool = True


class LeastRequestConfig(Strict):
    choice_count: int = Field(default=2, ge=2, le=100)


HOSTNAME = r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62})(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,62}))*\.?$"
K8S_NAME = r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"  # RFC 1123 label: namespaces, Services, port names


class DnsDiscoveryConfig(Strict):
    """Instances from DNS: the addresses of `name` (A and/or AAAA records, each with `port`) or its SRV records
    (RFC 2782: target, port, priority, weight). Re-resolved when the answer's TTL runs out, the TTL clamped to
    [`min_refresh_s`, `max_refresh_s`]; after a failure, retried after `min_refresh_s` with the last good set kept."""

    name: str = Field(max_length=253, pattern=HOSTNAME)  # e.g. api.internal, or _http._tcp.api.internal for SRV
    record: Literal["A", "AAAA", "A+AAAA", "SRV"] = "A"
    port: int | None = Field(default=None, ge=1, le=65535)  # A/AAAA: required; SRV: the records carry it
    weight: int = Field(default=1, ge=1, le=10_000)  # A/AAAA instances' weight (SRV records carry theirs)
    nameservers: tuple[str, ...] = ()  # "ip" or "ip:port" / "[v6]:port"; empty: the system's (/etc/resolv.conf)
    timeout_s: float = Field(default=2.0, gt=0, le=60)  # one resolution, all nameservers and retries
    min_refresh_s: float = Field(default=5.0, gt=0, le=86_400)
    max_refresh_s: float = Field(default=300.0, gt=0, le=86_400)

    @field_validator("nameservers")
    @classmethod
    def _nameservers(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for ns in v:
            nameserver_address(ns)
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.record == "SRV" and self.port is not None:
            raise ValueError("'port' is not used with record SRV (each SRV record carries its port)")
        if self.record != "SRV" and self.port is None:
            raise ValueError(f"'port' is required with record {self.record} (address records carry no port)")
        if self.min_refresh_s > self.max_refresh_s:
            raise ValueError("min_refresh_s must not exceed max_refresh_s")
        return self


def nameserver_address(text: str) -> tuple[str, int]:
    """`ip`, `ip:port` or `[v6]:port` → (ip, port); port 53 by default. ValueError names what is wrong."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d{1,5})|([0-9.]+):(\d{1,5})|([0-9A-Fa-f:.]+)", text)
    if not m:
        raise ValueError(f"{text!r} is not a nameserver address (an IP, 'ip:port' or '[v6]:port')")
    host, port = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4)) if m.group(3) \
        else (m.group(5), "53")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r}: {host!r} is not an IP address (nameservers are addressed by IP)") from None
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"{text!r}: port {port} is out of range 1-65535")
    return host, int(port)


class FileDiscoveryConfig(Strict):
    """Instances from a YAML or JSON file holding a list of instances (the fields of `instances`). The file is
    checked every `poll_interval_s`; a change is applied once the file has stayed unchanged for `debounce_s`
    (an editor's several writes are one change). A file with errors is refused, the last good set stays."""

    path: str = Field(min_length=1)
    poll_interval_s: float = Field(default=1.0, gt=0, le=3600)
    debounce_s: float = Field(default=0.5, ge=0, le=3600)


class KubernetesDiscoveryConfig(Strict):
    """Instances from the EndpointSlices (discovery.k8s.io/v1) of a Service, watched (LIST, then WATCH from the
    list's resourceVersion). Without `api_server`: in-cluster (KUBERNETES_SERVICE_HOST/PORT, the service-account
    token and CA under /var/run/secrets/kubernetes.io/serviceaccount)."""

    namespace: str = Field(pattern=K8S_NAME)
    service: str = Field(pattern=K8S_NAME)
    port: str | int | None = None  # the EndpointSlice port (name or number); None: the slices' only port
    api_server: str | None = Field(default=None, pattern=r"^https?://[^\s/]+/?$")  # e.g. https://10.0.0.1:6443
    token_file: str | None = None  # bearer token (re-read on each connect: projected tokens rotate)
    ca_file: str | None = None  # the API server's CA (https)
    timeout_s: float = Field(default=10.0, gt=0, le=300)  # connect and LIST; a WATCH stays open
    watch_timeout_s: int = Field(default=300, ge=10, le=3600)  # the server ends each WATCH after this (timeoutSeconds)
    backoff_base_s: float = Field(default=0.5, gt=0, le=60)  # reconnect backoff: doubling, jittered ...
    backoff_max_s: float = Field(default=30.0, gt=0, le=3600)  # ... up to this

    @field_validator("port")
    @classmethod
    def _port(cls, v):
        if isinstance(v, int) and not 1 <= v <= 65535:
            raise ValueError("a port number is 1-65535")
        if isinstance(v, str) and not re.fullmatch(K8S_NAME, v):
            raise ValueError("a port name is an RFC 1123 label (lowercase letters, digits, '-')")
        return v

    @model_validator(mode="after")
    def _sane(self):
        if self.backoff_base_s > self.backoff_max_s:
            raise ValueError("backoff_base_s must not exceed backoff_max_s")
        if self.token_file is not None and self.api_server is None:
            raise ValueError("'token_file' goes with 'api_server' (in-cluster, the service-account token is used)")
        return self


class DiscoveryConfig(Strict):
    """Where a pool's instances come from at run time: exactly one of `dns`, `file`, `kubernetes`."""

    dns: DnsDiscoveryConfig | None = None
    file: FileDiscoveryConfig | None = None
    kubernetes: KubernetesDiscoveryConfig | None = None

    @model_validator(mode="after")
    def _exactly_one(self):
        given = [k for k in ("dns", "file", "kubernetes") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("set exactly one of 'dns', 'file', 'kubernetes'" +
                             (f" (got {', '.join(given)})" if given else ""))
        return self

    @property
    def source(self) -> str:
        """The instances' `source` (static / dns / file / k8s)."""
        return "dns" if self.dns else "file" if self.file else "k8s"


class PoolConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    algorithm: Algorithm = Algorithm.ROUND_ROBIN
    instances: tuple[InstanceConfig, ...] = ()  # static instances; or `discovery`
    discovery: DiscoveryConfig | None = None  # instances found at run time (DNS, a watched file, Kubernetes)
    max_connections_per_instance: int = Field(default=256, ge=1, le=100_000)
    # requests that may wait for a connection when all max_connections are busy; beyond: instance over limit
    max_pending_per_instance: int = Field(default=64, ge=0, le=100_000)
    keepalive_idle_s: float = Field(default=15.0, gt=0, le=3600)
    least_request: LeastRequestConfig = LeastRequestConfig()
    hash_key: HashKeyConfig | None = None  # required by ring_hash / maglev
    # ring_hash: points on the ring per unit of weight. Fixed per instance (not scaled to the pool), so adding an
    # instance moves only the keys that land on its own points (≤ 1/N of them).
    ring_vnodes_per_weight: int = Field(default=256, ge=16, le=4096)
    health_check: HealthCheckConfig | None = None
    outlier_detection: OutlierConfig | None = None  # off unless configured (like Envoy)
    failover: FailoverConfig = FailoverConfig()
    slow_start: SlowStartConfig | None = None
    affinity: AffinityConfig | None = None
    tls: UpstreamTLSConfig | None = None  # speak TLS (https) to every instance, health checks included
    # How to speak to the instances: HTTP/1.1, or HTTP/2 (gRPC backends): h2c with prior knowledge, or with `tls`
    # h2 by ALPN. docs/http2.md
    protocol: Literal["http1", "h2"] = "http1"

    @property
    def scheme(self) -> str:
        return "https" if self.tls is not None else "http"

    @model_validator(mode="wrap")
    @classmethod
    def _instances_unless_discovery(cls, data, handler):
        """Without `discovery`, `instances` is required and not empty — reported at `...instances` like any
        missing key or empty list (a model-level check could only name the pool), beside the pool's other
        problems."""
        problem = None
        if isinstance(data, dict) and data.get("discovery") is None:
            if "instances" not in data:
                problem = InitErrorDetails(type="missing", loc=("instances",), input=data)
            elif isinstance(data["instances"], (list, tuple)) and not data["instances"]:
                problem = InitErrorDetails(type="too_short", loc=("instances",), input=data["instances"],
                                           ctx={"field_type": "Tuple", "min_length": 1, "actual_length": 0})
        try:
            out = handler(data)
        except ValidationError as err:
            if problem is None:
                raise
            raise ValidationError.from_exception_data(err.title, [
                InitErrorDetails(type=e["type"], loc=e["loc"], input=e["input"],
                                 **({"ctx": e["ctx"]} if "ctx" in e else {})) for e in err.errors()] + [problem]) \
                from None
        if problem is not None:
            raise ValidationError.from_exception_data(cls.__name__, [problem])
        return out

    @model_validator(mode="after")
    def _knobs_fit_the_algorithm(self):
        # Settings an algorithm would silently ignore are errors: a knob that does nothing looks like it works.
        a = self.algorithm.value
        if self.instances and self.discovery is not None:
            raise ValueError("'instances' and 'discovery' exclude each other (discovery provides the instances)")
        if self.algorithm in HASHING and self.hash_key is None:
            raise ValueError(f"algorithm {a} needs 'hash_key' (what to hash)")
        if self.hash_key is not None and self.algorithm not in HASHING:
            raise ValueError(f"'hash_key' is only used by ring_hash and maglev, not {a}")
        if self.slow_start is not None and self.algorithm not in WEIGHTED:
            raise ValueError(f"'slow_start' ramps weights, which {a} does not use (use weighted_round_robin, "
                             "random, least_request or least_connections)")
        return self


RETRY_ON = Literal["connect_failure", "reset", "timeout", "status"]


class RetryBudgetConfig(Strict):
    """Envoy-style retry budget per upstream: concurrent retries may be at most `percent` of the active
    requests, but never fewer than `min_concurrent` — so retries cannot multiply an outage."""

    percent: float = Field(default=20.0, ge=0, le=100)
    min_concurrent: int = Field(default=3, ge=0, le=10_000)


class RetryConfig(Strict):
    """Retries of one route. Any method is retried after a connect failure (provably nothing reached the
    upstream); only idempotent methods after a reset, a per-try timeout or a status in `statuses`; never once a
    streamed request body has been consumed. Retries prefer an instance not tried yet."""

    attempts: int = Field(default=2, ge=1, le=10)  # total tries, the first included; 1 disables retries
    retry_on: tuple[RETRY_ON, ...] = ("connect_failure", "reset")
    statuses: tuple[int, ...] = (502, 503, 504)  # with retry_on: status
    per_try_timeout_s: float | None = Field(default=None, gt=0, le=3600)  # default: the route's response_s
    deadline_s: float | None = Field(default=None, gt=0, le=3600)  # all tries + backoff; default: no overall cap
    backoff_base_s: float = Field(default=0.025, ge=0, le=10)
    backoff_max_s: float = Field(default=0.25, ge=0, le=60)
    budget: RetryBudgetConfig = RetryBudgetConfig()

    @field_validator("statuses")
    @classmethod
    def _statuses(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        for s in v:
            if not 500 <= s <= 599:
                raise ValueError(f"{s} is not a 5xx status (only server errors are retried)")
        return v
