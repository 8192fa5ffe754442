"""The balancer at work inside a running gateway, on real loopback servers: retries and their budget, outlier
ejection linked to the failing requests, active health checks, limits, affinity, hashing, draining, priority
failover — each asserted on the wire, in the spans and decision logs (decoded OTLP) and in the metrics."""

from __future__ import annotations

import asyncio
import collections

import aiohttp
from aiohttp import web

from tests.support.net import closed_port
from tests.support.runtime import running


class Backend:
    """A real aiohttp server on port 0 that records every request (method, X-Request-Id) it saw."""

    def __init__(self, name: str, status: int = 200, delay_s: float = 0.0, health_status: int = 200):
        self.name, self.status, self.delay_s, self.health_status = name, status, delay_s, health_status
        self.seen: list[tuple[str, str | None]] = []
        self.reset = False  # close the connection without answering

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/healthz":
            return web.Response(status=self.health_status)
        await request.read()
        self.seen.append((request.method, request.headers.get("X-Request-Id")))
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.reset:
            request.transport.abort()
            await asyncio.sleep(0.05)
        return web.json_response({"instance": self.name}, status=self.status)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def config(tmp_path, instances, route=None, **pool):
    r = {"name": "api", "match": {"path": {"prefix": "/"}}, "upstream": "pool",
         "timeouts": {"connect_s": 0.5, "response_s": 2, "idle_s": 2}}
    r.update(route or {})
    return {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"local_dir": str(tmp_path / "telemetry"), "exporter": "thread"},
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], "routes": [r]},
        "balancer": {"pools": [{"name": "pool", "instances": instances, **pool}]},
    }


def inst(name, port, **extra):
    return {"id": name, "host": "127.0.0.1", "port": port, **extra}


async def call(rt, method="GET", path="/x", headers=None, data=None, session=None):
    port = rt.listeners[0].bound[1]
    own = session is None
    session = session or aiohttp.ClientSession()
    try:
        async with session.request(method, f"http://127.0.0.1:{port}{path}", headers=headers or {},
                                   data=data) as r:
            body = await r.read()
            return r.status, r.headers, body
    finally:
        if own:
            await session.close()


def sample(rt, name, **labels):
    for fam in rt.metrics.collect_all():
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return 0.0


def logs_of(otlp, request_id):
    return [r for r in otlp.data.snapshot()[1] if r["attributes"].get("gatewatch.request_id") == request_id]


async def test_get_is_retried_on_another_instance_after_connect_failure(tmp_path, otlp):
    dead = closed_port()
    async with Backend("live") as live:
        cfg = config(tmp_path, [inst("dead", dead), inst("live", live.port)])
        async with running(cfg, env=otlp.env("grpc")) as rt:
            results = [await call(rt) for _ in range(6)]
            assert [s for s, _, _ in results] == [200] * 6
            assert sample(rt, "gatewatch_retries_total", gatewatch_route="api",
                          reason="retry.connect_failure") == 3  # round robin: every other request met "dead"
            assert sample(rt, "gatewatch_failovers_total", gatewatch_pool="pool",
                          reason="failover.retry_other_instance") == 3
            ids = [h["X-Request-Id"] for _, h, _ in results]
    retried = None
    assert otlp.data.wait_for(lambda spans, logs: sum(
        1 for r in logs if r["event_name"] == "gatewatch.decision.retry") >= 3)
    for rid in ids:
        if any(r["event_name"] == "gatewatch.decision.retry" for r in logs_of(otlp, rid)):
            retried = rid
    logs = logs_of(otlp, retried)
    retry = next(r for r in logs if r["event_name"] == "gatewatch.decision.retry")
    assert retry["attributes"]["gatewatch.decision.result"] == "retry"
    assert retry["attributes"]["gatewatch.instance"] == "dead"
    failover = next(r for r in logs if r["event_name"] == "gatewatch.decision.failover")
    assert (failover["attributes"]["gatewatch.failover.from"], failover["attributes"]["gatewatch.failover.to"]) == \
        ("dead", "live")
    spans = [s for s in otlp.data.trace(retry["trace_id"]) if s["kind"] == "CLIENT"]
    assert otlp.data.wait_for(lambda sp, lg: len([s for s in otlp.data.trace(retry["trace_id"])
                                                   if s["kind"] == "CLIENT"]) == 2)
    spans = sorted((s for s in otlp.data.trace(retry["trace_id"]) if s["kind"] == "CLIENT"), key=lambda s: s["start"])
    assert [s["attributes"]["gatewatch.instance"] for s in spans] == ["dead", "live"]
    assert spans[0]["attributes"]["error.type"] == "connect_refused"
    assert "http.request.resend_count" not in spans[0]["attributes"]
    assert spans[1]["attributes"]["http.request.resend_count"] == 1
    assert "dead=tried" in spans[1]["attributes"]["gatewatch.lb.excluded"]


