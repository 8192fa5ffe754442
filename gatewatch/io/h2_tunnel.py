"""WebSocket over HTTP/2 (RFC 8441): the extended CONNECT request and the stream that carries the session.

- `extended_connect(pseudo, headers)`: a stream's `:method CONNECT` + `:protocol websocket` (RFC 8441 §4, §5)
  checked and turned into the HTTP/1.1 opening handshake it stands for (RFC 6455 §4.1: GET, `Connection:
  Upgrade`, `Upgrade: websocket`, a fresh `Sec-WebSocket-Key`), so routing, policies and the pick treat it as
  they treat an HTTP/1.1 upgrade, the upstream gets a real HTTP/1.1 Upgrade, and the engine checks the upstream's
  `Sec-WebSocket-Accept` against the key generated here. `Sec-WebSocket-Version`, `-Protocol` and `-Extensions`
  go on from the client's header list.
- `H2Tunnel`: once the upstream's 101 is in and `:status 200` sent (§5), the stream is the client connection of a
  `websocket.Session`: it is the transport the session writes to, pauses and closes, and it hands the stream's DATA
  (the WebSocket frames, unchanged, §5) to the session's side. Backpressure is HTTP/2 flow control both ways:
  request DATA is acknowledged (WINDOW_UPDATE) only while the session reads (a paused side stops the client within
  one stream window); bytes for the client wait for its window, and over `HIGH_WATER` of them pause the upstream.
  END_STREAM from the client is its TCP FIN (§5), RST_STREAM its TCP RST: either ends the session as the client's
  disconnect (a close frame seen before keeps `client_close`). Our close is END_STREAM after the queued bytes,
  then RST_STREAM NO_ERROR if the client's half is still open (RFC 9113 §8.1); our abort is RST_STREAM CANCEL.
"""

from __future__ import annotations

import base64
import os
from typing import TYPE_CHECKING

import h2.exceptions
from h2.errors import ErrorCodes

from gatewatch.telemetry.names import RejectReason as R

if TYPE_CHECKING:
    from gatewatch.io.h2_listener import H2Connection

HIGH_WATER = 64 * 1024  # bytes for the client beyond its window: over this the upstream's reading pauses
LOW_WATER = 16 * 1024  # ... and resumes once the queue is down to this
# Sent upstream as the handshake's own (RFC 6455 §4.1); a client's copies are dropped (RFC 8441 §5 has none).
HANDSHAKE_OWN = frozenset({"sec-websocket-key", "connection", "upgrade", "host"})


def extended_connect(pseudo: dict[bytes, bytes], headers: list[tuple[str, str]]):
    """(method, target, headers, None) of the HTTP/1.1 handshake an extended CONNECT stands for, or (status,
    error.type): status 0 for a malformed request (a stream error PROTOCOL_ERROR), else the status to answer."""
    scheme, path, authority = pseudo.get(b":scheme"), pseudo.get(b":path"), pseudo.get(b":authority")
    if not scheme or not path or not authority:
        return 0, R.WEBSOCKET_INVALID_HANDSHAKE.value  # RFC 8441 §4: all three are required on extended CONNECT
    if pseudo[b":protocol"].lower() != b"websocket":
        return 501, R.UPGRADE_NOT_SUPPORTED.value  # a protocol other than WebSocket (RFC 8441 §4, §9.1)
    auth = authority.decode("latin-1")
    index: dict[str, str] = {}
    for k, v in headers:
        if k == "host" and v != auth:
            return 400, R.INVALID_HOST.value  # RFC 9113 §8.3.1
        if k == "content-length" and v.strip() != "0":
            return 0, R.WEBSOCKET_INVALID_HANDSHAKE.value  # the stream's DATA is the session, not a body
        index.setdefault(k, v)
    if index.get("sec-websocket-version", "").strip() != "13":
        return 400, R.WEBSOCKET_UNSUPPORTED_VERSION.value  # RFC 6455 §4.4 (RFC 8441 §5 carries it unchanged)
    key = base64.b64encode(os.urandom(16)).decode("ascii")  # RFC 6455 §4.1 item 7: 16 random bytes
    out = [("host", auth)]
    out += [(k, v) for k, v in headers if k not in HANDSHAKE_OWN and k != "content-length"]
    out += [("connection", "Upgrade"), ("upgrade", "websocket"), ("sec-websocket-key", key)]
    return "GET", path.decode("latin-1"), tuple(out), None


