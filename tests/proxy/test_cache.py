"""The response cache (RFC 9111 shared-cache subset, RFC 5861): the rules as pure functions, the store, and the
whole path — through the in-memory engine harness (telemetry as data, a controlled clock) and through a real
runtime on loopback sockets in front of a real aiohttp backend that counts what reaches it."""

from __future__ import annotations

import asyncio
import email.utils
import time

import aiohttp
import pytest
from aiohttp import web

from gatewatch.app.series import init_series
from gatewatch.io.interfaces import RequestHead, header_index
from gatewatch.io.memory import Reply
from gatewatch.proxy.cache import (OUTCOMES, CacheConfig, CacheKeyConfig, Store, cache_key, delta_seconds, directives,
                                   freshness_lifetime, http_date, invalidated_uris, make_entry, not_storable,
                                   precondition, vary_names, vary_values)
from gatewatch.telemetry.convert import attributes, log_models, span_models
from gatewatch.telemetry.names import Attr, CacheReason, DecisionKind, ErrorType, Layer
from tests.support.engine import EngineHarness
from tests.support.net import edge_port, start_app
from tests.support.runtime import in_process_config, running

CFG = CacheConfig()
T0 = 1_700_000_000.0  # a wall-clock instant for the pure rules
DATE0 = email_date = "Tue, 14 Nov 2023 22:13:20 GMT"  # == T0


def head(method="GET", target="/a", headers=()) -> RequestHead:
    headers = tuple(headers)
    return RequestHead(method, target, "1.1", headers, "127.0.0.1", 5000, "http", "127.0.0.1", 80, "l", False,
                       header_index(headers))


# --- the rules, table-driven ---

@pytest.mark.parametrize("value,expected", [
    (None, {}),
    ("max-age=60", {"max-age": "60"}),
    ("Public, MAX-AGE=60, s-maxage=5", {"public": None, "max-age": "60", "s-maxage": "5"}),
    ('no-cache="Set-Cookie, X-A", max-age=3', {"no-cache": "Set-Cookie, X-A", "max-age": "3"}),
    ("max-age=1, max-age=99", {"max-age": "1"}),  # the first occurrence (RFC 9111 §4.2.1)
    (' private , stale-while-revalidate = 30 ', {"private": None, "stale-while-revalidate": "30"}),
])
def test_cache_control_directives_parse(value, expected):
    assert directives(value) == expected


@pytest.mark.parametrize("arg,expected", [("0", 0), ("60", 60), ("99999999999", 2 ** 31), ("-1", None),
                                          ("1.5", None), ("", None), (None, None), ("٣", None)])
def test_delta_seconds_rfc9111_1_2_2(arg, expected):
    assert delta_seconds(arg) == expected


def test_http_date_three_formats_and_garbage():
    assert http_date(DATE0) == T0
    assert http_date("Tuesday, 14-Nov-23 22:13:20 GMT") == T0  # RFC 850
    assert http_date("Tue Nov 14 22:13:20 2023") == T0  # asctime
    assert http_date("0") is None and http_date("soon") is None and http_date(None) is None


@pytest.mark.parametrize("cc,headers,expected", [
    ("s-maxage=10, max-age=99", {"expires": "Tue, 14 Nov 2023 23:13:20 GMT"}, 10),  # s-maxage first (shared)
    ("max-age=99", {"expires": "Tue, 14 Nov 2023 23:13:20 GMT"}, 99),  # then max-age
    ("", {"expires": "Tue, 14 Nov 2023 23:13:20 GMT"}, 3600),  # then Expires - Date
    ("", {"expires": "0"}, 0),  # invalid Expires: already expired (§5.3)
    ("max-age=abc", {}, 0),  # invalid max-age: stale
    ("", {"last-modified": "Tue, 14 Nov 2023 12:13:20 GMT"}, 0),  # heuristic not configured
])
def test_freshness_lifetime_rfc9111_4_2_1(cc, headers, expected):
    assert freshness_lifetime(directives(cc), headers, T0, 200, CFG) == expected


def test_heuristic_freshness_only_when_configured_and_only_with_last_modified():
    cfg = CacheConfig(heuristic_fraction=0.1, heuristic_max_s=3000)
    ten_hours = {"last-modified": "Tue, 14 Nov 2023 12:13:20 GMT"}
    assert freshness_lifetime({}, ten_hours, T0, 200, cfg) == 3000  # 10% of 10 h, capped
    assert freshness_lifetime({}, ten_hours, T0, 200, CacheConfig(heuristic_fraction=0.1)) == 3600
    assert freshness_lifetime({}, {}, T0, 200, cfg) == 0  # no Last-Modified
    assert freshness_lifetime({}, ten_hours, T0, 302, cfg) == 0  # not heuristically cacheable (RFC 9110 §15.1)


