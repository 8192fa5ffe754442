"""The balancer's live side in one process: the pools with their event reporting, active health checkers,
service discovery (`gatewatch.balancer.discovery`) and the ticker (ejection expiry, slow-start ramps, failover
re-evaluation), and the gauges read at scrape time.

`BalancerRuntime(pool_configs, telemetry, metrics)`; `await start()` / `await stop()`; `refresh_gauges()`;
`state()` for the admin API; `drain(pool, instance, on)`. A discovered pool's membership changes reach its
health checker (new instances probed, removed ones not) and its per-instance metric series (new ones at 0,
removed ones dropped).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from gatewatch.balancer.checker import HealthChecker, TLSSettings
from gatewatch.balancer.config import PoolConfig
from gatewatch.balancer.discovery import build as build_source
from gatewatch.balancer.discovery.runner import PoolDiscovery
from gatewatch.balancer.pool import MembershipChange, Pool
from gatewatch.telemetry.names import Attr, EndpointState, Event, Outcome, ProbeResult, Reason

log = logging.getLogger("gatewatch.balancer")
TICK_S = 1.0
FIRST_REFRESH_WAIT_S = 10.0  # at most, for a discovered pool's first answer before it serves (then: empty)
STATES = (EndpointState.HEALTHY, EndpointState.UNHEALTHY, EndpointState.EJECTED, EndpointState.DRAINING)
EJECTION_REASONS = (Reason.OUTLIER_CONSECUTIVE_5XX, Reason.OUTLIER_CONSECUTIVE_GATEWAY_ERRORS)


def zero_instance_series(m, cfg: PoolConfig, iid: str) -> None:
    """One instance's series at 0 (requests, health transitions by state, ejections by the configured reasons,
    probes by result): at start for configured instances (gatewatch.app.series) and when discovery adds one."""
    oc = cfg.outlier_detection
    m.instance_requests.inc((cfg.name, iid, Outcome.PROXIED.value), 0.0)
    for state in STATES:
        m.health_transitions.labels(cfg.name, iid, state.value)
    for reason, on in ((EJECTION_REASONS[0], oc and oc.consecutive_5xx),
                       (EJECTION_REASONS[1], oc and oc.consecutive_gateway_errors)):
        if on:
            m.ejections.labels(cfg.name, iid, reason.value)
    if cfg.health_check is not None:
        for result in ProbeResult:
            m.health_probes.labels(cfg.name, iid, result.value)


class BalancerRuntime:
    def __init__(self, pools: tuple[PoolConfig, ...], telemetry, metrics,
                 tls: Callable[[str], TLSSettings | None] = lambda name: None):
        self.telemetry = telemetry
        self.metrics = metrics
        self.tls = tls  # a pool's TLS settings, for its health checks (the app builds them, as for requests)
        self.pools = {p.name: Pool(p, notify=self._notify) for p in pools}
        self._checkers = [HealthChecker(p, metrics, tls=tls(p.config.name)) for p in self.pools.values()
                          if p.config.health_check]
        self._discovery = {p.name: self._discoverer(p) for p in self.pools.values() if p.config.discovery}
        self._ticker: asyncio.Task | None = None

    def _discoverer(self, pool: Pool) -> PoolDiscovery:
        return PoolDiscovery(pool, build_source(pool.config.discovery), self.metrics, self._notify,
                             self._membership_changed)

    def _membership_changed(self, pool: Pool, change: MembershipChange) -> None:
        """After discovery changed a pool: its checker follows, new instances' series start at 0, removed
        instances' series go (a scrape no longer shows instances that are gone)."""
        for c in self._checkers:
            if c.pool is pool:
                c.sync()
        m = self.metrics
        for iid in change.added:
            zero_instance_series(m, pool.config, iid)
        for iid in change.removed:
            m.instance_requests.forget({0: pool.name, 1: iid})
            m.client_duration.forget({2: pool.name, 3: iid})
            series = [(m.in_flight, ()), (m.slow_start, ())]
            series += [(m.health_transitions, (s.value,)) for s in STATES]
            series += [(m.ejections, (r.value,)) for r in EJECTION_REASONS]
            series += [(m.health_probes, (r.value,)) for r in ProbeResult]
            for metric, rest in series:
                try:
                    metric.remove(pool.name, iid, *rest)
                except KeyError:  # never created
                    pass

    def _notify(self, event: Event, body: str, attrs: dict, trace_id: str | None = None, span_id: str | None = None,
                severity: str = "INFO") -> None:
        """Every pool state change: a log record (with the causing request's trace when there is one) and its
        counter. Logged locally too: an operator tailing the process sees ejections and failovers."""
        m = self.metrics
        pool, instance, reason = attrs.get(Attr.POOL, ""), attrs.get(Attr.INSTANCE, ""), attrs.get(Attr.DECISION_REASON, "")
        if event is Event.HEALTH_TRANSITION:
            m.health_transitions.labels(pool, instance, attrs[Attr.HEALTH_TO]).inc()
        elif event is Event.OUTLIER_EJECTION and Attr.EJECTION_DURATION_S in attrs:
            m.ejections.labels(pool, instance, reason).inc()
        elif event is Event.DECISION_FAILOVER and (Attr.FAILOVER_TO in attrs or attrs.get(Attr.LB_PANIC)):
            m.failovers.labels(pool, reason).inc()
        (log.warning if severity == "WARN" else log.info)("%s", body)
        self.telemetry.event(event, body, attrs, int(trace_id, 16) if trace_id else None,
                             int(span_id, 16) if span_id else None, severity)

    async def start(self) -> None:
        for c in self._checkers:
            await c.start()
        await self._start_discovery(list(self._discovery.values()))
        self._ticker = asyncio.get_running_loop().create_task(self._tick())

    @staticmethod
    async def _start_discovery(discoveries: list[PoolDiscovery]) -> None:
        """Start them and wait (bounded) for each one's first refresh: a pool serves once it knows its
        instances, or after FIRST_REFRESH_WAIT_S with none (its picks then say no_healthy_upstream)."""
        for d in discoveries:
            await d.start()
        if discoveries:
            await asyncio.wait([asyncio.ensure_future(d.first.wait()) for d in discoveries],
                               timeout=FIRST_REFRESH_WAIT_S)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            for p in self.pools.values():
                try:
                    p.tick()
                except Exception:
                    log.exception("pool %s tick failed", p.name)

    async def stop(self) -> None:
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        for d in self._discovery.values():
            await d.stop()
        for c in self._checkers:
            await c.stop()

    async def reconcile(self, pools: tuple[PoolConfig, ...]) -> dict[str, Pool]:
        """After a config reload: a pool whose config is unchanged keeps its `Pool` (health, ejections, in-flight
        counts, cursors), its checker and its discovery (with the members it found); a new or changed pool
        starts fresh, with a new checker and discovery (whose first refresh is awaited, bounded, before the new
        pool is returned); a removed pool's checker and discovery stop. Returns the new name → Pool map
        (requests already running keep the old one)."""
        new: dict[str, Pool] = {}
        keep_checkers = []
        for cfg in pools:
            old = self.pools.get(cfg.name)
            new[cfg.name] = old if old is not None and old.config == cfg else Pool(cfg, notify=self._notify)
        for c in self._checkers:
            if new.get(c.pool.name) is c.pool:
                keep_checkers.append(c)
            else:
                await c.stop()
        discovery, fresh = {}, []
        for name, d in self._discovery.items():
            if new.get(name) is d.pool:
                discovery[name] = d
            else:
                await d.stop()
        for p in new.values():
            if p.config.discovery and p.name not in discovery:
                discovery[p.name] = self._discoverer(p)
                fresh.append(discovery[p.name])
        started = []
        for p in new.values():
            if p.config.health_check and not any(c.pool is p for c in keep_checkers):
                checker = HealthChecker(p, self.metrics, tls=self.tls(p.config.name))
                await checker.start()
                started.append(checker)
        self._checkers = keep_checkers + started
        self._discovery = discovery
        await self._start_discovery(fresh)
        self.pools = new
        return new

    def drain(self, pool: str, instance: str, on: bool) -> bool:
        p = self.pools.get(pool)
        return p is not None and p.set_draining(instance, on)

    def refresh_gauges(self) -> None:
        m = self.metrics
        for pool in self.pools.values():
            states = pool.states()
            view = pool.view()
            counts = {s.value: 0 for s in EndpointState}
            for eid, state in states.items():
                ratio = pool.slow_start_ratio(eid)
                if state == EndpointState.HEALTHY.value and ratio < 1.0:
                    counts[EndpointState.SLOW_START.value] += 1
                counts[state] += 1
                m.in_flight.labels(pool.name, eid).set(pool.in_flight[eid])
                if pool.config.slow_start is not None:
                    m.slow_start.labels(pool.name, eid).set(ratio)
            for state, n in counts.items():
                m.endpoints.labels(pool.name, state).set(n)
            m.ejected.labels(pool.name).set(counts[EndpointState.EJECTED.value])
            m.panic_mode.labels(pool.name).set(1 if view.panic else 0)
            m.active_priority.labels(pool.name).set(view.priority)

    def state(self) -> dict:
        out = {}
        for p in self.pools.values():
            states, view = p.states(), p.view()
            out[p.name] = {
                "algorithm": p.algorithm.value, "active_priority": view.priority, "panic": view.panic,
                "source": p.source,
                "instances": [{
                    "id": e.id, "host": e.host, "port": e.port, "weight": e.weight, "zone": e.zone,
                    "priority": e.priority, "state": states[e.id], "in_flight": p.in_flight[e.id],
                    "slow_start_ratio": round(p.slow_start_ratio(e.id), 3),
                    "ejections": p.instances[e.id].outlier.ejections if p.instances[e.id].outlier else 0,
                    "source": e.source,
                } for e in p.endpoints]}
            d = self._discovery.get(p.name)
            if d is not None:
                out[p.name]["discovery"] = d.state()
        return out
