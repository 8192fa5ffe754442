"""The soak's printed report: the phase table, the per-process RSS, the telemetry reconciliation and the verdicts."""

from __future__ import annotations


def _codes(c) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(c.items())) or "0"


def _ms(x) -> str:
    return "-" if x is None else f"{x * 1000:.0f}" if x >= 0.1 else f"{x * 1000:.1f}"


def _n(x: float) -> str:
    return f"{x:.0f}"


def notes(r: dict) -> str:
    out = []
    tel = r.get("telemetry") or {}
    if tel:
        d = tel["dropped"]
        out.append(f"tel exp {_n(tel['exported'])} rx {tel['received'] if tel['received'] is not None else '?'}"
                   + (" drop " + ",".join(f"{k} {_n(v)}" for k, v in sorted(d.items())) if d else ""))
    if r["hot_total"]:
        out.append(f"hot 429 {r['hot_429']}/{r['hot_total']}")
    for why, n in r["documented"].items():
        if why != "hot over limit":
            out.append(f"{why}: {n}")
    for k, v in (tel.get("policy_errors") or {}).items():
        out.append(f"gw {k.split('/')[0]} error verdicts {v:.0f}")
    if r.get("cpu") is not None:
        out.append(f"cpu {r['cpu'] * 100:.0f}%")
    if r["unexpected"]:
        out.append(f"UNEXPECTED {sum(r['unexpected'].values())}")
    if r["keepalive_race"]:
        out.append(f"keep-alive races retried {r['keepalive_race']} ({r['keepalive_race_reset']} reset)")
    if len(r["gens"]) > 1 or r["phase"] in ("reload", "final"):
        out.append("gens " + ",".join(f"{g}:{n}" for g, n in sorted(r["gens"].items())))
    if r.get("extra"):
        out.append(r["extra"])
    return "; ".join(out)


def table(rows: list[dict], injected: dict[str, str], t0: float) -> str:
    head = ["phase", "injected", "window s", "requests", "2xx", "4xx", "5xx", "client errors", "p50/p99/max ms",
            "notes"]
    lines = []
    for r in rows:
        lines.append([r["phase"], injected[r["phase"]], f"{r['start'] - t0:.1f}-{r['end'] - t0:.1f}",
                      str(r["requests"]), str(r["2xx"]), _codes(r["4xx"]), _codes(r["5xx"]), _codes(r["errors"]),
                      f"{_ms(r['p50'])}/{_ms(r['p99'])}/{_ms(r['max'])}", notes(r)])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head[:-1])]

    def fmt(cells: list[str]) -> str:
        return " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " | " + cells[-1]

    out = [fmt(head), "-+-".join("-" * w for w in widths) + "-+-" + "-" * 40]
    out += [fmt(l) for l in lines]
    return "\n".join(out)


def rss_table(rss: dict) -> str:
    out = [(f"RSS per gatewatch process (MiB; bound: peak <= start + {rss['growth_mib']:.0f}, "
            f"end <= start + {rss['growth_mib'] / 2:.0f})")]
    for r in rss["rows"]:
        out.append(f"  {r['role']:<12} pid {r['pid']:<7} start {r['start_mib']:7.1f}  peak {r['peak_mib']:7.1f}  "
                   f"end {r['end_mib']:7.1f}  ({r['samples']} samples over {r['lived_s']:.0f} s)")
    return "\n".join(out)


def telemetry_table(rec: dict) -> str:
    out = [("Telemetry per worker incarnation (produced = from request metrics; dropped by reason; received = "
            "decoded by the sink)")]
    for r in rec["rows"]:
        state = "running at the end" if r["final"] else "ended (SIGTERM): last scrape"
        out.append(f"  worker {r['worker']} started {r['start_time']:.2f} ({state}), {r['requests']:.0f} requests")
        for sig in ("traces", "logs"):
            s = r[sig]
            drops = ", ".join(f"{k} {v:.0f}" for k, v in sorted(s["dropped"].items())) or "0"
            extra = (f"unaccounted {s['unaccounted']:+.0f}" if "unaccounted" in s else
                     f"never arrived nor counted {s['lost_at_exit']:+.0f}")
            out.append(f"    {sig:<6} produced {s['produced']:8.0f}  exported {s['exported']:8.0f}  dropped {drops}"
                       f"  queued {s['queued']:.0f}  received {s['received']:8.0f}  {extra} (tolerance "
                       f"{s['tolerance']:.0f})")
    return "\n".join(out)


def verdicts(crit: dict) -> str:
    names = {"client_failures": "no client failure beyond what the policies document",
             "no_request_cut": "no request cut by a reset under it (SIGTERM drain, reloads, ...)",
             "timeouts": "no request outlives its route's timeouts",
             "rss": "RSS of every gatewatch process within its bound",
             "telemetry": "every telemetry drop counted",
             "recovery": "the gateway recovers from every fault"}
    out = ["Criteria"]
    for key, c in crit.items():
        out.append(f"  {'PASS' if c['ok'] else 'FAIL'}  {names[key]}")
        for p in c["problems"]:
            out.append(f"          - {p}")
        for n in c.get("notes", ()):
            out.append(f"          · {n}")
    overall = all(c["ok"] for c in crit.values())
    out.append(f"SOAK {'PASS' if overall else 'FAIL'}")
    return "\n".join(out)


def gateway_view(rows: list[dict]) -> str:
    """Per phase, what gatewatch itself recorded besides proxied answers and rate limits: outcomes (route, outcome,
    status, error.type) and retry/failover decisions, from the deltas of every worker's /metrics."""
    out = ["Gatewatch's own view per phase (from /metrics: non-proxied outcomes; retry and failover decisions)"]
    for r in rows:
        tel = r.get("telemetry") or {}
        items = [f"{k.replace('|', ' ')}: {v:.0f}" for k, v in sorted(tel.get("outcomes", {}).items())]
        items += [f"{k}: {v:.0f}" for k, v in sorted(tel.get("retries", {}).items())]
        if items:
            out.append(f"  {r['phase']:<17} " + "; ".join(items))
    return "\n".join(out) if len(out) > 1 else ""
