"""The client I/O end on aiohttp's low-level server: bytes in → `RequestHead` + body stream → `Engine.handle`.

aiohttp parses and frames HTTP/1.1 (header size limits, chunked decoding, keep-alive). This module only
translates: it owns no routing, header policy or telemetry. `Expect: 100-continue` is answered when the engine
first reads the body, so a request refused before that gets its final status instead (RFC 9110 §10.1.1).
A request aiohttp's parser refuses is recorded through the engine's `Rejecter` and answered with its JSON body,
as the fast listener does (the status and `error.type` from aiohttp's exception, `_rejection`); so is what its
parser lets through and the fast listener refuses (`_head_refusal`: header limits, HTTP versions).
"""

from __future__ import annotations

import ast
import asyncio
import logging
import re
from typing import AsyncIterator

from aiohttp import http_exceptions as hx
from aiohttp import web, web_protocol
from aiohttp.http import HttpVersion10, HttpVersion11

from gatewatch.io.aiohttp_forwarder import wire_value
from gatewatch.io.http1 import MAX_TRACE_HEADER_BYTES, TRACE_HEADERS, method_rejection
from gatewatch.io.interfaces import ClientGone, Headers, Rejecter, RequestHandler, RequestHead, header_index
from gatewatch.io.tls import ServerTLS
from gatewatch.telemetry.names import RejectReason

log = logging.getLogger("gatewatch.listener")
READ_CHUNK = 64 * 1024
DRAIN_LIMIT = 64 * 1024  # an unread request body we let aiohttp read and discard to keep the connection
MAX_URL = 8192  # the request line's limit, as the fast listener's (the header limit is the listener's own)
MAX_HEADERS = 100  # header fields, trace-context ones apart, as the fast listener's


class AiohttpDownstream:
    def __init__(self, request: web.BaseRequest):
        self._request = request
        self.response: web.StreamResponse | None = None
        self.aborted = False
        self._close_after = False

    def close_after_response(self) -> None:
        self._close_after = True

    @property
    def started(self) -> bool:
        return self.response is not None

    async def start(self, status: int, reason: str | None, headers: Headers, content_length: int | None) -> None:
        resp = web.StreamResponse(status=status, reason=reason or None)
        for k, v in headers:
            resp.headers.add(k, v if v.isascii() else wire_value(v))
        if self._close_after:
            resp.force_close()
        if content_length is not None:
            resp.content_length = content_length
        self.response = resp
        try:
            await resp.prepare(self._request)
        except (ConnectionError, RuntimeError) as err:
            raise ClientGone() from err

    async def write(self, chunk: bytes) -> None:
        try:
            await self.response.write(chunk)
        except (ConnectionError, RuntimeError) as err:
            raise ClientGone() from err

    async def finish(self) -> None:
        try:
            await self.response.write_eof()
        except (ConnectionError, RuntimeError) as err:
            raise ClientGone() from err

    async def respond(self, status: int, reason: str | None, headers: Headers, body: bytes) -> None:
        if self.response is not None:
            return
        await self.start(status, reason, headers, len(body))
        if body:
            await self.write(body)
        await self.finish()

    def done(self) -> None:
        """Nothing to do: the listener awaits the handler, whose return is the end of the exchange."""

    def abort(self) -> None:
        """Break the connection without a clean end of body (RST), so the client cannot mistake a
        truncated response for a complete one."""
        self.aborted = True
        transport = self._request.transport
        if transport is not None:
            transport.abort()


async def _request_body(request: web.BaseRequest) -> AsyncIterator[bytes]:
    if request.headers.get("Expect", "").lower() == "100-continue" and request.version >= (1, 1):
        try:
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        except ConnectionError as err:
            raise ClientGone() from err
    content = request.content
    while True:
        try:
            chunk = await content.readany()
        except Exception as err:  # noqa: BLE001 - EofStream, reset, payload error: the client broke the upload
            raise ClientGone() from err
        if not chunk:
            if not content.is_eof():
                raise ClientGone()
            return
        yield chunk


