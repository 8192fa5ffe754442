"""The ratios of issues 3 and 14 (and issue 16's TLS rows) and their targets: `compute_ratios` takes each ratio
within every round (both sides measured minutes apart at most) and reports the median over rounds; `check_targets`
compares them with `TARGETS` (the compiled build: issue 14's targets and issue 3's that still stand) and
`PURE_TARGETS` (the same ratios of the pure build, for comparison, and issue 14 step 1's pure-Python target), and
checks that no telemetry case dropped anything. A target whose rows did not run in the build they name (a
"compiled" row that ran pure, say) is `met: None` with the reason: it was not measured. The TLS, Caddy and floor
ratios have no target.
"""

from __future__ import annotations

from typing import Any

from .cases import Case
from .common import median

ALGORITHMS = ("round_robin", "weighted_round_robin")

# name -> (how, case a, case b): "rps" a ÷ b by req/s; "cpu" b's CPU per request ÷ a's (proxy process only);
# "p50" a's p50 − b's p50 in ms; "pool" (a1 ÷ a3) − (haproxy-1000 ÷ haproxy-3); "value" a's field b.
RATIOS: dict[str, tuple[str, str, str]] = {
    "direct_vs_haproxy": ("rps", "direct", "haproxy"),
    "nginx_vs_haproxy": ("rps", "nginx", "haproxy"),
    "caddy_vs_haproxy": ("rps", "caddy", "haproxy"),
    "caddy_tracing_vs_haproxy": ("rps", "caddy-tracing", "haproxy"),
    "caddy_tracing_vs_caddy": ("rps", "caddy-tracing", "caddy"),
    "floor_vs_haproxy": ("rps", "python-floor", "haproxy"),
    "floor_compiled_vs_haproxy": ("rps", "python-floor-compiled", "haproxy"),
    "floor_plus_vs_haproxy": ("rps", "python-floor-plus", "haproxy"),
    "floor_plus_compiled_vs_haproxy": ("rps", "python-floor-plus-compiled", "haproxy"),
    "floor_compiled_vs_floor": ("rps", "python-floor-compiled", "python-floor"),
    # the floor plus the least a gateway does per request (bench/floor_plus.py), by CPU per request
    "floor_plus_vs_haproxy_cpu": ("cpu", "python-floor-plus", "haproxy"),
    "floor_plus_compiled_vs_haproxy_cpu": ("cpu", "python-floor-plus-compiled", "haproxy"),
    "floor_plus_compiled_vs_floor_compiled_cpu": ("cpu", "python-floor-plus-compiled", "python-floor-compiled"),
    # the compiled build (the plain gatewatch-* rows)
    "off_vs_haproxy": ("rps", "gatewatch-off", "haproxy"),
    "full_vs_haproxy": ("rps", "gatewatch-full", "haproxy"),
    "sampled_vs_haproxy": ("rps", "gatewatch-sampled", "haproxy"),
    "full_vs_off": ("rps", "gatewatch-full", "gatewatch-off"),
    "sampled_vs_off": ("rps", "gatewatch-sampled", "gatewatch-off"),
    "off_vs_floor_compiled": ("rps", "gatewatch-off", "python-floor-compiled"),
    "off_vs_caddy": ("rps", "gatewatch-off", "caddy"),
    "full_vs_caddy_tracing": ("rps", "gatewatch-full", "caddy-tracing"),
    # the same two ratios by the proxy core's CPU per request instead of throughput: unaffected by the load
    # core, which the exporter shares with wrk, the backend and the sink
    "full_vs_off_proxy_cpu": ("cpu", "gatewatch-full", "gatewatch-off"),
    "sampled_vs_off_proxy_cpu": ("cpu", "gatewatch-sampled", "gatewatch-off"),
    "added_latency_ms_p50": ("p50", "latency-1conn-full", "latency-1conn-direct"),
    # the pure build (GATEWATCH_PURE_PYTHON=1), for comparison
    "pure_off_vs_haproxy": ("rps", "gatewatch-pure-off", "haproxy"),
    "pure_full_vs_haproxy": ("rps", "gatewatch-pure-full", "haproxy"),
    "pure_sampled_vs_haproxy": ("rps", "gatewatch-pure-sampled", "haproxy"),
    "pure_full_vs_off": ("rps", "gatewatch-pure-full", "gatewatch-pure-off"),
    "pure_sampled_vs_off": ("rps", "gatewatch-pure-sampled", "gatewatch-pure-off"),
    "pure_off_vs_floor": ("rps", "gatewatch-pure-off", "python-floor"),
    "pure_full_vs_off_proxy_cpu": ("cpu", "gatewatch-pure-full", "gatewatch-pure-off"),
    "pure_sampled_vs_off_proxy_cpu": ("cpu", "gatewatch-pure-sampled", "gatewatch-pure-off"),
    "pure_added_latency_ms_p50": ("p50", "latency-1conn-pure-full", "latency-1conn-direct"),
    # what compiling gained, end to end (compiled ÷ pure) and on the proxy's core (pure CPU ÷ compiled CPU)
    "off_vs_pure_off": ("rps", "gatewatch-off", "gatewatch-pure-off"),
    "full_vs_pure_full": ("rps", "gatewatch-full", "gatewatch-pure-full"),
    "sampled_vs_pure_sampled": ("rps", "gatewatch-sampled", "gatewatch-pure-sampled"),
    "off_vs_pure_off_proxy_cpu": ("cpu", "gatewatch-off", "gatewatch-pure-off"),
    "floor_compiled_vs_floor_proxy_cpu": ("cpu", "python-floor-compiled", "python-floor"),
    "routes_1000_vs_10": ("rps", "routes-1000", "routes-10"),
    "haproxy_pool_1000_vs_3": ("rps", "pool-1000-haproxy", "pool-3-haproxy"),
    "workers_2_vs_1": ("rps", "workers-2", "workers-1"),
    # TLS termination (issue 16): gatewatch against HAProxy on keep-alive connections and on a new connection
    # and full handshake per request, what TLS costs gatewatch, and what it costs HAProxy
    "tls_vs_haproxy_tls": ("rps", "gatewatch-tls", "haproxy-tls"),
    "tls_handshakes_vs_haproxy_tls_handshakes": ("rps", "gatewatch-tls-handshakes", "haproxy-tls-handshakes"),
    "tls_vs_off": ("rps", "gatewatch-tls", "gatewatch-off"),
    "haproxy_tls_vs_haproxy": ("rps", "haproxy-tls", "haproxy"),
    # the same by the proxy process's CPU per request (HAProxy's ÷ gatewatch's, gatewatch-off's ÷
    # gatewatch-tls's): unaffected by the load core, which wrk's own handshakes saturate
    "tls_vs_haproxy_tls_proxy_cpu": ("cpu", "gatewatch-tls", "haproxy-tls"),
    "tls_handshakes_vs_haproxy_tls_handshakes_proxy_cpu": ("cpu", "gatewatch-tls-handshakes",
                                                           "haproxy-tls-handshakes"),
    "tls_vs_off_proxy_cpu": ("cpu", "gatewatch-tls", "gatewatch-off"),
    "rss_kib_per_idle_conn": ("value", "idle-10k", "rss_kib_per_conn"),
}
# per algorithm (a dict in the JSON): pool-1000 ÷ pool-3, and that minus HAProxy's own ratio on the same pools
# (issue 14: "a 1,000-instance pool loses no more, relative to a 3-instance pool, than HAProxy loses": ≥ 0)
POOL_RATIOS = {
    "pool_1000_vs_3": ("gatewatch", ALGORITHMS),
    "pool_1000_vs_3_minus_haproxy": ("gatewatch", ALGORITHMS),
    "pure_pool_1000_vs_3": ("pure", ("round_robin",)),
    "pure_pool_1000_vs_3_minus_haproxy": ("pure", ("round_robin",)),
}

