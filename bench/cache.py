#!/usr/bin/env python3
"""Response caching (issue 19): a gatewatch cache hit against a gatewatch miss and against HAProxy's `cache`.

    python bench/cache.py [--duration S] [--conns N] [--rounds N] [--out FILE.json] [--keep-tmp]

One nginx backend answers `/bench/cached` with `Cache-Control: max-age=3600` and `/bench/nostore` with
`Cache-Control: no-store` (both the 2-byte "ok" of bench/run.py). In the same run, one after another, each
round, `wrk -t1 -cN` drives:
- gatewatch hit:   a route with `cache: {}` in front of /bench/cached (every request after the first is a hit);
- gatewatch miss:  the same cache settings in front of /bench/nostore (every request goes upstream: what the
                   cache costs when it cannot help, on top of plain proxying);
- haproxy hit:     HAProxy (1 thread) with a `cache` section (`http-request cache-use`, `http-response
                   cache-store`) in front of /bench/cached.
Gatewatch runs with telemetry off (OTEL_SDK_DISABLED=true), the fast data plane, one process; HAProxy has no
telemetry. With 2+ CPUs the proxy under test is pinned to the first CPU, wrk and the backend to the second (the
harness's own layout, bench/harness). The backend's request count over each run is reported: a hit run must not
reach it. Medians over the rounds; ratios are gatewatch hit / gatewatch miss and gatewatch hit / haproxy hit
(requests per second).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from harness.common import HTTP, log, pin_harness, run_main
from harness.context import Context
from harness.host import free_port, port_range
from harness.peers import backend_conf, haproxy_http_head
from harness.procs import Proc, wait_http
from harness.tools import ensure_tools
from harness.wrk import run_wrk

HIT, MISS = "/bench/cached", "/bench/nostore"


# the backend's answers: "ok", cacheable or not by path
LOCATIONS = (f'location = {HIT} {{ add_header Cache-Control "max-age=3600"; return 200 "ok"; }}',
             f'location = {MISS} {{ add_header Cache-Control "no-store"; return 200 "ok"; }}')


def haproxy_conf(port: int, backend_port: int) -> str:
    return haproxy_http_head("with its small-object cache in front of the backend") + f"""
cache objects
    total-max-size 64
    max-object-size 1048576
    max-age 3600

frontend fe
    bind 127.0.0.1:{port}
    default_backend be

backend be
    http-request cache-use objects
    http-response cache-store objects
    server s0 127.0.0.1:{backend_port}