class _Server(web.Server):
    """aiohttp's server whose connections answer unparseable requests the way the fast listener does."""

    def __init__(self, listener: "AiohttpListener", *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.listener = listener

    def __call__(self) -> web_protocol.RequestHandler:
        return _Connection(self, self.listener, loop=self._loop, **self._kwargs)


class _Connection(web_protocol.RequestHandler):
    def __init__(self, manager: _Server, listener: "AiohttpListener", **kwargs):
        super().__init__(manager, **kwargs)
        # Held here: aiohttp sets `_manager` to None when the connection is lost, and a refusal can still be
        # handled after that (one pipelined behind a request in flight when the client half-closed).
        self.listener = listener

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if not isinstance(exc, hx.BadHttpMessage):  # not the parser's: aiohttp's own answer (500, 504)
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:  # an answer already went out: nothing honest left to say
            raise ConnectionError("the request broke after its response had started")
        return _refusal(self.listener, request, *_rejection(exc))


def _refusal(listener: "AiohttpListener", request: web.BaseRequest, status: int, reason: str) -> web.Response:
    """The answer to a refused request (recorded through the engine's `Rejecter`), then the connection closes."""
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport else None
    sock = transport.get_extra_info("sockname") if transport else None
    body, request_id = listener.reject(listener.name, (peer[0], peer[1]) if peer else ("", 0),
                                       (sock[0], sock[1]) if sock else (listener.host, listener.port),
                                       status, reason)
    resp = web.Response(status=status, body=body, headers={
        "Content-Type": "application/json", "X-Request-Id": request_id, "Cache-Control": "no-store"})
    resp.force_close()
    return resp


def _head_refusal(request: web.BaseRequest, max_header_size: int) -> tuple[int, str] | None:
    """What aiohttp's parser lets through and the fast listener refuses, refused alike: header fields over
    `max_header_size` together or over MAX_HEADERS, trace-context ones counted apart under a bound of their own
    (the engine cuts them to the W3C limits), and an HTTP version other than 1.0 and 1.1 (aiohttp, like llhttp,
    parses HTTP/0.9 and HTTP/2.0 request lines; RFC 9110 §15.6.6)."""
    size = lines = trace = trace_lines = 0
    for k, v in request.raw_headers:
        n = len(k) + len(v) + 4
        if k.lower().decode("latin-1") in TRACE_HEADERS:
            trace += n
            trace_lines += 1
        else:
            size += n
            lines += 1
    if size > max_header_size or lines > MAX_HEADERS or trace > MAX_TRACE_HEADER_BYTES or trace_lines > MAX_HEADERS:
        return 431, RejectReason.HEADER_TOO_LARGE.value
    if request.version != HttpVersion11 and request.version != HttpVersion10:
        # aiohttp writes the status line with the request's version (`reify`-cached): "HTTP/0.9 505" is not an
        # HTTP/1.1 status line (RFC 9112 §4), so the answer is given as HTTP/1.1.
        request._cache["version"] = HttpVersion11  # noqa: SLF001 - no public way to answer in another version
        return 505, RejectReason.UNSUPPORTED_HTTP_VERSION.value
    return None


_LINE = re.compile(r"""^\s*(b'(?:[^'\\]|\\.)*'|b"(?:[^"\\]|\\.)*")\s*$""", re.M)


def _refused_line(exc: hx.BadHttpMessage) -> bytes | None:
    """The request line aiohttp's parser quotes in its error message (a bytes literal), if it does."""
    m = _LINE.search(exc.message if isinstance(exc.message, str) else str(exc))
    try:
        return ast.literal_eval(m.group(1)) if m else None
    except (ValueError, SyntaxError):
        return None


def _rejection(exc: hx.BadHttpMessage) -> tuple[int, str]:
    """(status, `error.type`) of a request aiohttp's parser refused, in the fast listener's vocabulary."""
    text = str(exc).lower()
    if isinstance(exc, hx.LineTooLong):
        # the header field limit is at least MAX_TRACE_HEADER_BYTES: MAX_URL names the request line's
        too_long_url = exc.args[1] == MAX_URL
        return (414, RejectReason.URI_TOO_LONG.value) if too_long_url else (431, RejectReason.HEADER_TOO_LARGE.value)
    if "too many headers" in text:
        return 431, RejectReason.HEADER_TOO_LARGE.value
    if isinstance(exc, hx.BadHttpMethod) or "invalid method" in text:
        return method_rejection(_refused_line(exc))
    if "invalid http version" in text or "pri/upgrade" in text:  # HTTP/1.2, HTTP/3.0; the HTTP/2 preface
        return 505, RejectReason.UNSUPPORTED_HTTP_VERSION.value
    if isinstance(exc, hx.BadStatusLine) and ("version" in text or "expected http/" in text or "expected dot" in text):
        return 400, RejectReason.INVALID_HTTP_VERSION.value
    if isinstance(exc, hx.InvalidURLError):
        return 400, RejectReason.INVALID_TARGET.value
    if "content-length" in text and "transfer-encoding" in text:
        return 400, RejectReason.FRAMING_CONFLICT.value
    if isinstance(exc, hx.ContentLengthError) or "content-length" in text:
        return 400, RejectReason.INVALID_CONTENT_LENGTH.value
    if isinstance(exc, hx.TransferEncodingError) or "chunk" in text:
        return 400, RejectReason.INVALID_CHUNKED_ENCODING.value
    if "transfer-encoding" in text:
        return 501, RejectReason.UNSUPPORTED_TRANSFER_CODING.value
    if "'host'" in text:
        return 400, RejectReason.INVALID_HOST.value
    return 400, RejectReason.PARSE_ERROR.value


class AiohttpListener:
    """`io.interfaces.Listener` on aiohttp's low-level server (the reference implementation)."""

    def __init__(self, name: str, host: str, port: int, scheme: str, handler: RequestHandler, reject: Rejecter,
                 max_header_size: int, reuse_port: bool = False, handle_now: object = None,
                 tls: ServerTLS | None = None, on_tls: object = None):
        # `handle_now` (the engine's synchronous entry) is not used: aiohttp hands every request to a handler task.
        # `tls`: served with the certificates it has at start (a reload does not change them here), and failed
        # handshakes are not counted (`on_tls` unused): asyncio's TLS layer does not report them. The fast
        # listener does both.
        self.tls = tls
        self.reuse_port = reuse_port
        self.name = name
        self.host = host
        self.port = port
        self.scheme = scheme
        self._handler = handler
        self.reject = reject
        self.max_header_size = max_header_size
        self._runner: web.ServerRunner | None = None
        self.bound: tuple[str, int] | None = None
        self.draining = False  # stop() has begun: responses close their connections

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        refused = _head_refusal(request, self.max_header_size)
        if refused is not None:
            return _refusal(self, request, *refused)
        transport = request.transport
        peer = transport.get_extra_info("peername") if transport else None
        sock = transport.get_extra_info("sockname") if transport else None
        headers = tuple((k.decode("latin-1"), v.decode("latin-1")) for k, v in request.raw_headers)
        head = RequestHead(
            method=request.method,
            target=request.raw_path,
            version=f"{request.version.major}.{request.version.minor}",
            headers=headers,
            index=header_index(headers),
            client_address=peer[0] if peer else "",
            client_port=peer[1] if peer else 0,
            scheme=self.scheme,
            server_address=sock[0] if sock else self.host,
            server_port=sock[1] if sock else self.port,
            listener=self.name,
            has_body=request.body_exists,
            tls=self.tls.describe(transport.get_extra_info("ssl_object")) if self.tls and transport else None,
        )
        down = AiohttpDownstream(request)
        if self.draining:
            down.close_after_response()  # `Connection: close`: the client reconnects to a process that stays
        body = _request_body(request)
        await self._handler(head, body, down)
        if down.response is None:
            # The client went away (outcome client_abort): nothing to answer; make sure the connection ends.
            down.abort()
            return web.Response(status=499)
        if head.has_body and not request.content.is_eof():
            # Answered before the body was read (a refusal). aiohttp would read and discard all of it to keep
            # the connection; like the fast listener, only a small declared rest is worth that. A client
            # waiting for 100 Continue, or still sending a large body, gets the connection closed instead.
            small = request.content_length is not None and request.content_length <= DRAIN_LIMIT
            if not small or request.headers.get("Expect", "").lower() == "100-continue":
                down.response.force_close()
        return down.response

    async def start(self) -> tuple[str, int]:
        # Header limits are checked in `_head_refusal` as the fast listener counts them; aiohttp's own only bound
        # each field (a trace-context header may be longer than max_header_size) and their number.
        server = _Server(self, self._handler_entry, max_field_size=max(self.max_header_size, MAX_TRACE_HEADER_BYTES),
                         max_headers=2 * MAX_HEADERS, max_line_size=MAX_URL, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=1024,
                           reuse_port=self.reuse_port or None,
                           ssl_context=self.tls.context if self.tls else None)
        await site.start()
        sockname = site._server.sockets[0].getsockname()  # noqa: SLF001 - the only way to learn port 0's port
        self.bound = (sockname[0], sockname[1])
        return self.bound

    async def _handler_entry(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._handle(request)

    async def stop(self, grace_s: float = 5.0, idle_close_s: float = 1.0) -> None:
        """Stop accepting first (the listening socket closes), then every response says `Connection: close`;
        after `idle_close_s` (or once no connection is left) aiohttp closes the idle keep-alive connections and
        gives the requests in flight what is left of `grace_s`. How each connection ended is counted by the fast
        listener only (this returns None)."""
        if self._runner is None:
            return
        for site in list(self._runner.sites):
            await site.stop()
        self.draining = True
        loop = asyncio.get_running_loop()
        start = loop.time()
        wait = min(idle_close_s, grace_s)
        while self._runner.server is not None and self._runner.server.connections and loop.time() - start < wait:
            await asyncio.sleep(0.05)
        # aiohttp takes the in-flight bound from the runner; no public setter after construction.
        self._runner._shutdown_timeout = max(0.1, grace_s - (loop.time() - start))  # noqa: SLF001
        await asyncio.wait_for(self._runner.cleanup(), timeout=grace_s + 1)
