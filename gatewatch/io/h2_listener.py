"""HTTP/2 on the client side (RFC 9113): one `H2Connection` per connection, over the `h2` sans-I/O state machine.

The fast listener hands a connection over here when TLS ALPN selected "h2" (RFC 9113 §3.2) or when a plaintext
connection opens with the connection preface (§3.3, prior knowledge; the HTTP/1.1 Upgrade dance is deprecated
by §3.1 and not offered). Each stream becomes a `RequestHead` (version "2"), a request body fed by DATA frames and
an `H2Downstream`, and is handed to the engine's async `handler` in a task of its own.

Owned here:
- request validation (§8.2, §8.3): pseudo-headers, connection-specific fields, lower-case names, `content-length`
  against the DATA received; a malformed request is a stream error PROTOCOL_ERROR (recorded through `reject`);
- flow control both ways: request data is acknowledged (WINDOW_UPDATE) as the engine *consumes* it, so a slow
  upstream slows the client down; response data waits for the client's window;
- limits (`H2Settings`): concurrent streams (a stream over the limit is refused with REFUSED_STREAM, §5.1.2),
  header list size (over the advertised limit: 431 on the stream; far over it, an HPACK bomb: the connection
  ends with COMPRESSION_ERROR / ENHANCE_YOUR_CALM), window and frame sizes;
- the rapid-reset defence (CVE-2023-44487): streams the client resets, and streams we refused, are counted per
  connection over a window; over the budget the connection ends with GOAWAY ENHANCE_YOUR_CALM;
- drain: `goaway()` sends GOAWAY NO_ERROR with the last stream id processed (§6.8); open streams finish, and
  WebSocket sessions get their close 1001;
- WebSocket over HTTP/2 (RFC 8441): SETTINGS_ENABLE_CONNECT_PROTOCOL = 1 (§3); an extended CONNECT becomes the
  HTTP/1.1 handshake it stands for and, once upgraded, an `h2_tunnel.H2Tunnel` carries the session.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes
from hyperframe.frame import GoAwayFrame

from gatewatch.io.h2_tunnel import H2Tunnel, extended_connect
from gatewatch.io.http1 import WriteFlow, accepted, http_date
from gatewatch.io.interfaces import ClientGone, Headers, RequestHead, header_index
from gatewatch.telemetry.names import RejectReason as R
from gatewatch.telemetry.names import WebSocketEnd

if TYPE_CHECKING:
    from gatewatch.io.fast_listener import RawListener

log = logging.getLogger("gatewatch.listener.h2")

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"  # RFC 9113 §3.4
IDLE_TIMEOUT_S = 75.0  # no open stream for this long: GOAWAY and close (as the HTTP/1.1 keep-alive idle)
READ_CHUNK_ACK = 16 * 1024  # acknowledge consumed request data in steps of at least this (fewer WINDOW_UPDATEs)
# RFC 9113 §8.2.2: fields that are connection-specific in HTTP/1.1 make an HTTP/2 request malformed.
CONNECTION_SPECIFIC = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding",
                                 b"upgrade"})
REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":path", b":authority", b":protocol"})  # RFC 8441 §4
# Response fields that never go on an HTTP/2 response (§8.2.2); the engine already drops hop-by-hop ones.
RESPONSE_DROP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade",
                           "content-length"})
UPGRADE_DROP = RESPONSE_DROP | {"sec-websocket-accept", "date"}  # RFC 8441 §5: the 200 to an extended CONNECT


@dataclass(frozen=True, slots=True)
class H2Settings:
    """A listener's HTTP/2 limits (config `listeners[].http2`)."""

    enabled: bool = True
    max_concurrent_streams: int = 100  # SETTINGS_MAX_CONCURRENT_STREAMS
    max_header_list_size: int = 16384  # SETTINGS_MAX_HEADER_LIST_SIZE: over it, 431 on the stream
    initial_window_size: int = 65535  # SETTINGS_INITIAL_WINDOW_SIZE, per stream (request bodies buffered at most)
    connection_window_size: int = 1 << 20  # the connection's receive window (all streams together)
    max_frame_size: int = 16384  # SETTINGS_MAX_FRAME_SIZE
    max_resets: int = 200  # streams reset by the client (or refused by us) within reset_window_s ...
    reset_window_s: float = 10.0  # ... before the connection ends with GOAWAY ENHANCE_YOUR_CALM
    max_streams_per_s: int = 5000  # new streams per second and connection; over it: REFUSED_STREAM


