"""WebSocket pass-through (RFC 6455) on HTTP/1.1: the opening handshake's checks, a frame-header scanner, the
relay session between two connections, and the registry of an engine's open sessions.

- `request_problem(...)` / `response_problem(...)`: the opening handshake (§4.1, §4.2.1 the client's request,
  §4.2.2 the server's 101 and its `Sec-WebSocket-Accept`).
- `FrameScanner`: reads the frame headers (§5.2: FIN, opcode, mask, length) out of one direction's byte stream
  as it passes, without unmasking or copying payloads (only a close frame's 2-byte code is unmasked). It counts
  messages (fragmented ones once, §5.4; control frames apart, §5.5), finds close frames and their code, and
  stops at the first frame that breaks §5 (a client frame unmasked or a server frame masked, §5.1; a reserved
  opcode; a fragmented or oversized control frame; a continuation with no message) or a message over the
  route's `max_message_bytes`.
- `Session`: once the 101 is relayed, both connections' protocols hand their bytes here (`_Side.received`) and
  they are written to the other side as they come. Backpressure both ways: when one side's transport is over
  its write high-water mark (`pause_writing`), reading from the other side pauses until it drains.
  The session ends on a close handshake, a TCP close, the idle timeout, the maximum duration, a drain, the
  instance leaving service, or a protocol violation; when Gatewatch ends it, it sends a close frame (1001 going
  away; 1002 protocol error; 1009 message too big, §7.4.1) to each side whose direction is at a frame boundary
  and not already closed, waits `close_wait_s` for the close handshake, then closes both connections.
- `Sessions`: the open sessions: the gauge per route and instance, the counter of ended sessions by reason, the
  once-a-second check that each session's instance is still in service, and the session span's record.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import hashlib
import logging
import os
from typing import Callable

from gatewatch.telemetry.context import new_span_id
from gatewatch.telemetry.names import RejectReason, WebSocketEnd

log = logging.getLogger("gatewatch.websocket")

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"  # RFC 6455 §1.3
GOING_AWAY, PROTOCOL_ERROR, TOO_BIG, NO_STATUS = 1001, 1002, 1009, 1005  # §7.4.1
CLOSE_WAIT_S = 2.0  # how long a close handshake Gatewatch began may take before the connections are cut
CHECK_S = 1.0  # how often the registry checks that each session's instance is still in service

# why a scanner stopped
BOUNDARY, VIOLATION, OVERSIZE = "boundary", "violation", "oversize"


def accept_for(key: str) -> str:
    """The `Sec-WebSocket-Accept` a server must answer `key` with (§4.2.2 item 5.4)."""
    return base64.b64encode(hashlib.sha1(key.encode("latin-1") + GUID).digest()).decode("ascii")


def _tokens(value: str | None) -> set[str]:
    return {t.strip().lower() for t in (value or "").split(",")}


def is_websocket(index: dict[str, str]) -> bool:
    """An upgrade to WebSocket is asked for (the `Upgrade` header names it)."""
    return "websocket" in _tokens(index.get("upgrade"))


def request_problem(method: str, has_body: bool, index: dict[str, str]) -> RejectReason | None:
    """Why a client's opening handshake is not valid (§4.1 items 2, 6-9; §4.2.1), or None."""
    if method != "GET" or has_body or "upgrade" not in _tokens(index.get("connection")):
        return RejectReason.WEBSOCKET_INVALID_HANDSHAKE
    try:
        if len(base64.b64decode(index.get("sec-websocket-key", "").strip(), validate=True)) != 16:
            return RejectReason.WEBSOCKET_INVALID_HANDSHAKE
    except (binascii.Error, ValueError):
        return RejectReason.WEBSOCKET_INVALID_HANDSHAKE
    if index.get("sec-websocket-version", "").strip() != "13":
        return RejectReason.WEBSOCKET_UNSUPPORTED_VERSION  # §4.4
    return None


def response_problem(headers, key: str) -> str | None:
    """What is wrong with an upstream's 101 to our handshake with `key` (§4.2.2 item 5, checked as a client
    must, §4.1 items 2-4 of the client's checks of the response), or None."""
    index: dict[str, str] = {}
    for k, v in headers:
        index.setdefault(k.lower(), v)
    if "websocket" not in _tokens(index.get("upgrade")):
        return "the upstream's 101 does not upgrade to websocket"
    if "upgrade" not in _tokens(index.get("connection")):
        return "the upstream's 101 has no Connection: Upgrade"
    if index.get("sec-websocket-accept", "").strip() != accept_for(key.strip()):
        return "the upstream's Sec-WebSocket-Accept does not match the key"
    return None


