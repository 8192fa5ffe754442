"""Decision bookkeeping: what was decided, by which rule, why — appended to the request's `RequestRecord`.

Pure functions of the record, the decision and a timestamp; the engine calls them at the moment it decides.
They shape the span attributes (`rec.lb`, `rec.policies`) and the decision-log records (`DecisionRecord`) that
the recorder turns into telemetry once, at the end. Closed vocabularies only (`telemetry.names`).

Primitives: `route`, `policy`, `late_size_refusal`, `pick` (returns the attempt span's LB attributes), `retry`,
`failover`.
"""

from __future__ import annotations

from gatewatch.balancer.algorithms import Endpoint, NoHealthyEndpoint
from gatewatch.balancer.config import Algorithm
from gatewatch.balancer.pool import EXCLUDED_LISTED
from gatewatch.balancer.retry import Failure
from gatewatch.edge.policies.base import PolicyVerdict
from gatewatch.edge.policies.bodies import BodyTooLarge
from gatewatch.edge.routing import NoRoute, RouteMatch
from gatewatch.telemetry.context import DecisionRecord, RequestRecord
from gatewatch.telemetry.names import Attr, DecisionKind, Layer, PolicyReason, Reason, Verdict

BALANCER = Layer.BALANCER.value
MATCHED = Reason.ROUTE_MATCHED.value
# Keyed by the Algorithm member (a StrEnum hashes as its value); plain-str values, because records cross a pipe
# to the exporter and an Enum's `.value` costs more than the dict lookup.
ALGORITHM_NAME = {a: a.value for a in Algorithm}
PICK_REASON = {"round_robin": Reason.PICK_ROUND_ROBIN.value, "weighted_round_robin": Reason.PICK_WEIGHTED.value,
               "random": Reason.PICK_RANDOM.value, "least_request": Reason.PICK_LEAST_REQUEST.value,
               "least_connections": Reason.PICK_LEAST_CONNECTIONS.value, "ring_hash": Reason.PICK_RING_HASH.value,
               "maglev": Reason.PICK_MAGLEV.value}
PICK_AFFINITY = Reason.PICK_AFFINITY.value


def route(rec: RequestRecord, match: RouteMatch | NoRoute, now_ns: int) -> None:
    if isinstance(match, RouteMatch):
        rec.decisions.append(DecisionRecord(
            DecisionKind.ROUTE, match.route.name, "matched", MATCHED, now_ns,
            rec.trace.span_id, {Attr.HTTP_ROUTE: match.template, Attr.UPSTREAM: match.route.upstream}))
    else:
        rec.decisions.append(DecisionRecord(
            DecisionKind.ROUTE, match.nearest or "", "no_match", Reason.ROUTE_NO_MATCH.value, now_ns,
            rec.trace.span_id, {"gatewatch.route.failed_condition": match.reason}))

def policy(rec: RequestRecord, v: PolicyVerdict, now_ns: int) -> None:
    rec.policies.append((v.policy, v.type, v.verdict.value, v.reason))
    if v.verdict is not Verdict.ALLOW:  # allows are summarised on the span and counted, not logged
        rec.decisions.append(DecisionRecord(
            DecisionKind.POLICY, v.policy, v.verdict.value, v.reason, now_ns, rec.trace.span_id,
            {Attr.POLICY_TYPE: v.type, Attr.POLICY_SHADOW: v.verdict is Verdict.SHADOW_DENY or None,
             **v.attributes}))

def late_size_refusal(rec: RequestRecord, err: BodyTooLarge, now_ns: int) -> None:
    reason = PolicyReason.SIZE_TOO_LARGE.value
    rec.policies = [p for p in rec.policies if p[0] != err.policy] + [(err.policy, err.type, "deny", reason)]
    rec.decisions.append(DecisionRecord(DecisionKind.POLICY, err.policy, Verdict.DENY.value, reason,
                                        now_ns, rec.trace.span_id,
                                        {Attr.POLICY_TYPE: err.type, "gatewatch.size.limit_bytes": err.limit,
                                         "gatewatch.size.streamed": True}))

