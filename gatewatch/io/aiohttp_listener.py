"""The client I/O end on aiohttp's low-level server: bytes in → `RequestHead` + body stream → `Engine.handle`.

aiohttp parses and frames HTTP/1.1 (header size limits, chunked decoding, keep-alive). This module only
translates: it owns no routing, header policy or telemetry. `Expect: 100-continue` is answered when the engine
first reads the body, so a request refused before that gets its final status instead (RFC 9110 §10.1.1).
"""

from __future__ import annotations

import asyncio
import logging
from typing import AsyncIterator, Awaitable, Callable

from aiohttp import web

from gatewatch.io.interfaces import ClientGone, Headers, RequestHead, header_index

log = logging.getLogger("gatewatch.listener")
READ_CHUNK = 64 * 1024
DRAIN_LIMIT = 64 * 1024  # an unread request body we let aiohttp read and discard to keep the connection

Handler = Callable[[RequestHead, AsyncIterator[bytes], "AiohttpDownstream"], Awaitable[None]]


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
            resp.headers.add(k, v)
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


class AiohttpListener:
    def __init__(self, name: str, host: str, port: int, scheme: str, handler: Handler, max_header_size: int,
                 reuse_port: bool = False):
        self.reuse_port = reuse_port
        self.name = name
        self.host = host
        self.port = port
        self.scheme = scheme
        self._handler = handler
        self._max_header_size = max_header_size
        self._runner: web.ServerRunner | None = None
        self.bound: tuple[str, int] | None = None

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
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
        )
        down = AiohttpDownstream(request)
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
        server = web.Server(self._handler_entry, max_field_size=self._max_header_size,
                            max_line_size=self._max_header_size, access_log=None)
        self._runner = web.ServerRunner(server, handle_signals=False, shutdown_timeout=5.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, reuse_address=True, backlog=1024,
                           reuse_port=self.reuse_port or None)
        await site.start()
        sockname = site._server.sockets[0].getsockname()  # noqa: SLF001 - the only way to learn port 0's port
        self.bound = (sockname[0], sockname[1])
        return self.bound

    async def _handler_entry(self, request: web.BaseRequest) -> web.StreamResponse:
        return await self._handle(request)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._runner is not None:
            await self._runner.shutdown()
            await asyncio.wait_for(self._runner.cleanup(), timeout=grace_s + 1)