def close_frame(code: int, masked: bool) -> bytes:
    """A close frame with `code` (§5.5.1); masked toward a server (§5.3: Gatewatch is its client)."""
    payload = code.to_bytes(2, "big")
    if not masked:
        return bytes((0x88, 2)) + payload
    key = os.urandom(4)
    return bytes((0x88, 0x82)) + key + bytes((payload[0] ^ key[0], payload[1] ^ key[1]))


class FrameScanner:
    """Frame headers of one direction (§5.2). `feed(data)` returns how many bytes of `data` may be relayed: all
    of them, unless the scanner stopped (`stopped`: at a frame boundary it was asked to stop at, or at a frame
    that breaks the rules; then `torn` says whether part of that frame's header was relayed already)."""

    __slots__ = ("masked", "max_message", "head", "remaining", "in_message", "message_bytes", "messages",
                 "close_seen", "close_code", "_code", "_mask", "_code_at", "stop_at_boundary", "stopped", "torn")

    def __init__(self, masked: bool, max_message: int | None):
        self.masked = masked  # frames in this direction must be masked (client → server, §5.1)
        self.max_message = max_message
        self.head = bytearray()  # a frame header still arriving
        self.remaining = 0  # payload bytes of the current frame still to pass
        self.in_message = False  # a fragmented message is open (§5.4)
        self.message_bytes = 0
        self.messages = 0  # complete data messages
        self.close_seen = False
        self.close_code: int | None = None
        self._code = bytearray()
        self._mask = b""
        self._code_at = 0  # payload bytes of the close frame not yet read into `_code`
        self.stop_at_boundary = False
        self.stopped: str | None = None
        self.torn = False

    def at_boundary(self) -> bool:
        return self.remaining == 0 and not self.head

    def feed(self, data: bytes) -> int:
        if self.stopped:
            return 0
        i, n = 0, len(data)
        while i < n:
            if self.remaining:
                take = min(self.remaining, n - i)
                if self._code_at:
                    self._read_code(data[i:i + min(take, self._code_at)])
                i += take
                self.remaining -= take
                continue
            head = self.head
            if not head:
                if self.stop_at_boundary:
                    self.stopped = BOUNDARY
                    return i
                start = i
            else:
                start = -1  # began in an earlier chunk
            while True:
                need = self._header_size()
                if len(head) >= need:
                    break
                take = min(need - len(head), n - i)
                head += data[i:i + take]
                i += take
                if len(head) < need:
                    return n  # the rest of the header comes later
            if not self._frame():
                self.torn = start < 0
                return max(start, 0)
            head.clear()
            if self.remaining == 0 and self.stop_at_boundary:
                self.stopped = BOUNDARY
                return i
        return n

    def _header_size(self) -> int:
        head = self.head
        if len(head) < 2:
            return 2
        size = 2 + {126: 2, 127: 8}.get(head[1] & 0x7F, 0)
        return size + 4 if head[1] & 0x80 else size

    def _frame(self) -> bool:
        """A complete header in `head`: check it, count it. False when the scanner stops here."""
        head = self.head
        fin, opcode, masked = head[0] & 0x80, head[0] & 0x0F, bool(head[1] & 0x80)
        length = head[1] & 0x7F
        ext = {126: 2, 127: 8}.get(length, 0)
        if ext:
            length = int.from_bytes(head[2:2 + ext], "big")
        if masked != self.masked:  # §5.1: the receiver must fail the connection
            self.stopped = VIOLATION
            return False
        if opcode >= 8:  # control frames (§5.5): close, ping, pong; never fragmented, at most 125 bytes
            if opcode > 10 or not fin or length > 125 or (opcode == 8 and length == 1):
                self.stopped = VIOLATION
                return False
            if opcode == 8 and not self.close_seen:
                self.close_seen = True
                if length == 0:
                    self.close_code = NO_STATUS  # §7.1.5: no status code in the close frame
                else:
                    self._code_at = 2
                    self._mask = bytes(head[-4:]) if masked else b"\0\0\0\0"
        elif opcode in (1, 2):
            if self.in_message:  # §5.4: a new message before the fragmented one ended
                self.stopped = VIOLATION
                return False
            self.in_message, self.message_bytes = not fin, length
        elif opcode == 0:
            if not self.in_message:
                self.stopped = VIOLATION
                return False
            self.message_bytes += length
            self.in_message = not fin
        else:  # reserved opcodes 3-7 (§5.2)
            self.stopped = VIOLATION
            return False
        if opcode < 8:
            if self.max_message is not None and self.message_bytes > self.max_message:
                self.stopped = OVERSIZE
                return False
            if fin:
                self.messages += 1
        self.remaining = length
        return True

    def _read_code(self, chunk: bytes) -> None:
        code, mask = self._code, self._mask
        for b in chunk:
            code.append(b ^ mask[len(code)])
        self._code_at -= len(chunk)
        if not self._code_at:
            self.close_code = int.from_bytes(code, "big")


