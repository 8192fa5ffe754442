"""Balancer & health: instance states per pool, failovers, ejections, retries, panic mode, slow start, saturation.

Variables: `pool`, `instance`, `event_id` (a text box: one state-change event, e.g. from a span's
`gatewatch.event.ids`). The Loki panels show the balancer's own account: the request-level failover and retry
decisions, and the pool's state changes (failover episodes, health transitions, ejections), each with its event id
and the trace ids of the requests that caused it; an event id opens the requests it affected in Tempo (derived
field of the Loki datasource, see provisioning.py).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.loki import decision_logs, event_lines, field, state_event_logs
from gatewatch.dashboards.promql import (ACTIVE_PRIORITY, BALANCER, CLIENT_COUNT, EJECTED, EJECTIONS, ENDPOINTS, FAILOVERS,
                               HEALTH_PROBES, HEALTH_TRANSITIONS, IN_FLIGHT, INSTANCE_REQUESTS, PANIC_MODE, RETRIES,
                               RETRY_BUDGET_EXHAUSTED, SLOW_START, ejections_and_probes, failover_share, increase,
                               or_zero, ratio, sel, serving_and_instances, sum_, sum_rate)
from gatewatch.dashboards.promql import DISCOVERY_REFRESHES
from gatewatch.telemetry.names import Attr, DecisionKind, Label

POOL = {Label.POOL: "~$pool"}
INSTANCE = {Label.INSTANCE: "~$instance"}
UPSTREAM_IS_POOL = {Label.UPSTREAM: "~$pool"}
PL, I, REASON = Label.POOL, Label.INSTANCE, Label.REASON
EJECTION_WINDOW = "10m"  # as GatewatchEjectedWhileProbesPass


def healthy_share() -> str:
    """Share of each pool's instances that take traffic (healthy, slow start included), each counted once."""
    return ratio(*serving_and_instances(POOL))


def ejected_while_probes_pass() -> str:
    """Per instance: its ejections over the last 10 m when every active probe of it in that window passed, else 0
    (the signal of GatewatchEjectedWhileProbesPass, as a number that exists while all is well)."""
    ejected, passed, failed = ejections_and_probes(EJECTION_WINDOW, POOL, INSTANCE)
    return f"{ejected} * ({passed} > bool 0) * ({failed} == bool 0)"


