"""The text output: `render` turns a results document into the table printed at the end of a run (and stored under
`table`; bench/README.md quotes one) — header, one row per case, CPU by process, the context lines (HAProxy's own
pool ratio, multi-core, telemetry cost on the proxy's core, TLS, idle connections), the targets and the findings.
`summary_line` is the progress line logged after each measurement.
"""

from __future__ import annotations

from typing import Any

from .common import NOISY, median

_VS_HAPROXY = {"direct": "direct_vs_haproxy", "nginx": "nginx_vs_haproxy", "caddy": "caddy_vs_haproxy",
               "caddy-tracing": "caddy_tracing_vs_haproxy", "python-floor": "floor_vs_haproxy",
               "python-floor-compiled": "floor_compiled_vs_haproxy", "python-floor-plus": "floor_plus_vs_haproxy",
               "python-floor-plus-compiled": "floor_plus_compiled_vs_haproxy",
               "gatewatch-off": "off_vs_haproxy",
               "gatewatch-full": "full_vs_haproxy", "gatewatch-sampled": "sampled_vs_haproxy",
               "gatewatch-pure-off": "pure_off_vs_haproxy", "gatewatch-pure-full": "pure_full_vs_haproxy",
               "gatewatch-pure-sampled": "pure_sampled_vs_haproxy",
               # the TLS rows against HAProxy terminating TLS the same way, not against plaintext HAProxy
               "gatewatch-tls": "tls_vs_haproxy_tls",
               "gatewatch-tls-handshakes": "tls_handshakes_vs_haproxy_tls_handshakes"}
_REFERENCES = ("haproxy", "haproxy-tls", "haproxy-tls-handshakes")  # 1.00 in the vs HAProxy column
# vs the telemetry-off row of the same build
_VS_OFF = {"gatewatch-full": "full_vs_off", "gatewatch-sampled": "sampled_vs_off", "gatewatch-tls": "tls_vs_off",
           "gatewatch-pure-full": "pure_full_vs_off", "gatewatch-pure-sampled": "pure_sampled_vs_off"}


def fmt(v: Any, spec: str = ".2f", none: str = "-") -> str:
    if v is None:
        return none
    try:
        return format(v, spec)
    except (TypeError, ValueError):
        return str(v)


def render(res: dict[str, Any]) -> str:
    lines = _header(res)
    lines += _table(res)
    lines += _by_process(res)
    lines += _sink_cpu(res)
    lines += _compiled_context(res)
    lines += _context(res)
    lines += _targets(res)
    lines += _findings(res)
    return "\n".join(lines)


def _header(res: dict[str, Any]) -> list[str]:
    s = res["settings"]
    m = res["machine"]
    pin = (f"proxy pinned to CPU {s['pinning']['proxy_cpu']}; wrk, backend, OTLP sink and harness on CPU "
           f"{s['pinning']['load_cpu']}" if isinstance(s["pinning"], dict) else s["pinning"].upper())
    return [
        (f"Gatewatch benchmark — {res['started_at']} — {'quick' if s['quick'] else 'full'}: {s['rounds']} "
         f"round(s) × {s['duration_s']} s (+{s['warmup_s']} s warm-up), wrk -t1 -c32, path {s['path']}"),
        f"{m['cpu_model']}, {m['cpu_count']} CPU, kernel {m['kernel']}, Python {m['python']}; {pin}",
        (f"{m['haproxy']}; {m['nginx']}; {m['wrk']}; tree {m['tree_at_start']['commit'][:10]}"
         + (" + uncommitted changes" if m['tree_at_start']['dirty_outside_bench'] else "")),
        (f"telemetry off = {s['telemetry_off_mode']}; medians of {s['rounds']} round(s); ratios = median of "
         f"per-round ratios"),
        (f"gatewatch build of this tree: {(m.get('gatewatch_build') or {}).get('mode', 'unknown')}; rows -pure- run "
         f"with GATEWATCH_PURE_PYTHON=1, the others compiled; every row's mode is its process's own (ready file)"
         + (f"; {m['caddy']}" if m.get("caddy") else "")),
        "",
    ]


