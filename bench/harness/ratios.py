"""The ratios of issue 3 (and issue 16's TLS rows) and their targets: `compute_ratios` takes each ratio within
every round (both sides measured minutes apart at most) and reports the median over rounds; `check_targets`
compares them with `TARGETS` and checks that no telemetry case dropped anything. The TLS ratios have no target.
"""

from __future__ import annotations

from typing import Any

from .cases import Case
from .common import median

# The targets of issue 3 (ratios measured in the same run).
TARGETS = {
    "off_vs_haproxy": (">=", 0.7),
    "full_vs_haproxy": (">=", 0.5),
    "full_vs_off": (">=", 0.75),
    "sampled_vs_off": (">=", 0.9),
    "added_latency_ms_p50": ("<=", 0.5),
    "routes_1000_vs_10": (">=", 0.9),
    "pool_1000_vs_3.round_robin": (">=", 0.9),
    "pool_1000_vs_3.weighted_round_robin": (">=", 0.9),
    "rss_kib_per_idle_conn": ("<=", 20.0),
}


class _Rounds:
    """Per-round values of the raw records, and ratios and differences of them taken within each round."""

    def __init__(self, raw: dict[str, list[dict]], rounds: int):
        self.raw = raw
        self.rounds = rounds

    def value(self, name: str, rnd: int, key: str) -> float | None:
        for r in self.raw.get(name, []):
            if r.get("round") == rnd and "failed" not in r:
                if key == "proxy_cpu":  # CPU-s/1k of the gateway (or HAProxy) process, never the tree's total
                    by = r.get("cpu_s_per_1k_by_process") or {}
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


def compute_ratios(raw: dict[str, list[dict]], rounds: int) -> tuple[dict, dict]:
    """(median over rounds, per-round values) of every ratio; None where a side is missing or failed."""
    pr = _Rounds(raw, rounds)
    per: dict[str, Any] = {
        "direct_vs_haproxy": pr.ratio("direct", "haproxy"),
        "nginx_vs_haproxy": pr.ratio("nginx", "haproxy"),
        "floor_vs_haproxy": pr.ratio("python-floor", "haproxy"),
        "off_vs_floor": pr.ratio("gatewatch-off", "python-floor"),
        "off_vs_haproxy": pr.ratio("gatewatch-off", "haproxy"),
        "full_vs_haproxy": pr.ratio("gatewatch-full", "haproxy"),
        "sampled_vs_haproxy": pr.ratio("gatewatch-sampled", "haproxy"),
        "full_vs_off": pr.ratio("gatewatch-full", "gatewatch-off"),
        "sampled_vs_off": pr.ratio("gatewatch-sampled", "gatewatch-off"),
        # the same two ratios by the proxy core's CPU per request instead of throughput: unaffected by the load
        # core, which the exporter shares with wrk, the backend and the sink
        "full_vs_off_proxy_cpu": pr.capacity("gatewatch-full", "gatewatch-off"),
        "sampled_vs_off_proxy_cpu": pr.capacity("gatewatch-sampled", "gatewatch-off"),
        "routes_1000_vs_10": pr.ratio("routes-1000", "routes-10"),
        "pool_1000_vs_3": {alg: pr.ratio(f"pool-1000-{alg}", f"pool-3-{alg}")
                           for alg in ("round_robin", "weighted_round_robin")},
        "haproxy_pool_1000_vs_3": pr.ratio("pool-1000-haproxy", "pool-3-haproxy"),
        "workers_2_vs_1": pr.ratio("workers-2", "workers-1"),
        # TLS termination (issue 16): gatewatch against HAProxy on keep-alive connections and on a new connection
        # and full handshake per request, what TLS costs gatewatch, and what it costs HAProxy
        "tls_vs_haproxy_tls": pr.ratio("gatewatch-tls", "haproxy-tls"),
        "tls_handshakes_vs_haproxy_tls_handshakes": pr.ratio("gatewatch-tls-handshakes", "haproxy-tls-handshakes"),
        "tls_vs_off": pr.ratio("gatewatch-tls", "gatewatch-off"),
        "haproxy_tls_vs_haproxy": pr.ratio("haproxy-tls", "haproxy"),
        # the same by the proxy process's CPU per request (HAProxy's ÷ gatewatch's, gatewatch-off's ÷
        # gatewatch-tls's): unaffected by the load core, which wrk's own handshakes saturate
        "tls_vs_haproxy_tls_proxy_cpu": pr.capacity("gatewatch-tls", "haproxy-tls"),
        "tls_handshakes_vs_haproxy_tls_handshakes_proxy_cpu": pr.capacity("gatewatch-tls-handshakes",
                                                                          "haproxy-tls-handshakes"),
        "tls_vs_off_proxy_cpu": pr.capacity("gatewatch-tls", "gatewatch-off"),
        "added_latency_ms_p50": pr.difference("latency-1conn-full", "latency-1conn-direct", "p50_ms"),
        "rss_kib_per_idle_conn": pr.values("idle-10k", "rss_kib_per_conn"),
    }
    med: dict[str, Any] = {}
    for k, v in per.items():
        if isinstance(v, dict):
            med[k] = {a: median(x) for a, x in v.items()}
        else:
            med[k] = median(v)
    return med, per


def check_targets(ratios: dict[str, Any], med: dict[str, dict], cases: list[Case]) -> dict[str, dict]:
    """Every target with its value and whether it was met (None: not measured)."""
    targets = {}
    for name, (op, goal) in TARGETS.items():
        v = ratios.get(name) if "." not in name else (ratios.get(name.split(".")[0]) or {}).get(name.split(".")[1])
        met = None if v is None else (v >= goal if op == ">=" else v <= goal)
        targets[name] = {"value": v, "target": f"{op} {goal}", "met": met}
    dropped = {c.name: med[c.name].get("dropped_total_all_rounds") for c in cases
               if c.kind == "gatewatch" and c.telemetry != "off" and not med[c.name].get("failed")}
    targets["no_telemetry_dropped"] = {"value": dropped, "target": "0 in every telemetry case",
                                       "met": all(not v for v in dropped.values()) if dropped else None}
    return targets
