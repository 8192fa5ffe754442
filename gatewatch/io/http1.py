"""HTTP/1.1 pieces shared by the raw listener and forwarder: body queues with backpressure, head serialising,
status reasons, and a once-a-second `Date` value; and what both listeners refuse alike (`method_rejection`, the
trace-context headers' own bound).

`BodyQueue` is the one-producer (a protocol's `data_received`), one-consumer (the engine's `async for`)
channel for a message body. It pauses the producing transport above a high-water mark and resumes it below a
low-water mark, so a fast sender never makes a slow receiver's buffer grow without bound.
"""

from __future__ import annotations

import asyncio
import collections
import math
import re
import socket
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Callable

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.telemetry.names import RejectReason

# RFC 9110 §7.6.1 connection-specific fields, plus the de-facto ones every proxy strips.
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "te",
    "trailer", "transfer-encoding", "upgrade",
})
# What this proxy drops from a response it relays (proxy.headers.downstream_response_headers, and the relayed
# head block of io.simple_head): the hop-by-hop fields, and those it replaces (the listener re-frames the body;
# an inner tier's X-Request-Id and traceresponse give way to ours; `Via` gets our hop).
RESPONSE_REPLACED = frozenset({"content-length", "via", "x-request-id", "traceresponse"})
RESPONSE_DROP = HOP_BY_HOP | RESPONSE_REPLACED

HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024
# Trace-context headers are limited by the W3C specifications, not by a listener's max_header_size: the engine cuts
# them to those limits (telemetry.context.cap_tracestate / cap_baggage) and serves the request. A listener bounds
# them apart, far above the W3C limits (a memory bound): more than this many bytes, or more lines than a head's
# other headers may have, is a 431.
TRACE_HEADERS = frozenset({"traceparent", "tracestate", "baggage"})
MAX_TRACE_HEADER_BYTES = 32 * 1024

