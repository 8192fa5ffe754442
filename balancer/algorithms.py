"""Load-balancing algorithms: small functions over an immutable endpoint tuple, a per-pool cursor state, a hash
key and an rng.

`pick(endpoints, state, key, exclude, rng) -> Pick | NoHealthyEndpoint`
- `endpoints`: the candidates the pool allows right now (healthy, in the active priority level, not draining),
  with their *effective* weights (slow start lowers them). The tuple object is stable while the pool's state
  is, so per-set work (WRR schedule, cumulative weights, hash ring, Maglev table) is cached by identity.
- `key`: the request's hash key (consistent hashing) or None.
- `exclude`: endpoint id → reason for this request only (`tried`, `over_limit`): failover is a predicate the
  caller passes, never state hidden in the balancer (Pingora's lesson).
Every answer says how many candidates there were and which were excluded and why.
"""

from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field
from math import gcd
from typing import Mapping

from gatewatch.balancer.config import Algorithm
from gatewatch.telemetry.names import Exclusion

OVER_LIMIT = Exclusion.OVER_LIMIT.value
# The members each pick names, as module constants: an Enum member read through its class goes through
# EnumType's `__getattr__` hook, ~5x the cost of a module global, once per pick.
ROUND_ROBIN, WEIGHTED_ROUND_ROBIN, RANDOM = Algorithm.ROUND_ROBIN, Algorithm.WEIGHTED_ROUND_ROBIN, Algorithm.RANDOM
LEAST_REQUEST, LEAST_CONNECTIONS = Algorithm.LEAST_REQUEST, Algorithm.LEAST_CONNECTIONS
RING_HASH, MAGLEV = Algorithm.RING_HASH, Algorithm.MAGLEV


@dataclass(frozen=True, slots=True)
class Endpoint:
    id: str
    host: str
    port: int
    weight: int
    zone: str | None
    index: int
    priority: int = 0
    source: str = "static"  # where the instance came from: static (config) | dns | file | k8s (discovery)


@dataclass(frozen=True, slots=True)
class Pick:
    endpoint: Endpoint
    algorithm: Algorithm
    candidates: int
    excluded: tuple[tuple[str, str], ...]  # (endpoint id, reason)
    hashed: bool = False  # the pick followed the request's hash key


@dataclass(frozen=True, slots=True)
class NoHealthyEndpoint:
    algorithm: Algorithm
    candidates: int
    excluded: tuple[tuple[str, str], ...]

    @property
    def overflow(self) -> bool:
        """Instances were left out for being at their limit (503 upstream_overflow, not no_healthy_upstream)."""
        return any(reason == OVER_LIMIT for _, reason in self.excluded)


@dataclass(slots=True)
class CursorState:
    """Per-pool mutable state of the stateful algorithms and their per-endpoint-set caches. Owned by one event
    loop, so no locks."""

    counter: int = 0
    detour: int = 0  # round robin's counter for picks made around exclusions
    current: dict[str, int] = field(default_factory=dict)
    schedule: list | None = None  # one period of the smooth-WRR sequence over all endpoints
    schedule_for: tuple | None = None  # the endpoints the schedule was built for
    cache: dict = field(default_factory=dict)  # (kind) -> (endpoints, data): cumulative weights, ring, table
    in_flight: dict[str, int] = field(default_factory=dict)  # the pool's live counts (least_* read them)
    ring_vnodes: int = 256
    # Consistent hashing builds its ring/table over every endpoint of the pool (set by the pool), once, and
    # skips the ones that are not candidates now: an instance going down moves only its own keys, and a state
    # change costs no rebuild. None (a bare call): the endpoints passed in.
    all_endpoints: tuple | None = None


# Building a schedule costs period × endpoints steps; above this budget (huge weight sums on huge pools) picks
# are computed one by one instead (O(n) each).
MAX_SCHEDULE_WORK = 2_000_000
MAGLEV_TABLE_SIZE = 65537  # prime, ≥ 100 × a large pool


def _candidates(endpoints, exclude: Mapping[str, str]):
    if not exclude:
        return endpoints, ()
    cands = tuple(e for e in endpoints if e.id not in exclude)
    excluded = tuple((e.id, exclude[e.id]) for e in endpoints if e.id in exclude)
    return cands, excluded


def _cached(state: CursorState, kind, endpoints, build, arg=None):
    """`build(endpoints)` (or `build(endpoints, arg)`), kept for as long as the endpoint set is this one. The
    builders are module functions: a lambda here would be a new closure object on every request (~1.2k
    instructions compiled)."""
    hit = state.cache.get(kind)
    if hit is not None and hit[0] is endpoints:
        return hit[1]
    data = build(endpoints) if arg is None else build(endpoints, arg)
    state.cache[kind] = (endpoints, data)
    return data


