#!/usr/bin/env python3
"""Request mirroring under load (issue 19): "a shadow that hangs for 30 s leaves the client's p99 unchanged".

    python bench/mirror.py --quick          # 1 round, 3 s per measurement
    python bench/mirror.py                  # 3 rounds, 10 s per measurement (~2 minutes)
    python bench/mirror.py --out /tmp/mirror.json --keep-tmp

One nginx backend (bench/harness: "ok", keep-alive, 1 worker) and a shadow that accepts every request and
answers nothing for 30 s (a Python process here). Two gatewatch configs, the same route to an in-process pool
with the backend as its instance, telemetry off (OTEL_SDK_DISABLED=true) in both:
- `mirror-off`: no mirror;
- `mirror-hang`: `mirror: {upstream: shadow, percent: 100, max_in_flight: 64, timeout_s: 30}` to the shadow.
Each round runs both (in alternating order) under the same `wrk -t1 -c32` after a warm-up, pinned as
bench/run.py pins (gatewatch on the first CPU, wrk, nginx and the shadow on the second). Prints p50/p99/rate
per case (medians over rounds), the ratios mirror-hang / mirror-off, and the mirror counters of the mirrored
run (how many copies were sent, how many skipped because 64 were already hanging). Exit 0, or 2 when a tool is
missing. The JSON (--out) has every round's numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from harness.common import HTTP, PATH, log, median, pin_harness, run_main
from harness.context import Context
from harness.host import free_port, raise_nofile
from harness.peers import Backend
from harness.procs import Proc, wait_http
from harness.tools import check_python_deps, ensure_tools
from harness.wrk import run_wrk

CASES = ("mirror-off", "mirror-hang")
HANG_S = 30
SHADOW = f"""
import asyncio, sys
async def handle(reader, writer):
    try:
        await reader.readuntil(b"\\r\\n\\r\\n")
        await asyncio.sleep({HANG_S})  # hangs: no answer for {HANG_S} s
        writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 4\\r\\n\\r\\nlate")
        await writer.drain()
    except Exception:
        pass
    writer.close()
async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]), backlog=1024)
    async with server:
        await server.serve_forever()
