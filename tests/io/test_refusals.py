"""What a strict HTTP/1 proxy refuses (issue 18, categories 1-3; docs/refusals.md), on both data planes.

Each case is sent as raw bytes to a real listener on loopback and checked for what the client got (status,
closed connection), what the upstream got (nothing, or exactly the normalised request) and what was recorded
(`error.type` on the request's metrics, `gatewatch_request_headers_dropped_total`).
"""

from __future__ import annotations

import asyncio
import collections
import json
import re

import pytest

from tests.io.test_dataplane_adversarial import (Upstream, client, echo_target, eventually, gateway, keepalive_server,
                                                 ok, read_all, read_response)
from tests.support.runtime import in_process_config

pytestmark = pytest.mark.parametrize("plane", ["fast", "aiohttp"])

SERVER_COUNT = re.compile(r'^http_server_request_duration_seconds_count\{(.*)\} (\S+)$', re.M)
DROPPED = re.compile(r'^gatewatch_request_headers_dropped_total\{(.*)\} (\S+)$', re.M)


def recorded(rt) -> collections.Counter:
    """(outcome, status, error.type) → requests recorded, from the metrics the records feed."""
    out: collections.Counter = collections.Counter()
    for labels, value in SERVER_COUNT.findall(rt.metrics.exposition(None)[0].decode()):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(d["gatewatch_outcome"], d["http_response_status_code"], d["error_type"])] += int(float(value))
    return out


def dropped(rt) -> dict[str, int]:
    out = {}
    for labels, value in DROPPED.findall(rt.metrics.exposition(None)[0].decode()):
        out[dict(re.findall(r'(\w+)="([^"]*)"', labels))["reason"]] = int(float(value))
    return out


def config(tmp_path, port: int, plane: str, **listener) -> dict:
    c = in_process_config([port], tmp_path, data_plane=plane)
    c["edge"]["listeners"][0].update(listener)
    return c


async def refused(rt, up: Upstream, raw: bytes) -> tuple[int, bytes]:
    """Send `raw`; the answer's status and everything after it (the connection must close)."""
    async with client(rt) as (reader, writer):
        writer.write(raw)
        data = await read_all(reader)
    assert data.startswith(b"HTTP/"), data
    return int(data.split(b" ", 2)[1]), data


async def forwarded(rt, raw: bytes) -> dict:
    async with client(rt) as (reader, writer):
        writer.write(raw)
        resp = await read_response(reader)
    assert resp.status == 200, resp.body
    return resp.json()


# --- 1. the request line and version ------------------------------------------------------------------------------

VERSIONS = [
    pytest.param(b"GET /api/x HTTP/2.0\r\nHost: h\r\n\r\n", 505, "unsupported_http_version", id="http2.0"),
    pytest.param(b"GET /api/x HTTP/0.9\r\nHost: h\r\n\r\n", 505, "unsupported_http_version", id="http0.9"),
    pytest.param(b"GET /api/x\r\nHost: h\r\n\r\n", 505, "unsupported_http_version", id="no-version"),
    pytest.param(b"GET /api/x HTTP/1.2\r\nHost: h\r\n\r\n", 505, "unsupported_http_version", id="http1.2"),
    pytest.param(b"GET /api/x HTTP/3.0\r\nHost: h\r\n\r\n", 505, "unsupported_http_version", id="http3.0"),
    # (the HTTP/2 connection preface itself is served as h2c by the fast listener: tests/io/test_h2.py)
    pytest.param(b"GET /api/x HTTP/2.0\r\nHost: h\r\n\r\n", 505, "unsupported_http_version", id="http2.0"),
    pytest.param(b"GET /api/x HTTPS/1.1\r\nHost: h\r\n\r\n", 400, "invalid_http_version", id="https-name"),
    pytest.param(b"GET /api/x http/1.1\r\nHost: h\r\n\r\n", 400, "invalid_http_version", id="lower-case-name"),
    pytest.param(b"GET /api/x HTTP/1\r\nHost: h\r\n\r\n", 400, "invalid_http_version", id="no-minor"),
    pytest.param(b"GET /api/x HTTP/1.10\r\nHost: h\r\n\r\n", 400, "invalid_http_version", id="two-digit-minor"),
    pytest.param(b"GET /api/x HTTP/1.1 \r\nHost: h\r\n\r\n", 400, "invalid_http_version", id="trailing-space"),
]


