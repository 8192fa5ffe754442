#!/usr/bin/env python3
"""User and system CPU per request of one proxy process, and its system calls per request: where a proxy's CPU
goes, split the way bench/run.py's CPU-s per 1,000 requests is not.

    python bench/pinned_cpu.py [--seconds 6] [CASE ...]

CASEs: haproxy, python-floor, python-floor-compiled, python-floor-plus, python-floor-plus-compiled,
gatewatch-off (default: all six).

Pinned as bench/run.py pins its rows: the proxy on CPU 0; nginx (the backend, bench/run.py's config) and
`wrk -t1 -c32` on CPU 1. For each case: 2 s of warm-up, then `--seconds` of load with the proxy's user and
system CPU read from /proc before and after (psutil), then 3 s more under `strace -c -f -p PID` for the calls
per request (strace slows the proxy, so its rate is not used for CPU). Needs taskset, nginx, wrk, strace and
haproxy; a case whose tool is missing is skipped with the reason.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import instructions
from harness.common import PATH, child_env
from harness.host import free_port
from harness.peers import backend_conf, haproxy_conf
from harness.procs import Proc, stop_all, wait_http
from harness.tools import which

CASES = ("haproxy", "python-floor", "python-floor-compiled", "python-floor-plus", "python-floor-plus-compiled",
         "gatewatch-off")


def proxy_argv(case: str, work: Path, port: int, backend: int) -> tuple[list[str], dict[str, str]]:
    if case == "haproxy":
        (work / "haproxy.cfg").write_text(haproxy_conf(port, [backend]))
        return ["haproxy", "-f", str(work / "haproxy.cfg")], child_env()
    return instructions.proxy_argv(case, work, port, backend)  # the floors and gatewatch-off, as counted there


def wrk(url: str, seconds: int) -> int:
    """Requests completed by `wrk -t1 -c32` on CPU 1."""
    out = subprocess.run(["taskset", "-c", "1", "wrk", "-t1", "-c32", f"-d{seconds}s", url], capture_output=True,
                         text=True, check=True).stdout
    return int(next(line for line in out.splitlines() if "requests in" in line).split()[0])


def syscalls(strace_summary: str, requests: int) -> dict[str, float]:
    """strace -c's table as calls per request, the busiest first."""
    calls = {}
    for line in strace_summary.splitlines():
        f = line.split()
        if len(f) >= 5 and f[3].isdigit() and f[-1] != "total":
            calls[f[-1]] = int(f[3]) / requests
    return dict(sorted(calls.items(), key=lambda kv: -kv[1]))


def measure(case: str, work: Path, backend: int, seconds: int) -> dict:
    import psutil

    port = free_port()
    argv, env = proxy_argv(case, work, port, backend)
    proc = Proc(case, ["taskset", "-c", "0", *argv], work, env=env)
    url = f"http://127.0.0.1:{port}{PATH}"
    wait_http(url, proc)
    wrk(url, 2)
    p = psutil.Process(proc.pid)
    before = p.cpu_times()
    n = wrk(url, seconds)
    after = p.cpu_times()
    st = subprocess.Popen(["strace", "-f", "-c", "-p", str(p.pid)], stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # attached
    traced = wrk(url, 3)
    st.send_signal(2)
    calls = syscalls(st.communicate()[1], traced)
    proc.stop()
    return {"case": case, "rps": round(n / seconds), "user_us": round((after.user - before.user) / n * 1e6, 1),
            "system_us": round((after.system - before.system) / n * 1e6, 1),
            "syscalls_per_request": {k: round(v, 2) for k, v in calls.items() if v >= 0.01}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cases", nargs="*", metavar="CASE", help=f"one of {', '.join(CASES)} (default: all)")
    ap.add_argument("--seconds", type=int, default=6)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
        ap.error(f"unknown case {', '.join(unknown)}; the cases are {', '.join(CASES)}")
    args.cases = args.cases or list(CASES)
    missing = [t for t in ("taskset", "nginx", "wrk", "strace") if not which(t)]
    if missing:
        print(f"pinned_cpu: needs {', '.join(missing)}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="gatewatch-pinned-"))
    results = []
    try:
        backend = free_port()
        (work / "nginx").mkdir()
        conf = work / "nginx" / "nginx.conf"
        conf.write_text(backend_conf(work / "nginx", [backend], 4096))
        nginx = Proc("nginx", ["taskset", "-c", "1", "nginx", "-p", str(work / "nginx"), "-e",
                               str(work / "nginx" / "error.log"), "-c", str(conf)], work)
        wait_http(f"http://127.0.0.1:{backend}{PATH}", nginx)
        for case in args.cases:
            if case == "haproxy" and not which("haproxy"):
                print(f"{case:28s} skipped: haproxy is not installed")
                continue
            r = measure(case, work, backend, args.seconds)
            results.append(r)
            top = ", ".join(f"{v:g} {k}" for k, v in r["syscalls_per_request"].items())
            print(f"{case:28s} {r['rps']:>7,} req/s  user {r['user_us']:5.1f} µs  system {r['system_us']:5.1f} µs "
                  f"per request  ({top})", flush=True)
    finally:
        stop_all()
    if args.json:
        args.json.write_text(json.dumps({"command": sys.argv, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
