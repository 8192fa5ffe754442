"""The in-memory I/O pair: the engine's two ends with no sockets and no parser, for tests and benchmarks (as
httpx keeps `MockTransport` beside its real transports).

- `MemoryListener(name, handler, reject, handle_now=None)`: `await request(method, target, headers, body)` builds
  the `RequestHead` a real listener would, hands it to the engine and returns the `MemoryDownstream` it answered
  on (a bodiless request goes to `handle_now` when given, as the fast listener does, and is awaited until the
  engine calls `done()`); `malformed(status, reason)` records a request the listener "could not parse" through
  the engine's `Rejecter`.
- `MemoryDownstream`: a `SyncDownstream` that keeps what the engine sent: status, headers, body, whether the
  response completed, was aborted or asked to close the connection, and how often `done()` was called.
- `MemoryForwarder(upstream, now=False)`: a `Forwarder` (with `send_now` when `now`) whose upstream is a function of the `UpstreamRequest` (its host,
  port, target and headers say which instance and what was asked): it returns a `Reply`, or an `ErrorType` for
  a failure before any response (or an awaitable of either, for an upstream that takes its time). The request body is read in full before the answer, as an upstream that reads
  the body first would; a connect failure leaves it unread. `sent` lists the requests with their bodies.
- `Reply`: status, headers and body; `chunks` streams the body in pieces instead of handing it over whole, and
  `fail_after` breaks the stream after that many chunks (an upstream dying mid-body).
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
from dataclasses import dataclass, field
from typing import Awaitable, AsyncIterator, Callable, Iterable

from gatewatch.io.interfaces import (ClientGone, Headers, Rejecter, RequestHandler, RequestHead, SyncRequestHandler,
                                     UpstreamFailure, UpstreamRequest, header_index)
from gatewatch.telemetry.names import ErrorType


NOT_CONNECTED = frozenset({ErrorType.CONNECT_REFUSED, ErrorType.CONNECT_TIMEOUT, ErrorType.DNS_ERROR,
                           ErrorType.CONNECT_ERROR})


@dataclass(frozen=True)
class Reply:
    status: int = 200
    body: bytes = b""
    headers: Headers = (("Content-Type", "application/json"),)
    chunks: tuple[bytes, ...] | None = None  # streamed (no Content-Length) instead of `body`
    fail_after: int | None = None  # with `chunks`: the upstream breaks after this many
    reason: str = ""

    @functools.cached_property
    def wire_headers(self) -> Headers:
        """The headers as the upstream sends them: Content-Length added unless the body streams."""
        if self.chunks is not None:
            return tuple(self.headers)
        return tuple(self.headers) + (("Content-Length", str(len(self.body))),)


class MemoryResponse:
    """An `UpstreamResponse` from a `Reply`."""

    def __init__(self, reply: Reply, request: UpstreamRequest):
        self._reply = reply
        self.status, self.reason = reply.status, reply.reason
        self.headers: Headers = reply.wire_headers
        self.peer_address, self.peer_port = request.host, request.port
        self.whole = reply.body if reply.chunks is None else None
        self.closed = False

    async def body(self) -> AsyncIterator[bytes]:
        reply = self._reply
        for i, chunk in enumerate(reply.chunks if reply.chunks is not None else (reply.body,)):
            if reply.fail_after is not None and i >= reply.fail_after:
                raise UpstreamFailure(ErrorType.UPSTREAM_RESET, "the upstream broke mid-body", before_response=False)
            yield chunk

    def close(self) -> None:
        self.closed = True


@dataclass
class Sent:
    pool: str
    request: UpstreamRequest
    body: bytes | None
    timeouts: tuple[float, float, float]  # connect_s, response_s, idle_s
    now: bool = False  # sent with `send_now` (the synchronous path), not `send`


class MemoryForwarder:
    def __init__(self, upstream: Callable[[UpstreamRequest], Reply | ErrorType | Awaitable[Reply | ErrorType]],
                 keep: int = 10_000, now: bool = False):
        self.upstream = upstream
        if now:
            self.send_now = self._send_now
        self.sent: collections.deque[Sent] = collections.deque(maxlen=keep)  # the latest `keep` requests
        self.limits: dict[str, tuple[int, float]] = {}
        self._tasks: set[asyncio.Task] = set()

    async def send(self, pool: str, request: UpstreamRequest, body: AsyncIterator[bytes] | None,
                   connect_s: float, response_s: float, idle_s: float, timing=None) -> MemoryResponse:
        answer = self.upstream(request)
        if inspect.isawaitable(answer):  # an upstream that takes its time (the engine awaits it for real)
            answer = await answer
        if isinstance(answer, ErrorType) and answer in NOT_CONNECTED:  # nothing was sent: the body stays unread, as on a real failed connect
            self.sent.append(Sent(pool, request, None, (connect_s, response_s, idle_s)))
            raise UpstreamFailure(answer, "scripted connect failure")
        received = None
        if body is not None:
            try:
                received = b"".join([chunk async for chunk in body])
            except ClientGone:
                raise UpstreamFailure(ErrorType.UPSTREAM_RESET, "client went away during the upload") from None
        self.sent.append(Sent(pool, request, received, (connect_s, response_s, idle_s)))
        if isinstance(answer, ErrorType):
            raise UpstreamFailure(answer, "scripted failure")
        return MemoryResponse(answer, request)

    def _send_now(self, pool: str, request: UpstreamRequest, response_s: float, idle_s: float, timing,
                  callback: Callable, arg) -> bool:
        """The raw forwarder's `send_now`: the answer reaches `callback` from the loop, never from this call."""
        loop = asyncio.get_running_loop()
        answer = self.upstream(request)
        if inspect.isawaitable(answer):
            async def later(pending=answer):
                loop.call_soon(callback, arg, self._result(pool, request, await pending, (0.0, response_s, idle_s)))
            task = loop.create_task(later())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            loop.call_soon(callback, arg, self._result(pool, request, answer, (0.0, response_s, idle_s)))
        return True

    def _result(self, pool: str, request: UpstreamRequest, answer: Reply | ErrorType,
                timeouts: tuple[float, float, float]) -> MemoryResponse | UpstreamFailure:
        self.sent.append(Sent(pool, request, None, timeouts, now=True))
        if isinstance(answer, ErrorType):
            return UpstreamFailure(answer, "scripted failure")
        return MemoryResponse(answer, request)

    def set_limits(self, limits: dict[str, tuple[int, float]]) -> None:
        self.limits = limits

    async def close(self) -> None:
        pass


