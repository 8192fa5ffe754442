"""Compile the policies of a layer's routes into runtime objects (once per snapshot), with the shared
resources they need (metrics, telemetry, clients that live as long as the process).

`PolicyResources` owns the process-wide clients: one aiohttp session for identity-provider calls (discovery,
JWKS, introspection; each policy's `tls` settings go with its requests), one JWKS cache per key source and one
introspection client per endpoint and credentials (both live while a policy of the running config uses them,
so their caches survive reloads), one availability record per provider endpoint (`ProviderHealth`, kept for
the process's life, as each Redis store's `StoreHealth`), one Redis client per URL (policies sharing a Redis
share its connection pool). They are created lazily while policies are built (no I/O), connected in `start()`
(each key set's refresh schedule starts with a first fetch, in the background: a down identity provider must not
stop the gateway from starting) and closed in `close()`.
"""

from __future__ import annotations

import asyncio
import random
import time
import weakref
from dataclasses import dataclass, field
from typing import Callable

from gatewatch.edge.policies import config as c
from gatewatch.edge.policies.apikey import ApiKeyPolicy
from gatewatch.edge.policies.client_cert import ClientCertPolicy
from gatewatch.edge.policies.base import Policy
from gatewatch.edge.policies.circuit import CircuitBreakerPolicy
from gatewatch.edge.policies.cors import CorsPolicy
from gatewatch.edge.policies.introspect import Introspector
from gatewatch.edge.policies.introspection import IntrospectionPolicy
from gatewatch.edge.policies.ip_access import IpAccessPolicy
from gatewatch.edge.policies.jwks import JwksCache, keep_fresh
from gatewatch.edge.policies.jwt_auth import JwtPolicy
from gatewatch.edge.policies.limiter import MAX_REDIS_CONNECTIONS, LocalStore, RedisStore, StoreHealth
from gatewatch.edge.policies.oidc import Discovery
from gatewatch.edge.policies.provider import Http, ProviderHealth, safe_url
from gatewatch.edge.policies.ratelimit import RateLimitPolicy
from gatewatch.edge.policies.schema import JsonSchemaPolicy
from gatewatch.edge.policies.size import SizeLimitPolicy
from gatewatch.edge.policies.json_transform import JsonTransformPolicy
from gatewatch.edge.policies.transform import HeadersPolicy, PathRewritePolicy
from gatewatch.io.tls import client_context
from gatewatch.telemetry.names import AuthEndpoint
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
    rng: random.Random = field(default_factory=random.Random)  # backoff jitter
    # (jwks settings, discovered issuer, tls) → JwksCache; held by the policies using it, gone with the last one
    jwks: weakref.WeakValueDictionary = field(default_factory=weakref.WeakValueDictionary)
    introspectors: weakref.WeakValueDictionary = field(default_factory=weakref.WeakValueDictionary)
    providers: dict = field(default_factory=dict)  # (provider, AuthEndpoint) → ProviderHealth
    tls_contexts: dict = field(default_factory=dict)  # UpstreamTLSConfig → ssl.SSLContext
    redis: dict = field(default_factory=dict)  # (url, timeout) → redis.asyncio.Redis
    redis_slots: dict = field(default_factory=dict)  # (url, timeout) → Semaphore shared by its stores
    stores: dict = field(default_factory=dict)  # url → StoreHealth
    _tasks: list = field(default_factory=list)
    _started: bool = False

    def jwks_cache(self, cfg) -> JwksCache | None:
        """The key set of a jwt policy (`cfg`): `jwks.url`, or the one OIDC discovery of `issuer` names; None
        when the policy has only `keys`."""
        if cfg.jwks is None and not cfg.discovers:
            return None
        settings = cfg.jwks or c.JwksConfig()
        issuer = cfg.issuer if cfg.discovers else None
        key = (settings, issuer, cfg.tls)
        cache = self.jwks.get(key)
        if cache is None:
            http = self.http(cfg.tls)
            discovery = None if issuer is None else Discovery(
                issuer, http, settings.timeout_s, self.provider_health(issuer, AuthEndpoint.DISCOVERY),
                self.monotonic)
            cache = self.jwks[key] = JwksCache(
                settings, self._session, self.monotonic, http=http, discovery=discovery, rng=self.rng,
                health=self.provider_health(issuer or settings.url, AuthEndpoint.JWKS))
            if self._started:  # built by a reload: its schedule starts now
                self._schedule(cache)
        return cache

    def introspector(self, cfg) -> Introspector:
        """One client (answer cache, backoff) per endpoint, credentials and settings, shared by the policies
        that use it."""
        key = (cfg.endpoint, cfg.client_id, cfg.secret(), cfg.token_type_hint, cfg.timeout_s, cfg.retry_after_s,
               cfg.retry_max_s, cfg.cache, cfg.tls)
        client = self.introspectors.get(key)
        if client is None:
            client = self.introspectors[key] = Introspector(
                cfg, self.http(cfg.tls), self.provider_health(cfg.endpoint, AuthEndpoint.INTROSPECTION),
                self.monotonic, self.rng)
        return client

    def provider_health(self, url: str, endpoint: AuthEndpoint) -> ProviderHealth:
        key = (safe_url(url), endpoint)
        health = self.providers.get(key)
        if health is None:
            health = self.providers[key] = ProviderHealth(url, endpoint, self.metrics, self.telemetry)
        return health

    def http(self, tls) -> Http:
        """The transport for a policy's provider calls: the shared session with its `tls` settings (the
        upstream TLS model and context builder, so a private CA, SNI and mTLS mean the same everywhere)."""
        if tls is None:
            return Http(self._session)
        ctx = self.tls_contexts.get(tls)
        if ctx is None:
            ctx = self.tls_contexts[tls] = client_context(tls.ca_file, tls.verify, tls.client_cert, tls.client_key,
                                                          tls.min_version)
        return Http(self._session, ctx, tls.server_name)

    def _schedule(self, cache: JwksCache) -> None:
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.get_running_loop().create_task(keep_fresh(weakref.ref(cache))))

    def _session(self):
        if self.session is None:  # a policy evaluated before start() (tests driving policies directly)
            self._new_session()
        return self.session

    def _new_session(self) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(headers={"User-Agent": "gatewatch-auth"})

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
            from redis.exceptions import ConnectionError as RedisConnectionError
            from redis.asyncio.retry import Retry  # the asyncio client awaits its retry object: not redis.retry

            # Short timeouts, and no retry on a timeout: an unreachable store must cost a request at most about
            # one timeout, after which the policy's fail mode decides (and the store is skipped a while). One
            # immediate retry on a connection error: a connection pooled before Redis restarted fails its first
            # command, and a store that is back must not be taken for an outage (the soak saw fail-closed 429s).
            client = self.redis[key] = Redis.from_url(
                cfg.url, socket_timeout=cfg.timeout_s, socket_connect_timeout=cfg.timeout_s,
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)), retry_on_timeout=False,
                health_check_interval=0, max_connections=MAX_REDIS_CONNECTIONS)
            self.redis_slots[key] = asyncio.Semaphore(MAX_REDIS_CONNECTIONS)
        return client

    async def start(self) -> None:
        self._started = True
        if (self.jwks or self.introspectors) and self.session is None:
            self._new_session()
        loop = asyncio.get_running_loop()
        for cache in list(self.jwks.values()):
            self._schedule(cache)
        for client in self.redis.values():  # open a first connection early; a failure here is not fatal
            self._tasks.append(loop.create_task(_warm(client)))

    async def close(self) -> None:
        for t in self._tasks:
            t.cancel()
        for cache in list(self.jwks.values()):
            cache.cancel()
        for client in list(self.introspectors.values()):
            client.cancel()
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
    "introspection": ((_A, R.INTROSPECTION_ACTIVE), *((_D, r) for r in (
        R.INTROSPECTION_MISSING, R.INTROSPECTION_OVERSIZED, R.INTROSPECTION_INACTIVE, R.INTROSPECTION_MISSING_CLAIM,
        R.INTROSPECTION_INSUFFICIENT_SCOPE)), (_E, R.INTROSPECTION_UNAVAILABLE)),
    "api_key": ((_A, R.APIKEY_VALID), (_D, R.APIKEY_MISSING), (_D, R.APIKEY_INVALID)),
    "client_cert": ((_A, R.CLIENT_CERT_VALID), (_D, R.CLIENT_CERT_MISSING), (_D, R.CLIENT_CERT_NOT_ALLOWED)),
    "rate_limit": ((_A, R.RATELIMIT_WITHIN), (_D, R.RATELIMIT_EXCEEDED), (_E, R.RATELIMIT_STORE_UNAVAILABLE)),
    "ip_access": ((_A, R.IP_ALLOWED), (_D, R.IP_DENIED)),
    "cors": ((_A, R.CORS_ALLOWED), (_A, R.CORS_PREFLIGHT), (_A, R.CORS_NO_ORIGIN), (_D, R.CORS_ORIGIN_DENIED)),
    "size_limit": ((_A, R.SIZE_WITHIN), (_D, R.SIZE_TOO_LARGE), (_E, R.BODY_STALLED)),
    "json_schema": ((_A, R.SCHEMA_VALID), (_A, R.SCHEMA_SKIPPED), (_D, R.SCHEMA_INVALID), (_D, R.SCHEMA_NOT_JSON),
                    (_D, R.SIZE_TOO_LARGE), (_E, R.SCHEMA_INVALID), (_E, R.BODY_STALLED)),
    "headers": ((_A, R.TRANSFORM_APPLIED),),
    "json_transform": ((_A, R.JSON_REQUEST_APPLIED), (_A, R.JSON_REQUEST_SKIPPED), (_D, R.JSON_REQUEST_INVALID),
                       (_D, R.SIZE_TOO_LARGE), (_E, R.BODY_STALLED), (_A, R.JSON_RESPONSE_APPLIED),
                       (_A, R.JSON_RESPONSE_SKIPPED), (_A, R.JSON_RESPONSE_TOO_LARGE), (_A, R.JSON_RESPONSE_INVALID)),
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
        return JwtPolicy(cfg, r.jwks_cache(cfg))
    if isinstance(cfg, c.IntrospectionPolicyConfig):
        return IntrospectionPolicy(cfg, r.introspector(cfg))
    if isinstance(cfg, c.ApiKeyPolicyConfig):
        return ApiKeyPolicy(cfg)
    if isinstance(cfg, c.ClientCertPolicyConfig):
        return ClientCertPolicy(cfg)
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
    if isinstance(cfg, c.JsonTransformPolicyConfig):
        return JsonTransformPolicy(cfg)
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
