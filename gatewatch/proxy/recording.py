"""The recording step: each decision, at the moment the engine takes it, appended to the request's record.

Pure functions of the record, the decision and a timestamp. They shape the span attributes (`rec.lb`,
`rec.policies`) and the decision-log records (`DecisionRecord`) that the recorder turns into telemetry once, at
the end of the request. They read only what they are given (a pick carries what the pool looked like when it was
made) and write only closed vocabularies (`gatewatch.telemetry.names`).

Primitives: `route`, `split`, `policy`, `late_size_refusal`, `pick` (returns the attempt span's LB attributes),
`retry`, `failover`, `cache`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.balancer.context import PickResult
from gatewatch.balancer.pool import EXCLUDED_LISTED
from gatewatch.balancer.retry import Failure, RetryVerdict
from gatewatch.edge.policies.base import PolicyVerdict
from gatewatch.edge.policies.bodies import BodyTooLarge
from gatewatch.edge.routing import NoRoute, RouteMatch
from gatewatch.telemetry.context import DecisionRecord, RequestRecord
from gatewatch.telemetry.names import (Attr, DecisionKind, DecisionResult, FailoverKind, Layer, PolicyReason, Reason,
                                       Verdict)

if TYPE_CHECKING:  # an annotation only: snapshot imports modules that import this one
    from gatewatch.proxy.snapshot import RoutePlan

# Plain-str values: records cross a pipe to the exporter process, where an Enum member cannot go.
BALANCER = Layer.BALANCER.value
MATCHED, NO_MATCH = DecisionResult.MATCHED.value, DecisionResult.NO_MATCH.value
PICKED, NO_CANDIDATES, OVERFLOW = DecisionResult.PICKED.value, DecisionResult.NO_CANDIDATES.value, \
    DecisionResult.OVERFLOW.value
RETRY, REFUSED, FAILOVER = DecisionResult.RETRY.value, DecisionResult.REFUSED.value, DecisionResult.FAILOVER.value
ROUTE_MATCHED, ROUTE_NO_MATCH = Reason.ROUTE_MATCHED.value, Reason.ROUTE_NO_MATCH.value
RETRY_OTHER_INSTANCE = Reason.FAILOVER_RETRY_OTHER_INSTANCE.value
FAILOVER_NONE, FAILOVER_RETRY = FailoverKind.NONE.value, FailoverKind.RETRY.value
JSON_REQUEST_APPLIED = PolicyReason.JSON_REQUEST_APPLIED.value
CHOSEN, OVERRIDDEN = DecisionResult.CHOSEN.value, DecisionResult.OVERRIDDEN.value
SPLIT_OVERRIDES = frozenset({Reason.SPLIT_OVERRIDE_HEADER.value, Reason.SPLIT_OVERRIDE_COOKIE.value})
# The kinds of every request's decisions (members: the recorder labels them), read once: an Enum member read
# through its class costs ~5x a module global.
ROUTE_KIND, PICK_KIND = DecisionKind.ROUTE, DecisionKind.PICK
# The attribute names every request's route and pick decisions carry, read once for the same reason (the members
# themselves, so the records hold exactly what they held before).
A_HTTP_ROUTE, A_UPSTREAM, A_INSTANCE, A_ZONE = Attr.HTTP_ROUTE, Attr.UPSTREAM, Attr.INSTANCE, Attr.ZONE
A_LB_ALGORITHM, A_LB_CANDIDATES, A_LB_WEIGHT, A_LB_IN_FLIGHT = Attr.LB_ALGORITHM, Attr.LB_CANDIDATES, \
    Attr.LB_WEIGHT, Attr.LB_IN_FLIGHT


def route(rec: RequestRecord, match: RouteMatch | NoRoute, plan: RoutePlan | None, now_ns: int) -> None:
    """`plan`: the matched route's (its name and upstream, without reading the config model), None for NoRoute."""
    if isinstance(match, RouteMatch):
        rec.decisions.append(DecisionRecord(
            ROUTE_KIND, plan.name, MATCHED, ROUTE_MATCHED, now_ns,
            rec.trace.span_id, {A_HTTP_ROUTE: match.template, A_UPSTREAM: plan.upstream}))
    else:
        rec.decisions.append(DecisionRecord(
            ROUTE_KIND, match.nearest or "", NO_MATCH, ROUTE_NO_MATCH, now_ns,
            rec.trace.span_id, {Attr.ROUTE_FAILED_CONDITION: match.reason}))


