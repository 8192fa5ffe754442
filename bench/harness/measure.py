"""One measurement of one case in one round: start the proxy under test, warm it up with the same load, let its
telemetry settle, then run wrk while taking CPU snapshots (the proxy's tree, the sink, every CPU of the machine,
other processes) and the backend's counters before, right after, and once the run's telemetry is exported.
`measure` returns the round's record: wrk's numbers, CPU per request, the gateway's and the sink's telemetry
counts, the build a gatewatch or floor process ran in (checked against the case's), for Caddy with tracing the
spans the sink decoded against the requests Caddy served, for a TLS case what was negotiated and the handshakes per
request, and `problems` (the flags of the table). A case that cannot run here (the compiled floor without a
compiler) is recorded as `skipped` with the reason.

The idle-connection case has its own measurement (idle.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .cases import Case
from .common import LOAD_SATURATED, NOISY
from .context import Context
from .cpu import (
    busy_fraction,
    cpu_by_process,
    cpu_seconds,
    other_cpu_seconds,
    other_cpu_snapshot,
    our_pids,
    percpu_busy,
    proc_affinities,
    wait_quiet,
)
from .gateway import Gateway, build_check, settle
from .idle import measure_idle
from .targets import Target, start_target, stop_target
from .tls import probe
from .wrk import run_wrk

if TYPE_CHECKING:
    from .bench import Bench


@dataclass
class Window:
    """What was seen around the measured wrk run: `*0` before it, `*_mid` right after it, `*1` once the telemetry
    it produced has been exported (gateway: `metrics`, sink: `sink_counts`)."""
    wrk: dict  # wrk's WRKJSON line
    wall: float  # seconds the wrk run took
    quiet: float | None  # other processes' load before the run (--wait-quiet)
    procs: list  # the proxy's process tree (psutil)
    affinity: list[dict]  # CPU affinity of each of those processes
    cpu0: float  # CPU seconds of the proxy's tree
    cpu_mid: float
    cpu1: float
    sink_cpu0: float  # CPU seconds of the OTLP sink (telemetry cases)
    sink_cpu1: float
    busy0: list  # (busy, total) seconds of every CPU of the machine
    busy_mid: list
    by0: dict[str, float]  # CPU seconds of the proxy's tree by process name
    by1: dict[str, float]
    other: float  # CPU seconds of processes the harness did not start, during the run
    be0: dict | None  # the backend's stub_status
    be1: dict | None
    metrics: dict | None  # gatewatch's /metrics once settled
    sink_counts: dict | None  # the sink's decoded counts once settled
    settled: bool
    hs0: float | None = None  # TLS cases: handshakes the proxy had completed before the run
    hs1: float | None = None  # and right after it


def skip_reason(bench: Bench, case: Case) -> str | None:
    """Why a case cannot run on this machine (the row says so instead of failing): the compiled floor without
    Cython or a C compiler."""
    if case.kind == "floor" and case.build == "compiled":
        fb = bench.ctx.floor_compiled
        if fb is None or fb.directory is None:
            return fb.error if fb else "the compiled floor was not built"
    return None


def measure(bench: Bench, case: Case, rnd: int) -> dict[str, Any]:
    if case.kind == "idle":
        return measure_idle(bench, case, rnd)
    skipped = skip_reason(bench, case)
    if skipped:
        return {"round": rnd, "skipped": skipped, "problems": []}
    caddy_traced = case.kind == "caddy" and case.telemetry != "off"
    sink0 = bench.sink.quiet() if case.kind == "gatewatch" or caddy_traced else None
    t = start_target(bench, case, rnd)
    problems: list[str] = []
    close = case.tls == "handshakes"
    try:
        probed = probe(t.url, bench.ctx.tls) if case.tls != "off" else None
        warm = run_wrk(bench.ctx, t.url, case.conns, bench.ctx.args.warmup, f"warmup-{case.name}", close)
        settle(t, bench.sink)
        # Caddy counts nothing it could drop: its spans are settled once the sink has one per request so far
        spans_due = (sink0["spans"] + warm["requests"]) if caddy_traced and sink0 is not None else None
        win = _measured_run(bench, case, t, spans_due)
        if not win.settled:
            problems.append("telemetry did not settle within 20 s after the run")
        alive = all(p.alive() for p in t.procs)
    finally:
        problems += stop_target(t)
    if not alive:
        problems.append("CRASH: the proxy process died during the measurement")
    r = _wrk_numbers(rnd, win)
    _check_load(bench.ctx, case, r, problems)
    build = _build(case, t, problems)
    if build is not None:
        r["build"] = build
    if case.kind != "direct":
        _proxy_cpu(bench, case, r, win)
    else:
        r["backend_cpu_s_per_1k"] = (win.cpu1 - win.cpu0) / r["requests"] * 1000 if r["requests"] else None
    if case.kind == "gatewatch":
        _gateway_telemetry(bench.gateway, case, r, win, sink0, problems)
    if caddy_traced and sink0 is not None:
        _caddy_spans(bench, r, win, warm, sink0, problems)
    if probed is not None:
        _tls_numbers(case, r, win, probed, problems)
    errs = r["errors"]
    if errs["status"]:
        problems.append(f"wrk counted {errs['status']} non-2xx/3xx responses")
    if r["socket_errors"]:
        problems.append(f"wrk socket errors: {errs}")
    r["problems"] = problems
    return r


def _build(case: Case, t: Target, problems: list[str]) -> dict[str, Any] | None:
    """The build a gatewatch or floor row ran in (issue 14), checked against the case's."""
    if case.kind == "gatewatch":
        got, problem = build_check(case, t.info)
        if problem:
            problems.append(problem)
        return got
    if case.kind == "floor":  # the compiled floor's runner refuses to start from anything but the extension module
        return ({"expected": "compiled", "compiled": True, "mode": "compiled (Cython, bench/floor_proxy.py)"}
                if case.build == "compiled" else
                {"expected": "pure", "compiled": False, "mode": "pure Python (bench/floor_proxy.py)"})
    return None


