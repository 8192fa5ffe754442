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


class Upstream(asyncio.Protocol):
    def __init__(self, client: "Client"):
        self.client = client
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.headers: list = []
        self.body: list = []

    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.parser.feed_data(data)

    def connection_lost(self, exc):
        self.client.transport.close()

    def on_message_begin(self):
        self.headers, self.body = [], []

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        body = b"".join(self.body)
        out = [b"HTTP/1.1 %d OK\r\n" % self.parser.get_status_code()]
        out += [n + b": " + v + b"\r\n" for n, v in self.headers if n.lower() not in HOP]
        out.append(b"Content-Length: %d\r\n\r\n" % len(body))
        out.append(body)
        self.client.transport.write(b"".join(out))


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int):
        self.upstream_port = upstream_port
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        self.waiting: collections.deque = collections.deque()
        self.url = b""
        self.headers: list = []
        self.body: list = []
        self.peer = b""

    def connection_made(self, transport):
        self.transport = transport
        self.peer = transport.get_extra_info("peername")[0].encode()
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self):
        _, self.upstream = await asyncio.get_running_loop().create_connection(
            lambda: Upstream(self), "127.0.0.1", self.upstream_port)
        while self.waiting:
            self.upstream.transport.write(self.waiting.popleft())

    def data_received(self, data):
        self.parser.feed_data(data)

    def connection_lost(self, exc):
        if self.upstream is not None:
            self.upstream.transport.close()

    def on_message_begin(self):
        self.url, self.headers, self.body = b"", [], []

    def on_url(self, url):
        self.url += url

    def on_header(self, name, value):
        self.headers.append((name, value))

    def on_body(self, body):
        self.body.append(body)

    def on_message_complete(self):
        body = b"".join(self.body)
        out = [self.parser.get_method() + b" " + self.url + b" HTTP/1.1\r\n"]
        out += [n + b": " + v + b"\r\n" for n, v in self.headers if n.lower() not in HOP]
        out.append(b"X-Forwarded-For: " + self.peer + b"\r\n")
        out.append(b"Content-Length: %d\r\n\r\n" % len(body))
        out.append(body)
        request = b"".join(out)
        if self.upstream is None:
            self.waiting.append(request)
        else:
            self.upstream.transport.write(request)


async def main(listen_port: int, upstream_port: int) -> None:
    server = await asyncio.get_running_loop().create_server(
        lambda: Client(upstream_port), "127.0.0.1", listen_port, backlog=4096)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
