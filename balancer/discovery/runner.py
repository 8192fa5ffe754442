"""One pool's discovery at run time: its source's task, what each refresh did to the pool, and its record.

`PoolDiscovery(pool, source, metrics, notify, on_change)`: `start()` runs the source; every `Found` is applied
to the pool (`Pool.set_members`, which reports the membership event) and `on_change(pool, change)` follows a
real change (the runtime's health checker and metric series); every refresh is counted in
`gatewatch_discovery_refreshes_total{pool, source, result}`. A failure keeps the last good set and is a
`gatewatch.discovery.failure` event when the failure starts or changes kind (repeats of the same failure are
counted, not logged again: a state change is logged when the state changes), and the first success after
failures is one more event saying it recovered. `first` is set after the first refresh, good or bad (the runtime
waits for it, bounded, before serving a new pool). `state()` feeds the admin `/upstreams`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable

from gatewatch.balancer.discovery import Failed, Found, Source
from gatewatch.balancer.pool import MembershipChange, Pool
from gatewatch.telemetry.context import new_event_id
from gatewatch.telemetry.names import Attr, DiscoveryResult, Event

log = logging.getLogger("gatewatch.discovery")
RESTART_S = 5.0  # a source that crashed (a bug) is restarted after this


class PoolDiscovery:
    def __init__(self, pool: Pool, source: Source, metrics, notify: Callable[..., None],
                 on_change: Callable[[Pool, MembershipChange], None]):
        self.pool = pool
        self.source = source
        self.metrics = metrics
        self.notify = notify
        self.on_change = on_change
        self.first = asyncio.Event()
        self.failures = 0  # consecutive
        self.last_result: str | None = None
        self.last_detail = ""
        self.last_refresh: float | None = None  # Unix time
        self.last_success: float | None = None
        self.last_error: str | None = None
        self._task: asyncio.Task | None = None
        kind = source.kind.value
        for result in DiscoveryResult:  # present at 0
            metrics.discovery_refreshes.labels(pool.name, kind, result.value)

    async def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                await self.source.run(self.publish)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # a bug in a source must not end discovery for good
                log.exception("discovery of pool %s failed unexpectedly", self.pool.name)
                self.publish(Failed(DiscoveryResult.ERROR, f"internal error: {type(err).__name__}: {err}"))
            await asyncio.sleep(RESTART_S)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    def publish(self, update: Found | Failed) -> None:
        """A source's refresh: applied, counted and reported. Never raises into the source."""
        try:
            self._apply(update)
        except Exception:
            log.exception("applying discovery of pool %s failed", self.pool.name)
        finally:
            self.first.set()

    def _apply(self, update: Found | Failed) -> None:
        pool, kind = self.pool, self.source.kind.value
        now = time.time()
        self.last_refresh = now
        result = DiscoveryResult.OK if isinstance(update, Found) else update.result
        self.metrics.discovery_refreshes.labels(pool.name, kind, result.value).inc()
        if isinstance(update, Found):
            self.last_success, self.last_detail = now, update.detail
            if self.failures:
                self._event(f"pool {pool.name}: discovery recovered after {self.failures} failed refresh(es) "
                            f"({update.detail})", update.detail, DiscoveryResult.OK.value, "INFO")
            self.failures, self.last_result, self.last_error = 0, result.value, None
            change = pool.set_members(update.instances, update.detail)
            if change:
                self.on_change(pool, change)
            return
        self.failures += 1
        self.last_error = update.detail
        if self.last_result != result.value:
            kept = len(pool.instances)
            self._event(f"pool {pool.name}: discovery failed: {update.detail} ({result.value}); keeping the last "
                        f"good set ({kept} instance(s))", update.detail, result.value, "WARN")
        self.last_result = result.value

    def _event(self, body: str, detail: str, result: str, severity: str) -> None:
        self.notify(Event.DISCOVERY_FAILURE, body,
                    {Attr.POOL: self.pool.name, Attr.DISCOVERY_SOURCE: self.source.kind.value,
                     Attr.DISCOVERY_DETAIL: detail, Attr.DISCOVERY_RESULT: result,
                     Attr.DISCOVERY_FAILURES: self.failures, Attr.DISCOVERY_INSTANCES: len(self.pool.instances),
                     Attr.EVENT_ID: new_event_id()}, severity=severity)

    def state(self) -> dict:
        return {"source": self.source.kind.value, "detail": self.last_detail, "result": self.last_result,
                "consecutive_failures": self.failures, "last_error": self.last_error,
                "last_refresh": _iso(self.last_refresh), "last_success": _iso(self.last_success)}


def _iso(t: float | None) -> str | None:
    return None if t is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
