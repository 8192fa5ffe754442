"""The soak's pass/fail criteria (issue 18, category 4), each computed from what the run recorded:

1. `client_failures`: no client saw a failure a policy does not document (see analysis.judge), and the documented
   failures after each instance kill stay within the bound of one per connection per instance killed, all within
   the kill's window;
   `no_request_cut`: no request was cut by the gateway closing its connection under it with a TCP reset
   (e.g. a draining worker closing a keep-alive connection with a request unread in its buffer);
2. `timeouts`: no request took longer than its route's total timeout (gateway.timeout_bounds) + a margin, and none
   hit the client's own 30 s cap;
3. `rss`: every gatewatch process (supervisor, workers, exporter children; replacements too) stays within
   `start + growth` at its peak and within `start + growth / 2` at the end (start: its first sample 3 s after
   traffic started and 3 s after it was serving: a worker's first answered scrape, an exporter's worker's);
4. `telemetry`: every drop counted (telemetry.reconcile);
5. `recovery`: after each fault is undone, the gateway is back: exports arrive again, the rate-limit store is up,
   every instance serves, every reload reached both workers and the clients see the last config generation, the
   SIGTERMed worker was replaced, and gatewatch stops cleanly at the end.
"""

from __future__ import annotations

from .analysis import kill_budget, latency_check
from .monitor import ready_times


def client_failures(rows: list[dict], kills: list[dict]) -> dict:
    problems = []
    for r in rows:
        for what, n in r["unexpected"].most_common():
            problems.append(f"{r['phase']}: {n} x {what}")
    for k in kills:
        if k["failures"] > k["bound"]:
            problems.append(f"kill {k['kill']}: {k['failures']} failures > bound {k['bound']} "
                            f"(one per connection per instance killed)")
    ok = not any(r["unexpected"] for r in rows) and all(k["failures"] <= k["bound"] for k in kills)
    return {"ok": ok, "problems": problems, "kills": kills}


def no_request_cut(rows: list[dict]) -> dict:
    """Requests sent on a reused keep-alive connection that the gateway closed under them. A close by TCP reset
    means the request's bytes were in the gateway's socket buffer, unread, when it closed the connection (Linux
    resets a connection closed with unread data): the gateway had the request and dropped it, which a draining
    worker must not do (a POST would be lost; the client cannot know it was not processed). A close by a plain
    EOF is the keep-alive race no server can rule out entirely: reported, not failed. The client retried both
    (GETs), so their final outcome is judged by `client_failures`."""
    problems, notes = [], []
    for r in rows:
        if r["keepalive_race_reset"]:
            problems.append(f"{r['phase']}: {r['keepalive_race_reset']} requests on reused keep-alive connections "
                            f"were answered by a TCP reset (sent, unread, discarded when the connection was "
                            f"closed); the client retried them on new connections, "
                            f"{r['keepalive_race_failed']} of the retries failed")
        eof = r["keepalive_race"] - r["keepalive_race_reset"]
        if eof:
            notes.append(f"{r['phase']}: {eof} requests met a plain EOF on a reused keep-alive connection (the "
                         f"keep-alive race, RFC 9112 §9.3.1) and were retried on new connections")
    return {"ok": not problems, "problems": problems, "notes": notes}


def timeouts(reqs, bounds: dict[str, float], margin_s: float) -> dict:
    lat = latency_check(reqs, bounds, margin_s)
    problems = [f"{route}: {v['over']} requests over {v['limit_s']:.2f} s (max {v['max_s']:.3f} s, "
                f"{v['max_outcome']}); {v['client_timeouts']} hit the client's cap"
                for route, v in lat.items() if v["over"] or v["client_timeouts"]]
    return {"ok": not problems, "problems": problems, "routes": lat}


