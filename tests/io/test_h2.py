"""HTTP/2 downstream (issue 17 part 2; gatewatch/io/h2_listener.py, docs/http2.md) with real clients: curl
(`--http2` over TLS with ALPN, `--http2-prior-knowledge` for h2c) and the `h2` library as a raw client on loopback
sockets, through a real runtime to an HTTP/1.1 aiohttp backend.

- GET and POST, h2c and h2 over TLS; the SERVER span says network.protocol.version 2 (the Via hop says 2 too);
- flow control both ways with bodies larger than every window;
- limits: streams over max_concurrent_streams get REFUSED_STREAM; oversized headers 431; a header block far over
  the limit (HPACK bomb) ends the connection; a malformed request is reset with PROTOCOL_ERROR;
- a rapid-reset flood ends the connection with GOAWAY ENHANCE_YOUR_CALM, counted;
- drain sends GOAWAY with the last stream id, and the open stream still finishes.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import h2.config
import h2.connection
import h2.events
import h2.settings
import pytest
from aiohttp import web
from h2.errors import ErrorCodes

from tests.support.certs import Pki
from tests.support.net import edge_port, start_app
from tests.support.runtime import running

CURL = shutil.which("curl")


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    ca = Pki(tmp_path_factory.mktemp("pki") / "ca")
    return {"ca": ca, "api": ca.leaf("api", ["api.example.test", "localhost", "127.0.0.1"])}


@pytest.fixture
async def backend():
    """An HTTP/1.1 backend: echoes what reached it; /hold waits for the test's release; /big streams 1 MiB."""
    state = {"release": asyncio.Event(), "held": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        body = await request.read()
        if request.path == "/hold":
            state["held"] += 1
            await state["release"].wait()
        if request.path == "/big":
            resp = web.StreamResponse()
            await resp.prepare(request)
            for _ in range(16):
                await resp.write(b"x" * 65536)
            await resp.write_eof()
            return resp
        return web.json_response({"method": request.method, "path": request.path_qs, "size": len(body),
                                  "headers": {k.lower(): v for k, v in request.headers.items()}})

    runner, port = await start_app(handle)
    state["port"] = port
    yield state
    state["release"].set()
    await runner.cleanup()


def config(tmp_path, port: int, tls: dict | None = None, **http2) -> dict:
    listener = {"name": "public", "address": "127.0.0.1:0", **({"tls": tls} if tls else {})}
    if http2:
        listener["http2"] = http2
    return {"admin": {"address": "127.0.0.1:0"}, "telemetry": {"local_dir": str(tmp_path / "t")},
            "edge": {"listeners": [listener], "routes": [{"name": "r", "upstream": "b", "retries": {"attempts": 1},
                                                          "timeouts": {"response_s": 10, "idle_s": 10}}]},
            "balancer": {"pools": [{"name": "b", "instances": [{"host": "127.0.0.1", "port": port}]}]}}


class Client:
    """A raw HTTP/2 client: the `h2` state machine over an asyncio stream."""

    def __init__(self, reader, writer, conn: h2.connection.H2Connection):
        self.reader, self.writer, self.conn = reader, writer, conn
        self.responses: dict[int, dict] = {}
        self.terminated: h2.events.ConnectionTerminated | None = None
        self.resets: dict[int, int] = {}

    @classmethod
    async def open(cls, port: int, window: int | None = None, validate: bool = True) -> Client:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, header_encoding="utf-8", validate_outbound_headers=validate,
            normalize_outbound_headers=validate))
        if window is not None:
            conn.local_settings = h2.settings.Settings(client=True, initial_values={
                h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: window})
        conn.initiate_connection()
        self = cls(reader, writer, conn)
        self.flush()
        return self

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.writer.write(data)

    def request(self, path: str, method: str = "GET", body: bytes = b"", extra=(), end: bool = True) -> int:
        sid = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":path", path), (":scheme", "http"), (":authority", "gw.test"), *extra]
        self.conn.send_headers(sid, headers, end_stream=end and not body)
        self.responses[sid] = {"status": None, "headers": {}, "body": bytearray(), "ended": False}
        self.flush()
        return sid

    async def send_body(self, sid: int, body: bytes) -> None:
        """All of `body`, within the server's windows (waiting for its WINDOW_UPDATEs), then END_STREAM."""
        view = memoryview(body)
        while view:
            window = min(self.conn.local_flow_control_window(sid), self.conn.max_outbound_frame_size)
            if window <= 0:
                await self.pump()
                continue
            self.conn.send_data(sid, bytes(view[:window]))
            view = view[window:]
            self.flush()
        self.conn.end_stream(sid)
        self.flush()

    async def pump(self) -> list:
        data = await asyncio.wait_for(self.reader.read(65536), 10)
        if not data:
            raise ConnectionError("closed by the server")
        events = self.conn.receive_data(data)
        for ev in events:
            r = self.responses.get(getattr(ev, "stream_id", None) or 0)
            if isinstance(ev, h2.events.ResponseReceived):
                r["headers"] = dict(ev.headers)
                r["status"] = int(r["headers"][":status"])
            elif isinstance(ev, h2.events.DataReceived):
                if r is not None:
                    r["body"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded) and r is not None:
                r["ended"] = True
            elif isinstance(ev, h2.events.StreamReset):
                self.resets[ev.stream_id] = ev.error_code
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.terminated = ev
        self.flush()
        return events

    async def until(self, done) -> None:
        while not done():
            await self.pump()

    async def response(self, sid: int) -> dict:
        await self.until(lambda: self.responses[sid]["ended"] or sid in self.resets)
        return self.responses[sid]

    def close(self) -> None:
        self.writer.close()


