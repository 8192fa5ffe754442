"""Proxy header rules (RFC 9110 §7.6): hop-by-hop removal, forwarding headers, request ids, trace context."""

from __future__ import annotations

import re

import pytest

import random

from gatewatch.proxy.headers import content_length, downstream_response_headers, request_id, strip_hop_by_hop, upstream_request_headers
from gatewatch.io.interfaces import header_index

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
INBOUND_TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def upstream(headers, **overrides) -> tuple[tuple[str, str], ...]:
    kwargs = dict(client_address="192.0.2.7", scheme="http", host="api.example.com", upstream_host="10.0.0.1:9000",
                  preserve_host=True, trust_forwarded=False, request_id="rid-1", traceparent=TRACEPARENT,
                  tracestate=None, version="1.1", baggage=None)
    kwargs.update(overrides)
    scanned = upstream_request_headers(tuple(headers), **kwargs)
    # the engine passes the listener's header index (lower-case name → first value) to skip scans: same result
    indexed = upstream_request_headers(tuple(headers), **kwargs, index=header_index(tuple(headers)))
    assert indexed == scanned
    return scanned


def values(headers, name: str) -> list[str]:
    return [v for k, v in headers if k.lower() == name.lower()]


# --- hop-by-hop ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "kept"), [
    ([("Accept", "*/*"), ("Connection", "keep-alive"), ("Keep-Alive", "timeout=5")], ["Accept"]),
    ([("TE", "trailers"), ("Trailer", "x"), ("Transfer-Encoding", "chunked"), ("Upgrade", "h2c"),
      ("Proxy-Connection", "keep-alive"), ("Proxy-Authenticate", "Basic"), ("Proxy-Authorization", "Basic x"),
      ("Authorization", "Bearer t")], ["Authorization"]),
    ([("connection", "X-Secret, x-other"), ("X-Secret", "1"), ("X-OTHER", "2"), ("X-Kept", "3")], ["X-Kept"]),
    ([("Connection", " , x-a ,"), ("Connection", "X-B"), ("x-a", "1"), ("x-b", "2"), ("x-c", "3")], ["x-c"]),
    ([("CONNECTION", "close"), ("Close", "x"), ("Accept", "a")], ["Accept"]),  # a listed name is dropped too
    ([("Accept", "a"), ("accept", "b")], ["Accept", "accept"]),  # duplicates and spelling kept
])
def test_strip_hop_by_hop(headers, kept):
    assert [k for k, _ in strip_hop_by_hop(tuple(headers))] == kept


def test_strip_hop_by_hop_also_drops_extra_names():
    out = strip_hop_by_hop((("Via", "1.0 a"), ("Content-Length", "3"), ("X", "y")), frozenset({"via", "content-length"}))
    assert out == [("X", "y")]


def test_every_connection_header_names_headers_to_drop():
    out = strip_hop_by_hop((("Connection", "Keep-Alive, X-Foo"), ("connection", "X-Bar"), ("X-Foo", "1"),
                            ("x-bar", "2"), ("X-Keep", "3")))
    assert out == [("X-Keep", "3")]


# --- upstream request headers --------------------------------------------------------------------------------------

def test_upstream_headers_full_shape():
    inbound = [("Host", "api.example.com"), ("Accept", "*/*"), ("Connection", "keep-alive, X-Hop"), ("X-Hop", "1"),
               ("X-Request-Id", "client-id"), ("traceparent", INBOUND_TRACEPARENT), ("tracestate", "a=1"),
               ("Expect", "100-continue"), ("Content-Length", "5"), ("Cookie", "c=1")]
    assert upstream(inbound, tracestate="gw=1") == (
        ("Host", "api.example.com"),
        ("Accept", "*/*"),
        ("Content-Length", "5"),
        ("Cookie", "c=1"),
        ("X-Forwarded-For", "192.0.2.7"),
        ("X-Forwarded-Proto", "http"),
        ("X-Forwarded-Host", "api.example.com"),
        ("Via", "1.1 gatewatch"),
        ("X-Request-Id", "rid-1"),
        ("traceparent", TRACEPARENT),
        ("tracestate", "gw=1"),
    )


