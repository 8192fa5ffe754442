"""The upstream I/O end on raw asyncio protocols with llhttp's strict response parser (httptools).

Per endpoint a pool of keep-alive connections (LIFO, so a few stay warm; bounded count; one idle longer than
`keepalive_idle_s` — below typical upstream idle timeouts — is closed instead of reused; `https` upstreams
get TLS as their pool or upstream's `tls` says, verified with the system's CAs by default; a failed handshake is
`upstream_tls_error` with its `TlsFailure`, never a refused connection). A connection goes back to the pool only
after a clean exchange: the request body fully sent, the response complete by its own framing, keep-alive on
both sides, no error. There is no hidden re-send of any request: a failure is reported to the engine as an
`UpstreamFailure` and the balancer's visible retry logic decides.

Timeouts: `connect_s` for the whole connect: DNS lookup, TCP, TLS handshake (a failure says which step failed:
`dns_error`, `connect_refused` or `connect_error`, `connect_timeout`, `upstream_tls_error`); `response_s` from the
moment the request head is written until the response head is parsed; `idle_s` for each wait on the response body.

Two ways to send: `send` (a coroutine: waits for a connection, streams a request body) and `send_now`, the
engine's common exchange with no coroutine or future: a bodiless request written on an idle pooled connection,
whose response head (and the body, if it came with it) or failure reaches the engine through a callback
(`_Awaiting`, which stands in for the head future so every failure path below settles both alike).
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import socket
import ssl
import time
from typing import Any, AsyncIterator, Callable

import httptools

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.io.h2_upstream import H2Upstream
from gatewatch.io.http1 import BodyQueue, Deadlines, WriteFlow, chunk_frame, no_delay, serialize_head
from gatewatch.io.interfaces import AttemptTiming, ClientGone, UpstreamFailure, UpstreamRequest, connect_failure
from gatewatch.io.simple_head import ENABLED as SIMPLE_HEADS
from gatewatch.io.simple_head import simple_response
from gatewatch.io.tls import UpstreamTLS, client_context, failure_of
from gatewatch.telemetry.names import ErrorType, TlsFailure


MAX_RESPONSE_HEAD = 64 * 1024  # like nginx's "upstream sent too big header" (proxy_buffer_size, generous)
FRAMING_NAME_LENGTHS = frozenset({len(b"content-length"), len(b"transfer-encoding")})


class _Unsolicited(Exception):
    """Raised from a parser callback: the upstream broke the protocol (→ PROTOCOL_ERROR, connection aborted)."""


def _reset() -> UpstreamFailure:
    return UpstreamFailure(ErrorType.UPSTREAM_RESET, "connection closed before the response was complete",
                           before_response=False)


class UpstreamConnection:  # asyncio's protocol interface, duck-typed (an extension type when compiled)
    # Slots: with a pool of many instances each request touches a different, cache-cold connection, and a
    # dict-less object is fewer cache lines to fetch.
    __slots__ = ("pool", "loop", "transport", "flow", "parser", "closed", "busy", "idle_since", "peer", "head",
                 "body", "_headers", "_head_bytes", "_te", "_has_length", "_status_reason", "complete",
                 "is_head_request", "until_close", "keep_alive", "awaiting", "forgotten", "tls_version", "tls_cipher",
                 "upgrading", "tunnel", "leftover", "_fresh")

    def __init__(self, pool: "EndpointPool"):
        self.pool = pool
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.flow = WriteFlow()
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.busy = False
        self.idle_since = 0.0
        self.peer: tuple[str, int] | None = None
        self.head: asyncio.Future | None = None
        self.body: BodyQueue | None = None
        self._headers: list[tuple[str, str]] = []
        self._head_bytes = 0
        self._te: str | None = None  # the response's last Transfer-Encoding line, seen as its headers are parsed
        self._has_length = False  # it has a Content-Length
        self._status_reason = b""
        self.complete = False
        self.is_head_request = False
        self.until_close = False  # the response body is delimited by the connection closing (no length)
        self.keep_alive = False
        self.awaiting: _Awaiting | None = None  # a `send_now` exchange whose head is in, to deliver after parsing
        self.forgotten = False  # the pool no longer counts it (exactly once, whichever way it ended)
        self.tls_version: str | None = None  # "1.3" (OTel `tls.protocol.version`) once a TLS handshake is done
        self.tls_cipher: str | None = None
        # WebSocket (issue 17): the request asked to upgrade, so a 101 is its answer; once it is in, the bytes after
        # its head wait in `leftover` (reading paused) until the relay session (`tunnel`) takes the connection.
        self.upgrading = False
        self.tunnel = None
        self.leftover = b""
        self._fresh = False  # set by `begin`: no byte of the expected response has been parsed yet

    # --- asyncio.Protocol ---

    def connection_made(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = (peer[0], peer[1]) if peer else None
        no_delay(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.flow.close()
        self.pool.forget(self)
        if self.tunnel is not None:
            self.tunnel.lost()
            return
        if self.head is not None and not self.head.done():
            if isinstance(exc, ssl.SSLError):
                # TLS 1.3 ends the handshake before the server has judged our certificate: its refusal (an
                # alert) arrives with the first read, and is still a TLS failure, not a reset (RFC 8446 §4.4.2.4).
                kind, message = failure_of(exc)
                failure = UpstreamFailure(ErrorType.UPSTREAM_TLS_ERROR, message, tls_failure=kind.value)
            else:
                failure = UpstreamFailure(ErrorType.UPSTREAM_RESET, "connection closed before the response head",
                                          before_response=True)
            self.head.set_exception(failure)
        if self.body is not None and not self.complete:
            if self.until_close and exc is None and self.head is not None and self.head.done():
                self.complete = True  # a clean close is how a length-less body ends
                self.body.finish()
            else:
                self.body.fail(_reset())

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
        if not self.busy:
            self.abort()  # bytes nobody asked for: the connection is not trustworthy any more
            return
        if self._fresh:  # the first read of this exchange's response: it may be a simple one (`simple_head`)
            self._fresh = False
            if not SIMPLE_HEADS or self.is_head_request or self.upgrading or not self._simple(data):
                self._feed(data)
        else:
            self._feed(data)
        awaiting = self.awaiting
        if awaiting is not None:  # the head (and maybe the whole body) of a `send_now` exchange is in
            self.awaiting = None
            awaiting.deliver()

    def _feed(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as err:
            if not (self.upgrading and self.parser.get_status_code() == 101):
                self._broken(err)
            else:  # RFC 9110 §15.2.2: the new protocol starts right after the 101's empty line
                self.leftover = data[err.args[0]:] if err.args else b""
                self.transport.pause_reading()  # until the relay session takes over
        except httptools.HttpParserError as err:
            self._broken(err)

    @cython.locals(simple=tuple, body=bytes)
    def _simple(self, data: bytes) -> bool:
        """Settle the exchange from a simple response (one keep-alive HTTP/1.1 response with a Content-Length,
        body included, exactly this read) as llhttp's callbacks would, without them. False: nothing done, llhttp
        parses `data`."""
        simple = simple_response(data, MAX_RESPONSE_HEAD)
        if simple is None:
            return False
        status, reason, headers, body, block, dated = simple
        self._headers = headers
        if self.head is not None and not self.head.done():
            self.head.set_result((status, reason, tuple(headers), block, dated))
        self.keep_alive = True
        self.until_close = False
        if body:
            self.body.feed(body)
        self.complete = True
        self.body.finish()
        return True

    def _broken(self, err: Exception) -> None:
        """The upstream broke HTTP/1.1: the exchange fails (`protocol_error`) and the connection is aborted."""
        failure = UpstreamFailure(ErrorType.PROTOCOL_ERROR, str(err) or "invalid response",
                                  before_response=self.head is not None and not self.head.done())
        if self.head is not None and not self.head.done():
            self.head.set_exception(failure)
        elif self.body is not None:
            self.body.fail(failure)
        self.abort()

    # --- llhttp callbacks ---

    def on_message_begin(self) -> None:
        if self.complete:
            raise _Unsolicited()  # a second response nobody asked for: the connection cannot be trusted
        self._headers = []
        self._head_bytes = 0
        self._status_reason = b""
        self._te = None
        self._has_length = False

    def on_status(self, status: bytes) -> None:
        # llhttp hands the reason phrase over in pieces when it spans reads: each piece adds to it (it used to
        # replace it, so a head split inside the phrase was relayed with only its end, "404 nd")
        self._head_bytes += len(status)
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise _Unsolicited("upstream sent too big a header")
        self._status_reason += status

    @cython.locals(name=bytes, value=bytes, k=str, v=str, lk=str)
    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_bytes += len(name) + len(value) + 4
        if self._head_bytes > MAX_RESPONSE_HEAD:
            raise _Unsolicited("upstream sent too big a header")
        k, v = name.decode("latin-1"), value.decode("latin-1")
        self._headers.append((k, v))
        if len(name) in FRAMING_NAME_LENGTHS:  # the body's framing, noted here instead of a scan per response
            lk = k.lower()
            if lk == "content-length":
                self._has_length = True
            elif lk == "transfer-encoding":  # the final coding is the last line's (RFC 9110 §5.3, RFC 9112 §6.1)
                self._te = v

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status == 101 and not self.upgrading:
            raise _Unsolicited("101 Switching Protocols to a request that did not ask to upgrade")
        if 100 <= status < 200 and status != 101:
            return  # interim (100 Continue, 103 Early Hints): wait for the final response
        if self.head is not None and not self.head.done():
            self.head.set_result((status, self._status_reason.decode("latin-1"), tuple(self._headers), None, False))
        if status == 101:  # the answer to our WebSocket upgrade (RFC 6455 §4.2.2): final, the engine checks it
            return
        self.keep_alive = self.parser.should_keep_alive()  # read now: llhttp resets it after the message
        te = self._te
        # RFC 9112 §6.3: no length and no final `chunked` coding → the body ends when the connection closes.
        self.until_close = status not in (204, 304) and (
            (te is None and not self._has_length) or (te is not None and not te.strip().lower().endswith("chunked")))
        if self.is_head_request:
            # llhttp cannot be told a body is absent for HEAD; end here and never reuse this connection.
            self.complete = True
            self.body.finish()
            self.busy = False
            self.closed = True
            self.transport.close()

    def on_body(self, body: bytes) -> None:
        if self.body is not None:
            self.body.feed(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200 and self.head is not None and not self.head.done():
            return  # end of an interim response
        self.complete = True
        if self.body is not None:
            self.body.finish()

    # --- exchange ---

    def begin(self, method: str, head: "asyncio.Future | _Awaiting | None" = None, upgrade: bool = False) -> None:
        self.busy = True
        self.upgrading = upgrade
        self.complete = False
        self.is_head_request = method == "HEAD"
        self._fresh = True  # llhttp is between messages: the response's first read may skip it
        self.head = head if head is not None else self.loop.create_future()
        self.body = BodyQueue(self._pause_reading, self._resume_reading, _reset)

    def _pause_reading(self) -> None:
        if not self.closed:
            self.transport.pause_reading()

    def _resume_reading(self) -> None:
        if not self.closed:
            self.transport.resume_reading()

    def abort(self) -> None:
        self.closed = True
        self.flow.close()
        if self.transport is not None:
            self.transport.abort()


async def _resolve(loop: asyncio.AbstractEventLoop, host: str, port: int) -> list[tuple[str, int]]:
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [info[4][:2] for info in infos]


async def _connect(loop: asyncio.AbstractEventLoop, factory, addresses: list[tuple[str, int]]):
    """The first address that accepts, in the resolver's order (as `create_connection` tries them)."""
    failure: OSError | None = None
    for host, port in addresses:
        try:
            return (await loop.create_connection(factory, host, port))[1]
        except ssl.SSLError:
            raise
        except OSError as err:
            failure = err
    raise failure or OSError(errno.EADDRNOTAVAIL, "the name resolved to no address")


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class EndpointPool:
    __slots__ = ("host", "port", "tls", "server_name", "max_connections", "idle_s", "idle", "open", "_waiters",
                 "retired", "literal")

    def __init__(self, host: str, port: int, max_connections: int, idle_s: float,
                 tls: ssl.SSLContext | None = None, server_name: str | None = None):
        self.host = host
        self.port = port
        self.literal = _is_ip(host)  # an IP address: no DNS step
        self.tls = tls  # https upstreams
        self.server_name = server_name or host  # SNI, and the name the certificate must carry
        self.max_connections = max_connections
        self.idle_s = idle_s
        self.idle: collections.deque[UpstreamConnection] = collections.deque()
        self.open = 0
        self._waiters: collections.deque[asyncio.Future] = collections.deque()
        self.retired = False  # replaced (its TLS settings changed): connections in use close when released

    def take_idle(self) -> UpstreamConnection | None:
        """A pooled keep-alive connection, or None (then `acquire` connects or waits)."""
        if not self.idle:
            return None
        now = time.monotonic()
        while self.idle:
            conn = self.idle.pop()  # LIFO: the warmest connection
            if conn.closed:
                continue
            if now - conn.idle_since > self.idle_s:
                conn.abort()
                continue
            return conn
        return None

    async def acquire(self, connect_s: float, timing: AttemptTiming | None = None) -> UpstreamConnection:
        conn = self.take_idle()
        if conn is not None:
            return conn
        loop = asyncio.get_running_loop()
        while self.open >= self.max_connections:
            waiter = loop.create_future()
            self._waiters.append(waiter)
            waited = loop.time()
            try:
                async with asyncio.timeout(connect_s):
                    conn = await waiter
            except (TimeoutError, asyncio.CancelledError) as err:
                # release() may have handed us a connection in the same iteration as the timeout/cancel:
                # give it back, or it would stay busy and counted forever.
                if waiter.done() and not waiter.cancelled() and waiter.result() is not None:
                    self.release(waiter.result())
                if isinstance(err, asyncio.CancelledError):
                    raise
                raise UpstreamFailure(ErrorType.CONNECT_TIMEOUT, "no free connection to the instance") from None
            finally:
                if timing is not None:
                    timing.pool_wait_s = (timing.pool_wait_s or 0.0) + loop.time() - waited
            if conn is not None and not conn.closed:
                return conn
        self.open += 1
        connecting = loop.time()
        handshaking: float | None = None
        conn: UpstreamConnection | None = None
        resolving = not self.literal
        try:
            # DNS, TCP, then TLS on it (`start_tls`): separate steps, so a failure says which one failed and the
            # attempt's timing which one took the time.
            async with asyncio.timeout(connect_s):
                addresses = [(self.host, self.port)] if self.literal else await _resolve(loop, self.host, self.port)
                resolving = False
                conn = await _connect(loop, lambda: UpstreamConnection(self), addresses)
                if self.tls is not None:
                    handshaking = loop.time()
                    conn.transport = await loop.start_tls(conn.transport, conn, self.tls,
                                                          server_hostname=self.server_name)
                    tls = conn.transport.get_extra_info("ssl_object")
                    if tls is not None:
                        conn.tls_version = (tls.version() or "").removeprefix("TLSv") or None
                        conn.tls_cipher = (tls.cipher() or (None,))[0]
        except BaseException as err:
            if conn is None:
                self.open -= 1  # never connected: no connection_lost will come
            else:
                conn.abort()
                self.forget(conn)  # connected, then failed (its connection_lost finds it forgotten)
            if isinstance(err, TimeoutError) and resolving:
                raise UpstreamFailure(ErrorType.DNS_ERROR, f"resolving {self.host!r} took longer than {connect_s}s"
                                      ) from None
            if isinstance(err, TimeoutError):
                raise UpstreamFailure(ErrorType.CONNECT_TIMEOUT, f"connect took longer than {connect_s}s") from None
            if isinstance(err, socket.gaierror):  # an OSError too: the name did not resolve
                raise UpstreamFailure(ErrorType.DNS_ERROR, f"cannot resolve {self.host!r}: "
                                      f"{err.strerror or err}") from None
            if isinstance(err, ssl.SSLError):  # an OSError too: connected, but the handshake failed
                kind, message = failure_of(err)
                raise UpstreamFailure(ErrorType.UPSTREAM_TLS_ERROR, message, tls_failure=kind.value) from None
            if isinstance(err, OSError):
                if handshaking is not None:  # the upstream hung up mid-handshake (a plaintext or broken server)
                    raise UpstreamFailure(ErrorType.UPSTREAM_TLS_ERROR, "the upstream closed the connection during "
                                          "the TLS handshake (handshake_failed)",
                                          tls_failure=TlsFailure.HANDSHAKE_FAILED.value) from None
                raise connect_failure(err) from None
            raise
        finally:
            if timing is not None:
                now = loop.time()
                timing.connect_s = (handshaking or now) - connecting
                if handshaking is not None:
                    timing.tls_s = now - handshaking
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        conn.busy = False
        conn.head = None
        conn.body = None
        if conn.closed:
            return
        if self.retired:
            conn.abort()
            return
        while self._waiters:
            w = self._waiters.popleft()
            if not w.done():
                conn.busy = True
                w.set_result(conn)
                return
        conn.idle_since = time.monotonic()
        self.idle.append(conn)

    def forget(self, conn: UpstreamConnection) -> None:
        if conn.forgotten:
            return
        conn.forgotten = True
        self.open -= 1
        try:
            self.idle.remove(conn)
        except ValueError:
            pass
        while self._waiters:  # a slot is free: let one waiter connect
            w = self._waiters.popleft()
            if not w.done():
                w.set_result(None)
                break

    def close(self) -> None:
        self.retired = True
        for conn in list(self.idle):
            conn.abort()
        self.idle.clear()


