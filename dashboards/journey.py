"""Request journey: follow the requests of one route from the edge, through the balancer, to each instance.

Variables: `route` (edge routes) → `upstream` (the pools the balancing layer sends to) → `instance` (that pool's
instances), and a `trace_id` text box for the trace panel. Rows go layer by layer, as a request does:
edge SERVER → balancer SERVER (a separate tier; empty in the built-in pattern) → balancer CLIENT attempts per
instance. Instance series link to their traces; the TraceQL table lists recent slow or failed requests of the
selection whose edge span leads to a balancer CLIENT span to the selected instances.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.options import BuildOptions
from gatewatch.dashboards.promql import (BALANCER, CLIENT_BUCKET, CLIENT_COUNT, EDGE, IN_FLIGHT, SERVER_BUCKET, SERVER_COUNT,
                               SERVER_ERROR, or_zero, quantile, sel, sum_rate)
from gatewatch.telemetry.names import Attr, Label, Layer

ROUTE = {Label.ROUTE: "~$route"}
UPSTREAM = {Label.UPSTREAM: "~$upstream"}
INSTANCE = {Label.INSTANCE: "~$instance"}
I = Label.INSTANCE


def traceql_selection(slow_ms: int) -> str:
    """Edge SERVER spans of the selected routes, slow or failed, with a balancer CLIENT span to the selected
    instances somewhere below them (`>>`: descendant, across the two tiers)."""
    edge = (f'span.{Attr.LAYER} = "{Layer.EDGE}" && kind = server && span.{Attr.ROUTE} =~ "${{route:regex}}" '
            f'&& (status = error || duration > {slow_ms}ms)')
    attempt = (f'span.{Attr.LAYER} = "{Layer.BALANCER}" && kind = client && '
               f'span.{Attr.UPSTREAM} =~ "${{upstream:regex}}" && span.{Attr.INSTANCE} =~ "${{instance:regex}}"')
    return f"{{ {edge} }} >> {{ {attempt} }}"


def instance_traces_link() -> gd.DashboardLink:
    q = (f'{{ span.{Attr.LAYER} = "{Layer.BALANCER}" && kind = client && '
         f'span.{Attr.INSTANCE} = "${{__field.labels.gatewatch_instance}}" }}')
    return P.link("Traces to ${__field.labels.gatewatch_instance}", P.explore_traces_url(q))


def _layer_row(d: gd.Dashboard, title: str, what: str, count: str, errors: str, buckets: str) -> gd.Dashboard:
    d = d.with_panel(P.timeseries(
        f"{title}: requests/s and 5xx/s", f"{what}: request rate and the rate of 5xx answers.",
        [P.prom(sum_rate(count), "requests/s"), P.prom(or_zero(sum_rate(errors), sum_rate(count)), "5xx/s")],
        "reqps"))
    return d.with_panel(P.timeseries(
        f"{title}: latency p50 / p99 (exemplars: traces)",
        f"{what}: duration quantiles; exemplar dots open the sampled request's trace.",
        [P.prom(quantile(q, buckets), f"p{int(q * 100)}", exemplar=True) for q in (0.5, 0.99)], "s"))


def build(opts: BuildOptions) -> gd.Dashboard:
    slow_ms = int(opts.slo.latency_threshold_s * 1000)
    d = P.new_dashboard("journey", "Gatewatch / Request journey",
                        "One route's requests, layer by layer: edge → balancer → instance, with their traces.")
    d = d.with_variable(P.query_var(
        "route", "Route", f"label_values({sel(SERVER_COUNT, EDGE)}, {Label.ROUTE})",
        "Edge routes (config names)."))
    d = d.with_variable(P.query_var(
        "upstream", "Upstream (pool)", f"label_values({sel(CLIENT_COUNT, BALANCER)}, {Label.UPSTREAM})",
        "Pools the balancing layer sends to (in the two-tier pattern, the balancer process's pools)."))
    d = d.with_variable(P.query_var(
        "instance", "Instance", f"label_values({sel(CLIENT_COUNT, BALANCER, **UPSTREAM)}, {I})",
        "Instances of the selected pools."))
    d = d.with_variable(gd.TextBoxVariable("trace_id").label("Trace id").description(
        "A trace id (32 hex digits), e.g. from an exemplar, a decision log or a `traceresponse` header."))

    d = d.with_row(gd.Row("Edge (selected routes)"))
    d = _layer_row(d, "Edge", "Edge SERVER spans of the selected routes",
                   sel(SERVER_COUNT, EDGE, **ROUTE), sel(SERVER_COUNT, EDGE, SERVER_ERROR, **ROUTE),
                   sel(SERVER_BUCKET, EDGE, **ROUTE))
    d = d.with_row(gd.Row("Balancer tier"))
    d = _layer_row(d, "Balancer", "The balancer tier's SERVER side (requests from the edge; all its routes)",
                   sel(SERVER_COUNT, BALANCER), sel(SERVER_COUNT, BALANCER, SERVER_ERROR),
                   sel(SERVER_BUCKET, BALANCER))
    d = d.with_row(gd.Row("Instances (attempts from the balancing layer)"))
    attempts = sel(CLIENT_COUNT, BALANCER, **UPSTREAM, **INSTANCE)
    all_attempts = sel(CLIENT_COUNT, BALANCER, **UPSTREAM)
    d = d.with_panel(P.timeseries(
        "Traffic share per instance", "Each instance's share of the pool's attempts (retries included). "
        "Click a series for the traces that reached that instance.",
        [P.prom(f"{sum_rate(attempts, I)} / on () group_left () {sum_rate(all_attempts)}", "{{gatewatch_instance}}")],
        "percentunit", stack=True, links=[instance_traces_link()]))
    d = d.with_panel(P.timeseries(
        "Latency p95 per instance (exemplars: traces)", "Attempt duration per instance, with exemplar traces.",
        [P.prom(quantile(0.95, sel(CLIENT_BUCKET, BALANCER, **UPSTREAM, **INSTANCE), I), "{{gatewatch_instance}}",
                exemplar=True)], "s", links=[instance_traces_link()]))
    d = d.with_panel(P.timeseries(
        "Attempts by outcome per instance", "How attempts to each instance ended (proxied, connect error, "
        "timeout, ...).",
        [P.prom(sum_rate(attempts, I, Label.OUTCOME), "{{gatewatch_instance}} {{gatewatch_outcome}}")], "reqps",
        links=[instance_traces_link()]))
    d = d.with_panel(P.timeseries(
        "In-flight requests per instance", "Requests currently being served by each instance (saturation).",
        [P.prom(f"sum by ({I}) ({sel(IN_FLIGHT, **{Label.POOL: '~$upstream'}, **INSTANCE)})",
                "{{gatewatch_instance}}")], "short", links=[instance_traces_link()]))

    d = d.with_row(gd.Row("Traces"))
    d = d.with_panel(P.traceql_table(
        f"Recent slow (> {slow_ms} ms) or failed requests of the selection",
        "Edge SERVER spans of the selected routes that failed or were slower than the latency SLO threshold, "
        "whose trace contains a balancer CLIENT span (an attempt) to the selected upstream and instances.",
        traceql_selection(slow_ms)))
    d = d.with_panel(P.trace_view("Trace $trace_id", "The trace typed in the `trace_id` box.", "$trace_id"))
    d = d.with_panel(P.service_map(
        "Service map: edge → balancer → instances",
        "Built by Tempo's metrics generator (service graphs) from the spans: each edge is request rate and "
        "errors between two services."))
    return d
