#!/usr/bin/env python3
"""Faults under sustained load (issue 18, category 4): a real gatewatch with `workers: 2`, real traffic for
several minutes, and on a schedule, one fault after another.

    python bench/soak.py                  # ~4 minutes of traffic (--duration 240)
    python bench/soak.py --quick          # ~1 minute: every phase at its floor
    python bench/soak.py --duration 600 --rate 800 --out /tmp/soak.json --keep-tmp

What runs: redis-server (temp port), a JWKS endpoint, an OTLP/HTTP sink, four backend instances (a pool with
active health checks, outlier detection and retries), gatewatch from this tree, and a paced asyncio client with
a fixed number of keep-alive connections (32) over four routes: no policy, a Redis rate limit failing open, a
Redis rate limit failing closed, and JWT with keys from the JWKS endpoint. The schedule (bench/faults/schedule.py):
the collector hangs, is killed, comes back; Redis hangs, stops, comes back; the JWKS endpoint hangs and comes
back; one instance is killed and restarted, then two at once; the config is reloaded by SIGHUP and by the admin
API; worker 1 gets SIGTERM. Every request is counted in the phase it started in.

It prints one row per phase (what was injected, when, what the clients saw, latency, telemetry exported /
received / dropped) and PASS/FAIL for each criterion (bench/faults/criteria.py): no failure beyond what a policy
documents, no request longer than its route's timeouts, RSS of every gatewatch process bounded, every telemetry
drop counted, and recovery from every fault. Exit code 0 when all pass, 1 when one fails, 2 when the soak could
not run. The JSON (--out) has the rows, every event, every reload and the reconciliation. See bench/README.md.
"""

from __future__ import annotations

import argparse
import collections
import json
import re
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

from faults import analysis, criteria, render
from faults.monitor import at
from faults.redis import redis_binary
from faults.schedule import PHASES
from faults.soak import Soak
from faults.telemetry import phase_deltas, reconcile
from harness.common import child_env, log, run_main
from harness.host import raise_nofile, tree_state


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("--quick", action="store_true", help="about 1 minute: every phase at its floor")
    ap.add_argument("--duration", type=float, help="seconds of traffic over all phases (default 240; quick 60)")
    ap.add_argument("--rate", type=float, default=600, help="requests/s over all connections (0: unpaced)")
    ap.add_argument("--concurrency", type=int, default=32, help="client connections (default 32)")
    ap.add_argument("--latency-margin", type=float, default=1.0,
                    help="seconds allowed above a route's total timeout (default 1.0: a shared 2-core machine)")
    ap.add_argument("--rss-growth-mib", type=float, default=100,
                    help="RSS a gatewatch process may grow above its start at its peak (half of it at the end)")
    ap.add_argument("--out", default=str(BENCH / "results" / "soak-latest.json"), help="JSON results file")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (configs, logs, requests.tsv)")
    a = ap.parse_args()
    a.duration = a.duration or (60 if a.quick else 240)
    return a


def gateway_log_summary(text: str) -> dict[str, int]:
    """Gatewatch's log (supervisor, workers, exporter children) without INFO/DEBUG, counted by message shape
    (digits replaced by N); lines not in the logging format (e.g. the exporter's own messages) as `(raw)`."""
    out: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        m = re.match(r"\S+ \S+ (\w+) (\S+): (.*)", line)
        if m and m.group(1) in ("INFO", "DEBUG"):
            continue
        text = f"{m.group(1)} {m.group(2)}: {m.group(3)}" if m else f"(raw) {line.strip()}"
        if line.strip():
            out[re.sub(r"\d+(\.\d+)?", "N", text)[:170]] += 1
    return dict(out.most_common())


def analyse(soak: Soak, args) -> dict:
    reqs = analysis.load(soak.requests_path)
    windows = analysis.Windows.of(soak.events, soak.t_end, soak.gw.log_text(), soak.wall_minus_mono)
    rows = analysis.phase_stats(reqs, soak.phase_times, windows)
    fetches = soak.jwks.fetch_times()
    for r in rows:
        r["telemetry"] = phase_deltas(soak.monitor.scrapes, soak.monitor.sink_series, r["start"], r["end"])
        extra = []
        c0, c1 = at(soak.monitor.cpu_series, r["start"]), at(soak.monitor.cpu_series, r["end"])
        r["cpu"] = (c1[0] - c0[0]) / (c1[1] - c0[1]) if c0 and c1 and c1[1] > c0[1] else None
        if r["phase"].startswith("jwks") or r["phase"] == "baseline":
            extra.append(f"JWKS fetches served {sum(1 for t in fetches if r['start'] <= t < r['end'])}")
        if r["telemetry"]["health_transitions"] or r["telemetry"]["ejections"]:
            extra.append(f"health transitions {r['telemetry']['health_transitions']:.0f}, "
                         f"ejections {r['telemetry']['ejections']:.0f}")
        if r["phase"] == "reload":
            extra.append("applied in " + ", ".join(f"{x['applied_s']:.1f}s" for x in soak.reloads))
        if r["phase"] == "worker-sigterm" and soak.sigterm:
            s = soak.sigterm
            extra.append(f"worker exited after {s.get('exited_s', float('nan')):.1f}s, replacement ready after "
                         f"{s.get('replacement_ready_s', float('nan')):.1f}s")
        r["extra"] = "; ".join(extra)
    latest = soak.monitor.latest()
    live = {(i, m["start_time"]) for i, m in soak.final.items() if m}
    for i, m in soak.final.items():
        if m:
            latest[(i, m["start_time"])] = m
    rec = reconcile(latest, soak.sink.by_process(), live, soak.settled)
    crit = criteria.all_criteria(soak, reqs, rows, windows, rec, soak.final, args)
    return {"reqs": len(reqs), "rows": rows, "rec": rec, "criteria": crit, "windows": windows.__dict__}


