"""The idle-connection case: after a warm-up, the harness itself (asyncio, on the load CPU) opens N keep-alive
connections to gatewatch-off, 32 at a time, sends one request on each and leaves them open; the gateway's RSS is
read before, with all of them open, and after closing them, and 100 of them are re-used to check they still
work. `measure_idle` returns the round's record.
"""

from __future__ import annotations

import asyncio
import collections
import random
import time
from typing import TYPE_CHECKING, Any

from .cases import Case
from .common import PATH
from .targets import start_target, stop_target
from .wrk import run_wrk

if TYPE_CHECKING:
    from .bench import Bench


def measure_idle(bench: Bench, case: Case, rnd: int) -> dict[str, Any]:
    """The idle case, measured on a gateway configured as gatewatch-off."""
    import psutil

    n = bench.ctx.args.idle_conns
    t = start_target(bench, Case("idle", "gatewatch", telemetry="off"), rnd)
    problems: list[str] = []
    try:
        run_wrk(bench.ctx, t.url, 32, max(1, bench.ctx.args.warmup), "warmup-idle")
        time.sleep(0.5)
        proc = psutil.Process(t.procs[0].pid)
        host, port = t.info["listeners"]["public"].rsplit(":", 1)
        out = asyncio.run(idle_connections(host, int(port), n, lambda: proc.memory_info().rss))
        alive = t.procs[0].alive()
    finally:
        problems += stop_target(t)
    if not alive:
        problems.append("CRASH: gatewatch died during the idle-connection test")
    opened = out["opened"]
    per = (out["rss_open"] - out["rss_before"]) / 1024 / opened if opened else None
    if out["failures"]:
        problems.append(f"{sum(out['failures'].values())} of {n} connections failed: {out['failures']}")
    if out["still_alive"] < out["probed"]:
        problems.append(f"only {out['still_alive']} of {out['probed']} probed idle connections still answered")
    return {"round": rnd, "connections": n, "opened": opened, "rss_before_kib": out["rss_before"] // 1024,
            "rss_open_kib": out["rss_open"] // 1024, "rss_after_close_kib": out["rss_closed"] // 1024,
            "rss_kib_per_conn": per, "open_s": round(out["open_s"], 2), "probed": out["probed"],
            "probed_alive": out["still_alive"], "failures": dict(out["failures"]), "problems": problems}


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {ln.split(":", 1)[0].strip().lower(): ln.split(":", 1)[1].strip() for ln in lines[1:] if ":" in ln}
    if "content-length" in headers:
        await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    return status


async def idle_connections(host: str, port: int, n: int, rss) -> dict[str, Any]:
    req = f"GET {PATH} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: gatewatch-bench-idle\r\n\r\n".encode()
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    failures: collections.Counter[str] = collections.Counter()
    sem = asyncio.Semaphore(32)  # like wrk -c32: the gateway's upstream pool does not grow past the warm-up's

    async def one() -> None:
        async with sem:
            try:
                r, w = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            except Exception as err:
                failures[f"connect: {type(err).__name__}"] += 1
                return
            try:
                w.write(req)
                status = await asyncio.wait_for(_read_response(r), 10)
                if status != 200:
                    failures[f"status {status}"] += 1
                conns.append((r, w))
            except Exception as err:
                failures[f"request: {type(err).__name__}"] += 1
                w.close()

    await asyncio.sleep(0)
    rss_before = rss()
    t0 = time.monotonic()
    await asyncio.gather(*(one() for _ in range(n)))
    open_s = time.monotonic() - t0
    await asyncio.sleep(1.0)
    rss_open = rss()
    alive = await _probe(req, conns)
    for _, w in conns:
        w.close()
    await asyncio.gather(*(w.wait_closed() for _, w in conns), return_exceptions=True)
    await asyncio.sleep(1.0)
    rss_closed = rss()
    return {"opened": len(conns), "failures": failures, "rss_before": rss_before, "rss_open": rss_open,
            "rss_closed": rss_closed, "open_s": open_s, "probed": min(100, len(conns)), "still_alive": alive}


async def _probe(req: bytes, conns: list) -> int:
    """How many of up to 100 of the idle connections, picked at random (fixed seed), still answer a request."""
    probe = random.Random(1).sample(conns, min(100, len(conns)))
    alive = 0
    for r, w in probe:
        try:
            w.write(req)
            if await asyncio.wait_for(_read_response(r), 5) == 200:
                alive += 1
        except Exception:
            pass
    return alive