@pytest.mark.parametrize(("raw", "status", "error_type"), VERSIONS)
async def test_only_http_1_0_and_1_1_are_served(tmp_path, plane, raw, status, error_type):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        got, data = await refused(rt, up, raw)
        assert got == status and data.startswith(b"HTTP/1.")  # an HTTP/1 status line whatever the request's version
        assert json.loads(data.partition(b"\r\n\r\n")[2])["error"]["outcome"] == "bad_request"
        assert up.connections == 0
        assert recorded(rt) == {("bad_request", str(status), error_type): 1}


@pytest.mark.parametrize("version", [b"1.0", b"1.1"])
async def test_http_1_0_and_1_1_are_served(tmp_path, plane, version):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        got = await forwarded(rt, b"GET /api/x HTTP/%s\r\nHost: h\r\nConnection: close\r\n\r\n" % version)
        assert got["line"] == "GET /api/x HTTP/1.1"


METHODS = [
    pytest.param(b"FOO", 501, "unsupported_method", id="unknown-token"),
    pytest.param(b"get", 501, "unsupported_method", id="lower-case-token"),  # methods are case-sensitive
    pytest.param(b"M-SEARCHX", 501, "unsupported_method", id="token-past-a-known-prefix"),
    pytest.param(b"DESCRIBE", 501, "unsupported_method", id="rtsp-method"),
    pytest.param(b"G@T", 400, "invalid_method", id="at-sign"),
    pytest.param(b"GE(T", 400, "invalid_method", id="paren"),
    pytest.param(b"G\x7fT", 400, "invalid_method", id="del"),
    pytest.param(b"GET\x00", 400, "invalid_method", id="nul"),
]


