"""What the raw data plane owns: pipelining, partial reads, limits, framing conflicts, keep-alive rules,
backpressure. Real sockets on loopback; the client side is written byte by byte where it matters."""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from aiohttp import web

from tests.support.net import edge_port, raw_request, start_app
from tests.support.runtime import in_process_config, running


async def counting_backend():
    state = {"connections": set(), "requests": 0}

    async def h(request):
        state["requests"] += 1
        state["connections"].add(request.transport.get_extra_info("peername"))
        if request.method in ("POST", "PUT"):
            data = await request.read()
            return web.json_response({"n": len(data), "path": request.raw_path})
        return web.json_response({"path": request.raw_path, "n": state["requests"]})

    runner, port = await start_app(h)
    return runner, port, state


async def read_responses(reader: asyncio.StreamReader, count: int) -> list[tuple[bytes, bytes]]:
    out = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        body = await asyncio.wait_for(reader.readexactly(length), 5)
        out.append((head, body))
    return out


async def test_pipelined_requests_answered_in_order(tmp_path):
    runner, port, _ = await counting_backend()
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
            writer.write(b"".join(b"GET /api/p%d HTTP/1.1\r\nHost: h\r\n\r\n" % i for i in range(5)))
            await writer.drain()
            responses = await read_responses(reader, 5)
            assert [json.loads(b)["path"] for _, b in responses] == [f"/api/p{i}" for i in range(5)]
            writer.close()
    finally:
        await runner.cleanup()


