"""A pool at run time: its instances and their state (health, ejection, draining, slow start, in-flight), the
view of which instances may take traffic now, and the pick.

Primitives:
- `Pool.pick(key, exclude, rng) -> Pick | NoHealthyEndpoint`: the configured algorithm over the current view's
  candidates. The answer carries every excluded instance with its reason (unhealthy, ejected, draining,
  inactive_priority, over_limit, plus the caller's `tried`). The priority level and panic mode of the pick are
  the view's (`view().priority`, `view().panic`).
- `View`: computed once per state change (cached by `version`): per priority level the usable instances, the
  active level (the first whose usable share ≥ `failover.min_healthy_percent`), panic mode (usable share below
  `panic_threshold_percent`: balance across every non-draining instance of the level), effective weights.
- State changes come from outside: `probe(id, ok, detail)` (active checks), `observe(id, result, trace, span)`
  (passive, after each attempt), `set_draining(id, bool)` (config/admin), `tick()` (ejection expiry, slow-start
  ramp). Each returns nothing; what changed is reported through `notify` (events) — the pool never blocks.
- Membership: `set_members(instances, why) -> MembershipChange` (service discovery) replaces the instance list.
  Instances that stay keep their state (health counters, ejection, in-flight, slow start, draining set by the
  admin); new ones start in slow start, and with active health checks wait for their first passing probe (unless
  the pool was empty: a first set is taken as a static pool's is at start); removed ones get no new picks and
  their in-flight requests finish (their counts retire at zero). The algorithms' prepared state is rebuilt.
"""

from __future__ import annotations

import hashlib
import random
import time
from dataclasses import dataclass, replace
from typing import Callable, Mapping, Sequence

from gatewatch.balancer.algorithms import (ALGORITHMS, LEAST_REQUEST, CursorState, Endpoint, NoHealthyEndpoint, Pick,
                                           least_request, prepare)
from gatewatch.balancer.config import InstanceConfig, PoolConfig
from gatewatch.balancer.health import OutlierTracker, ProbeCounter, Result
from gatewatch.telemetry.context import new_event_id
from gatewatch.telemetry.names import Attr, EndpointState, Event, Exclusion, FailoverKind, Reason

EXCLUDED_LISTED = 20  # exclusions listed on a span/log; the rest are counted


@dataclass(slots=True)
class Instance:
    endpoint: Endpoint  # configured weight
    probe: ProbeCounter | None
    outlier: OutlierTracker | None
    draining: bool = False
    usable_since: float | None = None  # when it became usable again (slow start ramps from there)
    last_state: str = EndpointState.HEALTHY.value
    source_draining: bool = False  # draining as its source says (config, or discovery: k8s terminating)

    def state(self, now: float) -> str:
        if self.draining:
            return EndpointState.DRAINING.value
        if self.probe is not None and not self.probe.healthy:
            return EndpointState.UNHEALTHY.value
        # Ejected until the pool's tick returns it (≤ 1 s after the deadline): the state, the view and the
        # return event then change together, and the return starts slow start.
        if self.outlier is not None and self.outlier.ejected_until:
            return EndpointState.EJECTED.value
        return EndpointState.HEALTHY.value


@dataclass(frozen=True, slots=True)
class View:
    version: int
    candidates: tuple[Endpoint, ...]  # effective weights
    excluded: dict[str, str]  # id → reason (state-based)
    priority: int
    panic: bool
    usable: int
    total: int
    ramping: bool  # some candidate is in slow start
    by_id: dict[str, Endpoint]
    failover: str = FailoverKind.NONE.value  # how requests picked in this view are served (FailoverKind)
    sources: str = ""  # where the candidates came from, e.g. "dns=3" (discovered pools; "" for static ones)