@dataclass
class MemoryDownstream:
    status: int | None = None
    reason: str | None = None
    headers: Headers = ()
    body: bytes = b""
    complete: bool = False
    aborted: bool = False
    close_after: bool = False
    done_calls: int = 0
    _chunks: list[bytes] = field(default_factory=list)
    _settled: asyncio.Future | None = None  # set by a listener that waits for `done()`

    @property
    def started(self) -> bool:
        return self.status is not None

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def close_after_response(self) -> None:
        self.close_after = True

    async def start(self, status: int, reason: str | None, headers: Headers, content_length: int | None) -> None:
        self.status, self.reason, self.headers = status, reason, headers

    async def write(self, chunk: bytes) -> None:
        self._chunks.append(chunk)

    async def finish(self) -> None:
        self.body = b"".join(self._chunks)
        self.complete = True

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        if self.started:
            return
        await self.start(status, reason, headers, len(body))
        self._chunks.append(body)
        await self.finish()

    def respond_now(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        if self.started:
            return
        self.status, self.reason, self.headers, self.body, self.complete = status, reason, headers, body, True

    def respond_block_now(self, status: int, reason: str | None, block: bytes, dated: bool, tail: Headers,
                          body: bytes) -> None:
        lines = block.decode("latin-1").split("\r\n")[:-1] if block else []
        relayed = tuple(tuple(line.split(": ", 1)) for line in lines)
        self.respond_now(status, reason, relayed + tuple(tail), body)

    def abort(self) -> None:
        self.aborted = True

    def done(self) -> None:
        self.done_calls += 1
        if self._settled is not None and not self._settled.done():
            self._settled.set_result(None)


class MemoryListener:
    """An `io.interfaces.Listener` whose clients are calls to `request`."""

    def __init__(self, name: str, handler: RequestHandler, reject: Rejecter, scheme: str = "http",
                 address: tuple[str, int] = ("127.0.0.1", 8080), handle_now: SyncRequestHandler | None = None):
        self.name = name
        self.handler = handler
        self.handle_now = handle_now
        self._reject = reject
        self.scheme = scheme
        self.bound: tuple[str, int] | None = address

    async def start(self) -> tuple[str, int]:
        return self.bound

    async def stop(self, grace_s: float = 5.0) -> None:
        pass

    def head(self, method: str, target: str, headers: Iterable[tuple[str, str]] = (), has_body: bool = False,
             client: tuple[str, int] = ("192.0.2.10", 40000), version: str = "1.1") -> RequestHead:
        hs = tuple(headers)
        if not any(k.lower() == "host" for k, _ in hs):
            hs = (("Host", f"{self.bound[0]}:{self.bound[1]}"),) + hs
        return RequestHead(method, target, version, hs, client[0], client[1], self.scheme, self.bound[0],
                           self.bound[1], self.name, has_body, header_index(hs))

    async def request(self, method: str, target: str, headers: Iterable[tuple[str, str]] = (),
                      body: bytes | Iterable[bytes] | None = None, **head_args) -> MemoryDownstream:
        chunks = [body] if isinstance(body, bytes) else list(body or ())
        head = self.head(method, target, headers, has_body=bool(chunks), **head_args)
        down = MemoryDownstream()
        if self.handle_now is not None and not chunks:
            down._settled = asyncio.get_running_loop().create_future()
            self.handle_now(head, down)
            await down._settled
        else:
            await self.handler(head, _stream(chunks), down)
        return down

    def malformed(self, status: int, reason: str, client: tuple[str, int] = ("192.0.2.10", 40000)) -> bytes:
        body, _ = self._reject(self.name, client, self.bound, status, reason)
        return body


async def _stream(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
