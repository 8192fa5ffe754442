"""Overview: the edge's RED per route, how requests ended, the worst routes, and where the time goes.

Every series of a route links to the Request journey for that route; latency panels show exemplars, each a
trace id that opens in Tempo.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.options import BuildOptions
from gatewatch.dashboards.promql import (EDGE, RANGE, SERVER_BUCKET, SERVER_COUNT, SERVER_ERROR, SERVER_SUM, CLIENT_SUM,
                               or_zero, quantile, ratio, sel, sum_, sum_rate)
from gatewatch.telemetry.names import Label

ROUTE = {Label.ROUTE: "~$route"}
R = Label.ROUTE


def _journey_link() -> gd.DashboardLink:
    return P.link("Request journey for ${__field.labels.gatewatch_route}",
                  P.dashboard_url("journey", route="${__field.labels.gatewatch_route}"))


def edge_route_latency_split() -> tuple[str, str]:
    """Mean time per request at the edge, split into upstream time and the gateway's own time.

    Upstream time is the edge process's attempts for the route (layer edge in two tiers, balancer in the built-in
    pattern), joined on the scrape target so a balancer tier's route of the same name is never mixed in.
    """
    requests = sum_rate(sel(SERVER_COUNT, EDGE, **ROUTE), R)
    total = sum_rate(sel(SERVER_SUM, EDGE, **ROUTE), R)
    attempts_same_process = (
        f"{sum_rate(sel(CLIENT_SUM, **ROUTE), 'instance', R)} and on (instance, {R}) "
        f"{sum_rate(sel(SERVER_COUNT, EDGE, **ROUTE), 'instance', R)}")
    upstream = sum_(attempts_same_process, R)
    return ratio(upstream, requests), f"({ratio(total, requests)}) - ({ratio(upstream, requests)})"


def build(opts: BuildOptions) -> gd.Dashboard:
    slo = opts.slo
    requests = sel(SERVER_COUNT, EDGE, **ROUTE)
    errors = sel(SERVER_COUNT, EDGE, SERVER_ERROR, **ROUTE)
    buckets = sel(SERVER_BUCKET, EDGE, **ROUTE)
    upstream_time, gateway_time = edge_route_latency_split()
    bad, total = sum_(f"increase({errors}[{RANGE}])"), sum_(f"increase({requests}[{RANGE}])")
    route_var = P.query_var("route", "Route", f"label_values({sel(SERVER_COUNT, EDGE)}, {R})",
                            "Edge routes (config names) that served requests in the time range.")
    d = P.new_dashboard("overview", "Gatewatch / Overview",
                        "The edge's rate, errors and duration per route; click a route to follow its requests.")
    d = d.with_variable(route_var)
    d = d.with_row(gd.Row("Service level (edge, selected routes)"))
    d = d.with_panel(P.stat("Requests/s", "Requests the edge answered, per second, all selected routes.",
                            [P.prom(sum_rate(requests), "requests/s", instant=True)], "reqps"))
    d = d.with_panel(P.stat(
        "5xx ratio", f"Share of edge requests answered with a 5xx (the availability SLI). SLO: "
        f"{slo.availability_percent}% good, i.e. at most {slo.error_budget:.4%} bad.",
        [P.prom(ratio(or_zero(sum_rate(errors), sum_rate(requests)), sum_rate(requests)), "5xx ratio",
                instant=True)], "percentunit",
        thresholds=[(None, "green"), (slo.error_budget, "orange"), (slo.error_budget * 14.4, "red")]))
    d = d.with_panel(P.stat(
        f"Availability over the range (SLO {slo.availability_percent}%)",
        "1 − 5xx share over the dashboard's time range, against the SLO.",
        [P.prom(f"1 - ({ratio(or_zero(bad, total), total)})", "availability", instant=True)], "percentunit",
        thresholds=[(None, "red"), (slo.availability_percent / 100, "green")]))
    d = d.with_panel(P.stat(
        "p99 latency", "99th percentile of edge request duration, all selected routes.",
        [P.prom(quantile(0.99, buckets), "p99", instant=True)], "s",
        thresholds=[(None, "green"), (slo.latency_threshold_s, "red")]))

    d = d.with_row(gd.Row("Per route"))
    d = d.with_panel(P.timeseries(
        "Requests/s by route", "Edge request rate per route. Click a series for that route's journey.",
        [P.prom(sum_rate(requests, R), "{{gatewatch_route}}")], "reqps", links=[_journey_link()]))
    d = d.with_panel(P.timeseries(
        "5xx ratio by route", "Share of each route's requests answered with a 5xx by the edge.",
        [P.prom(ratio(or_zero(sum_rate(errors, R), sum_rate(requests, R)), sum_rate(requests, R)),
                "{{gatewatch_route}}")], "percentunit",
        links=[_journey_link()]))
    d = d.with_panel(P.timeseries(
        "Latency p50 / p95 / p99 (exemplars: traces)",
        "Edge request duration quantiles over the selected routes. The dots are exemplars: sampled requests "
        "with their trace id — click one to open the trace in Tempo.",
        [P.prom(quantile(q, buckets), f"p{int(q * 100)}", exemplar=True) for q in (0.5, 0.95, 0.99)], "s"))
    d = d.with_panel(P.timeseries(
        "Latency p99 by route (exemplars: traces)", "99th percentile per route, with exemplar traces.",
        [P.prom(quantile(0.99, buckets, R), "{{gatewatch_route}}", exemplar=True)], "s",
        links=[_journey_link()]))
    d = d.with_panel(P.timeseries(
        "Outcomes", "How edge requests ended: proxied, or each kind of local rejection or upstream failure "
        "(gatewatch.outcome, a closed vocabulary).",
        [P.prom(sum_rate(requests, Label.OUTCOME), "{{gatewatch_outcome}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Gateway overhead vs upstream time (mean per request)",
        "Mean time per edge request split into the time spent in upstream attempts and the gateway's own "
        "share (routing, policies, queueing, relaying) — like Kong's kong/upstream latency split.",
        [P.prom(upstream_time, "upstream {{gatewatch_route}}"),
         P.prom(gateway_time, "gateway {{gatewatch_route}}")], "s", stack=True))

    d = d.with_row(gd.Row("Top routes (over the time range)"))
    d = d.with_panel(P.table(
        "Top routes by 5xx", "Routes with the most 5xx answers over the dashboard's range.",
        [P.prom(f"topk(10, {or_zero(sum_(f'increase({errors}[{RANGE}])', R), sum_(f'increase({requests}[{RANGE}])', R))})",
                instant=True, table=True)],
        links=[_journey_link()]))
    d = d.with_panel(P.table(
        "Top routes by p99 latency", "Routes with the highest 99th percentile over the dashboard's range.",
        [P.prom(f"topk(10, {quantile(0.99, buckets, R, window=RANGE)})", instant=True, table=True)], "s",
        links=[_journey_link()]))
    return d
