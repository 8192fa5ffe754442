"""Compile the policies of a layer's routes into runtime objects (once per snapshot), with the shared
resources they need (metrics, telemetry, clients that live as long as the process).

`PolicyResources` owns the process-wide clients: one aiohttp session for JWKS fetches, one JWKS cache per URL,
one Redis client per URL (policies sharing a Redis share its connection pool). They are created lazily while
policies are built (no I/O), connected in `start()` (an initial JWKS fetch, in the background: a down identity
provider must not stop the gateway from starting) and closed in `close()`.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

from gatewatch.edge.policies import config as c
from gatewatch.edge.policies.apikey import ApiKeyPolicy
from gatewatch.edge.policies.base import Policy
from gatewatch.edge.policies.circuit import CircuitBreakerPolicy
from gatewatch.edge.policies.cors import CorsPolicy
from gatewatch.edge.policies.ip_access import IpAccessPolicy
from gatewatch.edge.policies.jwks import JwksCache
from gatewatch.edge.policies.jwt_auth import JwtPolicy
from gatewatch.edge.policies.limiter import MAX_REDIS_CONNECTIONS, LocalStore, RedisStore, StoreHealth
from gatewatch.edge.policies.ratelimit import RateLimitPolicy
from gatewatch.edge.policies.schema import JsonSchemaPolicy
from gatewatch.edge.policies.size import SizeLimitPolicy
from gatewatch.edge.policies.transform import HeadersPolicy, PathRewritePolicy
from gatewatch.telemetry.names import PolicyReason as R
from gatewatch.telemetry.names import Verdict


@dataclass
class PolicyResources:
    """Process-wide things policies share. `start()` after the loop runs, `close()` on shutdown."""

    metrics: object
    telemetry: object
    closers: list = field(default_factory=list)
    monotonic: Callable[[], float] = time.monotonic
    session: object = None  # aiohttp.ClientSession, created in start()
    jwks: dict = field(default_factory=dict)  # url → JwksCache
    redis: dict = field(default_factory=dict)  # (url, timeout) → redis.asyncio.Redis
    redis_slots: dict = field(default_factory=dict)  # (url, timeout) → Semaphore shared by its stores
    stores: dict = field(default_factory=dict)  # url → StoreHealth
    _tasks: list = field(default_factory=list)

    def jwks_cache(self, cfg) -> JwksCache:
        cache = self.jwks.get(cfg.url)
        if cache is None:
            cache = self.jwks[cfg.url] = JwksCache(cfg, self._session, self.monotonic)
        return cache

    def _session(self):
        if self.session is None:  # a policy evaluated before start() (tests driving policies directly)
            self._new_session()
        return self.session

    def _new_session(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(headers={"User-Agent": "gatewatch-jwks"})

    def store_health(self, url: str) -> StoreHealth:
        """One store's availability, shared by the policies using it and kept across reloads."""
        health = self.stores.get(url)
        if health is None:
            health = self.stores[url] = StoreHealth(url, self.metrics, self.telemetry)
        return health

    def redis_client(self, cfg):
        key = (cfg.url, cfg.timeout_s)
        client = self.redis.get(key)
        if client is None:
            from redis.asyncio import Redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry

            # Short timeouts and no client-side retries: an unreachable store must cost a request at most
            # about one timeout, after which the policy's fail mode decides (and the store is skipped a while).
            client = self.redis[key] = Redis.from_url(
                cfg.url, socket_timeout=cfg.timeout_s, socket_connect_timeout=cfg.timeout_s,
                retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
                max_connections=MAX_REDIS_CONNECTIONS)
            self.redis_slots[key] = asyncio.Semaphore(MAX_REDIS_CONNECTIONS)
        return client

    async def start(self) -> None:
        if self.jwks and self.session is None:
            self._new_session()
        loop = asyncio.get_running_loop()
        for cache in self.jwks.values():
            self._tasks.append(loop.create_task(cache.refresh()))
        for client in self.redis.values():  # open a first connection early; a failure here is not fatal
            self._tasks.append(loop.create_task(_warm(client)))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for cache in self.jwks.values():
            cache.cancel()
        for close in reversed(self.closers):
            await close()
        for client in self.redis.values():
            await client.aclose()
        self.redis.clear()
        if self.session is not None:
            await self.session.close()
            self.session = None