def test_age_rfc9111_4_2_3():
    # sent at T0-2, answered at T0 with Date T0-5 and Age 10: corrected_initial_age = max(5, 10 + 2) = 12
    e = make_entry("u", "", (), (), 200, "", (("Date", "Tue, 14 Nov 2023 22:13:15 GMT"), ("Age", "10"),
                                                ("Cache-Control", "max-age=60")),
                   {"max-age": "60"}, T0 - 2, T0, CFG)
    assert e.initial_age == 12 and e.lifetime == 60
    assert e.age(T0 + 30) == 42  # + resident time


@pytest.mark.parametrize("status,req_cc,cc,headers,auth,cfg,reason", [
    (200, "", "max-age=60", {}, False, CFG, None),
    (200, "no-store", "max-age=60", {}, False, CFG, CacheReason.CLIENT_NO_STORE),
    (200, "", "no-store, max-age=60", {}, False, CFG, CacheReason.NO_STORE),
    (200, "", "private, max-age=60", {}, False, CFG, CacheReason.PRIVATE),
    (200, "", 'private="X-User", max-age=60', {}, False, CFG, CacheReason.PRIVATE),
    (200, "", "max-age=60", {}, True, CFG, CacheReason.AUTHORIZATION),  # §3.5
    (200, "", "public, max-age=60", {}, True, CFG, None),
    (200, "", "s-maxage=60", {}, True, CFG, None),
    (200, "", "must-revalidate, max-age=60", {}, True, CFG, None),
    (200, "", "max-age=60", {}, True, CacheConfig(allow_authorization=True), None),
    (200, "", "max-age=60", {"set-cookie": "a=1"}, False, CFG, CacheReason.SET_COOKIE),
    (200, "", "max-age=60", {"set-cookie": "a=1"}, False, CacheConfig(allow_set_cookie=True), None),
    (206, "", "max-age=60", {}, False, CFG, CacheReason.STATUS),  # partial content is not cached
    (500, "", "max-age=60", {}, False, CFG, CacheReason.STATUS),
    (302, "", "", {}, False, CFG, CacheReason.STATUS),  # not heuristically cacheable, no explicit freshness
    (302, "", "max-age=60", {}, False, CFG, None),
    (404, "", "", {}, False, CFG, None),  # heuristically cacheable
])
def test_storable_rfc9111_3(status, req_cc, cc, headers, auth, cfg, reason):
    assert not_storable(status, directives(req_cc), directives(cc), headers, auth, cfg) == reason


def test_vary_names_and_values_rfc9111_4_1():
    assert vary_names((("Vary", "Accept-Encoding, accept-language"), ("vary", "X-A"))) == (
        "accept-encoding", "accept-language", "x-a")
    assert vary_names((("Vary", "Accept, *"),)) is None
    h = head(headers=(("Accept-Language", "de"), ("accept-language", "en ,  fr")))
    assert vary_values(("accept-language", "x-missing"), h) == ("de,en,fr", None)


@pytest.mark.parametrize("headers,expected", [
    ((), None),
    ((("If-None-Match", '"v1"'),), 304),
    ((("If-None-Match", 'W/"v1"'),), 304),  # weak comparison
    ((("If-None-Match", '"v0", "v2"'),), None),
    ((("If-None-Match", "*"),), 304),
    ((("If-Match", '"v2"'), ("If-None-Match", '"v1"')), 412),  # If-Match first (RFC 9110 §13.2.2)
    ((("If-Match", '"v1"'), ("If-None-Match", '"v1"')), 304),
    ((("If-Unmodified-Since", "Tue, 14 Nov 2023 20:00:00 GMT"),), 412),
    ((("If-Modified-Since", "Tue, 14 Nov 2023 22:13:20 GMT"),), 304),
    ((("If-Modified-Since", "Tue, 14 Nov 2023 22:00:00 GMT"),), None),
    ((("If-None-Match", '"v0"'), ("If-Modified-Since", "Tue, 14 Nov 2023 22:13:20 GMT")), None),  # INM wins
])
def test_conditional_request_evaluation_order(headers, expected):
    assert precondition(head(headers=headers), '"v1"', T0) == expected