@cython.locals(rec=RequestRecord)
def split(rec: RequestRecord, route: str, side: str, weight: int, reason: str, now_ns: int) -> None:
    """A weighted split's side (issue 19): the request's upstream from now on, on its SERVER span and in a
    decision (`chosen` by weight or stickiness, `overridden` by a tester: always logged)."""
    rec.upstream = side
    result = OVERRIDDEN if reason in SPLIT_OVERRIDES else CHOSEN
    rec.decisions.append(DecisionRecord(DecisionKind.SPLIT, route, result, reason, now_ns, rec.trace.span_id,
                                        {Attr.UPSTREAM: side, Attr.SPLIT_WEIGHT: weight}))
    attrs = {Attr.SPLIT_UPSTREAM: side, Attr.SPLIT_WEIGHT: weight, Attr.SPLIT_REASON: reason}
    rec.span_attrs = attrs if rec.span_attrs is None else {**rec.span_attrs, **attrs}


@cython.locals(rec=RequestRecord)
def policy(rec: RequestRecord, v: PolicyVerdict, now_ns: int) -> None:
    rec.policies.append((v.policy, v.type, v.verdict.value, v.reason))
    if v.attributes:
        event_id = v.attributes.get(Attr.EVENT_ID)
        if event_id:  # a state change (e.g. the rate-limit store's outage) this request ran into
            rec.event_ids = [event_id] if rec.event_ids is None else rec.event_ids + [event_id]
        rtt = v.attributes.get(Attr.RATELIMIT_STORE_RTT)
        if rtt is not None:
            rec.store_rtt_s = max(rtt, rec.store_rtt_s or 0.0)
    # allows are summarised on the span and counted, not logged (but a JSON body transform that changed the body)
    if v.verdict is not Verdict.ALLOW or v.reason == JSON_REQUEST_APPLIED:
        rec.decisions.append(DecisionRecord(
            DecisionKind.POLICY, v.policy, v.verdict.value, v.reason, now_ns, rec.trace.span_id,
            {Attr.POLICY_TYPE: v.type, Attr.POLICY_SHADOW: v.verdict is Verdict.SHADOW_DENY or None,
             **v.attributes}))


def late_size_refusal(rec: RequestRecord, err: BodyTooLarge, now_ns: int) -> None:
    reason = PolicyReason.SIZE_TOO_LARGE.value
    deny = Verdict.DENY.value
    rec.policies = [p for p in rec.policies if p[0] != err.policy] + [(err.policy, err.type, deny, reason)]
    rec.decisions.append(DecisionRecord(DecisionKind.POLICY, err.policy, deny, reason,
                                        now_ns, rec.trace.span_id,
                                        {Attr.POLICY_TYPE: err.type, "gatewatch.size.limit_bytes": err.limit,
                                         "gatewatch.size.streamed": True}))


