#!/usr/bin/env python3
"""Instructions per request of a proxy process, counted by valgrind (callgrind): the A/B figure for a change to the
per-request work that this VM's ±30 % throughput noise cannot hide.

    python bench/instructions.py [--requests 2000] [--conns 4] [CASE ...]

CASEs: gatewatch-off, gatewatch-pure-off, gatewatch-full, gatewatch-pure-full, gatewatch-sampled (10 %),
gatewatch-pure-sampled, gatewatch-pool-3 and gatewatch-pool-1000 (telemetry off, round robin over that many
instances, all on the one backend port: each instance still has its own connections), python-floor,
python-floor-compiled, python-floor-plus and python-floor-plus-compiled (bench/floor_plus.py: the floor plus
the least a gateway does per request) (default: gatewatch-off gatewatch-pure-off python-floor python-floor-compiled).

Each case: an nginx backend (as bench/run.py's), the proxy started under `valgrind --tool=callgrind
--instr-atstart=no` (the warm-up runs uninstrumented), 200 warm-up requests, then instrumentation on
(`callgrind_control -i on`), `--requests` keep-alive GETs of /bench/items/42 over `--conns` connections, a dump
(`callgrind_control -d`), and the dump's total divided by the requests. Only the proxy's own process is counted
(not gatewatch's telemetry exporter child, not nginx, not the client).

What it counts: user-space instructions, deterministic to well under 1 % between runs. What it does not: the
kernel (socket syscalls cost the same for every Python case here, but not for HAProxy or nginx: compare Python
cases with each other only), and cycles per instruction, which is where compiled code gains. A change that cuts
instructions cuts CPU; compiled vs pure is read from bench/run.py's CPU-s per 1,000 requests, not from here.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness.common import BENCH, PATH, child_env
from harness.compiled import build_floor, floor_argv
from harness.host import free_port
from harness.peers import backend_conf
from harness.procs import Proc, stop_all, wait_http
from harness.tools import which

CASES = ("gatewatch-off", "gatewatch-pure-off", "gatewatch-full", "gatewatch-pure-full", "gatewatch-sampled",
         "gatewatch-pure-sampled", "gatewatch-pool-3", "gatewatch-pool-1000", "python-floor", "python-floor-compiled",
         "python-floor-plus", "python-floor-plus-compiled")
DEFAULT = ("gatewatch-off", "gatewatch-pure-off", "python-floor", "python-floor-compiled")
WARMUP = 200


def pool_size(case: str) -> int:
    return int(case.rsplit("-", 1)[1]) if case.startswith("gatewatch-pool-") else 1


def drive(port: int, n: int, conns: int) -> int:
    """`n` GETs over `conns` keep-alive connections; returns how many answered 200."""
    ok = [0] * conns

    def one(i: int) -> None:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        for _ in range(n // conns + (1 if i < n % conns else 0)):
            c.request("GET", PATH, headers={"Host": "bench", "User-Agent": "bench-instructions"})
            r = c.getresponse()
            r.read()
            ok[i] += r.status == 200
        c.close()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(ok)


def proxy_argv(case: str, work: Path, port: int, backend: int) -> tuple[list[str], dict[str, str]]:
    if case.startswith("python-floor"):
        # python-floor-plus*: the floor plus the least a gateway does per request (bench/floor_plus.py)
        module = "floor_plus" if case.startswith("python-floor-plus") else "floor_proxy"
        if case.endswith("compiled"):
            fb = build_floor(work)
            if fb.directory is None:
                raise RuntimeError(fb.error)
            return floor_argv(fb, port, backend, module), child_env()
        return [sys.executable, str(BENCH / f"{module}.py"), str(port), str(backend)], child_env()
    telemetry: dict = {"service_name": "gatewatch-bench", "local_dir": str(work / "jsonl")}
    env = child_env(pure="-pure-" in case)
    if case.endswith("-off") or case.startswith("gatewatch-pool-"):
        env["OTEL_SDK_DISABLED"] = "true"
    elif case.endswith("-sampled"):  # as bench/run.py's sampled rows ask for it
        env.update({"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.1"})
    cfg = {"admin": {"address": "127.0.0.1:0"}, "telemetry": telemetry,
           "edge": {"listeners": [{"name": "public", "address": f"127.0.0.1:{port}"}],
                    "routes": [{"name": "all", "match": {"path": {"prefix": "/"}}, "upstream": "backend"}]},
           "balancer": {"pools": [{"name": "backend", "algorithm": "round_robin",
                                   "instances": [{"id": f"i{i:04d}", "host": "127.0.0.1", "port": backend}
                                                 for i in range(pool_size(case))]}]}}
    path = work / f"{case}.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return [sys.executable, "-m", "gatewatch", "run", "-c", str(path)], env


def measure(case: str, work: Path, backend: int, n: int, conns: int) -> dict:
    port = free_port()
    argv, env = proxy_argv(case, work, port, backend)
    out = work / f"{case}.callgrind"
    proc = Proc(case, ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}", *argv],
                work, env=env, cwd=work)
    try:
        wait_http(f"http://127.0.0.1:{port}{PATH}", proc, timeout_s=300)  # slow to start under valgrind
        drive(port, max(WARMUP, 2 * pool_size(case)), conns)  # every instance has its connections open
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True, capture_output=True)
        t0 = time.monotonic()
        answered = drive(port, n, conns)
        took = time.monotonic() - t0
        subprocess.run(["callgrind_control", "-d", str(proc.pid)], check=True, capture_output=True)
        total, dump = _total(out, proc.pid)
    finally:
        proc.stop(60)
    if answered != n:
        raise RuntimeError(f"{case}: {n - answered} of {n} requests were not answered 200")
    return {"case": case, "requests": n, "instructions": total, "per_request": total / n,
            "wall_s_under_valgrind": round(took, 1), "dump": dump}


def _total(out: Path, pid: int) -> tuple[int, Path]:
    """The `totals:` (or `summary:`) line of the dump `callgrind_control -d` just wrote (`<out>.<n>`)."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        dumps = sorted(out.parent.glob(out.name + ".*"), key=lambda p: p.stat().st_mtime)
        for d in reversed(dumps):
            for line in d.read_text(errors="replace").splitlines():
                if line.startswith(("totals:", "summary:")):
                    return int(line.split()[1]), d
        time.sleep(0.5)
    raise RuntimeError(f"no callgrind dump for pid {pid} next to {out}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", choices=CASES, default=list(DEFAULT), metavar="CASE")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--keep", type=Path, metavar="DIR",
                    help="keep each case's callgrind dump here (read it with callgrind_annotate --inclusive=yes: "
                         "the compiled cases' Cython functions show by name)")
    args = ap.parse_args()
    tools = {tool: which(tool) for tool in ("valgrind", "callgrind_control", "nginx")}
    if None in tools.values():
        missing = [t for t, path in tools.items() if path is None]
        print(f"instructions: not installed: {', '.join(missing)} (apt-get install valgrind nginx)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gatewatch-instructions-"))
    backend_port = free_port()
    (work / "backend").mkdir()
    conf = work / "backend" / "nginx.conf"
    conf.write_text(backend_conf(work / "backend", [backend_port], 4096))
    results = []
    try:
        nginx = Proc("backend-nginx", [tools["nginx"], "-p", str(work / "backend"), "-e",
                                       str(work / "backend" / "error.log"), "-c", str(conf)], work)
        wait_http(f"http://127.0.0.1:{backend_port}{PATH}", nginx)
        for case in args.cases:
            r = measure(case, work, backend_port, args.requests, args.conns)
            if args.keep:
                args.keep.mkdir(parents=True, exist_ok=True)
                r["dump"] = str(shutil.copy2(r["dump"], args.keep / f"{case}.callgrind"))
            else:
                r["dump"] = None
            results.append(r)
            print(f"{case:26s} {r['per_request']:>10,.0f} instructions/request  ({r['requests']} requests, "
                  f"{r['wall_s_under_valgrind']} s under valgrind)", flush=True)
    finally:
        stop_all()
    by = {r["case"]: r["per_request"] for r in results}
    for a, b in (("gatewatch-off", "python-floor-compiled"), ("gatewatch-pure-off", "python-floor"),
                 ("gatewatch-off", "gatewatch-pure-off"), ("gatewatch-full", "gatewatch-off"),
                 ("gatewatch-sampled", "gatewatch-off"), ("gatewatch-pool-1000", "gatewatch-pool-3"),
                 ("python-floor-plus-compiled", "python-floor-compiled"), ("python-floor-plus", "python-floor"),
                 ("gatewatch-off", "python-floor-plus-compiled")):
        if a in by and b in by:
            print(f"{a} ÷ {b}: {by[a] / by[b]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "results": results}, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