def test_cache_key_parts_configurable():
    h = head(headers=(("Accept-Language", "de"), ("Cookie", "tenant=a; other=1")))
    full = CacheKeyConfig()
    assert cache_key(full, "http", "Ex.com", "/p", "b=2&a=1", h) == ("http://ex.com/p?b=2&a=1", "")
    assert cache_key(CacheKeyConfig(scheme=False, host=False, query=False), "http", "ex.com", "/p", "b=2", h)[0] \
        == "://" + "/p?"
    assert cache_key(CacheKeyConfig(query_params=("a", "b")), "http", "x", "/p", "z=9&b=2&a=1", h)[0] \
        == "http://x/p?a=1&b=2"
    assert cache_key(CacheKeyConfig(headers=("Accept-Language",), cookies=("tenant",)), "http", "x", "/p", "", h)[1] \
        == "de\x00a"


def test_invalidated_uris_include_same_host_location_rfc9111_4_4():
    uris = invalidated_uris(CacheKeyConfig(), "http", "ex.com", "/orders", "", (
        ("Location", "/orders/7"), ("Content-Location", "http://other.example/x"), ("Content-Location", "/o?x=1")))
    assert uris == ["http://ex.com/orders?", "http://ex.com/orders/7?", "http://ex.com/o?x=1"]


def _entry(uri, body=b"x" * 100, vary=(), values=()):
    e = make_entry(uri, "", vary, values, 200, "", (("Cache-Control", "max-age=60"),), {"max-age": "60"}, T0, T0,
                   CFG)
    e.body = body
    return e


def test_store_lru_within_byte_budget_counts_evictions():
    evicted = []
    store = Store("r", CacheConfig(max_bytes=4096, max_entry_bytes=1024), lambda why, n: evicted.append((why, n)))
    for i in range(20):
        store.put(_entry(f"u{i}", b"x" * 900))
        assert store.bytes <= 4096
    assert len(store) == 3 and sum(n for _, n in evicted) == 17 and {w for w, _ in evicted} == {"capacity"}
    store.find("u17", "", head())  # used: kept over the older u18
    store.put(_entry("u20", b"x" * 900))
    assert store.find("u17", "", head())[0] is not None and store.find("u18", "", head())[0] is None


def test_store_vary_variants_and_invalidation():
    store = Store("r", CacheConfig(max_variants=2))
    for lang in ("de", "en", "fr"):
        store.put(_entry("u", vary=("accept-language",), values=(lang,)))
    assert len(store) == 2  # the oldest variant dropped
    de, en = head(headers=(("Accept-Language", "de"),)), head(headers=(("Accept-Language", "en"),))
    assert store.find("u", "", de) == (None, True)  # variants stored, none for "de": a vary mismatch
    assert store.find("u", "", en)[0].vary_values == ("en",)
    assert store.invalidate(["u"]) == 2 and len(store) == 0 and store.bytes == 0


@pytest.mark.parametrize("cache,problem", [
    ({"max_bytes": 5000, "max_entry_bytes": 6000}, "edge.routes[1].cache: max_entry_bytes: must not exceed max_bytes"),
    ({"key": {"headers": ["bad header"]}}, "edge.routes[1].cache.key.headers: 'bad header' is not a header"),
    ({"colesce": True}, "edge.routes[1].cache.colesce: unknown key; did you mean 'coalesce'?"),
    ({"stale_if_error_s": -1}, "edge.routes[1].cache.stale_if_error_s"),
])
def test_config_errors_name_the_field_path(cache, problem):
    from gatewatch.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as err:
        parse_config({"admin": {"address": "127.0.0.1:0"}, **_config(**cache)})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


def test_every_recordable_outcome_is_created_at_zero():
    assert len(set(OUTCOMES)) == len(OUTCOMES)
    h = EngineHarness(_config(), lambda req: Reply(), now=False)
    init_series(h.metrics, h.config)
    for result, reason in OUTCOMES:
        assert _has(h, "gatewatch_cache_requests_total", gatewatch_route="r", result=result.value,
                    reason=reason.value)
    for name in ("gatewatch_cache_entries", "gatewatch_cache_bytes"):
        assert _has(h, name, gatewatch_route="r")
    assert _has(h, "gatewatch_cache_evictions_total", gatewatch_route="r", reason="capacity")


def _has(h, name, **labels) -> bool:
    return any(s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
               for fam in h.metrics.collect_all() for s in fam.samples)


# --- the engine, in memory: telemetry as data, a clock the test moves ---

def _config(**cache) -> dict:
    return {"edge": {"listeners": [{"name": "l", "address": "127.0.0.1:0"}],
                     "upstreams": [{"name": "u", "url": "http://127.0.0.1:9"}],
                     "routes": [{"name": "plain", "match": {"path": {"prefix": "/plain"}}, "upstream": "u"},
                                {"name": "r", "upstream": "u", "cache": cache}]}}


class Clock:
    def __init__(self):
        self.offset_ns = 0

    def __call__(self) -> int:
        return time.time_ns() + self.offset_ns

    def advance(self, s: float) -> None:
        self.offset_ns += int(s * 1e9)