_A, _D, _E = Verdict.ALLOW, Verdict.DENY, Verdict.ERROR
# Every (verdict, reason) a policy type can record: its closed vocabulary, used to create its series at 0.
VERDICTS: dict[str, tuple[tuple[Verdict, R], ...]] = {
    "jwt": ((_A, R.JWT_VALID), *((_D, r) for r in (
        R.JWT_MISSING, R.JWT_MALFORMED, R.JWT_OVERSIZED, R.JWT_ALG_NOT_ALLOWED, R.JWT_FORBIDDEN_HEADER,
        R.JWT_UNKNOWN_KID, R.JWT_BAD_SIGNATURE, R.JWT_EXPIRED, R.JWT_NOT_YET_VALID, R.JWT_BAD_ISSUER,
        R.JWT_BAD_AUDIENCE, R.JWT_MISSING_CLAIM, R.JWT_INSUFFICIENT_SCOPE)), (_E, R.JWT_KEYS_UNAVAILABLE)),
    "api_key": ((_A, R.APIKEY_VALID), (_D, R.APIKEY_MISSING), (_D, R.APIKEY_INVALID)),
    "rate_limit": ((_A, R.RATELIMIT_WITHIN), (_D, R.RATELIMIT_EXCEEDED), (_E, R.RATELIMIT_STORE_UNAVAILABLE)),
    "ip_access": ((_A, R.IP_ALLOWED), (_D, R.IP_DENIED)),
    "cors": ((_A, R.CORS_ALLOWED), (_A, R.CORS_PREFLIGHT), (_A, R.CORS_NO_ORIGIN), (_D, R.CORS_ORIGIN_DENIED)),
    "size_limit": ((_A, R.SIZE_WITHIN), (_D, R.SIZE_TOO_LARGE), (_E, R.BODY_STALLED)),
    "json_schema": ((_A, R.SCHEMA_VALID), (_A, R.SCHEMA_SKIPPED), (_D, R.SCHEMA_INVALID), (_D, R.SCHEMA_NOT_JSON),
                    (_D, R.SIZE_TOO_LARGE), (_E, R.SCHEMA_INVALID), (_E, R.BODY_STALLED)),
    "headers": ((_A, R.TRANSFORM_APPLIED),),
    "path_rewrite": ((_A, R.REWRITE_APPLIED), (_A, R.REWRITE_NO_MATCH), (_E, R.REWRITE_INVALID)),
    "circuit_breaker": ((_A, R.CIRCUIT_CLOSED), (_A, R.CIRCUIT_HALF_OPEN_PROBE), (_D, R.CIRCUIT_OPEN),
                        (_D, R.CIRCUIT_HALF_OPEN_REJECTED)),
}


def verdicts(cfg) -> list[tuple[str, str]]:
    """The (verdict, reason) pairs one configured policy can record (a shadow policy's denials are shadow_deny)."""
    out = []
    for verdict, reason in VERDICTS.get(cfg.type, ()):
        if verdict is _D and cfg.shadow:
            verdict = Verdict.SHADOW_DENY
        out.append((verdict.value, reason.value))
    return out


def build_policy(cfg, route: str, resources: PolicyResources) -> Policy:
    r = resources
    if isinstance(cfg, c.IpAccessPolicyConfig):
        return IpAccessPolicy(cfg)
    if isinstance(cfg, c.JwtPolicyConfig):
        return JwtPolicy(cfg, r.jwks_cache(cfg.jwks) if cfg.jwks else None)
    if isinstance(cfg, c.ApiKeyPolicyConfig):
        return ApiKeyPolicy(cfg)
    if isinstance(cfg, c.RateLimitPolicyConfig):
        if cfg.store == "redis":
            client = r.redis_client(cfg.redis)
            store = RedisStore(client, cfg.redis, r.monotonic, r.redis_slots[(cfg.redis.url, cfg.redis.timeout_s)],
                               r.store_health(cfg.redis.url))
        else:
            store = LocalStore(cfg.max_keys, r.monotonic)
        return RateLimitPolicy(cfg, route, store, r.metrics)
    if isinstance(cfg, c.CorsPolicyConfig):
        return CorsPolicy(cfg)
    if isinstance(cfg, c.SizeLimitPolicyConfig):
        return SizeLimitPolicy(cfg)
    if isinstance(cfg, c.HeadersPolicyConfig):
        return HeadersPolicy(cfg)
    if isinstance(cfg, c.PathRewritePolicyConfig):
        return PathRewritePolicy(cfg)
    if isinstance(cfg, c.JsonSchemaPolicyConfig):
        return JsonSchemaPolicy(cfg)
    if isinstance(cfg, c.CircuitBreakerPolicyConfig):
        return CircuitBreakerPolicy(cfg, route, r.metrics, r.telemetry, r.monotonic)
    raise TypeError(f"no runtime for policy type {cfg.type!r}")


def build_policies(routes, resources: PolicyResources) -> dict[str, tuple[Policy, ...]]:
    return {r.name: tuple(build_policy(p, r.name, resources) for p in r.policies) for r in routes if r.policies}


async def _warm(client, connections: int = 8) -> None:
    """Open a few connections before traffic: a burst of first requests would otherwise spend its short
    timeouts on connection setup."""
    try:
        async with asyncio.timeout(2):
            await asyncio.gather(*(client.ping() for _ in range(connections)))
    except Exception:  # the first request will find out and apply its fail mode
        pass
