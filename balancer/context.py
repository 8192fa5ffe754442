"""What one request gives its pool, attempt after attempt, and what each pick saw.

The balancer never sees the request (Envoy's LoadBalancerContext): the proxy hands it a narrow context once, and
asks it for one pick per attempt.

- `PickContext(pool, key, affinity)`: the request's hash key (consistent hashing; None when the request lacks
  it), the instance its affinity cookie names (None without one), and the instances its earlier attempts tried
  (`tried(instance_id)`). `pick(rng) -> PickResult`, in this order:
  1. the affinity instance, if it may take the request now (a candidate, not tried, under its limit);
  2. the pool's algorithm, excluding what was tried;
  3. when only tried instances are left, the algorithm again without that exclusion: another attempt on an
     instance that failed once beats no attempt.
  `repin(response_headers, endpoint)`: with session affinity, the response pins the client to the instance of
  the attempt that answers (a `Set-Cookie` replacing any an earlier attempt added; none when the client's
  cookie already names it).
- `PickResult`: one pick as it was when it was made — the algorithm and why, the candidates and the excluded
  ones with their reasons, the priority level, panic mode, the instance and its in-flight count before this
  request, whether the pool was failing over, and the ids of the events (failover, ejections) behind what it
  saw. The recording step reads it and never looks back at the live pool.
"""

from __future__ import annotations

import random

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.balancer.algorithms import Endpoint, NoHealthyEndpoint, Pick
from gatewatch.balancer.config import Algorithm
from gatewatch.balancer.pool import Pool, View
from gatewatch.telemetry.names import Exclusion, FailoverKind, Reason

TRIED, EJECTED = Exclusion.TRIED.value, Exclusion.EJECTED.value
NONE = FailoverKind.NONE.value
PICK_AFFINITY = Reason.PICK_AFFINITY.value
PICK_OVERFLOW = Reason.PICK_OVERFLOW.value
PICK_NO_CANDIDATES = Reason.PICK_NO_CANDIDATES.value
# Keyed by the algorithm (a StrEnum hashes as its value); plain-str values, because records cross a pipe to the
# exporter process and an Enum's `.value` costs more than the lookup.
PICK_REASON = {"round_robin": Reason.PICK_ROUND_ROBIN.value, "weighted_round_robin": Reason.PICK_WEIGHTED.value,
               "random": Reason.PICK_RANDOM.value, "least_request": Reason.PICK_LEAST_REQUEST.value,
               "least_connections": Reason.PICK_LEAST_CONNECTIONS.value, "ring_hash": Reason.PICK_RING_HASH.value,
               "maglev": Reason.PICK_MAGLEV.value}
ALGORITHM_NAME = {a: a.value for a in Algorithm}


class PickResult:
    """One pick as it was made: `pick` is the algorithm's answer (candidates, exclusions; None when the affinity
    cookie chose), `view` the pool's view it was made in (priority level, panic, failover kind: immutable),
    `endpoint` the chosen instance (None: nothing could take the request) and its in-flight count before this
    request, and the ids of the events behind it (the failover in force, ejections of excluded instances).
    What the recording step reads of it is worked out here, once: `algorithm`, `candidates`, `excluded`
    ((instance id, Exclusion value), in the pool's order) and `reason` (pick.<algorithm>, pick.affinity,
    pick.no_candidates or pick.overflow); plain fields, C fields when compiled (context.pxd)."""

    __slots__ = ("pool", "pick", "view", "endpoint", "in_flight", "hash_key_source", "event_ids", "algorithm",
                 "candidates", "excluded", "reason")

    @cython.locals(pool=Pool)
    def __init__(self, pool: Pool, pick: Pick | NoHealthyEndpoint | None, view: View, endpoint: Endpoint | None,
                 in_flight: int, hash_key_source: str | None, event_ids: tuple[str, ...]):
        self.pool = pool.name
        self.pick = pick
        self.view = view
        self.endpoint = endpoint
        self.in_flight = in_flight
        self.hash_key_source = hash_key_source  # e.g. "header:x-user", "header:x-user (absent)"; never the key
        self.event_ids = event_ids
        if pick is None:
            self.algorithm = ALGORITHM_NAME[pool.algorithm]
            self.candidates = len(view.candidates)
            self.excluded = ()
            self.reason = PICK_AFFINITY
        else:
            self.algorithm = ALGORITHM_NAME[pick.algorithm]
            self.candidates = pick.candidates
            self.excluded = pick.excluded
            if endpoint is None:
                self.reason = PICK_OVERFLOW if pick.overflow else PICK_NO_CANDIDATES
            else:
                self.reason = PICK_REASON[self.algorithm]

    @property
    def affinity(self) -> bool:
        """The affinity cookie chose, not the algorithm."""
        return self.pick is None

    @property
    def failover(self) -> str:
        return self.view.failover