def harness(upstream, now, **cache):
    h = EngineHarness(_config(**cache), upstream, now=now)
    h.clock = Clock()
    h.engine.clock_ns = h.clock
    return h


both_paths = pytest.mark.parametrize("now", [False, True], ids=["async", "sync"])


@both_paths
async def test_hit_is_recorded_on_span_decision_log_and_metrics(now):
    sent = []

    def up(req):
        sent.append(req)
        return Reply(200, b"hello", (("Cache-Control", "max-age=60"), ("ETag", '"v1"')))
    h = harness(up, now)
    first, second = await h.request("GET", "/x"), await h.request("GET", "/x")
    assert first.body == second.body == b"hello" and len(sent) == 1
    assert second.header("Age") == "0" and first.header("Age") is None
    miss, hit = h.records
    assert miss.span_attrs[Attr.CACHE_RESULT] == "miss" and miss.span_attrs[Attr.CACHE_REASON] == "absent"
    assert hit.span_attrs == {Attr.CACHE_RESULT: "hit", Attr.CACHE_REASON: "fresh", Attr.CACHE_AGE: 0}
    assert not hit.attempts and hit.outcome == "proxied" and hit.status == 200
    decision = [d for d in hit.decisions if d.kind is DecisionKind.CACHE]
    assert [(d.rule, d.result, d.reason) for d in decision] == [("r", "hit", "fresh")]
    server = attributes(span_models(hit)[0].attributes)  # what the exporter sends
    assert (server[Attr.CACHE_RESULT], server[Attr.CACHE_REASON], server[Attr.CACHE_AGE]) == ("hit", "fresh", 0)
    [log] = [m for m in log_models(hit) if m.event_name == "gatewatch.decision.cache"]
    assert attributes(log.attributes)[Attr.DECISION_RESULT] == "hit"
    assert h.sample("gatewatch_cache_requests_total", gatewatch_route="r", result="hit", reason="fresh") == 1
    assert h.sample("gatewatch_cache_entries", gatewatch_route="r") == 1
    assert h.sample("gatewatch_cache_bytes", gatewatch_route="r") > 5
    plain = await h.request("GET", "/plain")  # a route without a cache: nothing of it
    assert plain.status == 200 and h.records[-1].cache is None and h.records[-1].span_attrs is None


@both_paths
async def test_stale_while_revalidate_serves_stale_and_refreshes_once_in_background(now):
    sent = []

    def up(req):
        sent.append(req)
        return Reply(200, f"v{len(sent)}".encode(), (("Cache-Control", "max-age=10, stale-while-revalidate=60"),
                                                     ("ETag", f'"e{len(sent)}"')))
    h = harness(up, now)
    assert (await h.request("GET", "/s")).body == b"v1"
    h.clock.advance(20)  # stale, within the window
    a, b = await h.request("GET", "/s"), await h.request("GET", "/s")
    assert a.body == b.body == b"v1" and int(a.header("Age")) >= 20
    while len(h.records) < 4:  # the background refresh's own record
        await asyncio.sleep(0.01)
    assert len(sent) == 2 and sent[1].headers[-1] == ("If-None-Match", '"e1"')  # once, with the validator
    results = sorted(r.cache[:2] for r in h.records)
    assert results == [("miss", "absent"), ("miss", "stale_while_revalidate"),
                       ("stale", "stale_while_revalidate"), ("stale", "stale_while_revalidate")]
    refresh = next(r for r in h.records if r.cache[:2] == ("miss", "stale_while_revalidate"))
    assert refresh.trace.trace_id == h.records[1].trace.trace_id or refresh.trace.link  # the client's trace
    assert (await h.request("GET", "/s")).body == b"v2"  # refreshed


@both_paths
async def test_stale_if_error_on_connect_failure_and_on_5xx(now):
    answers = [Reply(200, b"good", (("Cache-Control", "max-age=1, stale-if-error=300"),)),
               ErrorType.CONNECT_REFUSED, Reply(503, b"down")]
    h = harness(lambda req: answers.pop(0) if len(answers) > 1 else answers[0], now)
    await h.request("GET", "/e")
    h.clock.advance(5)
    refused = await h.request("GET", "/e")
    assert (refused.status, refused.body) == (200, b"good") and h.records[-1].cache[:2] == ("stale",
                                                                                            "stale_if_error")
    assert h.records[-1].attempts[0].error_type == "connect_refused" and h.records[-1].error_type is None
    unavailable = await h.request("GET", "/e")
    assert (unavailable.status, unavailable.body) == (200, b"good")
    assert h.records[-1].attempts[0].status == 503  # the CLIENT span says what the upstream answered
    h.clock.advance(400)  # past the window: the error goes through
    assert (await h.request("GET", "/e")).status == 503