def _picks(endpoints, algorithm: Algorithm) -> dict:
    return {e.id: Pick(e, algorithm, len(endpoints), ()) for e in endpoints}


def _usable(endpoints) -> dict:
    return {e.id: e for e in endpoints}


def _pick(state: CursorState, algorithm: Algorithm, cands, chosen: Endpoint, excluded) -> Pick:
    """The answer of a non-hashing algorithm. When nothing was excluded it is the same immutable Pick for every
    request that lands on `chosen`: built once per endpoint set and shared (a frozen dataclass costs about a
    microsecond to construct)."""
    if excluded:
        return Pick(chosen, algorithm, len(cands), excluded)
    return _cached(state, ("picks", algorithm), cands, _picks, algorithm)[chosen.id]


def round_robin(endpoints, state: CursorState, key, exclude: Mapping[str, str], rng: random.Random):
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(ROUND_ROBIN, 0, excluded)
    if excluded:  # a pick around exclusions (a retry, a full instance) rotates on its own detour counter,
        chosen = cands[(state.counter + state.detour) % len(cands)]  # leaving the first attempts' rotation alone
        state.detour += 1
    else:
        chosen = cands[state.counter % len(cands)]
        state.counter += 1
    return _pick(state, ROUND_ROBIN, cands, chosen, excluded)


def prepare(algorithm: Algorithm, endpoints, state: CursorState) -> None:
    """Do an algorithm's per-endpoint-set work up front (at config load), not on a request."""
    if algorithm is WEIGHTED_ROUND_ROBIN:
        state.schedule, state.schedule_for = _schedule(endpoints), endpoints
    elif algorithm is RING_HASH:
        _cached(state, "ring", state.all_endpoints or endpoints, build_ring, state.ring_vnodes)
    elif algorithm is MAGLEV:
        _cached(state, "maglev", state.all_endpoints or endpoints, build_maglev)
    elif algorithm is RANDOM:
        _cached(state, "cumulative", endpoints, _cumulative)


def _schedule(endpoints) -> list | None:
    """One period of the smooth sequence (weights reduced by their gcd), so a pick over an unchanged set of
    endpoints is O(1) instead of O(n): a pool of 1,000 instances picks as fast as a pool of 3."""
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


def smooth_weighted_round_robin(endpoints, state: CursorState, key, exclude: Mapping[str, str],
                                rng: random.Random):
    """nginx's smooth weighted round robin: weights 5:1:1 give a a b a c a a, never five a's in a row."""
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(WEIGHTED_ROUND_ROBIN, 0, excluded)
    if not excluded:
        if state.schedule_for is not endpoints:
            state.schedule, state.schedule_for = _schedule(endpoints), endpoints
        if state.schedule is not None:
            chosen = state.schedule[state.counter % len(state.schedule)]
            state.counter += 1
            return _pick(state, WEIGHTED_ROUND_ROBIN, cands, chosen, excluded)
    return _pick(state, WEIGHTED_ROUND_ROBIN, cands, _swrr_step(cands, state), excluded)


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


def _cumulative(endpoints) -> list[int]:
    out, total = [], 0
    for e in endpoints:
        total += e.weight
        out.append(total)
    return out


def weighted_random(endpoints, state: CursorState, key, exclude: Mapping[str, str], rng: random.Random):
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(RANDOM, 0, excluded)
    cum = _cached(state, "cumulative", cands, _cumulative) if not excluded else _cumulative(cands)
    i = bisect.bisect_right(cum, rng.random() * cum[-1])
    return _pick(state, RANDOM, cands, cands[min(i, len(cands) - 1)], excluded)


def _load(e: Endpoint, in_flight: Mapping[str, int]) -> float:
    return (in_flight.get(e.id, 0) + 1) / e.weight


def least_request(endpoints, state: CursorState, key, exclude: Mapping[str, str], rng: random.Random,
                  choices: int = 2):
    """Power of `choices` random choices: sample that many candidates, keep the one with the fewest in-flight
    requests per unit of weight (ties: the first sampled). O(choices), near-optimal spread (Mitzenmacher)."""
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(LEAST_REQUEST, 0, excluded)
    n = len(cands)
    best = None
    best_load = 0.0
    for _ in range(min(choices, n) if n > 1 else 1):
        e = cands[rng.randrange(n)]
        load = _load(e, state.in_flight)
        if best is None or load < best_load:
            best, best_load = e, load
    return _pick(state, LEAST_REQUEST, cands, best, excluded)