async def test_request_fed_one_byte_at_a_time(tmp_path):
    runner, port, _ = await counting_backend()
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
            raw = (b"POST /api/slowly HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                   b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n")
            for i in range(len(raw)):
                writer.write(raw[i:i + 1])
                await writer.drain()
                await asyncio.sleep(0)
            (head, body), = await read_responses(reader, 1)
            assert head.startswith(b"HTTP/1.1 200")
            assert json.loads(body) == {"n": 11, "path": "/api/slowly"}
            writer.close()
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("raw,status,reason", [
    (b"GET /api HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     400, None),
    (b"POST /api HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400, None),
    (b"GET /api HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
    (b"GET /api HTTP/1.1\r\n" + b"".join(b"X-%d: v\r\n" % i for i in range(150)) + b"\r\n", 431,
     "header_too_large"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, "uri_too_long"),
    (b"GET /api HTTP/1.1\r\nHost: h\r\nExpect: something-else\r\n\r\n", 417, "expectation_failed"),
    # a WebSocket upgrade without Sec-WebSocket-Key/Version (RFC 6455 §4.1; relayed when valid, issue 17)
    (b"GET /api HTTP/1.1\r\nHost: h\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n", 400,
     "websocket_invalid_handshake"),
    (b"G@T /api HTTP/1.1\r\nHost: h\r\n\r\n", 400, None),
    (b"GET /api HTTP/1.1\r\nHost: h\r\nBad Header: x\r\n\r\n", 400, None),
])
async def test_malformed_requests_are_answered_and_recorded(tmp_path, raw, status, reason):
    runner, port, state = await counting_backend()
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            resp = await raw_request(edge_port(rt), raw)
            assert resp.startswith(b"HTTP/1.1 %d" % status), resp[:200]
            body = json.loads(resp.partition(b"\r\n\r\n")[2])
            assert body["error"]["outcome"] == "bad_request"
            assert state["requests"] == 0  # nothing reached the upstream
            text = rt.metrics.exposition(None)[0].decode()
            assert (f'gatewatch_outcome="bad_request",gatewatch_route="",http_request_method="_OTHER",'
                    f'http_response_status_code="{status}"') in text
    finally:
        await runner.cleanup()


async def test_upstream_connections_are_reused_after_clean_exchanges(tmp_path):
    runner, port, state = await counting_backend()
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            for i in range(20):
                resp = await raw_request(edge_port(rt), b"GET /api/r%d HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n" % i)
                assert resp.startswith(b"HTTP/1.1 200")
            assert state["requests"] == 20
            assert len(state["connections"]) == 1  # one warm keep-alive connection served all of them
    finally:
        await runner.cleanup()


async def test_connection_not_reused_after_a_broken_exchange(tmp_path):
    calls = {"n": 0, "peers": []}

    async def h(reader, writer):
        calls["peers"].append(writer.get_extra_info("peername"))
        while True:
            try:
                await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            calls["n"] += 1
            if calls["n"] == 1:  # promise 10 bytes, send 3, then keep the connection open and silent
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
            else:
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    server = await asyncio.start_server(h, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = in_process_config([port], tmp_path)
    cfg["edge"]["routes"][0]["timeouts"]["idle_s"] = 0.3
    try:
        async with running(cfg) as rt:
            first = await raw_request(edge_port(rt), b"GET /api/1 HTTP/1.1\r\nHost: h\r\n\r\n", read_timeout=3)
            assert first.startswith(b"HTTP/1.1 200") and first.endswith(b"abc")  # then aborted: not 10 bytes
            second = await raw_request(edge_port(rt), b"GET /api/2 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
            assert second.endswith(b"ok")
            assert len(calls["peers"]) == 2  # the stalled connection was not reused
    finally:
        server.close()


async def test_http10_client_gets_close_delimited_or_sized_body(tmp_path):
    runner, port, _ = await counting_backend()
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            resp = await raw_request(edge_port(rt), b"GET /api/old HTTP/1.0\r\nHost: h\r\n\r\n")
            head, _, body = resp.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert b"chunked" not in head.lower()
            assert json.loads(body)["path"] == "/api/old"
    finally:
        await runner.cleanup()


async def test_head_request_has_no_body(tmp_path):
    async def h(request):
        return web.Response(body=b"x" * 1000)

    runner, port = await start_app(h)
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
            writer.write(b"HEAD /api/h HTTP/1.1\r\nHost: h\r\n\r\nGET /api/g HTTP/1.1\r\nHost: h\r\n\r\n")
            await writer.drain()
            head1 = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert b"Content-Length: 1000" in head1
            head2 = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # next response follows at once
            assert head2.startswith(b"HTTP/1.1 200")
            assert len(await asyncio.wait_for(reader.readexactly(1000), 5)) == 1000
            writer.close()
    finally:
        await runner.cleanup()


async def test_slow_reader_backpressure_bounds_memory(tmp_path):
    """A client that reads slowly must not make the proxy buffer the upstream's whole body."""
    total = 64 << 20

    async def big(request):
        resp = web.StreamResponse()
        resp.content_length = total
        await resp.prepare(request)
        block = b"b" * (1 << 20)
        for _ in range(total >> 20):
            await resp.write(block)
        return resp

    runner, port = await start_app(big)
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt), limit=1 << 16)
            writer.transport.set_write_buffer_limits(0)
            writer.write(b"GET /api/big HTTP/1.1\r\nHost: h\r\n\r\n")
            await writer.drain()
            await reader.readuntil(b"\r\n\r\n")
            await asyncio.sleep(1.0)  # read nothing for a while: the proxy must stop reading upstream
            conns = rt.listeners[0].connections
            assert len(conns) == 1
            conn = next(iter(conns))
            buffered = conn.transport.get_write_buffer_size()
            assert buffered < 8 << 20, f"proxy buffered {buffered} bytes for a client that is not reading"
            got = 0
            while got < total:
                chunk = await asyncio.wait_for(reader.read(1 << 20), 5)
                assert chunk
                got += len(chunk)
            assert got == total
            writer.close()
    finally:
        await runner.cleanup()


async def test_https_upstream_gets_tls_never_plaintext(tmp_path):
    """An `https://` upstream must be spoken to in TLS: the first bytes are a TLS handshake, not a request line
    (this test's server does not speak TLS and hangs up: a 502 naming the failed handshake, not a refused connect)."""
    first: list[bytes] = []

    async def h(reader, writer):
        first.append(await reader.read(5))
        writer.close()

    server = await asyncio.start_server(h, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    cfg = {"admin": {"address": "127.0.0.1:0"}, "telemetry": {"local_dir": str(tmp_path / "t")},
           "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                    "routes": [{"name": "r", "upstream": "secure", "timeouts": {"connect_s": 2}}],
                    "upstreams": [{"name": "secure", "url": f"https://127.0.0.1:{port}"}]}}
    try:
        async with running(cfg) as rt:
            resp = await raw_request(edge_port(rt), b"GET /x HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
        assert resp.startswith(b"HTTP/1.1 502"), resp[:100]
        assert b'"upstream_tls_error"' in resp and b"handshake_failed" in resp
        assert first and first[0][:1] == b"\x16", first  # a TLS handshake record, not "GET /x"
    finally:
        server.close()


async def test_deadlines_fire_once_per_tick_late_by_at_most_the_resolution():
    """The shared response-head timers: a future not done by its deadline fails (never early, at most one
    resolution late); a discarded one is left alone; futures due in the same tick share one timer."""
    from gatewatch.io.http1 import Deadlines

    class Late(Exception):
        pass

    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, Late, resolution_s=0.02)
    start = loop.time()
    due = [loop.create_future() for _ in range(50)]
    ticks = {deadlines.add(0.1, f) for f in due}
    answered = loop.create_future()
    deadlines.discard(deadlines.add(0.1, answered), answered)
    assert len(ticks) <= 2 and len(deadlines) == 50  # one or two shared ticks, not 50 timers
    for tick in ticks:  # each tick is due at most one resolution after the deadline, never before it
        assert start + 0.1 - 1e-9 <= tick * 0.02 < loop.time() + 0.1 + 0.02
    with pytest.raises(Late):
        await due[0]
    assert loop.time() - start >= 0.1 - 1e-3  # never early
    await asyncio.sleep(0.05)
    assert all(isinstance(f.exception(), Late) for f in due)
    assert not answered.done() and len(deadlines) == 0


async def test_drain_serves_a_request_already_sent_on_an_idle_connection(tmp_path):
    """Stopping closes idle keep-alive connections, but never one with a request waiting unread in its socket:
    closing it would reset the connection and lose the request. That request is served, answered
    `Connection: close`, and the connection then closes cleanly."""
    async def ok(request):
        return web.Response(text="ok")

    runner, port = await start_app(ok)
    try:
        async with running(in_process_config([port], tmp_path)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
            writer.write(b"GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n")
            first = await reader.readuntil(b"ok")
            assert first.startswith(b"HTTP/1.1 200") and b"Connection: close" not in first
            idle = await asyncio.open_connection("127.0.0.1", edge_port(rt))  # idle, nothing sent: closed
            # Sent straight to the socket and not yet read by the listener when it stops (no await between).
            os.write(writer.get_extra_info("socket").fileno(), b"GET /api/2 HTTP/1.1\r\nHost: a\r\n\r\n")
            await rt.listeners[0].stop(grace_s=2.0)
            second = await asyncio.wait_for(reader.read(), 5)  # a reset would raise here
            assert second.startswith(b"HTTP/1.1 200") and b"Connection: close\r\n" in second, second
            assert await asyncio.wait_for(idle[0].read(), 5) == b""
            writer.close()
            idle[1].close()
    finally:
        await runner.cleanup()