class RawResponse:
    __slots__ = ("_pool", "_conn", "status", "reason", "headers", "head_block", "dated", "peer_address", "peer_port",
                 "_idle_s", "_pump", "_released", "_whole")

    @cython.locals(conn=UpstreamConnection)
    def __init__(self, pool: EndpointPool, conn: UpstreamConnection, head: tuple, idle_s: float,
                 pump: asyncio.Task | None):
        """`head`: (status, reason, headers, head_block, dated), as the connection parsed it; `head_block` is the
        simple head's relayed header lines (io.simple_head.simple_response), None from llhttp."""
        self._pool = pool
        self._conn = conn
        self.status, self.reason, self.headers, self.head_block, self.dated = head
        self.peer_address = conn.peer[0] if conn.peer else None
        self.peer_port = conn.peer[1] if conn.peer else None
        self._idle_s = idle_s
        self._pump = pump
        self._released = False
        self._whole: bytes | None = None

    @property
    def whole(self) -> bytes | None:
        """The entire body if it already arrived with the head (a small response usually does): the engine
        can answer with one write instead of a chunk-by-chunk relay. None: stream it with `body()`."""
        if self._whole is None and self._pump is None and self._conn.complete and self._conn.body is not None:
            self._whole = self._conn.body.take_whole()
        return self._whole

    async def body(self) -> AsyncIterator[bytes]:
        if self._whole is not None:  # taken by `whole` but relayed this way after all
            if self._whole:
                yield self._whole
            return
        q = self._conn.body
        while True:
            try:
                chunk = await q.read(self._idle_s)
            except TimeoutError:
                raise UpstreamFailure(ErrorType.READ_TIMEOUT, f"body stalled for {self._idle_s}s",
                                      before_response=False) from None
            if not chunk:
                return
            yield chunk

    def detach(self) -> tuple[UpstreamConnection, bytes]:
        """A 101 to an upgrade: the connection leaves the pool's hands (it still counts toward the endpoint's
        limit until it closes) with the bytes that followed the head. The caller sets its `tunnel`."""
        self._released = True
        conn = self._conn
        leftover, conn.leftover = conn.leftover, b""
        conn.busy = False
        conn.head = conn.body = None
        return conn, leftover

    def close(self) -> None:
        if self._released:
            return
        self._released = True
        conn = self._conn
        pump_ok = self._pump is None or (self._pump.done() and not self._pump.cancelled()
                                         and self._pump.exception() is None)
        if self._pump is not None and not self._pump.done():
            self._pump.cancel()
        if conn.complete and pump_ok and not conn.closed and conn.keep_alive and not conn.until_close:
            self._pool.release(conn)
        else:
            conn.abort()
            conn.busy = False


