"""Traffic: what the routes' traffic features do — weighted splits (the share each side takes, and how each side
fares), mirroring (copies sent or skipped, how shadows compare with the primary, the latency difference), response
caching (hit ratio, results and reasons, size, evictions), aggregation (which calls fail, and why) and JSON body
transforms.

Variable: `route` (edge routes). The definitions the alert rules share (`mirror_divergence`, `cache_hit_ratio`) live
here, so a rule and the panel that explains it read the same expression.
"""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.promql import (CLIENT_COUNT, DECISIONS, EDGE, POLICY_VERDICTS, RATE, SERVER_COUNT,
                                         SERVER_ERROR, or_zero, quantile, ratio, regex_of, sel, series, sum_,
                                         sum_rate)
from gatewatch.telemetry.names import AggregateCall, CacheResult, DecisionKind, Label, Metric, MirrorMatch

SPLIT_REQUESTS = series(Metric.SPLIT_REQUESTS, "total")
MIRROR_REQUESTS = series(Metric.MIRROR_REQUESTS, "total")
MIRROR_COMPARISONS = series(Metric.MIRROR_COMPARISONS, "total")
MIRROR_DELTA_BUCKET = series(Metric.MIRROR_LATENCY_DELTA, "bucket")
CACHE_REQUESTS = series(Metric.CACHE_REQUESTS, "total")
CACHE_ENTRIES = Metric.CACHE_ENTRIES
CACHE_BYTES = Metric.CACHE_BYTES
CACHE_EVICTIONS = series(Metric.CACHE_EVICTIONS, "total")
AGGREGATE_CALLS = series(Metric.AGGREGATE_CALLS, "total")

R, U = Label.ROUTE, Label.UPSTREAM
ROUTE = {R: "~$route"}
# A shadow that did not behave like the primary: failed, timed out, or answered another status class.
DIVERGED = {Label.MATCH: "~" + regex_of((MirrorMatch.SHADOW_ERROR, MirrorMatch.SHADOW_TIMEOUT, MirrorMatch.DIFFERS))}
# Answered from the cache without asking the upstream (a revalidation asked it, so it is not a hit).
SERVED_FROM_CACHE = {Label.RESULT: "~" + regex_of((CacheResult.HIT, CacheResult.STALE))}
CALL_FAILED = {Label.RESULT: "!" + AggregateCall.OK.value}
JSON_TRANSFORM = {Label.POLICY_TYPE: "json_transform"}


def mirror_divergence(*matchers: dict[str, str], window: str = RATE) -> tuple[str, str]:
    """Per route and shadow upstream: the share of compared requests where the shadow failed, timed out or answered
    another status class than the primary; and the route's own 5xx share (what the primary's clients got)."""
    compared = sum_rate(sel(MIRROR_COMPARISONS, *matchers), R, U, window=window)
    diverged = sum_rate(sel(MIRROR_COMPARISONS, DIVERGED, *matchers), R, U, window=window)
    requests = sum_rate(sel(SERVER_COUNT, EDGE, *matchers), R, window=window)
    primary = ratio(or_zero(sum_rate(sel(SERVER_COUNT, EDGE, SERVER_ERROR, *matchers), R, window=window), requests),
                    requests)
    return ratio(diverged, compared), primary


def mirror_compared(*matchers: dict[str, str], window: str = RATE) -> str:
    """Comparisons/s per route and shadow upstream (a shadow that answered, failed or timed out)."""
    return sum_rate(sel(MIRROR_COMPARISONS, *matchers), R, U, window=window)


def cache_hit_ratio(*matchers: dict[str, str], window: str = RATE, offset: str = "") -> str:
    """Per route: the share of its requests answered from the cache (fresh or stale hits) over `window`, optionally
    `offset` in the past (`1d`)."""
    hits = sum_rate(sel(CACHE_REQUESTS, SERVED_FROM_CACHE, *matchers), R, window=window, offset=offset)
    return ratio(hits, sum_rate(sel(CACHE_REQUESTS, *matchers), R, window=window, offset=offset))


def cache_request_rate(*matchers: dict[str, str], window: str = RATE) -> str:
    return sum_rate(sel(CACHE_REQUESTS, *matchers), R, window=window)