async def test_route_default_stale_if_error_and_must_revalidate_forbids_it():
    answers = {"/a": [Reply(200, b"a", (("Cache-Control", "max-age=1"),)), Reply(502)],
               "/b": [Reply(200, b"b", (("Cache-Control", "max-age=1, must-revalidate"),)), Reply(502)]}
    h = harness(lambda req: answers[req.target].pop(0) if len(answers[req.target]) > 1 else answers[req.target][0],
                False, stale_if_error_s=60)
    await h.request("GET", "/a"), await h.request("GET", "/b")
    h.clock.advance(5)
    assert (await h.request("GET", "/a")).status == 200
    assert (await h.request("GET", "/b")).status == 502  # RFC 9111 §5.2.2.2


@both_paths
async def test_large_streamed_response_passes_through_and_is_not_stored(now):
    sent = []

    def up(req):
        sent.append(req)
        return Reply(200, headers=(("Cache-Control", "max-age=60"),), chunks=(b"a" * 600, b"b" * 600))
    h = harness(up, now, max_entry_bytes=1000)
    for _ in range(2):
        d = await h.request("GET", "/big")
        assert d.body == b"a" * 600 + b"b" * 600 and d.complete
    assert len(sent) == 2 and h.records[-1].cache[:2] == ("bypass", "too_large")
    assert h.sample("gatewatch_cache_entries", gatewatch_route="r") == 0

    small = []
    h2 = harness(lambda req: small.append(req) or Reply(200, headers=(("Cache-Control", "max-age=60"),),
                                                        chunks=(b"a", b"b")), now)
    assert (await h2.request("GET", "/s")).body == (await h2.request("GET", "/s")).body == b"ab"
    assert len(small) == 1  # a small streamed body is stored as it is relayed


async def test_leader_not_storable_followers_go_upstream_themselves():
    release = asyncio.Event()
    sent = []

    async def slow(req):
        sent.append(req)
        await release.wait()
        return Reply(200, b"x", (("Cache-Control", "no-store"),))
    h = harness(slow, False)
    tasks = [asyncio.create_task(h.request("GET", "/n")) for _ in range(5)]
    while not sent or h.engine.caches.get("r").waiting < 4:
        await asyncio.sleep(0.01)
    assert len(sent) == 1  # the others wait for the leader
    release.set()
    assert all(d.status == 200 for d in await asyncio.gather(*tasks))
    assert len(sent) == 5  # nothing stored: each went upstream itself
    assert {r.cache[:2] for r in h.records} == {("bypass", "no_store")}


async def test_policies_run_before_the_cache_and_response_edits_apply_to_hits():
    import hashlib
    key = "sha256:" + hashlib.sha256(b"k1").hexdigest()
    cfg = _config()
    cfg["edge"]["routes"][1]["policies"] = [
        {"name": "key", "type": "api_key", "keys": [{"consumer": "c1", "hash": key}]},
        {"name": "shape", "type": "json_transform", "response": {"remove": ["secret"]}}]
    sent = []
    h = EngineHarness(cfg, lambda req: sent.append(req) or Reply(200, b'{"a":1,"secret":2}', (
        ("Content-Type", "application/json"), ("Cache-Control", "max-age=60"))))
    for _ in range(2):
        d = await h.request("GET", "/j", headers=(("X-API-Key", "k1"),))
        assert (d.status, d.body) == (200, b'{"a":1}')
    assert len(sent) == 1 and h.records[-1].cache[:2] == ("hit", "fresh")
    refused = await h.request("GET", "/j")  # stored, but the policy answers first
    assert refused.status == 401 and h.records[-1].cache is None


async def test_allowed_set_cookie_is_never_served_to_another_client():
    h = harness(lambda req: Reply(200, b"x", (("Cache-Control", "max-age=60"), ("Set-Cookie", "sid=1"))), False,
                allow_set_cookie=True)
    first, second = await h.request("GET", "/c"), await h.request("GET", "/c")
    assert first.header("Set-Cookie") == "sid=1" and second.header("Set-Cookie") is None
    assert h.records[-1].cache[:2] == ("hit", "fresh")


# --- a real runtime in front of a real backend ---

pytestmark_planes = pytest.mark.parametrize("data_plane", ["fast", "aiohttp"])