class H2Tunnel:
    """One RFC 8441 stream: the client connection of a WebSocket session (see the module docstring). Until the
    session begins, DATA waits in `early`, unacknowledged (the session's reading starts paused, as on HTTP/1.1)."""

    __slots__ = (
        "_ending",
        "_out",
        "_paused",
        "_unacked",
        "_writer_paused",
        "closed",
        "conn",
        "early",
        "remote_ended",
        "sid",
        "tunnel",
    )

    def __init__(self, conn: H2Connection, sid: int):
        self.conn = conn
        self.sid = sid
        self.tunnel = None  # the session's client side (`websocket._Side`), set by `Sessions.begin`
        self.closed = False  # the stream is over for the session (either way)
        self.remote_ended = False  # the client's END_STREAM came
        self.early = bytearray()
        self._unacked = 0  # flow-controlled bytes received while paused, acknowledged on resume
        self._paused = True
        self._out = bytearray()  # for the client, waiting for its window
        self._ending = False  # END_STREAM once `_out` is sent
        self._writer_paused = False

    @property
    def transport(self) -> H2Tunnel:
        return self  # the session's `_Side` writes to, pauses and closes "its transport": this stream

    # --- from the connection (h2 events) ---

    def data(self, data: bytes, flow_len: int) -> None:
        if self.closed:
            self.conn.acknowledge(self.sid, flow_len)  # discarded: the window goes back at once
            return
        if self._paused:
            self._unacked += flow_len
        else:
            self.conn.acknowledge(self.sid, flow_len)
        side = self.tunnel
        if side is None:
            self.early += data
        elif data:
            side.received(data)

    def ended(self) -> None:
        """The client's END_STREAM (RFC 8441 §5: as TCP FIN): the session ends; our half after what is queued."""
        self.remote_ended = True
        if self.closed:
            return
        if self.tunnel is None:  # before the session: the handshake lost its client
            self._over()
            return
        self.tunnel.lost()
        self.close()

    def reset(self) -> None:
        """The client's RST_STREAM (as TCP RST), or the connection gone: nothing more goes either way."""
        self.remote_ended = True
        if not self.closed:
            self._over()

    def window_opened(self) -> None:
        if self._out and not self.closed:
            self._pump()

    # --- the transport the session uses ---

    def get_write_buffer_size(self) -> int:
        return len(self._out)  # bytes for the client still waiting for its window

    def is_closing(self) -> bool:
        return self.closed or self._ending

    def write(self, data: bytes) -> None:
        if self.closed or self._ending:
            return
        self._out += data
        self._pump()
        if len(self._out) > HIGH_WATER and not self._writer_paused and self.tunnel is not None:
            self._writer_paused = True
            self.tunnel.pause_writing()

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        n, self._unacked = self._unacked, 0
        if n:
            self.conn.acknowledge(self.sid, n)

    def close(self) -> None:
        if self.closed or self._ending:
            return
        self._ending = True
        self._pump()

    def abort(self) -> None:
        if self.closed:
            return
        self._send(lambda h: h.reset_stream(self.sid, ErrorCodes.CANCEL))
        self._over()

    # --- internals ---

    def _pump(self) -> None:
        h = self.conn.h2
        out = self._out
        while out and not self.closed:
            try:
                window = min(h.local_flow_control_window(self.sid), h.max_outbound_frame_size)
            except (h2.exceptions.ProtocolError, KeyError):
                self.reset()
                return
            if window <= 0:
                break  # the client's WINDOW_UPDATE calls `window_opened`
            piece = bytes(out[:window])
            del out[:window]
            if not self._send(lambda h, p=piece: h.send_data(self.sid, p)):
                return
        if self._writer_paused and len(out) <= LOW_WATER and self.tunnel is not None:
            self._writer_paused = False
            self.tunnel.resume_writing()
        if self._ending and not out and not self.closed:
            if self._send(lambda h: h.end_stream(self.sid)) and not self.remote_ended:
                self._send(lambda h: h.reset_stream(self.sid, ErrorCodes.NO_ERROR))  # RFC 9113 §8.1
            self._over()

    def _send(self, action) -> bool:
        if self.conn.closed:
            self.reset()
            return False
        try:
            action(self.conn.h2)
        except (h2.exceptions.ProtocolError, KeyError):  # the stream is already gone in h2's state
            self.reset()
            return False
        self.conn.flush()
        return True

    def _over(self) -> None:
        """The stream is done with: the session hears its client connection is gone (idempotent there)."""
        self.closed = True
        self._out.clear()
        self.conn.tunnel_over(self)
        side = self.tunnel
        if side is not None:
            side.lost()
