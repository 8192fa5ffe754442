"""The typed config of a route's response cache (`cache:`): budgets, the rules RFC 9111 leaves to configuration,
and the key. The cache itself is `gatewatch.proxy.cache`; what it does is in docs/traffic.md ("Caching").

Primitives: `CacheConfig`, `CacheKeyConfig`, `CacheSharedConfig` (a Redis tier shared by processes and replicas).
"""

from __future__ import annotations

from pydantic import Field, field_serializer, field_validator, model_validator

from gatewatch.schema import HTTP_TOKEN, Strict, url_without_userinfo


class CacheKeyConfig(Strict):
    """What identifies a stored response, besides the request headers its `Vary` names. Only GET and HEAD are
    served from the cache and they share entries (RFC 9110 §9.3.2), so the method is never part of the key."""

    scheme: bool = True
    host: bool = True
    path: bool = True
    query: bool = True  # the raw query, as sent
    query_params: tuple[str, ...] = ()  # instead: only these parameters, sorted by name (needs `query`)
    headers: tuple[str, ...] = ()  # request header values that split the cache (e.g. Accept-Language)
    cookies: tuple[str, ...] = ()  # cookie values that split it (e.g. a tenant cookie)

    @field_validator("headers", "cookies")
    @classmethod
    def _tokens(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        for name in v:
            if not HTTP_TOKEN.fullmatch(name):
                raise ValueError(f"{name!r} is not a header or cookie name (an RFC 9110 token)")
        return v


class CacheSharedConfig(Strict):
    """A Redis tier behind the in-process store, shared by every process and replica of the route: a miss here
    asks Redis before the upstream, what is stored is written there too, an invalidation reaches every process."""

    url: str = Field(default="redis://127.0.0.1:6379/0", pattern=r"^rediss?://")
    timeout_s: float = Field(default=0.05, gt=0, le=5)  # connect and command timeout (each)
    retry_after_s: float = Field(default=1.0, ge=0, le=60)  # after a failure, skip Redis this long
    key_prefix: str = Field(default="gatewatch:cache", min_length=1, max_length=128)

    @field_serializer("url")
    def _redact(self, v: str) -> str:  # never show a password (admin /config)
        return url_without_userinfo(v)


class CacheConfig(Strict):
    """A route's response cache (RFC 9111 shared cache): budgets, the rules left to configuration, the key."""

    max_bytes: int = Field(default=64 * 1024 * 1024, ge=4096, le=2 ** 40)  # bodies + headers of every entry
    max_entries: int = Field(default=10_000, ge=1, le=10_000_000)
    max_entry_bytes: int = Field(default=1024 * 1024, ge=1, le=2 ** 31)  # larger responses pass through
    max_variants: int = Field(default=16, ge=1, le=1000)  # stored Vary variants per key, the oldest dropped
    heuristic_fraction: float = Field(default=0.0, ge=0, le=1)  # §4.2.2, e.g. 0.1; 0: no heuristic freshness
    heuristic_max_s: float = Field(default=86_400, gt=0, le=31_536_000)
    stale_while_revalidate_s: float = Field(default=0, ge=0, le=31_536_000)  # unless the response says
    stale_if_error_s: float = Field(default=0, ge=0, le=31_536_000)  # unless the response says
    allow_authorization: bool = False  # store answers to requests with Authorization (put it in key.headers!)
    allow_set_cookie: bool = False  # store responses that set cookies (stored without their Set-Cookie)
    coalesce: bool = True  # concurrent misses for one key: one request upstream, the others wait for it
    coalesce_timeout_s: float = Field(default=5.0, gt=0, le=300)  # then a waiting request goes upstream itself
    key: CacheKeyConfig = CacheKeyConfig()
    shared: CacheSharedConfig | None = None  # a Redis tier shared by replicas (None: this process only)

    @model_validator(mode="after")
    def _budgets(self) -> CacheConfig:
        if self.max_entry_bytes > self.max_bytes:
            raise ValueError("max_entry_bytes: must not exceed max_bytes")
        return self
