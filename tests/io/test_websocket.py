"""WebSocket pass-through (RFC 6455, issue 17) on the fast data plane, in-process with real sockets: aiohttp's
WebSocket client and server on loopback, Gatewatch between them. The frame scanner is tested table-driven."""

from __future__ import annotations

import asyncio
import base64
import os

import aiohttp
import pytest
from aiohttp import web

from gatewatch.io.websocket import FrameScanner, accept_for, close_frame
from gatewatch.telemetry.names import WebSocketEnd
from tests.io.test_refusals import recorded
from tests.support.net import edge_port, raw_request, start_app
from tests.support.runtime import in_process_config, running


def sample(rt, name: str, **labels) -> float | None:
    for family in rt.metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    return None


def ended(rt, reason: WebSocketEnd) -> float:
    return sample(rt, "gatewatch_websocket_sessions_ended_total", gatewatch_route="api", reason=reason.value) or 0.0


async def until(predicate, timeout_s: float = 10.0) -> None:
    """Wait for a state (not a duration): polls until `predicate()` holds; the timeout only stops a hung test."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not predicate():
        assert loop.time() < deadline, "condition never reached"
        await asyncio.sleep(0.01)


class Backend:
    """An aiohttp WebSocket server that echoes, and remembers how each session ended."""

    def __init__(self):
        self.closes: list[tuple[int | None, str]] = []  # (close code seen, who) per session
        self.upgrades = 0
        self.mode = "echo"
        self.sockets: list[web.WebSocketResponse] = []
        self.transports: list = []  # the backend's side of each session's connection

    async def handler(self, request: web.Request):
        if self.mode == "refuse":
            return web.Response(status=403, text="no websockets here")
        if self.mode == "plain":
            return web.Response(text="plain")
        self.upgrades += 1
        ws = web.WebSocketResponse(autoping=False)
        await ws.prepare(request)
        self.sockets.append(ws)
        self.transports.append(request.transport)
        if self.mode == "close_first":
            await ws.close(code=4000, message=b"bye")
            self.closes.append((ws.close_code, "server"))
            return ws
        if self.mode == "flood":
            chunk = os.urandom(256 * 1024)
            try:
                for _ in range(256):
                    await ws.send_bytes(chunk)
                    self.sent = getattr(self, "sent", 0) + 1
            except (ConnectionError, RuntimeError):
                pass
            return ws
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.TEXT:
                await ws.send_str(msg.data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(msg.data)
        self.closes.append((ws.close_code, "client"))
        return ws


@pytest.fixture
async def backend():
    b = Backend()
    runner, port = await start_app(b.handler)
    b.port = port
    yield b
    await runner.cleanup()


def config(backend: Backend, tmp_path, **route) -> dict:
    return in_process_config([backend.port], tmp_path, **route)


async def test_echo_text_and_binary(backend, tmp_path):
    async with running(config(backend, tmp_path)) as rt, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws") as ws:
            assert sample(rt, "gatewatch_websocket_sessions", gatewatch_route="api", gatewatch_instance="i0") == 1
            await ws.send_str("hello")
            assert (await ws.receive()).data == "hello"
            payload = os.urandom(200_000)  # more than one read: frames cross chunk boundaries
            await ws.send_bytes(payload)
            assert (await ws.receive()).data == payload
            await ws.close()
            assert ws.close_code == 1000
        await until(lambda: ended(rt, WebSocketEnd.CLIENT_CLOSE) == 1)
        assert sample(rt, "gatewatch_websocket_sessions", gatewatch_route="api", gatewatch_instance="i0") == 0
        assert ended(rt, WebSocketEnd.IDLE_TIMEOUT) == 0  # every reason present from the first session
        assert backend.closes == [(1000, "client")]


async def test_server_initiated_close_is_recorded(backend, tmp_path):
    backend.mode = "close_first"
    async with running(config(backend, tmp_path)) as rt, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws") as ws:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4000
        await until(lambda: ended(rt, WebSocketEnd.UPSTREAM_CLOSE) == 1)
        assert ended(rt, WebSocketEnd.CLIENT_CLOSE) == 0


async def test_auth_policy_refuses_the_handshake(backend, tmp_path):
    from gatewatch.edge.policies.apikey import hash_key
    cfg = config(backend, tmp_path, policies=[
        {"name": "key", "type": "api_key", "keys": [{"consumer": "acme", "hash": hash_key("k-good")}]}])
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws")
        assert err.value.status == 401
        assert backend.upgrades == 0  # never reached the upstream
        async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws", headers={"X-Api-Key": "k-good"}) as ws:
            await ws.send_str("in")
            assert (await ws.receive()).data == "in"
        assert backend.upgrades == 1


@pytest.mark.parametrize("mode,status", [("refuse", 403), ("plain", 200)])
async def test_backend_refusing_the_upgrade_is_relayed(backend, tmp_path, mode, status):
    backend.mode = mode
    async with running(config(backend, tmp_path)) as rt, aiohttp.ClientSession() as s:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws")
        assert err.value.status == status
        assert not rt.engines[next(iter(rt.engines))].websockets.open
        assert sample(rt, "gatewatch_websocket_sessions", gatewatch_route="api") is None  # no session began


HANDSHAKE = (b"GET /api/ws HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
             b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


MALFORMED = [
    (HANDSHAKE.replace(b"GET", b"POST"), "websocket_invalid_handshake"),
    (HANDSHAKE.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"short"), "websocket_invalid_handshake"),  # not 16 bytes
    (HANDSHAKE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""), "websocket_invalid_handshake"),
    (HANDSHAKE.replace(b"Connection: Upgrade", b"Connection: Upgrade\r\nContent-Length: 2") + b"hi",
     "websocket_invalid_handshake"),  # a body
    (HANDSHAKE.replace(b"Version: 13", b"Version: 8"), "websocket_unsupported_version"),
]


async def test_malformed_handshakes_are_400_and_recorded(backend, tmp_path):
    async with running(config(backend, tmp_path)) as rt:
        for request_bytes, _ in MALFORMED:
            answer = await raw_request(edge_port(rt), request_bytes)
            assert answer.startswith(b"HTTP/1.1 400 "), request_bytes
        got = recorded(rt)  # each refusal recorded with its error.type
        assert got[("bad_request", "400", "websocket_invalid_handshake")] == 4
        assert got[("bad_request", "400", "websocket_unsupported_version")] == 1
        assert backend.upgrades == 0


async def fake_upstream(answer: bytes):
    """A raw upstream that answers any request head with `answer` and keeps the connection open."""
    async def serve(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_bad_accept_is_502(tmp_path):
    server, port = await fake_upstream(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                                       b"Connection: Upgrade\r\nSec-WebSocket-Accept: d3Jvbmc=\r\n\r\n")
    async with server, running(in_process_config([port], tmp_path)) as rt:
        answer = await raw_request(edge_port(rt), HANDSHAKE)
        assert answer.startswith(b"HTTP/1.1 502 ") and b"Sec-WebSocket-Accept" in answer
        assert not rt.engines[next(iter(rt.engines))].websockets.open


async def test_idle_timeout_closes_both_sides_with_1001(backend, tmp_path):
    cfg = config(backend, tmp_path, websocket={"idle_timeout_s": 0.3})
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws", autoping=False) as ws:
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await until(lambda: ended(rt, WebSocketEnd.IDLE_TIMEOUT) == 1)
        await until(lambda: backend.closes == [(1001, "client")])  # the upstream got Gatewatch's 1001 too


async def test_max_message_bytes_closes_with_1009(backend, tmp_path):
    cfg = config(backend, tmp_path, websocket={"max_message_bytes": 1000})
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws") as ws:
            await ws.send_bytes(b"x" * 1000)
            assert (await ws.receive()).data == b"x" * 1000
            await ws.send_bytes(b"x" * 1001)
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1009
        await until(lambda: ended(rt, WebSocketEnd.MESSAGE_TOO_BIG) == 1)
        assert backend.closes == [(1009, "client")]


async def test_unmasked_client_frame_is_a_protocol_error(backend, tmp_path):
    async with running(config(backend, tmp_path)) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
        writer.write(HANDSHAKE)
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101 ")
        assert accept_for("dGhlIHNhbXBsZSBub25jZQ==").encode() in head
        writer.write(b"\x81\x02hi")  # a text frame without a mask (RFC 6455 §5.1)
        assert await reader.readexactly(4) == close_frame(1002, masked=False)
        assert await reader.read() == b""  # then Gatewatch closes
        writer.close()
        await until(lambda: ended(rt, WebSocketEnd.PROTOCOL_ERROR) == 1)
        await until(lambda: backend.closes == [(1002, "client")])


async def test_client_that_never_reads_keeps_gatewatch_buffers_bounded(backend, tmp_path):
    backend.mode = "flood"
    async with running(config(backend, tmp_path)) as rt:
        reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt), limit=1024)
        writer.transport.pause_reading()  # this client never reads
        writer.write(HANDSHAKE.replace(b"Host: a", b"Host: a\r\nX-Flood: 1"))
        engine = rt.engines[next(iter(rt.engines))]
        await until(lambda: engine.websockets.open)
        session = next(iter(engine.websockets.open))
        # the backend stalls: its own buffer holds what neither Gatewatch nor the kernels take any more
        await until(lambda: backend.transports and backend.transports[0].get_write_buffer_size() > 0
                    and not session.upstream.transport.is_reading())
        toward_client = session.client.transport.get_write_buffer_size()
        assert toward_client <= 64 * 1024 + 256 * 1024 + 16  # the high-water mark and one read: never the flood
        assert getattr(backend, "sent", 0) < 256  # the backend could not send everything: backpressure held it
        writer.close()


async def test_drain_sends_1001_to_both_sides(backend, tmp_path):
    cfg = config(backend, tmp_path)
    async with aiohttp.ClientSession() as s:
        rt_cm = running(cfg)
        rt = await rt_cm.__aenter__()
        ws = await s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws")
        await ws.send_str("before")
        assert (await ws.receive()).data == "before"
        stopping = asyncio.ensure_future(rt_cm.__aexit__(None, None, None))
        msg = await ws.receive()
        assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await ws.close()
        await stopping
        assert ended(rt, WebSocketEnd.DRAIN) == 1
        await until(lambda: backend.closes == [(1001, "client")])


def frames(*parts: bytes) -> bytes:
    return b"".join(parts)


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bool = True) -> bytes:
    head = bytes(((0x80 if fin else 0) | opcode,))
    n = len(payload)
    m = 0x80 if mask else 0
    if n < 126:
        head += bytes((m | n,))
    elif n < 65536:
        head += bytes((m | 126,)) + n.to_bytes(2, "big")
    else:
        head += bytes((m | 127,)) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = b"\x01\x02\x03\x04"
    return head + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


@pytest.mark.parametrize("stream,masked,messages,close_code,stopped", [
    (frame(1, b"hi"), True, 1, None, None),
    (frame(2, b"x" * 70000), True, 1, None, None),  # 64-bit length
    (frame(2, b"x" * 300), True, 1, None, None),  # 16-bit length
    (frames(frame(1, b"a", fin=False), frame(9, b"p"), frame(0, b"b", fin=False), frame(0, b"c")), True, 1, None,
     None),  # fragmented, a ping between fragments: one message
    (frame(8, (1000).to_bytes(2, "big") + b"bye"), True, 0, 1000, None),
    (frame(8, b""), True, 0, 1005, None),
    (frame(8, (4000).to_bytes(2, "big"), mask=False), False, 0, 4000, None),
    (frame(1, b"hi", mask=False), True, 0, None, "violation"),  # §5.1: a client's frame unmasked
    (frame(1, b"hi"), False, 0, None, "violation"),  # a server's frame masked
    (frame(3, b""), True, 0, None, "violation"),  # reserved opcode
    (frame(9, b"p", fin=False), True, 0, None, "violation"),  # fragmented control frame
    (frame(9, b"p" * 126), True, 0, None, "violation"),  # control frame over 125 bytes
    (frame(0, b"c"), True, 0, None, "violation"),  # a continuation with no message
    (frames(frame(1, b"a", fin=False), frame(1, b"b")), True, 0, None, "violation"),  # new message inside one
    (frame(2, b"x" * 11), True, 0, None, "oversize"),  # over max_message (10)
])
@pytest.mark.parametrize("split", [None, 1, 3])
def test_frame_scanner(stream, masked, messages, close_code, stopped, split):
    sc = FrameScanner(masked, 10 if stopped == "oversize" else None)
    chunks = [stream] if split is None else [stream[i:i + split] for i in range(0, len(stream), split)]
    for c in chunks:
        sc.feed(c)
    assert (sc.messages, sc.close_code, sc.stopped) == (messages, close_code, stopped)
    if stopped is None:
        assert sc.at_boundary()


def test_scanner_stops_at_the_frame_boundary_it_is_asked_for():
    sc = FrameScanner(True, None)
    data = frame(2, b"x" * 100) + frame(1, b"next")
    assert sc.feed(data[:50]) == 50
    sc.stop_at_boundary = True
    assert sc.feed(data[50:]) == len(frame(2, b"x" * 100)) - 50  # the rest of the frame, not the next one
    assert sc.stopped == "boundary"


def test_accept_of_the_rfc_example():
    assert accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3
    assert base64.b64decode(accept_for(base64.b64encode(os.urandom(16)).decode()))


async def test_session_span_and_handshake_spans_in_otlp(backend, tmp_path):
    from tests.support.otlp import OtlpReceiver
    with OtlpReceiver() as rx:
        cfg = config(backend, tmp_path)
        cfg["telemetry"].update({"otlp": {"endpoint": rx.grpc_endpoint, "protocol": "grpc"},
                                 "export_interval_s": 0.1})
        async with running(cfg, env={}) as rt, aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws") as ws:
                trace_id = ws._response.headers["traceresponse"].split("-")[1]
                for text in ("one", "two", "three"):
                    await ws.send_str(text)
                    assert (await ws.receive()).data == text
                await ws.close(code=4001)

            def session(spans, logs):
                return any(sp["trace_id"] == trace_id and sp["name"].startswith("websocket") for sp in spans)

            assert await asyncio.get_running_loop().run_in_executor(None, lambda: rx.data.wait_for(session))
        spans = {sp["kind"] + ":" + sp["name"].split(" ")[0]: sp for sp in rx.data.trace(trace_id)}
        server, client, ws_span = spans["SERVER:GET"], spans["CLIENT:GET"], spans["INTERNAL:websocket"]
        assert server["attributes"]["http.response.status_code"] == 101
        assert client["attributes"]["http.response.status_code"] == 101
        assert client["attributes"]["gatewatch.instance"] == "i0"
        assert ws_span["parent_span_id"] == server["span_id"]
        assert client["end"] <= ws_span["start"] <= server["end"]  # the session begins as the handshake ends
        a = ws_span["attributes"]
        assert (a["gatewatch.websocket.end"], a["gatewatch.websocket.closed_by"], a["gatewatch.websocket.close_code"]) \
            == ("client_close", "client", 4001)
        assert (a["gatewatch.websocket.client_messages"], a["gatewatch.websocket.upstream_messages"]) == (3, 3)
        assert a["gatewatch.websocket.client_bytes"] > a["gatewatch.websocket.upstream_bytes"] > 0  # masks: 4 more
        assert a["gatewatch.instance"] == "i0" and a["gatewatch.route"] == "api"


async def test_instance_leaving_the_pool_closes_its_sessions_with_1001(backend, tmp_path):
    import json

    from gatewatch.app.runtime import Runtime
    from gatewatch.config import parse_config
    cfg = config(backend, tmp_path)
    path = tmp_path / "gatewatch.json"
    path.write_text(json.dumps(cfg))
    rt = Runtime(parse_config(cfg), env={}, config_path=str(path))
    await rt.start()
    try:
        async with aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws") as ws:
                await ws.send_str("x")
                assert (await ws.receive()).data == "x"
                cfg["balancer"]["pools"][0]["instances"][0]["id"] = "replacement"  # i0 leaves the pool
                path.write_text(json.dumps(cfg))
                assert (await rt.reload())[0]
                msg = await ws.receive()
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await until(lambda: ended(rt, WebSocketEnd.INSTANCE_GONE) == 1)
        await until(lambda: backend.closes == [(1001, "client")])
    finally:
        await rt.stop(grace_s=1.0)


async def test_echo_through_both_tiers(backend, tmp_path):
    """edge → balancer → backend, each tier its own runtime (in-process, real sockets)."""
    balancer = {"admin": {"address": "127.0.0.1:0"}, "telemetry": {"local_dir": str(tmp_path / "b")},
                "balancer": {"listeners": [{"name": "internal", "address": "127.0.0.1:0"}],
                             "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "shop"}],
                             "pools": [{"name": "shop", "instances": [
                                 {"id": "b0", "host": "127.0.0.1", "port": backend.port}]}]}}
    async with running(balancer) as inner:
        edge = {"admin": {"address": "127.0.0.1:0"}, "telemetry": {"local_dir": str(tmp_path / "e")},
                "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                         "routes": [{"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "shop"}],
                         "upstreams": [{"name": "shop", "url": f"http://127.0.0.1:{edge_port(inner)}"}]}}
        async with running(edge) as outer, aiohttp.ClientSession() as s:
            async with s.ws_connect(f"http://127.0.0.1:{edge_port(outer)}/api/ws") as ws:
                for payload in ("text", b"\x00binary" * 1000):
                    await (ws.send_str(payload) if isinstance(payload, str) else ws.send_bytes(payload))
                    assert (await ws.receive()).data == payload
                assert sample(inner, "gatewatch_websocket_sessions", gatewatch_route="all",
                              gatewatch_instance="b0") == 1
            await until(lambda: ended(outer, WebSocketEnd.CLIENT_CLOSE) == 1)
            await until(lambda: sample(inner, "gatewatch_websocket_sessions_ended_total", gatewatch_route="all",
                                       reason="client_close") == 1)


async def test_echo_on_a_tls_listener(backend, tmp_path):
    import ssl

    from tests.support.certs import Pki
    ca = Pki(tmp_path / "ca")
    leaf = ca.leaf("ws", ["localhost", "127.0.0.1"])
    cfg = config(backend, tmp_path)
    cfg["edge"]["listeners"][0]["tls"] = {"certificates": [{"cert_file": leaf.cert, "key_file": leaf.key}]}
    ctx = ssl.create_default_context(cafile=ca.ca_file)
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"https://localhost:{edge_port(rt)}/api/ws", ssl=ctx) as ws:
            payload = os.urandom(300_000)  # several TLS records, paused and resumed reads
            await ws.send_bytes(payload)
            assert (await ws.receive()).data == payload
            await ws.close()
        await until(lambda: ended(rt, WebSocketEnd.CLIENT_CLOSE) == 1)


async def test_max_duration_ends_a_busy_session_with_1001(backend, tmp_path):
    cfg = config(backend, tmp_path, websocket={"max_duration_s": 0.3, "idle_timeout_s": 60})
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        async with s.ws_connect(f"http://127.0.0.1:{edge_port(rt)}/api/ws") as ws:
            while True:  # busy: never idle, so only the session's age can end it
                await ws.send_str("tick")
                msg = await ws.receive()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1001
        await until(lambda: ended(rt, WebSocketEnd.MAX_DURATION) == 1)
        assert ended(rt, WebSocketEnd.IDLE_TIMEOUT) == 0


@pytest.mark.parametrize("websocket,where", [
    ({"idle_timeout_s": 0}, "edge.routes[0].websocket.idle_timeout_s"),
    ({"max_message_bytes": 0}, "edge.routes[0].websocket.max_message_bytes"),
    ({"max_duration": 5}, "edge.routes[0].websocket.max_duration"),
])
def test_config_errors_name_the_field(tmp_path, websocket, where):
    from gatewatch.config import ConfigError, parse_config
    with pytest.raises(ConfigError) as err:
        parse_config(in_process_config([1], tmp_path, websocket=websocket))
    assert any(p.startswith(where) for p in err.value.problems), err.value.problems
