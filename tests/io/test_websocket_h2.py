"""WebSocket over HTTP/2 (RFC 8441, issue 17; gatewatch/io/h2_tunnel.py, docs/websocket.md): a raw `h2` client on
a loopback h2c (prior knowledge) connection sends extended CONNECT through a real runtime to aiohttp's WebSocket
server, which Gatewatch reaches with an HTTP/1.1 Upgrade. The WebSocket frames on the stream are built and read
here, byte for byte, so what is asserted is what went over the wire."""

from __future__ import annotations

import asyncio
import base64
import os
import ssl

import h2.config
import h2.connection
import h2.settings
import pytest
from h2.errors import ErrorCodes

from gatewatch.telemetry.names import WebSocketEnd
from tests.io.test_h2 import Client
from tests.io.test_refusals import recorded
from tests.io.test_websocket import backend, config, ended, frame, sample, until  # noqa: F401 - the fixture
from tests.support.certs import Pki
from tests.support.net import edge_port
from tests.support.runtime import in_process_config, running

WS = [(":protocol", "websocket"), ("sec-websocket-version", "13")]


def read_frames(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of the complete server frames (unmasked, RFC 6455 §5.1) in `data`."""
    out, i = [], 0
    while i + 2 <= len(data):
        assert not data[i + 1] & 0x80, "a server frame must not be masked"
        n, at = data[i + 1] & 0x7F, i + 2
        if n >= 126:
            size = 2 if n == 126 else 8
            if at + size > len(data):
                break
            n, at = int.from_bytes(data[at:at + size], "big"), at + size
        if at + n > len(data):
            break
        out.append((data[i] & 0x0F, data[at:at + n]))
        i = at + n
    return out


class Ws:
    """One WebSocket session on a stream of `client`."""

    def __init__(self, client: Client, sid: int):
        self.c, self.sid = client, sid
        self.seen = 0

    @classmethod
    async def connect(cls, client: Client, path: str = "/api/ws", extra=()) -> Ws:
        sid = client.request(path, method="CONNECT", extra=[*WS, *extra], end=False)
        await client.until(lambda: client.responses[sid]["status"] is not None or sid in client.resets)
        return cls(client, sid)

    @property
    def status(self) -> int | None:
        return self.c.responses[self.sid]["status"]

    async def send(self, data: bytes) -> None:
        c = self.c
        view = memoryview(data)
        while view:  # within the stream's window: Gatewatch's WINDOW_UPDATEs are its backpressure
            window = min(c.conn.local_flow_control_window(self.sid), c.conn.max_outbound_frame_size)
            if window <= 0:
                await c.pump()
                continue
            c.conn.send_data(self.sid, bytes(view[:window]))
            view = view[window:]
            c.flush()

    async def receive(self) -> tuple[int, bytes]:
        body = self.c.responses[self.sid]["body"]
        await self.c.until(lambda: len(read_frames(bytes(body))) > self.seen)
        self.seen += 1
        return read_frames(bytes(body))[self.seen - 1]

    async def ended(self) -> None:
        await self.c.until(lambda: self.c.responses[self.sid]["ended"] or self.sid in self.c.resets)

    async def close_normally(self) -> None:
        """The client's Close 1000, the backend's Close 1000 back (RFC 6455 §5.5.1), then the stream ends."""
        await self.send(frame(8, (1000).to_bytes(2, "big")))
        opcode, data = await self.receive()
        assert (opcode, close_code(data)) == (8, 1000)
        await self.ended()


def close_code(payload: bytes) -> int:
    return int.from_bytes(payload[:2], "big")


def gauge(rt) -> float | None:
    return sample(rt, "gatewatch_websocket_sessions", gatewatch_route="api", gatewatch_instance="i0")


async def test_echo_text_and_binary_and_the_client_closes(backend, tmp_path):
    async with running(config(backend, tmp_path)) as rt:
        c = await Client.open(edge_port(rt))
        try:
            ws = await Ws.connect(c, extra=[("sec-websocket-protocol", "chat")])
            assert c.conn.remote_settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] == 1  # RFC 8441 §3
            assert ws.status == 200  # RFC 8441 §5: the upstream's 101 as a 2xx
            assert "sec-websocket-accept" not in c.responses[ws.sid]["headers"]
            assert gauge(rt) == 1
            await ws.send(frame(1, b"hello"))
            assert await ws.receive() == (1, b"hello")
            payload = os.urandom(200_000)  # over every window both ways: flow control is the backpressure
            await ws.send(frame(2, payload))
            assert await ws.receive() == (2, payload)
            await ws.close_normally()
        finally:
            c.close()
        await until(lambda: ended(rt, WebSocketEnd.CLIENT_CLOSE) == 1)
        assert gauge(rt) == 0
        assert backend.closes == [(1000, "client")]


async def test_the_backend_closes_first(backend, tmp_path):
    backend.mode = "close_first"
    async with running(config(backend, tmp_path)) as rt:
        c = await Client.open(edge_port(rt))
        try:
            ws = await Ws.connect(c)
            opcode, data = await ws.receive()
            assert (opcode, close_code(data)) == (8, 4000)
            await ws.send(frame(8, (4000).to_bytes(2, "big")))  # the client's answer (RFC 6455 §5.5.1)
            await ws.ended()
        finally:
            c.close()
        await until(lambda: ended(rt, WebSocketEnd.UPSTREAM_CLOSE) == 1)
        assert ended(rt, WebSocketEnd.CLIENT_CLOSE) == 0


async def test_end_stream_and_reset_from_the_client_end_their_sessions(backend, tmp_path):
    async with running(config(backend, tmp_path)) as rt:
        c = await Client.open(edge_port(rt))
        try:
            first, second = await Ws.connect(c), await Ws.connect(c)  # two sessions on one connection
            assert gauge(rt) == 2
            c.conn.end_stream(first.sid)  # RFC 8441 §5: as a TCP FIN
            c.flush()
            await first.ended()
            c.conn.reset_stream(second.sid, ErrorCodes.CANCEL)  # as a TCP RST
            c.flush()
            await until(lambda: ended(rt, WebSocketEnd.CLIENT_DISCONNECT) == 2)
            assert gauge(rt) == 0
            third = await Ws.connect(c)  # the connection still serves
            await third.send(frame(1, b"still"))
            assert await third.receive() == (1, b"still")
        finally:
            c.close()  # the TCP connection goes: so does the third session
        await until(lambda: ended(rt, WebSocketEnd.CLIENT_DISCONNECT) == 3)
        await until(lambda: len(backend.closes) == 3)


async def test_client_that_never_opens_its_window_holds_the_backend_back(backend, tmp_path):
    from gatewatch.io.h2_tunnel import HIGH_WATER
    backend.mode = "flood"
    async with running(config(backend, tmp_path)) as rt:
        c = await Client.open(edge_port(rt))
        try:
            sid = c.request("/api/ws", method="CONNECT", extra=WS, end=False)
            engine = rt.engines[next(iter(rt.engines))]
            await until(lambda: engine.websockets.open)  # from here on the client reads nothing: no WINDOW_UPDATE
            session = next(iter(engine.websockets.open))
            await until(lambda: backend.transports and backend.transports[0].get_write_buffer_size() > 0
                        and not session.upstream.transport.is_reading())
            assert session.client.transport.get_write_buffer_size() <= HIGH_WATER + 256 * 1024  # + one read
            assert getattr(backend, "sent", 0) < 256  # the backend could not send everything: backpressure held it
            assert sid in c.responses
        finally:
            c.close()


async def test_auth_policy_refuses_on_the_stream(backend, tmp_path):
    from gatewatch.edge.policies.apikey import hash_key
    cfg = config(backend, tmp_path, policies=[
        {"name": "key", "type": "api_key", "keys": [{"consumer": "acme", "hash": hash_key("k-good")}]}])
    async with running(cfg) as rt:
        c = await Client.open(edge_port(rt))
        try:
            ws = await Ws.connect(c)
            assert ws.status == 401
            await ws.ended()
            assert backend.upgrades == 0  # never reached the upstream
            ok = await Ws.connect(c, extra=[("x-api-key", "k-good")])
            assert ok.status == 200
            await ok.send(frame(1, b"in"))
            assert await ok.receive() == (1, b"in")
        finally:
            c.close()


@pytest.mark.parametrize("mode,status,body", [("refuse", 403, b"no websockets here"), ("plain", 200, b"plain")])
async def test_a_backend_refusing_the_upgrade_is_relayed(backend, tmp_path, mode, status, body):
    backend.mode = mode
    async with running(config(backend, tmp_path)) as rt:
        c = await Client.open(edge_port(rt))
        try:
            ws = await Ws.connect(c)
            await ws.ended()
            if mode == "plain":  # a 200 that is not a 101: never a session (RFC 6455 §4.1: the client fails it)
                assert c.responses[ws.sid]["status"] == 502
            else:
                assert (ws.status, bytes(c.responses[ws.sid]["body"])) == (status, body)
            assert gauge(rt) in (None, 0)
        finally:
            c.close()


async def test_idle_timeout_sends_1001_on_the_stream(backend, tmp_path):
    async with running(config(backend, tmp_path, websocket={"idle_timeout_s": 0.3})) as rt:
        c = await Client.open(edge_port(rt))
        try:
            ws = await Ws.connect(c)
            opcode, data = await ws.receive()
            assert (opcode, close_code(data)) == (8, 1001)
            await ws.send(frame(8, (1001).to_bytes(2, "big")))
            await ws.ended()
        finally:
            c.close()
        await until(lambda: ended(rt, WebSocketEnd.IDLE_TIMEOUT) == 1)
        await until(lambda: backend.closes == [(1001, "client")])  # the upstream got Gatewatch's 1001 too


async def test_malformed_extended_connects(backend, tmp_path):
    async with running(config(backend, tmp_path)) as rt:
        c = await Client.open(edge_port(rt), validate=False)
        try:
            cases = [  # (pseudo/extra headers, what the stream gets)
                ([(":protocol", "websocket")], ("reset", ErrorCodes.PROTOCOL_ERROR)),  # on a GET (RFC 8441 §4)
                ([(":protocol", "chat"), ("sec-websocket-version", "13")], ("status", 501)),
                ([(":protocol", "websocket"), ("sec-websocket-version", "8")], ("status", 400)),
            ]
            sids = []
            for n, (extra, _) in enumerate(cases):
                sids.append(c.request("/api/ws", method="GET" if n == 0 else "CONNECT", extra=extra, end=False))
            sid = c.conn.get_next_available_stream_id()  # extended CONNECT without :path (RFC 8441 §4)
            c.conn.send_headers(sid, [(":method", "CONNECT"), (":protocol", "websocket"), (":scheme", "http"),
                                      (":authority", "gw.test"), ("sec-websocket-version", "13")])
            c.responses[sid] = {"status": None, "headers": {}, "body": bytearray(), "ended": False}
            c.flush()
            sids.append(sid)
            cases.append(([], ("reset", ErrorCodes.PROTOCOL_ERROR)))
            for sid, (_, (kind, want)) in zip(sids, cases):
                await c.until(lambda s=sid: c.responses[s]["status"] is not None or s in c.resets)
                assert (c.resets[sid] if kind == "reset" else c.responses[sid]["status"]) == want, sid
        finally:
            c.close()
        got = recorded(rt)
        assert got[("bad_request", "400", "parse_error")] == 1
        assert got[("bad_request", "400", "websocket_invalid_handshake")] == 1
        assert got[("bad_request", "400", "websocket_unsupported_version")] == 1
        assert sum(v for k, v in got.items() if k[2] == "upgrade_not_supported") == 1
        assert backend.upgrades == 0


async def test_session_span_in_otlp(backend, tmp_path):
    from tests.support.otlp import OtlpReceiver
    with OtlpReceiver() as rx:
        cfg = config(backend, tmp_path)
        cfg["telemetry"].update({"otlp": {"endpoint": rx.grpc_endpoint, "protocol": "grpc"},
                                 "export_interval_s": 0.1})
        async with running(cfg, env={}) as rt:
            c = await Client.open(edge_port(rt))
            try:
                ws = await Ws.connect(c)
                trace_id = c.responses[ws.sid]["headers"]["traceresponse"].split("-")[1]
                for text in (b"one", b"two"):
                    await ws.send(frame(1, text))
                    assert await ws.receive() == (1, text)
                await ws.send(frame(8, (4001).to_bytes(2, "big")))
                await ws.receive()
                await ws.ended()
            finally:
                c.close()

            def session(spans, logs):
                return any(sp["trace_id"] == trace_id and sp["name"].startswith("websocket") for sp in spans)

            assert await asyncio.get_running_loop().run_in_executor(None, lambda: rx.data.wait_for(session))
        spans = {sp["kind"] + ":" + sp["name"].split(" ")[0]: sp for sp in rx.data.trace(trace_id)}
        server, ws_span = spans["SERVER:GET"], spans["INTERNAL:websocket"]
        assert server["attributes"]["network.protocol.version"] == "2"
        assert spans["CLIENT:GET"]["attributes"]["http.response.status_code"] == 101
        assert ws_span["parent_span_id"] == server["span_id"]
        a = ws_span["attributes"]
        assert (a["gatewatch.websocket.end"], a["gatewatch.websocket.closed_by"], a["gatewatch.websocket.close_code"]) \
            == ("client_close", "client", 4001)
        assert (a["gatewatch.websocket.client_messages"], a["gatewatch.websocket.upstream_messages"]) == (2, 2)


async def test_drain_sends_1001_on_the_stream(backend, tmp_path):
    rt_cm = running(config(backend, tmp_path))
    rt = await rt_cm.__aenter__()
    c = await Client.open(edge_port(rt))
    try:
        ws = await Ws.connect(c)
        stopping = asyncio.ensure_future(rt_cm.__aexit__(None, None, None))
        await c.until(lambda: c.terminated is not None)  # GOAWAY NO_ERROR, our stream within last_stream_id
        assert c.terminated.error_code == ErrorCodes.NO_ERROR and c.terminated.last_stream_id == ws.sid
        # h2's client refuses every frame after a GOAWAY; a graceful one lets open streams go on (test_h2 too)
        c.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        opcode, data = await ws.receive()
        assert (opcode, close_code(data)) == (8, 1001)
        await ws.send(frame(8, (1001).to_bytes(2, "big")))
        await ws.ended()
        await stopping
    finally:
        c.close()
    assert ended(rt, WebSocketEnd.DRAIN) == 1
    await until(lambda: backend.closes == [(1001, "client")])


async def test_the_upstream_gets_a_fresh_key_and_its_accept_is_checked(tmp_path):
    heads: list[bytes] = []

    async def serve(reader, writer):  # a raw upstream answering 101 with a wrong Sec-WebSocket-Accept
        heads.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: d3Jvbmc=\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    async with server, running(in_process_config([server.sockets[0].getsockname()[1]], tmp_path)) as rt:
        c = await Client.open(edge_port(rt))
        try:
            ws = await Ws.connect(c, extra=[("sec-websocket-extensions", "permessage-deflate")])
            await ws.ended()
            assert ws.status == 502 and b"Sec-WebSocket-Accept" in bytes(c.responses[ws.sid]["body"])
        finally:
            c.close()
        assert not rt.engines[next(iter(rt.engines))].websockets.open
    lines = heads[0].decode("latin-1").split("\r\n")
    assert lines[0] == "GET /api/ws HTTP/1.1"  # RFC 8441 §5 → RFC 6455 §4.1
    fields = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    assert (fields["upgrade"], fields["connection"].lower()) == ("websocket", "upgrade")
    assert len(base64.b64decode(fields["sec-websocket-key"], validate=True)) == 16
    assert (fields["sec-websocket-version"], fields["sec-websocket-extensions"]) == ("13", "permessage-deflate")
    assert fields["host"] == "gw.test" or fields["host"].startswith("127.0.0.1")


async def test_over_tls_by_alpn(backend, tmp_path):
    pki = Pki(tmp_path / "ca")
    leaf = pki.leaf("api", ["localhost", "127.0.0.1"])
    cfg = config(backend, tmp_path)
    cfg["edge"]["listeners"][0]["tls"] = {"certificates": [{"cert_file": leaf.cert, "key_file": leaf.key}]}
    async with running(cfg) as rt:
        ctx = ssl.create_default_context(cafile=pki.ca_file)
        ctx.set_alpn_protocols(["h2"])
        reader, writer = await asyncio.open_connection("localhost", edge_port(rt), ssl=ctx)
        assert writer.get_extra_info("ssl_object").selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        conn.initiate_connection()
        c = Client(reader, writer, conn)
        c.flush()
        try:
            ws = await Ws.connect(c)
            assert ws.status == 200
            await ws.send(frame(1, b"secure"))
            assert await ws.receive() == (1, b"secure")
            await ws.close_normally()
        finally:
            c.close()
        await until(lambda: ended(rt, WebSocketEnd.CLIENT_CLOSE) == 1)