# The targets for the compiled build (the plain gatewatch-* rows): issue 14's, and issue 3's that still stand.
TARGETS: dict[str, tuple[str, float, str]] = {
    "off_vs_haproxy": (">=", 0.7, "14"),
    "full_vs_haproxy": (">=", 0.5, "14"),
    "sampled_vs_off": (">=", 0.9, "14"),
    "added_latency_ms_p50": ("<=", 0.5, "14"),
    "pool_1000_vs_3_minus_haproxy.round_robin": (">=", 0.0, "14"),
    "pool_1000_vs_3_minus_haproxy.weighted_round_robin": (">=", 0.0, "14"),
    "full_vs_off": (">=", 0.75, "3"),
    "routes_1000_vs_10": (">=", 0.9, "3"),
    "pool_1000_vs_3.round_robin": (">=", 0.9, "3"),
    "pool_1000_vs_3.weighted_round_robin": (">=", 0.9, "3"),
    "rss_kib_per_idle_conn": ("<=", 20.0, "3"),
}
# The pure build: issue 14 step 1's target (pure Python, ≥ 0.5× the pure floor), and the compiled build's
# targets applied to the pure rows for comparison (not targets of the pure build: "comparison" in the JSON).
PURE_TARGETS: dict[str, tuple[str, float, str]] = {
    "pure_off_vs_floor": (">=", 0.5, "14 step 1"),
    "pure_off_vs_haproxy": (">=", 0.7, "comparison"),
    "pure_full_vs_haproxy": (">=", 0.5, "comparison"),
    "pure_sampled_vs_off": (">=", 0.9, "comparison"),
    "pure_added_latency_ms_p50": ("<=", 0.5, "comparison"),
    "pure_pool_1000_vs_3_minus_haproxy.round_robin": (">=", 0.0, "comparison"),
}