"""


def gatewatch_conf(backend_port: int) -> dict:
    cache = {"max_bytes": 64 * 1024 * 1024, "max_entry_bytes": 1024 * 1024}
    return {
        "data_plane": "fast",
        "admin": {"address": "127.0.0.1:0"},
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                 "routes": [{"name": "cached", "match": {"path": {"exact": HIT}}, "upstream": "backend",
                             "cache": cache},
                            {"name": "nostore", "match": {"path": {"exact": MISS}}, "upstream": "backend",
                             "cache": cache}]},
        "balancer": {"pools": [{"name": "backend", "instances": [
            {"id": "b0", "host": "127.0.0.1", "port": backend_port}]}]},
    }


def backend_requests(port: int) -> int:
    with HTTP.open(f"http://127.0.0.1:{port}/__bench_status", timeout=5) as r:
        return int(r.read().decode().splitlines()[2].split()[2])


def start(ctx: Context, backend_port: int) -> dict[str, tuple[str, Proc]]:
    d = ctx.workdir
    gw_cfg = d / "gatewatch.json"
    gw_cfg.write_text(json.dumps(gatewatch_conf(backend_port), indent=1))
    ready = d / "gatewatch.ready.json"
    env = ctx.child_env()
    env["OTEL_SDK_DISABLED"] = "true"
    gw = Proc(ctx.next_name("gatewatch"), ctx.taskset(ctx.proxy_cpu) + [
        sys.executable, "-m", "gatewatch", "run", "-c", str(gw_cfg), "--ready-file", str(ready)], d, env=env, cwd=d)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if not gw.alive() or time.monotonic() > deadline:
            raise RuntimeError(f"gatewatch did not start:\n{gw.log_text()[-2000:]}")
        time.sleep(0.05)
    listener = json.loads(ready.read_text())["listeners"]["public"]
    hp_port = free_port()
    hp_cfg = d / "haproxy.cfg"
    hp_cfg.write_text(haproxy_conf(hp_port, backend_port))
    hp = Proc(ctx.next_name("haproxy"), ctx.taskset(ctx.proxy_cpu) + [ctx.tools["haproxy"], "-db", "-f", str(hp_cfg)],
              d)
    targets = {"gatewatch hit": (f"http://{listener}{HIT}", gw), "gatewatch miss": (f"http://{listener}{MISS}", gw),
               "haproxy hit": (f"http://127.0.0.1:{hp_port}{HIT}", hp)}
    for url, proc in targets.values():
        wait_http(url, proc)  # also the first request: the hit targets are stored from here on
    return targets


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=int, default=5, help="seconds of load per measurement (default 5)")
    ap.add_argument("--conns", type=int, default=32, help="wrk connections (default 32)")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds, medians reported (default 1)")
    ap.add_argument("--out", help="write the results as JSON here")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the configs and logs")
    args = ap.parse_args()
    tools = ensure_tools()
    cpus = pin_harness()
    workdir = Path(tempfile.mkdtemp(prefix="gatewatch-bench-cache-"))
    ctx = Context(args, tools, workdir, cpus)

    def body() -> int:
        d = workdir / "backend"
        d.mkdir()
        bport = port_range(1)[0]
        (d / "nginx.conf").write_text(backend_conf(d, [bport], ctx.nofile, LOCATIONS))
        be = Proc("backend-nginx", ctx.taskset(ctx.load_cpu) + [
            tools["nginx"], "-p", str(d), "-e", str(d / "error.log"), "-c", str(d / "nginx.conf")], workdir)
        wait_http(f"http://127.0.0.1:{bport}{HIT}", be)
        targets = start(ctx, bport)
        runs: dict[str, list[dict]] = {name: [] for name in targets}
        for rnd in range(args.rounds):
            for name, (url, _) in targets.items():
                run_wrk(ctx, url, args.conns, 1, f"warm-{name.replace(' ', '-')}")
                before = backend_requests(bport)
                w = run_wrk(ctx, url, args.conns, args.duration, name.replace(" ", "-"))
                w["backend_requests"] = backend_requests(bport) - before - 1  # less this status request
                runs[name].append(w)
                log(f"bench-cache: round {rnd + 1} {name}: {w['requests'] / (w['duration_us'] / 1e6):,.0f} req/s")
        rows: dict[str, dict] = {}
        for name, ws in runs.items():
            rps = [w["requests"] / (w["duration_us"] / 1e6) for w in ws]
            errors = sum(sum(w["errors"].values()) for w in ws)
            rows[name] = {"rps": statistics.median(rps),
                          "p50_us": statistics.median(w["latency_us"]["percentiles"]["50"] for w in ws),
                          "p99_us": statistics.median(w["latency_us"]["percentiles"]["99"] for w in ws),
                          "errors": errors, "backend_requests": [w["backend_requests"] for w in ws]}
        hit, miss, hp = (rows[k]["rps"] for k in ("gatewatch hit", "gatewatch miss", "haproxy hit"))
        ratios = {"gatewatch hit / gatewatch miss": hit / miss, "gatewatch hit / haproxy hit": hit / hp}
        pinned = f"proxy on CPU {ctx.proxy_cpu}, wrk + backend on CPU {ctx.load_cpu}" if ctx.pinned else "UNPINNED"
        lines = [f"cache benchmark: wrk -t1 -c{args.conns} -d{args.duration}s x {args.rounds} round(s), {pinned}",
                 f"{'target':<16} {'req/s':>10} {'p50 µs':>8} {'p99 µs':>8} {'errors':>6}  backend requests",
                 *(f"{n:<16} {r['rps']:>10,.0f} {r['p50_us']:>8} {r['p99_us']:>8} {r['errors']:>6}  "
                   f"{r['backend_requests']}" for n, r in rows.items()),
                 *(f"{k}: {v:.2f}" for k, v in ratios.items())]
        print("\n".join(lines), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"rows": rows, "ratios": ratios, "conns": args.conns,
                                                  "duration_s": args.duration, "rounds": args.rounds,
                                                  "pinned": ctx.pinned}, indent=1))
        return 0

    return run_main("bench-cache", workdir, body, keep_tmp=args.keep_tmp)


if __name__ == "__main__":
    sys.exit(main())