class Backend:
    """An aiohttp backend whose answer per path a test scripts; counts the requests that reach it."""

    def __init__(self):
        self.hits: dict[str, int] = {}
        self.seen: dict[str, list] = {}
        self.script: dict[str, object] = {}

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.hits[request.path] = self.hits.get(request.path, 0) + 1
        self.seen.setdefault(request.path, []).append(request)
        answer = self.script[request.path]
        out = answer(request)
        return await out if asyncio.iscoroutine(out) else out


@pytest.fixture
async def backend():
    b = Backend()
    runner, port = await start_app(b.handle)
    b.port = port
    yield b
    await runner.cleanup()


def runtime_config(backend, tmp_path, data_plane, **cache):
    cfg = in_process_config([backend.port], tmp_path, data_plane=data_plane, cache=cache)
    cfg["telemetry"]["exporter"] = "thread"  # no exporter process to start per test
    return cfg


def edge_clock(rt, clock: Clock | None = None) -> Clock:
    clock = clock or Clock()
    rt.engines[Layer.EDGE].clock_ns = clock
    return clock


@pytestmark_planes
async def test_hit_miss_head_and_age_end_to_end(backend, tmp_path, data_plane):
    clock = Clock()  # the backend's Date follows the gateway's clock, which starts on a whole second: a Date is
    # whole seconds, and one up to a second behind the clock would add that to the age (RFC 9111 §4.2.3)
    clock.offset_ns = -(time.time_ns() % 1_000_000_000)
    backend.script["/api/doc"] = lambda r: web.Response(text="doc", headers={
        "Cache-Control": "max-age=60", "ETag": '"d1"', "Date": email.utils.formatdate(clock() / 1e9, usegmt=True)})
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{edge_port(rt)}/api/doc"
        edge_clock(rt, clock)
        async with s.get(url) as r:
            assert (r.status, await r.text(), r.headers.get("Age")) == (200, "doc", None)
        clock.advance(7)
        async with s.get(url) as r:
            assert (r.status, await r.text(), r.headers["Age"], r.headers["ETag"]) == (200, "doc", "7", '"d1"')
            assert r.headers["Content-Type"].startswith("text/plain") and "gatewatch" in r.headers["Via"]
        async with s.head(url) as r:  # HEAD from the GET entry (RFC 9110 §9.3.2)
            assert (r.status, r.headers["Content-Length"], await r.read()) == (200, "3", b"")
        assert backend.hits["/api/doc"] == 1
        m = rt.metrics
        assert m.cache_requests.collect  # served from the fast counter
        got = {s.labels["result"]: s.value for fam in m.collect_all() for s in fam.samples
               if s.name == "gatewatch_cache_requests_total" and s.labels["reason"] in ("fresh", "absent")}
        assert got == {"hit": 2, "miss": 1}


@pytestmark_planes
async def test_revalidation_with_validators_freshens_the_entry(backend, tmp_path, data_plane):
    clock = Clock()  # the backend's Date follows the gateway's clock: no skew for the age (RFC 9111 §4.2.3)

    def doc(r):
        date = email.utils.formatdate(clock() / 1e9, usegmt=True)
        if r.headers.get("If-None-Match") == '"v1"':
            return web.Response(status=304, headers={"Cache-Control": "max-age=100", "ETag": '"v1"',
                                                     "X-Fresh": "yes", "Date": date})
        return web.Response(text="body", headers={"Cache-Control": "max-age=10", "ETag": '"v1"', "Date": date,
                                                  "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT"})
    backend.script["/api/r"] = doc
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{edge_port(rt)}/api/r"
        edge_clock(rt, clock)
        await (await s.get(url)).read()
        clock.advance(30)  # stale
        async with s.get(url) as r:
            assert (r.status, await r.text(), r.headers["X-Fresh"], r.headers["Age"]) == (200, "body", "yes", "0")
        sent = backend.seen["/api/r"][1].headers
        assert sent["If-None-Match"] == '"v1"' and sent["If-Modified-Since"] == "Tue, 14 Nov 2023 22:13:20 GMT"
        clock.advance(50)  # fresh again for max-age=100 (§4.3.4: the 304's Cache-Control replaced the stored one)
        async with s.get(url) as r:
            assert await r.text() == "body"
        assert backend.hits["/api/r"] == 2
        async with s.get(url, headers={"Cache-Control": "no-cache"}) as r:  # the client asks for revalidation
            assert await r.text() == "body"
        async with s.get(url, headers={"Cache-Control": "max-age=0"}) as r:
            assert await r.text() == "body"
        assert backend.hits["/api/r"] == 4


