"""Header rules the engine applies before routing (issue 18, category 3), telemetry as data: what a dropped or cut
header leaves in the request's record, SERVER span and metrics, on both of the engine's paths (task, sync)."""

from __future__ import annotations

import pytest

from gatewatch.io.memory import Reply
from gatewatch.telemetry.convert import attributes, span_models
from gatewatch.telemetry.names import Attr
from tests.support.engine import EngineHarness

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
pytestmark = pytest.mark.parametrize("now", [False, True], ids=["task", "sync"])


def harness(now: bool, **listener) -> EngineHarness:
    config = {
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0", **listener}],
                 "routes": [{"name": "api", "match": {"path": {"prefix": "/api"},
                                                      "headers": [{"name": "x-tenant", "value": "t1"}]},
                             "upstream": "pool"}]},
        "balancer": {"pools": [{"name": "pool", "instances": [{"id": "i0", "host": "10.0.0.1", "port": 9001}]}]},
    }
    return EngineHarness(config, lambda request: Reply(200, b"ok"), now=now)


def server_span(record) -> dict:
    return attributes(span_models(record)[0].attributes)


async def test_an_underscored_header_is_gone_before_routing_and_recorded(now):
    h = harness(now)
    down = await h.request("GET", "/api/x", [("Host", "h"), ("X-Tenant", "t1"), ("X_Tenant", "t2"),
                                               ("X_Forwarded_For", "6.6.6.6")])
    assert down.status == 200
    (sent,) = h.forwarder.sent
    names = [k for k, _ in sent.request.headers]
    assert "X_Tenant" not in names and "X_Forwarded_For" not in names and "X-Tenant" in names
    (record,) = h.records
    assert record.headers_dropped == ("underscore_in_name",)
    assert server_span(record)[Attr.REQUEST_HEADERS_DROPPED] == ("underscore_in_name",)
    assert h.sample("gatewatch_request_headers_dropped_total", gatewatch_layer="edge",
                    reason="underscore_in_name") == 1


async def test_routing_never_sees_an_underscored_alias(now):
    """`X_Tenant: t1` must not satisfy a route's `x-tenant` condition (a CGI backend would read it as the same)."""
    h = harness(now)
    down = await h.request("GET", "/api/x", [("Host", "h"), ("X_Tenant", "t1")])
    assert down.status == 404


async def test_a_refused_underscored_header_is_a_400_with_its_error_type(now):
    h = harness(now, headers_with_underscores="reject")
    down = await h.request("GET", "/api/x", [("Host", "h"), ("X-Tenant", "t1"), ("My_Header", "v")])
    assert down.status == 400 and not h.forwarder.sent
    (record,) = h.records
    assert (record.outcome, record.error_type) == ("bad_request", "underscore_in_header_name")
    assert server_span(record)[Attr.ERROR_TYPE] == "underscore_in_header_name"


async def test_a_cut_tracestate_and_baggage_are_recorded_and_the_request_served(now):
    h = harness(now, incoming_trace_context="continue")
    down = await h.request("GET", "/api/x", [("Host", "h"), ("X-Tenant", "t1"), ("traceparent", TRACEPARENT),
                                               ("tracestate", "big=" + "x" * 600), ("tracestate", "ours=1"),
                                               ("baggage", ",".join(f"k{i}=v" for i in range(200)))])
    assert down.status == 200
    (sent,) = h.forwarder.sent
    forwarded = dict((k, v) for k, v in sent.request.headers if k in ("tracestate", "baggage"))
    assert forwarded["tracestate"] == "ours=1"
    assert forwarded["baggage"].split(",") == [f"k{i}=v" for i in range(180)]
    (record,) = h.records
    assert record.headers_dropped == ("tracestate_truncated", "baggage_truncated")
    assert server_span(record)[Attr.REQUEST_HEADERS_DROPPED] == ("tracestate_truncated", "baggage_truncated")
    for reason in record.headers_dropped:
        assert h.sample("gatewatch_request_headers_dropped_total", reason=reason) == 1


async def test_nothing_dropped_leaves_no_attribute(now):
    h = harness(now, incoming_trace_context="continue")
    await h.request("GET", "/api/x", [("Host", "h"), ("X-Tenant", "t1"), ("traceparent", TRACEPARENT),
                                      ("tracestate", "a=1"), ("baggage", "k=v")])
    (record,) = h.records
    assert record.headers_dropped is None
    assert Attr.REQUEST_HEADERS_DROPPED not in server_span(record)


@pytest.mark.parametrize(("target", "error_type"), [
    ("/api/..%2fadmin", "path_escaped_slash"), ("/api/%00", "path_control_char"), ("/api/a#b", "fragment_in_target"),
    ("/api;x", "path_parameter"), ("/api/%c0%ae", "path_invalid_utf8"), ("/api/%252e", "path_double_encoding"),
])
async def test_a_refused_target_is_recorded_with_its_error_type(now, target, error_type):
    h = harness(now)
    down = await h.request("GET", target, [("Host", "h"), ("X-Tenant", "t1")])
    assert down.status == 400 and not h.forwarder.sent
    (record,) = h.records
    assert (record.outcome, record.error_type) == ("bad_request", error_type)
