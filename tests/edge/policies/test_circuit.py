"""The circuit breaker's state machine (fake clock) and the policy's verdicts, gauge and transition events."""

from __future__ import annotations

import pytest

from gatewatch.edge.policies.circuit import CircuitBreakerPolicy
from gatewatch.edge.policies.config import CircuitBreakerPolicyConfig
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import Event
from tests.edge.policies.support import FakeClock, NullTelemetry, request


def make(shadow=False, **kw):
    clock, tel, metrics = FakeClock(), NullTelemetry(), Metrics()
    cfg = CircuitBreakerPolicyConfig(name="cb", type="circuit_breaker", failures=2, open_s=10, shadow=shadow, **kw)
    return CircuitBreakerPolicy(cfg, "api", metrics, tel, clock), clock, tel, metrics


async def one(policy, outcome="proxied", status=200):
    req = request()
    v = await policy.evaluate(req)
    policy.observe(req, outcome if not v.block else v.outcome.value, status if not v.block else v.status)
    return v.verdict.value, v.reason


# Each step: (seconds to advance, upstream outcome, status) → (verdict, reason) of that request.
@pytest.mark.parametrize("steps,expected,transitions", [
    # two consecutive failures open it; the next request is refused without reaching the upstream
    ([(0, "upstream_error", 502), (0, "proxied", 503), (0, "proxied", 200)],
     [("allow", "circuit.closed"), ("allow", "circuit.closed"), ("deny", "circuit.open")], [("closed", "open")]),
    # a success in between resets the count
    ([(0, "upstream_timeout", 504), (0, "proxied", 200), (0, "upstream_error", 502), (0, "proxied", 200)],
     [("allow", "circuit.closed")] * 4, []),
    # after open_s a probe goes through; its success closes the circuit
    ([(0, "upstream_error", 502), (0, "upstream_error", 502), (10, "proxied", 200), (0, "proxied", 200)],
     [("allow", "circuit.closed"), ("allow", "circuit.closed"), ("allow", "circuit.half_open_probe"),
      ("allow", "circuit.closed")], [("closed", "open"), ("open", "half_open"), ("half_open", "closed")]),
    # a failed probe opens it again for another open_s
    ([(0, "upstream_error", 502), (0, "upstream_error", 502), (10, "upstream_connect_error", 502),
      (5, "proxied", 200)],
     [("allow", "circuit.closed"), ("allow", "circuit.closed"), ("allow", "circuit.half_open_probe"),
      ("deny", "circuit.open")], [("closed", "open"), ("open", "half_open"), ("half_open", "open")]),
    # 4xx and local refusals teach nothing
    ([(0, "proxied", 404), (0, "denied_auth", 401), (0, "proxied", 429)], [("allow", "circuit.closed")] * 3, []),
])
async def test_state_machine(steps, expected, transitions):
    policy, clock, tel, metrics = make()
    got = []
    for advance, outcome, status in steps:
        clock.advance(advance)
        got.append(await one(policy, outcome, status))
    assert got == expected
    assert [(e[2]["gatewatch.circuit.from"], e[2]["gatewatch.circuit.to"]) for e in tel.events] == transitions
    assert all(e[0] is Event.CIRCUIT_TRANSITION for e in tel.events)


async def test_half_open_admits_only_the_configured_probes_and_the_gauge_follows():
    policy, clock, tel, metrics = make()
    await one(policy, "upstream_error", 502)
    await one(policy, "upstream_error", 502)
    assert metrics.circuit_state.labels("api", "open")._value.get() == 1
    clock.advance(10)
    first, second = request(), request()
    assert (await policy.evaluate(first)).reason == "circuit.half_open_probe"
    v = await policy.evaluate(second)  # the probe is still in flight
    assert (v.verdict.value, v.reason, v.status, v.outcome.value) == ("deny", "circuit.half_open_rejected", 503,
                                                                        "circuit_open")
    assert metrics.circuit_state.labels("api", "half_open")._value.get() == 1
    policy.observe(first, "proxied", 200)
    assert metrics.circuit_state.labels("api", "closed")._value.get() == 1
    assert metrics.circuit_state.labels("api", "open")._value.get() == 0


async def test_shadow_mode_records_would_be_refusals_and_lets_requests_through():
    policy, clock, tel, metrics = make(shadow=True)
    await one(policy, "upstream_error", 502)
    await one(policy, "upstream_error", 502)
    req = request()
    v = await policy.evaluate(req)
    assert (v.verdict.value, v.reason, v.block) == ("shadow_deny", "circuit.open", False)