REASONS = {s.value: s.phrase for s in HTTPStatus}
# The status line of each status with its standard reason phrase (RFC 9112 §4), built once, not per response
STATUS_LINES = {status: b"HTTP/1.1 %d %s\r\n" % (status, text.encode("latin-1")) for status, text in REASONS.items()}
HTTP_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token (fullmatch)
# The registered methods (RFC 9110 §9.3, RFC 5789) as one str object each: every request's method is then the
# same object, whose hash is computed once, and the metric label tuples holding it compare by identity.
METHODS = {m.encode("ascii"): m for m in ("GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                                          "PATCH")}
_date_cache: list = [0, b""]


def method_rejection(request_line: bytes | None) -> tuple[int, str]:
    """(status, `error.type`) of a request line whose method llhttp refused: 501 `unsupported_method` for a token
    (RFC 9110 §9.1: a method the server does not implement; llhttp's table has the methods of RFC 9110, WebDAV,
    PATCH, QUERY and a few more, not every registered one, and methods are case-sensitive, so `get` is one of these)
    and 400 `invalid_method` for anything else."""
    method = request_line.split(b" ", 1)[0] if request_line else b""
    if HTTP_TOKEN.fullmatch(method):
        return 501, RejectReason.UNSUPPORTED_METHOD.value
    return 400, RejectReason.INVALID_METHOD.value


def http_date() -> bytes:
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache[0] = now
        _date_cache[1] = formatdate(now, usegmt=True).encode("ascii")
    return _date_cache[1]


class BodyQueue:
    __slots__ = ("_chunks", "_buffered", "_done", "_error", "_waiter", "_pause", "_resume", "_paused",
                 "_make_error", "total")

    def __init__(self, pause: Callable[[], None], resume: Callable[[], None],
                 make_error: Callable[[], BaseException]):
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._done = False
        self._error: BaseException | None = None
        self._waiter: asyncio.Future | None = None
        self._pause = pause
        self._resume = resume
        self._paused = False
        self._make_error = make_error
        self.total = 0

    @property
    def done(self) -> bool:
        """The producer delivered the whole body (the framing said it is complete)."""
        return self._done

    def take_whole(self) -> bytes | None:
        """The entire body if the producer has already delivered all of it (nothing read yet), else None.
        Lets a small exchange skip the chunk-by-chunk relay."""
        if not self._done or self._error is not None or self.total != self._buffered:
            return None
        chunks = self._chunks
        whole = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._paused = False
            self._resume()
        return whole

    def feed(self, chunk: bytes) -> None:
        if self._done:
            return  # nothing may be added to a body its framing already ended
        self._chunks.append(chunk)
        self._buffered += len(chunk)
        self.total += len(chunk)
        if self._buffered > HIGH_WATER and not self._paused:
            self._paused = True
            self._pause()
        self._wake()

    def finish(self) -> None:
        self._done = True
        self._wake()

    def fail(self, error: BaseException | None = None) -> None:
        if not self._done:
            self._error = error or self._make_error()
            self._wake()

    def _wake(self) -> None:
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    async def read(self, timeout_s: float | None = None) -> bytes:
        """The next chunk, or b"" at the end of the body. Raises the failure if the body broke."""
        while True:
            if self._chunks:
                chunk = self._chunks.popleft()
                self._buffered -= len(chunk)
                if self._paused and self._buffered < LOW_WATER:
                    self._paused = False
                    self._resume()
                return chunk
            if self._error is not None:
                raise self._error
            if self._done:
                return b""
            loop = asyncio.get_running_loop()
            waiter = self._waiter = loop.create_future()
            # A bare timer on the waiter: cheaper than asyncio.timeout(), and only armed when we must wait.
            timer = loop.call_later(timeout_s, _expire, waiter) if timeout_s is not None else None
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()


class NoBody:
    """The body of a request that has none (no Content-Length > 0, no Transfer-Encoding): one shared, already
    finished stand-in for a `BodyQueue`, so a bodiless request allocates no queue and no waiter."""

    __slots__ = ()
    done = True

    def feed(self, chunk: bytes) -> None:
        pass

    def finish(self) -> None:
        pass

    def fail(self, error: BaseException | None = None) -> None:
        pass

    def __aiter__(self):
        return self

    async def __anext__(self) -> bytes:
        raise StopAsyncIteration


NO_BODY = NoBody()


class Deadlines:
    """Timeouts for many in-flight exchanges on few loop timers. A deadline is rounded up to the next
    `resolution_s` tick and every future due in the same tick shares one `call_at`: on uvloop a
    `call_later` + `cancel` per request cost ~3 µs, adding and discarding here ~0.2 µs. A timeout fires at
    most `resolution_s` late; a tick's timer is never cancelled (it fires once and finds nothing to do)."""

    __slots__ = ("_loop", "_resolution", "_ticks", "_make_error")

    def __init__(self, loop: asyncio.AbstractEventLoop, make_error: Callable[[], BaseException],
                 resolution_s: float = 0.01):
        self._loop = loop
        self._resolution = resolution_s
        self._ticks: dict[int, set[asyncio.Future]] = {}
        self._make_error = make_error

    def add(self, delay_s: float, fut: asyncio.Future) -> int:
        """Fail `fut` with `make_error()` if it is not done within `delay_s`. Returns the tick for `discard`."""
        tick = math.ceil((self._loop.time() + delay_s) / self._resolution)
        due = self._ticks.get(tick)
        if due is None:
            due = self._ticks[tick] = set()
            self._loop.call_at(tick * self._resolution, self._fire, tick)
        due.add(fut)
        return tick

    def discard(self, tick: int, fut: asyncio.Future) -> None:
        due = self._ticks.get(tick)
        if due is not None:
            due.discard(fut)

    def _fire(self, tick: int) -> None:
        for fut in self._ticks.pop(tick, ()):
            if not fut.done():
                fut.set_exception(self._make_error())

    def __len__(self) -> int:
        return sum(len(d) for d in self._ticks.values())


def _expire(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


@cython.locals(parts=list, out=list)
def serialize_head(first_line: bytes, headers, extra: list[bytes], block: bytes | None = None) -> bytes:
    """`first_line`, then `block` (header lines already serialized, as relayed), `headers`, `extra` (serialized
    lines) and the empty line."""
    # One str, one encode: cheaper than encoding each header line on its own. Names, separators and values go
    # into one list and one join: no str made per line (compiled, ~17 % less than a formatted string per line).
    parts = []
    for k, v in headers:
        parts.append(k)
        parts.append(": ")
        parts.append(v)
        parts.append("\r\n")
    out = [first_line]
    if block:
        out.append(block)
    out.append("".join(parts).encode("latin-1"))
    out.extend(extra)
    out.append(b"\r\n")
    return b"".join(out)


def chunk_frame(chunk: bytes) -> tuple[bytes, bytes, bytes]:
    return b"%x\r\n" % len(chunk), chunk, b"\r\n"


class WriteFlow:
    """Write-side flow control for a transport: `await wait()` while the transport's buffer is above its
    high-water mark (asyncio calls pause_writing/resume_writing on the protocol, which forwards here)."""

    __slots__ = ("paused", "_waiter", "closed")

    def __init__(self) -> None:
        self.paused = False
        self._waiter: asyncio.Future | None = None
        self.closed = False

    def pause(self) -> None:
        self.paused = True

    def resume(self) -> None:
        self.paused = False
        w = self._waiter
        if w is not None and not w.done():
            w.set_result(None)

    def close(self) -> None:
        self.closed = True
        self.resume()

    async def wait(self) -> None:
        while self.paused and not self.closed:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None


def accepted(conn, transport) -> None:
    """A listener's new connection, HTTP/1.1 or HTTP/2 (`conn` has `listener`, `transport`, `peer`, `sock`,
    `last_active`): its transport and both addresses kept, TCP_NODELAY set, counted among the listener's
    connections (drain and the idle sweep walk them)."""
    listener = conn.listener
    conn.transport = transport
    peer = transport.get_extra_info("peername")
    sock = transport.get_extra_info("sockname")
    conn.peer = (peer[0], peer[1]) if peer else ("", 0)
    conn.sock = (sock[0], sock[1]) if sock else (listener.host, listener.port)
    no_delay(transport)
    listener.connections.add(conn)
    conn.last_active = listener.loop.time()


def no_delay(transport) -> None:
    """TCP_NODELAY on a transport's socket: each write is a whole head or body, never worth delaying (Nagle)."""
    s = transport.get_extra_info("socket")
    if s is not None:
        try:
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
