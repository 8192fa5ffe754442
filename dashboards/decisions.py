"""Decisions: why requests were refused — denies by policy and reason, auth failures, rate-limited consumers,
rate-limit stores, policy evaluation time, circuit breakers, config reloads — and the decision logs themselves,
each linked to its trace.

Variables: `route`, `event_id` (one state-change event). Reasons come from the closed vocabularies in
`telemetry.names` (`PolicyReason`, `Verdict`). Policy evaluation time is recorded on spans only
(`gatewatch.policy.durations_s`, `gatewatch.ratelimit.store_rtt_s`): its panel is a Tempo search.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.loki import decision_logs, event_lines, field, state_event_logs
from gatewatch.dashboards.promql import (CIRCUIT_STATE, CONFIG_RELOADS, DECISIONS, EDGE, POLICY_VERDICTS, RANGE,
                               RATE_LIMITED_CONSUMERS, RATELIMIT_STORE_UP, AUTH_PROVIDER_UP, SERVER_COUNT, increase, regex_of, sel,
                               sum_, sum_rate)
from gatewatch.telemetry.names import (CONSUMER_LABEL_CAP, OVERFLOW_LABEL, Attr, DecisionKind, Label, Layer, Outcome,
                             PolicyReason, Verdict)

ROUTE = {Label.ROUTE: "~$route"}
REJECTIONS = [o for o in Outcome if o not in (Outcome.PROXIED, Outcome.PREFLIGHT)]
AUTH_FAILURES = [r for r in PolicyReason if r.value.startswith(("jwt.", "apikey."))
                 and r not in (PolicyReason.JWT_VALID, PolicyReason.APIKEY_VALID)]
STORE_ERRORS = [PolicyReason.RATELIMIT_STORE_UNAVAILABLE]


def policy_timing_traceql() -> str:
    """Edge SERVER spans of the selected routes with each policy's evaluation time and the store's round trip."""
    return (f'{{ span.{Attr.LAYER} = "{Layer.EDGE}" && kind = server && span.{Attr.ROUTE} =~ "${{route:regex}}" }} '
            f'| select(span.{Attr.POLICY_SUMMARY}, span.{Attr.POLICY_DURATIONS}, span.{Attr.RATELIMIT_STORE_RTT})')


def build(opts) -> gd.Dashboard:  # noqa: ARG001
    deny = {Label.VERDICT: Verdict.DENY.value}
    d = P.new_dashboard("decisions", "Gatewatch / Decisions",
                        "Why requests were refused or redirected: every policy verdict with its reason.")
    d = d.with_variable(P.query_var("route", "Route", f"label_values({sel(SERVER_COUNT, EDGE)}, {Label.ROUTE})",
                                    "Edge routes (config names)."))
    d = d.with_variable(P.event_id_box())

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

    d = d.with_row(gd.Row("Rate-limit stores and policy time"))
    d = d.with_panel(P.state_timeline(
        "Rate-limit store up / down", "Each Redis store a rate-limit policy uses: up (1) while it answers, down (0) "
        "from a failed command until one succeeds — the lowest value any Gatewatch process reports. While a "
        "store is down its policies apply their fail mode (open: unlimited; closed: 429). "
        "GatewatchRateLimitStoreUnavailable pages after 3 minutes down.",
        [P.prom(f"min by ({Label.STORE}) ({RATELIMIT_STORE_UP})", "{{store}}")],
        colors=[(None, "red"), (1, "green")]))
    d = d.with_panel(P.state_timeline(
        "Identity providers up / down", "Each endpoint an authentication policy calls (OIDC discovery, JWKS, token "
        "introspection), by provider as configured: up (1) while it answers, down (0) from a failed call until one "
        "succeeds — the lowest value any Gatewatch process reports. JWT policies keep validating with the last "
        "good keys; introspection applies its fail_mode (closed: 503). GatewatchAuthProviderDown pages after 3 "
        "minutes down.",
        [P.prom(f"min by ({Label.PROVIDER}, {Label.ENDPOINT}) ({AUTH_PROVIDER_UP})", "{{endpoint}} {{provider}}")],
        colors=[(None, "red"), (1, "green")]))
    d = d.with_panel(P.timeseries(
        "Requests decided without the store", "Rate-limit verdicts with reason ratelimit.store_unavailable, by "
        "route and policy: the requests the store's fail mode decided.",
        [P.prom(sum_rate(sel(POLICY_VERDICTS, ROUTE, reason="~" + regex_of(STORE_ERRORS)), Label.ROUTE,
                         Label.POLICY), "{{gatewatch_route}} {{gatewatch_policy}}")], "reqps"))
    d = d.with_panel(P.logs(
        "Rate-limit store transitions", "gatewatch.ratelimit.store.transition events (up → down, down → up), each "
        "line ending with the outage's event id (the same on its down and up events) and the request that ran "
        "into it. Expand a row: gatewatch_event_id links to every request the outage affected (Tempo).",
        state_event_logs(Attr.STORE_TO, extra=f' | {field(Attr.EVENT_ID)}=~"$event_id"' + event_lines()), w=12))
    d = d.with_panel(P.traceql_table(
        "Policy evaluation time per request (spans, Tempo)",
        "Policy evaluation time is recorded on spans only: each edge SERVER span of the selected routes lists its "
        "policies (gatewatch.policy.summary), each one's evaluation time in seconds in the same order "
        "(gatewatch.policy.durations_s) and the rate-limit store's round trip (gatewatch.ratelimit.store_rtt_s). "
        "Open a row for the whole trace.", policy_timing_traceql(), w=12, h=10, spans=True))

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
