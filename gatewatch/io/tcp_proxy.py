"""L4 TCP pass-through, the bytes: a `mode: tcp` listener relays each client connection to an instance.

Raw asyncio protocols, no streams. The decisions (pick, retry, outlier reports) and the record are a session's
(`gatewatch.proxy.tcp.TcpSession`, reached through the narrow `sessions.open(peer, local)`); this module only
moves bytes and tells the session what happened. Per client connection (`TcpConnection`):
1. accept: over the listener's `max_connections`, the connection is reset at once and counted
   (`connection_limit`); else the client's reading is paused until an instance is connected.
2. connect: to what `session.pick()` returns, within `connect_timeout_s`; a refused, unreachable or timed-out
   connect is reported (`connect_failed`) and the next pick may try another instance, up to `connect_attempts`
   (nothing was sent yet, so a retry is always safe). Nothing to connect to: the client is reset.
3. the PROXY protocol header (v1/v2, `gatewatch.io.proxy_protocol`) when configured, then the client's bytes.
4. relay both ways with backpressure: a side whose write buffer passes its high-water mark pauses reading on the
   other side (`pause_writing`/`resume_writing`), so Gatewatch holds at most about the high-water mark plus one
   read per direction, whatever the peers do.
5. end: a half-close is relayed (RFC 9293 §3.6: a FIN closes one direction only; `eof_received` -> `write_eof` on
   the other side), and the connection closes once both directions are closed. A reset from either side resets
   the other (SO_LINGER 0, so the peer sees a reset, never a clean close that could pass for a complete stream).
   No byte either way for `idle_timeout_s`: both sides are closed (FIN). The first byte from the instance (or its
   clean close) is a success for outlier detection; a reset before any byte a failure.
A connection to an instance that is ejected, set draining or removed from the pool later keeps running: only new
connections avoid it (as with HAProxy and Envoy). `TcpListener.stop(grace_s)` (process drain) stops accepting,
lets open connections run for the grace period, then half-closes both sides of what is left (FIN both ways), and
resets what is still open `HALF_CLOSE_WAIT_S` later; each is counted (`drain_cut`, and the drain's `deadline`).
"""

from __future__ import annotations

import asyncio
import socket
import struct

from gatewatch.io.proxy_protocol import header as proxy_header
from gatewatch.telemetry.names import DrainClose, ErrorType, TcpClosedBy, TcpOutcome

HALF_CLOSE_WAIT_S = 1.0  # after a drain's grace: how long a half-closed connection may take to finish
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST


def reset(transport: asyncio.BaseTransport | None) -> None:
    """Close with a TCP reset (RST) rather than a FIN: the peer must not take the end for a complete stream."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and not transport.is_closing():
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass
    transport.abort()


def connect_error(err: BaseException) -> str:
    """The `error.type` of a failed connect."""
    if isinstance(err, TimeoutError):
        return ErrorType.CONNECT_TIMEOUT.value
    if isinstance(err, ConnectionRefusedError):
        return ErrorType.CONNECT_REFUSED.value
    if isinstance(err, socket.gaierror):
        return ErrorType.DNS_ERROR.value
    return ErrorType.CONNECT_ERROR.value


class _Client(asyncio.Protocol):
    """The client's side: every callback goes to the connection."""

    __slots__ = ("conn", "listener")

    def __init__(self, listener: TcpListener):
        self.listener = listener
        self.conn: TcpConnection | None = None

    def connection_made(self, transport) -> None:
        self.conn = self.listener.accepted(transport)

    def data_received(self, data: bytes) -> None:
        self.conn.from_client(data)

    def eof_received(self) -> bool:
        return self.conn.client_eof_received()

    def pause_writing(self) -> None:  # the client reads slower than the instance sends
        self.conn.pause(self.conn.upstream)

    def resume_writing(self) -> None:
        self.conn.resume(self.conn.upstream, self.conn.upstream_eof)

    def connection_lost(self, exc) -> None:
        if self.conn is not None:
            self.conn.client_lost(exc)


