"""The results document written to bench/results/ (schema 1): `case_medians` reduces each case's rounds to
medians, `results` assembles the document (settings, machine, medians, ratios, targets, notes, every round's raw
record) and `write_results` writes it as JSON with the rendered table under `table`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .cases import Case
from .common import NOISY, PATH, median
from .ratios import check_targets, compute_ratios

if TYPE_CHECKING:
    from .bench import Bench


def case_medians(cases: list[Case], raw: dict[str, list[dict]]) -> dict[str, dict]:
    """Per case: the median over its successful rounds of every numeric field (and of each CPU's busy fraction),
    how many rounds succeeded, every problem seen, and for gatewatch the telemetry dropped in all rounds."""
    med: dict[str, dict] = {}
    for c in cases:
        skipped = [r["skipped"] for r in raw[c.name] if "skipped" in r]
        if skipped and len(skipped) == len(raw[c.name]):
            med[c.name] = {"skipped": skipped[0]}
            continue
        ok = [r for r in raw[c.name] if "failed" not in r and "skipped" not in r]
        if not ok:
            med[c.name] = {"failed": True}
            continue
        keys = [k for k, v in ok[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and k != "round"]
        med[c.name] = {k: median([r.get(k) for r in ok]) for k in keys}
        if "cpu_busy_per_cpu" in ok[0]:
            med[c.name]["cpu_busy_per_cpu"] = [median([r["cpu_busy_per_cpu"][i] for r in ok])
                                               for i in range(len(ok[0]["cpu_busy_per_cpu"]))]
        med[c.name]["rounds_ok"] = len(ok)
        med[c.name]["problems"] = sorted({p for r in raw[c.name] for p in r.get("problems", [])})
        if c.kind == "gatewatch" or (c.kind == "caddy" and c.telemetry != "off"):
            med[c.name]["dropped_total_all_rounds"] = sum(r.get("dropped_total", 0) or 0 for r in ok)
        builds = [r["build"] for r in ok if "build" in r]
        if builds:  # the mode of every round; a row whose rounds differ shows the odd one
            odd = [b for b in builds if b.get("compiled") != (c.build == "compiled") or b.get("compiled") is None]
            med[c.name]["build"] = odd[0] if odd else builds[0]
            med[c.name]["build_ok"] = not odd
    return med


def settings(bench: Bench) -> dict[str, Any]:
    """The run's settings as recorded."""
    ctx = bench.ctx
    args = ctx.args
    return {
        "quick": args.quick, "rounds": args.rounds, "duration_s": args.duration,
        "warmup_s": args.warmup, "wrk": "wrk -t1 -c32 (latency cases -c1)", "path": PATH,
        "idle_connections": args.idle_conns, "pool_addressing": args.pool_addressing,
        "pinning": ({"proxy_cpu": ctx.proxy_cpu, "load_cpu": ctx.load_cpu,
                     "on_load_cpu": ["wrk", "nginx backend", "otlp sink", "harness"]}
                    if ctx.pinned else "unpinned: only one CPU is usable"),
        "telemetry_off_mode": bench.gateway.off_mode, "nofile_limit": ctx.nofile,
        "wait_quiet_s": args.wait_quiet, "noisy_threshold_cores": NOISY,
        "ratio_method": "median over rounds of the ratio within each round",
        "builds": {"compiled": "gatewatch as installed (pip install -e .: Cython, setup.py), GATEWATCH_PURE_PYTHON "
                               "unset; checked per process (ready file `build.compiled`)",
                   "pure": "GATEWATCH_PURE_PYTHON=1: every hot module from its .py"},
        **({"floor_compiled": ({"error": ctx.floor_compiled.error} if ctx.floor_compiled.error
                               else ctx.floor_compiled.info)} if ctx.floor_compiled else {}),
        **({"tls": {"certificate": "ECDSA P-256 leaf for 127.0.0.1 and localhost, signed by a CA made for the run",
                    "versions": "negotiated (TLS 1.2 at least on both proxies)",
                    "handshake_cases": "wrk -H 'Connection: close'; both proxies with OPENSSL_CONF setting "
                                       "NumTickets = 0 (no session tickets, so no resumption)"}}
           if ctx.tls else {}),
    }


def results(bench: Bench, cases: list[Case], raw: dict[str, list[dict]], mach: dict, tree0: dict, tree1: dict,
            started: dt.datetime, elapsed: float) -> dict[str, Any]:
    med = case_medians(cases, raw)
    ratios, per_round = compute_ratios(raw, bench.ctx.args.rounds)
    targets = check_targets(ratios, med, cases)
    mach["tree_at_start"] = tree0
    mach["tree_at_end"] = tree1
    mach["gatewatch_source_hashes_run"] = sorted(bench.gateway.source_hashes)
    return {
        "schema": 1,
        "started_at": started.isoformat(timespec="seconds"),
        "elapsed_s": round(elapsed, 1),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "settings": settings(bench),
        "machine": mach,
        "medians": med,
        "ratios": ratios,
        "ratios_per_round": per_round,
        "targets": targets,
        "notes": bench.ctx.notes,
        "rounds": raw,
    }


def write_results(res: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=str) + "\n")
