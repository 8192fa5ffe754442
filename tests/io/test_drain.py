"""The drain of `Runtime.stop()` (config `drain`), on both data planes, in-process with real sockets:
readiness fails while the listener still serves, then it stops accepting, keep-alive clients are told to close, an
idle connection is closed only after `idle_close_s`, and every step is counted and recorded as an event."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web
from gatewatch.telemetry.names import DrainClose, DrainStep

from gatewatch.app.runtime import Runtime
from gatewatch.config import parse_config
from tests.support.net import edge_port, start_app
from tests.support.runtime import in_process_config

REQUEST = b"GET /api/1 HTTP/1.1\r\nHost: a\r\n\r\n"


async def exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
    writer.write(REQUEST)
    head = await reader.readuntil(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
    return head + await reader.readexactly(length)


def counter(rt: Runtime, name: str, **labels) -> float:
    for family in rt.metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name} {labels}")


async def readyz(rt: Runtime) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as s, s.get(f"http://{rt.admin_bound[0]}:{rt.admin_bound[1]}/readyz") as r:
        return r.status, await r.json()


def drain_events(tmp_path) -> list[str]:
    steps = []
    for f in sorted((tmp_path / "telemetry").glob("*.jsonl")):
        for line in f.read_text().splitlines():
            rec = json.loads(line)
            attrs = rec.get("attributes", {})
            if rec.get("event_name") == "gatewatch.drain":
                steps.append(attrs["gatewatch.drain.step"])
    return steps


@pytest.fixture
async def backend():
    async def ok(request):
        return web.Response(text="ok")

    runner, port = await start_app(ok)
    yield port
    await runner.cleanup()


@pytest.mark.parametrize("plane", ["fast", "aiohttp"])
async def test_readiness_fails_first_then_the_listener_closes_and_keepalive_clients_are_told_to_close(
        tmp_path, backend, plane):
    cfg = in_process_config([backend], tmp_path, data_plane=plane)
    cfg["drain"] = {"readiness_delay_s": 300, "grace_s": 30, "idle_close_s": 300}
    rt = Runtime(parse_config(cfg), env={})
    await rt.start()
    port = edge_port(rt)
    busy = await asyncio.open_connection("127.0.0.1", port)
    assert b"Connection: close" not in await exchange(*busy)
    assert counter(rt, "gatewatch_drain_steps_total", step=DrainStep.STARTED.value) == 0
    stopping = asyncio.create_task(rt.stop())
    await asyncio.sleep(0)
    # 1. Readiness fails at once, while the listener still accepts and serves as usual.
    status, body = await readyz(rt)
    assert status == 503 and body["draining"] is True and body["listeners"] == {"public": f"127.0.0.1:{port}"}
    late = await asyncio.open_connection("127.0.0.1", port)
    assert (await exchange(*late)).startswith(b"HTTP/1.1 200")
    assert b"Connection: close" not in await exchange(*busy)
    assert counter(rt, "gatewatch_drain_steps_total", step=DrainStep.STARTED.value) == 1
    assert counter(rt, "gatewatch_drain_steps_total", step=DrainStep.STOPPED_ACCEPTING.value) == 0
    # 2. The delay is over (a second SIGTERM does this): the listener stops accepting; the connections left are
    # idle for less than idle_close_s, so a request sent on them is served and answered `Connection: close`.
    rt.hurry.set()
    while counter(rt, "gatewatch_drain_steps_total", step=DrainStep.STOPPED_ACCEPTING.value) == 0:
        await asyncio.sleep(0.01)
    status, body = await readyz(rt)
    assert status == 503 and body["listeners"] == {}
    with pytest.raises(OSError):
        await asyncio.open_connection("127.0.0.1", port)
    for reader, writer in (busy, late):
        answer = await exchange(reader, writer)
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer, answer
        assert await reader.read() == b""  # then the connection closes, cleanly
        writer.close()
    await asyncio.wait_for(stopping, 30)
    assert counter(rt, "gatewatch_drain_steps_total", step=DrainStep.DRAINED.value) == 1
    assert counter(rt, "gatewatch_drain_steps_total", step=DrainStep.GRACE_EXPIRED.value) == 0
    if plane == "fast":  # the aiohttp listener does not count how its connections ended
        assert counter(rt, "gatewatch_drain_connections_closed_total", gatewatch_listener="public",
                       reason=DrainClose.AFTER_RESPONSE.value) == 2
        assert counter(rt, "gatewatch_drain_connections_closed_total", gatewatch_listener="public",
                       reason=DrainClose.IDLE.value) == 0
    assert drain_events(tmp_path) == ["started", "stopped_accepting", "drained"]


async def test_an_idle_keepalive_connection_is_closed_after_idle_close_s_and_counted(tmp_path, backend):
    cfg = in_process_config([backend], tmp_path)
    cfg["drain"] = {"grace_s": 30, "idle_close_s": 0.2}
    rt = Runtime(parse_config(cfg), env={})
    await rt.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
    assert (await exchange(reader, writer)).startswith(b"HTTP/1.1 200")
    await asyncio.wait_for(rt.stop(), 30)
    assert await reader.read() == b""  # closed by the server (a FIN: nothing was left unread)
    writer.close()
    assert counter(rt, "gatewatch_drain_connections_closed_total", gatewatch_listener="public",
                   reason=DrainClose.IDLE.value) == 1
    assert counter(rt, "gatewatch_drain_connections_closed_total", gatewatch_listener="public",
                   reason=DrainClose.DEADLINE.value) == 0


async def test_a_request_still_running_when_the_grace_ends_is_cut_and_counted(tmp_path):
    release = asyncio.Event()

    async def slow(request):
        await release.wait()
        return web.Response(text="late")

    runner, port = await start_app(slow)
    try:
        cfg = in_process_config([port], tmp_path, timeouts={"connect_s": 1, "response_s": 60, "idle_s": 60})
        cfg["drain"] = {"grace_s": 0.3}
        rt = Runtime(parse_config(cfg), env={})
        await rt.start()
        reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
        writer.write(REQUEST)
        while not any(c.running for c in rt.listeners[0].connections):
            await asyncio.sleep(0.01)
        await asyncio.wait_for(rt.stop(), 30)
        assert await reader.read() == b""  # cut without an answer: never one that looks complete
        writer.close()
        assert counter(rt, "gatewatch_drain_steps_total", step=DrainStep.GRACE_EXPIRED.value) == 1
        assert counter(rt, "gatewatch_drain_connections_closed_total", gatewatch_listener="public",
                       reason=DrainClose.DEADLINE.value) == 1
        assert drain_events(tmp_path) == ["started", "stopped_accepting", "grace_expired"]
    finally:
        release.set()
        await runner.cleanup()


async def test_connections_waiting_in_the_accept_queue_are_served_not_reset(tmp_path, backend):
    """Closing a listening socket resets the connections the kernel queued for it and nobody accepted yet (with
    SO_REUSEPORT they are not handed to the other process either): they are accepted and served first."""
    import socket

    cfg = in_process_config([backend], tmp_path)
    cfg["edge"]["listeners"][0]["reuse_port"] = True
    rt = Runtime(parse_config(cfg), env={})
    await rt.start()
    queued = []
    for _ in range(3):  # connected and sent without yielding to the event loop: nobody has accepted them
        s = socket.create_connection(("127.0.0.1", edge_port(rt)))
        s.sendall(REQUEST)
        queued.append(s)
    stopping = asyncio.ensure_future(rt.listeners[0].stop(grace_s=30, idle_close_s=30))
    for s in queued:
        s.setblocking(False)
        reader, writer = await asyncio.open_connection(sock=s)
        answer = await reader.read()  # a reset would raise ConnectionResetError here
        assert answer.startswith(b"HTTP/1.1 200") and b"Connection: close" in answer, answer
        writer.close()
    assert await asyncio.wait_for(stopping, 30) == {"after_response": 3, "idle": 0, "deadline": 0}
    await rt.stop()