def _sink_reaches(sink, spans: int, timeout_s: float) -> tuple[dict | None, bool]:
    """Until the sink has decoded at least `spans` spans in all (Caddy's batch span processor exports a partial
    batch every 5 s), then until its counts stop moving."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sink.status().get("spans", 0) >= spans:
            return sink.quiet(), True
        time.sleep(0.2)
    return sink.status(), False


def _measured_run(bench: Bench, case: Case, t: Target, spans_due: int | None = None) -> Window:
    ctx, sink = bench.ctx, bench.sink
    quiet = wait_quiet(ctx.args.wait_quiet)
    procs = t.cpu_procs()
    affinity = proc_affinities(procs)
    sink_ps = sink.tree() if case.telemetry != "off" else []
    ours = our_pids()
    other0 = other_cpu_snapshot(ours)
    cpu0, sink_cpu0, busy0 = cpu_seconds(procs), cpu_seconds(sink_ps), percpu_busy()
    by0 = cpu_by_process(procs)
    be0 = bench.backend.status()
    hs0 = t.handshakes() if t.handshakes else None
    w0 = time.monotonic()
    w = run_wrk(ctx, t.url, case.conns, ctx.args.duration, case.name, close=case.tls == "handshakes")
    wall = time.monotonic() - w0
    cpu_mid, busy_mid = cpu_seconds(procs), percpu_busy()
    other = other_cpu_seconds(other0, other_cpu_snapshot(ours))
    hs1 = t.handshakes() if t.handshakes else None
    be1 = bench.backend.status()
    m, s, settled = settle(t, sink)
    if spans_due is not None:  # Caddy with tracing: until the spans of the warm-up and the run are in
        s, settled = _sink_reaches(sink, spans_due + w["requests"], 8.0)
    cpu1, sink_cpu1 = cpu_seconds(procs), cpu_seconds(sink_ps)
    by1 = cpu_by_process(procs)
    return Window(wrk=w, wall=wall, quiet=quiet, procs=procs, affinity=affinity, cpu0=cpu0, cpu_mid=cpu_mid,
                  cpu1=cpu1, sink_cpu0=sink_cpu0, sink_cpu1=sink_cpu1, busy0=busy0, busy_mid=busy_mid, by0=by0,
                  by1=by1, other=other, be0=be0, be1=be1, metrics=m, sink_counts=s, settled=settled, hs0=hs0,
                  hs1=hs1)


def _wrk_numbers(rnd: int, win: Window) -> dict[str, Any]:
    """The record's first fields: wrk's rate, latency and errors, how busy each CPU was, and the backend's
    connection counts."""
    w, wall = win.wrk, win.wall
    reqs = w["requests"]
    dur_s = w["duration_us"] / 1e6
    lat = w["latency_us"]
    pct = lat["percentiles"]
    errs = w["errors"]
    r: dict[str, Any] = {
        "round": rnd, "rps": reqs / dur_s if dur_s else 0.0, "requests": reqs, "duration_s": round(dur_s, 3),
        "p50_ms": pct["50"] / 1000, "p75_ms": pct["75"] / 1000, "p90_ms": pct["90"] / 1000,
        "p99_ms": pct["99"] / 1000, "p999_ms": pct["99.9"] / 1000, "max_ms": lat["max"] / 1000,
        "mean_ms": lat["mean"] / 1000, "errors": errs, "non_2xx_3xx": errs["status"],
        "socket_errors": errs["connect"] + errs["read"] + errs["write"] + errs["timeout"],
        "cpu_busy_per_cpu": busy_fraction(win.busy0, win.busy_mid),  # during the wrk run, per CPU of the machine
        # cores' worth of CPU that processes NOT started by this harness used during the run (noise)
        "other_cpu_util": round(win.other / wall, 3) if wall else None,
    }
    if win.quiet is not None:
        r["other_cpu_util_before"] = win.quiet
    be0, be1 = win.be0, win.be1
    if be0 and be1:
        # connections the backend accepted during the run (how well the proxy reuses upstream connections),
        # requests it served, and connections still open to it afterwards (idle keep-alive the proxy holds);
        # the -1s are the status requests themselves
        r["backend_conns_opened"] = be1["accepts"] - be0["accepts"] - 1
        r["backend_requests"] = be1["requests"] - be0["requests"] - 1
        r["backend_conns_open_after"] = be1["active"] - 1
    return r


def _tls_numbers(case: Case, r: dict[str, Any], win: Window, probed: dict, problems: list[str]) -> None:
    """What the proxy negotiated (tls.probe, before the warm-up), and the handshakes it counted per request wrk
    completed during the run: about 1 in the handshake cases (every request on a new connection, a full
    handshake as no ticket was issued), about 0 on keep-alive connections."""
    r["tls_version"], r["tls_cipher"] = probed["version"], probed["cipher"]
    r["tls_ticket_issued"], r["tls_resumed"] = probed["ticket_issued"], probed["resumed"]
    if win.hs0 is not None and win.hs1 is not None and r["requests"]:
        r["tls_handshakes"] = win.hs1 - win.hs0
        r["tls_handshakes_per_request"] = round((win.hs1 - win.hs0) / r["requests"], 4)
    if case.tls != "handshakes":
        return
    if probed["ticket_issued"] or probed["resumed"]:
        problems.append(f"TLS RESUMPTION: the proxy issued a session ticket ({probed['ticket_issued']}) or resumed "
                        f"an offered session ({probed['resumed']}): not every handshake was a full one")
    per = r.get("tls_handshakes_per_request")
    if per is None or per < 0.95:
        problems.append(f"TLS HANDSHAKES: {per} handshakes per request, not 1: connections were reused")


def _check_load(ctx: Context, case: Case, r: dict[str, Any], problems: list[str]) -> None:
    """Flag a run whose load CPU was saturated or during which other processes used the machine."""
    busy = r["cpu_busy_per_cpu"]
    busy_load = busy[ctx.load_cpu] if ctx.pinned and ctx.load_cpu < len(busy) else 0.0
    if case.kind != "direct" and busy_load >= LOAD_SATURATED:
        r["load_cpu_saturated"] = True
        problems.append(f"LOAD CPU SATURATED: CPU {ctx.load_cpu} (wrk, backend, sink and anything the proxy "
                        f"put there) was {busy[ctx.load_cpu]:.0%} busy; the rate may be "
                        f"limited by that core, not only by the proxy's")
    if r["other_cpu_util"] is not None and r["other_cpu_util"] > NOISY:
        problems.append(f"NOISY: other processes on this machine used {r['other_cpu_util']:.2f} cores during "
                        f"the run")


def _proxy_cpu(bench: Bench, case: Case, r: dict[str, Any], win: Window) -> None:
    """The proxy tree's CPU: in all and by process per 1,000 requests (until its telemetry was exported), and
    during the wrk run per second of wall time. Processes that left the proxy's CPU become a finding."""
    ctx = bench.ctx
    reqs = r["requests"]
    cpu = win.cpu1 - win.cpu0
    r["cpu_s"] = round(cpu, 4)
    r["cpu_s_per_1k"] = cpu / reqs * 1000 if reqs else None  # includes exporting what the run produced
    r["processes"] = len(win.procs)
    if case.kind == "gatewatch":
        r["source_hash"] = bench.gateway.last_source_hash
    r["cpu_s_per_1k_by_process"] = {k: round((v - win.by0.get(k, 0.0)) / reqs * 1000, 4) if reqs else None
                                    for k, v in win.by1.items()}
    r["process_affinity"] = win.affinity
    if ctx.pinned and case.pinned:
        away = [a for a in win.affinity if a["cpus"] and a["cpus"] != [ctx.proxy_cpu]]
        if away:
            note = (f"{case.kind}: process(es) of the proxy under test run outside the proxy's CPU "
                    f"{ctx.proxy_cpu}: " + ", ".join(f"{a['name']} on CPU {a['cpus']}" for a in away)
                    + f" — they share CPU {ctx.load_cpu} with wrk, the backend and the OTLP sink")
            if note not in ctx.notes:
                ctx.notes.append(note)
    # CPU of the proxy's process tree during the wrk run / wall time: 1.0 = one core busy. It can exceed
    # 1.0 when the proxy has processes or threads running on another core.
    r["proxy_cpu_util"] = round((win.cpu_mid - win.cpu0) / win.wall, 3) if win.wall else None


