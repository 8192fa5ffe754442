#!/usr/bin/env python3
"""Gatewatch benchmark harness (issues 3 and 14): gatewatch, compiled and pure, against HAProxy, nginx, Caddy and
the Python floor (pure and compiled) on the same backend, same load.

    python bench/run.py [--quick] [--out FILE.json] [--cases CASE ...]

Starts an nginx backend (a fixed 2-byte "ok", keep-alive, 1 worker), then, one at a time, each reference proxy
and each gatewatch variant, and drives them with `wrk -t1 -c32` (the latency cases with `-c1`). On a machine
with 2+ CPUs the proxy under test is pinned to the first CPU and wrk, the backend, the OTLP sink and this
harness to the second; with 1 CPU nothing is pinned and the output says so. Every case runs in every round,
rounds are interleaved (3 normally, 1 with --quick), each measurement follows a warm-up, and medians are
reported. See bench/README.md for what each case and ratio means.

Everything started here runs in its own process group and is stopped on exit, failure or Ctrl-C. Configs and
logs live in a temp dir (kept with --keep-tmp).

This file parses the options and handles the process-wide setup (CPU pinning of the harness, signals, the temp
dir); the harness itself is the package next to it, bench/harness/ (its __init__ maps the modules).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # `python bench/run.py` puts it there already; `python -P` or runpy do not
    sys.path.insert(0, str(BENCH))

from harness.bench import Bench
from harness.cases import CASE_NAMES, Case, select_cases
from harness.common import log, pin_harness, run_main
from harness.host import raise_nofile
from harness.render import render
from harness.results import write_results
from harness.tools import check_python_deps, ensure_tools


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Benchmark gatewatch (compiled and pure) against HAProxy, nginx, Caddy and the Python floor "
                    "(issues 3 and 14). See bench/README.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="cases: " + ", ".join(CASE_NAMES) + "\n(a prefix such as 'pool', 'routes' or 'latency-1conn' "
               "selects its group; 'tls' the four TLS cases)")
    ap.add_argument("--quick", action="store_true",
                    help="1 round, 3 s runs, and only the cases issue 14's targets need (see bench/README.md); "
                         "the others (nginx, routes, weighted and pure pools, workers, idle, TLS) only when --cases "
                         "names them")
    ap.add_argument("--out", default=str(BENCH / "results" / "latest.json"), help="JSON results file")
    ap.add_argument("--cases", nargs="+", metavar="CASE", help="run only these cases (default: all)")
    ap.add_argument("--rounds", type=int, help="rounds (default 3, quick 1)")
    ap.add_argument("--duration", type=int, help="seconds per measurement (default 10, quick 3)")
    ap.add_argument("--warmup", type=int, help="seconds of warm-up before each measurement (default 3, quick 1)")
    ap.add_argument("--idle-conns", type=int, help="idle keep-alive connections (default 10000, quick 2000)")
    ap.add_argument("--pool-addressing", choices=["ports", "same"], default="ports",
                    help="pool instances on distinct backend ports (default) or all on the same host:port")
    ap.add_argument("--sink-flatten", action="store_true",
                    help="the OTLP sink also converts every span/log record to a dict like the tests do")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="SECONDS",
                    help="before each measurement wait up to SECONDS for other processes to use < 5%% of a core "
                         "(on a shared machine; default 0: do not wait, just report their CPU)")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir with configs and logs")
    a = ap.parse_args()
    a.rounds = a.rounds or (1 if a.quick else 3)
    a.duration = a.duration or (3 if a.quick else 10)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.quick else 3)
    a.idle_conns = a.idle_conns or (2000 if a.quick else 10000)
    return a


def enough_files(args: argparse.Namespace, cases: list[Case]) -> bool:
    """The open-files limit, raised to the hard limit, must cover the idle connections (and the gateway's own)."""
    soft, _ = raise_nofile()
    need_fds = args.idle_conns + 2000
    if any(c.kind == "idle" for c in cases) and soft < need_fds:
        log(f"bench: the open-files limit is {soft}; {args.idle_conns} idle connections need about {need_fds}. "
            f"Lower --idle-conns or raise the hard limit (ulimit -Hn).")
        return False
    return True


def main() -> int:
    args = parse_args()
    cases = select_cases(args.cases, args.quick)
    check_python_deps(cases)
    tools = ensure_tools()
    if not enough_files(args, cases):
        return 2
    cpus = pin_harness()
    workdir = Path(tempfile.mkdtemp(prefix="gatewatch-bench-"))
    bench = Bench(args, tools, workdir, cpus)

    def body() -> int:
        res = bench.run(cases)
        table = render(res)
        print(table, flush=True)
        res["table"] = table
        out = Path(args.out)
        write_results(res, out)
        log(f"bench: results written to {out} ({res['elapsed_s']:.0f} s of measurements)")
        return 0

    return run_main("bench", workdir, body, keep_tmp=args.keep_tmp)


if __name__ == "__main__":
    sys.exit(main())
