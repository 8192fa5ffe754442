#!/usr/bin/env python3
"""WebSocket echo latency through Gatewatch against direct to the backend (issue 17).

    python bench/websocket.py                    # 5,000 round trips per case, 3 alternating rounds
    python bench/websocket.py --messages 2000 --rounds 1 --size 64 --out /tmp/ws.json

One aiohttp WebSocket echo server (a process of its own), one Gatewatch (`python -m gatewatch run`, fast data
plane, telemetry off: OTEL_SDK_DISABLED=true) with a route to an in-process pool whose one instance is that
server, and one aiohttp client in this process with one message in flight: send, wait for the echo, repeat.
Each round measures `direct` (client → backend) and `gatewatch` (client → Gatewatch → backend) on a connection
each, in alternating order, after a warm-up of 200 round trips. Prints p50/p99/mean per case (medians over
rounds) and the ratios gatewatch / direct; the JSON (--out) has every round. Nothing is pinned to a CPU: on a
shared machine the figures move with the neighbours, the ratio less than the absolute numbers.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BACKEND = """
import sys
from aiohttp import web
async def echo(request):
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for msg in ws:
        if msg.type == 1:
            await ws.send_str(msg.data)
        elif msg.type == 2:
            await ws.send_bytes(msg.data)
    return ws
app = web.Application()
app.router.add_get("/{tail:.*}", echo)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited with {proc.returncode}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"{what} did not listen on {port} within 30 s")
            await asyncio.sleep(0.1)


async def measure(session: aiohttp.ClientSession, url: str, messages: int, payload: bytes) -> list[float]:
    out = []
    async with session.ws_connect(url, autoping=False, max_msg_size=0) as ws:
        for i in range(200 + messages):
            started = time.perf_counter()
            await ws.send_bytes(payload)
            msg = await ws.receive()
            elapsed = time.perf_counter() - started
            if msg.data != payload:
                raise SystemExit(f"{url}: echo mismatch ({msg.type})")
            if i >= 200:
                out.append(elapsed)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"p50_us": s[len(s) // 2] * 1e6, "p99_us": s[int(len(s) * 0.99)] * 1e6,
            "mean_us": statistics.fmean(s) * 1e6}


async def run(args) -> dict:
    backend_port, gw_port, admin_port = free_port(), free_port(), free_port()
    tmp = Path(tempfile.mkdtemp(prefix="gw-ws-bench-"))
    cfg = {"data_plane": "fast", "admin": {"address": f"127.0.0.1:{admin_port}"},
           "telemetry": {"local_dir": str(tmp / "telemetry")},
           "edge": {"listeners": [{"name": "public", "address": f"127.0.0.1:{gw_port}"}],
                    "routes": [{"name": "ws", "match": {"path": {"prefix": "/"}}, "upstream": "echo"}]},
           "balancer": {"pools": [{"name": "echo", "instances": [
               {"id": "e0", "host": "127.0.0.1", "port": backend_port}]}]}}
    (tmp / "gatewatch.yaml").write_text(json.dumps(cfg))
    env = {**os.environ, "OTEL_SDK_DISABLED": "true", "PYTHONPATH": str(ROOT)}
    backend = subprocess.Popen([sys.executable, "-c", BACKEND, str(backend_port)])
    gateway = subprocess.Popen([sys.executable, "-m", "gatewatch", "run", "-c", str(tmp / "gatewatch.yaml")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_port(backend_port, backend, "backend")
        await wait_port(gw_port, gateway, "gatewatch")
        payload = os.urandom(args.size)
        urls = {"direct": f"http://127.0.0.1:{backend_port}/echo", "gatewatch": f"http://127.0.0.1:{gw_port}/echo"}
        rounds: list[dict] = []
        async with aiohttp.ClientSession() as session:
            for r in range(args.rounds):
                order = ["direct", "gatewatch"] if r % 2 == 0 else ["gatewatch", "direct"]
                rounds.append({case: summary(await measure(session, urls[case], args.messages, payload))
                               for case in order})
    finally:
        for p in (gateway, backend):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
    med = {case: {k: statistics.median(r[case][k] for r in rounds) for k in ("p50_us", "p99_us", "mean_us")}
           for case in ("direct", "gatewatch")}
    ratio = {k: med["gatewatch"][k] / med["direct"][k] for k in ("p50_us", "p99_us", "mean_us")}
    return {"messages": args.messages, "rounds": args.rounds, "size": args.size, "median": med, "ratio": ratio,
            "rounds_raw": rounds, "cpus": os.cpu_count()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--messages", type=int, default=5000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--size", type=int, default=32, help="payload bytes per message (binary)")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    result = asyncio.run(run(args))
    print(f"{'case':<10} {'p50 µs':>9} {'p99 µs':>9} {'mean µs':>9}")
    for case in ("direct", "gatewatch"):
        m = result["median"][case]
        print(f"{case:<10} {m['p50_us']:>9.0f} {m['p99_us']:>9.0f} {m['mean_us']:>9.0f}")
    r = result["ratio"]
    print(f"{'ratio':<10} {r['p50_us']:>9.2f} {r['p99_us']:>9.2f} {r['mean_us']:>9.2f}   (gatewatch / direct)")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
