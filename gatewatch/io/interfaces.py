"""The narrow interfaces between the engine and its two I/O ends, the whole contract between them.

- A **listener** (`Listener`) turns client bytes into a `RequestHead`, a request body (`AsyncIterator[bytes]`)
  and a `Downstream` to answer on, then calls the engine's `RequestHandler`. A request it cannot parse it answers
  itself, after the engine's `Rejecter` has recorded it. It owns the wire protocol and nothing else.
- A **forwarder** (`Forwarder.send`) sends one `UpstreamRequest` to one instance and returns an
  `UpstreamResponse` whose body streams, or raises `UpstreamFailure` with a closed `ErrorType`.

Implementations, side by side in this package: the fast data plane (`fast_listener`, `fast_forwarder`, raw
asyncio protocols with llhttp), the aiohttp reference pair (`aiohttp_listener`, `aiohttp_forwarder`) and an
in-memory pair for tests and benchmarks (`memory`). Only the engine calls a forwarder and only a listener calls
the engine; swapping either end must not touch the engine, the decisions or the telemetry.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import TYPE_CHECKING, AsyncIterator, Awaitable, Callable, Protocol

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.cython_shim import slotted
from gatewatch.telemetry.names import ErrorType

if TYPE_CHECKING:
    from gatewatch.io.tls import ClientTLS

Headers = tuple[tuple[str, str], ...]  # ordered, duplicates kept, names as received


# Not frozen: a frozen dataclass's __init__ costs three times as much (object.__setattr__ per field), and one
# of each is built per request. Nothing mutates them after construction.
@dataclass(eq=False)
class RequestHead:
    method: str
    target: str  # the raw request target from the request line, undecoded
    version: str  # "1.1"
    headers: Headers
    client_address: str
    client_port: int
    scheme: str  # "http" | "https" as seen by this listener
    server_address: str  # the listener's local address
    server_port: int
    listener: str  # listener name from config
    has_body: bool  # Content-Length > 0 or Transfer-Encoding present
    index: dict[str, str]  # lower-case name → first value, built once by the listener
    tls: ClientTLS | None = None  # a TLS listener's connection: what it negotiated, the verified client identity

    def header(self, lname: str) -> str | None:
        """First value of a header, `lname` lower-case."""
        return self.index.get(lname)


def header_index(headers: Headers) -> dict[str, str]:
    index: dict[str, str] = {}
    for k, v in headers:
        index.setdefault(k.lower(), v)
    return index


@dataclass(eq=False)
class UpstreamRequest:
    method: str
    host: str  # instance address to connect to
    port: int
    scheme: str
    target: str  # canonical path + "?" + raw query, sent byte for byte
    headers: Headers  # already filtered (hop-by-hop gone) and annotated (forwarded, trace context)
    has_body: bool
    upgrade: str | None = None  # "websocket": an RFC 6455 upgrade, whose 101 the forwarder hands back (issue 17)


if not cython.compiled:  # as Python: slotted, like the extension types they compile to (interfaces.pxd)
    RequestHead, UpstreamRequest = slotted(RequestHead), slotted(UpstreamRequest)


class UpstreamResponse(Protocol):
    status: int
    reason: str
    headers: Headers
    peer_address: str | None
    peer_port: int | None
    whole: bytes | None  # the entire body when it had already arrived with the head (else None: stream it)
    # An HTTP/1.1 upstream's response (the raw forwarder's) also has `head_block`: its header lines as a proxy
    # relays them, byte for byte what serializing `proxy.headers.downstream_response_headers` writes before its Via
    # line, when the simple head could cut them from the read (io.simple_head.simple_response); else None. And
    # `dated`: a Date line is among them.

    def body(self) -> AsyncIterator[bytes]:
        """Chunks until the upstream's framing says the body is complete. Raises `UpstreamFailure` if the
        upstream dies, stalls past the idle timeout or breaks framing before that."""
        ...

    def close(self) -> None:
        """Release the connection: back to the pool after a complete body, otherwise closed."""
        ...


class UpstreamFailure(Exception):
    """An attempt failed. `before_response`: no byte of a response head had arrived (what the client can still
    be told, and what the retry logic weighs)."""

    def __init__(self, error_type: ErrorType, detail: str = "", *, before_response: bool = True,
                 tls_failure: str | None = None):
        super().__init__(f"{error_type.value}: {detail}" if detail else error_type.value)
        self.error_type = error_type
        self.detail = detail
        self.before_response = before_response
        self.tls_failure = tls_failure  # with UPSTREAM_TLS_ERROR: a `TlsFailure` value


def connect_failure(err: OSError) -> UpstreamFailure:
    """A TCP connect that failed, by its cause: `connect_refused` (nothing listens there) or `connect_error`
    (whatever else the OS said: unreachable network or host, no local port left), so a 502 says which."""
    refused = isinstance(err, ConnectionRefusedError) or err.errno == errno.ECONNREFUSED
    return UpstreamFailure(ErrorType.CONNECT_REFUSED if refused else ErrorType.CONNECT_ERROR,
                           err.strerror or str(err))


class ClientGone(Exception):
    """The downstream client closed the connection while we were writing to it or reading its body."""


class Downstream(Protocol):
    """How the engine answers the client. `start` sends the head once; `abort` breaks the connection so a
    partial body can never look complete."""

    @property
    def started(self) -> bool: ...

    def close_after_response(self) -> None:
        """Close the connection after this response instead of keeping it alive (call before `start`)."""
        ...

    async def start(self, status: int, reason: str | None, headers: Headers, content_length: int | None) -> None: ...

    async def write(self, chunk: bytes) -> None: ...

    async def finish(self) -> None: ...

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        """`start` + `write` + `finish` for a body known in full (`Content-Length` = its length): one write on
        the wire for the common small exchange. Nothing is sent if the response was already started."""
        ...

    def abort(self) -> None: ...

    # An HTTP/2 downstream also offers `async send_trailers(trailers: Headers)`: ends the response with a trailer
    # section instead of `finish` (gRPC's grpc-status). The engine uses it when the upstream response has
    # `trailers` (an HTTP/2 upstream's, `h2_upstream.H2Response.trailers`, filled once its body has ended).

    def done(self) -> None:
        """The engine is finished with this exchange: answered (or aborted) and recorded. Called exactly once,
        last. A listener that awaited the handler may ignore it; one that used `SyncRequestHandler` must not."""
        ...


class SyncDownstream(Downstream, Protocol):
    """A downstream that can also answer without awaiting (its writes never block the caller)."""

    def respond_now(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        """`respond`, synchronously. Raises `ClientGone` if the client already left."""
        ...

    def respond_block_now(self, status: int, reason: str | None, block: bytes, dated: bool, tail: Headers,
                          body: bytes) -> None:
        """`respond_now` with the upstream's header lines already written as they are relayed (`block`: an
        HTTP/1.1 upstream response's `head_block`) and this proxy's own after them (`tail`). `dated`: the block
        has a Date line."""
        ...


class AttemptTiming(Protocol):
    """Where one attempt's time went, in seconds, written by the forwarder as it goes (None: did not happen)."""

    pool_wait_s: float | None  # waiting for a free connection (the endpoint was at its limit)
    connect_s: float | None  # connecting a new connection (TCP, and TLS unless tls_s is given apart)
    tls_s: float | None  # the TLS handshake of a new connection
    tls_protocol_version: str | None  # the connection's TLS version ("1.3"), new or pooled
    tls_cipher: str | None  # its cipher suite (IANA/OpenSSL name)
    request_sent_s: float | None  # writing the request head (and a body that was there to write)
    ttfb_s: float | None  # from the request written to the response head parsed