def pick(rec: RequestRecord, pool, picked, by_affinity: bool, key: str | None, now_ns: int) -> dict:
    """Record the pick (decision log + span attributes); return the attributes for the attempt's span."""
    view = pool.view()
    if isinstance(picked, Endpoint):  # session affinity chose; the algorithm was not asked
        algorithm, candidates, excluded = ALGORITHM_NAME[pool.algorithm], len(view.candidates), ()
        reason = PICK_AFFINITY
    else:
        algorithm, candidates, excluded = ALGORITHM_NAME[picked.algorithm], picked.candidates, picked.excluded
        reason = PICK_REASON[algorithm]
    lb = {Attr.LB_ALGORITHM: algorithm, Attr.LB_CANDIDATES: candidates}
    if excluded:
        listed = [f"{i}={why}" for i, why in excluded[:EXCLUDED_LISTED]]
        if len(excluded) > EXCLUDED_LISTED:
            listed.append(f"...+{len(excluded) - EXCLUDED_LISTED} more")
        lb[Attr.LB_EXCLUDED] = tuple(listed)  # hashable: the exporter reuses the encoding of repeated picks
    if view.priority:
        lb[Attr.PRIORITY] = view.priority
    if view.panic:
        lb[Attr.LB_PANIC] = True
    if by_affinity:
        lb[Attr.LB_AFFINITY] = "cookie"
    elif pool.config.hash_key is not None:
        lb[Attr.LB_HASH_KEY_SOURCE] = pool.config.hash_key.describe() + ("" if key is not None else " (absent)")
    rec.lb = lb
    span = rec.balance_span_id or rec.trace.span_id
    if isinstance(picked, NoHealthyEndpoint):
        overflow = picked.overflow
        rec.decisions.append(DecisionRecord(
            DecisionKind.PICK, pool.name, "overflow" if overflow else "no_candidates",
            (Reason.PICK_OVERFLOW if overflow else Reason.PICK_NO_CANDIDATES).value, now_ns, span,
            {Attr.UPSTREAM: pool.name, **lb}, BALANCER))
        return lb
    ep = picked if isinstance(picked, Endpoint) else picked.endpoint
    in_flight = pool.in_flight[ep.id]
    rec.decisions.append(DecisionRecord(
        DecisionKind.PICK, pool.name, "picked", reason, now_ns, span,
        {Attr.UPSTREAM: pool.name, **lb, Attr.INSTANCE: ep.id, Attr.ZONE: ep.zone, Attr.LB_WEIGHT: ep.weight,
         Attr.LB_IN_FLIGHT: in_flight}, BALANCER))
    return {**lb, Attr.LB_WEIGHT: ep.weight, Attr.LB_IN_FLIGHT: in_flight}

def retry(rec: RequestRecord, route: str, verdict, attempts_made: int, budget_left: int,
                  instance: str, kind: Failure, now_ns: int) -> None:
    rec.decisions.append(DecisionRecord(
        DecisionKind.RETRY, route, "retry" if verdict.retry else "refused", verdict.reason, now_ns,
        rec.balance_span_id or rec.trace.span_id,
        {Attr.UPSTREAM: rec.upstream, Attr.INSTANCE: instance, Attr.RETRY_ATTEMPT: attempts_made,
         Attr.RETRY_BUDGET_REMAINING: budget_left, Attr.RETRY_FAILURE: kind.value},
        BALANCER if rec.balance_span_id else None))

def failover(rec: RequestRecord, pool: str, from_instance: str, to_instance: str, now_ns: int) -> None:
    rec.decisions.append(DecisionRecord(
        DecisionKind.FAILOVER, pool, "failover", Reason.FAILOVER_RETRY_OTHER_INSTANCE.value, now_ns,
        rec.balance_span_id or rec.trace.span_id,
        {Attr.UPSTREAM: pool, Attr.FAILOVER_FROM: from_instance, Attr.FAILOVER_TO: to_instance}, BALANCER))