def build(opts) -> gd.Dashboard:
    d = P.new_dashboard("traffic", "Gatewatch / Traffic",
                        "Weighted splits, mirroring, response caching, aggregation and JSON transforms per route.")
    d = d.with_variable(P.query_var("route", "Route", f"label_values({sel(SERVER_COUNT, EDGE)}, {R})",
                                    "Edge routes (config names)."))

    d = d.with_row(gd.Row("Weighted splits"))
    split = sel(SPLIT_REQUESTS, ROUTE)
    d = d.with_panel(P.timeseries(
        "Split share by route and side", "Share of each split route's requests each side (upstream) took. Compare "
        "with the configured weights: a sticky key or cookie keeps clients on their side, so a fresh split "
        "converges as new clients arrive; overrides (testers) count too.",
        [P.prom(f"{sum_rate(split, R, U)} / on ({R}) group_left () {sum_rate(split, R)}",
                "{{gatewatch_route}} → {{gatewatch_upstream}}")], "percentunit", stack=True, max_=1))
    d = d.with_panel(P.timeseries(
        "Split decisions by reason", "Why a side took the request: by weight, by a sticky key or cookie, or a "
        "tester's override header or cookie (split.* reasons).",
        [P.prom(sum_rate(split, R, U, Label.REASON), "{{gatewatch_route}} → {{gatewatch_upstream}} {{reason}}")],
        "reqps", stack=True))
    attempts = sel(CLIENT_COUNT, ROUTE)
    d = d.with_panel(P.timeseries(
        "Upstream 5xx ratio by route and side", "Share of each route's upstream attempts per side answered with a "
        "5xx: a canary side failing more than the stable one shows here first.",
        [P.prom(ratio(or_zero(sum_rate(sel(CLIENT_COUNT, SERVER_ERROR, ROUTE), R, U), sum_rate(attempts, R, U)),
                      sum_rate(attempts, R, U)), "{{gatewatch_route}} → {{gatewatch_upstream}}")], "percentunit"))
    d = d.with_panel(P.timeseries(
        "Upstream latency p95 by route and side", "95th percentile of upstream attempt duration per route and "
        "side (exemplars: traces).",
        [P.prom(quantile(0.95, sel(series(Metric.CLIENT_DURATION, "bucket"), ROUTE), R, U),
                "{{gatewatch_route}} → {{gatewatch_upstream}}", exemplar=True)], "s"))

    d = d.with_row(gd.Row("Mirroring"))
    diverged, primary = mirror_divergence(ROUTE)
    d = d.with_panel(P.timeseries(
        "Mirror copies by result", "Requests a route's mirror selected: sent to the shadow, or skipped (never "
        "queued) because max_in_flight shadows were running, the body was too large or of unknown length, or "
        "the shadow pool had no instance.",
        [P.prom(sum_rate(sel(MIRROR_REQUESTS, ROUTE), R, U, Label.RESULT),
                "{{gatewatch_route}} → {{gatewatch_upstream}} {{result}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Shadow vs primary", "How shadow answers compared with the primary's: same status class, differs, "
        "shadow error, shadow timeout.",
        [P.prom(sum_rate(sel(MIRROR_COMPARISONS, ROUTE), R, U, Label.MATCH),
                "{{gatewatch_route}} → {{gatewatch_upstream}} {{match}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Shadow divergence vs primary 5xx", "Share of compared requests where the shadow failed, timed out or "
        "answered another status class, next to the route's own 5xx share. The GatewatchMirrorDivergence alert "
        "fires when the first stays well above the second.",
        [P.prom(diverged, "shadow diverged {{gatewatch_route}} → {{gatewatch_upstream}}"),
         P.prom(primary, "primary 5xx {{gatewatch_route}}")], "percentunit"))
    delta = sel(MIRROR_DELTA_BUCKET, ROUTE)
    d = d.with_panel(P.timeseries(
        "Latency difference, shadow − primary", "Quantiles of the shadow's duration minus the primary's, for "
        "shadows that answered: above 0 the shadow is slower (exemplars: the primary's trace).",
        [P.prom(quantile(q, delta, R, U), f"p{int(q * 100)} {{{{gatewatch_route}}}} → {{{{gatewatch_upstream}}}}",
                exemplar=(q == 0.95)) for q in (0.5, 0.95)], "s"))

    d = d.with_row(gd.Row("Response caching"))
    cache = sel(CACHE_REQUESTS, ROUTE)
    d = d.with_panel(P.timeseries(
        "Cache hit ratio by route", "Share of each cached route's requests answered from the cache without "
        "asking the upstream (fresh and stale hits; a revalidation asked it). The GatewatchCacheHitRatioCollapsed "
        "alert compares it over 30 minutes with the same 30 minutes a day earlier: widen the time range to see "
        "yesterday's.",
        [P.prom(cache_hit_ratio(ROUTE), "{{gatewatch_route}}")], "percentunit", max_=1))
    d = d.with_panel(P.timeseries(
        "Cache results", "Requests of cached routes by result: hit, miss, stale, revalidated, bypass.",
        [P.prom(sum_rate(cache, R, Label.RESULT), "{{gatewatch_route}} {{result}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Misses and bypasses by reason", "Why the cache could not answer: nothing stored, expired, Vary "
        "mismatch, the request or the response forbids storing (no-store, private, authorization, set-cookie), "
        "too large, ...",
        [P.prom(sum_rate(sel(CACHE_REQUESTS, ROUTE, result="~" + regex_of((CacheResult.MISS, CacheResult.BYPASS))),
                         R, Label.RESULT, Label.REASON), "{{gatewatch_route}} {{result}} {{reason}}")], "reqps",
        stack=True))
    d = d.with_panel(P.timeseries(
        "Cache size and evictions", "Bytes held per route's cache (per process: sum over processes), and "
        "entries evicted per second by reason (capacity, invalidated, expired).",
        [P.prom(sum_(sel(CACHE_BYTES, ROUTE), R), "bytes {{gatewatch_route}}"),
         P.prom(sum_rate(sel(CACHE_EVICTIONS, ROUTE), R, Label.REASON), "evicted/s {{gatewatch_route}} {{reason}}")],
        "short"))

    d = d.with_row(gd.Row("Aggregation and JSON transforms"))
    calls = sel(AGGREGATE_CALLS, ROUTE)
    d = d.with_panel(P.timeseries(
        "Aggregate call failures by route and call", "Calls of aggregate routes whose part could not be used, "
        "by call and reason (timeout, status, not_json, too_large, connect_error, cancelled, ...). With "
        "on_error: omit the response went out without that part (x-gatewatch-partial); with fail, it failed.",
        [P.prom(sum_rate(sel(AGGREGATE_CALLS, CALL_FAILED, ROUTE), R, Label.CALL, Label.RESULT),
                "{{gatewatch_route}} {{call}} {{result}}")], "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "Aggregate call failure ratio by call", "Share of each call's attempts that failed.",
        [P.prom(ratio(sum_rate(sel(AGGREGATE_CALLS, CALL_FAILED, ROUTE), R, Label.CALL),
                      sum_rate(calls, R, Label.CALL)), "{{gatewatch_route}} {{call}}")], "percentunit", max_=1))
    d = d.with_panel(P.timeseries(
        "Aggregate responses", "Aggregate requests by how the composition went: composed (every part), partial "
        "(failed parts left out) or failed (a call failed the request).",
        [P.prom(sum_rate(sel(DECISIONS, decision=DecisionKind.AGGREGATE.value), Label.RESULT), "{{result}}")],
        "reqps", stack=True))
    d = d.with_panel(P.timeseries(
        "JSON transforms by route and reason", "json_transform policies: bodies changed (request or response), "
        "skipped (not JSON, no edit matched), relayed unchanged because too large or invalid, refused (413, 400).",
        [P.prom(sum_rate(sel(POLICY_VERDICTS, JSON_TRANSFORM, ROUTE), R, Label.POLICY, Label.REASON),
                "{{gatewatch_route}} {{gatewatch_policy}} {{reason}}")], "reqps", stack=True))
    return d