@dataclass(frozen=True, slots=True)
class MembershipChange:
    """What one `set_members` changed, by instance id (in the new list's order; removed ones in the old)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()  # same id and address; weight, priority, zone or draining changed

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


class Pool:
    # An extension type when compiled (pool.pxd): the per-request state (in-flight counts, the full set, the
    # limit, the view's version) as C fields, `view`/`acquire`/`release` as C calls from the pick path.
    __slots__ = ("config", "name", "scheme", "algorithm", "hash_key", "affinity", "clock", "notify", "source",
                 "endpoints", "instances", "_by_id", "in_flight", "_affinity_keys", "ejection_events",
                 "passive_health", "panic", "full", "_state", "_pick", "_choices", "limit", "_version", "_view",
                 "primary_priority", "active_priority", "failover_event", "_cause")

    def __init__(self, config: PoolConfig, *, clock: Callable[[], float] = time.monotonic,
                 notify: Callable[..., None] | None = None):
        self.config = config
        self.name = config.name
        self.scheme = config.scheme  # "https" when the pool has `tls`
        self.algorithm = config.algorithm
        # read on every request (`PickContext`): attributes, not pydantic reads through the config each time
        self.hash_key = config.hash_key
        self.affinity = config.affinity
        self.clock = clock
        self.notify = notify if notify is not None else (lambda *a, **k: None)
        self.source = config.discovery.source if config.discovery is not None else "static"
        self.endpoints = tuple(self._endpoint(i, n) for n, i in enumerate(config.instances))
        oc = config.outlier_detection
        self.instances = {e.id: self._instance(e, i.draining) for e, i in zip(self.endpoints, config.instances)}
        now = clock()
        for inst in self.instances.values():  # e.g. configured draining: transitions start from the truth
            inst.last_state = inst.state(now)
        self._by_id = {e.id: e for e in self.endpoints}
        self.passive_health = oc is not None  # the engine reports attempt results only when someone listens
        self.full: set[str] = set()  # instances at their limit (in-flight ≥ max connections + max pending)
        self.in_flight: dict[str, int] = {e.id: 0 for e in self.endpoints}
        self._state = CursorState(in_flight=self.in_flight, ring_vnodes=config.ring_vnodes_per_weight,
                                  all_endpoints=self.endpoints)
        self._pick = ALGORITHMS[config.algorithm]
        self._choices = config.least_request.choice_count
        self.limit = config.max_connections_per_instance + config.max_pending_per_instance
        self._version = 0
        self._view: View | None = None
        self._affinity_keys = {self.affinity_value(e.id): e.id for e in self.endpoints}
        # where traffic goes when all is well (a discovered pool starts empty)
        self.primary_priority = min((e.priority for e in self.endpoints), default=0)
        self.active_priority = self.primary_priority
        self.panic = False
        # Event ids linking state changes and the requests they touched: the failover (priority or panic) in
        # force, and each instance's current ejection.
        self.failover_event: str | None = None
        self.ejection_events: dict[str, str] = {}
        self._cause: list[str] = []  # trace ids of the requests behind the state change being applied
        prepare(config.algorithm, self.view().candidates, self._state)

    def _endpoint(self, i: InstanceConfig, index: int) -> Endpoint:
        return Endpoint(id=i.instance_id, host=i.host, port=i.port, weight=i.weight, zone=i.zone, index=index,
                        priority=i.priority, source=self.source)

    def _instance(self, e: Endpoint, draining: bool) -> Instance:
        hc, oc = self.config.health_check, self.config.outlier_detection
        return Instance(e, ProbeCounter(hc.healthy_threshold, hc.unhealthy_threshold) if hc else None,
                        OutlierTracker(oc) if oc else None, draining=draining, source_draining=draining)

    # --- the view -------------------------------------------------------------------------------------------

    def view(self) -> View:
        v = self._view
        if v is None or v.version != self._version:
            v = self._view = self._compute_view(self.clock())
        return v

    def _changed(self) -> None:
        self._version += 1

    def _compute_view(self, now: float) -> View:
        f = self.config.failover
        levels: dict[int, list[Instance]] = {}
        for inst in self.instances.values():
            levels.setdefault(inst.endpoint.priority, []).append(inst)
        excluded: dict[str, str] = {}
        stats = []
        for prio in sorted(levels):
            members = [i for i in levels[prio] if not i.draining]
            usable = [i for i in members if i.state(now) == EndpointState.HEALTHY.value]
            share = 100 * len(usable) / len(members) if members else 0.0
            stats.append((prio, members, usable, share))
        if not stats:  # an empty pool (discovery found nothing yet): no candidates, every pick says so
            return View(self._version, (), {}, self.primary_priority, False, 0, 0, False, {}, FailoverKind.NONE.value,
                        "" if self.source == "static" else f"{self.source}=0")
        active = next((s for s in stats if s[3] >= f.min_healthy_percent), None)
        if active is None:  # nobody healthy enough: the best level (lowest priority on ties)
            active = max(stats, key=lambda s: (s[3], -s[0]))
        prio, members, usable, share = active
        panic = bool(f.panic_threshold_percent) and members and share < f.panic_threshold_percent
        chosen = members if panic else usable
        chosen_ids = {i.endpoint.id for i in chosen}
        for inst in self.instances.values():
            eid = inst.endpoint.id
            if eid in chosen_ids:
                continue
            state = inst.state(now)
            if state == EndpointState.HEALTHY.value:
                excluded[eid] = Exclusion.INACTIVE_PRIORITY.value
            else:
                excluded[eid] = state
        ss = self.config.slow_start
        ordered = sorted(chosen, key=lambda i: i.endpoint.index)
        factors = [self._ramp(inst, now, ss) for inst in ordered]
        ramping = any(f < 1.0 for f in factors)
        if ramping:  # weights ×100 while anyone ramps, so 10 % of weight 1 is still an integer
            cands = tuple(replace(i.endpoint, weight=max(1, round(i.endpoint.weight * 100 * f)))
                          for i, f in zip(ordered, factors))
        else:
            cands = tuple(i.endpoint for i in ordered)
        self._note_failover(prio, bool(panic), share)
        failover = (FailoverKind.PANIC if panic else FailoverKind.PRIORITY if prio != self.primary_priority
                    else FailoverKind.NONE).value
        return View(self._version, cands, excluded, prio, bool(panic), len(usable), len(members), ramping,
                    {e.id: e for e in cands}, failover,
                    "" if self.source == "static" else f"{self.source}={len(cands)}")

    def _ramp(self, inst: Instance, now: float, ss) -> float:
        if ss is None or inst.usable_since is None:
            return 1.0
        elapsed = now - inst.usable_since
        if elapsed >= ss.window_s:
            inst.usable_since = None
            return 1.0
        return max(ss.min_weight_percent / 100, (elapsed / ss.window_s) ** (1 / ss.aggression))

    def _note_failover(self, prio: int, panic: bool, share: float) -> None:
        """A move to another priority level or into/out of panic mode: one event each, with the requests behind
        it; while the pool is not on its primary level (or in panic), requests it serves name that event."""
        if prio != self.active_priority:
            reason = (Reason.FAILOVER_PRIORITY_DEGRADED if prio > self.active_priority
                      else Reason.FAILOVER_PRIORITY_RECOVERED)
            self._failover_event(f"traffic moves from priority {self.active_priority} to {prio}", {
                Attr.FAILOVER_FROM: str(self.active_priority), Attr.FAILOVER_TO: str(prio),
                Attr.DECISION_REASON: reason.value}, degraded=prio != self.primary_priority or self.panic)
            self.active_priority = prio
        if panic != self.panic:
            self.panic = panic
            self._failover_event(f"panic mode {'on' if panic else 'off'} ({share:.0f}% usable)", {
                Attr.LB_PANIC: panic, Attr.DECISION_REASON: Reason.FAILOVER_PANIC.value},
                degraded=panic or self.active_priority != self.primary_priority)

    def _failover_event(self, what: str, attrs: dict, degraded: bool) -> None:
        """One id names a whole failover episode, from the first move off the primary level (or into panic)
        to the return: every event of it and every request served during it carry that id."""
        event_id = self.failover_event or new_event_id()
        self.failover_event = event_id if degraded else None
        self.notify(Event.DECISION_FAILOVER, f"pool {self.name}: {what}",
                    {Attr.POOL: self.name, **attrs, Attr.EVENT_ID: event_id,
                     Attr.EVENT_TRACE_IDS: list(self._cause)},
                    severity="WARN" if degraded else "INFO")

    # --- the pick -------------------------------------------------------------------------------------------

    def pick(self, key: str | None, exclude: Mapping[str, str], rng: random.Random) -> Pick | NoHealthyEndpoint:
        v = self.view()
        excl = exclude
        if self.full:  # instances at their limit are out for everyone, and listed as such
            excl = dict(exclude)
            for eid in self.full:
                excl.setdefault(eid, Exclusion.OVER_LIMIT.value)
        if self.algorithm is LEAST_REQUEST:
            picked = least_request(v.candidates, self._state, key, excl, rng, self._choices)
        else:
            picked = self._pick(v.candidates, self._state, key, excl, rng)
        if not v.excluded:
            return picked
        reasons = {**excl, **v.excluded}  # state-based and per-request exclusions together, in endpoint order
        merged = tuple((e.id, reasons[e.id]) for e in self.endpoints if e.id in reasons)
        if isinstance(picked, NoHealthyEndpoint):
            return NoHealthyEndpoint(picked.algorithm, picked.candidates, merged)
        return replace(picked, excluded=merged)

    def usable(self, endpoint_id: str, exclude: Mapping[str, str]) -> Endpoint | None:
        """The endpoint if it may take this request (affinity): a candidate now, not excluded, under its limit."""
        if endpoint_id in exclude or endpoint_id in self.full or endpoint_id not in self.in_flight:
            return None
        return self.view().by_id.get(endpoint_id)

    def acquire(self, endpoint: Endpoint) -> None:
        # .get: the instance may have been removed by discovery since it was picked (its count then retires)
        n = self.in_flight[endpoint.id] = self.in_flight.get(endpoint.id, 0) + 1
        if n >= self.limit:
            self.full.add(endpoint.id)

    def release(self, endpoint: Endpoint) -> None:
        n = self.in_flight[endpoint.id] = self.in_flight[endpoint.id] - 1
        if n < self.limit:
            self.full.discard(endpoint.id)

    def endpoint(self, endpoint_id: str) -> Endpoint | None:
        return self._by_id.get(endpoint_id)

    # --- affinity -------------------------------------------------------------------------------------------

    def affinity_value(self, endpoint_id: str) -> str:
        """Opaque cookie value naming an instance (does not reveal its address or id)."""
        return hashlib.blake2b(f"{self.name}\0{endpoint_id}".encode(), digest_size=8).hexdigest()

    def affinity_target(self, cookie_value: str | None) -> str | None:
        return self._affinity_keys.get(cookie_value) if cookie_value else None

    # --- state changes --------------------------------------------------------------------------------------

    def probe(self, endpoint_id: str, ok: bool, detail: str) -> None:
        inst = self.instances.get(endpoint_id)  # None: discovery removed it while the probe ran
        if inst is None or inst.probe is None or not inst.probe.observe(ok):
            return
        oc = self.config.outlier_detection
        if ok and inst.outlier is not None and inst.outlier.ejected_until and oc.uneject_on_active_recovery:
            # The active check saw it down and now sees it back: it recovered, whatever its ejection's clock says.
            inst.outlier.end_ejection(self.clock())
            self._returned(inst, Reason.OUTLIER_ACTIVE_RECOVERY.value)
        self._transition(inst, "active", detail)

    def observe(self, endpoint_id: str, result: Result, trace_id: str | None, span_id: str | None) -> None:
        inst = self.instances.get(endpoint_id)
        if inst is None or inst.outlier is None:
            return
        now = self.clock()
        reason = inst.outlier.observe(result, trace_id, span_id)
        if reason is None or inst.outlier.ejected_until:
            return
        try:
            self._cause = [t for t, _ in inst.outlier.recent]
            self._eject(inst, endpoint_id, reason, now, trace_id, span_id)
        finally:
            self._cause = []

    def _eject(self, inst: Instance, endpoint_id: str, reason: str, now: float, trace_id: str | None,
               span_id: str | None) -> None:
        oc = self.config.outlier_detection
        total = len(self.instances)
        ejected = sum(1 for i in self.instances.values() if i.outlier is not None and i.outlier.ejected_until)
        allowed = max(1, total * oc.max_ejection_percent // 100) if oc.max_ejection_percent else 0
        if ejected >= allowed:
            recent = [t for t, _ in inst.outlier.recent]
            inst.outlier.reset_run()
            self.notify(Event.OUTLIER_EJECTION, f"pool {self.name}: {endpoint_id} not ejected: "
                        f"{ejected}/{total} already ejected (max {oc.max_ejection_percent}%)",
                        {Attr.POOL: self.name, Attr.INSTANCE: endpoint_id,
                         Attr.DECISION_REASON: Reason.OUTLIER_MAX_EJECTION_PERCENT.value,
                         Attr.EJECTION_TRACE_IDS: recent},
                        trace_id=trace_id, span_id=span_id, severity="WARN")
            return
        ej = inst.outlier.eject(reason, now)
        event_id = self.ejection_events[endpoint_id] = new_event_id()
        self.notify(Event.OUTLIER_EJECTION, f"pool {self.name}: {endpoint_id} ejected for {ej.duration_s:g}s "
                    f"({reason}, ejection #{ej.count})",
                    {Attr.POOL: self.name, Attr.INSTANCE: endpoint_id, Attr.DECISION_REASON: reason,
                     Attr.EJECTION_COUNT: ej.count, Attr.EJECTION_DURATION_S: ej.duration_s,
                     Attr.EJECTION_TRACE_IDS: list(ej.trace_ids), Attr.HEALTH_CHECK: "passive",
                     Attr.EVENT_ID: event_id, Attr.EVENT_TRACE_IDS: list(ej.trace_ids)},
                    trace_id=ej.last_trace_id, span_id=ej.last_span_id, severity="WARN")
        self._transition(inst, "passive", reason)

    def set_draining(self, endpoint_id: str, draining: bool) -> bool:
        inst = self.instances.get(endpoint_id)
        if inst is None:
            return False
        if inst.draining != draining:
            inst.draining = draining
            self._transition(inst, "admin", "draining" if draining else "undrained")
        return True

    def tick(self) -> None:
        """Periodic (about once a second): end expired ejections, advance slow-start ramps."""
        now = self.clock()
        for inst in self.instances.values():
            if inst.outlier is not None and inst.outlier.expire(now):
                self._returned(inst, Reason.OUTLIER_EJECTION_EXPIRED.value)
                self._transition(inst, "passive", Reason.OUTLIER_EJECTION_EXPIRED.value)
        if self._view is not None and self._view.ramping:
            self._changed()  # weights move with time while an instance ramps up
        if len(self.in_flight) != len(self.instances):  # removed instances whose last request has finished
            for eid in [e for e, n in self.in_flight.items() if not n and e not in self.instances]:
                del self.in_flight[eid]
        self.view()  # recomputed if anything changed: failover/panic notes follow

    def _returned(self, inst: Instance, reason: str) -> None:
        eid = inst.endpoint.id
        self.notify(Event.OUTLIER_EJECTION, f"pool {self.name}: {eid} returns from ejection ({reason})",
                    {Attr.POOL: self.name, Attr.INSTANCE: eid, Attr.DECISION_REASON: reason,
                     Attr.EJECTION_COUNT: inst.outlier.ejections, Attr.HEALTH_CHECK: "passive",
                     Attr.EVENT_ID: self.ejection_events.pop(eid, "")})

    def _transition(self, inst: Instance, check: str, detail: str) -> None:
        now = self.clock()
        new = inst.state(now)
        old = inst.last_state
        self._changed()
        if new == old:
            return
        inst.last_state = new
        if new == EndpointState.HEALTHY.value and self.config.slow_start is not None:
            inst.usable_since = now
        # an ejection's transition carries the ejection's id; any other is an event of its own
        event_id = self.ejection_events.get(inst.endpoint.id) if new == EndpointState.EJECTED.value else None
        self.notify(Event.HEALTH_TRANSITION, f"pool {self.name}: {inst.endpoint.id} {old} -> {new} ({detail})",
                    {Attr.POOL: self.name, Attr.INSTANCE: inst.endpoint.id, Attr.ZONE: inst.endpoint.zone,
                     Attr.HEALTH_FROM: old, Attr.HEALTH_TO: new, Attr.HEALTH_CHECK: check, Attr.PROBE_RESULT: detail,
                     Attr.EVENT_ID: event_id or new_event_id()},
                    severity="INFO" if new == EndpointState.HEALTHY.value else "WARN")
        self.view()

    # --- membership (service discovery) ---------------------------------------------------------------------

    def set_members(self, instances: Sequence[InstanceConfig], why: str) -> MembershipChange:
        """Replace the instance list (ids unique: the first of duplicates wins). Reports one
        `gatewatch.discovery.change` event saying what changed and `why` (e.g. "dns A api.internal ttl 30")."""
        now = self.clock()
        old = self.instances
        first = not old  # an empty pool's first set starts as a static pool does: healthy, no ramp
        hc, ss = self.config.health_check, self.config.slow_start
        members: dict[str, Instance] = {}
        added, updated = [], []
        for spec in instances:
            e = self._endpoint(spec, len(members))
            if e.id in members:
                continue
            inst = old.get(e.id)
            if inst is not None and (inst.endpoint.host, inst.endpoint.port) == (e.host, e.port):
                prev = inst.endpoint
                if (prev.weight, prev.priority, prev.zone) != (e.weight, e.priority, e.zone) \
                        or spec.draining != inst.source_draining:
                    updated.append(e.id)
                inst.endpoint = e
            else:  # new, or the same id at a new address: a new instance, whose state starts afresh
                inst = self._instance(e, spec.draining)
                if not first and hc is not None and not spec.draining:
                    # Not known to answer yet: it takes traffic after its first passing probe (the checker probes
                    # it at once), and ramps from there with slow start.
                    inst.probe.healthy = False
                    inst.probe.passes = hc.healthy_threshold - 1
                elif not first and ss is not None:
                    inst.usable_since = now
                inst.last_state = inst.state(now)
                (updated if inst.endpoint.id in old else added).append(e.id)
                self.in_flight.setdefault(e.id, 0)
            members[e.id] = inst
        removed = tuple(eid for eid in old if eid not in members)
        change = MembershipChange(tuple(added), removed, tuple(updated))
        if not change:
            return change
        for eid in removed:
            self.full.discard(eid)
            self.ejection_events.pop(eid, None)
            if not self.in_flight.get(eid):  # else its requests finish, and the count retires at zero (tick)
                self.in_flight.pop(eid, None)
        self.instances = members
        self.endpoints = tuple(i.endpoint for i in members.values())
        self._by_id = {e.id: e for e in self.endpoints}
        self._affinity_keys = {self.affinity_value(e.id): e.id for e in self.endpoints}
        self.primary_priority = min((e.priority for e in self.endpoints), default=0)
        # The algorithms' per-set work (WRR schedule, cumulative weights, ring, Maglev table) is for the old set.
        st = self._state
        st.all_endpoints, st.schedule, st.schedule_for = self.endpoints, None, None
        st.cache.clear()
        for eid in [k for k in st.current if k not in members]:
            del st.current[eid]
        self._changed()
        prepare(self.algorithm, self.view().candidates, st)
        self._report_membership(change, why)
        for eid in change.updated:  # a source's draining flag (k8s: terminating) changed
            inst = members[eid]
            spec_draining = next(i.draining for i in instances if i.instance_id == eid)
            if inst.source_draining != spec_draining:
                inst.source_draining = inst.draining = spec_draining
                self._transition(inst, "discovery", "terminating" if spec_draining else "serving")
        return change

    def _report_membership(self, change: MembershipChange, why: str) -> None:
        parts = [f"{label} {', '.join(ids[:EXCLUDED_LISTED])}" + (f" (+{len(ids) - EXCLUDED_LISTED} more)"
                                                                  if len(ids) > EXCLUDED_LISTED else "")
                 for label, ids in (("added", change.added), ("removed", change.removed),
                                    ("updated", change.updated)) if ids]
        self.notify(Event.DISCOVERY_CHANGE, f"pool {self.name}: {'; '.join(parts)} ({why}); "
                    f"{len(self.instances)} instance(s)",
                    {Attr.POOL: self.name, Attr.DISCOVERY_SOURCE: self.source, Attr.DISCOVERY_DETAIL: why,
                     Attr.DISCOVERY_ADDED: list(change.added), Attr.DISCOVERY_REMOVED: list(change.removed),
                     Attr.DISCOVERY_UPDATED: list(change.updated), Attr.DISCOVERY_INSTANCES: len(self.instances),
                     Attr.EVENT_ID: new_event_id()})

    # --- reporting ------------------------------------------------------------------------------------------

    def states(self) -> dict[str, str]:
        now = self.clock()
        return {i.endpoint.id: i.state(now) for i in self.instances.values()}

    def slow_start_ratio(self, endpoint_id: str) -> float:
        return self._ramp(self.instances[endpoint_id], self.clock(), self.config.slow_start)