class _Upstream(asyncio.Protocol):
    """The instance's side. What happens before the connect has returned (the instance may speak first) waits in
    `early` and is replayed once the connection takes it."""

    __slots__ = ("conn", "early", "transport")

    def __init__(self):
        self.conn: TcpConnection | None = None
        self.transport = None
        self.early: list = []  # ("data", bytes) | ("eof",) | ("lost", exc)

    def connection_made(self, transport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.conn is None:
            self.early.append(("data", data))
        else:
            self.conn.from_upstream(data)

    def eof_received(self) -> bool:
        if self.conn is None:
            self.early.append(("eof",))
            return True
        return self.conn.upstream_eof_received()

    def pause_writing(self) -> None:  # the instance reads slower than the client sends
        if self.conn is not None:
            self.conn.pause(self.conn.client)

    def resume_writing(self) -> None:
        if self.conn is not None:
            self.conn.resume(self.conn.client, self.conn.client_eof)

    def connection_lost(self, exc) -> None:
        if self.conn is None:
            self.early.append(("lost", exc))
        else:
            self.conn.upstream_lost(exc)


class TcpListener:
    """A bound `mode: tcp` listener (the surface of the HTTP listeners: `start`, `stop`, `bound`, `connections`).
    `sessions`: `gatewatch.proxy.tcp.TcpSessions` (open, refused); `settings` the listener's config."""

    def __init__(self, name: str, host: str, port: int, settings, sessions, reuse_port: bool = False):
        self.name, self.host, self.port = name, host, port
        self.tls = None  # plaintext pass-through: TLS, if any, is between the client and the instance
        self.bound: tuple[str, int] | None = None
        self.connections: set[TcpConnection] = set()
        self.reuse_port = reuse_port
        self.loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._idle = asyncio.Event()  # set while no connection is open (a drain waits for it)
        self._idle.set()
        self.configure(settings, sessions)

    def configure(self, settings, sessions) -> None:
        """New settings (a reload): new connections use them; open ones keep theirs."""
        self.settings, self.sessions = settings, sessions

    async def start(self) -> tuple[str, int]:
        self.loop = asyncio.get_running_loop()
        self._server = await self.loop.create_server(lambda: _Client(self), self.host, self.port,
                                                     reuse_port=self.reuse_port or None, backlog=1024)
        self.bound = tuple(self._server.sockets[0].getsockname()[:2])
        return self.bound

    def accepted(self, transport) -> TcpConnection | None:
        if len(self.connections) >= self.settings.max_connections:
            self.sessions.refused()
            reset(transport)
            return None
        conn = TcpConnection(self, transport)
        self.connections.add(conn)
        self._idle.clear()
        return conn

    def ended(self, conn: TcpConnection) -> None:
        self.connections.discard(conn)
        if not self.connections:
            self._idle.set()

    async def stop(self, grace_s: float = 5.0, idle_close_s: float = 1.0) -> dict[str, int]:
        """Stop accepting; open connections get `grace_s`; then both sides of each are half-closed (FIN), and
        what is still open `HALF_CLOSE_WAIT_S` later is reset. Returns {DrainClose value: count}."""
        if self._server is not None:
            self._server.close()  # synchronously: no new connection from here on
        before = len(self.connections)
        try:
            await asyncio.wait_for(self._idle.wait(), grace_s)
        except TimeoutError:
            pass
        left = list(self.connections)
        for conn in left:
            conn.drain_cut()
        if left:
            try:
                await asyncio.wait_for(self._idle.wait(), HALF_CLOSE_WAIT_S)
            except TimeoutError:
                for conn in list(self.connections):
                    conn.abort_both()
        if self._server is not None:
            await self._server.wait_closed()
        return {DrainClose.AFTER_RESPONSE.value: before - len(left), DrainClose.DEADLINE.value: len(left)}


class TcpConnection:
    """One client connection and its connection to an instance."""

    def __init__(self, listener: TcpListener, client):
        self.listener = listener
        self.settings = listener.settings
        self.client = client
        self.upstream = None
        self.loop = listener.loop
        self.received = self.sent = 0
        self.client_eof = self.upstream_eof = False
        self.client_gone = False
        self.upstream_gone = True  # until a connect succeeds
        self.judged = False  # outlier detection told about the instance
        self.closed_by: str | None = None
        self.outcome: str | None = None
        self.error_type: str | None = None
        self.last_io = 0.0
        self._idle_timer = None
        self._received = self._sent = None  # byte counters of the instance, once connected
        self._finished = False
        self.early: list[bytes] = []  # client bytes read before the instance was connected
        client.pause_reading()  # nothing is read before an instance is connected
        peer = client.get_extra_info("peername") or ("", 0)
        local = client.get_extra_info("sockname") or ("", 0)
        self.peer, self.local = (peer[0], peer[1]), (local[0], local[1])
        self.session = listener.sessions.open(self.peer, self.local)
        self.task = self.loop.create_task(self._connect())

    # --- connect -------------------------------------------------------------------------------------------

    async def _connect(self) -> None:
        session, timeout = self.session, self.settings.connect_timeout_s
        while (target := session.pick()) is not None:
            proto = _Upstream()
            started = self.loop.time()
            try:
                transport, _ = await asyncio.wait_for(
                    self.loop.create_connection(lambda p=proto: p, target[0], target[1]), timeout)
            except asyncio.CancelledError:  # the client went away (or a drain cut it) while connecting
                session.connect_failed(ErrorType.CLIENT_ABORT.value, False, None)
                self._refuse()
                raise
            except OSError as err:  # TimeoutError is one
                session.connect_failed(connect_error(err), isinstance(err, TimeoutError),
                                       self.loop.time() - started)
                if self.client_gone:
                    break
                continue
            self._attach(transport, proto, self.loop.time() - started)
            return
        self._refuse()

    def _attach(self, transport, proto: _Upstream, connect_s: float) -> None:
        """Connected: the PROXY header, then the relay (the client's reading resumes)."""
        self.upstream, self.upstream_gone = transport, False
        self._received, self._sent = self.session.connected(transport.get_extra_info("peername"), connect_s)
        if self.settings.proxy_protocol != "none":
            transport.write(proxy_header(self.settings.proxy_protocol, self.peer, self.local))
        early, self.early = self.early, []
        for data in early:
            self.from_client(data)
        self.last_io = self.loop.time()
        self._idle_timer = self.loop.call_later(self.settings.idle_timeout_s, self._idle_check)
        proto.conn = self
        replay = {"data": self.from_upstream, "eof": self.upstream_eof_received, "lost": self.upstream_lost}
        for event in proto.early:  # what the instance did while the connect was returning
            replay[event[0]](*event[1:])
        proto.early = []
        if self.upstream_gone:
            return
        if self.client_gone:  # the client left as the connect completed (a cancel that came too late)
            if self.outcome == TcpOutcome.CLIENT_ABORT.value:
                reset(transport)
            else:
                transport.close()
            return
        if self.client_eof:  # the client half-closed while we were connecting
            self._write_eof(transport)
        elif not self.client_gone:
            self.client.resume_reading()

    def _refuse(self) -> None:
        """Nothing connected: the client is reset (never a clean close that looks like an empty stream)."""
        self.closed_by = self.closed_by or TcpClosedBy.PROXY.value
        if self.client_gone:
            self._finish()
        else:
            reset(self.client)  # connection_lost follows and finishes

    # --- relay ---------------------------------------------------------------------------------------------

    def from_client(self, data: bytes) -> None:
        if self.upstream is None:  # uvloop may deliver a read already under way when reading is paused
            self.early.append(data)
            self.client.pause_reading()
            return
        self.received += len(data)
        self.last_io = self.loop.time()
        self._received.inc(len(data))
        self.upstream.write(data)

    def from_upstream(self, data: bytes) -> None:
        if not self.judged:
            self.judged = True
            self.session.judge(True)
        self.sent += len(data)
        self.last_io = self.loop.time()
        self._sent.inc(len(data))
        self.client.write(data)

    @staticmethod
    def pause(transport) -> None:
        if transport is not None and not transport.is_closing():
            transport.pause_reading()

    @staticmethod
    def resume(transport, eof: bool) -> None:
        if transport is not None and not transport.is_closing() and not eof:
            transport.resume_reading()

    @staticmethod
    def _write_eof(transport) -> None:
        if not transport.is_closing() and transport.can_write_eof():
            transport.write_eof()  # sent once the buffer is flushed

    def client_eof_received(self) -> bool:
        """RFC 9293 §3.6: the client closed its sending direction; the other direction stays open."""
        self.client_eof = True
        self.closed_by = self.closed_by or TcpClosedBy.CLIENT.value
        if self.upstream is not None:
            self._write_eof(self.upstream)
        self._both_closed()
        return True  # keep the transport open: the instance may still send

    def upstream_eof_received(self) -> bool:
        self.upstream_eof = True
        self.closed_by = self.closed_by or TcpClosedBy.UPSTREAM.value
        if not self.judged:
            self.judged = True
            self.session.judge(True)
        self._write_eof(self.client)
        self._both_closed()
        return True

    def _both_closed(self) -> None:
        if self.client_eof and self.upstream_eof:
            self.client.close()
            self.upstream.close()

    def client_lost(self, exc) -> None:
        self.client_gone = True
        if exc is not None and self.outcome is None:  # reset by the client, or a write to it failed
            self.outcome, self.error_type = TcpOutcome.CLIENT_ABORT.value, ErrorType.CLIENT_ABORT.value
            self.closed_by = self.closed_by or TcpClosedBy.CLIENT.value
        if not self.task.done():
            self.outcome = self.outcome or TcpOutcome.CLIENT_ABORT.value
            self.closed_by = self.closed_by or TcpClosedBy.CLIENT.value
            self.task.cancel()  # _connect reports it and finishes
            return
        if not self.upstream_gone:
            if exc is not None:
                reset(self.upstream)
            elif not (self.client_eof and self.upstream_eof):  # closed by us (idle, drain): the other side too
                self.upstream.close()
            return
        self._finish()

    def upstream_lost(self, exc) -> None:
        self.upstream_gone = True
        if exc is not None and self.outcome is None:  # the instance reset the connection
            self.outcome, self.error_type = TcpOutcome.UPSTREAM_ERROR.value, ErrorType.UPSTREAM_RESET.value
            self.closed_by = self.closed_by or TcpClosedBy.UPSTREAM.value
            if not self.judged:  # reset before its first byte: a failure of the instance
                self.judged = True
                self.session.judge(False)
        if not self.client_gone:
            if exc is not None:
                reset(self.client)
            else:
                self.client.close()
            return
        self._finish()

    def _idle_check(self) -> None:
        left = self.settings.idle_timeout_s - (self.loop.time() - self.last_io)
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle_check)
            return
        self._idle_timer = None
        self.outcome = self.outcome or TcpOutcome.IDLE_TIMEOUT.value
        self.closed_by = self.closed_by or TcpClosedBy.PROXY.value
        self.client.close()
        self.upstream.close()

    def drain_cut(self) -> None:
        """The drain's grace ran out: half-close both sides (FIN: no more bytes from us either way)."""
        self.outcome = self.outcome or TcpOutcome.DRAIN_CUT.value
        self.closed_by = self.closed_by or TcpClosedBy.PROXY.value
        if not self.task.done():
            self.task.cancel()
            return
        self._write_eof(self.client)
        if self.upstream is not None:
            self._write_eof(self.upstream)

    def abort_both(self) -> None:
        reset(self.client)
        reset(self.upstream)

    def _finish(self) -> None:
        """Once, when both sides are gone."""
        if self._finished:
            return
        self._finished = True
        self.listener.ended(self)
        if self._idle_timer is not None:
            self._idle_timer.cancel()
        self.session.finish(self.outcome, self.error_type, self.closed_by, self.received, self.sent)
