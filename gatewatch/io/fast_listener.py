"""The client I/O end on a raw asyncio protocol with llhttp's strict request parser (httptools).

Per connection: bytes → parser callbacks → one `_Exchange` per request, handled strictly in order (pipelined
requests wait their turn; their bodies are buffered up to the high-water mark, then reading pauses).

Two ways to hand a request to the engine, on the same `_Downstream`:
- the **synchronous** one, for a bodiless request arriving on an idle connection (the common case): the parser's
  `on_message_complete` calls `handle_now` and the engine answers from callbacks (`respond_now`), signalling the
  end with `done()`; no task, future or coroutine per request;
- the **serving task**, one per connection, for everything else (bodies, `Expect`, pipelined requests queued
  behind another), awaiting `handler`. A connection switches between the two only between exchanges.

Owned here: framing (Content-Length / chunked, both ways), limits (request line, header bytes and count, the
trace-context headers counted apart, and a head's size while a line is still arriving),
`Expect: 100-continue` (answered on the first body read, so a refusal gets its final status instead),
keep-alive (reused only after a clean exchange whose request body was read to the end), idle and header
timeouts, and write backpressure. A request llhttp rejects (framing conflicts, bad syntax, oversize, a version
other than HTTP/1.0 and 1.1, an unknown method) is answered 400/408/414/417/431/501/505 and recorded through
`Engine.reject` (docs/refusals.md), then the connection is closed
(after the responses to requests pipelined before it).
"""

from __future__ import annotations

import asyncio
import collections
import fcntl
import logging
import os
import socket
import ssl
import struct
import termios
from typing import Callable

import httptools

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.io.h2_listener import PREFACE as H2_PREFACE
from gatewatch.io.h2_listener import H2Connection, H2Settings
from gatewatch.io.http1 import (MAX_TRACE_HEADER_BYTES, METHODS, NO_BODY, REASONS, STATUS_LINES, TRACE_HEADERS,
                                BodyQueue, WriteFlow, accepted, chunk_frame, http_date, method_rejection,
                                serialize_head)
