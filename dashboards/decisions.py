"""Decisions: why requests were refused — denies by policy and reason, auth failures, rate-limited consumers,
circuit breakers, config reloads — and the decision logs themselves, each linked to its trace.

Variable: `route`. Reasons come from the closed vocabularies in `telemetry.names` (`PolicyReason`, `Verdict`).
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.loki import decision_logs, field, state_event_logs
from gatewatch.dashboards.promql import (CIRCUIT_STATE, CONFIG_RELOADS, DECISIONS, EDGE, POLICY_VERDICTS, RANGE,
                               RATE_LIMITED_CONSUMERS, SERVER_COUNT, increase, regex_of, sel, sum_, sum_rate)
from gatewatch.telemetry.names import (CONSUMER_LABEL_CAP, OVERFLOW_LABEL, Attr, DecisionKind, Label, Outcome,
                             PolicyReason, Verdict)

ROUTE = {Label.ROUTE: "~$route"}
REJECTIONS = [o for o in Outcome if o not in (Outcome.PROXIED, Outcome.PREFLIGHT)]
AUTH_FAILURES = [r for r in PolicyReason if r.value.startswith(("jwt.", "apikey."))
                 and r not in (PolicyReason.JWT_VALID, PolicyReason.APIKEY_VALID)]


def build(opts) -> gd.Dashboard:  # noqa: ARG001
    deny = {Label.VERDICT: Verdict.DENY.value}
    d = P.new_dashboard("decisions", "Gatewatch / Decisions",
                        "Why requests were refused or redirected: every policy verdict with its reason.")
    d = d.with_variable(P.query_var("route", "Route", f"label_values({sel(SERVER_COUNT, EDGE)}, {Label.ROUTE})",
                                    "Edge routes (config names)."))

    d = d.with_row(gd.Row("Refusals"))
    d = d.with_panel(P.timeseries(
        "Denies by policy and reason", "Requests a policy refused, per policy (config name) and reason.",
        [P.prom(sum_rate(sel(POLICY_VERDICTS, deny, **ROUTE), Label.POLICY, Label.REASON),
                "{{gatewatch_policy}} {{reason}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Shadow denies by policy and reason", "Requests a policy in shadow mode would have refused (they went "
        "through): what enforcing it would cost.",
        [P.prom(sum_rate(sel(POLICY_VERDICTS, {Label.VERDICT: Verdict.SHADOW_DENY.value}, **ROUTE), Label.POLICY,
                         Label.REASON), "{{gatewatch_policy}} {{reason}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Authentication failures by reason", "JWT and API-key denials by reason (expired, bad signature, "
        "unknown kid, missing, ...).",
        [P.prom(sum_rate(sel(POLICY_VERDICTS, deny, ROUTE, reason="~" + regex_of(AUTH_FAILURES)), Label.REASON),
                "{{reason}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Rejections at the edge by outcome", "Edge requests answered locally, by outcome (denied_auth, "
        "rate_limited, denied_policy, no_route, ...).",
        [P.prom(sum_rate(sel(SERVER_COUNT, EDGE, ROUTE, gatewatch_outcome="~" + regex_of(REJECTIONS)),
                         Label.OUTCOME), "{{gatewatch_outcome}}")], "reqps", stack=True))
    d = d.with_panel(P.table(
        "Rate-limited consumers (top 10)",
        f"Requests refused by rate limits per consumer over the range. Consumer labels are capped at "
        f"{CONSUMER_LABEL_CAP} distinct names; later ones are counted under `{OVERFLOW_LABEL}`.",
        [P.prom(f"topk(10, {sum_(increase(sel(RATE_LIMITED_CONSUMERS, ROUTE), RANGE), Label.CONSUMER)})",
                instant=True, table=True)]))
    d = d.with_panel(P.timeseries(
        "Policy verdicts by type and verdict", "All verdicts (allow, deny, shadow_deny, error) per policy type.",
        [P.prom(sum_rate(sel(POLICY_VERDICTS, ROUTE), Label.POLICY_TYPE, Label.VERDICT),
                "{{gatewatch_policy_type}} {{verdict}}")], "reqps"))

    d = d.with_row(gd.Row("Circuit breakers and config"))
    d = d.with_panel(P.state_timeline(
        "Circuit breaker state per route", "The current state (closed / open / half_open) per route.",
        [P.prom(f"max by ({Label.ROUTE}, {Label.STATE}) ({sel(CIRCUIT_STATE, ROUTE)}) == 1",
                "{{gatewatch_route}} {{state}}")], colors=[(None, "transparent"), (1, "orange")]))
    d = d.with_panel(P.timeseries(
        "Config reloads by result", "Reloads applied or rejected (a rejected reload keeps the old config).",
        [P.prom(sum_(increase(sel(CONFIG_RELOADS)), Label.RESULT), "{{result}}")], "short"))
    d = d.with_panel(P.timeseries(
        "Decisions by kind and result", "Every recorded decision (route, policy, pick, retry, failover) by "
        "result.",
        [P.prom(sum_rate(sel(DECISIONS), Label.LAYER, Label.DECISION, Label.RESULT),
                "{{gatewatch_layer}} {{decision}} {{result}}")], "ops", w=24))

    d = d.with_row(gd.Row("Decision logs (Loki)"))
    d = d.with_panel(P.logs(
        "Policy decisions (denies, shadow denies, errors)",
        "gatewatch.decision.policy records of the selected routes; expand one and follow trace_id to Tempo.",
        decision_logs(DecisionKind.POLICY, extra=f' | {field(Attr.ROUTE)}=~"$route"'), w=12))
    d = d.with_panel(P.logs(
        "Circuit breaker transitions", "gatewatch.circuit.transition events (from → to, per route).",
        state_event_logs(Attr.CIRCUIT_TO), w=12))
    return d