def least_connections(endpoints, state: CursorState, key, exclude: Mapping[str, str], rng: random.Random):
    """Full scan for the fewest in-flight requests per unit of weight; ties go round robin (so an idle pool
    still spreads). O(n): prefer least_request for large pools."""
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(LEAST_CONNECTIONS, 0, excluded)
    n = len(cands)
    start = state.counter % n
    state.counter += 1
    best, best_load = None, 0.0
    for i in range(n):
        e = cands[(start + i) % n]
        load = _load(e, state.in_flight)
        if best is None or load < best_load:
            best, best_load = e, load
    return _pick(state, LEAST_CONNECTIONS, cands, best, excluded)


def hash64(data: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode("utf-8", "surrogateescape"), digest_size=8).digest(), "big")


def build_ring(endpoints, per_unit: int = 256) -> tuple[list[int], list[Endpoint]]:
    """Ketama-style ring: each endpoint gets `weight × per_unit` virtual nodes placed by hashing `id#n`. The
    points of an instance depend on nothing else, so adding one moves only the keys landing on its points."""
    points = sorted((hash64(f"{e.id}#{n}"), e.index, e) for e in endpoints for n in range(e.weight * per_unit))
    return [p[0] for p in points], [p[2] for p in points]


def ring_hash(endpoints, state: CursorState, key, exclude: Mapping[str, str], rng: random.Random):
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(RING_HASH, 0, excluded)
    if key is None:
        return Pick(cands[rng.randrange(len(cands))], RING_HASH, len(cands), excluded)
    hashes, owners = _cached(state, "ring", state.all_endpoints or endpoints, build_ring, state.ring_vnodes)
    usable = _cached(state, "usable", cands, _usable)
    i = bisect.bisect_left(hashes, hash64(key))
    n = len(hashes)
    for step in range(n):  # walk clockwise past unusable endpoints (their keys spread over the others)
        e = usable.get(owners[(i + step) % n].id)
        if e is not None:
            return Pick(e, RING_HASH, len(cands), excluded, True)
    return NoHealthyEndpoint(RING_HASH, 0, excluded)


def build_maglev(endpoints, size: int = MAGLEV_TABLE_SIZE) -> list[Endpoint]:
    """Maglev lookup table (Eisenbud et al., NSDI'16) with weights: each endpoint fills slots from its own
    permutation (offset, skip), endpoints taking turns in proportion to their weights."""
    n = len(endpoints)
    if n == 0:
        return []
    perms = []
    for e in endpoints:
        h = hash64(e.id)
        perms.append((h % size, (h >> 32) % (size - 1) + 1))
    nxt = [0] * n
    table: list[Endpoint | None] = [None] * size
    max_w = max(e.weight for e in endpoints)
    credit = [0.0] * n
    filled = 0
    while True:
        for i, e in enumerate(endpoints):
            credit[i] += e.weight / max_w
            if credit[i] < 1.0:
                continue
            credit[i] -= 1.0
            offset, skip = perms[i]
            while True:
                slot = (offset + nxt[i] * skip) % size
                nxt[i] += 1
                if table[slot] is None:
                    break
            table[slot] = e
            filled += 1
            if filled == size:
                return table


def maglev(endpoints, state: CursorState, key, exclude: Mapping[str, str], rng: random.Random):
    cands, excluded = _candidates(endpoints, exclude)
    if not cands:
        return NoHealthyEndpoint(MAGLEV, 0, excluded)
    if key is None:
        return Pick(cands[rng.randrange(len(cands))], MAGLEV, len(cands), excluded)
    table = _cached(state, "maglev", state.all_endpoints or endpoints, build_maglev)
    usable = _cached(state, "usable", cands, _usable)
    h = hash64(key)
    size = len(table)
    # An unusable owner (down, tried, over limit): re-hash deterministically until a usable slot, bounded.
    for attempt in range(64):
        e = usable.get(table[(h + attempt * 0x9E3779B1) % size].id)
        if e is not None:
            return Pick(e, MAGLEV, len(cands), excluded, True)
    return Pick(cands[h % len(cands)], MAGLEV, len(cands), excluded, True)


ALGORITHMS = {
    ROUND_ROBIN: round_robin,
    WEIGHTED_ROUND_ROBIN: smooth_weighted_round_robin,
    RANDOM: weighted_random,
    LEAST_REQUEST: least_request,
    LEAST_CONNECTIONS: least_connections,
    RING_HASH: ring_hash,
    MAGLEV: maglev,
}