# RFC 9113 §6.5.2 counts a header list as the sum of name + value + 32 per field. A header block this many times
# the advertised limit is not decoded further (the HPACK decoder refuses it): the peer ignored our limit.
BOMB_FACTOR = 4

H2Observer = Callable[[str, str, str], None]  # (listener, event: connection|stream|reset|goaway, reason)


class H2Body:
    """The request body of one stream: chunks as DATA frames deliver them, acknowledged to the peer (stream and
    connection windows) only when the engine takes them."""

    __slots__ = ("_chunks", "_conn", "_done", "_error", "_sid", "_unacked", "_waiter", "expected", "total")

    def __init__(self, conn: H2Connection, sid: int, expected: int | None):
        self._conn = conn
        self._sid = sid
        self._chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._unacked = 0
        self.total = 0
        self.expected = expected  # the request's content-length, checked against what arrives (§8.1.1)

    def feed(self, data: bytes, flow_len: int) -> None:
        self.total += len(data)
        self._chunks.append((data, flow_len))
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._error = error
            self._wake()

    def release(self) -> int:
        """Flow-controlled bytes received but not consumed (the stream ended without the engine reading them)."""
        left = self._unacked + sum(n for _, n in self._chunks)
        self._chunks.clear()
        self._unacked = 0
        return left

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        while True:
            if self._chunks:
                data, flow_len = self._chunks.popleft()
                self._unacked += flow_len
                if self._unacked >= READ_CHUNK_ACK or not self._chunks:
                    self._conn.acknowledge(self._sid, self._unacked)
                    self._unacked = 0
                if data:
                    yield data
                continue
            if self._error is not None:
                raise self._error
            if self._done:
                return
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


