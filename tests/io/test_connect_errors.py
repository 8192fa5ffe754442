"""An upstream connect that failed says which step failed: DNS, refused, timeout, TLS (issue 18, category 6) — in
the client's answer, the attempt's CLIENT span (`error.type`), the request's metrics and the retry decision log,
on both data planes, against real sockets (a name that cannot resolve, a port bound but not listening, a listener
whose accept queue is full, a plaintext server behind a TLS pool)."""

from __future__ import annotations

import asyncio
import errno
import json
import re
import socket

import aiohttp
import pytest

from gatewatch.io.aiohttp_forwarder import map_error
from gatewatch.io.interfaces import connect_failure
from gatewatch.telemetry.names import ErrorType
from tests.io.test_dataplane_adversarial import Upstream
from tests.support.runtime import running

pytestmark = pytest.mark.parametrize("plane", ["fast", "aiohttp"])
SERVER_COUNT = re.compile(r'^http_server_request_duration_seconds_count\{(.*)\} (\S+)$', re.M)


class Blackhole:
    """A port whose SYNs go unanswered: a listener with a full accept queue (Linux drops further SYNs), so a connect
    to it neither succeeds nor is refused until the caller's timeout."""

    def __enter__(self) -> int:
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(0)
        port = self.server.getsockname()[1]
        self.fillers = []
        for _ in range(3):
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            self.fillers.append(s)
        return port

    def __exit__(self, *exc) -> None:
        for s in self.fillers:
            s.close()
        self.server.close()


class Refusing:
    """A port that refuses connections: bound (so nothing else can take it) but not listening."""

    def __enter__(self) -> int:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc) -> None:
        self.sock.close()


async def plaintext(reader, writer, up) -> None:
    """An HTTP server where TLS is expected: its answer to a ClientHello is plaintext."""
    await reader.read(100)
    writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    await writer.drain()


def config(tmp_path, plane: str, host: str, port: int, tls: dict | None = None) -> dict:
    pool = {"name": "pool", "instances": [{"id": "i0", "host": host, "port": port}]}
    if tls is not None:
        pool["tls"] = tls
    return {
        "data_plane": plane,
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"local_dir": str(tmp_path / "telemetry"), "exporter": "thread", "export_interval_s": 0.05},
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                 "routes": [{"name": "api", "upstream": "pool", "timeouts": {"connect_s": 0.3, "response_s": 2},
                             "retries": {"attempts": 2}}]},
        "balancer": {"pools": [pool]},
    }


async def get(rt) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{rt.listeners[0].bound[1]}/x") as r:
            return r.status, await r.json()


def recorded_error_types(rt) -> set[str]:
    return {dict(re.findall(r'(\w+)="([^"]*)"', labels))["error_type"]
            for labels, _ in SERVER_COUNT.findall(rt.metrics.exposition(None)[0].decode())}


async def records(tmp_path, signal: str, request_id: str, count: int) -> list[dict]:
    """The JSON-lines records of one request, once `count` of them were written."""
    found: list[dict] = []
    for _ in range(200):
        path = tmp_path / "telemetry" / f"gatewatch-edge.{signal}.jsonl"
        lines = path.read_text().splitlines() if path.exists() else []
        found = [json.loads(line) for line in lines if request_id in line]
        if len(found) >= count:
            return found
        await asyncio.sleep(0.05)
    return found


def case(name: str, *, status: int, outcome: str, message: str, error_type: str):
    return pytest.param(name, status, outcome, message, error_type, id=name)


CASES = [
    case("dns", status=502, outcome="upstream_connect_error", error_type="dns_error",
         message="could not connect to the upstream: its host name did not resolve (DNS)"),
    case("refused", status=502, outcome="upstream_connect_error", error_type="connect_refused",
         message="could not connect to the upstream: the connection was refused"),
    case("timeout", status=504, outcome="upstream_timeout", error_type="connect_timeout",
         message="the upstream did not answer in time: no connection to it within the connect timeout"),
    case("tls", status=502, outcome="upstream_tls_error", error_type="upstream_tls_error",
         message="(not_tls)"),
]


@pytest.mark.parametrize(("step", "status", "outcome", "message", "error_type"), CASES)
async def test_a_failed_connect_says_which_step_failed(tmp_path, plane, step, status, outcome, message, error_type):
    async with Upstream(plaintext) as plain:
        with Blackhole() as blackhole, Refusing() as refusing:
            host, port, tls = {"dns": ("no-such-host.invalid", 80, None), "refused": ("127.0.0.1", refusing, None),
                               "timeout": ("127.0.0.1", blackhole, None), "tls": ("127.0.0.1", plain.port, {})}[step]
            async with running(config(tmp_path, plane, host, port, tls)) as rt:
                got, body = await get(rt)
                assert (got, body["error"]["outcome"]) == (status, outcome)
                assert message in body["error"]["message"]
                others = {"dns_error", "connect_refused", "connect_timeout", "connect_error", "upstream_tls_error"}
                assert recorded_error_types(rt) & others == {error_type}
                request_id = body["error"]["request_id"]
                spans = await records(tmp_path, "traces", request_id, 3)  # SERVER, INTERNAL balance, 2 CLIENT
                clients = [s for s in spans if s["kind"] == "SpanKind.CLIENT"]
                assert [s["attributes"]["error.type"] for s in clients] == [error_type, error_type]
                logs = await records(tmp_path, "logs", request_id, 4)
                retries = [r for r in logs if r["event_name"] == "gatewatch.decision.retry"]
                assert [r["attributes"]["error.type"] for r in retries] == [error_type, error_type]


# --- the classification itself, for the failures a test machine cannot produce at will --------------------------

@pytest.mark.parametrize(("err", "expected"), [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), ErrorType.CONNECT_REFUSED),
    (OSError(errno.EHOSTUNREACH, "No route to host"), ErrorType.CONNECT_ERROR),
    (OSError(errno.ENETUNREACH, "Network is unreachable"), ErrorType.CONNECT_ERROR),
    (OSError(errno.EADDRNOTAVAIL, "Cannot assign requested address"), ErrorType.CONNECT_ERROR),  # no local port
])
def test_a_connect_error_is_refused_only_when_refused(plane, err, expected):
    if plane == "fast":
        failure = connect_failure(err)
    else:
        key = aiohttp.client_reqrep.ConnectionKey("h", 1, False, True, None, None, None)
        failure = map_error(aiohttp.ClientConnectorError(key, err), before_response=True)
    assert (failure.error_type, failure.detail) == (expected, err.strerror)