async def test_post_is_never_resent_after_it_may_have_reached_the_upstream(tmp_path, otlp):
    async with Backend("a") as a, Backend("b") as b:
        a.reset = b.reset = True
        cfg = config(tmp_path, [inst("a", a.port), inst("b", b.port)],
                     route={"retries": {"attempts": 3, "retry_on": ["connect_failure", "reset", "status"]}})
        async with running(cfg, env=otlp.env("grpc")) as rt:
            status, headers, _ = await call(rt, "POST", data=b"pay once")
            assert status == 502
            rid = headers["X-Request-Id"]
            get_status, _, _ = await call(rt, "GET")
    assert [m for m, r in a.seen + b.seen if r == rid] == ["POST"]  # exactly one upstream saw the POST
    assert get_status == 502 and len(a.seen + b.seen) == 4  # the GET was tried on both, then a then b again
    assert otlp.data.wait_for(lambda s, l: any(r["event_name"] == "gatewatch.decision.retry" for r in logs_of(otlp, rid)))
    [refused] = [r for r in logs_of(otlp, rid) if r["event_name"] == "gatewatch.decision.retry"]
    assert refused["attributes"]["gatewatch.decision.result"] == "refused"
    assert refused["attributes"]["gatewatch.decision.reason"] == "retry.not_idempotent"


async def test_post_is_retried_when_nothing_reached_the_upstream(tmp_path):
    async with Backend("live") as live:
        cfg = config(tmp_path, [inst("dead", closed_port()), inst("live", live.port)])
        async with running(cfg) as rt:
            statuses = [(await call(rt, "POST", data=b"x" * 1000))[0] for _ in range(4)]
    assert statuses == [200] * 4
    assert len(live.seen) == 4


async def test_retryable_status_is_retried_for_get_and_relayed_for_post(tmp_path):
    async with Backend("sick", status=503) as sick, Backend("ok") as ok:
        cfg = config(tmp_path, [inst("sick", sick.port), inst("ok", ok.port)],
                     route={"retries": {"attempts": 2, "retry_on": ["status"], "statuses": [503]}})
        async with running(cfg) as rt:
            gets = [(await call(rt))[0] for _ in range(4)]
            posts = [(await call(rt, "POST", data=b"x"))[0] for _ in range(4)]
    assert gets == [200] * 4
    assert sorted(posts) == [200, 200, 503, 503]  # the sick instance's own answer, relayed, never resent


async def test_retry_budget_holds_under_a_full_outage(tmp_path):
    """20 concurrent GETs against instances that all reset: at most max(min_concurrent, 20 % of 20) = 4
    retries run; every other wanted retry is refused and counted."""
    async with Backend("a", delay_s=0.3) as a, Backend("b", delay_s=0.3) as b:
        a.reset = b.reset = True
        cfg = config(tmp_path, [inst("a", a.port), inst("b", b.port)],
                     route={"retries": {"attempts": 3, "backoff_base_s": 0, "budget": {"percent": 20, "min_concurrent": 1}}})
        async with running(cfg) as rt:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as s:
                results = await asyncio.gather(*(call(rt, session=s) for _ in range(20)))
            retries = sample(rt, "gatewatch_retries_total", reason="retry.reset")
            exhausted = sample(rt, "gatewatch_retry_budget_exhausted_total", gatewatch_route="api")
    assert all(st == 502 for st, _, _ in results)
    assert 1 <= retries <= 4 + 4  # at most 4 in the first wave, then at most 4 retries of those retries
    assert exhausted >= 12
    assert len(a.seen) + len(b.seen) == 20 + retries  # every retry is a real upstream request, none hidden