@pytestmark_planes
async def test_client_conditionals_answered_from_a_fresh_entry(backend, tmp_path, data_plane):
    backend.script["/api/c"] = lambda r: web.Response(text="c", headers={
        "Cache-Control": "max-age=60", "ETag": '"c1"', "Last-Modified": "Tue, 14 Nov 2023 22:13:20 GMT"})
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{edge_port(rt)}/api/c"
        await (await s.get(url)).read()
        async with s.get(url, headers={"If-None-Match": '"c1"'}) as r:
            assert (r.status, await r.read(), r.headers["ETag"]) == (304, b"", '"c1"')
        async with s.get(url, headers={"If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT"}) as r:
            assert r.status == 304
        async with s.get(url, headers={"If-None-Match": '"other"'}) as r:
            assert (r.status, await r.text()) == (200, "c")
        async with s.get(url, headers={"If-Match": '"other"'}) as r:
            assert r.status == 412
        assert backend.hits["/api/c"] == 1


NOT_STORED = [  # path, response headers, request headers, the bypass reason recorded
    ("/api/ns", {"Cache-Control": "no-store"}, {}, "no_store"),
    ("/api/pv", {"Cache-Control": "private, max-age=60"}, {}, "private"),
    ("/api/au", {"Cache-Control": "max-age=60"}, {"Authorization": "Bearer t"}, "authorization"),
    ("/api/ck", {"Cache-Control": "max-age=60", "Set-Cookie": "s=1"}, {}, "set_cookie"),
    ("/api/vs", {"Cache-Control": "max-age=60", "Vary": "*"}, {}, "vary_star"),
    ("/api/nf", {}, {}, "no_freshness"),
    ("/api/rq", {"Cache-Control": "max-age=60"}, {"Cache-Control": "no-store"}, "client_no_store"),
    ("/api/rg", {"Cache-Control": "max-age=60"}, {"Range": "bytes=0-0"}, "range"),
]


@pytestmark_planes
async def test_responses_that_may_not_be_stored_go_upstream_every_time(backend, tmp_path, data_plane):
    for path, headers, _, _ in NOT_STORED:
        backend.script[path] = lambda r, headers=headers: web.Response(text="x", headers=headers)
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        for path, _, request_headers, reason in NOT_STORED:
            for _ in range(2):
                async with s.get(f"http://127.0.0.1:{edge_port(rt)}{path}", headers=request_headers) as r:
                    assert (r.status, await r.text()) == (200, "x")
            assert backend.hits[path] == 2, path
        bypassed = {s.labels["reason"]: s.value for fam in rt.metrics.collect_all() for s in fam.samples
                    if s.name == "gatewatch_cache_requests_total" and s.labels["result"] == "bypass" and s.value}
        assert bypassed == {reason: 2 for *_, reason in NOT_STORED}


@pytestmark_planes
async def test_status_codes_and_authorization_allowed_when_public(backend, tmp_path, data_plane):
    backend.script["/api/500"] = lambda r: web.Response(status=500, text="e", headers={"Cache-Control": "max-age=60"})
    backend.script["/api/404"] = lambda r: web.Response(status=404, text="nf", headers={"Cache-Control": "max-age=60"})
    backend.script["/api/pub"] = lambda r: web.Response(text="p", headers={"Cache-Control": "public, max-age=60"})
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        base = f"http://127.0.0.1:{edge_port(rt)}"
        for _ in range(2):
            for path in ("/api/500", "/api/404"):
                await (await s.get(base + path)).read()
            await (await s.get(base + "/api/pub", headers={"Authorization": "Bearer t"})).read()
        assert backend.hits == {"/api/500": 2, "/api/404": 1, "/api/pub": 1}


@pytestmark_planes
async def test_vary_keeps_a_variant_per_request_header_value(backend, tmp_path, data_plane):
    backend.script["/api/v"] = lambda r: web.Response(text=r.headers.get("Accept-Language", "none"), headers={
        "Cache-Control": "max-age=60", "Vary": "Accept-Language"})
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{edge_port(rt)}/api/v"
        for lang in ("de", "en", "de", "en"):
            async with s.get(url, headers={"Accept-Language": lang}) as r:
                assert await r.text() == lang
        async with s.get(url) as r:
            assert await r.text() == "none"
        assert backend.hits["/api/v"] == 3


@pytestmark_planes
async def test_unsafe_method_invalidates_the_uri(backend, tmp_path, data_plane):
    backend.script["/api/o"] = lambda r: web.Response(text=f"{r.method}", headers={"Cache-Control": "max-age=60"})
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{edge_port(rt)}/api/o"
        for _ in range(2):
            await (await s.get(url)).read()
        assert backend.hits["/api/o"] == 1
        async with s.post(url, data=b"change") as r:
            assert await r.text() == "POST"
        await (await s.get(url)).read()
        assert backend.hits["/api/o"] == 3  # the POST, then the GET again
        evicted = [s.value for fam in rt.metrics.collect_all() for s in fam.samples
                   if s.name == "gatewatch_cache_evictions_total" and s.labels["reason"] == "invalidated"]
        assert evicted == [1]


