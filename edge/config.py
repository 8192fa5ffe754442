"""The gateway layer's configuration: how requests are matched to routes, and what a route does with them.

Primitives: `RouteConfig` (with `MatchConfig`, `PathMatch`, `HeaderMatch`, `TimeoutsConfig`, `RewriteConfig`,
its retries and policies) and `RemoteUpstreamConfig` (an upstream reached by URL). The file's root, its sections
and the checks across them live in `gatewatch.config`.
"""

from __future__ import annotations

import re

from pydantic import Field, field_validator, model_validator

from gatewatch.balancer.config import RetryConfig, UpstreamTLSConfig
from gatewatch.edge.policies.config import PolicyConfig
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


class MatchConfig(Strict):
    path: PathMatch = PathMatch(prefix="/")
    hosts: tuple[str, ...] = ()  # exact host names or `*.example.com`; the port is ignored
    methods: tuple[str, ...] = ()
    headers: tuple[HeaderMatch, ...] = ()
    query: tuple[HeaderMatch, ...] = ()

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


class RewriteConfig(Strict):
    strip_prefix: str | None = Field(default=None, min_length=1)

    @field_validator("strip_prefix")
    @classmethod
    def _slash(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith("/"):
            raise ValueError("must start with '/'")
        return v


class RouteConfig(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    match: MatchConfig = MatchConfig()
    upstream: str = Field(min_length=1)
    timeouts: TimeoutsConfig = TimeoutsConfig()
    rewrite: RewriteConfig = RewriteConfig()
    preserve_host: bool = True  # send the client's Host upstream (else the instance's host:port)
    retries: RetryConfig = RetryConfig()
    policies: tuple[PolicyConfig, ...] = ()  # evaluated in this order in the POLICY phase

    @field_validator("policies")
    @classmethod
    def _unique_policy_names(cls, v):
        names = [p.name for p in v]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"duplicate policy name(s) {', '.join(dup)}")
        return v


class RemoteUpstreamConfig(Strict):
    """An upstream reached by URL: a separate `gatewatch` balancer tier, or any service that balances itself."""

    name: str = Field(pattern=NAME_PATTERN)
    url: str
    max_connections: int = Field(default=256, ge=1, le=100_000)
    keepalive_idle_s: float = Field(default=15.0, gt=0, le=3600)
    tls: UpstreamTLSConfig | None = None  # for an https URL: CA, SNI, mTLS (default: verified, system CAs)

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
