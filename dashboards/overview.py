"""Overview: the edge's RED per route, how requests ended, the worst routes, and where the time goes.

Every series of a route links to the Request journey for that route; latency panels show exemplars, each a
trace id that opens in Tempo.

Where the time goes, over all edge requests (the balancer tier's routes are its own, so no join across tiers can
split one edge route's time): the edge's own time, the balancer's (a balancer tier's own share, retry backoff
included; 0 with in-process balancing) and the upstream instances' time, each as a mean per edge request.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.options import BuildOptions
from gatewatch.dashboards.promql import (BALANCER, CLIENT_SUM, EDGE, RANGE, SERVER_BUCKET, SERVER_COUNT, SERVER_ERROR,
                               SERVER_SUM, or_zero, quantile, ratio, sel, sum_, sum_rate)
from gatewatch.telemetry.names import Label

ROUTE = {Label.ROUTE: "~$route"}
R = Label.ROUTE


def _journey_link() -> gd.DashboardLink:
    return P.link("Request journey for ${__field.labels.gatewatch_route}",
                  P.dashboard_url("journey", route="${__field.labels.gatewatch_route}"))


def _edge_attempts(*labels: str, **route: str) -> str:
    """Seconds/s the edge processes spent in upstream attempts: the client histograms of the scrape targets that
    serve edge requests (joined on `instance`), whatever the attempt's layer — to a balancer tier (layer edge) or
    to an instance picked in-process (layer balancer)."""
    by = ("instance", *labels)
    return sum_(f"{sum_rate(sel(CLIENT_SUM, **route), *by)} and on ({', '.join(by)}) "
                f"{sum_rate(sel(SERVER_COUNT, EDGE, **route), *by)}", *labels)


def where_the_time_goes() -> tuple[str, str, str]:
    """Mean seconds per edge request: the edge's own time, the balancer's, the upstream's (they add up to the mean
    edge request duration).

    edge own = edge SERVER time − the edge processes' attempt time;
    balancer = the edge processes' attempt time − every balancing-layer attempt's time (0 with in-process
               balancing, where both are the same attempts; a balancer tier's own time, its retry backoff
               included, in two tiers);
    upstream = every attempt at the balancing layer (in-process picks and balancer tiers alike).
    An attempt sum that does not exist yet (no request proxied) counts as 0."""
    requests = sum_rate(sel(SERVER_COUNT, EDGE))
    server = sum_rate(sel(SERVER_SUM, EDGE))
    attempts = f"({_edge_attempts()} or vector(0))"
    upstream = f"({sum_rate(sel(CLIENT_SUM, BALANCER))} or vector(0))"
    return (f"({server} - {attempts}) / {requests}", f"({attempts} - {upstream}) / {requests}",
            f"{upstream} / {requests}")


def edge_route_latency_split() -> tuple[str, str]:
    """Per route: mean time per edge request in the edge's upstream attempts, and the edge's own time.

    The attempts are the edge process's own for the route (joined on the scrape target, so a balancer tier's route
    of the same name is never mixed in): with in-process balancing, the instance's time; in two tiers, the whole
    balancer tier's time (its own share and its upstream's), which no metric splits per edge route."""
    requests = sum_rate(sel(SERVER_COUNT, EDGE, **ROUTE), R)
    total = sum_rate(sel(SERVER_SUM, EDGE, **ROUTE), R)
    attempts = or_zero(_edge_attempts(R, **ROUTE), requests)
    return ratio(attempts, requests), f"({ratio(total, requests)}) - ({ratio(attempts, requests)})"


def build(opts: BuildOptions) -> gd.Dashboard:
    slo = opts.slo
    requests = sel(SERVER_COUNT, EDGE, **ROUTE)
    errors = sel(SERVER_COUNT, EDGE, SERVER_ERROR, **ROUTE)
    buckets = sel(SERVER_BUCKET, EDGE, **ROUTE)
    attempts_time, own_time = edge_route_latency_split()
    edge_own, balancer_time, upstream_time = where_the_time_goes()
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
        "Where the time goes (mean per edge request)",
        "Mean time per edge request over all routes (the route selection does not apply: a balancer tier's "
        "routes are its own, so its time cannot be split by edge route), stacked: the edge's own time "
        "(routing, policies, queueing, relaying), the balancer's own time (a balancer tier's routing, picks and "
        "retry backoff; 0 with in-process balancing) and the upstream instances' time (every attempt, retries "
        "included). The stack is the mean edge request duration. An edge upstream that is a plain URL, not a "
        "Gatewatch balancer tier, counts under balancer.",
        [P.prom(edge_own, "edge (own time)"), P.prom(balancer_time, "balancer"),
         P.prom(upstream_time, "upstream")], "s", stack=True))
    d = d.with_panel(P.timeseries(
        "Edge own time vs time in attempts, by route (mean per request)",
        "Per selected route, mean time per edge request in the edge's upstream attempts and the edge's own "
        "share (routing, policies, queueing, relaying) — Kong's kong/upstream split. With in-process balancing "
        "the attempts are the instances' time; in two tiers they are the balancer tier's whole time (its own "
        "share and its upstream's), which Where the time goes splits over all routes.",
        [P.prom(attempts_time, "attempts {{gatewatch_route}}"),
         P.prom(own_time, "edge own {{gatewatch_route}}")], "s", stack=True))

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