def _table(res: dict[str, Any]) -> list[str]:
    hdr = (f"{'case':<31} {'build':<8} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'vs HAProxy':>10} {'vs gw-off':>9} "
           f"{'CPU s/1k':>9} {'proc CPU':>8} {'busy P/L':>10}  {'telemetry exported / dropped':<30} flags")
    lines = [hdr, "-" * len(hdr)]
    for name, mm in res["medians"].items():
        if name == "idle-10k":
            continue
        if mm.get("skipped"):
            lines.append(f"{name:<31} SKIPPED: {mm['skipped']}")
            continue
        if mm.get("failed"):
            lines.append(f"{name:<31} FAILED in every round")
            continue
        lines.append(_row(res, name, mm))
    return lines


def _build_cell(mm: dict[str, Any]) -> str:
    """compiled / pure as the process reported it; `MISMATCH` when that is not the row's build."""
    b = mm.get("build")
    if not b:
        return "-"
    if b.get("compiled") is None:
        return "unknown"
    if mm.get("build_ok") is False:
        return "MISMATCH"
    return "compiled" if b.get("compiled") else "pure"


def _row(res: dict[str, Any], name: str, mm: dict[str, Any]) -> str:
    ratios = res["ratios"]
    s = res["settings"]
    h = "1.00" if name in _REFERENCES else fmt(ratios.get(_VS_HAPROXY.get(name, "")), ".2f")
    o = fmt(ratios.get(_VS_OFF.get(name, "")), ".2f")
    cpu = fmt(mm.get("cpu_s_per_1k"), ".3f")
    use = fmt(mm.get("proxy_cpu_util"), ".2f")
    bl = mm.get("cpu_busy_per_cpu") or []
    idx = [s["pinning"]["proxy_cpu"], s["pinning"]["load_cpu"]] if isinstance(s["pinning"], dict) else [0, 1]
    busy = "/".join(fmt(bl[i], ".2f") for i in idx if i < len(bl)) or "-"
    tel = ""
    if mm.get("exported_total") is not None:
        tel = f"{mm['exported_total']:.0f} / {mm.get('dropped_total_all_rounds', 0):.0f}"
    elif mm.get("spans_due") is not None:  # Caddy: spans the sink decoded / spans that never arrived
        tel = f"{mm['sink_spans']:.0f} rx / {mm.get('dropped_total_all_rounds', 0):.0f} missing"
    return (f"{name:<31} {_build_cell(mm):<8} {mm['rps']:>9.0f} {mm['p50_ms']:>8.3f} {mm['p99_ms']:>8.3f} {h:>10} "
            f"{o:>9} {cpu:>9} {use:>8} {busy:>10}  {tel:<30} {' '.join(_flags(res, name, mm))}")


def _flags(res: dict[str, Any], name: str, mm: dict[str, Any]) -> list[str]:
    rounds = res["settings"]["rounds"]
    flags = []
    if mm.get("build_ok") is False:
        flags.append("BUILD-MISMATCH")
    if mm.get("dropped_total_all_rounds"):
        flags.append("DROPPED")
    if mm.get("non_2xx_3xx"):
        flags.append(f"non-2xx {mm['non_2xx_3xx']:.0f}")
    if mm.get("socket_errors"):
        flags.append(f"sock-err {mm['socket_errors']:.0f}")
    sat = sum(1 for r in res["rounds"].get(name, []) if r.get("load_cpu_saturated"))
    if sat:
        flags.append(f"LOAD-CPU-SAT({sat}/{mm.get('rounds_ok', rounds)})")
    if (mm.get("other_cpu_util") or 0) > NOISY:
        flags.append(f"NOISY({mm['other_cpu_util']:.2f} cores other)")
    if any("CRASH" in p for p in mm.get("problems", [])):
        flags.append("CRASH")
    if mm.get("rounds_ok", rounds) < rounds:
        flags.append(f"only {mm['rounds_ok']}/{rounds} rounds")
    return flags


