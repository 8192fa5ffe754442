"""Rate limits through the engine (local store) and against a real Redis: exact shared limits, atomicity,
fail-open / fail-closed when Redis is killed or hangs (decided quickly and logged), plans per consumer, keys,
and the RateLimit-Policy / RateLimit / Retry-After headers."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import aiohttp
import pytest
from redis.asyncio import Redis

from gatewatch.edge.policies.apikey import hash_key
from gatewatch.edge.policies.config import RedisStoreConfig
from gatewatch.edge.policies.limiter import RedisStore
from tests.edge.policies.support import policy_config, policy_logs, server_span
from tests.support.runtime import running


async def get(port, n=1, headers=None, path="/api/x"):
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as r:
                await r.read()
                out.append((r.status, r.headers.copy()))
    return out


@pytest.mark.parametrize("algorithm", ["token_bucket", "sliding_window"])
async def test_redis_store_is_atomic_across_clients(redis_server, algorithm):
    cfg = RedisStoreConfig(url=redis_server.url, timeout_s=1)
    clients = [Redis.from_url(redis_server.url), Redis.from_url(redis_server.url)]
    stores = [RedisStore(c, cfg) for c in clients]
    try:
        hits = await asyncio.gather(*(stores[i % 2].hit("k", algorithm, 50, 3600) for i in range(200)))
    finally:
        for c in clients:
            await c.aclose()
    assert sum(h.allowed for h in hits) == 50
    assert sorted(h.remaining for h in hits if h.allowed) == list(range(50))


async def test_local_limit_headers_and_consumer_metric(echo_port, tmp_path):
    cfg = policy_config(echo_port, tmp_path, [{"name": "rl", "type": "rate_limit", "limit": 2, "window_s": 60}])
    async with running(cfg) as rt:
        results = await get(rt.listeners[0].bound[1], 3)
        assert [s for s, _ in results] == [200, 200, 429]
        (_, first), (_, second), (_, refused) = results
        assert first["RateLimit-Policy"] == '"rl";q=2;w=60'
        assert first["RateLimit"].startswith('"rl";r=1;t=')
        assert second["RateLimit"].startswith('"rl";r=0;t=')
        assert refused["RateLimit"].startswith('"rl";r=0;t=') and int(refused["Retry-After"]) >= 1
        assert rt.metrics.ratelimit_consumers.labels("api", "")._value.get() == 1


async def test_plans_per_consumer_and_capped_consumer_label(echo_port, tmp_path):
    keys = [{"consumer": "gold-co", "hash": hash_key("k-gold"), "plan": "gold"},
            {"consumer": "free-co", "hash": hash_key("k-free")}]
    cfg = policy_config(echo_port, tmp_path, [
        {"name": "key", "type": "api_key", "keys": keys},
        {"name": "rl", "type": "rate_limit", "key": "consumer", "limit": 1, "window_s": 60,
         "plans": {"gold": {"limit": 3, "window_s": 60}}}])
    async with running(cfg) as rt:
        port = rt.listeners[0].bound[1]
        gold = await get(port, 4, {"X-API-Key": "k-gold"})
        free = await get(port, 2, {"X-API-Key": "k-free"})
        assert [s for s, _ in gold] == [200, 200, 200, 429]
        assert [s for s, _ in free] == [200, 429]
        assert gold[0][1]["RateLimit-Policy"] == '"rl";q=3;w=60'
        assert rt.metrics.ratelimit_consumers.labels("api", "gold-co")._value.get() == 1
        assert rt.metrics.ratelimit_consumers.labels("api", "free-co")._value.get() == 1


@pytest.mark.parametrize("policy,requests,statuses", [
    # by header: each value has its own budget; no header → the client address
    ({"key": "header", "header": "X-Tenant"}, [{"X-Tenant": "a"}, {"X-Tenant": "b"}, {"X-Tenant": "a"}, {}, {}],
     [200, 200, 429, 200, 429]),
    # by client address behind a trusted proxy: the right-most untrusted X-Forwarded-For hop
    ({"key": "client_address", "trusted_proxies": ["127.0.0.1/32"]},
     [{"X-Forwarded-For": "198.51.100.1"}, {"X-Forwarded-For": "203.0.113.5, 198.51.100.2"},
      {"X-Forwarded-For": "203.0.113.5, 198.51.100.1"}], [200, 200, 429]),
    # by route: everyone shares one budget
    ({"key": "route"}, [{"X-Forwarded-For": "198.51.100.1"}, {}], [200, 429]),
])
async def test_keys(echo_port, tmp_path, policy, requests, statuses):
    cfg = policy_config(echo_port, tmp_path, [{"name": "rl", "type": "rate_limit", "limit": 1, "window_s": 60,
                                               **policy}])
    async with running(cfg) as rt:
        got = [(await get(rt.listeners[0].bound[1], 1, h))[0][0] for h in requests]
    assert got == statuses


def redis_policy(url, on_error, limit=3):
    return {"name": "rl", "type": "rate_limit", "limit": limit, "window_s": 3600, "store": "redis",
            "redis": {"url": url, "timeout_s": 0.05, "on_error": on_error, "retry_after_s": 0.3}}


@pytest.mark.parametrize("on_error,status_when_down", [("open", 200), ("closed", 429)])
async def test_redis_killed_fails_open_or_closed_as_configured_and_logs_it(echo_port, tmp_path, otlp, redis_server,
                                                                           on_error, status_when_down):
    cfg = policy_config(echo_port, tmp_path, [redis_policy(redis_server.url, on_error)])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        port = rt.listeners[0].bound[1]
        assert [s for s, _ in await get(port, 4)] == [200, 200, 200, 429]  # the shared limit, from Redis
        redis_server.kill()
        t0 = time.monotonic()
        down = await get(port, 3)
        assert time.monotonic() - t0 < 1.0  # decided within the timeout, then the store is skipped a while
        assert [s for s, _ in down] == [status_when_down] * 3
        if on_error == "closed":
            assert down[0][1]["Retry-After"] == "1"
        request_id = down[0][1]["X-Request-Id"]
        redis_server.start()  # the same port: the limiter recovers by itself after retry_after_s
        await asyncio.sleep(0.4)
        assert [s for s, _ in await get(port, 1)] == [200]
        assert rt.metrics.policy_verdicts.value(("api", "rl", "rate_limit", "error",
                                                 "ratelimit.store_unavailable")) == 3
    span = server_span(otlp, request_id)
    assert span["attributes"]["gatewatch.outcome"] == ("proxied" if on_error == "open" else "rate_limited")
    [log] = policy_logs(otlp, request_id)
    assert log["attributes"]["gatewatch.decision.result"] == "error"
    assert log["attributes"]["gatewatch.decision.reason"] == "ratelimit.store_unavailable"


async def test_a_redis_restart_between_requests_is_not_an_outage(echo_port, tmp_path, redis_server):
    """Pooled connections from before a restart are dead; the first command on one fails with a connection
    error. It is retried once on a new connection (never on a timeout), so a store that is back answers."""
    cfg = policy_config(echo_port, tmp_path, [redis_policy(redis_server.url, "closed", limit=100)])
    async with running(cfg) as rt:
        port = rt.listeners[0].bound[1]
        assert [s for s, _ in await get(port, 3)] == [200] * 3  # connections pooled
        redis_server.kill()
        redis_server.start()  # the same port, nothing sent meanwhile
        assert [s for s, _ in await get(port, 3)] == [200] * 3
        assert rt.metrics.policy_verdicts.value(("api", "rl", "rate_limit", "error",
                                                 "ratelimit.store_unavailable")) == 0


async def test_hung_redis_costs_at_most_about_one_timeout(echo_port, tmp_path, redis_server):
    cfg = policy_config(echo_port, tmp_path, [redis_policy(redis_server.url, "open", limit=100)])
    async with running(cfg) as rt:
        port = rt.listeners[0].bound[1]
        await get(port, 1)  # connection established
        os.kill(redis_server.proc.pid, signal.SIGSTOP)
        try:
            elapsed = []
            for _ in range(5):
                t0 = time.monotonic()
                [(status, _)] = await get(port, 1)
                elapsed.append(time.monotonic() - t0)
                assert status == 200
        finally:
            os.kill(redis_server.proc.pid, signal.SIGCONT)
    assert all(e < 0.4 for e in elapsed[:3]), elapsed  # each at most about one timeout (2 x 0.05 s) ...
    assert all(e < 0.05 for e in elapsed[3:]), elapsed  # ... then the store is skipped for retry_after_s
