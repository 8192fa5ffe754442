"""CPU per request of the engine alone — routing, policies, pick, attempt bookkeeping, response relay, recording —
on the in-memory I/O pair (`gatewatch.io.memory`: no sockets, no parser). Run it on two trees to A/B a change to
the per-request Python work without the ±30 % run-to-run noise of the end-to-end benchmark:

    python bench/engine_micro.py [--requests 50000] [--telemetry off|on] [--path task|sync]

Prints µs of CPU per request (median of 5 runs). Not a throughput figure: the end-to-end harness (bench/run.py)
is the one that compares against HAProxy.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gatewatch.app.runtime import Runtime  # noqa: E402
from gatewatch.config import parse_config  # noqa: E402
from gatewatch.io.memory import MemoryForwarder, MemoryListener, Reply  # noqa: E402

# As the raw data plane hands over a small body that arrived with its head: one write, nothing streamed.
REPLY = Reply(200, b"ok", (("Content-Type", "text/plain"), ("Connection", "keep-alive")))


async def run(n: int, telemetry: str, instances: int = 3, algorithm: str = "round_robin", path: str = "task",
              sink=None) -> float:
    """Engine CPU per request, µs. `sink` (a `MemorySink`) replaces the telemetry's, to keep the records."""
    cfg = parse_config({
        "admin": {"address": "127.0.0.1:0"},
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                 "routes": [{"name": "items", "match": {"path": {"prefix": "/bench"}}, "upstream": "pool"}]},
        "balancer": {"pools": [{"name": "pool", "algorithm": algorithm, "instances": [
            {"host": "127.0.0.1", "port": 9101 + i} for i in range(instances)]}]},
        # The default exporter process is never started here: with telemetry on, every record is still built and
        # encoded for the pipe exactly as on the request path, then dropped (counted) instead of written to
        # a child. So "on" measures the request path's own telemetry cost, not the exporter's.
        "telemetry": {"local_dir": "/tmp/gatewatch-engine-micro"},
    })
    env = {"OTEL_SDK_DISABLED": "true"} if telemetry == "off" else {}
    rt = Runtime(cfg, env=env)
    engine = next(iter(rt.engines.values()))
    if sink is not None:
        rt.telemetry.sink = sink
    # `task`: the coroutine path (on this pair it never suspends: the upstream answers at once).
    # `sync`: the raw data plane's common exchange (`Engine.handle_now` + `send_now`); on this pair it pays a
    # loop round trip per request the task path does not (the answer comes by `call_soon`, the client awaits a
    # future), so compare paths end to end, not here.
    now = path == "sync"
    engine.forwarder = MemoryForwarder(lambda request: REPLY, keep=1, now=now)
    client = MemoryListener("public", engine.handle, engine.reject, handle_now=engine.handle_now if now else None)
    headers = (("Host", "bench"), ("User-Agent", "wrk"), ("Accept", "*/*"))
    for _ in range(2000):  # warm up
        await client.request("GET", "/bench/items/42", headers)
    t0 = time.process_time()
    for _ in range(n):
        await client.request("GET", "/bench/items/42", headers)
    return (time.process_time() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=50_000)
    ap.add_argument("--telemetry", choices=["off", "on"], default="off")
    ap.add_argument("--instances", type=int, default=3, help="pool size (the pool-1000 cases of the benchmark)")
    ap.add_argument("--algorithm", default="round_robin")
    ap.add_argument("--path", choices=["sync", "task"], default="task", help="the engine entry (default: task)")
    args = ap.parse_args()
    runs = [asyncio.run(run(args.requests, args.telemetry, args.instances, args.algorithm, args.path))
            for _ in range(5)]
    print(f"engine CPU per request ({args.path} path, telemetry {args.telemetry}, {args.instances} × {args.algorithm}): "
          f"{statistics.median(runs):.1f} µs "
          f"(runs: {', '.join(f'{r:.1f}' for r in runs)})")


if __name__ == "__main__":
    main()