async def curl(*args: str) -> subprocess.CompletedProcess:
    return await asyncio.to_thread(subprocess.run, [CURL, "-sS", "--max-time", "10", *args], capture_output=True)


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_h2c_prior_knowledge_get_and_post_with_curl(tmp_path, backend):
    async with running(config(tmp_path, backend["port"])) as rt:
        url = f"http://127.0.0.1:{edge_port(rt)}/echo?q=1"
        got = await curl("--http2-prior-knowledge", "-w", "\n%{http_version}", url)
        body, version = got.stdout.rsplit(b"\n", 1)
        assert version == b"2", got.stderr
        seen = json.loads(body)
        assert seen["method"] == "GET" and seen["path"] == "/echo?q=1"
        assert seen["headers"]["host"] == f"127.0.0.1:{edge_port(rt)}"  # :authority, as Host upstream
        assert seen["headers"]["via"].startswith("2 gatewatch")  # RFC 9110 §7.6.3: the client's protocol
        got = await curl("--http2-prior-knowledge", "--data-binary", "@-", url, "-o", "-") if False else \
            await asyncio.to_thread(subprocess.run, [CURL, "-sS", "--http2-prior-knowledge", "--data-binary",
                                                     "@-", url], input=b"p" * 100_000, capture_output=True)
        assert json.loads(got.stdout)["method"] == "POST" and json.loads(got.stdout)["size"] == 100_000


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
async def test_h2_over_tls_by_alpn_and_http11_when_disabled(tmp_path, backend, pki):
    tls = {"certificates": [{"cert_file": pki["api"].cert, "key_file": pki["api"].key}]}
    async with running(config(tmp_path, backend["port"], tls)) as rt:
        url = f"https://localhost:{edge_port(rt)}/x"
        got = await curl("--http2", "--cacert", pki["ca"].ca_file, "-w", "\n%{http_version}", url)
        body, version = got.stdout.rsplit(b"\n", 1)
        assert version == b"2", got.stderr
        assert json.loads(body)["headers"]["via"].startswith("2 gatewatch")
    async with running(config(tmp_path, backend["port"], tls, enabled=False)) as rt:
        url = f"https://localhost:{edge_port(rt)}/x"
        got = await curl("--http2", "--cacert", pki["ca"].ca_file, "-w", "\n%{http_version}", url)
        assert got.stdout.rsplit(b"\n", 1)[1] == b"1.1", got.stderr


async def test_flow_control_both_ways_with_bodies_larger_than_the_windows(tmp_path, backend):
    async with running(config(tmp_path, backend["port"], initial_window_size=16384)) as rt:
        # the client's receive window (16 KiB) is far below the 1 MiB response: the server waits for updates
        c = await Client.open(edge_port(rt), window=16384)
        sid = c.request("/big")
        r = await c.response(sid)
        assert r["status"] == 200 and len(r["body"]) == 16 * 65536 and sid not in c.resets
        # a 1 MiB upload through a 16 KiB stream window: only acknowledged as gatewatch relays it upstream
        payload = b"u" * (1 << 20)
        sid = c.request("/up", method="POST", body=payload, extra=[("content-length", str(len(payload)))])
        await c.send_body(sid, payload)
        r = await c.response(sid)
        assert r["status"] == 200 and json.loads(r["body"])["size"] == len(payload)
        c.close()


async def test_body_without_content_length_and_a_contradicting_one(tmp_path, backend):
    async with running(config(tmp_path, backend["port"])) as rt:
        c = await Client.open(edge_port(rt))
        sid = c.request("/up", method="POST", body=b"x")  # no content-length: chunked to the HTTP/1.1 upstream
        await c.send_body(sid, b"z" * 70000)
        r = await c.response(sid)
        assert r["status"] == 200 and json.loads(r["body"])["size"] == 70000
        sid = c.request("/up", method="POST", body=b"x", extra=[("content-length", "5")])
        await c.send_body(sid, b"123456")  # RFC 9113 §8.1.1: more DATA than content-length is malformed
        with pytest.raises(ConnectionError):  # h2 makes it a connection error (docs/http2.md)
            while True:
                await c.pump()
        assert c.terminated is not None and c.terminated.error_code == ErrorCodes.PROTOCOL_ERROR
        c.close()