def _by_process(res: dict[str, Any]) -> list[str]:
    """CPU per request of each process of a proxy's tree, for the cases that have more than one."""
    split = []
    for name, rounds in res["rounds"].items():
        procs = sorted({k for r in rounds for k in (r.get("cpu_s_per_1k_by_process") or {})})
        if len(procs) > 1:
            parts = [f"{k} {fmt(median([(r.get('cpu_s_per_1k_by_process') or {}).get(k) for r in rounds]), '.3f')}"
                     for k in procs]
            split.append(f"  {name:<29} " + ", ".join(parts))
    if not split:
        return []
    return ["", "CPU s/1k by process of the proxy's tree (medians)"] + split


def _sink_cpu(res: dict[str, Any]) -> list[str]:
    """The OTLP sink's own CPU per 1,000 requests of each telemetry row (it decodes every export into protobuf
    objects, on the load CPU; not part of any proxy's CPU s/1k)."""
    rows = [(n, mm) for n, mm in res["medians"].items() if mm.get("sink_cpu_s_per_1k") is not None]
    if not rows:
        return []
    lines = ["", ("OTLP sink (bench/otlp_sink.py, its own process on the load CPU; decodes every export with "
                  "opentelemetry-proto): CPU s/1k requests")]
    for name, mm in rows:
        what = (f"{mm.get('sink_spans', 0):.0f} spans, {mm.get('sink_logs', 0):.0f} log records decoded (median "
                f"per round)") if mm.get("sink_spans") is not None else ""
        lines.append(f"  {name:<29} sink {mm['sink_cpu_s_per_1k']:.3f}   {what}")
    return lines


def _compiled_context(res: dict[str, Any]) -> list[str]:
    """Issue 14: what compiling gave (compiled ÷ pure, by throughput and by the proxy core's CPU), the floors,
    and Caddy."""
    r = res["ratios"]
    out = []
    if any(r.get(k) is not None for k in ("off_vs_pure_off", "full_vs_pure_full", "sampled_vs_pure_sampled")):
        out.append(f"  gatewatch compiled ÷ pure: off {fmt(r.get('off_vs_pure_off'))} (by proxy CPU per request "
                   f"{fmt(r.get('off_vs_pure_off_proxy_cpu'))}), full {fmt(r.get('full_vs_pure_full'))}, sampled "
                   f"{fmt(r.get('sampled_vs_pure_sampled'))}")
    if r.get("floor_compiled_vs_floor") is not None or r.get("floor_compiled_vs_haproxy") is not None:
        out.append(f"  python floor compiled ÷ pure {fmt(r.get('floor_compiled_vs_floor'))} (by CPU "
                   f"{fmt(r.get('floor_compiled_vs_floor_proxy_cpu'))}); vs HAProxy: pure "
                   f"{fmt(r.get('floor_vs_haproxy'))}, compiled {fmt(r.get('floor_compiled_vs_haproxy'))}")
    if r.get("floor_plus_vs_haproxy_cpu") is not None or r.get("floor_plus_compiled_vs_haproxy_cpu") is not None:
        out.append(f"  python floor plus the least a gateway does (bench/floor_plus.py) vs HAProxy by CPU: pure "
                   f"{fmt(r.get('floor_plus_vs_haproxy_cpu'))}, compiled "
                   f"{fmt(r.get('floor_plus_compiled_vs_haproxy_cpu'))} (compiled: "
                   f"{fmt(r.get('floor_plus_compiled_vs_floor_compiled_cpu'))} of the compiled floor)")
    if r.get("off_vs_floor_compiled") is not None or r.get("pure_off_vs_floor") is not None:
        out.append(f"  gatewatch-off ÷ the floor of the same build: compiled/compiled "
                   f"{fmt(r.get('off_vs_floor_compiled'))}, pure/pure {fmt(r.get('pure_off_vs_floor'))}")
    if r.get("caddy_vs_haproxy") is not None or r.get("caddy_tracing_vs_haproxy") is not None:
        out.append(f"  Caddy (GOMAXPROCS=1) vs HAProxy {fmt(r.get('caddy_vs_haproxy'))}, with tracing "
                   f"{fmt(r.get('caddy_tracing_vs_haproxy'))} ({fmt(r.get('caddy_tracing_vs_caddy'))} of itself "
                   f"without); gatewatch-off ÷ caddy {fmt(r.get('off_vs_caddy'))}, gatewatch-full ÷ caddy-tracing "
                   f"{fmt(r.get('full_vs_caddy_tracing'))}")
    return ["", "Compiled vs pure, floors and Caddy (ratios within each round, medians)"] + out if out else []