class Forwarder(Protocol):
    async def send(self, pool: str, request: UpstreamRequest, body: AsyncIterator[bytes] | None,
                   connect_s: float, response_s: float, idle_s: float,
                   timing: AttemptTiming | None = None) -> UpstreamResponse:
        """One attempt: connect (or reuse a pooled connection of `pool`), send, wait for the response head.
        `connect_s` bounds the connect, `response_s` the wait for the head, `idle_s` each wait on the body.
        `timing`, when given, is filled in as the attempt goes, whether it succeeds or fails."""
        ...

    # A forwarder may also offer the synchronous send of the engine's common exchange:
    #   send_now(pool, request, response_s, idle_s, timing, callback, arg) -> bool
    # which writes a bodiless request on an idle pooled connection and returns True (False, having done nothing,
    # when there is none), then calls `callback(arg, response_or_failure)` exactly once from the event loop:
    # with the `UpstreamResponse` once its head is in (`whole` set if the body came with it), or with the
    # `UpstreamFailure` that ended the attempt before a head (reset, protocol error, response timeout).
    # The raw forwarder has it; the engine falls back to `send` where it is missing.

    def set_limits(self, limits: dict[str, tuple[int, float]]) -> None:
        """Connection limits per pool or upstream name: (max connections, keep-alive idle seconds)."""
        ...

    async def close(self) -> None: ...


# The engine's side of a listener: `Engine.handle` answers one parsed request; `Engine.reject` records one the
# listener could not parse (listener name, client (address, port), local (address, port), status, reason — the
# `error.type`) and returns (JSON body, request id) for the listener to answer with before it closes.
RequestHandler = Callable[[RequestHead, AsyncIterator[bytes], Downstream], Awaitable[None]]
# `Engine.handle_now`: a request whose body is complete (a bodiless one), answered without a task where it can be
# (see `Downstream.done` for when it is settled). Only a listener with a `SyncDownstream` passes it.
SyncRequestHandler = Callable[[RequestHead, SyncDownstream], None]
Rejecter = Callable[[str, tuple[str, int], tuple[str, int], int, str], tuple[bytes, str]]


class Listener(Protocol):
    """A bound traffic port. Built with (name, host, port, scheme, handler, reject, max_header_size, reuse_port,
    handle_now), `handle_now` an optional `SyncRequestHandler` a listener may use for bodiless requests."""

    name: str
    bound: tuple[str, int] | None  # (address, port) once started

    async def start(self) -> tuple[str, int]: ...

    async def stop(self, grace_s: float = 5.0, idle_close_s: float = 1.0) -> dict[str, int] | None:
        """Stop accepting, answer with `Connection: close` from now on, close keep-alive connections idle for
        `idle_close_s`, let in-flight exchanges finish within `grace_s`, then close what is left. Returns how the
        connections ended (`DrainClose` value -> count) when the listener counts them."""
        ...