from gatewatch.io.interfaces import ClientGone, Headers, Rejecter, RequestHandler, RequestHead, SyncRequestHandler
from gatewatch.io.simple_head import ENABLED as SIMPLE_HEADS
from gatewatch.io.simple_head import simple_request
from gatewatch.io.tls import ServerTLS, server_failure_of
from gatewatch.telemetry.names import RejectReason as R
from gatewatch.io.websocket import is_websocket, request_problem
from gatewatch.telemetry.names import DrainClose, TlsHandshakeFailure, WebSocketEnd

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
                 "now", "websocket")

    @cython.locals(head=RequestHead)
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
        self.websocket = False  # a valid WebSocket upgrade (RFC 6455 §4.1): its 101 turns the connection over


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

    @cython.locals(length=cython.Py_ssize_t, lines=dict, reasons=dict)
    def _head(self, status: int, reason: str | None, headers: Headers, content_length: int | None,
              block: bytes | None = None, dated: bool = False) -> bytes:
        """The serialized response head; sets the framing this response's body will use. `block`: header lines
        already serialized, written before `headers` (`dated`: they have a Date)."""
        ex = self._ex
        self.started = True
        if not dated:  # (a relayed block with a Date needs no look at the lines after it)
            for k, _ in headers:  # (a loop: `any()` over a generator costs a generator object per response compiled)
                if len(k) == 4 and k.lower() == "date":
                    dated = True
                    break
        extra = [] if dated else [b"Date: " + http_date() + b"\r\n"]
        no_body = status < 200 or status in (204, 304)
        if no_body:
            content_length = None
        elif content_length is not None:
            self._declared = length = content_length
            extra.append(f"Content-Length: {length}\r\n".encode("ascii"))
        elif ex.http10:
            self._close_after = True  # HTTP/1.0 has no chunked encoding: the close ends the body
        else:
            self._chunked = True
            extra.append(b"Transfer-Encoding: chunked\r\n")
        if self._conn.listener.draining:
            self._close_after = True
        if self._close_after:
            extra.append(b"Connection: close\r\n")
        elif ex.http10:
            extra.append(b"Connection: keep-alive\r\n")
        lines, reasons = STATUS_LINES, REASONS  # (typed: their `get` is a C call, not a method looked up by name)
        line = lines.get(status) if reason is None or reason == reasons.get(status) else None
        if line is None:
            line = b"HTTP/1.1 %d %s\r\n" % (status, (reason or REASONS.get(status, "Unknown")).encode("latin-1"))
        if no_body or ex.is_head:
            self._declared = None
            self._chunked = False
            ex.is_head = True  # nothing more goes on the wire for this response
        return serialize_head(line, headers, extra, block)

    async def start(self, status: int, reason: str | None, headers: Headers, content_length: int | None) -> None:
        if self._conn.closed:
            raise ClientGone()
        # Held back and sent with the first body chunk (or at finish): one write instead of two. If the body
        # does not follow within this loop iteration (a streaming upstream), the head goes out on its own.
        self._pending = self._head(status, reason, headers, content_length)
        self._conn.loop.call_soon(self._flush_head)

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        self.respond_now(status, reason, headers, body)

    def respond_now(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        self._respond_whole(status, reason, headers, body, None, False)

    def respond_block_now(self, status: int, reason: str | None, block: bytes, dated: bool, tail: Headers,
                          body: bytes) -> None:
        self._respond_whole(status, reason, tail, body, block, dated)

    def _respond_whole(self, status: int, reason: str | None, headers: Headers, body: bytes, block: bytes | None,
                       dated: bool) -> None:
        """The head (`block`, then `headers`) and the whole body in one write."""
        conn = self._conn
        if conn.closed:
            raise ClientGone()
        if self.started:
            return
        head = self._head(status, reason, headers, len(body), block, dated)
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

    def upgrade(self, headers: Headers) -> tuple["HttpConnection", bytes]:
        """Send a 101 (RFC 9110 §15.2.2) with `headers` and hand over the connection: returns it with the bytes
        the client sent after its request's head; the caller sets its `tunnel`. Raises `ClientGone`."""
        conn = self._conn
        if conn.closed:
            raise ClientGone()
        self.started = self.complete = True
        conn.transport.write(serialize_head(b"HTTP/1.1 101 Switching Protocols\r\n", headers,
                                            [b"Date: " + http_date() + b"\r\n"]))
        early, conn.early = bytes(conn.early or b""), None
        return conn, early

    def done(self) -> None:
        """The engine is finished with the exchange: for one handled synchronously, the connection moves on."""
        if self._ex.now and not self._done:
            self._done = True
            self._conn.exchange_done(self)

    @property
    def close_after(self) -> bool:
        return self._close_after


class HttpConnection:  # asyncio's protocol interface, duck-typed (an extension type when compiled)
    __slots__ = ("listener", "transport", "parser", "flow", "closed", "rejected", "_pipeline_paused", "_inbuf",
                 "queue", "parsing", "running", "_serving", "_idle", "_url", "_headers", "_index", "_header_bytes",
                 "_hosts", "_in_trailers", "last_active", "head_started", "peer", "sock", "now_busy", "tls",
                 "_byte_limit", "_line_limit", "_scanned", "_head_fed", "tunnel", "early", "_carry", "loop",
                 "_scheme", "_listener_name")

    def __init__(self, listener: "RawListener"):
        self.listener = listener
        # What every exchange reads of its listener and never changes, as the connection's own typed fields.
        self.loop = listener.loop
        self._scheme, self._listener_name = listener.scheme, listener.name
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.flow = WriteFlow()
        self.closed = False
        self.rejected: tuple[int, str] | None = None  # an unparseable request waits for earlier answers
        self._pipeline_paused = False
        self._inbuf: bytearray | None = None  # bytes not parsed yet because too many requests are queued
        # What llhttp was fed since it last stood between messages at the end of a slice, while the head after
        # it runs on into the next read (None: a body ran on, the start is not known). `_refused_line` parses
        # from there, so a refusal is read from the right line however the client cut the request. Appended to
        # in place: a head sent a byte per read must not cost a copy of everything before it on every read.
        self._carry: bytearray | None = bytearray()
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
        self.tls = None  # ClientTLS of a TLS listener's connection, set before connection_made
        # WebSocket (issue 17): bytes after an upgrade request's head wait in `early` (reading paused) until the
        # 101; then the relay session's side (`tunnel`) gets every byte and event of the connection.
        self.tunnel = None
        self.early: bytearray | None = None

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.Transport) -> None:
        accepted(self, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.close()
        self._wake()
        self.listener.connections.discard(self)
        for ex in list(self.queue) + ([self.parsing] if self.parsing else []):
            ex.body.fail(ClientGone())
        if self.tunnel is not None:
            self.tunnel.lost()

    def pause_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.pause_writing()
        self.flow.pause()

    def resume_writing(self) -> None:
        if self.tunnel is not None:
            self.tunnel.resume_writing()
        self.flow.resume()

    def eof_received(self) -> None:  # as asyncio.Protocol's: the transport closes itself
        return None

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.received(data)
            return
        if self.early is not None:  # an upgrade's first frames, before its 101: kept for the session
            self.early += data
            return
        self.last_active = self.loop.time()
        if data[:3] == b"PRI" and self._h2_preface(data):
            return
        if self._inbuf:
            self._inbuf += data
        elif (SIMPLE_HEADS and not self.queue and not self.running and self.head_started is None
              and self.parsing is None and not self.rejected and self.listener.handle_now is not None
              and self._simple(data)):
            return
        else:
            self._inbuf = bytearray(data) if len(self.queue) >= MAX_PIPELINE else None
            if self._inbuf is None:
                self._feed(data)

    @cython.locals(simple=tuple)
    def _simple(self, data: bytes) -> bool:
        """A simple request (`simple_head.simple_request`: one bodiless keep-alive HTTP/1.1 request, exactly this
        read) on an idle connection, between messages: handed to the engine's synchronous path with no llhttp
        callback. False: nothing done, llhttp parses `data`."""
        simple = simple_request(data, self.listener.max_header_size, MAX_HEADERS, MAX_URL)
        if simple is None:
            return False
        method, target, headers, index = simple
        head = self._request_head(method, target, "1.1", tuple(headers), index, False)
        ex = _Exchange(head, NO_BODY, True, False)
        ex.now = ex.started = True
        self.running = self.now_busy = True
        self.queue.append(ex)
        self.listener.handle_now(head, _Downstream(self, ex))  # never raises; calls done() once
        return True

    def _request_head(self, method: str, target: str, version: str, headers: Headers, index: dict[str, str],
                      has_body: bool) -> RequestHead:
        """A parsed request's head, with what this connection and its listener add (both parsing paths)."""
        return RequestHead(
            method=method, target=target, version=version, headers=headers, index=index,
            client_address=self.peer[0], client_port=self.peer[1], scheme=self._scheme,
            server_address=self.sock[0], server_port=self.sock[1], listener=self._listener_name, has_body=has_body,
            tls=self.tls)

    def _h2_preface(self, data: bytes) -> bool:
        """HTTP/2 with prior knowledge (RFC 9113 §3.3) on a plaintext connection that has carried nothing else:
        the connection is handed to an `H2Connection` (docs/http2.md). Anything else starting with PRI is left
        to llhttp, which refuses it."""
        if (self.tls is not None or self.listener.http2 is None or self.queue or self.parsing is not None
                or self.running or self.rejected or not (data[:24] == H2_PREFACE or H2_PREFACE.startswith(data))):
            return False
        self.closed = True  # this object is done with the connection; its transport now serves the H2Connection
        self.listener.connections.discard(self)
        conn = H2Connection(self.listener, self.listener.http2)
        self.transport.set_protocol(conn)
        conn.connection_made(self.transport)
        conn.data_received(data)
        return True

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
                if self.early is not None:  # stopped at a WebSocket upgrade: the rest is the new protocol's
                    self.early += data[i + FEED_SLICE:]
                return

    def _feed_slice(self, data: bytes) -> bool:
        try:
            self.parser.feed_data(data)
            carry = self._carry
            if self.head_started is not None:  # a head runs on into the next read (bounded just below)
                if carry is not None:
                    carry += data
            elif self.parsing is not None:  # a body runs on: where the next message starts is not known
                self._carry = None
            elif carry is None:
                self._carry = bytearray()
            elif carry:
                carry.clear()
            if self.head_started is not None and not self.rejected:
                # A head is still incomplete. llhttp hands a header over only once its line has ended (httptools
                # keeps appending the pieces), so the size limits in `on_header` cannot see a line that never
                # ends: bound the bytes a head may take here (one slice of slack: the slice that began it may
                # hold the end of the request before it).
                self._head_fed += len(data)
                if self._head_fed > self._byte_limit + MAX_URL + MAX_TRACE_HEADER_BYTES + FEED_SLICE:
                    self._reject(431, R.HEADER_TOO_LARGE.value)
            return not self.closed and not self.rejected
        except httptools.HttpParserUpgrade as err:
            # llhttp stops at an upgrade request's head. A non-WebSocket upgrade (e.g. h2c) is served as plain
            # HTTP/1.1 (RFC 9110 §7.8 lets a server ignore Upgrade) on a connection that then closes.
            if self.queue:
                self.transport.pause_reading()
                if self.queue[-1].websocket:  # what follows the head belongs to the WebSocket session
                    self.early = bytearray(data[err.args[0]:] if err.args else b"")
            else:
                self._reject(501, R.UPGRADE_NOT_SUPPORTED.value)
        except httptools.HttpParserCallbackError as err:
            cause = err.__context__ if isinstance(err.__context__, _Limit) else None
            self._reject(cause.status if cause else 400, cause.reason if cause else R.PARSE_ERROR.value)
        except httptools.HttpParserError as err:
            self._reject(*_parser_rejection(err, data if self._carry is None else bytes(self._carry) + data))
        return False

    # --- llhttp callbacks ---

    def on_message_begin(self) -> None:
        self._url.clear()
        self._headers = []
        self._index = {}
        self._header_bytes = 0
        self._byte_limit = self.listener.max_header_size
        self._line_limit = MAX_HEADERS
        self._scanned = 0
        self._head_fed = 0
        self._hosts = 0
        self._in_trailers = False
        self.head_started = self.last_active

    def on_url(self, url: bytes) -> None:
        self._url += url
        if len(self._url) > MAX_URL:
            raise _Limit(414, R.URI_TOO_LONG.value)

    @cython.locals(name=bytes, value=bytes, k=str, v=str, lk=str)
    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_trailers:
            return  # chunked trailers are dropped: they must never change what routing and policies saw
        self._header_bytes += len(name) + len(value) + 4
        if len(self._headers) >= self._line_limit or self._header_bytes > self._byte_limit:
            self._over_limit(name, value)
        k = name.decode("latin-1")
        v = value.decode("latin-1")
        self._headers.append((k, v))
        lk = k.lower()
        if lk == "host":
            self._hosts += 1
        self._index.setdefault(lk, v)

    def _over_limit(self, name: bytes, value: bytes) -> None:
        """A head limit is reached. Trace-context headers (traceparent, tracestate, baggage) do not count toward
        `max_header_size` or MAX_HEADERS: the engine cuts them to the W3C limits, they never make a request a 431
        (only a bound of their own, far above those limits, does). Each header is looked at here once at most:
        what trace headers take is added to the limits, and the 431 raised if the others alone are over."""
        headers = self._headers
        for k, v in headers[self._scanned:]:
            if k.lower() in TRACE_HEADERS:
                self._exempt(len(k) + len(v) + 4)
        if name.lower().decode("latin-1") in TRACE_HEADERS:  # the current header, appended after this
            self._exempt(len(name) + len(value) + 4)
        self._scanned = len(headers) + 1
        if len(headers) >= self._line_limit or self._header_bytes > self._byte_limit:
            raise _Limit(431, R.HEADER_TOO_LARGE.value)

    def _exempt(self, size: int) -> None:
        self._byte_limit += size
        self._line_limit += 1
        if (self._byte_limit - self.listener.max_header_size > MAX_TRACE_HEADER_BYTES
                or self._line_limit - MAX_HEADERS > MAX_HEADERS):
            raise _Limit(431, R.HEADER_TOO_LARGE.value)

    @cython.locals(headers=tuple, index=dict)
    def on_headers_complete(self) -> None:
        p = self.parser
        self._in_trailers = True
        headers = tuple(self._headers)
        index = self._index
        version = p.get_http_version()
        if version != "1.1" and version != "1.0":
            # RFC 9110 §2.5 / §15.6.6: llhttp also parses HTTP/0.9 (a request line without a version) and
            # HTTP/2.0 (prior knowledge without the preface); neither is served by an HTTP/1.1 proxy
            raise _Limit(505, R.UNSUPPORTED_HTTP_VERSION.value)
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
        websocket = upgrade and is_websocket(index)
        if websocket:  # RFC 6455 §4.1: validated here, relayed by the engine (gatewatch.io.websocket)
            problem = request_problem(p.get_method().decode("ascii"), has_body, index)
            if problem is not None:
                raise _Limit(400, problem.value)
        elif upgrade and has_body:
            # llhttp stops before an upgrade request's body, so one with a body cannot be relayed as plain HTTP
            raise _Limit(501, R.UPGRADE_NOT_SUPPORTED.value)
        raw_method = p.get_method()
        method = METHODS.get(raw_method)
        if method is None:  # an extension method (PROPFIND, QUERY, ...), as it came
            method = raw_method.decode("ascii")
        head = self._request_head(method, self._url.decode("latin-1"), version, headers, index, has_body)
        body = BodyQueue(self._pause_reading, self._resume_reading, ClientGone) if has_body else NO_BODY
        ex = _Exchange(head, body, p.should_keep_alive() and not upgrade, expect and version != "1.0")
        ex.websocket = websocket
        self.parsing = ex
        self.head_started = None
        if (not has_body and not websocket and not self.queue and not self.running
                and self.listener.handle_now is not None):
            ex.now = True  # handed over synchronously in on_message_complete, which follows at once
            self.running = self.now_busy = True
            self.queue.append(ex)
            return
        self.queue.append(ex)
        if self.now_busy:
            return  # queued behind the synchronous exchange, which starts the serving task when it is done
        if self._serving is None:
            self._serving = self.loop.create_task(self._serve())
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
        self.last_active = self.loop.time()
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
                self._serving = self.loop.create_task(self._serve())
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
                    self.last_active = self.loop.time()
                    if self.rejected:
                        self._send_reject()
                        return
                    self._idle = self.loop.create_future()
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
                if self.tunnel is not None:
                    return  # upgraded: the connection is the WebSocket session's now
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
            self.last_active = self.loop.time()

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

    def unread(self) -> bool:
        """Bytes have arrived that this connection has not parsed yet: in the socket, or held back here."""
        if self._inbuf or (isinstance(self.transport, TlsSession) and self.transport.incoming.pending):
            return True
        sock = self.transport.get_extra_info("socket") if self.transport is not None else None
        if sock is None:
            return False
        try:
            return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0"))[0] > 0
        except OSError:
            return False

    def sweep(self, now: float) -> None:
        """Called about once a second by the listener: close idle keep-alive connections and clients that
        take too long to send a request head (one timer for all connections, none per request)."""
        if self.running or self.closed or self.tunnel is not None:  # a WebSocket session has its own timeouts
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


# Plaintext on a TLS port gets a plaintext answer (as nginx's 400 "plain HTTP request was sent to HTTPS port").
_NOT_TLS_BODY = b"This port speaks TLS: use https://\n"
NOT_TLS_ANSWER = (b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\nCache-Control: no-store\r\n"
                  b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_NOT_TLS_BODY)) + _NOT_TLS_BODY