class _Rounds:
    """Per-round values of the raw records, and ratios and differences of them taken within each round."""

    def __init__(self, raw: dict[str, list[dict]], rounds: int):
        self.raw = raw
        self.rounds = rounds

    def value(self, name: str, rnd: int, key: str) -> float | None:
        for r in self.raw.get(name, []):
            if r.get("round") == rnd and "failed" not in r and "skipped" not in r:
                if key == "proxy_cpu":  # CPU-s/1k of the proxy process, never the tree's total
                    by = r.get("cpu_s_per_1k_by_process") or {}
                    if len(by) == 1:  # HAProxy, Caddy, the floor: one process
                        return next(iter(by.values()))
                    return by.get("gatewatch", by.get("haproxy"))
                return r.get(key)
        return None

    def values(self, name: str, key: str) -> list[float | None]:
        return [self.value(name, rnd, key) for rnd in range(self.rounds)]

    def ratio(self, a: str, b: str, key: str = "rps") -> list[float | None]:
        out = []
        for rnd in range(self.rounds):
            x, y = self.value(a, rnd, key), self.value(b, rnd, key)
            out.append(x / y if x is not None and y else None)
        return out

    def capacity(self, a: str, b: str) -> list[float | None]:
        """How many requests the proxy's core serves with `a` per request served with `b`: b's CPU ÷ a's."""
        return self.ratio(b, a, "proxy_cpu")

    def difference(self, a: str, b: str, key: str) -> list[float | None]:
        out = []
        for rnd in range(self.rounds):
            x, y = self.value(a, rnd, key), self.value(b, rnd, key)
            out.append(x - y if x is not None and y is not None else None)
        return out


def pool_cases(build: str, alg: str) -> tuple[str, str]:
    mid = "pure-" if build == "pure" else ""
    return f"pool-1000-{mid}{alg}", f"pool-3-{mid}{alg}"


def compute_ratios(raw: dict[str, list[dict]], rounds: int) -> tuple[dict, dict]:
    """(median over rounds, per-round values) of every ratio; None where a side is missing, failed or skipped."""
    pr = _Rounds(raw, rounds)
    per: dict[str, Any] = {}
    for name, (how, a, b) in RATIOS.items():
        if how == "rps":
            per[name] = pr.ratio(a, b)
        elif how == "cpu":
            per[name] = pr.capacity(a, b)
        elif how == "p50":
            per[name] = pr.difference(a, b, "p50_ms")
        else:
            per[name] = pr.values(a, b)
    haproxy = pr.ratio("pool-1000-haproxy", "pool-3-haproxy")
    for name, (build, algs) in POOL_RATIOS.items():
        per[name] = {}
        for alg in algs:
            own = pr.ratio(*pool_cases(build, alg))
            per[name][alg] = ([x - h if x is not None and h is not None else None for x, h in zip(own, haproxy)]
                              if name.endswith("_minus_haproxy") else own)
    med: dict[str, Any] = {}
    for k, v in per.items():
        med[k] = {a: median(x) for a, x in v.items()} if isinstance(v, dict) else median(v)
    return med, per


def target_cases(name: str) -> list[str]:
    """The rows a target's value comes from."""
    key, _, alg = name.partition(".")
    if key in POOL_RATIOS:
        build = POOL_RATIOS[key][0]
        cases = list(pool_cases(build, alg))
        return cases + (["pool-1000-haproxy", "pool-3-haproxy"] if key.endswith("_minus_haproxy") else [])
    _, a, b = RATIOS[key]
    return [a] if RATIOS[key][0] == "value" else [a, b]


def _check(name: str, op: str, goal: float, issue: str, build: str, ratios: dict, med: dict) -> dict[str, Any]:
    key, _, sub = name.partition(".")
    v = ratios.get(key) if not sub else (ratios.get(key) or {}).get(sub)
    met = None if v is None else (v >= goal if op == ">=" else v <= goal)
    out = {"value": v, "target": f"{op} {goal}", "met": met, "build": build, "issue": issue}
    wrong = [f"{c} ran {med[c]['build'].get('mode')!r}" for c in target_cases(name)
             if c in med and med[c].get("build_ok") is False]
    if wrong and v is not None:  # measured, but not on the build it is about: not a measurement of the target
        out.update(met=None, invalid="; ".join(wrong))
    return out


def _dropped(med: dict[str, dict], cases: list[Case], build: str) -> dict[str, Any]:
    dropped = {c.name: med[c.name].get("dropped_total_all_rounds") for c in cases
               if c.kind == "gatewatch" and c.telemetry != "off" and c.build == build
               and not med[c.name].get("failed") and not med[c.name].get("skipped")}
    return {"value": dropped, "target": "0 in every telemetry case", "build": build,
            "issue": "14" if build == "compiled" else "comparison",
            "met": all(not v for v in dropped.values()) if dropped else None}


def check_targets(ratios: dict[str, Any], med: dict[str, dict], cases: list[Case]) -> dict[str, dict]:
    """Every target with its value and whether it was met (None: not measured, or measured on the wrong build)."""
    targets = {name: _check(name, op, goal, issue, "compiled", ratios, med)
               for name, (op, goal, issue) in TARGETS.items()}
    targets["no_telemetry_dropped"] = _dropped(med, cases, "compiled")
    targets.update({name: _check(name, op, goal, issue, "pure", ratios, med)
                    for name, (op, goal, issue) in PURE_TARGETS.items()})
    targets["pure_no_telemetry_dropped"] = _dropped(med, cases, "pure")
    return targets