class H2Downstream:
    """Answers one stream. Implements `io.interfaces.Downstream`: HEADERS, DATA within the peer's windows,
    and END_STREAM; `abort` resets the stream (INTERNAL_ERROR), so a partial body can never look complete."""

    __slots__ = ("_conn", "_declared", "_head_only", "_pending", "_sid", "_written", "complete", "started")

    def __init__(self, conn: H2Connection, sid: int, is_head: bool):
        self._conn = conn
        self._sid = sid
        self.started = False
        self.complete = False
        self._head_only = is_head
        self._declared: int | None = None
        self._written = 0
        # The response HEADERS, held until the body's first bytes, the end, or the next loop iteration: a
        # response that ends at once goes out as one HEADERS frame with END_STREAM (a gRPC trailers-only
        # response stays one, PROTOCOL-HTTP2.md).
        self._pending: list[tuple[str, str]] | None = None

    def close_after_response(self) -> None:
        return None  # the connection carries other streams: nothing to close per response

    def _check(self) -> None:
        if self._conn.closed or self._sid in self._conn.gone:
            raise ClientGone()

    def _send_head(self, status: int, headers: Headers, content_length: int | None, end: bool) -> None:
        self.started = True
        fields = [(":status", str(status))]
        for k, v in headers:
            lk = k.lower()
            if lk not in RESPONSE_DROP:
                fields.append((lk, v))
        if not any(k == "date" for k, _ in fields):
            fields.append(("date", http_date().decode()))
        if content_length is not None and status >= 200 and status not in (204, 304):
            fields.append(("content-length", str(content_length)))
            self._declared = content_length
        if status in (204, 304) or status < 200:
            self._head_only = True
        if end or self._head_only:
            self._conn.send_headers(self._sid, fields, True)
            self.complete = True
        else:
            self._pending = fields
            self._conn.listener.loop.call_soon(self._flush_head)

    def _flush_head(self) -> None:
        fields, self._pending = self._pending, None
        if fields is not None and not self._conn.closed and self._sid not in self._conn.gone:
            try:
                self._conn.send_headers(self._sid, fields, False)
            except ClientGone:
                pass

    async def send_trailers(self, trailers: Headers) -> None:
        """End the response with a trailer section (RFC 9113 §8.1; gRPC's grpc-status)."""
        self._check()
        if self.complete:
            return
        fields, self._pending = self._pending, None
        if fields is not None:
            self._conn.send_headers(self._sid, fields, False)
        self._conn.send_headers(self._sid, [(k.lower(), v) for k, v in trailers
                                            if k.lower() not in RESPONSE_DROP], True)
        self.complete = True

    async def start(self, status: int, reason: str | None, headers: Headers, content_length: int | None) -> None:
        self._check()
        self._send_head(status, headers, content_length, False)

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        self._check()
        if self.started:
            return
        self._send_head(status, headers, len(body), not body)
        if body and not self._head_only:
            await self.write(body)
            await self.finish()
        self.complete = True

    async def write(self, chunk: bytes) -> None:
        self._check()
        if not chunk or self._head_only:
            return
        self._written += len(chunk)
        fields, self._pending = self._pending, None
        if fields is not None:
            self._conn.send_headers(self._sid, fields, False)
        await self._conn.send_data(self._sid, chunk)

    async def finish(self) -> None:
        self._check()
        if self.complete:
            return
        if self._declared is not None and self._written != self._declared:
            self.abort()  # the body we relayed is not what the head promised
            return
        fields, self._pending = self._pending, None
        if fields is not None:
            self._conn.send_headers(self._sid, fields, True)
        else:
            self._conn.end_stream(self._sid)
        self.complete = True

    def abort(self) -> None:
        self._pending = None
        self._conn.reset(self._sid, ErrorCodes.INTERNAL_ERROR)

    def done(self) -> None:
        return None

    def upgrade(self, headers: Headers) -> tuple[H2Tunnel, bytes]:
        """RFC 8441 §5: the upstream's 101 answered with `:status 200` (no `Sec-WebSocket-Accept`: the client
        sent no key; `Sec-WebSocket-Protocol`/`-Extensions` go on); returns the stream as the session's client
        connection with the DATA received before it. Raises `ClientGone`."""
        conn, sid = self._conn, self._sid
        tunnel = conn.tunnels.get(sid)
        if tunnel is None or tunnel.closed:
            raise ClientGone()
        self._check()
        fields = [(":status", "200")]
        fields += [(k.lower(), v) for k, v in headers if k.lower() not in UPGRADE_DROP]
        fields.append(("date", http_date().decode()))
        self.started = self.complete = True
        conn.send_headers(sid, fields, False)
        early, tunnel.early = bytes(tunnel.early), bytearray()
        return tunnel, early


