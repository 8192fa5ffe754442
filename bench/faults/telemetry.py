"""Every telemetry drop counted? Gatewatch's own counters against what the sink decoded, per worker incarnation.

For each gatewatch worker process (a restarted worker is a new incarnation: new `process_start_time_seconds`,
new `service.instance.id` on its telemetry) the soak has the last scrape of its /metrics and the sink's counts
of what arrived from it. Per signal:

    produced   what the process handed to its telemetry pipeline, from its request metrics:
               spans = SERVER (one per request, 100 % sampled) + CLIENT (one per attempt)
                       + INTERNAL `balance` (one per request that reached the pick; see FORWARDED)
               logs  = gatewatch_decisions_total (one log per decision) + the events the metrics count
                       (config reloads, health transitions, ejections)
    accounted  exported + dropped (every reason) + still queued, from gatewatch_telemetry_*
    received   what the sink decoded from that process (all sink incarnations)

and checks `produced == accounted` (nothing vanished without being counted) and
`exported <= received <= exported + export_failed` (what gatewatch counts as exported arrived; the sink may also
have decoded an export whose answer gatewatch timed out on). Events that no metric counts (rate-limit store
transitions, ejection expiries, pool failover events) make logs' `produced` an estimate: the sink's count of them
(and of the events beyond what the metrics count, e.g. ejection expiries) is the tolerance.

A worker that was SIGTERMed exports its last batches after its admin listener has closed, so its final
exported/dropped counts can never be scraped: for it, `received + dropped (last scrape)` is compared with
`produced (last scrape)`; a shortfall is telemetry lost (or dropped uncountably) at shutdown.
"""

from __future__ import annotations

FORWARDED = {"proxied", "upstream_connect_error", "upstream_tls_error", "upstream_timeout", "upstream_error",
             "no_healthy_upstream", "upstream_overflow", "client_abort"}
METRIC_EVENTS = {  # event name -> how many of them the scrape counts
    "gatewatch.config.reload": lambda m: sum(m["reloads"].values()),
    "gatewatch.health.transition": lambda m: m["health_transitions"],
    "gatewatch.outlier.ejection": lambda m: m["ejections"],
}
REQUEST_LOGS = {"gatewatch.decision.route", "gatewatch.decision.policy", "gatewatch.decision.pick",
                "gatewatch.decision.retry", "gatewatch.decision.failover"}


def produced(m: dict) -> dict[str, float]:
    server = sum(m["server"].values())
    balance = sum(v for k, v in m["server"].items() if k.split("|")[1] in FORWARDED)
    aborts = sum(v for k, v in m["server"].items() if k.split("|")[1] == "client_abort")
    logs = m["decisions"] + sum(m["reloads"].values()) + m["health_transitions"] + m["ejections"]
    return {"traces": server + m["client"] + balance, "logs": logs, "requests": server, "client_aborts": aborts}


def match_sink(incarnations: list[tuple[int, float]], sink: dict[str, dict]) -> dict[tuple[int, float], dict]:
    """Sink entries ("worker|instance-id", first seen) to worker incarnations (index, start time): each goes to
    the incarnation of its worker index that started last before it was first seen."""
    out: dict[tuple[int, float], dict] = {}
    for key, c in sink.items():
        w = key.split("|")[0]
        if not w.isdigit():
            continue
        cands = [k for k in incarnations if k[0] == int(w) and k[1] <= c["first_seen"] + 1]
        if not cands:
            continue
        k = max(cands, key=lambda k: k[1])
        e = out.setdefault(k, {"spans": 0, "logs": 0, "events": {}})
        e["spans"] += c["spans"]
        e["logs"] += c["logs"]
        for n, v in c["events"].items():
            e["events"][n] = e["events"].get(n, 0) + v
    return out