async def test_streams_over_the_limit_are_refused_and_the_rest_served(tmp_path, backend):
    async with running(config(tmp_path, backend["port"], max_concurrent_streams=3)) as rt:
        c = await Client.open(edge_port(rt))
        # a client that does not wait for the advertised limit: 3 are held upstream, 2 more are refused
        # (RFC 9113 §5.1.2)
        sids = [c.request("/hold") for _ in range(5)]
        await c.until(lambda: len(c.resets) == 2)
        assert c.resets == {sids[3]: ErrorCodes.REFUSED_STREAM, sids[4]: ErrorCodes.REFUSED_STREAM}
        while backend["held"] < 3:
            await asyncio.sleep(0.01)
        backend["release"].set()
        for sid in sids[:3]:
            assert (await c.response(sid))["status"] == 200
        sid = c.request("/after")  # the connection is still fine
        assert (await c.response(sid))["status"] == 200
        settings = c.conn.remote_settings  # what the listener advertised (RFC 9113 §6.5.2)
        assert settings.max_concurrent_streams == 3 and settings.max_header_list_size == 16384
        c.close()
        metrics = rt.metrics.h2_events
        assert metrics.labels("public", "reset", "refused_stream")._value.get() == 2


async def test_rapid_reset_flood_gets_goaway_enhance_your_calm(tmp_path, backend):
    async with running(config(tmp_path, backend["port"], max_resets=20)) as rt:
        c = await Client.open(edge_port(rt))
        for _ in range(50):  # CVE-2023-44487: open and cancel at once
            sid = c.request("/hold")
            c.conn.reset_stream(sid, ErrorCodes.CANCEL)
        c.flush()
        with pytest.raises(ConnectionError):
            while True:
                await c.pump()
        assert c.terminated is not None and c.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        assert rt.metrics.h2_events.labels("public", "goaway", "rapid_reset")._value.get() == 1
        c.close()


async def test_oversized_headers_431_and_hpack_bomb_ends_the_connection(tmp_path, backend):
    async with running(config(tmp_path, backend["port"], max_header_list_size=4096)) as rt:
        c = await Client.open(edge_port(rt))
        sid = c.request("/x", extra=[("x-big", "a" * 6000)])
        r = await c.response(sid)
        assert r["status"] == 431 and json.loads(r["body"])["error"]["outcome"] == "bad_request"
        sid = c.request("/x")  # the stream failed, not the connection
        assert (await c.response(sid))["status"] == 200
        c.request("/x", extra=[("x-bomb", "b" * 40000)])  # 10x the advertised limit: not even decoded
        with pytest.raises(ConnectionError):
            while True:
                await c.pump()
        assert c.terminated is not None and c.terminated.error_code == ErrorCodes.ENHANCE_YOUR_CALM
        c.close()


@pytest.mark.parametrize("extra", [[("connection", "keep-alive")], [("te", "gzip")], [("X-Upper", "1")]])
async def test_malformed_request_is_reset_with_protocol_error(tmp_path, backend, extra):
    async with running(config(tmp_path, backend["port"])) as rt:
        c = await Client.open(edge_port(rt), validate=False)
        sid = c.request("/x", extra=extra)
        await c.until(lambda: sid in c.resets)
        assert c.resets[sid] == ErrorCodes.PROTOCOL_ERROR  # RFC 9113 §8.2.1, §8.2.2
        sid = c.request("/x")
        assert (await c.response(sid))["status"] == 200
        c.close()


async def test_drain_sends_goaway_and_lets_the_open_stream_finish(tmp_path, backend):
    async with running(config(tmp_path, backend["port"])) as rt:
        c = await Client.open(edge_port(rt))
        sid = c.request("/hold")
        while backend["held"] < 1:
            await asyncio.sleep(0.01)
        stopping = asyncio.create_task(rt.listeners[0].stop(grace_s=5.0))
        await c.until(lambda: c.terminated is not None)
        assert c.terminated.error_code == ErrorCodes.NO_ERROR and c.terminated.last_stream_id == sid
        # h2's client state machine refuses every frame after a GOAWAY; a graceful GOAWAY (RFC 9113 §6.8) lets
        # streams up to last_stream_id finish, as nghttp2 and curl do: reopen it to read the rest.
        c.conn.state_machine.state = h2.connection.ConnectionState.CLIENT_OPEN
        backend["release"].set()
        r = await c.response(sid)
        assert r["status"] == 200
        ended = await stopping
        assert sum(ended.values()) == 1 and ended["deadline"] == 0
        assert rt.metrics.h2_events.labels("public", "goaway", "drain")._value.get() == 1
        c.close()