@cython.locals(req=UpstreamRequest)
def _request_bytes(req: UpstreamRequest) -> tuple[bytes, bool]:
    """(serialized head, chunked?) — chunked when a body is coming and its length is unknown."""
    chunked = req.has_body and not any(k.lower() == "content-length" for k, _ in req.headers)
    extra = [b"Transfer-Encoding: chunked\r\n"] if chunked else []
    line = f"{req.method} {req.target} HTTP/1.1\r\n".encode("latin-1")
    return serialize_head(line, req.headers, extra), chunked


async def _pump_body(conn: UpstreamConnection, body: AsyncIterator[bytes], chunked: bool) -> None:
    """Stream the client's request body upstream. A client that vanishes aborts the upstream connection."""
    try:
        async for chunk in body:
            if conn.closed:
                return
            if chunked:
                conn.transport.writelines(chunk_frame(chunk))
            else:
                conn.transport.write(chunk)
            if conn.flow.paused:
                await conn.flow.wait()
        if chunked and not conn.closed:
            conn.transport.write(b"0\r\n\r\n")
    except ClientGone:
        conn.abort()
        raise


class RawForwarder:
    __slots__ = ("_limits", "_pools", "_tls", "_default_tls", "_deadlines", "h2_pools", "_h2", "_default_h2_tls")

    def __init__(self, limits: dict[str, tuple[int, float]]):
        """`limits`: pool or upstream name → (max connections per endpoint, keep-alive idle seconds)."""
        self._limits = limits
        self._pools: dict[tuple[str, str, int, str], EndpointPool] = {}
        self._tls: dict[str, UpstreamTLS] = {}  # pool or upstream name → its TLS settings (https only)
        self._default_tls: UpstreamTLS | None = None  # an https upstream with no settings: the system's CAs
        self._deadlines: Deadlines | None = None  # response-head timeouts of all exchanges, created in the loop
        # pools whose instances speak HTTP/2 (`protocol: h2`, set by the runtime): sent by `h2_upstream`
        self.h2_pools: frozenset[str] = frozenset()
        self._h2 = H2Upstream()
        self._default_h2_tls: UpstreamTLS | None = None  # an https h2 upstream with no settings

    def _pool(self, name: str, host: str, port: int, scheme: str) -> EndpointPool:
        key = (name, host, port, scheme)
        pool = self._pools.get(key)
        if pool is None:
            limit, idle = self._limits.get(name, (256, 15.0))
            tls = None
            if scheme == "https":
                tls = self._tls.get(name)
                if tls is None:
                    tls = self._default_tls = self._default_tls or UpstreamTLS(client_context())
            pool = self._pools[key] = EndpointPool(host, port, limit, idle, tls.context if tls else None,
                                                   tls.server_name if tls else None)
        return pool

    @cython.locals(ep=EndpointPool, conn=UpstreamConnection, deadlines=Deadlines, request=UpstreamRequest)
    def send_now(self, pool: str, request: UpstreamRequest, response_s: float, idle_s: float,
                 timing: AttemptTiming, callback: Callable[[Any, RawResponse | UpstreamFailure], None],
                 arg: Any) -> bool:
        """Write a bodiless request on an idle pooled connection and return True; `callback(arg, result)` follows
        exactly once from the loop. False (nothing done) when no idle connection is pooled: use `send`."""
        if pool in self.h2_pools:
            return False
        ep = self._pool(pool, request.host, request.port, request.scheme)
        conn = ep.take_idle()
        if conn is None:
            return False
        _tls_of(conn, timing)
        deadlines = self._head_deadlines(conn.loop)
        awaiting = _Awaiting(ep, conn, response_s, idle_s, timing, callback, arg, deadlines)
        conn.begin(request.method, awaiting)
        head, _ = _request_bytes(request)
        loop = conn.loop
        writing = loop.time()
        conn.transport.write(head)
        awaiting.sent = loop.time()
        timing.request_sent_s = awaiting.sent - writing
        awaiting.tick = deadlines.add(response_s, awaiting)
        return True

    async def send(self, pool: str, request: UpstreamRequest, body: AsyncIterator[bytes] | None,
                   connect_s: float, response_s: float, idle_s: float,
                   timing: AttemptTiming | None = None) -> RawResponse:
        if pool in self.h2_pools:
            tls = None
            if request.scheme == "https":  # no settings: the system's CAs, offering ALPN h2 only (RFC 9113 §3.2)
                tls = self._tls.get(pool) or self._default_h2_tls
                if tls is None:
                    tls = self._default_h2_tls = UpstreamTLS(_h2_context())
            return await self._h2.send(request, body, connect_s, response_s, idle_s, timing, tls)
        ep = self._pool(pool, request.host, request.port, request.scheme)
        conn = ep.take_idle() or await ep.acquire(connect_s, timing)
        _tls_of(conn, timing)
        conn.begin(request.method, upgrade=request.upgrade is not None)
        head, chunked = _request_bytes(request)
        loop = conn.loop
        writing = loop.time()
        conn.transport.write(head)
        sent = loop.time()
        if timing is not None:
            timing.request_sent_s = sent - writing  # the head; a streamed body goes on beside the wait
        pump = None
        if body is not None:
            pump = loop.create_task(_pump_body(conn, body, chunked))
        deadlines = self._head_deadlines(loop)
        head_future = conn.head
        tick = deadlines.add(response_s, head_future)
        try:
            if pump is None:
                status_head = await conn.head
            else:
                done, _ = await asyncio.wait((conn.head, pump), return_when=asyncio.FIRST_COMPLETED)
                if pump in done and pump.exception() is not None:
                    raise pump.exception()
                status_head = await conn.head
        except _HeadTimeout:
            _discard(conn, pump)
            raise UpstreamFailure(ErrorType.RESPONSE_TIMEOUT, f"no response head within {response_s}s") from None
        except ClientGone:
            _discard(conn, pump)
            raise UpstreamFailure(ErrorType.UPSTREAM_RESET, "client went away during the upload") from None
        except UpstreamFailure:
            _discard(conn, pump)
            raise
        except asyncio.CancelledError:
            _discard(conn, pump)
            raise
        finally:
            deadlines.discard(tick, head_future)
            if timing is not None:
                timing.ttfb_s = loop.time() - sent
        return RawResponse(ep, conn, status_head, idle_s, pump)

    def _head_deadlines(self, loop: asyncio.AbstractEventLoop) -> Deadlines:
        """The response-head deadlines of every exchange (made in the loop, on first use)."""
        if self._deadlines is None:
            self._deadlines = Deadlines(loop, _HeadTimeout)
        return self._deadlines

    def set_limits(self, limits: dict[str, tuple[int, float]]) -> None:
        """After a config reload: limits for pools and upstreams connected from now on (connection pools that
        already exist keep theirs until the process restarts)."""
        self._limits = limits

    def set_tls(self, tls: dict[str, UpstreamTLS]) -> None:
        """TLS settings per pool or upstream name (at start and after each reload). A name whose settings are
        not the same object as before loses its pooled connections: they were made under the old ones
        (requests in flight finish on theirs)."""
        for key in [k for k in self._pools if self._tls.get(k[0]) is not tls.get(k[0])]:
            self._pools.pop(key).close()
        self._tls = dict(tls)

    async def close(self) -> None:
        for pool in self._pools.values():
            pool.close()
        self._pools.clear()
        await self._h2.close()