class _Side:
    """One connection of a session. Its protocol calls `received`, `lost`, `pause_writing`, `resume_writing`
    once the connection is the session's (the listener's `HttpConnection`, the forwarder's `UpstreamConnection`)."""

    __slots__ = ("session", "name", "transport", "scanner", "peer", "open", "muted", "bytes", "close_sent",
                 "pending_close")

    def __init__(self, session: "Session", name: str, transport, scanner: FrameScanner):
        self.session = session
        self.name = name  # "client" | "upstream"
        self.transport = transport
        self.scanner = scanner  # what this side sends
        self.peer: _Side = self
        self.open = True
        self.muted = False  # what this side sends is no longer relayed (a close frame of ours went the other way)
        self.bytes = 0
        self.close_sent = False  # Gatewatch sent this side a close frame of its own
        self.pending_close: int | None = None  # to send to the peer once this side's frame ends

    def received(self, data: bytes) -> None:
        self.session.received(self, data)

    def lost(self) -> None:
        self.session.lost(self)

    def pause_writing(self) -> None:  # this side's buffer is over its high-water mark: stop reading the other
        peer = self.peer.transport
        if not peer.is_closing():
            peer.pause_reading()

    def resume_writing(self) -> None:
        peer = self.peer.transport
        if not peer.is_closing():
            peer.resume_reading()

    def write(self, data: bytes) -> None:
        if self.open and not self.transport.is_closing():
            self.transport.write(data)


