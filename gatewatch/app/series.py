"""Counters and gauges at 0 from the start, for every label set the config makes known.

A counter created on its first event starts at 1, and `increase()` cannot see a change from nothing: the first
ejection, failover or dropped span would be invisible to an alert (Prometheus's own advice: initialise the
label combinations you know). `init_series(metrics, config)` creates them all — at start and after a reload,
for what the new config adds; series of things a reload removed stay until the process restarts.

What it creates, and from which part of the config:
- per route with retries: `gatewatch_retries_total` for each `retry_on` kind, `..._retry_budget_exhausted_total`;
- per route: `gatewatch_decisions_total` for the route decisions, and the pick and retry decisions that can follow;
- per policy: `gatewatch_policy_verdicts_total` for every (verdict, reason) of its type;
- per route with `upstreams`: `gatewatch_split_requests_total` per side and each reason its split config allows;
  with `mirror`: `gatewatch_mirror_requests_total` per result, `gatewatch_mirror_comparisons_total` per match;
- per route with `aggregate`: `gatewatch_aggregate_calls_total` per call and result, the aggregate decisions;
- per route with `cache`: `gatewatch_cache_requests_total` per (result, reason) it can record, the entries and
  bytes gauges, `gatewatch_cache_evictions_total` per reason, the cache decisions;
- per pool: `gatewatch_failovers_total` per failover reason, `gatewatch_pool_requests_total` per failover kind;
  per instance: `gatewatch_instance_requests_total{outcome="proxied"}`, `gatewatch_health_transitions_total`
  per state, with outlier detection `gatewatch_ejections_total` per enabled reason, with active checks
  `gatewatch_health_probes_total` per result;
- always: `gatewatch_telemetry_dropped_total` per signal and reason, `..._exported_total` per signal,
  `gatewatch_config_reloads_total` per result.
"""

from __future__ import annotations

from gatewatch.balancer.context import PICK_REASON
from gatewatch.balancer.runtime import zero_instance_series
from gatewatch.config import GatewatchConfig
from gatewatch.edge.policies.build import verdicts
from gatewatch.proxy.cache import OUTCOMES as CACHE_OUTCOMES
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import AggregateCall
from gatewatch.telemetry.names import WebSocketEnd
from gatewatch.telemetry.names import (CacheEviction, DecisionKind, DecisionResult, DropReason, FailoverKind, Layer,
                                       MirrorMatch, MirrorResult, Reason, TelemetrySignal)

RETRY_REASON = {"connect_failure": Reason.RETRY_CONNECT_FAILURE, "reset": Reason.RETRY_RESET,
                "timeout": Reason.RETRY_TIMEOUT, "status": Reason.RETRY_STATUS}
FAILOVER_REASONS = (Reason.FAILOVER_RETRY_OTHER_INSTANCE, Reason.FAILOVER_PRIORITY_DEGRADED,
                    Reason.FAILOVER_PRIORITY_RECOVERED, Reason.FAILOVER_PANIC)
REFUSALS = (Reason.RETRY_REFUSED_BUDGET, Reason.RETRY_REFUSED_ATTEMPTS, Reason.RETRY_REFUSED_DEADLINE,
            Reason.RETRY_REFUSED_NOT_IDEMPOTENT, Reason.RETRY_REFUSED_BODY_SENT, Reason.RETRY_REFUSED_NOT_CONFIGURED)


def init_series(m: Metrics, cfg: GatewatchConfig) -> None:
    pools = {p.name: p for p in (cfg.balancer.pools if cfg.balancer else ())}
    for layer, section in ((Layer.EDGE, cfg.edge), (Layer.BALANCER, cfg.balancer)):
        for route in (section.routes if section else ()):
            for upstream in route.upstream_names:  # one, or each side of a weighted split
                _route(m, layer.value, route, upstream, pools.get(upstream))
            _traffic(m, layer.value, route)
            if route.aggregate is not None:
                _aggregate(m, layer.value, route)
            if route.cache is not None:
                _cache(m, layer.value, route.name)
            for reason in WebSocketEnd:  # issue 17: every route may carry WebSocket sessions
                m.websocket_ended.labels(route.name, reason.value)
    for pool in pools.values():
        _pool(m, pool)
    for signal in TelemetrySignal:
        m.telemetry_exported.labels(signal.value)
        for reason in DropReason:
            m.telemetry_dropped.labels(signal.value, reason.value)
    for result in ("ok", "error"):
        m.config_reloads.labels(result)


def _decision(m: Metrics, layer: str, kind: DecisionKind, result: str, reason: str) -> None:
    m.decisions.inc((layer, kind.value, result, reason), 0.0)