@pytest.mark.parametrize(("method", "status", "error_type"), METHODS)
async def test_a_method_that_is_not_a_token_is_400_an_unknown_token_501(tmp_path, plane, method, status,
                                                                          error_type):
    """RFC 9110 §9.1: a method is a token (§5.6.2); one the server does not implement is 501. llhttp parses only
    the registered methods, so every other token is answered 501 (not forwarded)."""
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        got, _ = await refused(rt, up, method + b" /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
        assert (got, up.connections) == (status, 0)
        assert recorded(rt) == {("bad_request", str(status), error_type): 1}


async def test_a_refused_method_pipelined_behind_a_valid_request_is_classified_too(tmp_path, plane):
    if plane == "aiohttp":
        pytest.skip("aiohttp parses a whole packet before it serves any of it: the error is all it answers")
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\nFOO /api/b HTTP/1.1\r\nHost: h\r\n\r\n")
            first = await read_response(reader)
            rest = await read_all(reader)
        assert first.status == 200 and rest.startswith(b"HTTP/1.")
        assert rest.split(b" ", 2)[1] == b"501"
        assert recorded(rt)[("bad_request", "501", "unsupported_method")] == 1


@pytest.mark.parametrize("method", [b"PROPFIND", b"PATCH", b"QUERY", b"M-SEARCH"])
async def test_registered_methods_are_forwarded_as_they_are(tmp_path, plane, method):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        got = await forwarded(rt, method + b" /api/x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert got["line"] == (method + b" /api/x HTTP/1.1").decode()


# --- 2. the request target -----------------------------------------------------------------------------------------

TARGETS = [
    # percent-encoded slash and backslash, in or next to dot segments: refused (escaped_slashes: reject)
    pytest.param(b"/api/x/..%2f..%2fadmin", "path_escaped_slash", id="dotdot-pct2f"),
    pytest.param(b"/api/%2e%2e%5cadmin", "path_escaped_slash", id="pct2e2e-pct5c"),
    pytest.param(b"/api/a%2Fb", "path_escaped_slash", id="pct2F"),
    pytest.param(b"/api/a%5cb", "path_escaped_slash", id="pct5c"),
    pytest.param(b"http://h/api/a%2fb", "path_escaped_slash", id="absolute-form-pct2f"),
    pytest.param(b"/api\\..\\admin", "path_invalid_char", id="raw-backslash"),
    pytest.param(b'/api/a"b', "path_invalid_char", id="raw-quote"),
    pytest.param(b"/api/a{b}", "path_invalid_char", id="raw-braces"),
    pytest.param(b"/api/a[0]", "path_invalid_char", id="raw-brackets"),
    # control characters, percent-encoded (raw ones never pass the parser: invalid_target)
    pytest.param(b"/api/a%00b", "path_control_char", id="pct00"),
    pytest.param(b"/api/a%0d%0aX-Injected:%201", "path_control_char", id="pct0d0a"),
    pytest.param(b"/api/a%7f", "path_control_char", id="pct7f"),
    pytest.param(b"/api/a\x00b", "invalid_target", id="raw-nul"),
    pytest.param(b"/api/a\x01b", "invalid_target", id="raw-soh"),
    pytest.param(b"/api/a\x7fb", "invalid_target", id="raw-del"),
    # double encoding, overlong and invalid UTF-8
    pytest.param(b"/api/%252e%252e/admin", "path_double_encoding", id="pct252e"),
    pytest.param(b"/api/%c0%ae%c0%ae/admin", "path_invalid_utf8", id="overlong-dot"),
    pytest.param(b"/api/%ff%fe", "path_invalid_utf8", id="invalid-utf8"),
    # path parameters (path_parameters: reject)
    pytest.param(b"/api/..;/admin", "path_parameter", id="dotdot-param"),
    pytest.param(b"/api;jsessionid=1/x", "path_parameter", id="param"),
    # fragments, asterisk-form, authority-form
    pytest.param(b"/api/x#/../../admin", "fragment_in_target", id="fragment"),
    pytest.param(b"/api/x?q=1#f", "fragment_in_target", id="fragment-after-query"),
    pytest.param(b"*", "invalid_target", id="asterisk-form"),
    pytest.param(b"example.com:443", "invalid_target", id="authority-form"),
]
METHOD_FOR = {b"*": b"OPTIONS", b"example.com:443": b"CONNECT"}


@pytest.mark.parametrize(("target", "error_type"), TARGETS)
async def test_request_targets_the_upstream_could_read_differently_are_400(tmp_path, plane, target, error_type):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        method = METHOD_FOR.get(target, b"GET")
        got, data = await refused(rt, up, method + b" " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert (got, up.connections) == (400, 0), data
        assert recorded(rt) == {("bad_request", "400", error_type): 1}


NORMALISED = [
    pytest.param(b"/api/%2e%2e/api/x", b"/api/x", id="encoded-dot-segment"),
    pytest.param(b"/api/./x/../y", b"/api/y", id="dot-segments"),
    pytest.param(b"//api//x", b"/api/x", id="merged-slashes"),
    pytest.param(b"/api/%7euser/%41", b"/api/~user/A", id="unreserved-decoded"),
    pytest.param(b"/api/caf%c3%a9?q=%2f%00", b"/api/caf%C3%A9?q=%2f%00", id="hex-upper-query-untouched"),
    pytest.param(b"/api/a%3bb", b"/api/a%3Bb", id="encoded-semicolon-is-data"),
    pytest.param(b"http://h/api//a/../b?x", b"/api/b?x", id="absolute-form"),
]


@pytest.mark.parametrize(("target", "upstream"), NORMALISED)
async def test_the_normalised_target_is_what_routing_saw_and_the_upstream_gets(tmp_path, plane, target, upstream):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        got = await forwarded(rt, b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert got["line"] == f"GET {upstream.decode()} HTTP/1.1"


LISTENER_RULES = [
    pytest.param({"escaped_slashes": "unescape"}, b"/api/a%2Fb%5Cc", b"/api/a/b/c", id="unescape"),
    pytest.param({"escaped_slashes": "unescape"}, b"/api/x/y/..%2F..%2Fz", b"/api/z", id="unescape-then-dots"),
    pytest.param({"escaped_slashes": "keep"}, b"/api/a%2fb", b"/api/a%2Fb", id="keep"),
    pytest.param({"escaped_slashes": "keep"}, b"/api/..%2fadmin", 400, id="keep-next-to-dots"),
    pytest.param({"merge_slashes": False}, b"/api//x", b"/api//x", id="no-merge"),
    pytest.param({"path_parameters": "keep"}, b"/api/cars;color=red", b"/api/cars;color=red", id="params-kept"),
    pytest.param({"path_parameters": "keep"}, b"/api/x/..;/y", 400, id="params-kept-but-not-on-dots"),
]


@pytest.mark.parametrize(("rules", "target", "expected"), LISTENER_RULES)
async def test_path_rules_are_per_listener(tmp_path, plane, rules, target, expected):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane, **rules)) as rt:
        raw = b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        if expected == 400:
            assert (await refused(rt, up, raw))[0] == 400 and up.connections == 0
        else:
            assert (await forwarded(rt, raw))["line"] == f"GET {expected.decode()} HTTP/1.1"


@pytest.mark.parametrize("target", [b"//admin/keys", b"/public/..%2fadmin/keys", b"/public/%2e%2e%2fadmin/keys",
                                    b"/admin;x/keys", b"/public/..;/admin/keys", b"/public/%252e%252e/admin/keys"])
async def test_no_target_reaches_the_admin_upstream_through_the_public_route(tmp_path, plane, target):
    """The shapes that bypass a path rule when the router and the upstream disagree (a decoding, slash-merging or
    ';'-stripping upstream would serve /admin/keys from each): routed where the upstream will read them, or refused."""
    async with Upstream(keepalive_server(lambda *r: ok(b"public"))) as public, \
            Upstream(keepalive_server(lambda *r: ok(b"admin"))) as admin:
        c = config(tmp_path, public.port, plane)
        c["edge"]["routes"][0]["match"]["path"]["prefix"] = "/"
        c["balancer"]["pools"].append({"name": "admin", "instances": [
            {"id": "a0", "host": "127.0.0.1", "port": admin.port}]})
        c["edge"]["routes"].insert(0, {"name": "admin", "upstream": "admin", "match": {"path": {"prefix": "/admin"}}})
        async with gateway(c) as rt, client(rt) as (reader, writer):
            writer.write(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            resp = await read_response(reader)
        assert resp.body != b"public"  # the admin route's upstream (and its policies), or a 400
        assert resp.status in (200, 400)
        if resp.status == 200:
            assert admin.requests[0][0] == b"GET /admin/keys HTTP/1.1"


# --- 3. header names and values --------------------------------------------------------------------------------------

SPOOF = b"GET /api/x HTTP/1.1\r\nHost: h\r\nX_Forwarded_For: 6.6.6.6\r\nX-Real_IP: 6.6.6.6\r\nConnection: close\r\n\r\n"


@pytest.mark.parametrize("setting", [None, "drop"])
async def test_header_names_with_underscores_are_dropped_by_default(tmp_path, plane, setting):
    rules = {"headers_with_underscores": setting} if setting else {}
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane, **rules)) as rt:
        got = await forwarded(rt, SPOOF)
        names = [k.lower() for k, _ in got["headers"]]
        assert "x_forwarded_for" not in names and "x-real_ip" not in names
        assert dict((k.lower(), v) for k, v in got["headers"])["x-forwarded-for"] == "127.0.0.1"
        assert dropped(rt) == {"underscore_in_name": 1}


async def test_header_names_with_underscores_can_be_refused(tmp_path, plane):
    async with Upstream(keepalive_server(echo_target)) as up, \
            gateway(config(tmp_path, up.port, plane, headers_with_underscores="reject")) as rt:
        got, _ = await refused(rt, up, SPOOF)
        assert (got, up.connections) == (400, 0)
        assert recorded(rt) == {("bad_request", "400", "underscore_in_header_name"): 1}


async def test_header_names_with_underscores_can_be_allowed(tmp_path, plane):
    async with Upstream(keepalive_server(echo_target)) as up, \
            gateway(config(tmp_path, up.port, plane, headers_with_underscores="allow")) as rt:
        got = await forwarded(rt, SPOOF)
        assert ["X_Forwarded_For", "6.6.6.6"] in got["headers"]
        assert dropped(rt) == {}


async def test_obs_text_in_values_is_forwarded_as_opaque_bytes_both_ways(tmp_path, plane):
    """RFC 9110 §5.5: obs-text (0x80-0xFF) is opaque data. Here UTF-8 text, which both data planes relay byte for
    byte (the fast one relays any bytes: the next test)."""
    value = "café ☕".encode()

    async def handler(reader, writer, up):
        up.requests.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 200 OK\r\nX-Reply: " + value + b"\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()

    async with Upstream(handler) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Name: " + value + b"\r\nConnection: close\r\n\r\n")
            resp = await read_response(reader)
        assert b"\r\nX-Name: " + value + b"\r\n" in up.requests[0]
        assert b"\r\nX-Reply: " + value + b"\r\n" in resp.raw_head


# --- trace headers: cut to the W3C limits, never a 431 ------------------------------------------------------------

TRACEPARENT = b"traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n"


def members(n: int, size: int = 10) -> bytes:
    return b",".join(b"k%d=%s" % (i, b"v" * (size - len(b"k%d=" % i))) for i in range(n))


async def trace_request(tmp_path, plane, extra: bytes, **listener) -> tuple[object, Upstream, dict]:
    async with Upstream(keepalive_server(echo_target)) as up, \
            gateway(config(tmp_path, up.port, plane, incoming_trace_context="continue", **listener)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n" + TRACEPARENT + extra + b"Connection: close\r\n\r\n")
            resp = await read_response(reader)
        return resp, up, {"recorded": recorded(rt), "dropped": dropped(rt)}


def sent(up: Upstream, name: str) -> list[str]:
    return [v for k, v in up.requests[0][1] if k.lower() == name] if up.requests else []


async def test_baggage_at_the_w3c_limit_next_to_other_headers_near_max_header_size_is_served(tmp_path, plane):
    baggage = members(170, 47) + b"x" * 33  # 8192 bytes, 170 members
    assert len(baggage) == 8192
    filler = b"X-Filler: " + b"f" * 7000 + b"\r\n"  # with Host, the other headers are just under 8190 bytes
    resp, up, seen = await trace_request(tmp_path, plane, b"baggage: " + baggage + b"\r\n" + filler)
    assert resp.status == 200
    assert sent(up, "baggage") == [baggage.decode()]
    assert seen["dropped"] == {}


async def test_oversized_tracestate_is_cut_per_w3c_and_the_request_served(tmp_path, plane):
    big = b"big=" + b"x" * 600  # one entry over 128 characters: removed first (W3C Trace Context §3.3.1.5)
    resp, up, seen = await trace_request(tmp_path, plane, b"tracestate: " + big + b",ours=1\r\n")
    assert resp.status == 200
    assert sent(up, "tracestate") == ["ours=1"]
    assert seen["dropped"] == {"tracestate_truncated": 1}


@pytest.mark.parametrize(("baggage", "kept_members"), [
    (members(150, 100), 81),  # 15 149 bytes, over max_header_size too: whole members within 8192 bytes
    (members(200), 180),  # too many members
])
async def test_oversized_baggage_is_cut_to_whole_members_and_the_request_served(tmp_path, plane, baggage,
                                                                                 kept_members):
    resp, up, seen = await trace_request(tmp_path, plane, b"baggage: " + baggage + b"\r\n")
    assert resp.status == 200
    (forwarded_baggage,) = sent(up, "baggage")
    assert len(forwarded_baggage) <= 8192 and forwarded_baggage.split(",") == baggage.decode().split(",")[:kept_members]
    assert seen["dropped"] == {"baggage_truncated": 1}
    assert seen["recorded"] == {("proxied", "200", ""): 1}


async def test_baggage_split_over_lines_is_combined_then_cut(tmp_path, plane):
    lines = b"".join(b"baggage: " + members(60, 100) + b"\r\n" for _ in range(3))  # 18 000 bytes in three lines
    resp, up, seen = await trace_request(tmp_path, plane, lines)
    assert resp.status == 200
    (forwarded_baggage,) = sent(up, "baggage")
    assert len(forwarded_baggage) <= 8192 and forwarded_baggage.startswith(members(60, 100).decode())
    assert seen["dropped"] == {"baggage_truncated": 1}


async def test_oversized_trace_headers_of_a_linked_context_are_not_forwarded_and_not_a_431(tmp_path, plane):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        async with client(rt) as (reader, writer):  # the edge default: a new root linked to the client's context
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n" + TRACEPARENT + b"tracestate: " + b"a=" + b"b" * 9000
                         + b"\r\nbaggage: " + members(1000, 20) + b"\r\nConnection: close\r\n\r\n")
            resp = await read_response(reader)
        assert resp.status == 200
        assert sent(up, "baggage") == [] and sent(up, "tracestate") == []


async def test_trace_headers_past_their_own_memory_bound_are_431(tmp_path, plane):
    """Not a W3C limit: 32 KiB of trace-context headers, four times what the W3C limits let through, bounds the
    memory one head may take; past it the head is refused like any oversized one."""
    resp, up, seen = await trace_request(tmp_path, plane, b"".join(
        b"baggage: " + members(400, 20) + b"\r\n" for _ in range(5)))  # 5 x 8000 bytes
    assert resp.status == 431 and up.connections == 0
    assert seen["recorded"] == {("bad_request", "431", "header_too_large"): 1}


async def test_other_headers_over_max_header_size_are_still_431(tmp_path, plane):
    resp, up, seen = await trace_request(tmp_path, plane, b"X-Big: " + b"b" * 9000 + b"\r\n")
    assert resp.status == 431 and up.connections == 0


async def test_a_header_line_that_never_ends_is_refused_without_reading_it_all(tmp_path, plane):
    """The size limit holds while a line is still arriving (llhttp hands a header over only once its line ends).
    (The 431 itself is usually lost: the gateway closes a connection it stopped reading, and the kernel resets
    it. What is asserted is that it stopped and recorded why.)"""
    async with Upstream(keepalive_server(echo_target)) as up, gateway(config(tmp_path, up.port, plane)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-Endless: ")
            try:
                for _ in range(32):  # up to 2 MiB, never a CRLF
                    writer.write(b"e" * 65536)
                    await asyncio.wait_for(writer.drain(), 5)
            except (ConnectionError, asyncio.TimeoutError):
                pass  # the gateway closed while we were still sending
            assert await eventually(lambda: recorded(rt) == {("bad_request", "431", "header_too_large"): 1}, 5)
        assert up.connections == 0