def _gateway_telemetry(gateway: Gateway, case: Case, r: dict[str, Any], win: Window, sink0: dict | None,
                       problems: list[str]) -> None:
    """How telemetry was set, what gatewatch counted (exported, dropped, requests by outcome), what the sink
    decoded and the sink's CPU."""
    r["telemetry_mode"] = {"off": gateway.off_mode, "full": "sampling ratio 1.0 (default)",
                           "sampled": "OTEL_TRACES_SAMPLER=traceidratio OTEL_TRACES_SAMPLER_ARG=0.1"}[case.telemetry]
    m, s = win.metrics, win.sink_counts
    if m is not None:
        _gateway_counts(case, r, m, problems)
    if s is not None and sink0 is not None:
        _sink_counts(case, r, m, s, sink0, problems)
    if case.telemetry != "off":
        reqs = r["requests"]
        r["sink_cpu_s"] = round(win.sink_cpu1 - win.sink_cpu0, 4)
        r["sink_cpu_s_per_1k"] = (win.sink_cpu1 - win.sink_cpu0) / reqs * 1000 if reqs else None
    if r.get("dropped_total"):
        problems.append(f"DROPPED telemetry: {r['telemetry_dropped']}")


def _gateway_counts(case: Case, r: dict[str, Any], m: dict, problems: list[str]) -> None:
    r["telemetry_exported"] = m["exported"]
    r["telemetry_dropped"] = m["dropped"]
    r["dropped_total"] = sum(m["dropped"].values())
    r["exported_total"] = sum(m["exported"].values())
    r["gateway_requests"] = m["requests"]
    r["requests_by_outcome"] = m["requests_by_outcome"]
    odd = {k: v for k, v in m["requests_by_outcome"].items() if not k.startswith("proxied/2")}
    aborts = sum(v for k, v in odd.items() if k.startswith("client_abort/"))
    r["client_aborts"] = aborts
    # wrk closes its connections with requests in flight when a run ends: up to one abort per
    # connection per run (warm-up + measurement) is the load generator, not the gateway.
    if aborts > 2 * case.conns:
        problems.append(f"{aborts:.0f} client_abort outcomes (more than wrk's stops explain)")
    other = {k: v for k, v in odd.items() if not k.startswith("client_abort/")}
    if other:
        problems.append(f"gatewatch recorded non-proxied or non-2xx outcomes: {other}")