def pick(rec: RequestRecord, p: PickResult, now_ns: int, detail: bool = True) -> dict:
    """Record the pick (decision log + span attributes); return the attributes for the attempt's span.

    `detail` False: nothing will ever read this request's span attributes or its allowed decisions' (its spans
    are not exported and allowed decisions are logged only for sampled requests, or nothing is exported at all).
    An instance picked then leaves only what the metrics, the failover count and the admin journal read:
    the decision's kind, rule, result and reason. A failed pick is logged whatever the sampling, in full."""
    ep = p.endpoint
    view = p.view
    rec.failover = view.failover
    if p.event_ids:
        rec.event_ids = list(p.event_ids) if rec.event_ids is None else rec.event_ids + [
            e for e in p.event_ids if e not in rec.event_ids]
    span = rec.balance_span_id or rec.trace.span_id
    if not detail and ep is not None:
        rec.decisions.append(DecisionRecord(PICK_KIND, p.pool, PICKED, p.reason, now_ns, span, {}, BALANCER))
        return {}
    lb = {A_LB_ALGORITHM: p.algorithm, A_LB_CANDIDATES: p.candidates}
    excluded = p.excluded
    if excluded:
        listed = [f"{i}={why}" for i, why in excluded[:EXCLUDED_LISTED]]
        if len(excluded) > EXCLUDED_LISTED:
            listed.append(f"...+{len(excluded) - EXCLUDED_LISTED} more")
        lb[Attr.LB_EXCLUDED] = tuple(listed)  # hashable: the exporter reuses the encoding of repeated picks
    if view.sources:  # a discovered pool: where its candidates came from (one string per view, no allocation)
        lb[Attr.LB_SOURCES] = view.sources
    if view.priority:
        lb[Attr.PRIORITY] = view.priority
    if view.panic:
        lb[Attr.LB_PANIC] = True
    if p.pick is None:
        lb[Attr.LB_AFFINITY] = "cookie"
    elif p.hash_key_source is not None:
        lb[Attr.LB_HASH_KEY_SOURCE] = p.hash_key_source
    rec.lb = lb
    if ep is None:
        rec.decisions.append(DecisionRecord(
            PICK_KIND, p.pool, OVERFLOW if p.reason == Reason.PICK_OVERFLOW else NO_CANDIDATES, p.reason,
            now_ns, span, {A_UPSTREAM: p.pool, **lb}, BALANCER))
        return lb
    rec.decisions.append(DecisionRecord(
        PICK_KIND, p.pool, PICKED, p.reason, now_ns, span,
        {A_UPSTREAM: p.pool, **lb, A_INSTANCE: ep.id, A_ZONE: ep.zone, A_LB_WEIGHT: ep.weight,
         A_LB_IN_FLIGHT: p.in_flight}, BALANCER))
    return {**lb, A_LB_WEIGHT: ep.weight, A_LB_IN_FLIGHT: p.in_flight}


@cython.locals(rec=RequestRecord)
def retry(rec: RequestRecord, route: str, verdict: RetryVerdict, attempts_made: int, budget_left: int,
          instance: str, kind: Failure, now_ns: int, error_type: str | None = None) -> None:
    """`error_type`: the failed attempt's (`dns_error`, `connect_refused`, ...), finer than `kind`."""
    attrs = {Attr.UPSTREAM: rec.upstream, Attr.INSTANCE: instance, Attr.RETRY_ATTEMPT: attempts_made,
             Attr.RETRY_BUDGET_REMAINING: budget_left, Attr.RETRY_FAILURE: kind.value}
    if error_type:
        attrs[Attr.ERROR_TYPE] = error_type
    rec.decisions.append(DecisionRecord(
        DecisionKind.RETRY, route, RETRY if verdict.retry else REFUSED, verdict.reason, now_ns,
        rec.balance_span_id or rec.trace.span_id, attrs, BALANCER if rec.balance_span_id else None))


@cython.locals(rec=RequestRecord)
def failover(rec: RequestRecord, pool: str, from_instance: str, to_instance: str, now_ns: int) -> None:
    if rec.failover == FAILOVER_NONE:
        rec.failover = FAILOVER_RETRY
    rec.decisions.append(DecisionRecord(
        DecisionKind.FAILOVER, pool, FAILOVER, RETRY_OTHER_INSTANCE, now_ns,
        rec.balance_span_id or rec.trace.span_id,
        {Attr.UPSTREAM: pool, Attr.FAILOVER_FROM: from_instance, Attr.FAILOVER_TO: to_instance}, BALANCER))


@cython.locals(rec=RequestRecord)
def cache(rec: RequestRecord, result: str, reason: str, age: int | None, now_ns: int) -> None:
    """How the route's response cache took part (issue 19): on the SERVER span, in `gatewatch_cache_requests_total`
    (from `rec.cache`) and as a `gatewatch.decision.cache` record (ruled by the route)."""
    rec.cache = (result, reason, age)
    attrs = {Attr.CACHE_RESULT: result, Attr.CACHE_REASON: reason}
    if age is not None:
        attrs[Attr.CACHE_AGE] = age
    rec.span_attrs = attrs if rec.span_attrs is None else {**rec.span_attrs, **attrs}
    rec.decisions.append(DecisionRecord(DecisionKind.CACHE, rec.route or "", result, reason, now_ns,
                                        rec.trace.span_id, {Attr.CACHE_AGE: age} if age is not None else {}))