def _context(res: dict[str, Any]) -> list[str]:
    """The lines under the table that put a ratio in context, each after an empty line."""
    med = res["medians"]
    ratios = res["ratios"]
    lines = []
    cap = [f"{k.split('_vs_')[0].replace('_', '-')} {fmt(ratios.get(k), '.2f')}"
           for k in ("full_vs_off_proxy_cpu", "sampled_vs_off_proxy_cpu", "pure_full_vs_off_proxy_cpu",
                     "pure_sampled_vs_off_proxy_cpu") if ratios.get(k) is not None]
    if ratios.get("haproxy_pool_1000_vs_3") is not None:
        lines.append("")
        lines.append(f"reference for pool_1000_vs_3: HAProxy round robin over the same pools "
                     f"{fmt(ratios['haproxy_pool_1000_vs_3'], '.2f')} (1,000 distinct upstream connections cost "
                     f"every proxy and the backend, not only gatewatch)")
    if ratios.get("workers_2_vs_1") is not None:
        w1, w2 = med.get("workers-1") or {}, med.get("workers-2") or {}
        lines.append("")
        lines.append(f"multi-core (workers: 2 ÷ workers: 1, both free to use every CPU, wrk and the backend on the "
                     f"load CPU): {fmt(ratios['workers_2_vs_1'], '.2f')}× the throughput at "
                     f"{fmt(w2.get('cpu_s_per_1k'), '.3f')} vs {fmt(w1.get('cpu_s_per_1k'), '.3f')} CPU-s/1k")
    if cap:
        lines.append("")
        lines.append("telemetry cost on the proxy's core (the off row's CPU per request ÷ the case's, same build, "
                     "proxy process only): " + ", ".join(cap))
    lines += _tls_context(res)
    idle = med.get("idle-10k")
    if idle and not idle.get("failed"):
        lines.append("")
        lines.append(f"idle keep-alive connections: {idle['opened']:.0f} opened, RSS {idle['rss_before_kib']:.0f} → "
                     f"{idle['rss_open_kib']:.0f} KiB ({fmt(idle.get('rss_kib_per_conn'), '.1f')} KiB/conn; "
                     f"{idle['rss_after_close_kib']:.0f} KiB after closing them), "
                     f"{idle['probed_alive']:.0f}/{idle['probed']:.0f} probed still served")
    return lines


def _tls_context(res: dict[str, Any]) -> list[str]:
    """The TLS rows in context: what each proxy negotiated, the ratios by proxy CPU, and whether the handshake
    cases did one full handshake per request."""
    ratios = res["ratios"]
    names = [n for n in ("haproxy-tls", "gatewatch-tls", "haproxy-tls-handshakes", "gatewatch-tls-handshakes")
             if n in res["rounds"]]
    if not names:
        return []
    seen = []
    for n in names:
        ok = [r for r in res["rounds"][n] if "tls_version" in r]
        if ok:
            hs = median([r.get("tls_handshakes_per_request") for r in ok])
            tickets = "session tickets issued" if any(r["tls_ticket_issued"] for r in ok) else "no session ticket"
            resumed = "a session offered back resumed" if any(r["tls_resumed"] for r in ok) else "no resumption"
            seen.append(f"{n:<25} {ok[0]['tls_version']} {ok[0]['tls_cipher']}, {fmt(hs, '.2f')} handshakes per "
                        f"request; {tickets}, {resumed}")
    title = ("TLS termination (the same ECDSA P-256 certificate on both; version and cipher as negotiated by "
             "default; plaintext to the backend):")
    lines = ["", title] + [f"  {x}" for x in seen]
    lines.append(f"  keep-alive: gatewatch-tls ÷ haproxy-tls {fmt(ratios.get('tls_vs_haproxy_tls'))} (by proxy CPU "
                 f"per request {fmt(ratios.get('tls_vs_haproxy_tls_proxy_cpu'))}); what TLS costs: gatewatch-tls ÷ "
                 f"gatewatch-off {fmt(ratios.get('tls_vs_off'))} (by CPU {fmt(ratios.get('tls_vs_off_proxy_cpu'))}), "
                 f"haproxy-tls ÷ haproxy {fmt(ratios.get('haproxy_tls_vs_haproxy'))}")
    lines.append(f"  new handshakes/s: gatewatch-tls-handshakes ÷ haproxy-tls-handshakes "
                 f"{fmt(ratios.get('tls_handshakes_vs_haproxy_tls_handshakes'))} (by proxy CPU per handshake "
                 f"{fmt(ratios.get('tls_handshakes_vs_haproxy_tls_handshakes_proxy_cpu'))})")
    return lines


