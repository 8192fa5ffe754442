"""Loopback helpers for tests: a real aiohttp server on port 0, a port nobody listens on, raw bytes to a
listener and everything it answers."""

from __future__ import annotations

import asyncio
import socket

from aiohttp import web


async def start_app(handler) -> tuple[web.AppRunner, int]:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def raw_request(port: int, data: bytes, read_timeout: float = 5.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    out = b""
    try:
        while True:
            chunk = await asyncio.wait_for(reader.read(65536), read_timeout)
            if not chunk:
                break
            out += chunk
    except (ConnectionResetError, asyncio.TimeoutError):
        pass
    writer.close()
    return out


def edge_port(rt) -> int:
    return rt.listeners[0].bound[1]