async def test_outlier_ejection_names_the_requests_that_caused_it(tmp_path, otlp):
    async with Backend("bad", status=502) as bad, Backend("good") as good:
        cfg = config(tmp_path, [inst("bad", bad.port), inst("good", good.port)],
                     route={"retries": {"attempts": 1}},
                     outlier_detection={"consecutive_gateway_errors": 3, "base_ejection_s": 30,
                                        "max_ejection_percent": 50})
        async with running(cfg, env=otlp.env("grpc")) as rt:
            failing = []
            for _ in range(6):  # round robin: bad, good, bad, good, bad (→ ejected), good
                status, headers, _ = await call(rt)
                if status == 502:
                    failing.append(headers["traceresponse"].split("-")[1])
            after = [(await call(rt))[2] for _ in range(4)]
            assert sample(rt, "gatewatch_ejections_total", gatewatch_instance="bad",
                          reason="outlier.consecutive_gateway_errors") == 1
            rt.refresh_gauges()
            assert sample(rt, "gatewatch_endpoints", gatewatch_pool="pool", state="ejected") == 1
    assert len(failing) == 3
    assert all(b'"good"' in body for body in after)  # the ejected instance takes no traffic
    assert otlp.data.wait_for(lambda s, l: any(r["event_name"] == "gatewatch.outlier.ejection" for r in l))
    [ejection] = [r for r in otlp.data.snapshot()[1] if r["event_name"] == "gatewatch.outlier.ejection"]
    assert ejection["attributes"]["gatewatch.outlier.trace_ids"] == failing
    assert ejection["trace_id"] == failing[-1]  # the request that tipped it
    assert ejection["severity"] == "WARN"
    [transition] = [r for r in otlp.data.snapshot()[1] if r["event_name"] == "gatewatch.health.transition"]
    assert (transition["attributes"]["gatewatch.health.from"], transition["attributes"]["gatewatch.health.to"]) == \
        ("healthy", "ejected")
    # the ejected instance is listed with its reason on the spans of later requests
    assert otlp.data.wait_for(lambda s, l: any("bad=ejected" in x["attributes"].get("gatewatch.lb.excluded", [])
                                               for x in s if x["kind"] == "CLIENT"))


async def test_active_health_checks_take_an_instance_out_and_back(tmp_path, otlp):
    async with Backend("a", health_status=200) as a, Backend("b", health_status=200) as b:
        cfg = config(tmp_path, [inst("a", a.port), inst("b", b.port)],
                     health_check={"path": "/healthz", "interval_s": 0.1, "jitter_s": 0, "timeout_s": 0.1,
                                   "healthy_threshold": 2, "unhealthy_threshold": 2})
        async with running(cfg, env=otlp.env("grpc")) as rt:
            b.health_status = 503
            for _ in range(50):
                if rt.balancer.pools["pool"].states()["b"] == "unhealthy":
                    break
                await asyncio.sleep(0.05)
            bodies = [(await call(rt))[2] for _ in range(4)]
            assert all(b'"a"' in x for x in bodies)
            b.health_status = 200
            for _ in range(50):
                if rt.balancer.pools["pool"].states()["b"] == "healthy":
                    break
                await asyncio.sleep(0.05)
            bodies = [(await call(rt))[2] for _ in range(4)]
            assert sum(b'"b"' in x for x in bodies) == 2
            assert sample(rt, "gatewatch_health_probes_total", gatewatch_instance="b", result="fail") >= 2
    probe_paths = [m for m, _ in b.seen]
    assert probe_paths.count("GET") == 2  # probes are not in `seen` (only /healthz answers them)
    assert otlp.data.wait_for(lambda s, l: [
        (r["attributes"]["gatewatch.health.from"], r["attributes"]["gatewatch.health.to"])
        for r in l if r["event_name"] == "gatewatch.health.transition"] == [("healthy", "unhealthy"),
                                                                              ("unhealthy", "healthy")])
    transitions = [r for r in otlp.data.snapshot()[1] if r["event_name"] == "gatewatch.health.transition"]
    assert transitions[0]["attributes"]["gatewatch.health.probe_result"] == "status 503"
    assert transitions[0]["trace_id"] == ""  # probes are not request traces
    assert not any(s["attributes"].get("url.path") == "/healthz" for s in otlp.data.snapshot()[0])


async def test_instance_over_its_limit_is_skipped_and_all_over_limit_is_503_overflow(tmp_path):
    async with Backend("a", delay_s=0.5) as a:
        cfg = config(tmp_path, [inst("a", a.port)], max_connections_per_instance=1, max_pending_per_instance=0)
        async with running(cfg) as rt:
            async with aiohttp.ClientSession() as s:
                first = asyncio.create_task(call(rt, session=s))
                await asyncio.sleep(0.1)
                status, _, body = await call(rt, session=s)
                assert (await first)[0] == 200
    assert status == 503 and b'"upstream_overflow"' in body