class Session:
    """One relayed WebSocket session (see the module docstring)."""

    def __init__(self, registry: "Sessions", ctx, attempt, client_transport, upstream_transport,
                 alive: Callable[[], bool] | None):
        cfg = ctx.route.websocket
        self.registry = registry
        self.ctx = ctx
        self.attempt = attempt
        self.cfg = cfg
        self.alive = alive  # whether the instance is still in service (None: a URL upstream)
        self.loop = asyncio.get_running_loop()
        self.client = _Side(self, "client", client_transport, FrameScanner(True, cfg.max_message_bytes))
        self.upstream = _Side(self, "upstream", upstream_transport, FrameScanner(False, cfg.max_message_bytes))
        self.client.peer, self.upstream.peer = self.upstream, self.client
        self.start_ns = registry.clock_ns()
        self.start = self.last_active = self.loop.time()
        self.end: WebSocketEnd | None = None
        self.closed_by: str | None = None
        self.close_code: int | None = None
        self.finished = False
        self._cut_timer: asyncio.TimerHandle | None = None
        self._idle_timer = self.loop.call_later(cfg.idle_timeout_s, self._idle)
        self._max_timer = self.loop.call_later(cfg.max_duration_s, self.shutdown, WebSocketEnd.MAX_DURATION,
                                               GOING_AWAY)

    # --- bytes ---

    def received(self, side: _Side, data: bytes) -> None:
        self.last_active = self.loop.time()
        sc = side.scanner
        seen_close = sc.close_seen
        n = sc.feed(data)
        side.bytes += len(data)
        if n and not side.muted:
            side.peer.write(data if n == len(data) else data[:n])
        if sc.close_seen and not seen_close and self.closed_by is None:
            self.closed_by = side.name  # the first close frame decides who closed
            self.end = WebSocketEnd.CLIENT_CLOSE if side is self.client else WebSocketEnd.UPSTREAM_CLOSE
        if sc.close_code is not None and self.close_code is None and self.closed_by == side.name:
            self.close_code = sc.close_code
        stopped = sc.stopped
        if stopped == BOUNDARY:
            sc.stop_at_boundary = False
            sc.stopped = None
            code, side.pending_close = side.pending_close, None
            if code is not None:
                self._close_toward(side.peer, code)
            if n < len(data):
                self.received(side, data[n:])  # scanned (for its close reply), no longer relayed
            return
        if stopped is not None:
            oversize = stopped == OVERSIZE
            self.shutdown(WebSocketEnd.MESSAGE_TOO_BIG if oversize else WebSocketEnd.PROTOCOL_ERROR,
                          TOO_BIG if oversize else PROTOCOL_ERROR, torn=side if sc.torn else None)
        self._maybe_done()

    def lost(self, side: _Side) -> None:
        if not side.open:
            return
        side.open = False
        if self.end is None:
            self.end = WebSocketEnd.CLIENT_DISCONNECT if side is self.client else WebSocketEnd.UPSTREAM_DISCONNECT
        peer = side.peer
        if peer.open:
            peer.transport.close()  # after what is queued for it (the close frame relayed last)
        if not peer.open:
            self._finish()

    # --- ending ---

    def shutdown(self, reason: WebSocketEnd, code: int = GOING_AWAY, torn: _Side | None = None) -> None:
        """Gatewatch ends the session: its close frame to each side that has not had one, then the close
        handshake gets `close_wait_s` before both connections are cut."""
        if self.finished or self._cut_timer is not None:
            return
        if self.closed_by is None or reason in (WebSocketEnd.PROTOCOL_ERROR, WebSocketEnd.MESSAGE_TOO_BIG):
            self.end, self.closed_by, self.close_code = reason, "gatewatch", code
        for side in (self.client, self.upstream):
            toward = side.peer  # the direction toward `side` carries what its peer sends
            if toward.scanner.close_seen or side.close_sent or not side.open:
                continue  # it has had its close frame already
            if toward is torn:  # part of a frame that broke the rules went on: a close frame would be garbage
                side.transport.close()
                continue
            if toward.scanner.at_boundary() or toward.scanner.stopped:
                self._close_toward(side, code)
            else:  # mid-frame: the frame ends first, then ours (never inside another frame)
                toward.pending_close = code
                toward.scanner.stop_at_boundary = True
        self._cut_timer = self.loop.call_later(self.registry.close_wait_s, self._cut)
        self._maybe_done()

    def _close_toward(self, side: _Side, code: int) -> None:
        side.close_sent = True
        side.peer.muted = True  # nothing more of the peer's goes to `side` after our close (§5.5.1)
        side.write(close_frame(code, masked=side is self.upstream))

    def _maybe_done(self) -> None:
        """Both directions carried a close frame: the handshake is over; the server closes the TCP connection
        first (§7.1.1), the client side after what is queued for it."""
        c, u = self.client, self.upstream
        to_client = u.scanner.close_seen or c.close_sent
        to_upstream = c.scanner.close_seen or u.close_sent
        if to_client and to_upstream:
            if self._cut_timer is None:
                self._cut_timer = self.loop.call_later(self.registry.close_wait_s, self._cut)
            if c.close_sent and c.scanner.close_seen and c.open:
                c.transport.close()  # our close answered by the client: Gatewatch is its server

    def _cut(self) -> None:
        self._cut_timer = None
        for side in (self.client, self.upstream):
            if side.open:
                side.transport.abort()

    def _idle(self) -> None:
        left = self.cfg.idle_timeout_s - (self.loop.time() - self.last_active)
        if left > 0:
            self._idle_timer = self.loop.call_later(left, self._idle)
        else:
            self.shutdown(WebSocketEnd.IDLE_TIMEOUT, GOING_AWAY)

    def _finish(self) -> None:
        if self.finished:
            return
        self.finished = True
        for t in (self._idle_timer, self._max_timer, self._cut_timer):
            if t is not None:
                t.cancel()
        self.registry.ended(self)