def _sink_counts(case: Case, r: dict[str, Any], m: dict | None, s: dict, sink0: dict, problems: list[str]) -> None:
    """What the sink decoded during this case, checked against what gatewatch counted as exported."""
    r["sink_spans"] = s.get("spans", 0) - sink0.get("spans", 0)
    r["sink_logs"] = s.get("logs", 0) - sink0.get("logs", 0)
    r["sink_spans_by_kind"] = {k: v - sink0.get("spans_by_kind", {}).get(k, 0)
                               for k, v in s.get("spans_by_kind", {}).items()}
    r["sink_logs_by_event"] = {k: v - sink0.get("logs_by_event", {}).get(k, 0)
                               for k, v in s.get("logs_by_event", {}).items()}
    if case.telemetry != "off" and m is not None:
        exp = m["exported"]
        if r["sink_spans"] < exp.get("traces", 0) or r["sink_logs"] < exp.get("logs", 0):
            problems.append(f"the sink decoded fewer items ({r['sink_spans']} spans, {r['sink_logs']} "
                            f"logs) than gatewatch counted as exported ({exp})")
    if case.telemetry == "off" and (r["sink_spans"] or r["sink_logs"] or r.get("exported_total")):
        problems.append(f"telemetry OFF still exported ({r.get('telemetry_exported')}, sink got "
                        f"{r['sink_spans']} spans / {r['sink_logs']} logs)")