async def test_affinity_cookie_pins_a_client_to_its_instance(tmp_path):
    async with Backend("a") as a, Backend("b") as b, Backend("c") as c:
        cfg = config(tmp_path, [inst("a", a.port), inst("b", b.port), inst("c", c.port)],
                     affinity={"cookie": "gw", "ttl_s": 60})
        async with running(cfg) as rt:
            _, headers, body = await call(rt)
            cookie = headers["Set-Cookie"]
            assert cookie.startswith("gw=") and "Max-Age=60" in cookie and "HttpOnly" in cookie
            value = cookie.split(";")[0]
            pinned = [await call(rt, headers={"Cookie": value}) for _ in range(6)]
            unpinned = [(await call(rt))[2] for _ in range(6)]
    assert {p[2] for p in pinned} == {body}
    assert all("Set-Cookie" not in p[1] for p in pinned)  # already pinned: nothing new to set
    assert len(set(unpinned)) == 3
    assert all(x not in value for x in ("127.0.0.1", str(a.port)))


async def test_consistent_hash_by_header_keeps_a_key_on_one_instance(tmp_path):
    async with Backend("a") as a, Backend("b") as b, Backend("c") as c:
        cfg = config(tmp_path, [inst("a", a.port), inst("b", b.port), inst("c", c.port)],
                     algorithm="maglev", hash_key={"source": "header", "name": "X-User"})
        async with running(cfg) as rt:
            per_user = {u: {(await call(rt, headers={"X-User": u}))[2] for _ in range(3)} for u in
                        (f"user-{n}" for n in range(12))}
    assert all(len(v) == 1 for v in per_user.values())
    assert len({next(iter(v)) for v in per_user.values()}) == 3  # and the keys spread over all three


async def test_draining_by_admin_api_lets_in_flight_requests_finish(tmp_path):
    async with Backend("a", delay_s=0.4) as a, Backend("b") as b:
        cfg = config(tmp_path, [inst("a", a.port), inst("b", b.port)])
        async with running(cfg) as rt:
            admin = f"http://{rt.admin_bound[0]}:{rt.admin_bound[1]}"
            async with aiohttp.ClientSession() as s:
                in_flight = asyncio.create_task(call(rt, session=s))  # round robin: goes to a
                await asyncio.sleep(0.1)
                async with s.post(f"{admin}/upstreams/pool/instances/a/drain") as r:
                    assert r.status == 200
                later = [(await call(rt, session=s))[2] for _ in range(4)]
                status, _, body = await in_flight
                async with s.get(f"{admin}/upstreams") as r:
                    state = await r.json()
                async with s.post(f"{admin}/upstreams/pool/instances/nope/drain") as r:
                    assert r.status == 404
    assert status == 200 and b'"a"' in body
    assert all(b'"b"' in x for x in later)
    assert {i["id"]: i["state"] for i in state["pools"]["pool"]["instances"]} == {"a": "draining", "b": "healthy"}


async def test_priority_failover_moves_traffic_to_the_next_zone_and_back(tmp_path, otlp):
    async with Backend("a1") as a1, Backend("a2") as a2, Backend("b1") as b1:
        cfg = config(tmp_path, [inst("a1", a1.port, zone="za"), inst("a2", a2.port, zone="za"),
                                inst("b1", b1.port, zone="zb", priority=1)],
                     health_check={"path": "/healthz", "interval_s": 0.1, "jitter_s": 0, "timeout_s": 0.1,
                                   "healthy_threshold": 1, "unhealthy_threshold": 1},
                     failover={"min_healthy_percent": 70, "panic_threshold_percent": 0})
        async with running(cfg, env=otlp.env("grpc")) as rt:
            before = collections.Counter([(await call(rt))[2] for _ in range(6)])
            a2.health_status = 503
            for _ in range(50):
                if rt.balancer.pools["pool"].view().priority == 1:
                    break
                await asyncio.sleep(0.05)
            during = collections.Counter([(await call(rt))[2] for _ in range(6)])
            a2.health_status = 200
            for _ in range(50):
                if rt.balancer.pools["pool"].view().priority == 0:
                    break
                await asyncio.sleep(0.05)
            after = collections.Counter([(await call(rt))[2] for _ in range(6)])
            rt.refresh_gauges()
            assert sample(rt, "gatewatch_failovers_total", gatewatch_pool="pool",
                          reason="failover.priority_degraded") == 1
    assert set(before) == {b'{"instance": "a1"}', b'{"instance": "a2"}'}
    assert set(during) == {b'{"instance": "b1"}'}  # a1 alone is 50 % of zone a: below 70 %, all to zone b
    assert set(after) == set(before)
    assert otlp.data.wait_for(lambda s, l: [
        (r["attributes"]["gatewatch.failover.from"], r["attributes"]["gatewatch.failover.to"])
        for r in l if r["event_name"] == "gatewatch.decision.failover"] == [("0", "1"), ("1", "0")])
    assert any(s["attributes"].get("gatewatch.lb.priority") == 1 for s in otlp.data.snapshot()[0]
               if s["kind"] == "CLIENT")