def reconcile(latest: dict[tuple[int, float], dict], sink: dict[str, dict], live: set[tuple[int, float]],
              settled: bool) -> dict:
    """Per incarnation and in total: produced / exported / dropped / queued / received, and the verdicts."""
    matched = match_sink(list(latest), sink)
    rows = []
    ok = True
    for key in sorted(latest, key=lambda k: (k[1], k[0])):
        m = latest[key]
        p = produced(m)
        rx = matched.get(key, {"spans": 0, "logs": 0, "events": {}})
        unknown_events = sum(v for n, v in rx["events"].items() if n not in REQUEST_LOGS | set(METRIC_EVENTS))
        # an event a metric counts only in part (an ejection's expiry is an ejection event, not an ejection)
        unknown_events += sum(max(0, rx["events"].get(n, 0) - count(m)) for n, count in METRIC_EVENTS.items())
        row = {"worker": key[0], "start_time": key[1], "final": key in live, "requests": p["requests"],
               "problems": []}
        for sig, rx_n, tol in (("traces", rx["spans"], p["client_aborts"]), ("logs", rx["logs"], unknown_events)):
            exported = m["exported"].get(sig, 0)
            dropped = {k.split("/")[1]: v for k, v in m["dropped"].items() if k.startswith(sig + "/") and v}
            queued = m["queue"].get(sig, 0)
            accounted = exported + sum(dropped.values()) + queued
            r = {"produced": p[sig], "exported": exported, "dropped": dropped, "queued": queued,
                 "received": rx_n, "tolerance": tol}
            if key in live:
                r["unaccounted"] = p[sig] - accounted
                # logs' produced is an estimate from below (events no metric counts): only a shortfall is loss
                if r["unaccounted"] > tol or (sig == "traces" and r["unaccounted"] < -tol):
                    row["problems"].append(f"{sig}: produced {p[sig]:.0f} but exported+dropped+queued "
                                           f"{accounted:.0f} ({r['unaccounted']:+.0f}, tolerance {tol:.0f})")
                if rx_n < exported:
                    row["problems"].append(f"{sig}: gatewatch counted {exported:.0f} exported, the sink decoded "
                                           f"only {rx_n}")
                if rx_n > exported + dropped.get("export_failed", 0) + queued + tol:
                    row["problems"].append(f"{sig}: the sink decoded {rx_n}, more than exported {exported:.0f} + "
                                           f"export_failed {dropped.get('export_failed', 0):.0f}")
            else:  # ended: its last exports happened after its last scrape
                r["lost_at_exit"] = p[sig] - rx_n - sum(dropped.values())
                if r["lost_at_exit"] > tol:
                    row["problems"].append(
                        f"{sig}: produced {p[sig]:.0f} by its last scrape, received {rx_n} + dropped "
                        f"{sum(dropped.values()):.0f} => {r['lost_at_exit']:.0f} never arrived and no scrape "
                        f"could show them counted (worker exited)")
            row[sig] = r
        ok = ok and not row["problems"]
        rows.append(row)
    if not settled:
        ok = False
    return {"rows": rows, "ok": ok, "settled": settled}


def phase_deltas(scrapes: dict[tuple[int, float], list[tuple[float, dict]]], sink_series, t0: float,
                 t1: float) -> dict:
    """Dropped (by reason), exported and sink-received items in [t0, t1), over every worker incarnation."""
    from .monitor import at

    dropped: dict[str, float] = {}
    exported = 0.0
    events = {"health_transitions": 0.0, "ejections": 0.0}
    errors: dict[str, float] = {}  # policy error verdicts ("policy/error/reason")
    outcomes: dict[str, float] = {}  # "route|outcome|status|error_type", not proxied or rate_limited
    retries: dict[str, float] = {}  # "retry|failover/result/reason"
    for series in scrapes.values():
        a, b = at(series, t0), at(series, t1)
        if b is None:
            continue
        for k, v in b["dropped"].items():
            d = v - (a["dropped"].get(k, 0) if a else 0)
            if d:
                reason = k.split("/")[1]
                dropped[reason] = dropped.get(reason, 0) + d
        exported += sum(b["exported"].values()) - (sum(a["exported"].values()) if a else 0)
        for k in ("health_transitions", "ejections"):
            events[k] += b[k] - (a[k] if a else 0)
        for k, v in b["server"].items():  # what gatewatch answered, other than proxied / over the limit
            d = v - (a["server"].get(k, 0) if a else 0)
            if d and k.split("|")[1] not in ("proxied", "rate_limited"):
                outcomes[k] = outcomes.get(k, 0) + d
        for k, v in b["decisions_by"].items():  # retries taken and refused, failovers
            d = v - (a["decisions_by"].get(k, 0) if a else 0)
            if d and k.split("/")[0] in ("retry", "failover"):
                retries[k] = retries.get(k, 0) + d
        for k, v in b["verdicts"].items():
            if "/error/" in k and v - (a["verdicts"].get(k, 0) if a else 0):
                errors[k] = errors.get(k, 0) + v - (a["verdicts"].get(k, 0) if a else 0)
    s0, s1 = at(sink_series, t0), at(sink_series, t1)
    received = (sum(s1) - sum(s0)) if s0 and s1 else None
    return {"dropped": dropped, "exported": exported, "received": received, "policy_errors": errors, "outcomes": outcomes,
            "retries": retries, **events}