def _h2_context():
    ctx = client_context()
    ctx.set_alpn_protocols(["h2"])
    return ctx


class _HeadTimeout(Exception):
    pass


class _Awaiting:
    """A `send_now` exchange waiting for its response head. It takes the head future's place on the connection
    (`done`, `set_result`, `set_exception`, `cancel`), so the connection's callbacks, `connection_lost` and the
    response-head `Deadlines` settle it as they settle `send`'s future; the engine's callback runs once."""

    __slots__ = ("ep", "conn", "response_s", "idle_s", "timing", "callback", "arg", "deadlines", "tick", "sent",
                 "status_head", "settled")

    def __init__(self, ep: EndpointPool, conn: UpstreamConnection, response_s: float, idle_s: float,
                 timing: AttemptTiming, callback: Callable[[Any, RawResponse | UpstreamFailure], None], arg: Any,
                 deadlines: Deadlines):
        self.ep, self.conn, self.response_s, self.idle_s, self.timing = ep, conn, response_s, idle_s, timing
        self.callback, self.arg, self.deadlines = callback, arg, deadlines
        self.tick = 0
        self.sent = 0.0
        self.status_head: tuple | None = None
        self.settled = False

    def done(self) -> bool:
        return self.settled

    def cancelled(self) -> bool:
        return False

    def set_result(self, status_head: tuple) -> None:
        """The head is parsed (inside `feed_data`): delivered once the rest of this read is parsed, so a small
        body that came with it is whole by then."""
        if not self.settled:
            self.settled = True
            self.status_head = status_head
            self.conn.awaiting = self

    def deliver(self) -> None:
        self.deadlines.discard(self.tick, self)
        conn = self.conn
        self.timing.ttfb_s = conn.loop.time() - self.sent
        self.callback(self.arg, RawResponse(self.ep, conn, self.status_head, self.idle_s, None))

    def set_exception(self, err: BaseException) -> None:
        if self.settled:
            return
        self.settled = True
        conn = self.conn
        self.deadlines.discard(self.tick, self)
        self.timing.ttfb_s = conn.loop.time() - self.sent
        if isinstance(err, _HeadTimeout):
            err = UpstreamFailure(ErrorType.RESPONSE_TIMEOUT, f"no response head within {self.response_s}s")
        elif not isinstance(err, UpstreamFailure):
            err = UpstreamFailure(ErrorType.UPSTREAM_RESET, str(err) or type(err).__name__)
        conn.abort()
        conn.busy = False
        self.callback(self.arg, err)

    def cancel(self) -> bool:
        self.set_exception(UpstreamFailure(ErrorType.UPSTREAM_RESET, "exchange cancelled"))
        return True


def _tls_of(conn: UpstreamConnection, timing: AttemptTiming | None) -> None:
    """An attempt on a TLS connection, new or pooled, says what it negotiated."""
    if conn.tls_version is not None and timing is not None:
        timing.tls_protocol_version, timing.tls_cipher = conn.tls_version, conn.tls_cipher


def _discard(conn: UpstreamConnection, pump: asyncio.Task | None) -> None:
    if pump is not None and not pump.done():
        pump.cancel()
    if conn.head is not None and not conn.head.done():
        conn.head.cancel()
    conn.abort()
    conn.busy = False
