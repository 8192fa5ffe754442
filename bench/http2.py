#!/usr/bin/env python3
"""HTTP/2 requests per second (issue 17): gatewatch against HAProxy, h2c (prior knowledge) in front, HTTP/1.1 behind,
same nginx backend, same load generator (`h2load`, Debian's nghttp2-client), same run.

    python bench/http2.py [--quick] [--seconds S] [--clients C] [--streams M] [--telemetry on|off] [--out F.json]

Per round (1 with --quick, else 3; medians reported), each target in turn: `h2load -c C -m M -D S` GET / (2-byte
answer) through HAProxy (`proto h2` on the bind, `mode http`, keep-alive to the backend) and through gatewatch (an
h2c listener, one route, one pool). Proxy pinned to the first CPU, backend and h2load to the second
(bench/run.py's split). Gatewatch runs with telemetry off by default (metrics stay on); `--telemetry on` exports
spans and decision logs to local files. Prints requests/s, failed requests and the gatewatch/HAProxy ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from harness.peers import haproxy_http_head  # noqa: E402  (bench/ is on sys.path now)


def haproxy_h2_conf(port: int, backend: int) -> str:
    return haproxy_http_head("h2c in front (proto h2), HTTP/1.1 keep-alive behind") + f"""
frontend fe
    bind 127.0.0.1:{port} proto h2
    default_backend be

backend be
    server s0 127.0.0.1:{backend}
"""


def gatewatch_conf(port: int, backend: int, telemetry: bool, workdir: Path) -> dict:
    return {"admin": {"address": "127.0.0.1:0"},
            "telemetry": {"local_dir": str(workdir / "telemetry")} if telemetry else {},
            "edge": {"listeners": [{"name": "h2", "address": f"127.0.0.1:{port}"}],
                     "routes": [{"name": "all", "upstream": "be"}]},
            "balancer": {"pools": [{"name": "be", "instances": [{"id": "b", "host": "127.0.0.1", "port": backend}]}]}}


def h2load(port: int, seconds: float, clients: int, streams: int, cpu: int | None) -> dict:
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    out = subprocess.run(pin + ["h2load", "-c", str(clients), "-m", str(streams), "-D", str(max(1, round(seconds))),
                                f"http://127.0.0.1:{port}/"], capture_output=True, text=True, timeout=seconds + 60,
                         check=False)
    text = out.stdout
    rps = re.search(r"finished in [^,]+, ([\d.]+) req/s", text)
    reqs = re.search(r"requests: (\d+) total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored",
                     text)
    if rps is None or reqs is None:
        raise RuntimeError(f"h2load output not understood:\n{text}\n{out.stderr}")
    return {"req_per_s": float(rps.group(1)), "done": int(reqs.group(2)), "failed": int(reqs.group(4)),
            "errored": int(reqs.group(5))}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 round of 3 s per target")
    ap.add_argument("--seconds", type=float, default=None, help="per measurement (default 10, --quick 3)")
    ap.add_argument("--clients", type=int, default=4, help="h2load connections")
    ap.add_argument("--streams", type=int, default=16, help="h2load concurrent streams per connection")
    ap.add_argument("--telemetry", choices=("on", "off"), default="off")
    ap.add_argument("--out", help="write the results as JSON here")
    args = ap.parse_args()
    for tool in ("h2load", "haproxy", "nginx"):
        if shutil.which(tool) is None:
            print(f"bench/h2: {tool} is not installed (apt-get install -y nghttp2-client haproxy nginx)",
                  file=sys.stderr)
            return 2

    from harness.common import log, pin_harness, run_main
    from harness.host import free_port, raise_nofile
    from harness.peers import backend_conf
    from harness.procs import Proc, wait_port

    seconds = args.seconds or (3.0 if args.quick else 10.0)
    rounds = 1 if args.quick else 3
    cpus = pin_harness()
    proxy_cpu, load_cpu = (cpus[0], cpus[1]) if len(cpus) >= 2 else (None, None)
    nofile = raise_nofile()[0]
    workdir = Path(tempfile.mkdtemp(prefix="gatewatch-bench-h2-"))

    def taskset(cpu: int | None) -> list[str]:
        return ["taskset", "-c", str(cpu)] if cpu is not None else []

    def body() -> int:
        backend = free_port()
        ngx = workdir / "nginx"
        ngx.mkdir()
        (ngx / "nginx.conf").write_text(backend_conf(ngx, [backend], nofile))
        nginx = Proc("nginx", taskset(load_cpu) + ["nginx", "-c", str(ngx / "nginx.conf"), "-p", str(ngx)], workdir)
        wait_port(backend, nginx)
        hp, gp = free_port(), free_port()
        (workdir / "haproxy.cfg").write_text(haproxy_h2_conf(hp, backend))
        haproxy = Proc("haproxy", taskset(proxy_cpu) + ["haproxy", "-db", "-f", str(workdir / "haproxy.cfg")],
                       workdir)
        gcfg = workdir / "gatewatch.yaml"
        gcfg.write_text(json.dumps(gatewatch_conf(gp, backend, args.telemetry == "on", workdir)))
        env = {**os.environ}
        if args.telemetry == "off":
            env["OTEL_SDK_DISABLED"] = "true"
        gw = Proc("gatewatch", taskset(proxy_cpu) + [sys.executable, "-m", "gatewatch", "run", "-c", str(gcfg)],
                  workdir, env=env, cwd=workdir)
        wait_port(hp, haproxy)
        wait_port(gp, gw)
        targets = {"haproxy": hp, "gatewatch": gp}
        results: dict[str, list[dict]] = {t: [] for t in targets}
        for rnd in range(rounds):
            for name, port in targets.items():
                h2load(port, 1.0, args.clients, args.streams, load_cpu)  # warm-up
                r = h2load(port, seconds, args.clients, args.streams, load_cpu)
                results[name].append(r)
                log(f"round {rnd + 1} {name}: {r['req_per_s']:.0f} req/s ({r['failed']} failed, "
                    f"{r['errored']} errored)")
        summary = {n: {"req_per_s": statistics.median(x["req_per_s"] for x in v),
                       "failed": sum(x["failed"] + x["errored"] for x in v)} for n, v in results.items()}
        ratio = summary["gatewatch"]["req_per_s"] / summary["haproxy"]["req_per_s"]
        print(f"{'target':<10} {'req/s':>10} {'failed':>7}")
        for name, v in summary.items():
            print(f"{name:<10} {v['req_per_s']:>10.0f} {v['failed']:>7}")
        print(f"{'gatewatch/haproxy':<18} {ratio:.2f}")
        if args.out:
            Path(args.out).write_text(json.dumps({
                "seconds": seconds, "clients": args.clients, "streams": args.streams, "rounds": rounds,
                "telemetry": args.telemetry, "pinned": proxy_cpu is not None, "summary": summary,
                "ratio_gatewatch_vs_haproxy": ratio, "rounds_raw": results}, indent=1))
        return 0

    return run_main("bench/h2", workdir, body, keep_tmp=False)


if __name__ == "__main__":
    sys.exit(main())