@pytest.mark.parametrize(("inbound", "expected"), [
    ([], "192.0.2.7"),
    ([("X-Forwarded-For", "198.51.100.1")], "198.51.100.1, 192.0.2.7"),
    ([("X-Forwarded-For", "198.51.100.1, 10.0.0.1")], "198.51.100.1, 10.0.0.1, 192.0.2.7"),
    ([("x-forwarded-for", "198.51.100.1"), ("X-Forwarded-For", "10.0.0.1")], "198.51.100.1, 10.0.0.1, 192.0.2.7"),
])
def test_x_forwarded_for_is_appended(inbound, expected):
    assert values(upstream(inbound), "X-Forwarded-For") == [expected]


@pytest.mark.parametrize(("inbound", "trust", "scheme", "proto", "fwd_host"), [
    ([], False, "http", "http", "api.example.com"),
    ([], False, "https", "https", "api.example.com"),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "evil.example")], False, "http", "http", "api.example.com"),
    ([("X-Forwarded-Proto", "https"), ("X-Forwarded-Host", "public.example")], True, "http", "https",
     "public.example"),
    ([], True, "http", "http", "api.example.com"),  # trusted but absent: our own view
    ([("x-forwarded-proto", "https"), ("X-Forwarded-Proto", "http")], True, "http", "https", "api.example.com"),
])
def test_forwarded_proto_and_host(inbound, trust, scheme, proto, fwd_host):
    out = upstream(inbound, trust_forwarded=trust, scheme=scheme)
    assert values(out, "X-Forwarded-Proto") == [proto]
    assert values(out, "X-Forwarded-Host") == [fwd_host]


def test_forwarded_host_absent_without_any_host():
    out = upstream([], host=None)
    assert values(out, "X-Forwarded-Host") == []
    assert out[0] == ("Host", "10.0.0.1:9000")


@pytest.mark.parametrize(("inbound", "version", "expected"), [
    ([], "1.1", "1.1 gatewatch"),
    ([], "1.0", "1.0 gatewatch"),
    ([("Via", "1.1 cdn")], "1.1", "1.1 cdn, 1.1 gatewatch"),
    ([("Via", "1.0 a"), ("via", "1.1 b")], "1.1", "1.0 a, 1.1 b, 1.1 gatewatch"),
])
def test_via_is_appended(inbound, version, expected):
    assert values(upstream(inbound, version=version), "Via") == [expected]


@pytest.mark.parametrize(("preserve", "host", "expected"), [
    (True, "api.example.com", "api.example.com"),
    (True, "api.example.com:8080", "api.example.com:8080"),
    (False, "api.example.com", "10.0.0.1:9000"),
    (True, None, "10.0.0.1:9000"),
    (True, "", "10.0.0.1:9000"),
])
def test_host_preserved_or_upstream(preserve, host, expected):
    out = upstream([("Host", "ignored.example")], preserve_host=preserve, host=host)
    assert out[0] == ("Host", expected)
    assert values(out, "Host") == [expected]  # the inbound Host never leaks through


def test_inbound_trace_context_is_replaced():
    out = upstream([("traceparent", INBOUND_TRACEPARENT), ("Tracestate", "vendor=1"), ("X-Request-Id", "x")],
                   tracestate=None)
    assert values(out, "traceparent") == [TRACEPARENT]
    assert values(out, "tracestate") == []
    assert values(out, "X-Request-Id") == ["rid-1"]


@pytest.mark.parametrize(("baggage", "expected"), [(None, []), ("k=v", ["k=v"]), ("k=v,a=b", ["k=v,a=b"])])
def test_inbound_baggage_is_replaced_by_the_continued_contexts(baggage, expected):
    """The engine passes the continued context's baggage (cut to the W3C limits), or None: the inbound lines never
    pass as they are (an oversized one would otherwise reach the upstream whole)."""
    inbound = [("Baggage", "k=v"), ("baggage", "a=b"), ("baggage", "x" * 9000)]
    assert values(upstream(inbound, baggage=baggage), "baggage") == expected


