#!/usr/bin/env python3
"""Rolling restart under sustained load: is any request lost while every gatewatch process is replaced?

    python bench/rolling_restart.py                     # workers: 2, rolled with SIGUSR2
    python bench/rolling_restart.py --mode single       # two single processes on one port (reuse_port): the
                                                        # second starts, then the first gets SIGTERM
    python bench/rolling_restart.py --rate 0 --concurrency 64 --before 10 --after 5 --rolls 2

What runs: two backend instances (bench/faults/backend.py, raw asyncio), gatewatch from this tree in front of them
(one pool, round robin, `drain.readiness_delay_s` from --readiness-delay), and the soak's load generator
(bench/faults/client.py): `--concurrency` keep-alive connections, paced to `--rate` requests/s, that never close a
connection themselves (only when an answer says `Connection: close`) and record every request: its status, its
latency and, when it failed, how (connect_refused / connect_error / closed_before_response / truncated /
bad_response / client_timeout). A GET sent on a reused connection that the server closed before answering is
retried once by that client (as HTTP clients do; RFC 9112 §9.3.1): such keep-alive races are counted apart, as
requests a client without that retry would have lost.

After `--before` seconds of load the processes are replaced (`--rolls` times), then the load runs `--after` more
seconds. Printed and written as JSON (--out, default bench/results/rolling-latest.json): requests, failures by kind,
keep-alive races, idle connections the server closed that the client noticed before reusing them
(`idle_closes_seen`: no failure, the client opened a new connection), p50/p99 latency before, during and after the roll, the roll's steps (old pid -> new pid, time
taken) and the drain steps each old process logged. Exit 0 when no request failed and no keep-alive race
happened, 1 otherwise, 2 when the run could not start, 130 when interrupted (the temp dir is then kept).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from faults.peers import Backend
from harness.common import child_env, log, run_main
from harness.host import free_port
from harness.procs import Proc

PATH = "/shop/items/{n}"


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--mode", choices=["workers", "single"], default="workers",
                    help="workers: `workers: 2` rolled by SIGUSR2; single: a second process takes over the port")
    ap.add_argument("--rate", type=float, default=500,
                    help="requests/s over all connections (0: unpaced; default 500, which leaves a 2-core host room "
                         "to start the new processes)")
    ap.add_argument("--concurrency", type=int, default=32, help="keep-alive client connections (default 32)")
    ap.add_argument("--before", type=float, default=5.0, help="seconds of load before the roll")
    ap.add_argument("--after", type=float, default=3.0, help="seconds of load after the roll")
    ap.add_argument("--max-per-conn", type=int, default=0,
                    help="requests per client connection before the client closes it (0: never; 1: a new "
                         "connection per request, which exercises the listening sockets' accept queues)")
    ap.add_argument("--data-plane", choices=["fast", "aiohttp"], default="fast", help="config `data_plane`")
    ap.add_argument("--rolls", type=int, default=1, help="rolling restarts, one after the other")
    ap.add_argument("--readiness-delay", type=float, default=1.0, help="drain.readiness_delay_s (default 1)")
    ap.add_argument("--out", default=str(BENCH / "results" / "rolling-latest.json"), help="JSON results file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, requests.tsv)")
    return ap.parse_args()


def gateway_config(a: argparse.Namespace, port: int, backends: list[int], workdir: Path) -> dict:
    listener = {"name": "public", "address": f"127.0.0.1:{port}"}
    if a.mode == "single":
        listener["reuse_port"] = True
    return {
        **({"workers": 2} if a.mode == "workers" else {}),
        "data_plane": a.data_plane,
        "admin": {"address": "127.0.0.1:0"},
        "drain": {"readiness_delay_s": a.readiness_delay, "grace_s": 15.0, "idle_close_s": 1.0},
        "telemetry": {"service_name": "gatewatch-rolling", "local_dir": str(workdir / "jsonl")},
        "edge": {"listeners": [listener],
                 "routes": [{"name": "shop", "match": {"path": {"prefix": "/shop"}}, "upstream": "shop"}]},
        "balancer": {"pools": [{"name": "shop", "instances": [
            {"id": f"b{i}", "host": "127.0.0.1", "port": p} for i, p in enumerate(backends)]}]},
    }


class Gateway:
    """`gatewatch run` processes from this tree: one supervisor (mode workers) or a sequence of single ones."""

    def __init__(self, path: Path, workdir: Path, env: dict[str, str]):
        self.path = path
        self.workdir = workdir
        self.env = env
        self.starts = 0
        self.proc: Proc | None = None
        self.info: dict = {}

    def start(self) -> tuple[Proc, dict]:
        self.starts += 1
        ready = self.workdir / f"gatewatch-{self.starts}.ready.json"
        proc = Proc(f"gatewatch-{self.starts}", [sys.executable, "-m", "gatewatch", "run", "-c", str(self.path),
                                                 "--ready-file", str(ready)], self.workdir, env=self.env,
                    cwd=self.workdir)
        deadline = time.monotonic() + 60
        while not ready.exists():
            if not proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"gatewatch did not become ready:\n{proc.log_text()[-3000:]}")
            time.sleep(0.05)
        return proc, json.loads(ready.read_text())


def gone(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def roll_workers(gw: Gateway, proc: Proc) -> list[dict]:
    """SIGUSR2 to the supervisor; returns once every old worker has exited (old pid -> new pid per index)."""
    ready = gw.workdir / f"gatewatch-{gw.starts}.ready.json"
    old = {w["index"]: w["pid"] for w in json.loads(ready.read_text())["workers"]}
    logged = len(proc.log_text())
    t0 = time.monotonic()
    os.kill(proc.pid, signal.SIGUSR2)
    deadline = t0 + 300
    while time.monotonic() < deadline:
        if all(gone(pid) for pid in old.values()):
            break
        if not proc.alive():
            raise RuntimeError(f"the supervisor exited during the roll:\n{proc.log_text()[-3000:]}")
        ended = re.search(r"rolling restart (stopped|refused).*", proc.log_text()[logged:])
        if ended:
            raise RuntimeError(f"the supervisor gave up the roll: {ended.group(0)}")
        time.sleep(0.05)
    else:
        raise RuntimeError(f"the roll did not finish within 300 s:\n{proc.log_text()[-3000:]}")
    new = {w["index"]: w["pid"] for w in json.loads(ready.read_text())["workers"]}
    return [{"index": i, "old_pid": old[i], "new_pid": new.get(i), "done_after_s": round(time.monotonic() - t0, 2)}
            for i in sorted(old)]


def roll_single(gw: Gateway, proc: Proc) -> tuple[Proc, list[dict]]:
    """A second process on the same port (reuse_port), then SIGTERM to the first once the second is ready."""
    t0 = time.monotonic()
    new, _ = gw.start()
    ready_s = time.monotonic() - t0
    proc.popen.send_signal(signal.SIGTERM)
    proc.popen.wait(60)
    return new, [{"old_pid": proc.pid, "new_pid": new.pid, "new_ready_after_s": round(ready_s, 2),
                  "done_after_s": round(time.monotonic() - t0, 2), "old_exit": proc.popen.returncode}]


def read_requests(path: Path) -> list[tuple]:
    rows = []
    for line in path.read_text().splitlines():
        f = line.split("\t")
        if len(f) >= 10:
            rows.append((float(f[0]), int(f[3]), float(f[4]), f[5], f[9]))
    return rows


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def phase(rows: list[tuple], start: float, end: float) -> dict:
    """Requests that started in [start, end): counts, failures by kind, keep-alive races, latency."""
    mine = [r for r in rows if start <= r[0] < end]
    failed: dict[str, int] = {}
    races = stale = 0
    ok_latency = []
    for t0, status, latency, kind, flags in mine:
        if "k" in flags:
            races += 1
        if "s" in flags:
            stale += 1
        if kind != "-":
            failed[kind] = failed.get(kind, 0) + 1
        elif not 200 <= status < 300:
            failed[f"status_{status}"] = failed.get(f"status_{status}", 0) + 1
        else:
            ok_latency.append(latency)
    span = max(1e-9, min(end, max((r[0] for r in mine), default=start)) - start)
    ms = lambda v: None if v is None else round(v * 1000, 2)
    return {"requests": len(mine), "ok": len(ok_latency), "failed": sum(failed.values()), "failed_by_kind": failed,
            "keepalive_races_retried": races, "idle_closes_seen": stale, "rps": round(len(mine) / span, 1),
            "p50_ms": ms(statistics.median(ok_latency) if ok_latency else None),
            "p99_ms": ms(percentile(ok_latency, 0.99)), "max_ms": ms(max(ok_latency, default=None))}


DRAIN_LINE = re.compile(r"^(\S+ \S+) \w+ gatewatch: drain: (\w+): .*\((\d+) client connection")


def drain_steps(text: str) -> list[dict]:
    return [{"at": m.group(1), "step": m.group(2), "connections": int(m.group(3))}
            for m in map(DRAIN_LINE.match, text.splitlines()) if m]


def main() -> int:
    a = parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gatewatch-rolling-"))
    env = child_env(BENCH)

    def body() -> int:
        backends = [Backend(f"b{i}", free_port(), tmp, env) for i in range(2)]
        for b in backends:
            b.start()
        port = free_port()
        path = tmp / "gatewatch.yaml"
        path.write_text(yaml.safe_dump(gateway_config(a, port, [b.port for b in backends], tmp), sort_keys=False))
        gw = Gateway(path, tmp, env)
        proc, _ = gw.start()
        spec = {"host": "127.0.0.1", "port": port, "concurrency": a.concurrency, "rate": a.rate,
                "max_per_conn": a.max_per_conn or 10 ** 12, "timeout_s": 10.0,
                "routes": [{"route": "shop", "path": PATH, "weight": 1}]}
        (tmp / "spec.json").write_text(json.dumps(spec))
        requests = tmp / "requests.tsv"
        client = Proc("client", [sys.executable, "-m", "faults.client", "--spec", str(tmp / "spec.json"),
                                 "--out", str(requests)], tmp, env=env, cwd=BENCH)
        t_load = time.monotonic()
        time.sleep(a.before)
        rolls = []
        procs = [proc]
        for n in range(a.rolls):
            t0 = time.monotonic()
            log(f"rolling restart {n + 1}/{a.rolls} ({a.mode})")
            if a.mode == "workers":
                steps = roll_workers(gw, proc)
            else:
                proc, steps = roll_single(gw, proc)
                procs.append(proc)
            rolls.append({"start": t0, "end": time.monotonic(), "steps": steps})
            log(f"  done in {rolls[-1]['end'] - t0:.1f} s: {json.dumps(steps)}")
        time.sleep(a.after)
        client.popen.send_signal(signal.SIGTERM)
        client.popen.wait(30)
        t_end = time.monotonic()
        rows = read_requests(requests)
        during_start, during_end = rolls[0]["start"], rolls[-1]["end"]
        result = {
            "settings": {"mode": a.mode, "data_plane": a.data_plane, "rate": a.rate, "concurrency": a.concurrency,
                         "max_per_conn": a.max_per_conn or None, "before_s": a.before,
                         "after_s": a.after, "rolls": a.rolls, "readiness_delay_s": a.readiness_delay,
                         "cpus": os.cpu_count(), "load_average": os.getloadavg()},
            "before": phase(rows, t_load, during_start),
            "during": phase(rows, during_start, during_end),
            "after": phase(rows, during_end, t_end + 1),
            "rolls": [{"duration_s": round(r["end"] - r["start"], 2), "steps": r["steps"]} for r in rolls],
            "drain_steps": [s for p in procs for s in drain_steps(p.log_text())],
        }
        total = phase(rows, 0, t_end + 1)
        result["total"] = {k: total[k] for k in ("requests", "ok", "failed", "failed_by_kind",
                                                   "keepalive_races_retried")}
        result["pass"] = total["failed"] == 0 and total["keepalive_races_retried"] == 0
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
        print_summary(result)
        log(f"written: {a.out}")
        return 0 if result["pass"] else 1

    return run_main("rolling_restart", tmp, body, keep_tmp=a.keep_tmp, failure_code=2)


def print_summary(r: dict) -> None:
    s = r["settings"]
    print(f"rolling restart, mode {s['mode']}: {s['concurrency']} keep-alive connections at "
          f"{s['rate'] or 'unpaced'} req/s, {s['rolls']} roll(s), readiness delay {s['readiness_delay_s']} s")
    print(f"{'phase':<8} {'requests':>9} {'failed':>7} {'ka-races':>9} {'rps':>8} {'p50 ms':>8} {'p99 ms':>8}  "
          "failures by kind")
    for name in ("before", "during", "after"):
        p = r[name]
        print(f"{name:<8} {p['requests']:>9} {p['failed']:>7} {p['keepalive_races_retried']:>9} {p['rps']:>8} "
              f"{p['p50_ms'] or '-':>8} {p['p99_ms'] or '-':>8}  {p['failed_by_kind'] or '-'}")
    for roll in r["rolls"]:
        print(f"roll took {roll['duration_s']} s: " + ", ".join(
            f"{st['old_pid']}->{st['new_pid']} at {st['done_after_s']} s" for st in roll["steps"]))
    print(f"total: {r['total']['requests']} requests, {r['total']['failed']} failed, "
          f"{r['total']['keepalive_races_retried']} keep-alive races -> {'PASS' if r['pass'] else 'FAIL'}")


if __name__ == "__main__":
    sys.exit(main())