TLS_READ = 256 * 1024  # plaintext taken out of the TLS layer per read call


class TlsSession(asyncio.Protocol):
    """TLS termination for one client connection, in memory (`ssl.MemoryBIO`, the way HAProxy and Pingora keep
    the record layer in their own hands): the socket's transport below, an `HttpConnection` above, to which this
    object is the transport. Owned here: the handshake and its timeout, why one failed (counted through the
    listener's `on_tls`), plaintext sent to a TLS port (answered 400 in plaintext), close_notify both ways.
    (asyncio's `start_tls` was tried first: under uvloop, bytes a client sends before it takes over are lost.)"""

    __slots__ = ("listener", "tls", "raw", "obj", "incoming", "outgoing", "app", "timer", "failed", "closed",
                 "reading_paused", "seen")

    def __init__(self, listener: "RawListener", tls: ServerTLS):
        self.listener = listener
        self.tls = tls  # the settings at accept time: a reload changes new connections only
        self.raw: asyncio.Transport | None = None
        self.app: HttpConnection | None = None  # once the handshake is done
        self.timer: asyncio.TimerHandle | None = None
        self.failed = self.closed = self.reading_paused = self.seen = False
        self.incoming = ssl.MemoryBIO()
        self.outgoing = ssl.MemoryBIO()
        self.obj = tls.context.wrap_bio(self.incoming, self.outgoing, server_side=True)

    # --- below: the socket ---

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.raw = transport  # TCP_NODELAY is set by the HttpConnection, on this transport's socket
        self.listener.handshaking.add(self)
        self.timer = self.listener.loop.call_later(self.tls.handshake_timeout_s, self._timeout)

    def data_received(self, data: bytes) -> None:
        if self.app is not None:
            self.incoming.write(data)
            self._read()
            return
        if self.failed:
            return
        if not self.seen:
            self.seen = True
            if data[0] != 0x16:  # not a TLS handshake record (RFC 8446 §5.1): plaintext, most likely HTTP
                self.raw.write(NOT_TLS_ANSWER)
                self._fail(TlsHandshakeFailure.NOT_TLS, close=True)
                return
        self.incoming.write(data)
        self._handshake()

    def eof_received(self) -> None:
        return None  # the socket transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.app is not None:
            self.app.connection_lost(exc)
        elif not self.failed:
            self._fail(TlsHandshakeFailure.CLIENT_CLOSED, close=False)

    def pause_writing(self) -> None:
        if self.app is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.app is not None:
            self.app.resume_writing()

    # --- the handshake ---

    def _handshake(self) -> None:
        try:
            self.obj.do_handshake()
        except ssl.SSLWantReadError:
            self._flush()
            return
        except (ssl.SSLError, OSError) as err:
            self._flush()  # the alert that tells the client why
            self._fail(server_failure_of(err), close=True)
            return
        self._flush()
        self._settled()
        if self.obj.selected_alpn_protocol() == "h2" and self.listener.http2 is not None:  # RFC 9113 §3.2
            h2conn = H2Connection(self.listener, self.listener.http2, self.tls.describe(self.obj))
            if self.listener.on_tls is not None:
                self.listener.on_tls(self.listener.name, h2conn.tls.version, None)
            self.app = h2conn
            h2conn.connection_made(self)
            self._read()
            return
        conn = HttpConnection(self.listener)
        conn.tls = self.tls.describe(self.obj)
        if self.listener.on_tls is not None:
            self.listener.on_tls(self.listener.name, conn.tls.version, None)
        self.app = conn
        conn.connection_made(self)
        self._read()  # a request sent in the same flight as the client's Finished

    def _timeout(self) -> None:
        self.timer = None
        if self.app is None and not self.failed:
            self._fail(TlsHandshakeFailure.TIMEOUT, close=False)

    def _settled(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.listener.handshaking.discard(self)

    def _fail(self, reason: TlsHandshakeFailure, close: bool) -> None:
        self.failed = True
        self._settled()
        if self.listener.on_tls is not None:
            self.listener.on_tls(self.listener.name, None, reason)
        if close:
            self.raw.close()  # after what is queued: our alert, or the plaintext answer
        else:
            self.raw.abort()

    # --- above: the HTTP connection's transport ---

    def _read(self) -> None:
        """Hand decrypted bytes up, unless the HTTP connection paused reading (then `resume_reading`)."""
        app = self.app
        while not self.reading_paused and not app.closed:
            try:
                data = self.obj.read(TLS_READ)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:  # close_notify: the client is done sending (RFC 8446 §6.1)
                self.close()
                break
            except (ssl.SSLError, OSError):
                self.abort()
                break
            if not data:
                break
            app.data_received(data)
            if not self.incoming.pending and not self.obj.pending():
                break  # nothing left to decrypt: skip the read that would only raise SSLWantReadError
        if self.outgoing.pending:
            self._flush()  # post-handshake messages (TLS 1.3 key updates)

    def _flush(self) -> None:
        data = self.outgoing.read()
        if data and not self.raw.is_closing():
            self.raw.write(data)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self.obj.write(data)
        except (ssl.SSLError, OSError):
            self.abort()
            return
        self._flush()

    def writelines(self, chunks) -> None:
        self.write(b"".join(chunks))

    def pause_reading(self) -> None:
        self.reading_paused = True
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        if self.reading_paused:
            self.reading_paused = False
            self.raw.resume_reading()
            self.listener.loop.call_soon(self._resume)

    def _resume(self) -> None:
        if self.app is not None and not self.closed:
            self._read()

    def is_closing(self) -> bool:
        return self.closed or self.raw.is_closing()

    def get_extra_info(self, name: str, default=None):
        if name == "ssl_object":
            return self.obj
        return self.raw.get_extra_info(name, default)

    def close(self) -> None:
        """close_notify (RFC 8446 §6.1), then the socket once what is queued has gone."""
        if self.closed:
            return
        self.closed = True
        self._settled()
        try:
            self.obj.unwrap()
        except (ssl.SSLError, OSError):
            pass  # SSLWantReadError: the client's close_notify is not awaited
        self._flush()
        self.raw.close()

    def abort(self) -> None:
        self.closed = True
        self._settled()
        if self.raw is not None:
            self.raw.abort()


TlsObserver = Callable[[str, "str | None", "TlsHandshakeFailure | None"], None]


class _Limit(Exception):
    def __init__(self, status: int, reason: str):
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _parser_rejection(err: Exception, data: bytes) -> tuple[int, str]:
    """(status, `error.type`) of what llhttp refused in `data`, the slice it was parsing."""
    text = str(err).lower()
    if "content-length" in text and "transfer-encoding" in text:
        return 400, R.FRAMING_CONFLICT.value
    if "content-length" in text:
        return 400, R.INVALID_CONTENT_LENGTH.value
    if "chunk" in text:
        return 400, R.INVALID_CHUNKED_ENCODING.value
    if "method" in text:
        return method_rejection(_refused_line(data))
    if "invalid http version" in text or "pri/upgrade" in text:  # HTTP/1.2, HTTP/3.0; the HTTP/2 preface
        return 505, R.UNSUPPORTED_HTTP_VERSION.value  # RFC 9110 §15.6.6
    if "version" in text or "expected http/" in text or "expected dot" in text:
        return 400, R.INVALID_HTTP_VERSION.value  # not HTTP-name "/" DIGIT "." DIGIT (RFC 9112 §2.3)
    if "url" in text or "uri" in text:
        return 400, R.INVALID_TARGET.value
    return 400, R.PARSE_ERROR.value


class _Silent:
    """A protocol with no callbacks, for parsing again what llhttp refused (`_refused_line`)."""


def _refused_line(data: bytes) -> bytes | None:
    """The line of `data` in which llhttp stopped, or None when that cannot be told. httptools does not say where
    parsing stopped, so the shortest prefix of `data` a fresh parser refuses is searched for (a prefix of a valid
    stream is never refused, only left incomplete): O(log n) parses, on this error path only. Exact when `data`
    starts at a request's start, as the listener's `_carry` makes it unless a body ran on from an earlier read
    (pipelined requests before the refused one are parsed through); a start mid-body gives the wrong line or
    None."""

    def refused(n: int) -> bool:
        try:
            httptools.HttpRequestParser(_Silent()).feed_data(data[:n])
        except httptools.HttpParserError:
            return True
        return False  # incomplete, or stopped at an upgrade (what follows is not HTTP/1.1)

    try:
        if not refused(len(data)):
            return None
        lo, hi = 0, len(data)  # refused(hi), not refused(lo)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if refused(mid):
                hi = mid
            else:
                lo = mid
    except httptools.HttpParserUpgrade:
        return None
    start = data.rfind(b"\n", 0, hi - 1) + 1
    return data[start:].split(b"\n", 1)[0].rstrip(b"\r")




class RawListener:
    """`io.interfaces.Listener` on raw asyncio protocols."""

    def __init__(self, name: str, host: str, port: int, scheme: str, handler: RequestHandler, reject: Rejecter,
                 max_header_size: int, reuse_port: bool = False, handle_now: SyncRequestHandler | None = None,
                 tls: ServerTLS | None = None, on_tls: TlsObserver | None = None):
        self.reuse_port = reuse_port
        # TLS termination: swapped whole by a reload (new connections use the new certificates); `on_tls` counts
        # each handshake's result.
        self.tls = tls
        self.on_tls = on_tls
        self.handshaking: set[TlsSession] = set()
        self.draining = False  # stop() has begun: responses close their connections
        self.handle_now = handle_now  # the engine's synchronous entry, for bodiless requests
        # HTTP/2 (h2 by ALPN, h2c by prior knowledge): its limits, or None when the listener speaks HTTP/1.1 only;
        # `on_h2` counts its connections, streams, resets and GOAWAYs (set by the runtime).
        self.http2: H2Settings | None = H2Settings()
        self.on_h2 = None
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
        self._server = await loop.create_server(self._accept, self.host, self.port,
                                                reuse_address=True, reuse_port=self.reuse_port or None,
                                                backlog=4096)
        sockname = self._server.sockets[0].getsockname()
        self.bound = (sockname[0], sockname[1])
        self._sweeper = loop.create_task(self._sweep())
        return self.bound

    def _accept(self) -> asyncio.Protocol:
        return HttpConnection(self) if self.tls is None else TlsSession(self, self.tls)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.sweep(now)

    async def stop(self, grace_s: float = 5.0, idle_close_s: float = 1.0) -> dict[str, int]:
        """Stop accepting, let in-flight exchanges finish within `grace_s`, and return how the connections ended
        (`DrainClose` value -> count).

        The connections already in the kernel's accept queue are accepted and served first: closing a listening
        socket resets them (with SO_REUSEPORT the kernel does not move them to another socket of the group unless
        net.ipv4.tcp_migrate_req is set). From then on every response says `Connection: close`. A keep-alive
        connection is closed by us only once it has been idle for `idle_close_s` with nothing unread: closing one
        the moment a client sends on it is the keep-alive race (the request is lost, or reset); closing a
        socket with unread bytes resets it (RFC 9112 §9.6 asks for a graceful close). A client that sends on it
        meanwhile is served and told to close."""
        ended = {r.value: 0 for r in DrainClose}
        if self._server is None:
            return ended
        loop = asyncio.get_running_loop()
        self._sweeper.cancel()
        backlog = self._take_backlog()
        self._server.close()
        self.draining = True  # every response from now on says Connection: close
        for c in list(self.connections):
            if isinstance(c, H2Connection):
                c.goaway()  # RFC 9113 §6.8: the last stream id we process; open streams finish
        if backlog:
            await asyncio.gather(*(loop.connect_accepted_socket(self._accept, sock) for sock in backlog),
                                 return_exceptions=True)
        for session in list(self.handshaking):
            session.abort()  # no request has started on them
        deadline = loop.time() + grace_s
        seen = set(self.connections)
        while True:
            now = loop.time()
            seen.update(self.connections)
            for c in list(self.connections):
                tunnel = getattr(c, "tunnel", None)  # (an HTTP/2 connection has none)
                if tunnel is not None:  # a WebSocket session: close 1001 to both sides (RFC 6455 §7.4.1)
                    tunnel.session.shutdown(WebSocketEnd.DRAIN)
                    continue
                if not c.running and not c.queue and now - c.last_active >= idle_close_s and not c.unread():
                    c.close()
                    ended[DrainClose.IDLE.value] += 1
            if not self.connections or now >= deadline:
                break
            await asyncio.sleep(0.05)
        for c in list(self.connections):
            c.abort()
            ended[DrainClose.DEADLINE.value] += 1
        ended[DrainClose.AFTER_RESPONSE.value] = len(seen) - ended[DrainClose.IDLE.value] - \
            ended[DrainClose.DEADLINE.value]
        await self._server.wait_closed()
        return ended

    def _take_backlog(self) -> list[socket.socket]:
        """Accept, without blocking, every connection waiting in the listening sockets' queues (through a
        duplicate of each descriptor: the server's own socket objects do not expose accept)."""
        taken: list[socket.socket] = []
        for s in self._server.sockets:
            try:
                dup = socket.socket(s.family, s.type, s.proto, fileno=os.dup(s.fileno()))
            except OSError:
                continue
            with dup:
                dup.setblocking(False)
                while True:
                    try:
                        conn, _ = dup.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except ConnectionAbortedError:  # that one is gone, the others may not be
                        continue
                    except OSError:  # EMFILE and the like: what is left is reset when the socket closes
                        log.warning("listener %s: cannot accept its queued connections before closing",
                                    self.name, exc_info=True)
                        break
                    conn.setblocking(False)
                    taken.append(conn)
        return taken