asyncio.run(main())
"""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="1 round, 3 s per measurement, 1 s warm-up")
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 10, quick 3)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up (default 3, quick 1)")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--out", default=str(BENCH / "results" / "mirror-latest.json"))
    ap.add_argument("--keep-tmp", action="store_true")
    a = ap.parse_args()
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.duration = a.duration or (3 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    a.pool_addressing = "same"  # Backend.pool_ports: one instance
    return a


def gateway_config(ctx: Context, backend_port: int, shadow_port: int, mirrored: bool) -> dict:
    route: dict = {"name": "bench", "match": {"path": {"prefix": "/"}}, "upstream": "backend"}
    if mirrored:
        route["mirror"] = {"upstream": "shadow", "percent": 100, "max_in_flight": 64, "timeout_s": HANG_S}
    return {"admin": {"address": "127.0.0.1:0"},
            "telemetry": {"service_name": "gatewatch-bench-mirror", "local_dir": str(ctx.workdir / "jsonl")},
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                     "upstreams": [{"name": "shadow", "url": f"http://127.0.0.1:{shadow_port}"}],
                     "routes": [route]},
            "balancer": {"pools": [{"name": "backend", "instances": [
                {"id": "b0", "host": "127.0.0.1", "port": backend_port}]}]}}


def start_gateway(ctx: Context, case: str, cfg: dict) -> tuple[Proc, dict]:
    name = ctx.next_name(f"gw-{case}")
    path, ready = ctx.workdir / f"{name}.yaml", ctx.workdir / f"{name}.ready.json"
    path.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
    env = ctx.child_env() | {"OTEL_SDK_DISABLED": "true"}
    p = Proc(name, ctx.taskset(ctx.proxy_cpu) + [sys.executable, "-m", "gatewatch", "run", "-c", str(path),
                                                 "--ready-file", str(ready)], ctx.workdir, env=env, cwd=ctx.workdir)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if not p.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"gatewatch ({case}) did not become ready:\n{p.log_text()[-3000:]}")
        time.sleep(0.05)
    info = json.loads(ready.read_text())
    wait_http(f"http://{info['listeners']['public']}{PATH}", p)
    return p, info


def mirror_counters(admin: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    with HTTP.open(f"http://{admin}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == "gatewatch_mirror_requests_total":
                out[s.labels["result"]] = s.value
            elif s.name == "gatewatch_mirror_comparisons_total" and s.value:
                out["compared_" + s.labels["match"]] = s.value
    return out


def measure(ctx: Context, backend: Backend, shadow_port: int, case: str) -> dict:
    p, info = start_gateway(ctx, case, gateway_config(ctx, backend.ports[0], shadow_port, case == "mirror-hang"))
    try:
        url = f"http://{info['listeners']['public']}{PATH}"
        a = ctx.args
        if a.warmup:
            run_wrk(ctx, url, a.conns, a.warmup, f"{case}-warmup")
        w = run_wrk(ctx, url, a.conns, a.duration, case)
        pct = w["latency_us"]["percentiles"]
        errors = sum(w["errors"].values())
        return {"case": case, "rps": w["requests"] / (w["duration_us"] / 1e6), "p50_ms": pct["50"] / 1000,
                "p99_ms": pct["99"] / 1000, "p99_9_ms": pct["99.9"] / 1000, "errors": errors,
                "requests": w["requests"], "mirror": mirror_counters(info["admin"])}
    finally:
        p.stop()


def render(rows: list[dict], summary: dict) -> str:
    lines = [f"{'case':<14}{'rps':>10}{'p50 ms':>10}{'p99 ms':>10}{'p99.9 ms':>10}{'errors':>8}"]
    for case in CASES:
        s = summary[case]
        lines.append(f"{case:<14}{s['rps']:>10.0f}{s['p50_ms']:>10.2f}{s['p99_ms']:>10.2f}{s['p99_9_ms']:>10.2f}"
                     f"{s['errors']:>8.0f}")
    r = summary["ratios"]
    lines.append(f"ratios mirror-hang/mirror-off: p50 {r['p50']:.2f}  p99 {r['p99']:.2f}  rps {r['rps']:.2f}")
    last = next(row for row in reversed(rows) if row["case"] == "mirror-hang")["mirror"]
    lines.append("mirror counters of the last mirror-hang run: " + ", ".join(
        f"{k}={v:.0f}" for k, v in sorted(last.items()) if v))
    return "\n".join(lines)


def main() -> int:
    args = parse_args()
    check_python_deps()
    tools = ensure_tools()
    raise_nofile()
    cpus = pin_harness()
    workdir = Path(tempfile.mkdtemp(prefix="gatewatch-bench-mirror-"))
    ctx = Context(args, tools, workdir, cpus)

    def body() -> int:
        backend = Backend(ctx)
        backend.start(1)
        shadow_port = free_port()
        Proc("shadow-hang", ctx.taskset(ctx.load_cpu) + [sys.executable, "-c", SHADOW, str(shadow_port)], workdir)
        rows = []
        for rnd in range(args.rounds):
            for case in (CASES if rnd % 2 == 0 else CASES[::-1]):
                row = measure(ctx, backend, shadow_port, case)
                log(f"bench: round {rnd + 1} {case}: {row['rps']:.0f} req/s, p99 {row['p99_ms']:.2f} ms")
                rows.append(row)
        summary = {case: {k: median([r[k] for r in rows if r["case"] == case])
                          for k in ("rps", "p50_ms", "p99_ms", "p99_9_ms", "errors")} for case in CASES}
        off, hang = summary["mirror-off"], summary["mirror-hang"]
        summary["ratios"] = {"p50": hang["p50_ms"] / off["p50_ms"], "p99": hang["p99_ms"] / off["p99_ms"],
                             "rps": hang["rps"] / off["rps"]}
        table = render(rows, summary)
        print(table, flush=True)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"rows": rows, "summary": summary, "table": table, "cpus": cpus,
                                   "args": {k: v for k, v in vars(args).items()}}, indent=1))
        log(f"bench: results written to {out}")
        return 0

    return run_main("bench", workdir, body, keep_tmp=args.keep_tmp)


if __name__ == "__main__":
    sys.exit(main())