class H2Connection:
    """One HTTP/2 client connection: the protocol of its transport (a socket's, or a `TlsSession`)."""

    def __init__(self, listener: RawListener, settings: H2Settings, tls=None):
        self.listener = listener
        self.settings = settings
        self.tls = tls
        self.transport = None
        self.flow = WriteFlow()
        self.closed = False
        self.queue = ()  # the listener's drain looks at `running` and `queue` as for HTTP/1.1 connections
        self.tunnel = None  # ... and at `tunnel` (an HTTP/1.1 connection's WebSocket session; ours are per stream)
        self.tunnels: dict[int, H2Tunnel] = {}  # RFC 8441 streams: handshaking, then carrying a WebSocket session
        self.last_active = 0.0
        self.peer = ("", 0)
        self.sock = ("", 0)
        self.streams: dict[int, tuple[H2Body | None, asyncio.Task | None]] = {}
        self.gone: set[int] = set()  # streams reset or ended under the engine: writes raise ClientGone
        self._windows: dict[int, asyncio.Future] = {}  # streams waiting for the peer's WINDOW_UPDATE
        self._resets: collections.deque[float] = collections.deque()
        self._opened_second = 0
        self._opened_in_second = 0
        self._goaway_sent = False
        cfg = h2.config.H2Configuration(client_side=False, header_encoding=None, validate_inbound_headers=False,
                                        normalize_inbound_headers=False, validate_outbound_headers=False,
                                        normalize_outbound_headers=False)
        conn = h2.connection.H2Connection(cfg)
        conn.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: settings.max_concurrent_streams,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: settings.max_header_list_size,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: settings.initial_window_size,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: settings.max_frame_size,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,  # RFC 8441 §3: WebSocket over extended CONNECT
        })
        # HPACK bomb defence: the decoder refuses a header list far beyond what we advertised, and a dynamic table
        # beyond our SETTINGS_HEADER_TABLE_SIZE (4096, the default; enforced by the hpack decoder).
        conn.decoder.max_header_list_size = settings.max_header_list_size * BOMB_FACTOR
        self.h2 = conn

    # --- asyncio.Protocol ---

    def connection_made(self, transport) -> None:
        accepted(self, transport)
        self._observe("connection", "opened")
        # The initial settings went out with the connection's object; enforcement of concurrency is ours (a
        # stream over the limit gets REFUSED_STREAM, not h2's connection error), so h2's own bound is lifted
        # once they are serialised.
        self.h2.initiate_connection()
        self.h2.local_settings = h2.settings.Settings(client=False, initial_values={
            h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 2**31 - 1,
            h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE: self.settings.max_header_list_size,
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: self.settings.initial_window_size,
            h2.settings.SettingCodes.MAX_FRAME_SIZE: self.settings.max_frame_size,
            h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,
        })
        grow = self.settings.connection_window_size - 65535
        if grow > 0:
            self.h2.increment_flow_control_window(grow)
        self._flush()
        if self.listener.draining:
            self.goaway()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.close()
        self.listener.connections.discard(self)
        for sid, (body, _) in list(self.streams.items()):
            self.gone.add(sid)
            if body is not None:
                body.fail(ClientGone())
        for w in self._windows.values():
            if not w.done():
                w.set_result(None)
        for t in list(self.tunnels.values()):
            t.reset()

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def eof_received(self) -> None:
        return None

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_active = self.listener.loop.time()
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.DenialOfServiceError:
            # an HPACK bomb: a header block far beyond our SETTINGS_MAX_HEADER_LIST_SIZE (RFC 9113 §10.5.1)
            self._observe("goaway", "header_list_too_large")
            self._fail_connection(ErrorCodes.ENHANCE_YOUR_CALM)
            return
        except h2.exceptions.ProtocolError as err:
            # h2 already queued GOAWAY with the fitting code. A content-length the DATA frames contradict is one
            # of these: h2 checks it as they arrive and makes it a connection error (RFC 9113 §8.1.1 asks for a
            # stream error; h2 gives no way to have it so).
            self._observe("goaway", _protocol_reason(err))
            self._flush()
            self.close()
            return
        for ev in events:
            if self.closed:
                return
            handler = _HANDLERS.get(type(ev))
            if handler is not None:
                handler(self, ev)
        self._flush()

    # --- events ---

    def _on_request(self, ev: h2.events.RequestReceived) -> None:
        sid = ev.stream_id
        now = self.listener.loop.time()
        second = int(now)
        if second != self._opened_second:
            self._opened_second, self._opened_in_second = second, 0
        self._opened_in_second += 1
        if self._goaway_sent:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)  # after our GOAWAY's last stream id (§6.8)
            return
        open_streams = len(self.streams) if not self.tunnels else len(self.streams.keys() | self.tunnels.keys())
        if open_streams >= self.settings.max_concurrent_streams or \
                self._opened_in_second > self.settings.max_streams_per_s:
            self.h2.reset_stream(sid, ErrorCodes.REFUSED_STREAM)  # §5.1.2; the client may retry it (§8.7)
            self._observe("reset", "refused_stream")
            self._count_reset(now)
            return
        parsed = _request(ev.headers, self.settings.max_header_list_size)
        if isinstance(parsed, tuple) and len(parsed) == 2:
            status, reason = parsed
            if status == 0:
                self._observe("reset", "protocol_error")
                self.listener.reject(self.peer, self.sock, 400, reason)  # recorded, the stream is reset
                self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)  # malformed (§8.1.1)
                return
            self._refuse(sid, status, reason)
            return
        method, target, headers, expected = parsed
        has_body = not ev.stream_ended
        websocket = len(headers) > 2 and headers[-2][0] == "upgrade"  # only an extended CONNECT's (h2_tunnel)
        if websocket:
            if ev.stream_ended:  # RFC 8441 §5: the stream is the session; ended at once, it cannot be one
                self._observe("reset", "protocol_error")
                self.listener.reject(self.peer, self.sock, 400, R.WEBSOCKET_INVALID_HANDSHAKE.value)
                self.h2.reset_stream(sid, ErrorCodes.PROTOCOL_ERROR)
                return
            has_body = False  # its DATA is the session's, once upgraded
            self.tunnels[sid] = H2Tunnel(self, sid)
        head = RequestHead(method=method, target=target, version="2", headers=headers, index=header_index(headers),
                           client_address=self.peer[0], client_port=self.peer[1], scheme=self.listener.scheme,
                           server_address=self.sock[0], server_port=self.sock[1], listener=self.listener.name,
                           has_body=has_body, tls=self.tls)
        body = H2Body(self, sid, expected) if has_body else None
        down = H2Downstream(self, sid, method == "HEAD")
        task = self.listener.loop.create_task(self._serve(sid, head, body, down))
        self.streams[sid] = (body, task)
        self._observe("stream", "opened")

    def _on_data(self, ev: h2.events.DataReceived) -> None:
        tunnel = self.tunnels.get(ev.stream_id)
        if tunnel is not None:
            tunnel.data(ev.data, ev.flow_controlled_length)
            return
        body = self.streams.get(ev.stream_id, (None, None))[0]
        if body is None:  # a stream we refused or already answered: give the window back at once
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            return
        body.feed(ev.data, ev.flow_controlled_length)
        if body.expected is not None and body.total > body.expected:
            self._malformed(ev.stream_id, body)

    def _on_end(self, ev: h2.events.StreamEnded) -> None:
        tunnel = self.tunnels.get(ev.stream_id)
        if tunnel is not None:
            tunnel.ended()
            return
        body = self.streams.get(ev.stream_id, (None, None))[0]
        if body is not None:
            if body.expected is not None and body.total != body.expected:
                self._malformed(ev.stream_id, body)
                return
            body.finish()

    def _on_reset(self, ev: h2.events.StreamReset) -> None:
        sid = ev.stream_id
        self._stream_gone(sid)
        tunnel = self.tunnels.get(sid)
        if tunnel is not None:
            tunnel.reset()
        if ev.remote_reset:
            self._observe("reset", "client_reset")
            self._count_reset(self.listener.loop.time())

    def _on_window(self, ev: h2.events.WindowUpdated) -> None:
        if ev.stream_id == 0:
            waiting, self._windows = self._windows, {}
            for w in waiting.values():
                if not w.done():
                    w.set_result(None)
            for t in list(self.tunnels.values()):
                t.window_opened()
        elif ev.stream_id in self.tunnels:
            self.tunnels[ev.stream_id].window_opened()
        else:
            w = self._windows.pop(ev.stream_id, None)
            if w is not None and not w.done():
                w.set_result(None)

    def _on_settings(self, ev: h2.events.RemoteSettingsChanged) -> None:
        waiting, self._windows = self._windows, {}  # a new INITIAL_WINDOW_SIZE may open every stream's window
        for w in waiting.values():
            if not w.done():
                w.set_result(None)
        for t in list(self.tunnels.values()):
            t.window_opened()

    def _on_terminated(self, ev: h2.events.ConnectionTerminated) -> None:
        self._flush()
        self.close()

    # --- the defences ---

    def _count_reset(self, now: float) -> None:
        """Rapid reset (CVE-2023-44487): too many streams reset by the client (or refused by us) in the window."""
        resets = self._resets
        resets.append(now)
        while resets and now - resets[0] > self.settings.reset_window_s:
            resets.popleft()
        if len(resets) > self.settings.max_resets:
            self._observe("goaway", "rapid_reset")
            self._fail_connection(ErrorCodes.ENHANCE_YOUR_CALM)

    def _fail_connection(self, code: ErrorCodes) -> None:
        if not self.closed:
            try:
                self.h2.close_connection(code, last_stream_id=self.h2.highest_inbound_stream_id)
            except h2.exceptions.ProtocolError:
                pass
            self._flush()
            for sid in list(self.streams):
                self._stream_gone(sid)
            self.close()

    def _malformed(self, sid: int, body: H2Body) -> None:
        """A content-length that the DATA frames contradict (RFC 9113 §8.1.1): stream error PROTOCOL_ERROR."""
        body.fail(ClientGone())
        self._observe("reset", "protocol_error")
        self.reset(sid, ErrorCodes.PROTOCOL_ERROR)

    def _refuse(self, sid: int, status: int, reason: str) -> None:
        """Answer a request we will not hand to the engine (recorded there as a refusal) and end the stream."""
        body, request_id = self.listener.reject(self.peer, self.sock, status, reason)
        self._observe("stream", "refused")
        self.h2.send_headers(sid, [(":status", str(status)), ("content-type", "application/json"),
                                   ("x-request-id", request_id), ("cache-control", "no-store"),
                                   ("content-length", str(len(body))), ("date", http_date().decode())])
        self.h2.send_data(sid, body, end_stream=True)

    # --- serving ---

    async def _serve(self, sid: int, head: RequestHead, body: H2Body | None, down: H2Downstream) -> None:
        try:
            await self.listener.handler(head, body.__aiter__() if body is not None else _no_body(), down)
        except Exception:  # the engine catches everything; this is the last line of defence
            log.exception("unhandled error serving an HTTP/2 stream")
            self.reset(sid, ErrorCodes.INTERNAL_ERROR)
        finally:
            if not down.complete and not self.closed and sid not in self.gone:
                self.reset(sid, ErrorCodes.INTERNAL_ERROR)
            self._stream_gone(sid)
            tunnel = self.tunnels.get(sid)
            if tunnel is not None and tunnel.tunnel is None:  # an extended CONNECT answered without an upgrade
                self._unupgraded(tunnel)
            self._flush()
            self.last_active = self.listener.loop.time()
            if self._goaway_sent and not self.streams and not self.tunnels:
                self.close()

    def _unupgraded(self, tunnel: H2Tunnel) -> None:
        """The response went out whole (or the stream was reset): the client's half of the stream has no use
        any more: RST_STREAM NO_ERROR asks it to stop sending (RFC 9113 §8.1)."""
        del self.tunnels[tunnel.sid]
        tunnel.closed = True
        n, tunnel._unacked = tunnel._unacked, 0
        if not self.closed and not tunnel.remote_ended and tunnel.sid not in self.gone:
            try:
                self.h2.reset_stream(tunnel.sid, ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass
        elif n and not self.closed:
            self.acknowledge(tunnel.sid, n)

    def tunnel_over(self, tunnel: H2Tunnel) -> None:
        """An RFC 8441 stream is done with (`H2Tunnel`)."""
        if self.tunnels.get(tunnel.sid) is tunnel:
            del self.tunnels[tunnel.sid]
        self.last_active = self.listener.loop.time()
        if self._goaway_sent and not self.streams and not self.tunnels:
            self.close()

    def _stream_gone(self, sid: int) -> None:
        entry = self.streams.pop(sid, None)
        w = self._windows.pop(sid, None)
        if w is not None and not w.done():
            w.set_result(None)
        if entry is None:
            return
        body, task = entry
        if task is not None and not task.done():
            self.gone.add(sid)  # discarded when the task ends (below, via `streams` no longer holding it)
            task.add_done_callback(lambda _t, s=sid: self.gone.discard(s))
        if body is not None:
            body.fail(ClientGone())
            left = body.release()
            if left and not self.closed:
                try:
                    self.h2.acknowledge_received_data(left, sid)  # the connection window, at least
                except h2.exceptions.ProtocolError:
                    pass

    # --- called by the bodies and downstreams ---

    def acknowledge(self, sid: int, n: int) -> None:
        if self.closed or n <= 0:
            return
        try:
            self.h2.acknowledge_received_data(n, sid)
        except (h2.exceptions.ProtocolError, KeyError):
            return
        self._flush()

    def send_headers(self, sid: int, fields: list[tuple[str, str]], end: bool) -> None:
        try:
            self.h2.send_headers(sid, fields, end_stream=end)
        except (h2.exceptions.ProtocolError, KeyError) as err:
            raise ClientGone() from err
        self._flush()

    async def send_data(self, sid: int, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self.closed or sid in self.gone:
                raise ClientGone()
            try:
                window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
            except (h2.exceptions.ProtocolError, KeyError) as err:
                raise ClientGone() from err
            if window <= 0:
                w = self._windows.get(sid)
                if w is None or w.done():
                    w = self._windows[sid] = self.listener.loop.create_future()
                await w  # WINDOW_UPDATE, SETTINGS, or the stream/connection ending
                continue
            piece = bytes(view[:window])
            view = view[window:]
            try:
                self.h2.send_data(sid, piece)
            except (h2.exceptions.ProtocolError, KeyError) as err:
                raise ClientGone() from err
            self._flush()
            if self.flow.paused:
                await self.flow.wait()

    def end_stream(self, sid: int) -> None:
        try:
            self.h2.end_stream(sid)
        except (h2.exceptions.ProtocolError, KeyError) as err:
            raise ClientGone() from err
        self._flush()

    def reset(self, sid: int, code: ErrorCodes) -> None:
        if self.closed or sid in self.gone:
            return
        try:
            self.h2.reset_stream(sid, code)
        except (h2.exceptions.ProtocolError, KeyError):
            pass
        self._stream_gone(sid)
        self._flush()

    # --- the listener's side ---

    @property
    def running(self) -> bool:
        return bool(self.streams) or bool(self.tunnels)

    def unread(self) -> bool:
        return False

    def goaway(self) -> None:
        """Drain (RFC 9113 §6.8): GOAWAY NO_ERROR naming the last stream we processed; open streams finish, new
        ones are refused; the connection closes when the last stream ends (or the listener's grace runs out)."""
        if self._goaway_sent or self.closed:
            return
        self._goaway_sent = True
        self._observe("goaway", "drain")
        # Written around the state machine: h2's close_connection() would forbid the frames the open streams
        # still have to send. New streams are refused in _on_request.
        for t in list(self.tunnels.values()):
            if t.tunnel is not None:  # a WebSocket session: close 1001 to both sides (RFC 6455 §7.4.1), ahead of
                t.tunnel.session.shutdown(WebSocketEnd.DRAIN)  # the GOAWAY (some clients stop reading at one)
        frame = GoAwayFrame(0)
        frame.last_stream_id = self.h2.highest_inbound_stream_id
        frame.error_code = ErrorCodes.NO_ERROR
        self._flush()
        self.transport.write(frame.serialize())
        if not self.streams and not self.tunnels:
            self.close()

    def sweep(self, now: float) -> None:
        if not self.closed and not self.streams and not self.tunnels and now - self.last_active > IDLE_TIMEOUT_S:
            self.goaway()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None and not self.closed:
            self.transport.write(data)

    flush = _flush

    def _observe(self, event: str, reason: str) -> None:
        obs = getattr(self.listener, "on_h2", None)
        if obs is not None:
            obs(self.listener.name, event, reason)

    def close(self) -> None:
        if not self.closed:
            self._flush()
            self.closed = True
            self.flow.close()
            if self.transport is not None:
                self.transport.close()

    def abort(self) -> None:
        self.closed = True
        self.flow.close()
        if self.transport is not None:
            self.transport.abort()


async def _no_body():
    return
    yield b""  # pragma: no cover - makes this an async generator


_HANDLERS = {
    h2.events.RequestReceived: H2Connection._on_request,
    h2.events.DataReceived: H2Connection._on_data,
    h2.events.StreamEnded: H2Connection._on_end,
    h2.events.StreamReset: H2Connection._on_reset,
    h2.events.WindowUpdated: H2Connection._on_window,
    h2.events.RemoteSettingsChanged: H2Connection._on_settings,
    h2.events.ConnectionTerminated: H2Connection._on_terminated,
}


def _protocol_reason(err: Exception) -> str:
    if isinstance(err, h2.exceptions.FlowControlError):
        return "flow_control_error"
    if isinstance(err, h2.exceptions.FrameTooLargeError):
        return "frame_size_error"
    return "protocol_error"


def _request(raw, max_list: int):
    """(method, target, headers, content-length) of a request's header list, or (status, error.type): status 0
    for a malformed request (RFC 9113 §8.1.1: stream error PROTOCOL_ERROR), else the status to answer with."""
    pseudo: dict[bytes, bytes] = {}
    headers: list[tuple[str, str]] = []
    size = 0
    regular = False
    for name, value in raw:
        size += len(name) + len(value) + 32  # §6.5.2
        bare = name[1:] if name[:1] == b":" else name
        if not bare or any(c in value for c in (0, 10, 13)) or any(c in bare for c in (0, 10, 13, 58)):
            return 0, R.PARSE_ERROR.value  # §8.2.1: NUL, CR, LF, or a colon outside the pseudo-header prefix
        if name.startswith(b":"):
            # §8.3: only the defined request pseudo-headers, once each, before every regular field
            if regular or name not in REQUEST_PSEUDO or name in pseudo:
                return 0, R.PARSE_ERROR.value
            pseudo[name] = value
            continue
        regular = True
        if name != name.lower():
            return 0, R.PARSE_ERROR.value  # §8.2.1: upper-case field names are malformed
        if name in CONNECTION_SPECIFIC or (name == b"te" and value.strip().lower() != b"trailers"):
            return 0, R.PARSE_ERROR.value  # §8.2.2
        headers.append((name.decode("latin-1"), value.decode("latin-1")))
    if size > max_list:
        return 431, R.HEADER_TOO_LARGE.value  # our SETTINGS_MAX_HEADER_LIST_SIZE (§10.5.1)
    method = pseudo.get(b":method")
    if method is None:
        return 0, R.PARSE_ERROR.value
    if method == b"CONNECT":
        if b":protocol" in pseudo:  # RFC 8441 §4: extended CONNECT; WebSocket is the protocol offered
            return extended_connect(pseudo, headers)
        return 501, R.UNSUPPORTED_METHOD.value  # CONNECT tunnels (§8.5) are not offered
    if b":protocol" in pseudo:
        return 0, R.PARSE_ERROR.value  # RFC 8441 §4: `:protocol` only on CONNECT
    path = pseudo.get(b":path")
    if b":scheme" not in pseudo or not path:
        return 0, R.PARSE_ERROR.value  # §8.3.1: :method, :scheme and a non-empty :path
    if not method.isalpha() and not all(33 <= c < 127 for c in method):
        return 0, R.PARSE_ERROR.value
    authority = pseudo.get(b":authority")
    index_host = [v for k, v in headers if k == "host"]
    if authority is not None:
        auth = authority.decode("latin-1")
        if any(h != auth for h in index_host):
            return 400, R.INVALID_HOST.value  # §8.3.1: a Host that disagrees with :authority
        if not index_host:
            headers.insert(0, ("host", auth))  # the HTTP/1.1 view of it (RFC 9113 §8.3.1)
    elif len(index_host) != 1:
        return 400, R.INVALID_HOST.value
    expected = None
    for k, v in headers:
        if k == "content-length":
            v = v.strip()
            if not v.isdigit() or (expected is not None and int(v) != expected):
                return 0, R.INVALID_CONTENT_LENGTH.value
            expected = int(v)
    return method.decode("ascii"), path.decode("latin-1"), tuple(headers), expected
