"""`rate_limit`: count the request against a key's limit (local or Redis store) and refuse it when exceeded.

The key is the consumer (set by an earlier jwt/api_key policy), the client address (trusted-proxy model as in
`ip_access`), the route, or a header's value; a consumer or header key that is absent falls back to the client
address, so nobody escapes the limit by leaving it out. A consumer on a configured plan gets that plan's limit
(its own counter). Every answer carries `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers);
a refusal (429) also `Retry-After`.

Reasons: ratelimit.within_limit, ratelimit.exceeded, ratelimit.store_unavailable (verdict `error`; the
policy's `redis.on_error` decides: `open` lets the request through, `closed` refuses it with 429).
"""

from __future__ import annotations

import hashlib
import math

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny, error
from gatewatch.edge.policies.ip_access import _nets, client_ip
from gatewatch.edge.policies.limiter import Hit
from gatewatch.telemetry.names import Attr, Outcome, PolicyReason as R

MAX_KEY_PART = 128
WITHIN = R.RATELIMIT_WITHIN.value  # plain str: verdicts cross a pipe to the exporter process
LIMIT, REMAINING, STORE_RTT = Attr.RATELIMIT_LIMIT, Attr.RATELIMIT_REMAINING, Attr.RATELIMIT_STORE_RTT


def _part(value: str) -> str:
    if len(value) <= MAX_KEY_PART and value.isprintable():
        return value
    return "h:" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()


class RateLimitPolicy:
    type = "rate_limit"

    def __init__(self, cfg, route: str, store, metrics):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.route = route
        self.store = store  # LocalStore | RedisStore
        self.redis = cfg.store == "redis"
        self.metrics = metrics
        self.trusted = _nets(cfg.trusted_proxies)
        self.fail_closed = cfg.store == "redis" and cfg.redis.on_error == "closed"
        self.retry_after_s = cfg.redis.retry_after_s if cfg.redis else 1.0
        prefix = cfg.redis.key_prefix if cfg.store == "redis" else "rl"
        self.prefix = f"{prefix}:{route}:{cfg.name}"
        self._policy_headers: dict[tuple[int, float], str] = {}
        self.header = cfg.header.lower() if cfg.header else ""

    def key(self, req: PolicyRequest) -> str:
        kind = self.cfg.key
        if kind == "route":
            return "route"
        if kind == "consumer" and req.consumer:
            return "consumer:" + _part(req.consumer)
        if kind == "header":
            value = req.head.header(self.header)
            if value:
                return "header:" + _part(value)
        addr = client_ip(req, self.trusted)
        return "addr:" + (str(addr) if addr is not None else _part(req.client_address))

    def _policy_header(self, limit: int, window_s: float) -> str:
        value = self._policy_headers.get((limit, window_s))
        if value is None:  # at most one per plan
            value = self._policy_headers[(limit, window_s)] = f'"{self.name}";q={limit};w={_secs(window_s)}'
        return value

    def limits(self, req: PolicyRequest) -> tuple[str, int, float]:
        plan = self.cfg.plans.get(req.plan) if req.plan else None
        if plan is not None:
            return f"plan:{_part(req.plan)}:", plan.limit, plan.window_s
        return "", self.cfg.limit, self.cfg.window_s

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        plan_key, limit, window_s = self.limits(req)
        hit: Hit | None = await self.store.hit(f"{self.prefix}:{plan_key}{self.key(req)}", self.cfg.algorithm,
                                               limit, window_s, req.trace_id)
        consumer = {Attr.CONSUMER: req.consumer} if req.consumer else {}
        if hit is None:
            retry = (("Retry-After", str(max(1, math.ceil(self.retry_after_s)))),)
            outage = self.store.health.event_id if self.redis else None
            return error(self, R.RATELIMIT_STORE_UNAVAILABLE.value, self.fail_closed, 429, Outcome.RATE_LIMITED,
                         "the rate limiter is unavailable", retry, **{Attr.RATELIMIT_LIMIT: limit}, **consumer,
                         **({Attr.EVENT_ID: outage} if outage else {}))
        attrs = {LIMIT: hit.limit, REMAINING: hit.remaining, **consumer}
        if self.redis and self.store.last_rtt_s is not None:
            attrs[STORE_RTT] = self.store.last_rtt_s
        if not self.shadow:
            req.response_headers.append(("RateLimit-Policy", self._policy_header(limit, window_s)))
            req.response_headers.append(("RateLimit", f'"{self.name}";r={hit.remaining};t={_secs(hit.reset_s)}'))
        if hit.allowed:
            return allow(self, WITHIN, **attrs)
        if not self.shadow:
            self.metrics.ratelimit_consumers.labels(self.route, self.metrics.consumer_label(req.consumer)).inc()
        return deny(self, R.RATELIMIT_EXCEEDED.value, 429, Outcome.RATE_LIMITED, None,
                    (("Retry-After", str(max(1, _secs(hit.retry_after_s)))),), **attrs)


def _secs(s: float) -> int:
    return max(0, math.ceil(s - 1e-9))