def _caddy_spans(bench: Bench, r: dict[str, Any], win: Window, warm: dict, sink0: dict,
                 problems: list[str]) -> None:
    """Caddy's spans as the sink decoded them, counted once Caddy has stopped (it flushes its batch span processor
    on shutdown): one SERVER span per request is due for every request of the warm-up and the run (the readiness
    probes add a few). Caddy exposes no count of spans it dropped (OpenTelemetry Go's batch span processor drops
    when its queue of 2,048 is full), so the spans that never arrived are its drop counter here."""
    final = bench.sink.quiet(timeout_s=8.0) or {}
    due = warm["requests"] + r["requests"]
    spans = final.get("spans", 0) - sink0.get("spans", 0)
    r["sink_spans"] = spans
    r["sink_spans_by_kind"] = {k: v - sink0.get("spans_by_kind", {}).get(k, 0)
                               for k, v in final.get("spans_by_kind", {}).items()}
    r["spans_due"] = due
    r["spans_missing"] = max(0, due - spans)
    r["dropped_total"] = r["spans_missing"]
    reqs = r["requests"]
    r["sink_cpu_s"] = round(win.sink_cpu1 - win.sink_cpu0, 4)
    r["sink_cpu_s_per_1k"] = (win.sink_cpu1 - win.sink_cpu0) / reqs * 1000 if reqs else None
    if r["spans_missing"]:
        problems.append(f"DROPPED spans: Caddy served {due} requests (warm-up and run) and the sink decoded "
                        f"{spans} spans: {r['spans_missing']} never arrived")
