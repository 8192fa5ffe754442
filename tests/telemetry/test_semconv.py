"""Spans and metrics against the stable OTel HTTP semantic conventions (semantic-conventions docs/http/http-spans.md
and http-metrics.md): the required attributes, the conditionally required ones exactly when their condition holds,
span names, span status, and the duration histograms' attributes. Requests go through the engine on the in-memory
I/O pair; spans are the exporter's own models of the finished records."""

from __future__ import annotations

import pytest

from gatewatch.io.memory import Reply
from gatewatch.telemetry.convert import CLIENT, SERVER, Conventions, attributes, redact_query, server_address, span_models
from gatewatch.telemetry.names import ErrorType
from tests.support.engine import EngineHarness, by_instance

SERVER_REQUIRED = {"http.request.method", "url.path", "url.scheme"}
CLIENT_REQUIRED = {"http.request.method", "server.address", "server.port", "url.full"}
KNOWN = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH", "QUERY"}


def config():
    return {
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], "routes": [
            {"name": "orders", "match": {"path": {"template": "/orders/{id}"}}, "upstream": "pool",
             "retries": {"attempts": 2, "backoff_base_s": 0, "retry_on": ["connect_failure", "status"],
                         "statuses": [503]}},
            {"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "pool", "retries": {"attempts": 1}}]},
        "balancer": {"pools": [{"name": "pool", "instances": [
            {"id": "i0", "host": "10.0.0.1", "port": 9001}, {"id": "i1", "host": "10.0.0.2", "port": 9002}]}]},
    }


REQUESTS = [  # (method, target, headers, instance replies)
    ("GET", "/orders/7", (("Host", "shop.example:8443"),), {"p9001": Reply(200), "p9002": Reply(200)}),
    ("PURGE", "/api/cache?token=s3cret&page=2", (("Host", "shop.example"),), {"p9001": Reply(200), "p9002": Reply(200)}),
    ("GET", "/api/x", (), {"p9001": Reply(404), "p9002": Reply(404)}),
    ("GET", "/orders/9", (), {"p9001": ErrorType.CONNECT_REFUSED, "p9002": Reply(503)}),
    ("GET", "/nowhere", (), {}),
    ("GET", "/api/boom", (), {"p9001": ErrorType.RESPONSE_TIMEOUT, "p9002": ErrorType.RESPONSE_TIMEOUT}),
]


@pytest.fixture
async def spans_and_metrics():
    out = []
    h = None
    for method, target, headers, replies in REQUESTS:
        h = EngineHarness(config(), by_instance(**replies)) if h is None else h
        h.forwarder.upstream = by_instance(**replies)
        await h.request(method, target, headers)
    await h.close()
    for r in h.records:
        out.extend(span_models(r, Conventions.of(KNOWN, ())))
    return out, h


async def test_server_spans_carry_the_required_attributes_and_only_the_conditional_ones_that_apply(spans_and_metrics):
    spans, _ = spans_and_metrics
    servers = [m for m in spans if m.kind == SERVER]
    assert len(servers) == len(REQUESTS)
    for m in servers:
        a = attributes(m.attributes)
        assert SERVER_REQUIRED <= set(a), (m.name, a)
        assert a["http.request.method"] in KNOWN | {"_OTHER"}
        # http.request.method_original: if and only if it differs from http.request.method
        assert ("http.request.method_original" in a) == (a["http.request.method"] == "_OTHER")
        # server.port: if available and server.address is set
        assert ("server.port" in a) == ("server.address" in a)
        # span name: "{method} {http.route}", or "{method}" without a route; "HTTP" for an unknown method
        method = "HTTP" if a["http.request.method"] == "_OTHER" else a["http.request.method"]
        assert m.name == (f"{method} {a['http.route']}" if "http.route" in a else method)
        status = a.get("http.response.status_code")
        # status: ERROR for 5xx or no response; a 4xx SERVER span is left unset
        assert m.error == (status >= 500 if status is not None else "error.type" in a), (m.name, a)
        # error.type: set exactly when the request ended with an error (5xx: the status code at least)
        if status is not None and status >= 500:
            assert a["error.type"]
        if status is not None and status < 500:
            assert "error.type" not in a, a


async def test_client_spans_one_per_attempt(spans_and_metrics):
    spans, _ = spans_and_metrics
    clients = [m for m in spans if m.kind == CLIENT]
    assert clients
    for m in clients:
        a = attributes(m.attributes)
        assert CLIENT_REQUIRED <= set(a), a
        assert m.name in KNOWN | {"HTTP"}
        status = a.get("http.response.status_code")
        # a CLIENT span: ERROR for 4xx and 5xx, and for any failure without a status; error.type then set
        assert m.error == (status >= 400 if status is not None else True)
        assert ("error.type" in a) == m.error
        assert a.get("http.request.resend_count", 0) >= 0
    retried = [attributes(m.attributes) for m in clients if "http.request.resend_count" in attributes(m.attributes)]
    assert retried and all(a["http.request.resend_count"] == 1 for a in retried)


async def test_specific_values(spans_and_metrics):
    spans, _ = spans_and_metrics
    by_path = {attributes(m.attributes)["url.path"]: attributes(m.attributes) for m in spans if m.kind == SERVER}
    assert (by_path["/orders/7"]["server.address"], by_path["/orders/7"]["server.port"]) == ("shop.example", 8443)
    assert by_path["/api/cache"]["server.port"] == 80  # no port in Host: the scheme's default
    assert by_path["/api/cache"]["http.request.method_original"] == "PURGE"
    assert by_path["/api/cache"]["url.query"] == "token=REDACTED&page=REDACTED"
    assert by_path["/api/cache"]["http.route"] == "/api/*"
    assert by_path["/orders/9"]["http.route"] == "/orders/{id}"


async def test_duration_histograms_carry_the_conventions_attributes(spans_and_metrics):
    _, h = spans_and_metrics
    samples = {s.name: [] for s in ()}
    for fam in h.metrics.collect_all():
        for s in fam.samples:
            samples.setdefault(s.name, []).append(s.labels)
    server = samples["http_server_request_duration_seconds_count"]
    client = samples["http_client_request_duration_seconds_count"]
    for labels in server:
        assert {"http_request_method", "url_scheme", "http_response_status_code", "http_route", "error_type"} <= set(labels)
        assert labels["http_request_method"] in KNOWN | {"_OTHER"}
        if labels["http_response_status_code"].startswith("5"):
            assert labels["error_type"]
    assert any(lb["http_request_method"] == "_OTHER" for lb in server)
    for labels in client:
        assert {"http_request_method", "server_address", "server_port", "error_type", "http_response_status_code"} <= set(labels)
        assert labels["server_port"].isdigit()
        failed = labels["http_response_status_code"] == "" or labels["http_response_status_code"] >= "400"
        assert bool(labels["error_type"]) == failed, labels


@pytest.mark.parametrize(("host", "scheme", "expected"), [
    ("example.com", "http", ("example.com", 80)),
    ("example.com:8080", "https", ("example.com", 8080)),
    ("example.com", "https", ("example.com", 443)),
    ("[2001:db8::1]:8443", "http", ("2001:db8::1", 8443)),
    ("[2001:db8::1]", "http", ("2001:db8::1", 80)),
    ("2001:db8::1", "http", ("2001:db8::1", 80)),
    ("example.com:notaport", "http", ("example.com", 80)),
    ("", "http", (None, None)),
])
def test_server_address_and_port_from_the_host_header(host, scheme, expected):
    assert server_address(host, scheme) == expected


@pytest.mark.parametrize(("query", "keep", "expected"), [
    ("token=secret&x=1", frozenset(), "token=REDACTED&x=REDACTED"),
    ("token=secret&page=2", frozenset({"page"}), "token=REDACTED&page=2"),
    ("token=secret", None, "token=secret"),  # "*": every value kept
    ("flag&empty=&a=b", frozenset(), "flag&empty=&a=REDACTED"),  # nothing to hide in a name alone
    ("", frozenset(), ""),
])
def test_query_values_are_redacted_unless_kept(query, keep, expected):
    assert redact_query(query, keep) == expected