def rss(samples: dict, ready: dict[int, float], t_traffic: float, growth_mib: float) -> dict:
    rows, problems = [], []
    for pid, r in sorted(samples.items(), key=lambda kv: kv[1].first_t):
        start_at = max(r.first_t, ready.get(pid, r.first_t), t_traffic) + 3
        after = [s for s in r.samples if s[0] >= start_at]
        if not after:
            continue
        start = after[0][1]
        peak = max(v for _, v in after)
        end = after[-1][1]
        row = {"pid": pid, "role": r.role, "start_mib": start / 2**20, "peak_mib": peak / 2**20,
               "end_mib": end / 2**20, "samples": len(after), "lived_s": r.samples[-1][0] - r.first_t}
        rows.append(row)
        if peak > start + growth_mib * 2**20:
            problems.append(f"{r.role} (pid {pid}): peak {row['peak_mib']:.0f} MiB > start {row['start_mib']:.0f} "
                            f"+ {growth_mib:.0f}")
        if end > start + growth_mib / 2 * 2**20:
            problems.append(f"{r.role} (pid {pid}): end {row['end_mib']:.0f} MiB > start {row['start_mib']:.0f} "
                            f"+ {growth_mib / 2:.0f}")
    return {"ok": not problems, "problems": problems, "rows": rows, "growth_mib": growth_mib}


def telemetry(rec: dict) -> dict:
    problems = [f"worker {r['worker']} (started {r['start_time']:.0f}, {'running' if r['final'] else 'ended'}): {p}"
                for r in rec["rows"] for p in r["problems"]]
    if not rec["settled"]:
        problems.append("telemetry queues did not drain / counts did not settle after the load stopped")
    return {"ok": rec["ok"], "problems": problems}


def recovery(soak, rows: list[dict], final_scrapes: dict) -> dict:
    by = {r["phase"]: r for r in rows}
    problems = []
    back = by.get("collector-back")
    if back and not back.get("telemetry", {}).get("received"):
        problems.append("collector-back: the new sink received nothing (exports did not resume)")
    for i, m in final_scrapes.items():
        if m is None:
            problems.append(f"worker {i}: /metrics does not answer at the end")
            continue
        if any(v != 1 for v in m["store_up"].values()):
            problems.append(f"worker {i}: gatewatch_ratelimit_store_up is {m['store_up']} at the end")
        unhealthy = {k: v for k, v in m["endpoints"].items() if k != "healthy" and k != "slow_start" and v}
        if unhealthy:
            problems.append(f"worker {i}: endpoints not healthy at the end: {unhealthy}")
    later = [r for r in rows if r["phase"] in ("redis-back", "jwks-hang", "jwks-back", "final")]
    if later and not any(r["hot_429"] for r in later):
        problems.append("after Redis came back the hot client was never limited again")
    final = by.get("final")
    if final:
        missing = {b for b in soak.backends} - set(final["backends"])
        if missing:
            problems.append(f"final: instances {sorted(missing)} served nothing")
        last_gen = str(soak.gw.gen)
        stale = {g: n for g, n in final["gens"].items() if g != last_gen}
        if stale:
            problems.append(f"final: {sum(stale.values())} answers carried an old config generation {dict(stale)} "
                            f"(expected {last_gen})")
    for rec in soak.reloads:
        if any(g != rec["gen"] for g in rec["gens"].values()):
            problems.append(f"reload ({rec['how']}) to gen {rec['gen']}: workers run gens {rec['gens']} "
                            f"after {rec['applied_s']:.1f} s")
        for i, (code, body) in rec["answers"].items():
            if code != 200:
                problems.append(f"reload ({rec['how']}) worker {i}: {code} {body[:200]}")
    if soak.sigterm and "replacement_ready_s" not in soak.sigterm:
        problems.append(f"SIGTERMed worker not replaced within 30 s: {soak.sigterm}")
    if getattr(soak, "gw_exit", 0) not in (0, None):
        problems.append(f"gatewatch exited {soak.gw_exit} when stopped")
    return {"ok": not problems, "problems": problems}


def all_criteria(soak, reqs, rows, windows, rec, final_scrapes, args) -> dict:
    from .gateway import timeout_bounds

    kills = kill_budget(reqs, windows, args.concurrency)
    return {
        "client_failures": client_failures(rows, kills),
        "no_request_cut": no_request_cut(rows),
        "timeouts": timeouts(reqs, timeout_bounds(), args.latency_margin),
        "rss": rss(soak.monitor.rss, ready_times(soak.monitor.scrapes, soak.monitor.rss), soak.t_start,
                   args.rss_growth_mib),
        "telemetry": telemetry(rec),
        "recovery": recovery(soak, rows, final_scrapes),
    }
