"""The gateway layer's configuration: how requests are matched to routes, and what a route does with them.

Primitives: `RouteConfig` (with `MatchConfig`, `PathMatch`, `HeaderMatch`, `TimeoutsConfig`, `RewriteConfig`,
its retries and policies, a weighted split between upstreams — `SplitSide`, `SplitConfig` — and a `MirrorConfig`)
and `RemoteUpstreamConfig` (an upstream reached by URL). The file's root, its sections
and the checks across them live in `gatewatch.config`.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from gatewatch.balancer.config import HashKeyConfig, RetryConfig, UpstreamTLSConfig
from gatewatch.edge.aggregation import AggregateConfig
from gatewatch.edge.policies.config import PolicyConfig
from gatewatch.edge.cache import CacheConfig
from gatewatch.schema import HTTP_TOKEN, NAME_PATTERN, Strict

TEMPLATE_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class PathMatch(Strict):
    """Exactly one of `exact`, `prefix` (segment-aware: `/api` matches `/api` and `/api/x`, not `/apix`) or
    `template` (`/orders/{id}`: a `{name}` stands for one whole path segment)."""

    exact: str | None = None
    prefix: str | None = None
    template: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "PathMatch":
        given = [k for k in ("exact", "prefix", "template") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of 'exact', 'prefix' or 'template'")
        value = getattr(self, given[0])
        if not value.startswith("/"):
            raise ValueError(f"{given[0]}: must start with '/'")
        if "?" in value or "#" in value:
            raise ValueError(f"{given[0]}: must not contain a query or fragment")
        if self.template is not None:
            names = []
            for seg in self.template.split("/")[1:]:
                if "{" in seg or "}" in seg:
                    m = TEMPLATE_PARAM.fullmatch(seg)
                    if not m:
                        raise ValueError(f"template: segment {seg!r} must be a whole '{{name}}' or contain no braces")
                    names.append(m.group(1))
            if len(names) != len(set(names)):
                raise ValueError("template: parameter names must be unique")
        return self

    @property
    def kind(self) -> str:
        return "exact" if self.exact is not None else "prefix" if self.prefix is not None else "template"

    @property
    def value(self) -> str:
        return self.exact or self.prefix or self.template or "/"


class HeaderMatch(Strict):
    """A header (or query parameter) condition: `value` must equal, or `present` says whether it must exist."""

    name: str = Field(min_length=1, max_length=256)
    value: str | None = None
    present: bool | None = None

    @model_validator(mode="after")
    def _one(self) -> "HeaderMatch":
        if (self.value is None) == (self.present is None):
            raise ValueError("give exactly one of 'value' or 'present'")
        return self


GRPC_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")  # a protobuf full name


class MatchConfig(Strict):
    path: PathMatch = PathMatch(prefix="/")
    hosts: tuple[str, ...] = ()  # exact host names or `*.example.com`; the port is ignored
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[HeaderMatch, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _grpc(cls, data):
        """`grpc: {service: pkg.Service, method: Method}` (method optional) is sugar for the path gRPC calls use,
        `/pkg.Service/Method` exact, or the prefix `/pkg.Service` (docs/http2.md)."""
        if not isinstance(data, dict) or "grpc" not in data:
            return data
        data = dict(data)
        g = data.pop("grpc")
        if "path" in data:
            raise ValueError("give either 'grpc' or 'path', not both")
        if not isinstance(g, dict) or set(g) - {"service", "method"} or "service" not in g:
            raise ValueError("grpc: a map with 'service' (e.g. pkg.Service) and optionally 'method'")
        service, method = g["service"], g.get("method")
        if not isinstance(service, str) or not GRPC_NAME.fullmatch(service):
            raise ValueError(f"grpc.service: {service!r} is not a protobuf service name (pkg.Service)")
        if method is not None and (not isinstance(method, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", method)):
            raise ValueError(f"grpc.method: {method!r} is not a method name")
        data["path"] = {"exact": f"/{service}/{method}"} if method else {"prefix": f"/{service}"}
        return data

    @field_validator("methods")
    @classmethod
    def _methods(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for m in v:
            if not HTTP_TOKEN.fullmatch(m) or m != m.upper():
                raise ValueError(f"{m!r} is not an upper-case HTTP method")
        return v

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for h in v:
            if not re.fullmatch(r"(\*\.)?[A-Za-z0-9.-]+", h):
                raise ValueError(f"{h!r} is not a host name or '*.domain' wildcard")
        return tuple(h.lower() for h in v)


class TimeoutsConfig(Strict):
    connect_s: float = Field(default=2.0, gt=0, le=300)  # TCP connect to one instance
    response_s: float = Field(default=30.0, gt=0, le=3600)  # request sent → response head received
    idle_s: float = Field(default=60.0, gt=0, le=3600)  # longest stall between body chunks, either direction


class WebSocketConfig(Strict):
    """A route's WebSocket sessions (RFC 6455 pass-through, gatewatch.io.websocket; docs/websocket.md). When a
    limit ends a session Gatewatch sends close 1001 (going away) to both sides, or 1009 for `max_message_bytes`."""

    idle_timeout_s: float = Field(default=300.0, gt=0, le=86400)  # no frame either way for this long: closed
    max_duration_s: float = Field(default=86400.0, gt=0, le=7 * 86400)  # a session's longest life
    max_message_bytes: int | None = Field(default=None, ge=1)  # a message's payload (all its fragments); None: any


class RewriteConfig(Strict):
    strip_prefix: str | None = Field(default=None, min_length=1)

    @field_validator("strip_prefix")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


COOKIE_NAME = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,64}$"  # an RFC 6265 §4.1.1 cookie-name (a token)


class SplitSide(Strict):
    """One side of a weighted split: an upstream (pool or URL upstream) and its share. Weights are relative
    (95/5, 19/1 and 950/50 split alike); a side at 0 takes nothing (blue-green: 100/0, switched by reload)."""

    name: str = Field(pattern=NAME_PATTERN)
    weight: int = Field(ge=0, le=1_000_000)


class SplitCookieConfig(Strict):
    """Stickiness by a cookie Gatewatch sets: a random key given to a new client, hashed like a sticky key."""

    name: str = Field(default="gw_split", pattern=COOKIE_NAME)
    max_age_s: int | None = Field(default=2_592_000, ge=1, le=31_536_000)  # None: a session cookie
    path: str = Field(default="/", pattern=r"^/[^;\s]*$")
    secure: bool = False
    http_only: bool = True


class SplitStickyConfig(Strict):
    """Exactly one of `hash_key` (a header, cookie, query parameter or the client address, as a pool's
    `hash_key`) or `cookie` (one Gatewatch sets)."""

    hash_key: HashKeyConfig | None = None
    cookie: SplitCookieConfig | None = None

    @model_validator(mode="after")
    def _one(self):
        if (self.hash_key is None) == (self.cookie is None):
            raise ValueError("give exactly one of 'hash_key' or 'cookie'")
        return self


class SplitOverrideConfig(Strict):
    """A tester forces a side by naming it in a header and/or a cookie. Only sides of this split can be named;
    `allowed` narrows that further, `trusted_networks` to clients from these networks."""

    header: str | None = Field(default=None, min_length=1, max_length=256)
    cookie: str | None = Field(default=None, pattern=COOKIE_NAME)
    allowed: tuple[str, ...] = ()  # sides a tester may force (empty: every side of the split)
    trusted_networks: tuple[str, ...] = ()  # CIDRs of clients whose override is honoured (empty: any client)

    @model_validator(mode="after")
    def _some(self):
        if self.header is None and self.cookie is None:
            raise ValueError("give 'header', 'cookie' or both")
        if self.header is not None and not HTTP_TOKEN.fullmatch(self.header):
            raise ValueError("header: must be a valid header name")
        return self

    @field_validator("trusted_networks")
    @classmethod
    def _networks(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for net in v:
            try:
                ipaddress.ip_network(net, strict=False)
            except ValueError:
                raise ValueError(f"{net!r} is not an IP network (CIDR)") from None
        return v


class SplitConfig(Strict):
    sticky: SplitStickyConfig | None = None  # None: every request is split by weight alone
    override: SplitOverrideConfig | None = None  # None: no tester override


class MirrorConfig(Strict):
    """A copy of `percent` of the route's requests to a shadow upstream, fire-and-forget: the client's answer never
    waits for it or changes. Bounded: at most `max_in_flight` copies at once and bodies up to `max_body_bytes`;
    a request beyond either is not copied (counted as skipped), never queued."""

    upstream: str = Field(min_length=1)
    percent: float = Field(default=100.0, ge=0, le=100)
    max_in_flight: int = Field(default=64, ge=1, le=100_000)
    max_body_bytes: int = Field(default=65_536, ge=0, le=16 * 1024 * 1024)
    timeout_s: float = Field(default=5.0, gt=0, le=300)  # the whole shadow exchange: connect to the body's end
    host: str | None = Field(default=None, min_length=1, max_length=255)  # Host sent (default: as the primary's)

    @field_validator("host")
    @classmethod
    def _host(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?", v):
            raise ValueError(f"{v!r} is not a host[:port]")
        return v


class RouteConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    match: MatchConfig = MatchConfig()
    upstream: str | None = Field(default=None, min_length=1)  # exactly one of `upstream` or `upstreams`
    upstreams: tuple[SplitSide, ...] = ()  # a weighted split between upstreams
    split: SplitConfig | None = None  # stickiness and overrides of `upstreams`
    mirror: MirrorConfig | None = None
    # instead of `upstream`/`upstreams`: several upstream calls composed into one JSON response (proxy.aggregate)
    aggregate: AggregateConfig | None = None
    timeouts: TimeoutsConfig = TimeoutsConfig()
    rewrite: RewriteConfig = RewriteConfig()
    preserve_host: bool = True  # send the client's Host upstream (else the instance's host:port)
    retries: RetryConfig = RetryConfig()
    policies: tuple[PolicyConfig, ...] = ()  # evaluated in this order in the POLICY phase
    cache: CacheConfig | None = None  # a response cache, RFC 9111 shared cache (gatewatch.proxy.cache)
    websocket: WebSocketConfig = WebSocketConfig()  # WebSocket sessions through this route (issue 17)

    @field_validator("policies")
    @classmethod
    def _unique_policy_names(cls, v):
        names = [p.name for p in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate policy name(s) {', '.join(dup)}")
        return v

    @field_validator("upstreams")
    @classmethod
    def _sides(cls, v: tuple[SplitSide, ...]) -> tuple[SplitSide, ...]:
        names = [s.name for s in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate upstream(s) {', '.join(dup)}")
        if v and not any(s.weight for s in v):
            raise ValueError("at least one side needs a weight above 0")
        return v

    @model_validator(mode="after")
    def _one_target(self) -> "RouteConfig":
        if self.aggregate is not None:
            if self.upstream is not None or self.upstreams or self.mirror is not None or self.cache is not None:
                raise ValueError("aggregate: not with 'upstream', 'upstreams', 'mirror' or 'cache' (an aggregate "
                                 "route's calls name their upstreams; its response is composed, not stored)")
        elif self.upstream is not None and self.upstreams:
            raise ValueError("give exactly one of 'upstream' or 'upstreams'")
        # neither: `gatewatch.config` reports `routes[i].upstream: missing required key`, as for any missing key
        if self.split is not None and not self.upstreams:
            raise ValueError("split: applies to a route with 'upstreams' only")
        override = self.split.override if self.split is not None else None
        if override is not None:
            sides = {s.name for s in self.upstreams}
            unknown = [a for a in override.allowed if a not in sides]
            if unknown:
                raise ValueError(f"split.override.allowed: {', '.join(map(repr, unknown))} is not a side of"
                                 " this route's upstreams")
        return self

    @property
    def upstream_names(self) -> tuple[str, ...]:
        """Every upstream a request of this route may go to: `upstream`, or each side of `upstreams`."""
        if self.aggregate is not None:  # each call's (in declared order, once)
            return tuple(dict.fromkeys(c.upstream for c in self.aggregate.calls))
        return (self.upstream,) if self.upstream is not None else tuple(s.name for s in self.upstreams)


class RemoteUpstreamConfig(Strict):
    """An upstream reached by URL: a separate `gatewatch` balancer tier, or any service that balances itself."""

    name: str = Field(pattern=NAME_PATTERN)
    url: str
    max_connections: int = Field(default=256, ge=1, le=100_000)
    keepalive_idle_s: float = Field(default=15.0, gt=0, le=3600)
    tls: UpstreamTLSConfig | None = None  # for an https URL: CA, SNI, mTLS (default: verified, system CAs)
    # HTTP/2 towards the URL (gRPC through both tiers): h2c with prior knowledge for http:// (RFC 9113 §3.3),
    # h2 chosen by ALPN for https:// (§3.2); docs/http2.md
    protocol: Literal["http1", "h2"] = "http1"

    @model_validator(mode="after")
    def _tls_needs_https(self):
        if self.tls is not None and not self.url.startswith("https://"):
            raise ValueError("'tls' applies to an https:// url only")
        return self

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        m = re.fullmatch(r"(http|https)://([^/:?#\s]+|\[[0-9A-Fa-f:.]+\])(:\d{1,5})?/?", v)
        if not m:
            raise ValueError(f"expected 'http://host:port' (no path), got {v!r}")
        return v.rstrip("/")