@pytestmark_planes
async def test_concurrent_misses_coalesce_into_one_backend_request(backend, tmp_path, data_plane):
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(r):
        arrived.set()
        await release.wait()
        return web.Response(text="once", headers={"Cache-Control": "max-age=60"})
    backend.script["/api/slow"] = slow
    async with running(runtime_config(backend, tmp_path, data_plane)) as rt, aiohttp.ClientSession() as s:
        url = f"http://127.0.0.1:{edge_port(rt)}/api/slow"

        async def get():
            async with s.get(url) as r:
                return r.status, await r.text()
        tasks = [asyncio.create_task(get()) for _ in range(20)]
        await arrived.wait()
        store = rt.engines[Layer.EDGE].caches.get("api")
        while store.waiting < 19:  # the others are waiting for the first
            await asyncio.sleep(0.01)
        release.set()
        assert await asyncio.gather(*tasks) == [(200, "once")] * 20
        assert backend.hits["/api/slow"] == 1
        got = {s.labels["reason"]: s.value for fam in rt.metrics.collect_all() for s in fam.samples
               if s.name == "gatewatch_cache_requests_total" and s.value}
        assert got == {"absent": 1, "coalesced": 19}


# --- the shared (Redis) tier: two engines as two replicas, one real redis-server ---

@pytest.fixture
def redis_server(tmp_path):
    from tests.edge.policies.support import RedisServer
    server = RedisServer(tmp_path).start()
    yield server
    server.kill()


async def _until(cond) -> None:
    while not cond():
        await asyncio.sleep(0.01)


@both_paths
async def test_shared_tier_serves_another_replica_and_invalidation_reaches_every_replica(redis_server, now):
    sent = []

    def up(req):
        sent.append((req.method, req.host))
        return Reply(200, b"doc", (("Cache-Control", "max-age=60"), ("ETag", '"s1"')))
    shared = {"url": redis_server.url, "timeout_s": 1.0}
    a, b = harness(up, now, shared=shared), harness(up, now, shared=shared)
    try:
        assert (await a.request("GET", "/d")).body == b"doc"
        assert a.records[-1].cache[:2] == ("miss", "absent")
        await _until(lambda: not a.engine.caches.get("r").shared._tasks)  # written to Redis in the background
        got = await b.request("GET", "/d")
        assert (got.body, got.header("ETag")) == (b"doc", '"s1"') and len(sent) == 1
        assert b.records[-1].cache[:2] == ("hit", "shared")
        assert (await b.request("GET", "/d")).body == b"doc" and b.records[-1].cache[:2] == ("hit", "fresh")
        await b.request("DELETE", "/d")  # an unsafe method on replica B
        await _until(lambda: len(a.engine.caches.get("r")) == 0)  # replica A dropped its copy too (published)
        assert len(b.engine.caches.get("r")) == 0
        assert (await a.request("GET", "/d")).body == b"doc" and a.records[-1].cache[:2] == ("miss", "absent")
        assert [m for m, _ in sent] == ["GET", "DELETE", "GET"]
    finally:
        await a.engine.caches.close()
        await b.engine.caches.close()


async def test_shared_tier_down_leaves_an_in_process_cache(redis_server):
    sent = []
    h = harness(lambda req: sent.append(req) or Reply(200, b"x", (("Cache-Control", "max-age=60"),)), False,
                shared={"url": redis_server.url, "timeout_s": 0.2, "retry_after_s": 30})
    redis_server.kill()
    try:
        for _ in range(3):
            assert (await h.request("GET", "/down")).status == 200
        assert len(sent) == 1 and [r.cache[:2] for r in h.records] == [("miss", "absent"), ("hit", "fresh"),
                                                                      ("hit", "fresh")]
    finally:
        await h.engine.caches.close()


async def test_shared_tier_in_a_runtime_is_closed_with_it(backend, redis_server, tmp_path):
    backend.script["/api/sh"] = lambda r: web.Response(text="sh", headers={"Cache-Control": "max-age=60"})
    cfg = runtime_config(backend, tmp_path, "fast", shared={"url": redis_server.url, "timeout_s": 1.0})
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        for _ in range(2):
            async with s.get(f"http://127.0.0.1:{edge_port(rt)}/api/sh") as r:
                assert await r.text() == "sh"
        shared = rt.engines[Layer.EDGE].caches.get("api").shared
        await _until(lambda: not shared._tasks)
    assert shared._listener.done() and backend.hits["/api/sh"] == 1  # stopped with the runtime