def test_hop_by_hop_removed_upstream():
    out = upstream([("Connection", "close, X-Private"), ("X-Private", "s"), ("Transfer-Encoding", "chunked"),
                    ("Upgrade", "websocket"), ("TE", "trailers"), ("X-Public", "p")])
    names = {k.lower() for k, _ in out}
    assert names == {"host", "x-public", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "via",
                     "x-request-id", "traceparent"}


# --- request ids ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [
    "abc", "0f8fad5b-d9cb-469f-a165-70867728950e", "a.b_c:d@e+f/g=h", "x" * 128,
])
def test_well_formed_request_id_is_kept(value):
    assert request_id(value, random.Random(1)) == value


@pytest.mark.parametrize("value", [
    pytest.param("", id="empty"),
    pytest.param("x" * 129, id="too-long"),
    pytest.param("a b", id="space"),
    pytest.param("a\r\nX-Injected: 1", id="crlf"),
    pytest.param("a\rb", id="cr"),
    pytest.param("a\x00b", id="nul"),
    pytest.param("a\tb", id="tab"),
    pytest.param("id;drop", id="semicolon"),
    pytest.param("<script>", id="angle"),
    pytest.param("caf\u00e9", id="non-ascii"),
    pytest.param("a\u2028b", id="line-separator"),
])
def test_hostile_request_id_is_replaced(value):
    got = request_id(value, random.Random(1))
    assert got != value
    assert re.fullmatch(r"[0-9a-f]{32}", got)


@pytest.mark.parametrize("value", [
    pytest.param("abc\n", id="trailing-lf"),
    pytest.param("x" * 128 + "\n", id="max-length-plus-lf"),
])
def test_request_id_with_trailing_newline_is_replaced(value):
    assert request_id(value, random.Random(1)) != value


def test_missing_request_id_is_minted_unique():
    rng = random.Random(7)
    minted = {request_id(None, rng) for _ in range(3)}
    assert len(minted) == 3 and all(re.fullmatch(r"[0-9a-f]{32}", m) for m in minted)


# --- response headers ----------------------------------------------------------------------------------------------

def test_downstream_response_headers():
    out, length = downstream_response_headers((
        ("Content-Type", "text/plain"), ("Content-Length", "3"), ("Connection", "close, X-Hop"), ("X-Hop", "1"),
        ("Via", "1.1 backend"), ("Transfer-Encoding", "chunked"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
        ("X-Request-Id", "inner-tier-id"), ("traceresponse", "00-ab-cd-01"), ("via", "1.1 lb")), "1.1")
    assert out == [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2"),
                   ("Via", "1.1 backend, 1.1 lb, 1.1 gatewatch")]  # an inner tier's id/traceresponse: ours replace them
    assert length == 3


# --- content length ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("headers", "expected"), [
    ([("Content-Length", "42")], 42),
    ([("content-length", "0")], 0),
    ([("Content-Length", " 7 ")], 7),
    ([("Content-Length", "007")], 7),
    ([("Content-Length", "5"), ("content-length", "5")], 5),  # identical duplicates are one value
    ([("Content-Length", "5"), ("Content-Length", "6")], None),  # conflicting duplicates: unknown
    ([], None),
    ([("Content-Length", "")], None),
    ([("Content-Length", "-1")], None),
    ([("Content-Length", "+5")], None),
    ([("Content-Length", "5, 5")], None),
    ([("Content-Length", "1e3")], None),
    ([("Content-Length", "0x10")], None),
    ([("Content-Length", "5"), ("Content-Length", "abc")], None),
])
def test_content_length(headers, expected):
    assert content_length(tuple(headers)) == expected
    assert downstream_response_headers(tuple(headers), "1.1")[1] == expected  # the relay's one-pass version


@pytest.mark.parametrize("value", [
    pytest.param("\u00b2", id="superscript-two"),  # str.isdigit() is True, int() raises ValueError
    pytest.param("\u0663", id="arabic-indic-three"),  # str.isdigit() is True, int() gives 3
])
def test_content_length_rejects_non_ascii_digits(value):
    assert content_length((("Content-Length", value),)) is None
