"""The engine's phases, table-driven over the in-memory I/O pair (no sockets): upstream outcome × retry policy ×
failover × policy verdict, each case asserted on the client's answer, the attempts, the decisions recorded and
the metrics — telemetry as data."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from gatewatch.io.memory import Reply
from gatewatch.telemetry.names import ErrorType as E
from tests.support.engine import EngineHarness, by_instance

KEY = "k-123"
KEY_HASH = "sha256:" + __import__("hashlib").sha256(KEY.encode()).hexdigest()
OK, SICK = Reply(200, b'{"ok": true}'), Reply(503, b"busy")


def config(route: dict | None = None, pool: dict | None = None, instances: int = 2, upstreams=()):
    r = {"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "pool",
         "retries": {"attempts": 1, "backoff_base_s": 0}}
    r.update(route or {})
    return {
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], "routes": [r],
                 "upstreams": list(upstreams)},
        "balancer": {"pools": [{"name": "pool", "instances": [
            {"id": f"i{n}", "host": "10.0.0.1", "port": 9001 + n} for n in range(instances)], **(pool or {})}]},
    }


@dataclass
class Case:
    id: str
    upstream: dict  # instance port key → Reply | ErrorType | [script]
    status: int  # what the client gets
    outcome: str
    attempts: list[tuple]  # (instance, status or error.type, attempt outcome)
    decisions: list[tuple]  # (kind, result, reason) in order
    route: dict = field(default_factory=dict)
    pool: dict = field(default_factory=dict)
    method: str = "GET"
    target: str = "/api/x"
    headers: tuple = ()
    body: bytes | None = None
    error_type: str | None = None  # the request's error.type


ROUTE_OK = ("route", "matched", "route.matched")
PICK_RR = ("pick", "picked", "pick.round_robin")
RETRY_2 = {"attempts": 2, "backoff_base_s": 0}

CASES = [
    Case("proxied", {"p9001": OK}, 200, "proxied", [("i0", 200, "proxied")], [ROUTE_OK, PICK_RR]),
    Case("no-route", {}, 404, "no_route", [], [("route", "no_match", "route.no_match")], target="/elsewhere"),
    Case("invalid-path", {}, 400, "bad_request", [], [], target="/api/%zz", error_type="path_invalid_percent"),
    Case("connect-refused-then-retry-other", {"p9001": E.CONNECT_REFUSED, "p9002": OK}, 200, "proxied",
         [("i0", "connect_refused", "upstream_connect_error"), ("i1", 200, "proxied")],
         [ROUTE_OK, PICK_RR, ("retry", "retry", "retry.connect_failure"), PICK_RR,
          ("failover", "failover", "failover.retry_other_instance")], route={"retries": RETRY_2}),
    Case("connect-refused-one-attempt", {"p9001": E.CONNECT_REFUSED}, 502, "upstream_connect_error",
         [("i0", "connect_refused", "upstream_connect_error")], [ROUTE_OK, PICK_RR], error_type="connect_refused"),
    Case("post-is-retried-when-nothing-was-sent", {"p9001": E.CONNECT_REFUSED, "p9002": OK}, 200, "proxied",
         [("i0", "connect_refused", "upstream_connect_error"), ("i1", 200, "proxied")],
         [ROUTE_OK, PICK_RR, ("retry", "retry", "retry.connect_failure"), PICK_RR,
          ("failover", "failover", "failover.retry_other_instance")],
         route={"retries": RETRY_2}, method="POST", body=b"pay"),
    Case("post-reset-is-not-resent", {"p9001": E.UPSTREAM_RESET, "p9002": OK}, 502, "upstream_error",
         [("i0", "upstream_reset", "upstream_error")],
         [ROUTE_OK, PICK_RR, ("retry", "refused", "retry.not_idempotent")],
         route={"retries": RETRY_2}, method="POST", body=b"pay", error_type="upstream_reset"),
    Case("get-reset-is-retried", {"p9001": E.UPSTREAM_RESET, "p9002": OK}, 200, "proxied",
         [("i0", "upstream_reset", "upstream_error"), ("i1", 200, "proxied")],
         [ROUTE_OK, PICK_RR, ("retry", "retry", "retry.reset"), PICK_RR,
          ("failover", "failover", "failover.retry_other_instance")], route={"retries": RETRY_2}),
    Case("retryable-status-retried", {"p9001": SICK, "p9002": OK}, 200, "proxied",
         [("i0", "status_5xx", "upstream_error"), ("i1", 200, "proxied")],
         [ROUTE_OK, PICK_RR, ("retry", "retry", "retry.status"), PICK_RR,
          ("failover", "failover", "failover.retry_other_instance")],
         route={"retries": {**RETRY_2, "retry_on": ["status"], "statuses": [503]}}),
    Case("retryable-status-relayed-when-attempts-run-out", {"p9001": SICK, "p9002": SICK}, 503, "proxied",
         [("i0", "status_5xx", "upstream_error"), ("i1", 503, "proxied")],
         [ROUTE_OK, PICK_RR, ("retry", "retry", "retry.status"), PICK_RR,
          ("failover", "failover", "failover.retry_other_instance"),
          ("retry", "refused", "retry.attempts_exhausted")],
         route={"retries": {**RETRY_2, "retry_on": ["status"], "statuses": [503]}}),
    Case("status-without-retries-is-just-relayed", {"p9001": SICK}, 503, "proxied", [("i0", 503, "proxied")],
         [ROUTE_OK, PICK_RR]),
    Case("timeout-not-in-retry-on", {"p9001": E.RESPONSE_TIMEOUT, "p9002": OK}, 504, "upstream_timeout",
         [("i0", "response_timeout", "upstream_timeout")],
         [ROUTE_OK, PICK_RR, ("retry", "refused", "retry.not_configured")], route={"retries": RETRY_2},
         error_type="response_timeout"),
    Case("budget-exhausted", {"p9001": E.CONNECT_REFUSED, "p9002": OK}, 502, "upstream_connect_error",
         [("i0", "connect_refused", "upstream_connect_error")],
         [ROUTE_OK, PICK_RR, ("retry", "refused", "retry.budget_exhausted")],
         route={"retries": {**RETRY_2, "budget": {"percent": 0, "min_concurrent": 0}}}, error_type="connect_refused"),
    Case("only-tried-instances-left-retries-the-same", {"p9001": [E.CONNECT_REFUSED, OK]}, 200, "proxied",
         [("i0", "connect_refused", "upstream_connect_error"), ("i0", 200, "proxied")],
         [ROUTE_OK, PICK_RR, ("retry", "retry", "retry.connect_failure"), PICK_RR], route={"retries": RETRY_2},
         pool={"instances": [{"id": "i0", "host": "10.0.0.1", "port": 9001}]}),
    Case("no-healthy-instance", {}, 503, "no_healthy_upstream", [],
         [ROUTE_OK, ("pick", "no_candidates", "pick.no_candidates")],
         pool={"instances": [{"id": "i0", "host": "10.0.0.1", "port": 9001, "draining": True}]}),
    Case("mid-body-failure-aborts", {"p9001": Reply(200, chunks=(b"a", b"b"), fail_after=1)}, 200, "upstream_error",
         [("i0", "upstream_reset", "upstream_error")], [ROUTE_OK, PICK_RR], error_type="upstream_reset"),
    Case("policy-deny", {"p9001": OK}, 401, "denied_auth", [],
         [ROUTE_OK, ("policy", "deny", "apikey.missing")],
         route={"policies": [{"name": "key", "type": "api_key", "keys": [{"consumer": "a", "hash": KEY_HASH}]}]}),
    Case("policy-allow", {"p9001": OK}, 200, "proxied", [("i0", 200, "proxied")], [ROUTE_OK, PICK_RR],
         route={"policies": [{"name": "key", "type": "api_key", "keys": [{"consumer": "a", "hash": KEY_HASH}]}]},
         headers=(("X-API-Key", KEY),)),
    Case("policy-shadow-deny-lets-it-through", {"p9001": OK}, 200, "proxied", [("i0", 200, "proxied")],
         [ROUTE_OK, ("policy", "shadow_deny", "apikey.missing"), PICK_RR],
         route={"policies": [{"name": "key", "type": "api_key", "shadow": True,
                              "keys": [{"consumer": "a", "hash": KEY_HASH}]}]}),
    Case("policy-deny-then-no-retry-matters", {"p9001": E.CONNECT_REFUSED}, 403, "denied_policy", [],
         [ROUTE_OK, ("policy", "deny", "ip.denied")],
         route={"retries": RETRY_2, "policies": [{"name": "ips", "type": "ip_access", "deny": ["192.0.2.0/24"]}]}),
]


PATHS = pytest.mark.parametrize("now", [False, True], ids=["task", "sync"])  # `handle` / `handle_now` + `send_now`


@PATHS
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
async def test_engine_phases(case: Case, now: bool):
    h = EngineHarness(config(case.route, case.pool), by_instance(**case.upstream), now=now)
    try:
        down = await h.request(case.method, case.target, case.headers, case.body)
    finally:
        await h.close()
    assert down.status == case.status
    assert down.done_calls == 1  # the engine's last word on every request, whichever path it took
    # The synchronous path takes a bodiless request's first attempt; retries and bodies go through `send`.
    assert [s.now for s in h.forwarder.sent][:1] == [now and case.body is None and not case.route.get(
        "policies")][:len(h.forwarder.sent)]
    assert not any(s.now for s in list(h.forwarder.sent)[1:])
    [rec] = h.records
    assert (rec.outcome, rec.status, rec.error_type) == (case.outcome, case.status, case.error_type)
    got = [(a.instance, a.status if a.error_type is None else a.error_type, a.outcome) for a in rec.attempts]
    assert got == case.attempts
    assert [a.resend_count for a in rec.attempts] == list(range(len(rec.attempts)))
    assert [(d.kind.value, d.result, d.reason) for d in rec.decisions] == case.decisions
    if case.outcome == "upstream_error" and case.status == 200:  # the head went out: a broken connection
        assert down.aborted and not down.complete
    else:
        assert down.complete and not down.aborted
        assert down.header("X-Request-Id") == rec.request_id
    retried = sum(1 for d in case.decisions if d[:2] == ("retry", "retry"))
    assert h.sample("gatewatch_retries_total", gatewatch_route="api") == retried
    assert h.sample("http_server_request_duration_seconds_count", gatewatch_outcome=case.outcome) == 1


@PATHS
async def test_url_upstream_is_one_attempt_of_this_layer_without_a_pick(now: bool):
    cfg = config({"upstream": "tier2"}, upstreams=[{"name": "tier2", "url": "http://10.0.0.9:8081"}])
    h = EngineHarness(cfg, by_instance(p8081=OK), now=now)
    down = await h.request("GET", "/api/x")
    await h.close()
    [rec] = h.records
    assert down.status == 200 and rec.outcome == "proxied"
    [a] = rec.attempts
    assert (a.instance, a.layer, a.lb, a.url_full) == ("10.0.0.9:8081", "edge", {}, "http://10.0.0.9:8081/api/x")
    assert [d.kind.value for d in rec.decisions] == ["route"]
    assert rec.balance_span_id is None


@PATHS
async def test_rate_limit_refuses_the_request_over_the_limit(now: bool):
    route = {"policies": [{"name": "rl", "type": "rate_limit", "limit": 2, "window_s": 60}]}
    h = EngineHarness(config(route), by_instance(p9001=OK, p9002=OK), now=now)
    statuses = [(await h.request("GET", "/api/x")).status for _ in range(3)]
    await h.close()
    assert statuses == [200, 200, 429]
    assert [r.outcome for r in h.records] == ["proxied", "proxied", "rate_limited"]
    assert h.records[2].decisions[-1].reason == "ratelimit.exceeded"


@PATHS
async def test_affinity_cookie_pins_and_the_pick_says_so(now: bool):
    h = EngineHarness(config(pool={"affinity": {}}), by_instance(p9001=OK, p9002=OK), now=now)
    first = await h.request("GET", "/api/x")
    cookie = first.header("Set-Cookie").split(";")[0]
    again = [await h.request("GET", "/api/x", headers=(("Cookie", cookie),)) for _ in range(3)]
    await h.close()
    assert all(d.header("Set-Cookie") is None for d in again)  # already pinned: nothing to re-pin
    instances = {r.attempts[0].instance for r in h.records}
    assert instances == {"i0"}
    assert [d.reason for d in h.records[1].decisions] == ["route.matched", "pick.affinity"]


@PATHS
async def test_affinity_repins_to_the_instance_that_answered_a_retry(now: bool):
    route = {"retries": RETRY_2}
    h = EngineHarness(config(route, pool={"affinity": {}}), by_instance(p9001=E.CONNECT_REFUSED, p9002=OK), now=now)
    down = await h.request("GET", "/api/x")
    await h.close()
    pins = [v for k, v in down.headers if k == "Set-Cookie"]
    assert len(pins) == 1  # the first attempt's pin was replaced, not kept beside the second's
    assert [a.instance for a in h.records[0].attempts] == ["i0", "i1"]


@PATHS
async def test_a_request_finishes_under_the_snapshot_it_started_with(now: bool):
    """A reload while a request waits on its upstream changes nothing for that request: its listener settings,
    route and target stay those it started with. The next request runs under the new snapshot."""
    reloaded = config()
    reloaded["edge"]["listeners"][0]["trace_response_header"] = False
    reloaded["edge"]["routes"][0]["upstream"] = "other"
    reloaded["balancer"]["pools"].append({"name": "other", "instances": [{"host": "10.0.0.2", "port": 9009}]})
    h = None

    async def upstream(request):
        if request.port == 9001:
            await h.reload(reloaded)  # mid-request: the first request is at its upstream
        return OK

    h = EngineHarness(config(), upstream, now=now)
    first = await h.request("GET", "/api/x")
    second = await h.request("GET", "/api/x")
    await h.close()
    assert first.header("traceresponse") is not None  # the listener setting it started with
    assert h.records[0].attempts[0].upstream == "pool"
    assert second.header("traceresponse") is None  # the next request sees the new snapshot
    assert h.records[1].attempts[0].upstream == "other"


async def test_unparseable_request_is_recorded_through_the_rejecter():
    h = EngineHarness(config(), by_instance())
    body = h.listener.malformed(400, "framing_conflict")
    await h.close()
    [rec] = h.records
    assert (rec.outcome, rec.status, rec.error_type, rec.method) == ("bad_request", 400, "framing_conflict", "_OTHER")
    assert b'"outcome": "bad_request"' in body


@PATHS
async def test_response_remove_strips_the_upstreams_headers_only(now: bool):
    route = {"policies": [{"name": "strip", "type": "headers", "response_remove": ["Server", "X-Internal-*"],
                           "response_add": {"X-Served-By": "edge"}}]}
    reply = Reply(200, b"ok", (("Server", "nginx/1.22"), ("X-Internal-Shard", "7"), ("x-internal-trace", "t"),
                               ("X-Public", "yes"), ("Content-Type", "text/plain")))
    h = EngineHarness(config(route), by_instance(p9001=reply), now=now)
    down = await h.request("GET", "/api/x")
    await h.close()
    names = [k.lower() for k, _ in down.headers]
    assert "server" not in names and not any(n.startswith("x-internal-") for n in names)
    assert down.header("X-Public") == "yes" and down.header("X-Served-By") == "edge"
    assert down.header("X-Request-Id") == h.records[0].request_id  # the gateway's own are never removed


def test_response_remove_names_must_be_header_names():
    from gatewatch.config import ConfigError, parse_config
    bad = config({"policies": [{"name": "strip", "type": "headers", "response_remove": ["X Bad"]}]})
    with pytest.raises(ConfigError) as err:
        parse_config({"admin": {"address": "127.0.0.1:0"}, **bad})
    assert "edge.routes[0].policies[0]" in str(err.value) and "not a header name" in str(err.value)