def report(soak: Soak, res: dict, args, state: dict) -> str:
    injected = {p.name: p.injected for p in PHASES}
    total = sum(r["requests"] for r in res["rows"])
    head = (f"Gatewatch soak: {total} requests over {soak.t_end - soak.t_start:.0f} s, "
            f"{args.concurrency} connections, {args.rate or 'unpaced'} req/s target, workers: 2, commit "
            f"{state['commit'][:7]}{' (+uncommitted changes)' if state['dirty_outside_bench'] else ''}")
    parts = [head, "", render.table(res["rows"], injected, soak.t_start), ""]
    kills = res["criteria"]["client_failures"]["kills"]
    for k in kills:
        parts.append(f"kill {k['kill']} ({k['instances']} instance(s)): {k['failures']} failed requests "
                     f"(bound {k['bound']}), last {k['last_failure_after_s'] or 0:.2f} s after the kill"
                     + (f": {dict(k['kinds'])}" if k["kinds"] else ""))
    lat = res["criteria"]["timeouts"]["routes"]
    parts.append("max latency per route: " + ", ".join(
        f"{r} {v['max_s'] * 1000:.0f} ms (limit {v['limit_s']:.1f} s)" for r, v in lat.items() if v["max_s"]))
    cpu = getattr(soak, "cpu", {})
    if cpu:
        wall = cpu.pop("(wall s)", 1.0)
        busy = cpu.pop("(machine busy, cores)", 0.0)
        ours = sum(cpu.values()) / wall
        parts.append(f"CPU over the traffic ({wall:.0f} s, cores): machine busy {busy:.2f}, of which this soak "
                     f"{ours:.2f} (" + ", ".join(f"{k} {v / wall:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
                     + f"), other processes ~{max(0.0, busy - ours):.2f}")
    view = render.gateway_view(res["rows"])
    parts += ["", view] if view else []
    parts += ["", render.rss_table(res["criteria"]["rss"]), "", render.telemetry_table(res["rec"]), ""]
    logs = res["gateway_log"]
    if logs:
        parts.append("gatewatch's log, WARNING and above and unformatted lines (by message shape):")
        parts += [f"  {n:6d}  {msg}" for msg, n in list(logs.items())[:25]]
        parts.append("")
    parts += [f"note: {n}" for n in soak.notes]
    parts.append(render.verdicts(res["criteria"]))
    return "\n".join(parts)


def to_json(x):
    if isinstance(x, dict):
        return {str(k): to_json(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_json(v) for v in x]
    return x


def main() -> int:
    args = parse_args()
    if not redis_binary():
        log("soak: redis-server not found (Debian: apt-get install redis-server)")
        return 2
    raise_nofile()
    workdir = Path(tempfile.mkdtemp(prefix="gatewatch-soak-"))
    state = tree_state()
    soak = Soak(args, workdir, child_env(BENCH))

    def body() -> int:
        soak.setup()
        soak.run()
        soak.stop()
        res = analyse(soak, args)
        res["gateway_log"] = gateway_log_summary(soak.gw.log_text())
        text = report(soak, res, args, state)
        print(text, flush=True)
        ok = all(c["ok"] for c in res["criteria"].values())
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        doc = {"settings": vars(args), "tree": state, "tree_at_end": tree_state(), "events": soak.events,
               "phases": soak.phase_times, "reloads": soak.reloads, "sigterm": soak.sigterm, "notes": soak.notes,
               "rows": res["rows"], "telemetry": res["rec"], "criteria": res["criteria"],
               "gateway_log": res["gateway_log"], "requests": res["reqs"], "pass": ok, "report": text,
               "gatewatch_stop_s": getattr(soak, "gw_stop_s", None), "gatewatch_exit": getattr(soak, "gw_exit", None)}
        out.write_text(json.dumps(to_json(doc), indent=1, default=str))
        log(f"soak: results written to {out}")
        return 0 if ok else 1

    return run_main("soak", workdir, body, keep_tmp=args.keep_tmp, failure_code=2)


if __name__ == "__main__":
    sys.exit(main())
