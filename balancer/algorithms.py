"""Load-balancing algorithms: small functions over an immutable endpoint list, a cursor state and an rng.

`pick(endpoints, state, exclude, rng) -> Pick | NoHealthyEndpoint` — the caller passes what to avoid (`exclude`:
endpoint id → reason, e.g. "tried"), the algorithm never hides failover state of its own (Pingora's lesson).
Every answer says how many candidates there were and which endpoints were excluded and why, so the decision
log can explain the pick.

The balancer issue adds least-request, least-connections, random and consistent hashing next to these.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Mapping

from balancer.config import Algorithm


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    host: str
    port: int
    weight: int
    zone: str | None
    index: int


@dataclass(frozen=True, slots=True)
class Pick:
    endpoint: Endpoint
    algorithm: Algorithm
    candidates: int
    excluded: tuple[tuple[str, str], ...]  # (endpoint id, reason)


@dataclass(frozen=True, slots=True)
class NoHealthyEndpoint:
    algorithm: Algorithm
    candidates: int
    excluded: tuple[tuple[str, str], ...]


@dataclass(slots=True)
class CursorState:
    """Per-pool mutable state of the stateful algorithms (a round-robin counter, smooth-WRR current weights and
    its precomputed schedule). Owned by one event loop, so no locks."""

    counter: int = 0
    current: dict[str, int] = field(default_factory=dict)
    schedule: list | None = None  # one period of the smooth-WRR sequence over all endpoints
    schedule_for: tuple | None = None  # the endpoints the schedule was built for

# Building a schedule costs period × endpoints steps; above this budget (huge weight sums on huge pools) picks
# are computed one by one instead (O(n) each).
MAX_SCHEDULE_WORK = 2_000_000


def _candidates(endpoints, exclude: Mapping[str, str]):
    if not exclude:
        return endpoints, ()
    cands = [e for e in endpoints if e.id not in exclude]
    excluded = tuple((e.id, exclude[e.id]) for e in endpoints if e.id in exclude)
    return cands, excluded


def round_robin(endpoints, state: CursorState, exclude: Mapping[str, str], rng: random.Random) -> Pick | NoHealthyEndpoint:
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(Algorithm.ROUND_ROBIN, 0, excluded)
    chosen = cands[state.counter % len(cands)]
    state.counter += 1
    return Pick(chosen, Algorithm.ROUND_ROBIN, len(cands), excluded)


def prepare(algorithm: Algorithm, endpoints, state: CursorState) -> None:
    """Do an algorithm's per-endpoint-set work up front (at config load), not on a request."""
    if algorithm is Algorithm.WEIGHTED_ROUND_ROBIN:
        state.schedule, state.schedule_for = _schedule(endpoints), endpoints


def _schedule(endpoints) -> list | None:
    """One period of the smooth sequence (weights reduced by their gcd), so a pick over an unchanged set of
    endpoints is O(1) instead of O(n): a pool of 1,000 instances picks as fast as a pool of 3."""
    from math import gcd

    g = 0
    for e in endpoints:
        g = gcd(g, e.weight)
    period = sum(e.weight // g for e in endpoints)
    if period * len(endpoints) > MAX_SCHEDULE_WORK:
        return None
    state = CursorState()
    reduced = [Endpoint(e.id, e.host, e.port, e.weight // g, e.zone, e.index) for e in endpoints]
    by_id = {e.id: e for e in endpoints}
    return [by_id[_swrr_step(reduced, state).id] for _ in range(period)]


def smooth_weighted_round_robin(endpoints, state: CursorState, exclude: Mapping[str, str],
                                rng: random.Random) -> Pick | NoHealthyEndpoint:
    """nginx's smooth weighted round robin: weights 5:1:1 give a a b a c a a, never five a's in a row."""
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(Algorithm.WEIGHTED_ROUND_ROBIN, 0, excluded)
    if not excluded:
        if state.schedule_for is not endpoints:
            state.schedule, state.schedule_for = _schedule(endpoints), endpoints
        if state.schedule is not None:
            chosen = state.schedule[state.counter % len(state.schedule)]
            state.counter += 1
            return Pick(chosen, Algorithm.WEIGHTED_ROUND_ROBIN, len(cands), excluded)
    return Pick(_swrr_step(cands, state), Algorithm.WEIGHTED_ROUND_ROBIN, len(cands), excluded)


def _swrr_step(cands, state: CursorState) -> Endpoint:
    total = 0
    best = None
    best_current = 0
    current = state.current
    for e in cands:
        c = current.get(e.id, 0) + e.weight
        current[e.id] = c
        total += e.weight
        if best is None or c > best_current:
            best, best_current = e, c
    current[best.id] = best_current - total
    return best


ALGORITHMS = {
    Algorithm.ROUND_ROBIN: round_robin,
    Algorithm.WEIGHTED_ROUND_ROBIN: smooth_weighted_round_robin,
}