def _route(m: Metrics, layer: str, route, upstream: str, pool) -> None:
    _decision(m, layer, DecisionKind.ROUTE, DecisionResult.MATCHED.value, Reason.ROUTE_MATCHED.value)
    _decision(m, layer, DecisionKind.ROUTE, DecisionResult.NO_MATCH.value, Reason.ROUTE_NO_MATCH.value)
    for policy in route.policies:
        for verdict, reason in verdicts(policy):
            m.policy_verdicts.inc((route.name, policy.name, policy.type, verdict, reason), 0.0)
    if pool is not None:
        picked = PICK_REASON[pool.algorithm.value]
        balancer = Layer.BALANCER.value
        _decision(m, balancer, DecisionKind.PICK, DecisionResult.PICKED.value, picked)
        _decision(m, balancer, DecisionKind.PICK, DecisionResult.PICKED.value, Reason.PICK_AFFINITY.value)
        _decision(m, balancer, DecisionKind.PICK, DecisionResult.NO_CANDIDATES.value, Reason.PICK_NO_CANDIDATES.value)
        _decision(m, balancer, DecisionKind.PICK, DecisionResult.OVERFLOW.value, Reason.PICK_OVERFLOW.value)
    retries = route.retries
    if retries.attempts <= 1:
        return
    m.retry_budget_exhausted.labels(route.name, upstream)
    decided = Layer.BALANCER.value if pool is not None else layer
    for kind in retries.retry_on:
        m.retries.labels(route.name, upstream, RETRY_REASON[kind].value)
        _decision(m, decided, DecisionKind.RETRY, DecisionResult.RETRY.value, RETRY_REASON[kind].value)
    for reason in REFUSALS:
        _decision(m, decided, DecisionKind.RETRY, DecisionResult.REFUSED.value, reason.value)
    if pool is not None:
        _decision(m, decided, DecisionKind.FAILOVER, DecisionResult.FAILOVER.value,
                  Reason.FAILOVER_RETRY_OTHER_INSTANCE.value)


def _aggregate(m: Metrics, layer: str, route) -> None:
    """An aggregate route: each call's every result (`AggregateCall`), and the composition's decisions."""
    for call in route.aggregate.calls:
        for result in AggregateCall:
            m.aggregate_calls.labels(route.name, call.name, result.value)
    for result, reason in ((DecisionResult.COMPOSED, Reason.AGGREGATE_ALL_OK),
                           (DecisionResult.PARTIAL, Reason.AGGREGATE_PARTS_OMITTED),
                           (DecisionResult.FAILED, Reason.AGGREGATE_CALL_FAILED)):
        _decision(m, layer, DecisionKind.AGGREGATE, result.value, reason.value)


def _traffic(m: Metrics, layer: str, route) -> None:
    """A weighted split: per side, each reason its config makes possible; a mirror: every result and match."""
    if route.upstreams:
        split = route.split
        chosen = [Reason.SPLIT_WEIGHT]
        overridden = []
        if split is not None and split.sticky is not None:
            chosen.append(Reason.SPLIT_STICKY_HASH if split.sticky.hash_key else Reason.SPLIT_STICKY_COOKIE)
        if split is not None and split.override is not None:
            overridden += [Reason.SPLIT_OVERRIDE_HEADER] if split.override.header else []
            overridden += [Reason.SPLIT_OVERRIDE_COOKIE] if split.override.cookie else []
        for side in route.upstreams:
            for reason in chosen + overridden:
                m.split_requests.inc((route.name, side.name, reason.value), 0.0)
        for reason in chosen:
            _decision(m, layer, DecisionKind.SPLIT, DecisionResult.CHOSEN.value, reason.value)
        for reason in overridden:
            _decision(m, layer, DecisionKind.SPLIT, DecisionResult.OVERRIDDEN.value, reason.value)
    if route.mirror is not None:
        shadow = route.mirror.upstream
        for result in MirrorResult:
            m.mirror_requests.inc((route.name, shadow, result.value), 0.0)
            _decision(m, layer, DecisionKind.MIRROR, result.value, Reason.MIRROR_PERCENT.value)
        for match in MirrorMatch:
            m.mirror_comparisons.inc((route.name, shadow, match.value), 0.0)


def _pool(m: Metrics, pool) -> None:
    for reason in FAILOVER_REASONS:
        m.failovers.labels(pool.name, reason.value)
    for kind in FailoverKind:
        m.pool_requests.inc((pool.name, kind.value), 0.0)
    for inst in pool.instances:
        zero_instance_series(m, pool, inst.instance_id)


def _cache(m: Metrics, layer: str, route: str) -> None:
    for result, reason in CACHE_OUTCOMES:
        m.cache_requests.inc((route, result.value, reason.value), 0.0)
        _decision(m, layer, DecisionKind.CACHE, result.value, reason.value)
    m.cache_entries.labels(route)
    m.cache_bytes.labels(route)
    for reason in CacheEviction:
        m.cache_evictions.labels(route, reason.value)
