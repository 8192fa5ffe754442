"""`circuit_breaker`: stop sending a failing route's requests upstream for a while.

    closed --(`failures` consecutive upstream failures)--> open --(`open_s` elapsed)--> half_open
    half_open --(a probe succeeds)--> closed        half_open --(a probe fails)--> open

While open, requests are answered 503 `circuit_open` without contacting the upstream (circuit.open); half-open
lets `half_open_probes` requests through at a time (circuit.half_open_probe) and refuses the rest
(circuit.half_open_rejected). The breaker learns in `observe`, once per request it let through: an upstream
connect error, timeout or reset, or a status in `failure_statuses`, is a failure; a relayed response with any
other status a success; anything else (a later policy refused, the client left) teaches nothing.

Every transition is a `gatewatch.circuit.transition` event and moves the `gatewatch_circuit_state` gauge. In
shadow mode the state machine runs the same, but requests are never refused (shadow_deny is recorded).
"""

from __future__ import annotations

import time
from typing import Callable

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny
from gatewatch.telemetry.names import Attr, CircuitState, Event, Outcome, PolicyReason as R

FAILURE_OUTCOMES = frozenset({Outcome.UPSTREAM_CONNECT_ERROR.value, Outcome.UPSTREAM_TLS_ERROR.value,
                              Outcome.UPSTREAM_TIMEOUT.value,
                              Outcome.UPSTREAM_ERROR.value})
PASSED, PROBE = "passed", "probe"


class Breaker:
    """The state machine alone: pure apart from the clock it is given."""

    def __init__(self, failures: int, open_s: float, probes: int):
        self.failures, self.open_s, self.probes = failures, open_s, probes
        self.state = CircuitState.CLOSED
        self.consecutive = 0
        self.opened_at = 0.0
        self.probes_out = 0

    def admit(self, now: float) -> tuple[str | None, tuple[CircuitState, CircuitState] | None]:
        """(PASSED | PROBE | None=refused, transition if time moved the state)."""
        moved = None
        if self.state is CircuitState.OPEN and now - self.opened_at >= self.open_s:
            moved = self._move(CircuitState.HALF_OPEN, now)
        if self.state is CircuitState.CLOSED:
            return PASSED, moved
        if self.state is CircuitState.HALF_OPEN and self.probes_out < self.probes:
            self.probes_out += 1
            return PROBE, moved
        return None, moved

    def result(self, admitted: str, failed: bool | None, now: float) -> tuple[CircuitState, CircuitState] | None:
        """Learn from one admitted request (`failed` None: no verdict on the upstream)."""
        if admitted == PROBE:
            self.probes_out = max(0, self.probes_out - 1)
            if self.state is not CircuitState.HALF_OPEN or failed is None:
                return None
            return self._move(CircuitState.OPEN if failed else CircuitState.CLOSED, now)
        if self.state is not CircuitState.CLOSED or failed is None:
            return None
        self.consecutive = self.consecutive + 1 if failed else 0
        if self.consecutive >= self.failures:
            return self._move(CircuitState.OPEN, now)
        return None

    def _move(self, to: CircuitState, now: float) -> tuple[CircuitState, CircuitState]:
        frm, self.state = self.state, to
        self.consecutive, self.probes_out = 0, 0
        if to is CircuitState.OPEN:
            self.opened_at = now
        return frm, to


class CircuitBreakerPolicy:
    type = "circuit_breaker"

    def __init__(self, cfg, route: str, metrics, telemetry, monotonic: Callable[[], float] = time.monotonic):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.route = route
        self.metrics, self.telemetry, self._mono = metrics, telemetry, monotonic
        self.breaker = Breaker(cfg.failures, cfg.open_s, cfg.half_open_probes)
        self.failure_statuses = frozenset(cfg.failure_statuses)
        self._gauge(CircuitState.CLOSED)

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        admitted, moved = self.breaker.admit(self._mono())
        if moved:
            self._transition(*moved, R.CIRCUIT_HALF_OPEN_PROBE, req)
        if admitted is not None:
            req.state[self.name] = admitted
            return allow(self, R.CIRCUIT_CLOSED.value if admitted == PASSED else R.CIRCUIT_HALF_OPEN_PROBE.value)
        reason = R.CIRCUIT_OPEN if self.breaker.state is CircuitState.OPEN else R.CIRCUIT_HALF_OPEN_REJECTED
        verdict = deny(self, reason.value, 503, Outcome.CIRCUIT_OPEN, None,
                       (("Retry-After", str(max(1, round(self.cfg.open_s)))),))
        if not verdict.block:
            req.state[self.name] = "shadow"  # passes, teaches nothing
        return verdict

    def observe(self, req: PolicyRequest, outcome: str | None, status: int | None) -> None:
        admitted = req.state.get(self.name)
        if admitted not in (PASSED, PROBE):
            return
        if outcome in FAILURE_OUTCOMES:
            failed = True
        elif outcome == Outcome.PROXIED.value:
            failed = status in self.failure_statuses
        else:
            failed = None
        moved = self.breaker.result(admitted, failed, self._mono())
        if moved:
            reason = R.CIRCUIT_OPEN if moved[1] is CircuitState.OPEN else R.CIRCUIT_CLOSED
            self._transition(*moved, reason, req)

    def _gauge(self, state: CircuitState) -> None:
        for s in CircuitState:
            self.metrics.circuit_state.labels(self.route, s.value).set(1 if s is state else 0)

    def _transition(self, frm: CircuitState, to: CircuitState, reason: R, req: PolicyRequest | None = None) -> None:
        self._gauge(to)
        self.telemetry.event(
            Event.CIRCUIT_TRANSITION, f"circuit {self.name} on route {self.route}: {frm.value} -> {to.value}",
            {Attr.ROUTE: self.route, Attr.POLICY_NAME: self.name, Attr.POLICY_TYPE: self.type,
             Attr.CIRCUIT_FROM: frm.value, Attr.CIRCUIT_TO: to.value, Attr.DECISION_REASON: reason.value},
            # the request whose result (or admission) moved the breaker
            trace_id=req.trace_id if req is not None else None, span_id=req.span_id if req is not None else None,
            severity="WARN" if to is CircuitState.OPEN else "INFO")
