#!/usr/bin/env python3
"""The floor of a Python HTTP proxy on this machine: the benchmark's `python-floor` case.

    python bench/floor_proxy.py LISTEN_PORT UPSTREAM_PORT

uvloop + httptools (llhttp) on raw asyncio protocols, one keep-alive upstream connection per client connection,
hop-by-hop `Connection` dropped and `X-Forwarded-For` added; nothing else: no routing, no balancer, no
limits, no timeouts, no error handling, no streaming (bodies are buffered), no telemetry. It is not a proxy
anyone should run. It answers one question: how fast can *any* Python data plane built on the same parts as
Gatewatch's go here, so that Gatewatch's ratio to HAProxy can be read against what Python allows at all.
"""

from __future__ import annotations

import asyncio
import collections
import sys

import httptools
import uvloop

HOP = (b"connection", b"keep-alive", b"content-length", b"transfer-encoding")


class Http1(asyncio.Protocol):
    """What both sides share: llhttp fed from the socket, one message collected, and re-serialised with its
    hop-by-hop and framing headers replaced by a Content-Length."""

    def __init__(self, parser_type):
        self.parser = parser_type(self)
        self.transport: asyncio.Transport | None = None
        self.url = b""
        self.headers: list = []
        self.body: list = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed_data(data)

    def on_message_begin(self):
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_body(self, body):
        self.body.append(body)

    def message(self, first_line: bytes, extra: bytes = b"") -> bytes:
        body = b"".join(self.body)
        out = [first_line]
        out += [n + b": " + v + b"\r\n" for n, v in self.headers if n.lower() not in HOP]
        out.append(extra + b"Content-Length: %d\r\n\r\n" % len(body))
        out.append(body)
        return b"".join(out)


class Upstream(Http1):
    def __init__(self, client: "Client"):
        super().__init__(httptools.HttpResponseParser)
        self.client = client

    def connection_lost(self, exc):
        self.client.transport.close()

    def on_message_complete(self):
        self.client.transport.write(self.message(b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()))


class Client(Http1):
    upstream_class = Upstream  # (bench/floor_plus.py's subclass names its own)

    def __init__(self, upstream_port: int):
        super().__init__(httptools.HttpRequestParser)
        self.upstream_port = upstream_port
        self.upstream: Upstream | None = None
        self.waiting: collections.deque = collections.deque()
        self.peer = b""

    def connection_made(self, transport):
        self.transport = transport
        self.peer = transport.get_extra_info("peername")[0].encode()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self):
        _, self.upstream = await asyncio.get_running_loop().create_connection(
            lambda: self.upstream_class(self), "127.0.0.1", self.upstream_port)
        while self.waiting:
            self.upstream.transport.write(self.waiting.popleft())

    def connection_lost(self, exc):
        if self.upstream is not None:
            self.upstream.transport.close()

    def on_message_complete(self):
        request = self.message(self.parser.get_method() + b" " + self.url + b" HTTP/1.1\r\n",
                               b"X-Forwarded-For: " + self.peer + b"\r\n")
        if self.upstream is None:
            self.waiting.append(request)
        else:
            self.upstream.transport.write(request)


async def main(listen_port: int, upstream_port: int, client: type[Client] = Client) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: client(upstream_port), "127.0.0.1", listen_port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
