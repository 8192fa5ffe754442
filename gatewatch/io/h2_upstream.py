"""Upstreams over HTTP/2 (a pool, or an edge's URL upstream, with `protocol: h2`; RFC 9113), for gRPC end to end
(through both tiers) and h2-only backends.

One `H2ClientConnection` per instance (host, port), multiplexing the attempts as streams, replaced when it dies
or the instance sends GOAWAY; h2c with prior knowledge (RFC 9113 §3.3). `H2Upstream.send` implements the
forwarder's `send` for those pools: the request head as HEADERS (`:authority` from Host), the body streamed as DATA
within the instance's windows, and an `H2Response` whose body is acknowledged as it is consumed (backpressure to
the instance), and whose `trailers` (gRPC's `grpc-status`) are there once the body has ended.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings
from h2.errors import ErrorCodes

from gatewatch.io.http1 import no_delay
from gatewatch.io.interfaces import (
    AttemptTiming,
    ClientGone,
    Headers,
    UpstreamFailure,
    UpstreamRequest,
    connect_failure,
)
from gatewatch.io.tls import UpstreamTLS, failure_of
from gatewatch.telemetry.names import ErrorType

# Never sent on HTTP/2 (RFC 9113 §8.2.2); `host` becomes `:authority` (§8.3.1).
DROP = frozenset({"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "host", "te"})
WINDOW = 1 << 20  # our receive window per stream and connection: what an instance may send ahead of the client


class _Stream:
    __slots__ = ("chunks", "ended", "error", "head", "trailers", "waiter", "window")

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.head: asyncio.Future = loop.create_future()
        self.chunks: collections.deque[tuple[bytes, int]] = collections.deque()
        self.ended = False
        self.error: UpstreamFailure | None = None
        self.waiter: asyncio.Future | None = None
        self.trailers: Headers = ()
        self.window: asyncio.Future | None = None

    def wake(self) -> None:
        for w in (self.waiter, self.window):
            if w is not None and not w.done():
                w.set_result(None)


class H2ClientConnection(asyncio.Protocol):
    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.goaway = False
        self.retired = False  # replaced by a new connection: closed once its last stream ends
        self.streams: dict[int, _Stream] = {}
        self.peer: tuple[str, int] | None = None
        cfg = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.h2 = h2.connection.H2Connection(cfg)
        self.h2.local_settings = h2.settings.Settings(client=True, initial_values={
            h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW, h2.settings.SettingCodes.ENABLE_PUSH: 0})

    def connection_made(self, transport) -> None:
        self.transport = transport
        no_delay(transport)
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1]) if peer else None
        self.h2.initiate_connection()
        self.h2.increment_flow_control_window(WINDOW - 65535)
        self.flush()

    def connection_lost(self, exc) -> None:
        self.closed = True
        for s in self.streams.values():
            self._fail(s, UpstreamFailure(ErrorType.UPSTREAM_RESET, "the HTTP/2 connection closed",
                                          before_response=not s.head.done()))

    def _fail(self, s: _Stream, failure: UpstreamFailure) -> None:
        if not s.head.done():
            s.head.set_exception(failure)
        elif not s.ended and s.error is None:
            s.error = failure
        s.wake()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data and not self.closed:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as err:
            self.flush()
            self.transport.close()
            for s in self.streams.values():
                self._fail(s, UpstreamFailure(ErrorType.PROTOCOL_ERROR, str(err), before_response=not s.head.done()))
            return
        for ev in events:
            s = self.streams.get(getattr(ev, "stream_id", 0) or 0)
            if isinstance(ev, h2.events.ResponseReceived) and s is not None:
                if not s.head.done():
                    s.head.set_result(tuple(ev.headers))
                if ev.stream_ended is not None:
                    s.ended = True
            elif isinstance(ev, h2.events.DataReceived):
                if s is None:
                    self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                else:
                    s.chunks.append((ev.data, ev.flow_controlled_length))
                    s.wake()
            elif isinstance(ev, h2.events.TrailersReceived) and s is not None:
                s.trailers = tuple(ev.headers)
            elif isinstance(ev, h2.events.StreamEnded) and s is not None:
                s.ended = True
                s.wake()
            elif isinstance(ev, h2.events.StreamReset) and s is not None:
                self._fail(s, UpstreamFailure(ErrorType.UPSTREAM_RESET, f"stream reset ({ev.error_code!r})",
                                              before_response=not s.head.done()))
            elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                targets = self.streams.values() if not getattr(ev, "stream_id", 0) else [s] if s else []
                for t in targets:
                    if t.window is not None and not t.window.done():
                        t.window.set_result(None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.goaway = True  # no new streams here; those above last_stream_id were not processed
                for sid, t in self.streams.items():
                    if ev.last_stream_id is not None and sid > ev.last_stream_id:
                        self._fail(t, UpstreamFailure(ErrorType.UPSTREAM_RESET, "GOAWAY before the stream"))
        self.flush()

    @property
    def usable(self) -> bool:
        return not self.closed and not self.goaway and self.h2.open_outbound_streams < \
            self.h2.remote_settings.max_concurrent_streams

    async def send_body(self, sid: int, s: _Stream, body: AsyncIterator[bytes]) -> None:
        try:
            async for chunk in body:
                view = memoryview(chunk)
                while view:
                    if self.closed or s.error is not None or sid not in self.streams:
                        return
                    window = min(self.h2.local_flow_control_window(sid), self.h2.max_outbound_frame_size)
                    if window <= 0:
                        s.window = self.loop.create_future()
                        await s.window
                        s.window = None
                        continue
                    self.h2.send_data(sid, bytes(view[:window]))
                    view = view[window:]
                    self.flush()
            if not self.closed and sid in self.streams:
                self.h2.end_stream(sid)
                self.flush()
        except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
            return
        except ClientGone:
            self.cancel(sid)

    def cancel(self, sid: int) -> None:
        s = self.streams.pop(sid, None)
        if s is not None and not self.closed:
            try:
                if not s.ended:
                    self.h2.reset_stream(sid, ErrorCodes.CANCEL)
                left = sum(n for _, n in s.chunks)
                if left:
                    self.h2.acknowledge_received_data(left, sid)
            except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                pass
            self.flush()
        if self.retired and not self.streams and not self.closed:
            self.transport.close()


class H2Response:
    """`io.interfaces.UpstreamResponse` of one stream; `trailers` filled once the body has ended."""

    whole = None  # always streamed (and trailers may follow)

    def __init__(self, conn: H2ClientConnection, sid: int, s: _Stream, headers: Headers, idle_s: float):
        self._conn, self._sid, self._s, self._idle_s = conn, sid, s, idle_s
        status = next((v for k, v in headers if k == ":status"), "502")
        self.status = int(status) if status.isdigit() else 502
        self.reason = ""
        self.headers: Headers = tuple((k, v) for k, v in headers if not k.startswith(":"))
        self.peer_address, self.peer_port = conn.peer if conn.peer else (None, None)
        self.trailers_only = s.ended and not s.chunks

    @property
    def trailers(self) -> Headers:
        return self._s.trailers

    async def body(self) -> AsyncIterator[bytes]:
        s, conn = self._s, self._conn
        while True:
            if s.chunks:
                data, n = s.chunks.popleft()
                try:
                    conn.h2.acknowledge_received_data(n, self._sid)
                    conn.flush()
                except (h2.exceptions.ProtocolError, h2.exceptions.StreamClosedError):
                    pass
                if data:
                    yield data
                continue
            if s.error is not None:
                raise s.error
            if s.ended:
                return
            s.waiter = conn.loop.create_future()
            try:
                await asyncio.wait_for(s.waiter, self._idle_s)
            except TimeoutError:
                raise UpstreamFailure(ErrorType.READ_TIMEOUT, f"no data within {self._idle_s}s",
                                      before_response=False) from None
            finally:
                s.waiter = None

    def close(self) -> None:
        self._conn.cancel(self._sid)


class H2Upstream:
    """The h2 connections of the pools that speak HTTP/2, one per instance."""

    def __init__(self) -> None:
        self._conns: dict[tuple, H2ClientConnection] = {}  # (host, port, TLS context or None)
        self._connecting: dict[tuple, asyncio.Future] = {}

    async def _connection(self, host: str, port: int, connect_s: float, timing: AttemptTiming | None,
                          tls: UpstreamTLS | None) -> H2ClientConnection:
        key = (host, port, tls.context if tls is not None else None)
        conn = self._conns.get(key)
        if conn is not None and conn.usable:
            return conn
        if conn is not None:
            conn.retired = True
            if not conn.streams and not conn.closed:
                conn.transport.close()
        pending = self._connecting.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        loop = asyncio.get_running_loop()
        fut = self._connecting[key] = loop.create_future()
        start = loop.time()
        try:
            ssl_args = {"ssl": tls.context, "server_hostname": tls.server_name or host} if tls is not None else {}
            _, conn = await asyncio.wait_for(
                loop.create_connection(lambda: H2ClientConnection(loop), host, port, **ssl_args), connect_s)
            if tls is not None:
                alpn = conn.transport.get_extra_info("ssl_object").selected_alpn_protocol()
                if alpn != "h2":  # RFC 9113 §3.2: without ALPN h2 the server does not speak HTTP/2 here
                    conn.transport.close()
                    raise UpstreamFailure(ErrorType.PROTOCOL_ERROR, f"the instance did not select ALPN h2 ({alpn})")
        except UpstreamFailure as failure:
            fut.set_exception(failure)
            fut.exception()
            raise
        except ssl.SSLError as err:
            kind, message = failure_of(err)
            failure = UpstreamFailure(ErrorType.UPSTREAM_TLS_ERROR, message, tls_failure=kind.value)
            fut.set_exception(failure)
            fut.exception()
            raise failure from None
        except TimeoutError:
            failure = UpstreamFailure(ErrorType.CONNECT_TIMEOUT, f"no connection within {connect_s}s")
            fut.set_exception(failure)
            fut.exception()
            raise failure from None
        except OSError as err:
            failure = connect_failure(err)
            fut.set_exception(failure)
            fut.exception()
            raise failure from None
        finally:
            self._connecting.pop(key, None)
        if timing is not None:
            timing.connect_s = loop.time() - start
        self._conns[key] = conn
        fut.set_result(conn)
        return conn

    async def send(self, request: UpstreamRequest, body: AsyncIterator[bytes] | None, connect_s: float,
                   response_s: float, idle_s: float, timing: AttemptTiming | None = None,
                   tls: UpstreamTLS | None = None) -> H2Response:
        conn = await self._connection(request.host, request.port, connect_s, timing, tls)
        authority = next((v for k, v in request.headers if k.lower() == "host"), f"{request.host}:{request.port}")
        fields = [(":method", request.method), (":scheme", request.scheme), (":authority", authority),
                  (":path", request.target)]
        grpc = False
        for k, v in request.headers:
            lk = k.lower()
            if lk not in DROP:
                fields.append((lk, v))
                if lk == "content-type" and v.startswith("application/grpc"):
                    grpc = True
        if grpc:
            fields.append(("te", "trailers"))  # gRPC requires it (PROTOCOL-HTTP2.md); the only TE allowed
        sid = conn.h2.get_next_available_stream_id()
        s = conn.streams[sid] = _Stream(conn.loop)
        has_body = body is not None and request.has_body
        try:
            conn.h2.send_headers(sid, fields, end_stream=not has_body)
        except h2.exceptions.ProtocolError as err:
            conn.streams.pop(sid, None)
            raise UpstreamFailure(ErrorType.PROTOCOL_ERROR, str(err)) from None
        conn.flush()
        if timing is not None:
            timing.request_sent_s = 0.0
        start = conn.loop.time()
        pump = conn.loop.create_task(conn.send_body(sid, s, body)) if has_body else None
        try:
            headers = await asyncio.wait_for(asyncio.shield(s.head), response_s)
        except TimeoutError:
            conn.cancel(sid)
            if pump is not None:
                pump.cancel()
            raise UpstreamFailure(ErrorType.RESPONSE_TIMEOUT, f"no response head within {response_s}s") from None
        except UpstreamFailure:
            conn.streams.pop(sid, None)
            if pump is not None:
                pump.cancel()
            raise
        if timing is not None:
            timing.ttfb_s = conn.loop.time() - start
        return H2Response(conn, sid, s, headers, idle_s)

    async def close(self) -> None:
        for conn in self._conns.values():
            if not conn.closed:
                conn.transport.close()
        self._conns.clear()
