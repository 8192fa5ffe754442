"""Aggregate routes end to end: a real runtime, real aiohttp backends (one answering, one failing, one hanging past
its call's timeout), both `on_error` policies, and what went over the wire to a real OTLP receiver."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from gatewatch.config import ConfigError, parse_config
from gatewatch.edge.aggregation import merge, render
from gatewatch.proxy.aggregate import Part, part_value
from gatewatch.telemetry.names import AggregateCall
from tests.support.configs import gateway_config
from tests.support.net import closed_port, edge_port, start_app
from tests.support.otlp import OtlpReceiver
from tests.support.runtime import running

SLOW_S = 0.3  # the hanging backend's call timeout; it answers when the test is over


async def users(request: web.Request) -> web.Response:
    uid = request.path.rsplit("/", 1)[-1]
    if request.path.startswith("/users/"):
        seen = {k: request.headers.get(k) for k in ("Accept", "Accept-Encoding", "If-None-Match", "X-Trace-Me")}
        return web.json_response({"id": uid, "name": "Ada", "meta": {"tier": "gold"}, "seen": seen,
                                  "query": request.query_string})
    if request.path == "/list":
        return web.json_response([1, 2])
    if request.path == "/text":
        return web.Response(text="not json")
    if request.path == "/big":
        return web.json_response({"pad": "x" * 5000})
    return web.json_response({"error": "nope"}, status=404)


async def failing(request: web.Request) -> web.Response:
    return web.json_response({"error": "boom"}, status=500)


def hanging(release: asyncio.Event):
    async def handler(request: web.Request) -> web.Response:
        await asyncio.wait_for(release.wait(), 30)  # answers once the test is over
        return web.json_response({"late": True})

    return handler


def config(ports: dict[str, int], tmp_path, otlp: OtlpReceiver | None = None) -> dict:
    def route(name: str, calls: list[dict], **aggregate) -> dict:
        return {"name": name, "match": {"path": {"template": f"/{name}/{{id}}"}},
                "aggregate": {"calls": calls, **aggregate}}

    user = {"name": "user", "upstream": "users", "path": "/users/{id}", "query": "pass"}
    orders = {"name": "orders", "upstream": "orders", "path": "/orders?user={id}", "method": "POST"}
    slow = {"name": "slow", "upstream": "slow", "path": "/slow/{id}", "timeout_s": SLOW_S}
    return gateway_config(
        tmp_path, otlp,
        {
            "upstreams": [{"name": "orders", "url": f"http://127.0.0.1:{ports['orders']}"}],
            "routes": [
                route("omit", [user, orders, slow], on_error="omit"),
                route("fail", [user, slow]),
                route("broken", [user, orders]),
                route("required", [user, dict(orders, required=True)], on_error="omit"),
                route("tpl", [user, orders], on_error="omit", compose="template", template={
                    "name": "${calls.user.body.name}", "user": {"$ref": "user"}, "tier": {"$ref": "user.meta.tier"},
                    "orders": {"$ref": "orders"}, "status": "${calls.user.status}", "literal": "as is"}),
                route("shapes", [dict(user, name="list", path="/list"), dict(user, name="text", path="/text"),
                                 dict(user, name="big", path="/big", max_body_bytes=1000),
                                 dict(user, name="missing", path="/missing/{id}"),
                                 dict(user, name="down", upstream="down")], on_error="omit"),
            ],
        },
        [
            {"name": "users", "instances": [{"id": "u0", "host": "127.0.0.1", "port": ports["users"]}]},
            {"name": "slow", "instances": [{"id": "s0", "host": "127.0.0.1", "port": ports["slow"]}]},
            {"name": "down", "instances": [{"id": "d0", "host": "127.0.0.1", "port": closed_port()}]},
        ])


@pytest.fixture
async def backends():
    release = asyncio.Event()
    started = [await start_app(users), await start_app(failing), await start_app(hanging(release))]
    yield {"users": started[0][1], "orders": started[1][1], "slow": started[2][1]}
    release.set()
    for runner, _ in started:
        await runner.cleanup()


async def get(port: int, path: str, headers=None) -> tuple[int, dict, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}{path}", headers=headers or {}) as r:
            return r.status, dict(r.headers), json.loads(await r.read())


async def test_omit_lists_failed_parts_and_spans_each_call(backends, tmp_path):
    with OtlpReceiver() as rx:
        async with running(config(backends, tmp_path, rx)) as rt:
            status, headers, body = await get(edge_port(rt), "/omit/42?lang=en", {
                "Accept-Encoding": "gzip", "If-None-Match": '"v1"', "X-Trace-Me": "yes"})
            assert status == 200
            assert body["id"] == "42" and body["name"] == "Ada" and body["query"] == "lang=en"
            # a call's body is plain JSON, never a conditional answer; the client's other headers go along
            assert body["seen"] == {"Accept": "application/json", "Accept-Encoding": None, "If-None-Match": None,
                                    "X-Trace-Me": "yes"}
            assert body["_partial"] == {"orders": "status", "slow": "timeout"}
            assert headers["x-gatewatch-partial"] == "orders,slow"
            assert headers["Content-Type"] == "application/json"
            trace_id = headers["traceresponse"].split("-")[1]
            for call, result in (("user", "ok"), ("orders", "status"), ("slow", "timeout")):
                assert rt.metrics.aggregate_calls.labels("omit", call, result)._value.get() == 1
            ok = await asyncio.get_running_loop().run_in_executor(None, lambda: rx.data.wait_for(
                lambda spans, logs: len([s for s in spans if s["trace_id"] == trace_id]) == 4
                and any(r["trace_id"] == trace_id and r["event_name"] == "gatewatch.decision.aggregate"
                        for r in logs)))
            assert ok
    spans = rx.data.trace(trace_id)
    server = next(s for s in spans if s["kind"] == "SERVER")
    assert server["attributes"]["http.route"] == "/omit/{id}"
    assert server["attributes"]["http.response.status_code"] == 200
    calls = {s["attributes"]["gatewatch.aggregate.call"]: s for s in spans if s["kind"] == "CLIENT"}
    assert set(calls) == {"user", "orders", "slow"}
    assert all(s["parent_span_id"] == server["span_id"] for s in calls.values())
    user, orders, slow = calls["user"]["attributes"], calls["orders"]["attributes"], calls["slow"]["attributes"]
    assert user["gatewatch.upstream"] == "users" and user["gatewatch.instance"] == "u0"
    assert user["gatewatch.lb.algorithm"] == "round_robin"  # picked by the balancer, as any attempt
    assert user["url.full"] == f"http://127.0.0.1:{backends['users']}/users/42?lang=en"
    assert user["http.response.status_code"] == 200 and "error.type" not in user
    assert orders["gatewatch.upstream"] == "orders" and orders["error.type"] == "500"
    assert orders["url.full"].endswith("/orders?user=42")
    assert orders["http.request.method"] == "POST" and calls["orders"]["name"] == "POST"  # the call's own method
    assert user["http.request.method"] == "GET" and calls["user"]["name"] == "GET"
    assert slow["error.type"] == "response_timeout" and slow["gatewatch.instance"] == "s0"
    decision = next(r for r in rx.data.snapshot()[1]
                    if r["trace_id"] == trace_id and r["event_name"] == "gatewatch.decision.aggregate")
    a = decision["attributes"]
    assert a["gatewatch.decision.result"] == "partial" and a["gatewatch.decision.reason"] == "aggregate.parts_omitted"
    assert a["gatewatch.aggregate.ok"] == ["user"]
    assert a["gatewatch.aggregate.failed"] == ["orders=status", "slow=timeout"]
    assert a["gatewatch.aggregate.sizes"][0].startswith("user=") and a["gatewatch.aggregate.response_bytes"] > 0


async def test_fail_answers_504_for_a_timeout_and_502_for_a_failed_call(backends, tmp_path):
    async with running(config(backends, tmp_path)) as rt:
        port = edge_port(rt)
        status, headers, body = await get(port, "/fail/1")
        assert status == 504
        assert body["error"]["outcome"] == "upstream_timeout"
        assert body["error"]["message"] == "aggregate call 'slow' failed: timeout"
        status, _, body = await get(port, "/broken/1")
        assert status == 502 and body["error"]["outcome"] == "upstream_error"
        assert body["error"]["message"] == "aggregate call 'orders' failed: status"
        # a required call fails the response even under on_error: omit
        status, _, body = await get(port, "/required/1")
        assert status == 502 and "'orders'" in body["error"]["message"]
        assert rt.metrics.aggregate_calls.labels("fail", "slow", "timeout")._value.get() == 1
        assert rt.metrics.aggregate_calls.labels("broken", "orders", "status")._value.get() == 1
        assert rt.metrics.decisions.value(("edge", "aggregate", "failed", "aggregate.call_failed")) == 3


async def test_fail_fast_cancels_the_calls_still_running(backends, tmp_path):
    cfg = config(backends, tmp_path)
    cfg["edge"]["routes"][1]["aggregate"]["calls"].append(
        {"name": "orders", "upstream": "orders", "path": "/o", "timeout_s": 60})
    cfg["edge"]["routes"][1]["aggregate"]["calls"][1]["timeout_s"] = 60  # slow: hangs until the test ends
    async with running(cfg) as rt:
        status, _, body = await get(edge_port(rt), "/fail/1")
        assert status == 502 and "'orders'" in body["error"]["message"]
        assert rt.metrics.aggregate_calls.labels("fail", "slow", "cancelled")._value.get() == 1


async def test_template_picks_parts_and_nulls_failed_ones(backends, tmp_path):
    async with running(config(backends, tmp_path)) as rt:
        text = rt.metrics.exposition(None)[0].decode()  # every call's every result exists at 0 from the start
        for result in AggregateCall:
            assert f'gatewatch_aggregate_calls_total{{call="orders",gatewatch_route="tpl",result="{result.value}"}} 0.0' \
                in text
        assert 'decision="aggregate",gatewatch_layer="edge",reason="aggregate.parts_omitted",result="partial"} 0.0' \
            in text
        status, headers, body = await get(edge_port(rt), "/tpl/7")
    assert status == 200
    assert body["name"] == "Ada" and body["user"]["id"] == "7" and body["tier"] == "gold"
    assert body["orders"] is None and body["status"] == 200 and body["literal"] == "as is"
    assert body["_partial"] == {"orders": "status"}


async def test_unusable_bodies_fail_their_call_with_a_reason(backends, tmp_path):
    async with running(config(backends, tmp_path)) as rt:
        status, headers, body = await get(edge_port(rt), "/shapes/1")
    assert status == 200
    assert body == {"_partial": {"list": "not_object", "text": "not_json", "big": "too_large", "missing": "status",
                                 "down": "connect_error"}}
    assert headers["x-gatewatch-partial"] == "list,text,big,missing,down"


def test_merge_is_deep_and_ordered():
    assert merge([{"a": {"x": 1, "y": 1}, "b": [1]}, {"a": {"y": 2}, "b": [2], "c": None}]) == \
        {"a": {"x": 1, "y": 2}, "b": [2], "c": None}


def test_render_is_type_preserving_and_never_evaluates():
    parts = {"u": Part("u", AggregateCall.OK, {"n": [10, {"k": True}]}, 5, 200),
             "f": Part("f", AggregateCall.TIMEOUT)}
    template = {"a": "${calls.u.body.n.1.k}", "b": {"$ref": "u.n.0"}, "c": ["${calls.f.body}", "${calls.u.status}"],
                "d": "x ${calls.u.body} y", "e": {"$ref": "u", "other": 1}, "f": "${calls.u.body.nope.deeper}"}
    assert render(template, part_value(parts)) == {"a": True, "b": 10, "c": [None, 200], "d": "x ${calls.u.body} y",
                                       "e": {"$ref": "u", "other": 1}, "f": None}


def route_with(aggregate: dict, **route) -> dict:
    return {"admin": {"address": "127.0.0.1:0"}, "edge": {
        "listeners": [{"name": "l", "address": "127.0.0.1:0"}],
        "upstreams": [{"name": "u", "url": "http://127.0.0.1:1"}],
        "routes": [{"name": "r", "match": {"path": {"template": "/p/{id}"}}, "aggregate": aggregate, **route}]}}


CALL = {"name": "a", "upstream": "u", "path": "/x/{id}"}


@pytest.mark.parametrize("aggregate, route, problem", [
    ({"calls": [CALL]}, {"upstream": "u"},
     "edge.routes[0]: aggregate: not with 'upstream', 'upstreams', 'mirror' or 'cache' (an aggregate route's calls "
     "name their upstreams; its response is composed, not stored)"),
    ({"calls": [CALL]}, {"cache": {}},
     "edge.routes[0]: aggregate: not with 'upstream', 'upstreams', 'mirror' or 'cache' (an aggregate route's calls "
     "name their upstreams; its response is composed, not stored)"),
    ({"calls": [dict(CALL, path="/x/{other}")]}, {},
     "edge.routes[0].aggregate.calls[0].path: {other} is not a path parameter of this route (the route's "
     "match.path.template has id)"),
    ({"calls": [dict(CALL, upstream="nope")]}, {}, "edge.routes[0].aggregate.calls[0].upstream: unknown upstream 'nope'"),
    ({"calls": [CALL, CALL]}, {}, "edge.routes[0].aggregate: calls: duplicate call name(s) a"),
    ({"calls": [CALL], "compose": "template"}, {}, "edge.routes[0].aggregate: template: required with compose: template"),
    ({"calls": [CALL], "compose": "template", "template": {"x": {"y": "${calls.b.body}"}}}, {},
     "edge.routes[0].aggregate: template.x.y: unknown call 'b' (calls: a)"),
    ({"calls": [CALL], "compose": "template", "template": {"x": "${calls.a.headers}"}}, {},
     "edge.routes[0].aggregate: template.x: '${calls.a.headers}' is not a reference: expected ${calls.NAME.body}, "
     "${calls.NAME.body.a.b} or ${calls.NAME.status}"),
    ({"calls": [CALL], "compose": "template", "template": {"$ref": "a"}}, {},
     "edge.routes[0].aggregate: template: the root must be an object, not a reference (wrap it: "
     '{"user": {"$ref": "user"}})'),
    ({"calls": [dict(CALL, path="x/{id}")]}, {},
     "edge.routes[0].aggregate.calls[0].path: 'x/{id}': must start with '/' and have no fragment"),
    ({"calls": [dict(CALL, method="HEAD")]}, {},
     "edge.routes[0].aggregate.calls[0].method: 'HEAD': expected an upper-case method with a response body "
     "(GET, POST, ...)"),
])
def test_config_errors_name_the_field(aggregate, route, problem):
    with pytest.raises(ConfigError) as err:
        parse_config(route_with(aggregate, **route))
    assert problem in err.value.problems, err.value.problems


def test_route_without_upstream_or_aggregate_is_still_told():
    cfg = route_with({"calls": [CALL]})
    del cfg["edge"]["routes"][0]["aggregate"]
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert err.value.problems == ["edge.routes[0].upstream: missing required key"]