def build(opts) -> gd.Dashboard:  # noqa: ARG001 - same signature as the other boards
    d = P.new_dashboard("balancer", "Gatewatch / Balancer & health",
                        "Pools and instances: health, ejections, failovers, retries, panic mode, slow start.")
    d = d.with_variable(P.query_var("pool", "Pool", f"label_values({ENDPOINTS}, {PL})", "Balancer pools."))
    d = d.with_variable(P.query_var(
        "instance", "Instance", f"label_values({sel(CLIENT_COUNT, BALANCER, **UPSTREAM_IS_POOL)}, {I})",
        "Instances of the selected pools that received attempts."))
    d = d.with_variable(P.event_id_box())

    d = d.with_row(gd.Row("Instance states"))
    d = d.with_panel(P.state_timeline(
        "Instances per pool and state",
        "How many instances of each pool are healthy, in slow start, unhealthy (active checks), ejected "
        "(outlier detection) or draining, over time.",
        [P.prom(f"sum by ({PL}, {Label.STATE}) ({sel(ENDPOINTS, POOL)})", "{{gatewatch_pool}} {{state}}")],
        colors=[(None, "transparent"), (1, "blue")]))
    d = d.with_panel(P.timeseries(
        "Healthy share per pool", "Instances taking traffic / all instances. Below the panic threshold the pool "
        "balances across all instances (panic mode).",
        [P.prom(healthy_share(), "{{gatewatch_pool}}")], "percentunit", max_=1))
    d = d.with_panel(P.state_timeline(
        "Panic mode", "1 while a pool ignores health because too few instances are healthy.",
        [P.prom(f"max by ({PL}) ({sel(PANIC_MODE, POOL)})", "{{gatewatch_pool}}")],
        colors=[(None, "green"), (1, "red")]))
    d = d.with_panel(P.state_timeline(
        "Active priority level", "The priority level taking traffic (0 = primary); a change is a failover.",
        [P.prom(f"max by ({PL}) ({sel(ACTIVE_PRIORITY, POOL)})", "{{gatewatch_pool}}")],
        colors=[(None, "green"), (1, "orange")]))

    d = d.with_row(gd.Row("Failovers, ejections, retries"))
    d = d.with_panel(P.timeseries(
        "Requests served while failing over, by kind (share)",
        "Share of each pool's requests served while it was failing over: by a retry sent to another instance "
        "(retry), from a failover priority level (priority), or in panic mode (panic); the rest were served "
        "normally. GatewatchFailoverSpike pages above 5 % over 5 m. A long failover with few moves (one "
        "priority change, then most requests on the failover level) shows here, not in the moves panel.",
        [P.prom(failover_share(POOL, by=(PL, Label.FAILOVER)), "{{gatewatch_pool}} {{failover}}")],
        "percentunit", stack=True, max_=1))
    d = d.with_panel(P.timeseries(
        "Failover moves by reason", "Moves, not requests: traffic moved to another priority level (degraded / "
        "recovered), a retry went to another instance, the pool entered or left panic mode.",
        [P.prom(sum_rate(sel(FAILOVERS, POOL), PL, REASON), "{{gatewatch_pool}} {{reason}}")], "ops", stack=True))
    d = d.with_panel(P.timeseries(
        "Ejections by instance and reason (bars) and ejected instances",
        "Outlier ejections per instance and reason, and how many instances are ejected right now.",
        [P.prom(sum_(increase(sel(EJECTIONS, POOL, **INSTANCE)), PL, I, REASON),
                "{{gatewatch_instance}} {{reason}}"),
         P.prom(f"sum by ({PL}) ({sel(EJECTED, POOL)})", "ejected now: {{gatewatch_pool}}")], "short"))
    d = d.with_panel(P.timeseries(
        "Ejected while its health check passes (10 m)",
        "Per instance: outlier ejections in the last 10 minutes when every active probe of it in that window "
        "passed, else 0. Above 0, real requests fail on an instance the health check calls healthy: the check "
        "does not test what traffic uses (GatewatchEjectedWhileProbesPass opens a ticket after 5 minutes).",
        [P.prom(ejected_while_probes_pass(), "{{gatewatch_pool}} {{gatewatch_instance}}")], "short"))
    d = d.with_panel(P.timeseries(
        "Retries by reason", "Retries taken per upstream and reason.",
        [P.prom(sum_rate(sel(RETRIES, UPSTREAM_IS_POOL), Label.UPSTREAM, REASON),
                "{{gatewatch_upstream}} {{reason}}")], "ops", stack=True))
    d = d.with_panel(P.timeseries(
        "Retry budget use", "Retries as a share of attempts per upstream (the budget caps this share), and "
        "retries refused because the budget was exhausted.",
        [P.prom(ratio(or_zero(sum_rate(sel(RETRIES, UPSTREAM_IS_POOL), Label.UPSTREAM),
                              sum_rate(sel(CLIENT_COUNT, BALANCER, UPSTREAM_IS_POOL), Label.UPSTREAM)),
                      sum_rate(sel(CLIENT_COUNT, BALANCER, UPSTREAM_IS_POOL), Label.UPSTREAM)),
                "retry share {{gatewatch_upstream}}"),
         P.prom(sum_rate(sel(RETRY_BUDGET_EXHAUSTED, UPSTREAM_IS_POOL), Label.ROUTE, Label.UPSTREAM),
                "budget exhausted/s {{gatewatch_route}} → {{gatewatch_upstream}}")], "percentunit"))

    d = d.with_row(gd.Row("Instances"))
    d = d.with_panel(P.timeseries(
        "Requests per instance by outcome", "Attempts each instance received and how they ended.",
        [P.prom(sum_rate(sel(INSTANCE_REQUESTS, POOL, **INSTANCE), I, Label.OUTCOME),
                "{{gatewatch_instance}} {{gatewatch_outcome}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Saturation: in-flight requests per instance", "Requests being served by each instance right now.",
        [P.prom(f"sum by ({PL}, {I}) ({sel(IN_FLIGHT, POOL, **INSTANCE)})", "{{gatewatch_instance}}")], "short"))
    d = d.with_panel(P.timeseries(
        "Slow start weight", "Effective share of an instance's weight while it ramps up after becoming "
        "healthy (1 = full weight).",
        [P.prom(f"max by ({PL}, {I}) ({sel(SLOW_START, POOL, **INSTANCE)})", "{{gatewatch_instance}}")],
        "percentunit", max_=1))
    d = d.with_panel(P.timeseries(
        "Health probes by result and transitions", "Active health probes per instance and result; state "
        "transitions (to the new state) as bars.",
        [P.prom(sum_rate(sel(HEALTH_PROBES, POOL, **INSTANCE), I, Label.RESULT),
                "{{gatewatch_instance}} {{result}}"),
         P.prom(sum_(increase(sel(HEALTH_TRANSITIONS, POOL, **INSTANCE)), I, Label.STATE),
                "→ {{state}} {{gatewatch_instance}}")], "short"))
    d = d.with_panel(P.timeseries(
        "Discovery refreshes by result", "Per pool with `discovery` (DNS, file, Kubernetes): refreshes of its "
        "instance list and their result — ok (applied, changed or not), or why the last good set was kept "
        "(nxdomain, servfail, timeout, empty, invalid, expired, error). The pool keeps serving its last good set "
        "while refreshes fail, but it no longer follows scale-ups, moves or removals (GatewatchDiscoveryFailing).",
        [P.prom(sum_(increase(sel(DISCOVERY_REFRESHES, POOL)), PL, Label.SOURCE, Label.RESULT),
                "{{gatewatch_pool}} {{source}} {{result}}")], "short", stack=True))

    d = d.with_row(gd.Row("Decision logs and state changes (Loki)"))
    d = d.with_panel(P.logs(
        "Failover and retry decisions", "gatewatch.decision.failover / .retry records of single requests; open "
        "one for its trace.",
        decision_logs(DecisionKind.FAILOVER, DecisionKind.RETRY), w=12))
    d = d.with_panel(P.logs(
        "State changes: failover episodes, health transitions, ejections",
        "Every state change of the selected pools (gatewatch.decision.failover episodes, "
        "gatewatch.health.transition, gatewatch.outlier.ejection), each line ending with its event id and the "
        "trace ids of the requests that caused it. A failover episode or an ejection keeps one event id from "
        "start to end. Expand a row: gatewatch_event_id links to the requests the event affected (Tempo), "
        "trace_id to the request that caused it. The `event_id` box keeps only one event (paste an id from a "
        "span's gatewatch.event.ids).",
        state_event_logs(Attr.POOL, extra=f' | {field(Attr.POOL)}=~"$pool" | {field(Attr.EVENT_ID)}=~"$event_id"'
                         + event_lines()), w=12))
    return d