class PickContext:
    __slots__ = ("pool", "key", "affinity", "_tried", "_hash_source")

    def __init__(self, pool: Pool, key: str | None, affinity: str | None):
        self.pool = pool
        self.key = key
        self.affinity = affinity
        self._tried: dict[str, str] = {}
        hk = pool.hash_key
        self._hash_source = None if hk is None else hk.describe() + ("" if key is not None else " (absent)")

    def tried(self, instance_id: str) -> None:
        self._tried[instance_id] = TRIED

    @cython.locals(pool=Pool)
    def pick(self, rng: random.Random) -> PickResult:
        pool, tried = self.pool, self._tried
        ep = pool.usable(self.affinity, tried) if self.affinity else None
        if ep is not None:
            view = pool.view()
            return PickResult(pool, None, view, ep, pool.in_flight[ep.id], self._hash_source,
                              _events(pool, view, ()))
        picked = pool.pick(self.key, tried, rng)
        if tried and isinstance(picked, NoHealthyEndpoint):
            picked = pool.pick(self.key, {}, rng)
        view = pool.view()
        events = _events(pool, view, picked.excluded) if pool.failover_event or pool.ejection_events else ()
        if isinstance(picked, NoHealthyEndpoint):
            return PickResult(pool, picked, view, None, 0, self._hash_source, events)
        ep = picked.endpoint
        return PickResult(pool, picked, view, ep, pool.in_flight[ep.id], self._hash_source, events)

    def repin(self, response_headers: list[tuple[str, str]], endpoint: Endpoint) -> None:
        cfg = self.pool.affinity
        if cfg is None:
            return
        mine = cfg.cookie + "="
        response_headers[:] = [h for h in response_headers if h[0] != "Set-Cookie" or not h[1].startswith(mine)]
        if endpoint.id != self.affinity:
            response_headers.append(("Set-Cookie", affinity_cookie(cfg, self.pool.affinity_value(endpoint.id))))


def _events(pool: Pool, view: View, excluded: tuple) -> tuple[str, ...]:
    """The events behind a pick: the pool's failover in force, and the ejections of the instances it skipped."""
    events = (pool.failover_event,) if pool.failover_event and view.failover != NONE else ()
    if excluded and pool.ejection_events:
        events += tuple(pool.ejection_events[i] for i, why in excluded if why == EJECTED and i in pool.ejection_events)
    return events


def affinity_cookie(cfg, value: str) -> str:
    """The `Set-Cookie` value pinning a client to the instance `value` names (opaque: `Pool.affinity_value`)."""
    return set_cookie(cfg.cookie, value, cfg.path, cfg.ttl_s, cfg.http_only, cfg.secure)


def set_cookie(name: str, value: str, path: str, max_age_s: int | None, http_only: bool, secure: bool) -> str:
    """A `Set-Cookie` value (RFC 6265 §4.1) for a cookie that keeps a client on one choice: SameSite=Lax, and a
    session cookie unless `max_age_s`."""
    parts = [f"{name}={value}", f"Path={path}", "SameSite=Lax"]
    if max_age_s:
        parts.append(f"Max-Age={max_age_s}")
    if http_only:
        parts.append("HttpOnly")
    if secure:
        parts.append("Secure")
    return "; ".join(parts)