class Sessions:
    """An engine's open WebSocket sessions."""

    def __init__(self, telemetry, clock_ns: Callable[[], int], rng, close_wait_s: float = CLOSE_WAIT_S):
        self.telemetry = telemetry
        self.clock_ns = clock_ns
        self.rng = rng
        self.close_wait_s = close_wait_s
        self.open: set[Session] = set()
        self._gauge = telemetry.metrics.websocket_sessions
        self._ended = telemetry.metrics.websocket_ended
        self._routes: set[str] = set()
        self._check: asyncio.TimerHandle | None = None
        # pool name → the running config's Pool (set by the runtime): a reload that replaces a pool or removes an
        # instance is seen by the instance check; None: the pool the session was picked from
        self.pools: Callable[[str], object] | None = None

    def begin(self, ctx, attempt, client, client_early: bytes, upstream, upstream_early: bytes) -> Session:
        """A session between `client` (the listener's connection, its 101 sent) and `upstream` (the forwarder's,
        its 101 read), each a protocol with `transport`, `closed` and a `tunnel` slot; `*_early`: the bytes
        each had sent after its head."""
        endpoint, pool = attempt.endpoint, ctx.target.pool
        alive = None if endpoint is None or pool is None else _in_service(self, pool, endpoint.id)
        s = Session(self, ctx, attempt, client.transport, upstream.transport, alive)
        self.open.add(s)
        client.tunnel, upstream.tunnel = s.client, s.upstream
        rec = ctx.rec
        route = rec.route or ""
        if route not in self._routes:  # every reason present at 0 from a route's first session on
            self._routes.add(route)
            for reason in WebSocketEnd:
                self._ended.labels(route, reason.value)
        self._gauge.labels(route, rec.upstream or "", attempt.instance).inc()
        if alive is not None and self._check is None:
            self._check = s.loop.call_later(CHECK_S, self._check_instances)
        for side, conn, early in ((s.client, client, client_early), (s.upstream, upstream, upstream_early)):
            if conn.closed:  # gone before the session began: its connection_lost found no tunnel
                s.lost(side)
            elif early:
                side.received(early)
        for side in (s.client, s.upstream):
            if side.open and not side.transport.is_closing():
                side.transport.resume_reading()  # paused at the upgrade
        return s

    def _check_instances(self) -> None:
        self._check = None
        watched = False
        for s in list(self.open):
            if s.alive is None:
                continue
            watched = True
            try:
                gone = not s.alive()
            except Exception:  # a pool replaced in a way this check cannot read: keep the session
                log.exception("websocket: cannot check an instance")
                gone = False
            if gone:
                s.shutdown(WebSocketEnd.INSTANCE_GONE, GOING_AWAY)
        if watched:
            self._check = asyncio.get_running_loop().call_later(CHECK_S, self._check_instances)

    def ended(self, s: Session) -> None:
        self.open.discard(s)
        rec = s.ctx.rec
        route = rec.route or ""
        self._gauge.labels(route, rec.upstream or "", s.attempt.instance).dec()
        end = s.end or WebSocketEnd.CLIENT_DISCONNECT
        self._ended.labels(route, end.value).inc()
        sink = self.telemetry.sink
        if sink is None or not rec.trace.sampled:
            return
        try:
            sink.submit(dataclasses.replace(
                rec, attempts=[], decisions=[], policies=[], start_ns=s.start_ns, end_ns=self.clock_ns(),
                duration_s=s.loop.time() - s.start, balance_span_id=None,
                websocket=(new_span_id(self.rng), end.value, s.closed_by, s.close_code, s.client.bytes,
                           s.upstream.bytes, s.client.scanner.messages, s.upstream.scanner.messages,
                           s.attempt.instance)))
        except Exception:  # telemetry never breaks the data path
            log.exception("websocket: cannot record a session")

    def drain(self) -> int:
        """Close every open session with 1001 (going away); how many there were."""
        sessions = list(self.open)
        for s in sessions:
            s.shutdown(WebSocketEnd.DRAIN, GOING_AWAY)
        return len(sessions)


def _in_service(registry: Sessions, picked, endpoint_id: str) -> Callable[[], bool]:
    """Whether the instance is still a member of its pool (the running config's) and neither ejected nor
    unhealthy (a draining one keeps its sessions: they end on their own, like requests in flight)."""
    def alive() -> bool:
        pool = (registry.pools(picked.name) if registry.pools is not None else None) or picked
        state = pool.states().get(endpoint_id)
        return state is not None and state not in ("ejected", "unhealthy")
    return alive
