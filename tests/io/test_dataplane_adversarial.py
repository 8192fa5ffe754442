"""Adversarial tests of the raw HTTP/1.1 data plane (listener + forwarder), real sockets on loopback.

Clients are written byte by byte; upstreams are raw asyncio servers so each test controls the exact bytes on
both sides. Tests marked `xfail(strict=True)` document a bug: they assert the correct behaviour and fail today.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
import json
import re
import socket

import pytest

from gatewatch.io.fast_forwarder import UpstreamConnection
from tests.support.net import closed_port, edge_port
from tests.support.runtime import in_process_config, running

# --- helpers -------------------------------------------------------------------------------------------------


class Response:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes, raw_head: bytes):
        self.status = status
        self.headers = headers
        self.body = body
        self.raw_head = raw_head

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def json(self):
        return json.loads(self.body)


def parse_head(raw: bytes) -> tuple[int, list[tuple[str, str]]]:
    lines = raw.rstrip(b"\r\n").split(b"\r\n")
    status = int(lines[0].split(b" ")[1])
    headers = []
    for line in lines[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers.append((k, v.strip()))
    return status, headers


async def read_chunked(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    out = b""
    while True:
        size_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)) != b"\r\n":
                pass  # trailers
            return out
        out += await asyncio.wait_for(reader.readexactly(size), timeout)
        assert await asyncio.wait_for(reader.readexactly(2), timeout) == b"\r\n"


async def read_response(reader: asyncio.StreamReader, method: str = "GET", timeout: float = 5.0) -> Response:
    """One complete response per its own framing; raises IncompleteReadError if the connection ends early."""
    raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    status, headers = parse_head(raw)
    resp = Response(status, headers, b"", raw)
    if method == "HEAD" or status < 200 or status in (204, 304):
        return resp
    te = resp.header("transfer-encoding")
    cl = resp.header("content-length")
    if te is not None:
        assert te.lower() == "chunked", te
        resp.body = await read_chunked(reader, timeout)
    elif cl is not None:
        resp.body = await asyncio.wait_for(reader.readexactly(int(cl)), timeout)
    else:
        resp.body = await asyncio.wait_for(reader.read(-1), timeout)
    return resp


async def read_all(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    """Everything until the peer closes (a reset counts as a close)."""
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), timeout)
            if not chunk:
                return out
            out += chunk
    except ConnectionResetError:
        return out


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, list[tuple[str, str]], bytes]:
    """(request line, headers, de-chunked body) as an upstream server sees it."""
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.rstrip(b"\r\n").split(b"\r\n")
    headers = []
    for line in lines[1:]:
        k, _, v = line.decode("latin-1").partition(":")
        headers.append((k, v.strip()))
    low = {k.lower(): v for k, v in headers}
    if low.get("transfer-encoding", "").lower() == "chunked":
        body = await read_chunked(reader)
    else:
        body = await reader.readexactly(int(low.get("content-length", "0")))
    return lines[0], headers, body


class Upstream:
    """A raw TCP upstream: `handler(reader, writer, upstream)` per connection; counts connections."""

    def __init__(self, handler):
        self.handler = handler
        self.connections = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.requests: list[tuple[bytes, list[tuple[str, str]], bytes]] = []
        self.events: list = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0
        self._tasks: set[asyncio.Task] = set()

    async def _serve(self, reader, writer):
        self._tasks.add(asyncio.current_task())
        self.connections += 1
        self.concurrent += 1
        self.max_concurrent = max(self.max_concurrent, self.concurrent)
        try:
            await self.handler(reader, writer, self)
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a cancelled handler (test over) ends quietly instead of logging from asyncio's callback
        finally:
            self.concurrent -= 1
            self._tasks.discard(asyncio.current_task())
            writer.close()

    async def __aenter__(self) -> "Upstream":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=1024)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def keepalive_server(respond):
    """An upstream that reads whole requests and answers each with `respond(request_line, headers, body)`."""

    async def handler(reader, writer, up: Upstream):
        while True:
            try:
                req = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            up.requests.append(req)
            out = respond(*req)
            if asyncio.iscoroutine(out):
                out = await out
            writer.write(out)
            await writer.drain()

    return handler


def ok(body: bytes = b"ok", extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def echo_target(line, headers, body) -> bytes:
    return ok(json.dumps({"line": line.decode(), "n": len(body), "body": body.decode("latin-1"),
                          "headers": headers}).encode())


def cfg(tmp_path, port: int, **timeouts):
    c = in_process_config([port], tmp_path)
    c["edge"]["routes"][0]["timeouts"].update(timeouts)
    return c


def gateway(config):
    """A gateway on port 0 with the exporter off (records still feed the metrics asserted here); saves the
    exporter process start/stop of every test."""
    return running(config, env={"OTEL_SDK_DISABLED": "true"})


def endpoint_pools(rt):
    return list(rt.forwarder._pools.values())  # noqa: SLF001 -- the connection accounting under test


def open_upstream_connections(rt) -> int:
    return sum(p.open for p in endpoint_pools(rt))


async def eventually(predicate, timeout: float = 2.0) -> bool:
    for _ in range(int(timeout / 0.02)):
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


SERVER_COUNT = re.compile(r'^http_server_request_duration_seconds_count\{(.*)\} (\S+)$', re.M)


def server_outcomes(rt) -> collections.Counter:
    """(outcome, status) → number of request records, read from the metrics the records feed."""
    out: collections.Counter = collections.Counter()
    for labels, value in SERVER_COUNT.findall(rt.metrics.exposition(None)[0].decode()):
        d = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        out[(d["gatewatch_outcome"], d["http_response_status_code"])] += int(float(value))
    return out


@contextlib.asynccontextmanager
async def client(rt):
    reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
    try:
        yield reader, writer
    finally:
        writer.transport.abort()


# --- request framing and smuggling shapes (client side) ------------------------------------------------------

HEAD_ERRORS = [
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
                 id="te-chunked-not-last"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
                 b"0\r\n\r\n", id="te-two-lines-chunked-first"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"0\r\n\r\n", id="cl-then-te"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello",
                 id="duplicate-equal-cl"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello", id="cl-list"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: +5\r\n\r\nhello", id="cl-plus"),
    pytest.param(b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-A: a\r\n b\r\n\r\n", id="obs-fold"),
    pytest.param(b"GET /api/x HTTP/1.1\r\nHost : h\r\n\r\n", id="space-before-colon"),
    pytest.param(b"GET /api/x HTTP/1.1\nHost: h\n\n", id="bare-lf"),
    pytest.param(b"GET /api/x HTTP/1.1\r\nHost: h\r\nX-A: a\x00b\r\n\r\n", id="nul-in-value"),
]


@pytest.mark.parametrize("raw", HEAD_ERRORS)
async def test_bad_request_heads_are_400_and_never_reach_upstream(tmp_path, raw):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(raw + b"GET /api/after HTTP/1.1\r\nHost: h\r\n\r\n")
            resp = await read_response(reader)
            assert resp.status == 400
            assert resp.json()["error"]["outcome"] == "bad_request"
            assert resp.header("connection") == "close"
            assert await read_all(reader) == b""  # closed: nothing after the error is ever parsed
        assert up.connections == 0
        assert server_outcomes(rt) == {("bad_request", "400"): 1}


CHUNKED = b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
BODY_ERRORS = [
    pytest.param(b"zz\r\nhello\r\n0\r\n\r\n", id="chunk-size-not-hex"),
    pytest.param(b"5 ;a=b\r\nhello\r\n0\r\n\r\n", id="space-before-chunk-ext"),
    pytest.param(b"5\r\nhelloXX0\r\n\r\n", id="chunk-data-overrun"),
    pytest.param(b"5\nhello\n0\n\n", id="chunk-bare-lf"),
    pytest.param(b"fffffffffffffffff\r\n", id="chunk-size-overflow"),
    pytest.param(b"-1\r\n", id="chunk-size-negative"),
]
# Errors llhttp reports at or after on_headers_complete (the exchange already exists when they are raised).
LATE_ERRORS = [pytest.param(CHUNKED + p.values[0], id=p.id) for p in BODY_ERRORS] + [
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n", id="te-xchunked"),
    pytest.param(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\nabc", id="te-identity"),
]


def _expected_status(raw: bytes) -> str:
    """RFC 9112 §6.1: a transfer coding the server does not understand is answered 501; other framing errors 400."""
    te = [line for line in raw.split(b"\r\n\r\n")[0].split(b"\r\n") if line.lower().startswith(b"transfer-encoding:")]
    return "501" if te and te[0].split(b":", 1)[1].strip().lower() != b"chunked" else "400"


@pytest.mark.parametrize("raw", LATE_ERRORS)
async def test_late_framing_errors_never_reach_upstream(tmp_path, raw):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(raw + b"GET /api/after HTTP/1.1\r\nHost: h\r\n\r\n")
            data = await read_all(reader)
            assert b"200 OK" not in data
        await asyncio.sleep(0.1)
        assert up.connections == 0
        assert server_outcomes(rt) == {("bad_request", _expected_status(raw)): 1}


@pytest.mark.parametrize("raw", LATE_ERRORS)
async def test_late_framing_errors_are_answered_400(tmp_path, raw):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(raw)
            data = await read_all(reader)
        assert data.startswith(b"HTTP/1.1 %s " % _expected_status(raw).encode()), data


@pytest.mark.parametrize("body", BODY_ERRORS[:3])
async def test_invalid_chunk_mid_upload_never_gives_upstream_a_complete_body(tmp_path, body):
    """Head and first chunk accepted and forwarded; then the framing breaks. The upstream must see a
    truncated chunked body (no terminating 0-chunk) followed by the connection ending."""
    seen = {}

    async def handler(reader, writer, up):
        seen["head"] = await reader.readuntil(b"\r\n\r\n")
        seen["rest"] = await read_all(reader, timeout=3)

    async with Upstream(handler) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(CHUNKED + b"3\r\nabc\r\n")
            await asyncio.sleep(0.2)
            writer.write(body)
            await read_all(reader)
        assert await eventually(lambda: "rest" in seen)
        assert b"transfer-encoding: chunked" in seen["head"].lower()
        assert seen["rest"].startswith(b"3\r\nabc\r\n")
        assert b"0\r\n\r\n" not in seen["rest"]
        assert await eventually(lambda: open_upstream_connections(rt) == 0)
        assert rt.pools["pool"].in_flight == {"i0": 0}


async def test_chunk_extensions_and_trailers_are_accepted_and_dropped(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"5;name=\"va;l\"\r\nhello\r\n1;x\r\n!\r\n0\r\nX-Checksum: abc\r\nX-Other: 1\r\n\r\n"
                         b"GET /api/next HTTP/1.1\r\nHost: h\r\n\r\n")
            first = await read_response(reader)
            second = await read_response(reader)
        assert first.status == 200 and first.json()["body"] == "hello!"
        names = {k.lower() for k, _ in first.json()["headers"]}
        assert "x-checksum" not in names and "trailer" not in names
        assert second.json()["line"] == "GET /api/next HTTP/1.1"
        assert len(up.requests) == 2


async def test_trailer_fields_do_not_become_request_headers(tmp_path):
    async with Upstream(keepalive_server(lambda *r: ok(b"public"))) as public, \
            Upstream(keepalive_server(lambda *r: ok(b"internal"))) as internal:
        c = cfg(tmp_path, public.port)
        c["balancer"]["pools"].append({"name": "internal", "instances": [
            {"id": "in0", "host": "127.0.0.1", "port": internal.port}]})
        c["edge"]["routes"].insert(0, {"name": "internal", "upstream": "internal", "match": {
            "path": {"prefix": "/api"}, "headers": [{"name": "x-internal", "present": True}]}})
        async with gateway(c) as rt, client(rt) as (reader, writer):
            writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         b"0\r\nX-Internal: 1\r\nX-Request-Id: from-trailer\r\n\r\n")
            resp = await read_response(reader)
        assert resp.body == b"public"
        assert resp.header("x-request-id") != "from-trailer"
        assert internal.requests == []


async def test_request_transfer_coding_other_than_chunked_is_not_silently_dropped(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                         b"3\r\nGZ!\r\n0\r\n\r\n")
            resp = await read_response(reader)
        if resp.status == 200:  # forwarded: the upstream must then have been told about the gzip coding
            te = [v.lower() for k, v in up.requests[0][1] if k.lower() == "transfer-encoding"]
            assert te and "gzip" in te[0]
        else:
            assert resp.status == 501 and up.requests == []


@pytest.mark.parametrize("hosts", [b"Host: public.example\r\nHost: admin.example\r\n", b""],
                         ids=["duplicate-host", "missing-host"])
async def test_host_field_count_must_be_exactly_one(tmp_path, hosts):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\n" + hosts + b"\r\n")
            resp = await read_response(reader)
        assert resp.status == 400
        assert up.requests == []


# --- pipelining and early answers ----------------------------------------------------------------------------

async def test_pipelined_early_404_with_buffered_body_then_next_request(tmp_path):
    smuggled = b"GET /api/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"POST /nothing HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(smuggled)
                         + smuggled + b"POST /api/real HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc"
                         + b"GET /api/last HTTP/1.1\r\nHost: h\r\n\r\n")
            r1, r2, r3 = [await read_response(reader) for _ in range(3)]
        assert (r1.status, r2.status, r3.status) == (404, 200, 200)
        assert r2.json()["line"] == "POST /api/real HTTP/1.1" and r2.json()["body"] == "abc"
        assert r3.json()["line"] == "GET /api/last HTTP/1.1"
        assert [line for line, _, _ in up.requests] == [b"POST /api/real HTTP/1.1", b"GET /api/last HTTP/1.1"]


async def test_early_404_body_arriving_later_is_drained_not_parsed(tmp_path):
    smuggled = b"GET /api/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"POST /nothing HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % len(smuggled))
            r1 = await read_response(reader)
            assert r1.status == 404 and r1.header("connection") is None  # small rest: the connection is kept
            writer.write(smuggled)
            await asyncio.sleep(0.05)
            writer.write(b"GET /api/real HTTP/1.1\r\nHost: h\r\n\r\n")
            r2 = await read_response(reader)
        assert r2.status == 200 and r2.json()["line"] == "GET /api/real HTTP/1.1"
        assert [line for line, _, _ in up.requests] == [b"GET /api/real HTTP/1.1"]


async def test_early_404_with_large_unread_body_closes_connection(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            n = 1 << 20
            writer.write(b"POST /nothing HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % n)
            r1 = await read_response(reader)
            assert r1.status == 404
            embedded = b"GET /api/smuggled HTTP/1.1\r\nHost: h\r\n\r\n"
            with contextlib.suppress(ConnectionError):
                writer.write((embedded * (n // len(embedded) + 1))[:n])
                writer.write(b"GET /api/after HTTP/1.1\r\nHost: h\r\n\r\n")
                await writer.drain()
            assert await read_all(reader) == b""  # closed without any further response
        assert up.requests == []


@pytest.mark.parametrize("first", [b"GET /api/one HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
                                   b"GET /api/one HTTP/1.0\r\nHost: h\r\n\r\n"], ids=["close", "http10"])
async def test_bytes_after_connection_close_request_do_not_kill_its_response(tmp_path, first):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(first + b"GET /api/two HTTP/1.1\r\nHost: h\r\n\r\n")
            resp = await read_response(reader)
        assert resp.status == 200 and resp.json()["line"].startswith("GET /api/one")


async def test_malformed_pipelined_request_does_not_drop_the_valid_one_before_it(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/one HTTP/1.1\r\nHost: h\r\n\r\nGET /api/two HTTP/1.1\r\nHost : bad\r\n\r\n")
            resp = await read_response(reader)
        assert resp.status == 200 and resp.json()["line"] == "GET /api/one HTTP/1.1"


async def test_malformed_pipelined_request_does_not_truncate_an_inflight_response(tmp_path):
    async def slow_body(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(b"56789")
        await writer.drain()
        await read_all(reader)

    async with Upstream(slow_body) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/one HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert head.startswith(b"HTTP/1.1 200")
            writer.write(b"G@T /bad HTTP/1.1\r\n\r\n")
            body = await read_all(reader)
        assert body.startswith(b"0123456789")


async def test_upstream_answers_before_reading_body_connection_not_reused(tmp_path):
    async def early(reader, writer, up):
        line = await reader.readuntil(b"\r\n\r\n")
        up.events.append(line.split(b"\r\n")[0])
        if b"/api/upload" in line:
            writer.write(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 4\r\n\r\nbig!")
            await writer.drain()
            up.events.append(await read_all(reader, timeout=3))  # what the proxy sends after our answer
            return
        writer.write(ok())
        await writer.drain()

    async with Upstream(early) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"POST /api/upload HTTP/1.1\r\nHost: h\r\nContent-Length: 2000000\r\n\r\n")
            writer.write(b"x" * 10000)
            resp = await read_response(reader)
            assert resp.status == 413 and resp.body == b"big!"
            with contextlib.suppress(ConnectionError):
                writer.write(b"x" * 500_000)
                await writer.drain()
            assert await read_all(reader) == b""  # body not read to the end: client connection closed
        assert await eventually(lambda: open_upstream_connections(rt) == 0)
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/next HTTP/1.1\r\nHost: h\r\n\r\n")
            assert (await read_response(reader)).status == 200
        assert up.connections == 2  # the half-uploaded connection was not reused
        assert len(up.events[1]) < 2_000_000  # the upstream never got a complete-looking body
        assert rt.pools["pool"].in_flight == {"i0": 0}


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_client_abort_mid_upload_aborts_upstream(tmp_path, framing):
    got = {}

    async def sink(reader, writer, up):
        got["head"] = await reader.readuntil(b"\r\n\r\n")
        got["body"] = await read_all(reader, timeout=3)

    async with Upstream(sink) as up, gateway(cfg(tmp_path, up.port)) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
        if framing == "content-length":
            writer.write(b"POST /api/up HTTP/1.1\r\nHost: h\r\nContent-Length: 100000\r\n\r\n" + b"a" * 50000)
        else:
            writer.write(b"POST /api/up HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"c350\r\n" + b"a" * 50000 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.transport.abort()
        assert await eventually(lambda: "body" in got, 4)
        if framing == "content-length":
            assert len(got["body"]) == 50000
        else:
            # re-chunked by the proxy (chunk sizes are its own), but never terminated: no "0" last-chunk
            assert got["body"].count(b"a") == 50000 and not got["body"].endswith(b"0\r\n\r\n")
        assert await eventually(lambda: open_upstream_connections(rt) == 0)
        assert await eventually(lambda: server_outcomes(rt) == {("client_abort", ""): 1})
        assert rt.pools["pool"].in_flight == {"i0": 0}


async def test_client_abort_mid_download_releases_upstream(tmp_path):
    async def streamer(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(200):
            writer.write(b"400\r\n" + b"d" * 1024 + b"\r\n")
            await writer.drain()
            await asyncio.sleep(0.01)
        up.events.append("finished")  # must not happen: the proxy should hang up first

    async with Upstream(streamer) as up, gateway(cfg(tmp_path, up.port)) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
        writer.write(b"GET /api/stream HTTP/1.1\r\nHost: h\r\n\r\n")
        await reader.readuntil(b"\r\n\r\n")
        writer.transport.abort()
        assert await eventually(lambda: open_upstream_connections(rt) == 0)
        assert await eventually(lambda: up.concurrent == 0)
        assert "finished" not in up.events
        assert server_outcomes(rt) == {("client_abort", "200"): 1}


# --- upstream response shapes --------------------------------------------------------------------------------

async def test_interim_100_and_103_are_skipped_and_connection_reused(tmp_path):
    def respond(line, headers, body):
        return (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
                + ok(b"final:" + body))

    async with Upstream(keepalive_server(respond)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for i in range(2):
                writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\n%d" % i)
                resp = await read_response(reader)
                assert resp.status == 200 and resp.body == b"final:%d" % i
                assert resp.header("link") is None  # the 103's fields do not leak into the final response
        assert up.connections == 1


async def test_upstream_101_without_upgrade_request_is_502(tmp_path):
    async def switcher(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: evil\r\nConnection: upgrade\r\n\r\nRAW")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with Upstream(switcher) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            resp = await read_response(reader)
        assert resp.status == 502


@pytest.mark.parametrize("raw", [
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
                 id="cl-and-te"),
    pytest.param(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc", id="two-cl"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", id="obs-fold"),
    pytest.param(b"HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nok", id="space-before-colon"),
    pytest.param(b"HTTP/1.1 2000 OK\r\nContent-Length: 2\r\n\r\nok", id="bad-status"),
])
async def test_upstream_framing_violations_are_502_and_not_reused(tmp_path, raw):
    async def bad_then_good(reader, writer, up):
        await read_request(reader)
        writer.write(raw if up.connections == 1 else ok())
        await writer.drain()
        await read_all(reader, timeout=3)

    async with Upstream(bad_then_good) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            resp = await read_response(reader)
            assert resp.status == 502 and resp.json()["error"]["outcome"] == "upstream_error"
            writer.write(b"GET /api/y HTTP/1.1\r\nHost: h\r\n\r\n")
            assert (await read_response(reader)).body == b"ok"
        assert up.connections == 2
        assert server_outcomes(rt) == {("upstream_error", "502"): 1, ("proxied", "200"): 1}


async def test_upstream_invalid_chunk_after_head_never_looks_complete(tmp_path):
    async def bad_chunk(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.write(b"zz\r\nmore\r\n0\r\n\r\n")
        await writer.drain()
        await read_all(reader, timeout=3)

    async with Upstream(bad_chunk) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            with pytest.raises(asyncio.IncompleteReadError):
                await read_response(reader)
        assert await eventually(lambda: open_upstream_connections(rt) == 0)
        assert server_outcomes(rt) == {("upstream_error", "200"): 1}


@pytest.mark.parametrize("status", [204, 304])
async def test_body_after_204_304_is_not_relayed_and_connection_dropped(tmp_path, status):
    async def liar(reader, writer, up):
        while True:
            await read_request(reader)
            if up.connections == 1:
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 12\r\n\r\n" % status
                             + b"HTTP/1.1 200")  # a body that would start a forged next response
            else:
                writer.write(ok(b"fresh"))
            await writer.drain()

    async with Upstream(liar) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/a HTTP/1.1\r\nHost: h\r\n\r\n")
            r1 = await read_response(reader)
            assert r1.status == status and r1.header("content-length") is None
            writer.write(b"GET /api/b HTTP/1.1\r\nHost: h\r\n\r\n")
            r2 = await read_response(reader)
        assert r2.status == 200 and r2.body == b"fresh"
        assert up.connections == 2


async def test_upstream_close_delimited_transfer_coding_response(tmp_path):
    async def gz(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nGZIPDATA")
        await writer.drain()

    async with Upstream(gz) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            resp = await read_response(reader)
        assert resp.status == 200 and resp.body == b"GZIPDATA"


async def test_upstream_transfer_coding_split_over_lines_is_framed_by_the_last(tmp_path):
    """RFC 9110 §5.3 / RFC 9112 §6.1: two Transfer-Encoding lines are one list, whose last coding frames the body.
    `gzip` then `chunked`: a chunked body, and the connection is reused. `chunked` then `gzip`: close-delimited,
    and the connection is not."""
    served = []

    async def split(reader, writer, up):
        while True:
            await read_request(reader)
            served.append(up.connections)
            if len(served) == 1:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
                             b"4\r\nGZIP\r\n0\r\n\r\n")
            elif len(served) == 2:
                writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
                             b"TAIL")
                await writer.drain()
                writer.close()
                return
            else:
                writer.write(ok(b"fresh"))
            await writer.drain()

    async with Upstream(split) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            answers = []
            for path in (b"/api/a", b"/api/b", b"/api/c"):
                writer.write(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
                answers.append(await read_response(reader))
        assert [(r.status, r.body) for r in answers] == [(200, b"GZIP"), (200, b"TAIL"), (200, b"fresh")]
        assert served == [1, 1, 2]  # the chunked answer's connection was reused; the close-delimited one's was not


async def test_close_delimited_response_is_relayed_complete_and_not_reused(tmp_path):
    async def legacy(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Kind: eof\r\n\r\n" + b"z" * 300_000)
        await writer.drain()

    async with Upstream(legacy) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for i in range(2):
                writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
                resp = await read_response(reader)
                assert resp.header("transfer-encoding") == "chunked" and resp.body == b"z" * 300_000
        assert up.connections == 2
        assert await eventually(lambda: open_upstream_connections(rt) == 0)


@pytest.mark.parametrize("close_header", [b"Connection: close\r\n", b""], ids=["connection-close", "http10"])
async def test_upstream_connection_close_is_not_reused(tmp_path, close_header):
    version = b"HTTP/1.1" if close_header else b"HTTP/1.0"

    async def closer(reader, writer, up):
        await read_request(reader)
        writer.write(version + b" 200 OK\r\n%sContent-Length: 2\r\n\r\nok" % close_header)
        await writer.drain()
        await asyncio.sleep(1.0)  # keep the socket open: the proxy must not trust it anyway

    async with Upstream(closer) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for _ in range(3):
                writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
                resp = await read_response(reader)
                assert resp.body == b"ok" and resp.header("connection") is None
        assert up.connections == 3
        assert await eventually(lambda: open_upstream_connections(rt) == 0)


async def test_upstream_closing_idle_pooled_connection_gets_fresh_connection(tmp_path):
    async def one_shot(reader, writer, up):
        await read_request(reader)
        writer.write(ok(b"n%d" % up.connections))  # keep-alive response, then hang up while idle
        await writer.drain()
        await asyncio.sleep(0.05)

    async with Upstream(one_shot) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for i in range(1, 4):
                writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
                assert (await read_response(reader)).body == b"n%d" % i
                await asyncio.sleep(0.15)
        assert await eventually(lambda: open_upstream_connections(rt) == 0)
        assert endpoint_pools(rt)[0].idle == collections.deque()


async def test_oversize_upstream_response_head_is_502(tmp_path):
    async def huge(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 1000) for i in range(2048))
                     + b"Content-Length: 2\r\n\r\nok")
        await writer.drain()
        await read_all(reader, timeout=3)

    async with Upstream(huge) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            status_line = await asyncio.wait_for(reader.readuntil(b"\r\n"), 5)
        assert status_line.startswith(b"HTTP/1.1 502 ")


async def test_second_response_in_same_read_is_not_appended_to_the_first(tmp_path):
    def two_responses(line, headers, body):
        if b"/first" in line:
            return (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n"
                    b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nforged")
        return ok(b"fresh")

    async with Upstream(keepalive_server(two_responses)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/first HTTP/1.1\r\nHost: h\r\n\r\n")
            first = await read_response(reader)
            writer.write(b"GET /api/second HTTP/1.1\r\nHost: h\r\n\r\n")
            second = await read_response(reader)
        assert first.body == b"ok"
        assert second.body == b"fresh"
        assert up.connections == 2  # the connection that sent an unsolicited response is not reused


# --- HEAD, HTTP/1.0 ------------------------------------------------------------------------------------------

async def test_head_through_proxy_pipelined_with_chunked_upstream(tmp_path):
    def respond(line, headers, body):
        if line.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-M: head\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n"

    async with Upstream(keepalive_server(respond)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"HEAD /api/h HTTP/1.1\r\nHost: h\r\n\r\nGET /api/g HTTP/1.1\r\nHost: h\r\n\r\n"
                         b"HEAD /api/h HTTP/1.1\r\nHost: h\r\n\r\n")
            r1 = await read_response(reader, "HEAD")
            r2 = await read_response(reader)
            r3 = await read_response(reader, "HEAD")
            writer.write(b"GET /api/g HTTP/1.1\r\nHost: h\r\n\r\n")
            r4 = await read_response(reader)
        assert r1.header("x-m") == "head" and r3.header("x-m") == "head"
        assert r2.body == b"body" and r4.body == b"body"
        assert [line.split(b" ")[0] for line, _, _ in up.requests] == [b"HEAD", b"GET", b"HEAD", b"GET"]
        assert await eventually(lambda: open_upstream_connections(rt) == len(endpoint_pools(rt)[0].idle))


async def test_http10_keep_alive_client(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for i in range(3):
                writer.write(b"GET /api/%d HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n" % i)
                resp = await read_response(reader)
                assert resp.raw_head.startswith(b"HTTP/1.1 200")
                assert resp.header("connection") == "keep-alive" and resp.header("content-length")
                assert resp.json()["line"] == "GET /api/%d HTTP/1.1" % i  # upstream always speaks 1.1
        assert up.connections == 1


async def test_http10_client_with_chunked_upstream_gets_close_delimited_body(tmp_path):
    def respond(line, headers, body):
        return b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n"

    async with Upstream(keepalive_server(respond)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.0\r\nHost: h\r\nConnection: keep-alive\r\n\r\n")
            data = await read_all(reader)
        head, _, body = data.partition(b"\r\n\r\n")
        assert b"chunked" not in head.lower() and b"Connection: close" in head
        assert body == b"abcdef"


async def test_http10_client_upload_with_content_length(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"POST /api/x HTTP/1.0\r\nHost: h\r\nContent-Length: 4\r\n\r\ndata")
            resp = await read_response(reader)
            assert resp.header("connection") == "close"
            assert await read_all(reader) == b""
        assert resp.json()["body"] == "data"


# --- backpressure, concurrency, pool accounting --------------------------------------------------------------

async def test_fast_upload_to_slow_upstream_is_bounded(tmp_path):
    total = 32 << 20
    state = {"received": 0, "reading": asyncio.Event()}

    async def slow_reader(reader, writer, up):
        await reader.readuntil(b"\r\n\r\n")
        await state["reading"].wait()
        while state["received"] < total:
            chunk = await reader.read(1 << 20)
            if not chunk:
                return
            state["received"] += len(chunk)
        writer.write(ok(b"%d" % state["received"]))
        await writer.drain()

    async with Upstream(slow_reader) as up, gateway(cfg(tmp_path, up.port, response_s=10)) as rt:
        sock = socket.create_connection(("127.0.0.1", edge_port(rt)))
        sock.setblocking(False)
        sock.sendall(b"POST /api/up HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % total)
        sent, block = 0, b"u" * (1 << 16)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        while loop.time() < deadline and sent < total:
            try:
                sent += sock.send(block[: total - sent])
            except BlockingIOError:
                await asyncio.sleep(0.01)
        conn = next(iter(rt.listeners[0].connections))
        queued = sum(ex.body._buffered for ex in conn.queue)  # noqa: SLF001
        busy = [o for o in gc.get_objects() if isinstance(o, UpstreamConnection) and o.busy and not o.closed]
        assert len(busy) == 1
        up_buffer = busy[0].transport.get_write_buffer_size()
        assert sent < total, "the client could push the whole body into a non-reading upstream"
        assert queued + up_buffer < 1 << 20, f"proxy holds {queued + up_buffer} bytes of upload in memory"
        state["reading"].set()
        while sent < total:
            try:
                sent += sock.send(block[: total - sent])
            except BlockingIOError:
                await asyncio.sleep(0.001)
        reader, writer = await asyncio.open_connection(sock=sock)
        resp = await read_response(reader, timeout=10)
        writer.close()
        assert resp.status == 200 and resp.body == b"%d" % total


async def test_many_concurrent_keepalive_connections(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async def one(n: int) -> list[str]:
            async with client(rt) as (reader, writer):
                writer.write(b"".join(b"GET /api/c%d/r%d HTTP/1.1\r\nHost: h\r\n\r\n" % (n, i) for i in range(3)))
                return [(await read_response(reader)).json()["line"] for _ in range(3)]

        results = await asyncio.gather(*(one(n) for n in range(200)))
        assert results == [[f"GET /api/c{n}/r{i} HTTP/1.1" for i in range(3)] for n in range(200)]
        pool = endpoint_pools(rt)[0]
        assert pool.open == len(pool.idle) == up.concurrent <= 200
        assert rt.pools["pool"].in_flight == {"i0": 0}
        assert server_outcomes(rt) == {("proxied", "200"): 600}


async def test_connection_limit_per_instance_queues_then_times_out(tmp_path):
    async def slow(reader, writer, up):
        while True:
            line, _, _ = await read_request(reader)
            await asyncio.sleep(0.8 if b"/slow" in line else 0.05)
            writer.write(ok(line.split(b" ")[1]))
            await writer.drain()

    async with Upstream(slow) as up:
        c = cfg(tmp_path, up.port, connect_s=0.4)
        c["balancer"]["pools"][0]["max_connections_per_instance"] = 1
        async with gateway(c) as rt:
            async def get(path: bytes) -> Response:
                async with client(rt) as (reader, writer):
                    writer.write(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
                    return await read_response(reader)

            fast = await asyncio.gather(*(get(b"/api/f%d" % i) for i in range(4)))
            assert [r.body for r in fast] == [b"/api/f%d" % i for i in range(4)]
            assert up.max_concurrent == 1 and up.connections == 1
            slow_task = asyncio.create_task(get(b"/api/slow"))
            await asyncio.sleep(0.1)
            starved = await get(b"/api/starved")  # waits connect_s for the only connection, then 504
            assert starved.status == 504 and starved.json()["error"]["outcome"] == "upstream_timeout"
            assert (await slow_task).body == b"/api/slow"
            assert (await get(b"/api/after")).body == b"/api/after"
            assert endpoint_pools(rt)[0].open == 1 and up.connections == 1


async def test_failures_do_not_leak_connection_counts(tmp_path):
    async def mixed(reader, writer, up):
        line, _, _ = await read_request(reader)
        if b"/hang" in line:
            await asyncio.sleep(1.0)
        elif b"/reset" in line:
            writer.transport.abort()
        elif b"/short" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            await writer.drain()
            writer.transport.abort()
        else:
            writer.write(ok())
            await writer.drain()

    async with Upstream(mixed) as up:
        c = cfg(tmp_path, up.port, response_s=0.3)
        c["balancer"]["pools"][0]["max_connections_per_instance"] = 2
        c["balancer"]["pools"].append({"name": "dead", "instances": [
            {"id": "d0", "host": "127.0.0.1", "port": closed_port()}]})
        c["edge"]["routes"].insert(0, {"name": "dead", "upstream": "dead", "match": {"path": {"prefix": "/dead"}}})
        async with gateway(c) as rt:
            statuses = []
            for path in [b"/api/hang", b"/api/reset", b"/api/short", b"/dead/x"] * 3:
                async with client(rt) as (reader, writer):
                    writer.write(b"GET %s HTTP/1.1\r\nHost: h\r\n\r\n" % path)
                    try:
                        statuses.append((await read_response(reader)).status)
                    except asyncio.IncompleteReadError:
                        statuses.append("aborted")
            assert statuses == [504, 502, "aborted", 502] * 3
            assert await eventually(lambda: open_upstream_connections(rt) == 0)
            async with client(rt) as (reader, writer):  # the limit of 2 is still fully available
                writer.write(b"GET /api/ok HTTP/1.1\r\nHost: h\r\n\r\n")
                assert (await read_response(reader)).status == 200
            assert rt.pools["pool"].in_flight == {"i0": 0} and rt.pools["dead"].in_flight == {"d0": 0}


# --- Upgrade / CONNECT / request-target forms ----------------------------------------------------------------

@pytest.mark.parametrize("framing", [b"Content-Length: 5\r\n\r\nhello",
                                     b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"],
                         ids=["content-length", "chunked"])
async def test_upgrade_h2c_request_body_is_not_lost(tmp_path, framing):
    """httptools makes llhttp skip the body of any request with the upgrade flag; such a request must be
    refused rather than forwarded with an empty (chunked) or missing (Content-Length) body."""
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port, response_s=1)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\n"
                         b"Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n" + framing)
            resp = await read_response(reader)
        if resp.status == 200:
            assert resp.json()["body"] == "hello"
        else:  # refused (501) before anything was forwarded
            assert resp.status == 501 and up.requests == []


async def test_upgrade_h2c_without_body_is_served_as_http11_then_closed(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
                         b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\nPRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            resp = await read_response(reader)
            assert resp.status == 200 and resp.header("connection") == "close"
            assert await read_all(reader) == b""
        names = {k.lower() for k, _ in up.requests[0][1]}
        assert not names & {"upgrade", "http2-settings", "connection"}
        assert len(up.requests) == 1


@pytest.mark.parametrize("raw", [b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
                                 b"OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n"], ids=["connect", "asterisk"])
async def test_connect_and_asterisk_form_are_refused_locally(tmp_path, raw):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(raw)
            resp = await read_response(reader)
        assert resp.status == 400 and up.connections == 0


async def test_absolute_form_authority_wins_over_host(tmp_path):
    async with Upstream(keepalive_server(lambda *r: ok(b"public"))) as public, \
            Upstream(keepalive_server(lambda *r: ok(b"admin"))) as admin:
        c = cfg(tmp_path, public.port)
        c["balancer"]["pools"].append({"name": "admin", "instances": [
            {"id": "a0", "host": "127.0.0.1", "port": admin.port}]})
        c["edge"]["routes"].insert(0, {"name": "admin", "upstream": "admin", "match": {
            "path": {"prefix": "/api"}, "hosts": ["admin.example"]}})
        async with gateway(c) as rt, client(rt) as (reader, writer):
            writer.write(b"GET http://public.example/api/x HTTP/1.1\r\nHost: admin.example\r\n\r\n")
            resp = await read_response(reader)
        assert resp.body == b"public"


# --- more keep-alive and flow-control shapes -----------------------------------------------------------------

async def test_pipelined_large_upload_behind_slow_request(tmp_path):
    """The second request's body fills its queue (reading pauses) while the first is still served; it must
    resume once the second exchange runs, and the third request must follow."""
    async def respond(line, headers, body):
        if b"/slow" in line:
            await asyncio.sleep(0.3)
        return ok(json.dumps({"line": line.decode(), "n": len(body)}).encode())

    n = 3 << 20
    async with Upstream(keepalive_server(respond)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/slow HTTP/1.1\r\nHost: h\r\n\r\n"
                         b"PUT /api/big HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n" % n)
            writer.write(b"p" * n + b"GET /api/last HTTP/1.1\r\nHost: h\r\n\r\n")
            results = [(await read_response(reader)).json() for _ in range(3)]
            await writer.drain()
        assert [(r["line"], r["n"]) for r in results] == [
            ("GET /api/slow HTTP/1.1", 0), ("PUT /api/big HTTP/1.1", n), ("GET /api/last HTTP/1.1", 0)]


async def test_full_duplex_streaming_upload_and_response(tmp_path):
    """The upstream answers after the first chunk and echoes each chunk as it arrives: the proxy must relay the
    response while the upload is still going, then keep both connections."""
    async def echo_stream(reader, writer, up):
        while True:
            await reader.readuntil(b"\r\n\r\n")
            started = False
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                data = await reader.readexactly(size + 2)
                if not started:
                    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                    started = True
                writer.write(b"%x\r\n%s" % (size, data))
                await writer.drain()
                if size == 0:
                    break

    async with Upstream(echo_stream) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for round_ in range(2):
                writer.write(CHUNKED)
                for i in range(3):
                    piece = b"piece-%d-%d" % (round_, i)
                    writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                    if i == 0:
                        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                        assert head.startswith(b"HTTP/1.1 200")
                    assert await asyncio.wait_for(reader.readuntil(b"\r\n"), 5) == b"%x\r\n" % len(piece)
                    assert await asyncio.wait_for(reader.readexactly(len(piece) + 2), 5) == piece + b"\r\n"
                writer.write(b"0\r\n\r\n")
                assert await asyncio.wait_for(reader.readexactly(5), 5) == b"0\r\n\r\n"
        assert up.connections == 1


async def test_response_head_is_not_held_back_while_upstream_body_is_pending(tmp_path):
    async def sse(reader, writer, up):
        await read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        await writer.drain()
        await asyncio.sleep(0.8)
        writer.write(b"d\r\ndata: hello\n\n\r\n0\r\n\r\n")
        await writer.drain()

    async with Upstream(sse) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/events HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 0.5)
        assert head.startswith(b"HTTP/1.1 200")


async def test_idle_pooled_connections_expire_after_keepalive_idle(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up:
        c = cfg(tmp_path, up.port)
        c["balancer"]["pools"][0]["keepalive_idle_s"] = 0.2
        async with gateway(c) as rt:
            for pause in (0.0, 0.05, 0.4):
                await asyncio.sleep(pause)
                async with client(rt) as (reader, writer):
                    writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
                    assert (await read_response(reader)).status == 200
            assert up.connections == 2  # reused after 50 ms, replaced after 400 ms
            assert await eventually(lambda: up.concurrent == 1 and open_upstream_connections(rt) == 1)


async def test_pipelined_flood_without_reading_is_bounded(tmp_path):
    async with Upstream(keepalive_server(echo_target)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        sock = socket.create_connection(("127.0.0.1", edge_port(rt)))
        sock.setblocking(False)
        data = b"GET /nothing HTTP/1.1\r\nHost: h\r\n\r\n" * 100_000  # 404s, answered locally
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 1.0
        try:
            while sent < len(data) and loop.time() < deadline:
                try:
                    sent += sock.send(data[sent:sent + 65536])
                except BlockingIOError:
                    await asyncio.sleep(0.01)
            await asyncio.sleep(0.5)  # let the gateway accept and parse what the kernel buffered
            conn = next(iter(rt.listeners[0].connections))
            assert len(conn.queue) <= 1000, f"{len(conn.queue)} requests queued for a client that reads nothing"
        finally:
            sock.close()


async def test_connection_handed_to_a_cancelled_waiter_is_not_lost():
    from gatewatch.io.fast_forwarder import EndpointPool

    async with Upstream(keepalive_server(echo_target)) as up:
        pool = EndpointPool("127.0.0.1", up.port, max_connections=1, idle_s=15.0)
        held = await pool.acquire(1.0)
        waiter = asyncio.create_task(pool.acquire(5.0))
        await asyncio.sleep(0)  # the waiter is queued: the only connection is busy
        pool.release(held)  # handed to the waiter ...
        waiter.cancel()  # ... whose request is abandoned before it runs (client gone, deadline hit)
        with pytest.raises(asyncio.CancelledError):
            await waiter
        try:
            again = await pool.acquire(0.3)
            assert again is held
        finally:
            pool.close()
            held.abort()


async def test_stalled_client_upload_ends_after_idle_s_and_is_not_blamed_on_upstream(tmp_path):
    got = {}

    async def sink(reader, writer, up):
        await reader.readuntil(b"\r\n\r\n")
        got["body"] = await read_all(reader, timeout=5)
        got["ended"] = asyncio.get_running_loop().time()

    async with Upstream(sink) as up, gateway(cfg(tmp_path, up.port, response_s=1.6, idle_s=0.2)) as rt:
        async with client(rt) as (reader, writer):
            start = asyncio.get_running_loop().time()
            writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\r\n12345")
            assert await eventually(lambda: "ended" in got, 3)
        assert got["body"] == b"12345"
        assert got["ended"] - start < 1.0, "the upstream connection was held for the whole response_s"
        assert ("upstream_timeout", "504") not in server_outcomes(rt)
        assert ("client_timeout", "408") in server_outcomes(rt)


# --- whole-body hand-over and the per-connection serving task ---------------------------------------------------

async def test_responses_arriving_whole_or_in_pieces_are_relayed_byte_for_byte(tmp_path):
    """A body that came with its head is answered in one write; one that trickles in is streamed. Both must
    reach the client intact, with the declared length, on a connection that is then reused."""
    big = bytes(range(256)) * 4096  # 1 MiB: arrives over many reads even when written at once

    async def handler(reader, writer, up: Upstream):
        while True:
            try:
                line, _, _ = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            if b"/whole" in line:
                writer.write(ok(b"0123456789"))
            elif b"/split" in line:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n01234")
                await writer.drain()
                await asyncio.sleep(0.05)
                writer.write(b"56789")
            elif b"/big" in line:
                writer.write(ok(big))
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
            await writer.drain()

    async with Upstream(handler) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            for path, expected in (("whole", b"0123456789"), ("split", b"0123456789"), ("big", big),
                                   ("empty", b""), ("whole", b"0123456789")):
                writer.write(b"GET /api/%s HTTP/1.1\r\nHost: h\r\n\r\n" % path.encode())
                resp = await read_response(reader)
                assert (path, resp.status, resp.body) == (path, 200, expected)
                assert resp.header("content-length") == str(len(expected))
        assert up.connections == 1


async def test_head_response_with_declared_length_keeps_the_connection_usable(tmp_path):
    def respond(line, headers, body):
        if line.startswith(b"HEAD"):
            return b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n"  # the length a GET would have, no body
        return ok(b"hello")

    async with Upstream(keepalive_server(respond)) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"HEAD /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            head = await read_response(reader, method="HEAD")
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
            get = await read_response(reader)
        assert (head.status, head.header("content-length"), head.body) == (200, "5", b"")
        assert (get.status, get.body) == (200, b"hello")


async def test_no_task_per_request_one_serving_task_per_connection_and_none_left_after_close(tmp_path):
    async with Upstream(keepalive_server(lambda *_: ok())) as up, gateway(cfg(tmp_path, up.port)) as rt:
        async with client(rt) as (reader, writer):
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")  # connects upstream: a task waits for it
            await read_response(reader)
            await asyncio.sleep(0.05)
            baseline = len(asyncio.all_tasks())
            for _ in range(50):  # bodiless requests on warm connections: the synchronous path, no task at all
                writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")
                assert (await read_response(reader)).body == b"ok"
                assert len(asyncio.all_tasks()) == baseline
            conn = next(iter(rt.listeners[0].connections))  # noqa: SLF001 -- the task under test
            assert conn._serving is None and not conn.running
            for _ in range(5):  # requests with a body: the connection's serving task, reused between them
                writer.write(b"POST /api/x HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhi")
                assert (await read_response(reader)).body == b"ok"
                await asyncio.sleep(0.01)
                assert len(asyncio.all_tasks()) == baseline + 1
            assert conn._serving is not None and not conn.running
            serving = conn._serving
            writer.write(b"GET /api/x HTTP/1.1\r\nHost: h\r\n\r\n")  # and back to the synchronous path
            assert (await read_response(reader)).body == b"ok"
            assert len(asyncio.all_tasks()) == baseline + 1
        assert await eventually(lambda: serving.done())  # the client closed: its serving task ended
        assert await eventually(lambda: len(asyncio.all_tasks()) == baseline)
