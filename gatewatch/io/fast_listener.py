"""The client I/O end on a raw asyncio protocol with llhttp's strict request parser (httptools).

Per connection: bytes → parser callbacks → one `_Exchange` per request, handled strictly in order (pipelined
requests wait their turn; their bodies are buffered up to the high-water mark, then reading pauses).

Two ways to hand a request to the engine, on the same `_Downstream`:
- the **synchronous** one, for a bodiless request arriving on an idle connection (the common case): the parser's
  `on_message_complete` calls `handle_now` and the engine answers from callbacks (`respond_now`), signalling the
  end with `done()`; no task, future or coroutine per request;
- the **serving task**, one per connection, for everything else (bodies, `Expect`, pipelined requests queued
  behind another), awaiting `handler`. A connection switches between the two only between exchanges.

Owned here: framing (Content-Length / chunked, both ways), limits (request line, header bytes and count),
`Expect: 100-continue` (answered on the first body read, so a refusal gets its final status instead),
keep-alive (reused only after a clean exchange whose request body was read to the end), idle and header
timeouts, and write backpressure. A request llhttp rejects (framing conflicts, bad syntax, oversize) is
answered 400/408/414/417/431/501 and recorded through `Engine.reject`, then the connection is closed
(after the responses to requests pipelined before it).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import httptools

from gatewatch.io.http1 import NO_BODY, REASONS, BodyQueue, WriteFlow, chunk_frame, http_date, serialize_head
from gatewatch.io.interfaces import ClientGone, Headers, Rejecter, RequestHandler, RequestHead, SyncRequestHandler
from gatewatch.telemetry.names import RejectReason as R

log = logging.getLogger("gatewatch.listener")

MAX_URL = 8192
MAX_HEADERS = 100
IDLE_TIMEOUT_S = 75.0  # keep-alive idle, like nginx's default; above typical client pool idle timeouts
HEAD_TIMEOUT_S = 30.0  # a request head must arrive within this (slowloris)
DRAIN_LIMIT = 64 * 1024  # unread request body we are willing to read and discard to keep a connection
MAX_PIPELINE = 16  # queued requests per connection before parsing stops and reading pauses
FEED_SLICE = 16 * 1024  # parse at most this much between checks of the queue length


class _Exchange:
    __slots__ = ("head", "body", "expect_continue", "keep_alive", "continue_sent", "is_head", "http10", "started",
                 "now")

    def __init__(self, head: RequestHead, body: BodyQueue, keep_alive: bool, expect_continue: bool):
        self.head = head
        self.body = body
        self.keep_alive = keep_alive
        self.expect_continue = expect_continue
        self.continue_sent = False
        self.is_head = head.method == "HEAD"
        self.http10 = head.version == "1.0"
        self.started = False  # the engine has begun handling it
        self.now = False  # handled on the synchronous path (`handle_now`) once its message is complete


class _Downstream:
    """Answers one exchange. Implements `io.interfaces.Downstream`."""

    __slots__ = ("_conn", "_ex", "started", "complete", "_chunked", "_declared", "_written", "_close_after",
                 "_pending", "_done")

    def __init__(self, conn: "HttpConnection", ex: _Exchange):
        self._conn = conn
        self._ex = ex
        self.started = False
        self.complete = False
        self._chunked = False
        self._declared: int | None = None
        self._written = 0
        self._close_after = not ex.keep_alive
        self._pending: bytes | None = None
        self._done = False

    def close_after_response(self) -> None:
        self._close_after = True

    def _head(self, status: int, reason: str | None, headers: Headers, content_length: int | None) -> bytes:
        """The serialized response head; sets the framing this response's body will use."""
        ex = self._ex
        self.started = True
        extra = [b"Date: " + http_date() + b"\r\n"] if not any(k.lower() == "date" for k, _ in headers) else []
        no_body = status < 200 or status in (204, 304)
        if no_body:
            content_length = None
        elif content_length is not None:
            self._declared = content_length
            extra.append(b"Content-Length: %d\r\n" % content_length)
        elif ex.http10:
            self._close_after = True  # HTTP/1.0 has no chunked encoding: the close ends the body
        else:
            self._chunked = True
            extra.append(b"Transfer-Encoding: chunked\r\n")
        if self._close_after:
            extra.append(b"Connection: close\r\n")
        elif ex.http10:
            extra.append(b"Connection: keep-alive\r\n")
        line = b"HTTP/1.1 %d %s\r\n" % (status, (reason or REASONS.get(status, "Unknown")).encode("latin-1"))
        if no_body or ex.is_head:
            self._declared = None
            self._chunked = False
            ex.is_head = True  # nothing more goes on the wire for this response
        return serialize_head(line, headers, extra)

    async def start(self, status: int, reason: str | None, headers: Headers, content_length: int | None) -> None:
        if self._conn.closed:
            raise ClientGone()
        # Held back and sent with the first body chunk (or at finish): one write instead of two. If the body
        # does not follow within this loop iteration (a streaming upstream), the head goes out on its own.
        self._pending = self._head(status, reason, headers, content_length)
        self._conn.listener.loop.call_soon(self._flush_head)

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        self.respond_now(status, reason, headers, body)

    def respond_now(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        conn = self._conn
        if conn.closed:
            raise ClientGone()
        if self.started:
            return
        head = self._head(status, reason, headers, len(body))
        conn.transport.write(head if self._ex.is_head or not body else head + body)
        self.complete = True

    async def write(self, chunk: bytes) -> None:
        conn = self._conn
        if conn.closed:
            raise ClientGone()
        if not chunk or self._ex.is_head:
            return
        self._written += len(chunk)
        pending = self._pending
        if pending is not None:
            self._pending = None
            if self._chunked:
                conn.transport.writelines((pending, *chunk_frame(chunk)))
            else:
                conn.transport.writelines((pending, chunk))
        elif self._chunked:
            conn.transport.writelines(chunk_frame(chunk))
        else:
            conn.transport.write(chunk)
        if conn.flow.paused:
            await conn.flow.wait()
            if conn.closed:
                raise ClientGone()

    async def finish(self) -> None:
        conn = self._conn
        if conn.closed:
            raise ClientGone()
        if self._declared is not None and self._written != self._declared:
            # The body we relayed is not what the head promised: never let it look complete.
            self.abort()
            return
        pending, self._pending = self._pending, None
        if self._chunked:
            conn.transport.write(pending + b"0\r\n\r\n" if pending else b"0\r\n\r\n")
        elif pending:
            conn.transport.write(pending)
        self.complete = True

    def _flush_head(self) -> None:
        pending, self._pending = self._pending, None
        if pending is not None and not self._conn.closed:
            self._conn.transport.write(pending)

    def abort(self) -> None:
        self._pending = None
        self._conn.abort()

    def done(self) -> None:
        """The engine is finished with the exchange: for one handled synchronously, the connection moves on."""
        if self._ex.now and not self._done:
            self._done = True
            self._conn.exchange_done(self)

    @property
    def close_after(self) -> bool:
        return self._close_after


class HttpConnection(asyncio.Protocol):
    __slots__ = ("listener", "transport", "parser", "flow", "closed", "rejected", "_pipeline_paused", "_inbuf",
                 "queue", "parsing", "running", "_serving", "_idle", "_url", "_headers", "_index", "_header_bytes",
                 "_hosts", "_in_trailers", "last_active", "head_started", "peer", "sock", "now_busy")

    def __init__(self, listener: "RawListener"):
        self.listener = listener
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.flow = WriteFlow()
        self.closed = False
        self.rejected: tuple[int, str] | None = None  # an unparseable request waits for earlier answers
        self._pipeline_paused = False
        self._inbuf: bytearray | None = None  # bytes not parsed yet because too many requests are queued
        self.queue: collections.deque[_Exchange] = collections.deque()
        self.parsing: _Exchange | None = None
        self.running = False  # an exchange is being handled (the sweeps leave the connection alone)
        self.now_busy = False  # that exchange is on the synchronous path: the serving task must not start another
        # One serving task per connection, started by its first request, waiting on `_idle` between requests:
        # cheaper than a task per request on a keep-alive connection. It ends when the connection closes.
        self._serving: asyncio.Task | None = None
        self._idle: asyncio.Future | None = None
        self._url = bytearray()
        self._headers: list[tuple[str, str]] = []
        self._index: dict[str, str] = {}
        self._header_bytes = 0
        self._hosts = 0
        self._in_trailers = False
        self.last_active = 0.0  # loop time of the last byte in or the last response out (idle sweep)
        self.head_started: float | None = None  # loop time a request head began arriving (slowloris sweep)
        self.peer = ("", 0)
        self.sock = ("", 0)

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        sock = transport.get_extra_info("sockname")
        self.peer = (peer[0], peer[1]) if peer else ("", 0)
        self.sock = (sock[0], sock[1]) if sock else (self.listener.host, self.listener.port)
        s = transport.get_extra_info("socket")
        if s is not None:
            try:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self.listener.connections.add(self)
        self.last_active = self.listener.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.close()
        self._wake()
        self.listener.connections.discard(self)
        for ex in list(self.queue) + ([self.parsing] if self.parsing else []):
            ex.body.fail(ClientGone())

    def pause_writing(self) -> None:
        self.flow.pause()

    def resume_writing(self) -> None:
        self.flow.resume()

    def data_received(self, data: bytes) -> None:
        self.last_active = self.listener.loop.time()
        if self._inbuf:
            self._inbuf += data
        else:
            self._inbuf = bytearray(data) if len(self.queue) >= MAX_PIPELINE else None
            if self._inbuf is None:
                self._feed(data)

    def _feed(self, data: bytes) -> None:
        """Parse in slices, so that a flood of small pipelined requests stops being queued at MAX_PIPELINE:
        the rest waits in `_inbuf` (reading paused) until answers have gone out."""
        for i in range(0, len(data), FEED_SLICE):
            if len(self.queue) >= MAX_PIPELINE:
                self._inbuf = bytearray(data[i:])
                if not self._pipeline_paused:
                    self._pipeline_paused = True
                    self.transport.pause_reading()
                return
            if not self._feed_slice(data[i:i + FEED_SLICE] if len(data) > FEED_SLICE else data):
                return

    def _feed_slice(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
            return not self.closed and not self.rejected
        except httptools.HttpParserUpgrade:
            # llhttp stops at an upgrade request's head. A non-WebSocket upgrade (e.g. h2c) is served as plain
            # HTTP/1.1 (RFC 9110 §7.8 lets a server ignore Upgrade) on a connection that then closes.
            if self.queue:
                self.transport.pause_reading()
            else:
                self._reject(501, R.UPGRADE_NOT_SUPPORTED.value)
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__ if isinstance(err.__context__, _Limit) else None
            self._reject(cause.status if cause else 400, cause.reason if cause else R.PARSE_ERROR.value)
        except httptools.HttpParserError as err:
            self._reject(400, _parser_reason(err))
        return False

    # --- llhttp callbacks ---

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._index = {}
        self._header_bytes = 0
        self._hosts = 0
        self._in_trailers = False
        self.head_started = self.last_active

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            raise _Limit(414, R.URI_TOO_LONG.value)

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            return  # chunked trailers are dropped: they must never change what routing and policies saw
        self._header_bytes += len(name) + len(value) + 4
        if len(self._headers) >= MAX_HEADERS or self._header_bytes > self.listener.max_header_size:
            raise _Limit(431, R.HEADER_TOO_LARGE.value)
        k = name.decode("latin-1")
        v = value.decode("latin-1")
        self._headers.append((k, v))
        lk = k.lower()
        if lk == "host":
            self._hosts += 1
        self._index.setdefault(lk, v)

    def on_headers_complete(self) -> None:
        p = self.parser
        self._in_trailers = True
        headers = tuple(self._headers)
        index = self._index
        version = p.get_http_version()
        if self._hosts > 1 or (self._hosts == 0 and version == "1.1"):
            raise _Limit(400, R.INVALID_HOST.value)  # RFC 9112 §3.2: exactly one Host in HTTP/1.1
        te = index.get("transfer-encoding")
        if te is not None and te.strip().lower() != "chunked":
            raise _Limit(501, R.UNSUPPORTED_TRANSFER_CODING.value)  # re-framing would drop the coding silently
        cl = index.get("content-length")
        has_body = "transfer-encoding" in index or (cl is not None and cl.strip() != "0")
        expect = False
        if "expect" in index:
            if any(k.lower() == "expect" and v.strip().lower() != "100-continue" for k, v in headers):
                raise _Limit(417, R.EXPECTATION_FAILED.value)
            expect = True
        upgrade = p.should_upgrade()
        if upgrade and ("websocket" in index.get("upgrade", "").lower() or has_body):
            # WebSocket proxying is not supported; and llhttp stops before an upgrade request's body, so
            # one with a body cannot be relayed as plain HTTP either.
            raise _Limit(501, R.UPGRADE_NOT_SUPPORTED.value)
        head = RequestHead(
            method=p.get_method().decode("ascii"), target=self._url.decode("latin-1"), version=version,
            headers=headers, index=index, client_address=self.peer[0], client_port=self.peer[1],
            scheme=self.listener.scheme, server_address=self.sock[0], server_port=self.sock[1],
            listener=self.listener.name, has_body=has_body)
        body = BodyQueue(self._pause_reading, self._resume_reading, ClientGone) if has_body else NO_BODY
        ex = _Exchange(head, body, p.should_keep_alive() and not upgrade, expect and version != "1.0")
        self.parsing = ex
        self.head_started = None
        if not has_body and not self.queue and not self.running and self.listener.handle_now is not None:
            ex.now = True  # handed over synchronously in on_message_complete, which follows at once
            self.running = self.now_busy = True
            self.queue.append(ex)
            return
        self.queue.append(ex)
        if self.now_busy:
            return  # queued behind the synchronous exchange, which starts the serving task when it is done
        if self._serving is None:
            self._serving = self.listener.loop.create_task(self._serve())
        else:
            self._wake()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.body.feed(body)

    def on_message_complete(self) -> None:
        ex = self.parsing
        if ex is not None:
            ex.body.finish()
            self.parsing = None
            if ex.now:
                ex.started = True
                self.listener.handle_now(ex.head, _Downstream(self, ex))  # never raises; calls done() once

    def exchange_done(self, down: _Downstream) -> None:
        """A synchronously handled exchange is settled: keep the connection for the next request, or close it,
        as `_serve` does after each exchange."""
        self.queue.popleft()
        self.running = self.now_busy = False
        self.last_active = self.listener.loop.time()
        if self.closed:
            return
        if not down.complete or down.close_after:
            self.close()
            return
        self._resume_pipeline()
        if self.closed:
            return
        if self.queue:
            if self._serving is None:
                self._serving = self.listener.loop.create_task(self._serve())
            else:
                self._wake()
        elif self.rejected:
            self._send_reject()

    def _resume_pipeline(self) -> None:
        """After an exchange: parse what was held back while too many requests were queued."""
        if self._inbuf and len(self.queue) < MAX_PIPELINE and not self.closed:
            held, self._inbuf = bytes(self._inbuf), None
            self._feed(held)
        if self._pipeline_paused and not self._inbuf and not self.closed:
            self._pipeline_paused = False
            self.transport.resume_reading()

    # --- serving ---

    def _pause_reading(self) -> None:
        if not self.closed:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    async def _body(self, ex: _Exchange):
        while True:
            if ex.expect_continue and not ex.continue_sent:
                ex.continue_sent = True
                if self.closed:
                    raise ClientGone()
                self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            chunk = await ex.body.read()
            if not chunk:
                return
            yield chunk

    def _wake(self) -> None:
        w = self._idle
        if w is not None and not w.done():
            w.set_result(None)

    async def _serve(self) -> None:
        try:
            while not self.closed:
                if not self.queue:
                    self.running = False
                    self.last_active = self.listener.loop.time()
                    if self.rejected:
                        self._send_reject()
                        return
                    self._idle = self.listener.loop.create_future()
                    await self._idle
                    self._idle = None
                    continue
                self.running = True
                ex = self.queue[0]
                ex.started = True
                down = _Downstream(self, ex)
                try:
                    await self.listener.handler(ex.head, self._body(ex) if ex.body is not NO_BODY else NO_BODY,
                                                down)
                except Exception:  # the engine catches everything; this is the last line of defence
                    log.exception("unhandled error serving a request")
                    self.abort()
                    return
                self.queue.popleft()
                self._resume_pipeline()
                if self.closed:
                    return
                if not down.complete or down.close_after:
                    self.close()
                    return
                if not ex.body.done:
                    # The answer came before the request body was read: keep the connection only if the rest
                    # of the body is small enough to read and discard (and arrives promptly).
                    if not await self._discard(ex):
                        self.close()
                        return
        finally:
            self.running = False
            self._serving = self._idle = None
            self.last_active = self.listener.loop.time()

    async def _discard(self, ex: _Exchange) -> bool:
        if ex.expect_continue and not ex.continue_sent:
            return False  # the client is waiting for our go-ahead; closing is the clean answer
        budget = DRAIN_LIMIT
        try:
            while budget > 0:
                chunk = await ex.body.read(timeout_s=1.0)
                if not chunk:
                    return True
                budget -= len(chunk)
        except (ClientGone, TimeoutError):
            return False
        return False

    def _reject(self, status: int, reason: str) -> None:
        """Answer an unparseable request and close. Requests pipelined before it are answered first."""
        if self.closed or self.rejected:
            return
        self.rejected = (status, reason)
        broken = self.parsing
        self.parsing = None
        self.transport.pause_reading()
        if broken is not None:
            broken.body.fail(ClientGone())
            if broken.started:
                # The framing broke inside the body of a request already being handled: its handler sees the
                # client gone and records it (client_abort); _serve closes the connection when it ends.
                return
            self.queue.remove(broken)  # never handled, never sent upstream: answered below instead
            if broken.now:
                self.running = self.now_busy = False
        if not self.queue:
            self._send_reject()  # else _serve answers the requests before it, then sends this

    def _send_reject(self) -> None:
        status, reason = self.rejected
        body, request_id = self.listener.reject(self.peer, self.sock, status, reason)
        head = serialize_head(b"HTTP/1.1 %d %s\r\n" % (status, REASONS.get(status, "Error").encode()), (), [
            b"Date: " + http_date() + b"\r\n", b"Content-Type: application/json\r\n",
            b"X-Request-Id: " + request_id.encode() + b"\r\n", b"Cache-Control: no-store\r\n",
            b"Content-Length: %d\r\n" % len(body), b"Connection: close\r\n"])
        self.transport.write(head + body)
        self.close()

    def sweep(self, now: float) -> None:
        """Called about once a second by the listener: close idle keep-alive connections and clients that
        take too long to send a request head (one timer for all connections, none per request)."""
        if self.running or self.closed:
            return
        if self.head_started is not None:
            if now - self.head_started > HEAD_TIMEOUT_S:
                self._reject(408, R.HEAD_TIMEOUT.value)
        elif not self.queue and now - self.last_active > IDLE_TIMEOUT_S:
            self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.flow.close()
            self._wake()
            self.transport.close()

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.flow.close()
            self._wake()
        if self.transport is not None:
            self.transport.abort()


class _Limit(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _parser_reason(err: Exception) -> str:
    text = str(err).lower()
    if "content-length" in text and "transfer-encoding" in text:
        return R.FRAMING_CONFLICT.value
    if "content-length" in text:
        return R.INVALID_CONTENT_LENGTH.value
    if "chunk" in text:
        return R.INVALID_CHUNKED_ENCODING.value
    if "method" in text:
        return R.INVALID_METHOD.value
    if "url" in text or "uri" in text:
        return R.INVALID_TARGET.value
    return R.PARSE_ERROR.value


class RawListener:
    """`io.interfaces.Listener` on raw asyncio protocols."""

    def __init__(self, name: str, host: str, port: int, scheme: str, handler: RequestHandler, reject: Rejecter,
                 max_header_size: int, reuse_port: bool = False, handle_now: SyncRequestHandler | None = None):
        self.reuse_port = reuse_port
        self.handle_now = handle_now  # the engine's synchronous entry, for bodiless requests
        self.name = name
        self.host = host
        self.port = port
        self.scheme = scheme
        self.handler = handler
        self.max_header_size = max_header_size
        self._reject = reject
        self.connections: set[HttpConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        self._sweeper: asyncio.Task | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.bound: tuple[str, int] | None = None

    def reject(self, peer, sock, status: int, reason: str) -> tuple[bytes, str]:
        """(JSON body, request id) for an unparseable request, recorded by the engine."""
        return self._reject(self.name, peer, sock, status, reason)

    async def start(self) -> tuple[str, int]:
        self.loop = loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: HttpConnection(self), self.host, self.port,
                                                reuse_address=True, reuse_port=self.reuse_port or None,
                                                backlog=4096)
        sockname = self._server.sockets[0].getsockname()
        self.bound = (sockname[0], sockname[1])
        self._sweeper = loop.create_task(self._sweep())
        return self.bound

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.sweep(now)

    async def stop(self, grace_s: float = 5.0) -> None:
        """Stop accepting, close idle connections, let in-flight exchanges finish within `grace_s`."""
        if self._server is None:
            return
        self._sweeper.cancel()
        self._server.close()
        deadline = asyncio.get_running_loop().time() + grace_s
        while True:
            for c in list(self.connections):
                if not c.running and not c.queue:
                    c.close()
            if not self.connections or asyncio.get_running_loop().time() >= deadline:
                break
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            c.abort()
        await self._server.wait_closed()
