"""Helpers for policy tests: a PolicyRequest without a server, a fake clock, a real redis-server on a free port."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from gatewatch.io.interfaces import RequestHead, header_index
from gatewatch.edge.policies.base import PolicyRequest

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def request(method="GET", path="/api/x", headers=(), query="", body: list[bytes] | None = None,
            client="127.0.0.1", now: float | None = None, consumer=None, plan=None) -> PolicyRequest:
    headers = tuple(headers)
    head = RequestHead(method, path + ("?" + query if query else ""), "1.1", headers, client, 40000, "http",
                       "127.0.0.1", 8080, "public", body is not None, header_index(headers))

    async def stream():
        for chunk in body or ():
            yield chunk

    return PolicyRequest(head=head, route="api", path=path, query=query, client_address=client,
                         body=stream() if body is not None else None, now=now if now is not None else time.time(),
                         rng=random.Random(1), consumer=consumer, plan=plan)


async def collect(body) -> bytes:
    return b"".join([c async for c in body])


class FakeClock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class NullTelemetry:
    def __init__(self):
        self.events = []

    def event(self, event, body, attributes, trace_id=None, span_id=None, severity="INFO"):
        self.events.append((event, body, attributes, severity))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A real redis-server (Debian's) on a free loopback port, no persistence. Missing binary: skip locally,
    fail under CI (DESIGN §7)."""

    def __init__(self, workdir: Path):
        if not Path(REDIS_SERVER).exists():
            if os.environ.get("CI") == "true":
                pytest.fail("redis-server is required under CI (apt-get install redis-server)")
            pytest.skip("redis-server not installed")
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.workdir)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), 0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.02)
        raise AssertionError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


async def echo_app(request):
    """Echo backend: the path, headers and body it received; `?status=N` answers with that status."""
    from aiohttp import web

    body = await request.read()
    status = int(request.query.get("status", "200"))
    return web.json_response({"raw_path": request.raw_path, "method": request.method, "body": body.decode(),
                              "headers": [[k, v] for k, v in request.headers.items()]}, status=status)


async def start_echo():
    from aiohttp import web

    app = web.Application(client_max_size=64 << 20)
    app.router.add_route("*", "/{tail:.*}", echo_app)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]  # noqa: SLF001


def policy_config(port: int, tmp_path, policies: list[dict], **route_extra) -> dict:
    from tests.support.runtime import in_process_config

    cfg = in_process_config([port], tmp_path, policies=policies, **route_extra)
    cfg["telemetry"]["exporter"] = "thread"
    return cfg


def server_span(otlp, request_id: str) -> dict:
    assert otlp.data.wait_for(lambda spans, logs: any(
        s["attributes"].get("gatewatch.request_id") == request_id and s["kind"] == "SERVER" for s in spans))
    spans, _ = otlp.data.snapshot()
    return next(s for s in spans if s["attributes"].get("gatewatch.request_id") == request_id
                and s["kind"] == "SERVER")


def policy_logs(otlp, request_id: str) -> list[dict]:
    _, logs = otlp.data.snapshot()
    return [r for r in logs if r["event_name"] == "gatewatch.decision.policy"
            and r["attributes"].get("gatewatch.request_id") == request_id]