def _targets(res: dict[str, Any]) -> list[str]:
    pr = res["ratios_per_round"]
    groups = [("compiled", "Targets, compiled build (issue 14; issue 3's marked [3]; per-round values in brackets)"),
              ("pure", ("Pure build (GATEWATCH_PURE_PYTHON=1): issue 14 step 1's target, and the same targets for "
                        "comparison"))]
    lines = []
    for build, title in groups:
        lines += ["", title]
        for name, t in res["targets"].items():
            if t.get("build", "compiled") != build:
                continue
            if name.endswith("no_telemetry_dropped"):
                val = ", ".join(f"{k}: {v:.0f}" for k, v in (t["value"] or {}).items()) or "-"
                rounds = ""
            else:
                val = fmt(t["value"], ".2f")
                key, _, sub = name.partition(".")
                vals = pr.get(key)
                if sub and isinstance(vals, dict):
                    vals = vals.get(sub)
                rounds = " [" + ", ".join(fmt(v, ".2f") for v in (vals or [])) + "]"
            met = {True: "met", False: "NOT MET", None: "not measured"}[t["met"]]
            if t.get("invalid"):
                met = f"NOT VALID ({t['invalid']})"
            tag = {"3": " [3]", "comparison": " (cmp)", "14 step 1": " [14.1]"}.get(t.get("issue", ""), "")
            lines.append(f"  {name + tag:<52} {val:>8}  target {t['target']:<10} {met}{rounds}")
    return lines


def _findings(res: dict[str, Any]) -> list[str]:
    """The notes, then per case one line per kind of problem, with the rounds it happened in."""
    problems = []
    for name, rounds in res["rounds"].items():
        kinds: dict[str, list] = {}
        for r in rounds:
            for p in r.get("problems", []):
                kind = p.split(":", 1)[0] if p.split()[0].isupper() else p
                kinds.setdefault(kind, []).append((r.get("round", 0) + 1, p))
        for kind, hits in kinds.items():
            where = f"round {hits[0][0]}" if len(hits) == 1 else f"rounds {', '.join(str(h[0]) for h in hits)}"
            problems.append(f"{name} ({where}): {hits[0][1] if len(hits) == 1 else hits[-1][1]}")
    if not (problems or res["notes"]):
        return []
    return ["", "Findings / problems"] + [f"  * {note}" for note in res["notes"]] + [f"  * {p}" for p in problems]


def summary_line(r: dict) -> str:
    if "skipped" in r:
        return "SKIPPED: " + r["skipped"][:150]
    if "failed" in r:
        return "FAILED: " + r["failed"].splitlines()[0][:150]
    if "rss_kib_per_conn" in r:
        per = r["rss_kib_per_conn"]
        return f"{r['opened']} idle conns, {per:.1f} KiB/conn" if per is not None else "no connections opened"
    s = f"{r['rps']:>9.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms"
    if r.get("cpu_s_per_1k") is not None:
        s += f"  cpu {r['cpu_s_per_1k']:.3f} s/1k"
    if r.get("build"):
        s += f"  {'compiled' if r['build'].get('compiled') else 'pure'}"
    if r.get("exported_total") is not None:
        s += f"  exported {r['exported_total']:.0f} dropped {r['dropped_total']:.0f}"
    if r.get("spans_due") is not None:
        s += f"  spans {r['sink_spans']} of {r['spans_due']} due"
    if (r.get("other_cpu_util") or 0) > NOISY:
        s += f"  other processes {r['other_cpu_util']:.2f} cores"
    if r.get("problems"):
        s += f"  [{len(r['problems'])} problem(s)]"
    return s
