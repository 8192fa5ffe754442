"""Gatewatch itself: is the observability pipeline keeping up (exports, drops, queues), are the worker
processes up, which versions run, and did config reloads apply."""

from __future__ import annotations

from grafana_foundation_sdk.builders import dashboard as gd

from gatewatch.dashboards import panels as P
from gatewatch.dashboards.promql import (BUILD_INFO, CONFIG_RELOADS, TELEMETRY_DROPPED, TELEMETRY_EXPORTED, TELEMETRY_QUEUE,
                               PROCESS_CPU, PROCESS_RSS, PROCESS_START_TIME, RANGE, increase, or_zero, rate, ratio,
                               sel, sum_, sum_rate)
from gatewatch.telemetry.names import Label

S = Label.SIGNAL


def drop_share() -> str:
    """Share of telemetry items dropped (by signal): dropped / (exported + dropped)."""
    dropped = or_zero(sum_rate(sel(TELEMETRY_DROPPED), S), sum_rate(sel(TELEMETRY_EXPORTED), S))
    return ratio(dropped, f"{sum_rate(sel(TELEMETRY_EXPORTED), S)} + {dropped}")


def build(opts) -> gd.Dashboard:  # noqa: ARG001
    d = P.new_dashboard("self", "Gatewatch / Gatewatch itself",
                        "The health of Gatewatch's own telemetry pipeline, workers and configuration.")
    d = d.with_row(gd.Row("Telemetry pipeline"))
    d = d.with_panel(P.timeseries(
        "Exported items/s by signal", "Spans and decision-log records exported successfully.",
        [P.prom(sum_rate(sel(TELEMETRY_EXPORTED), S), "{{signal}}")], "ops"))
    d = d.with_panel(P.timeseries(
        "Dropped items/s by signal and reason", "Items dropped: queue full (the collector is slower than "
        "traffic), export failed (the collector is down or refused), shutdown. Requests are never slowed "
        "down instead.",
        [P.prom(or_zero(sum_rate(sel(TELEMETRY_DROPPED), S, Label.REASON), sum_rate(sel(TELEMETRY_EXPORTED), S)),
                "{{signal}} {{reason}}")], "ops"))
    d = d.with_panel(P.timeseries(
        "Drop share by signal", "dropped / (exported + dropped).", [P.prom(drop_share(), "{{signal}}")],
        "percentunit"))
    d = d.with_panel(P.timeseries(
        "Export queue by signal and process", "Items waiting for export in each process.",
        [P.prom(f"sum by (instance, {S}) ({sel(TELEMETRY_QUEUE)})", "{{instance}} {{signal}}")], "short"))

    d = d.with_row(gd.Row("Processes and configuration"))
    d = d.with_panel(P.timeseries(
        "Process restarts", "Each Gatewatch process (every worker of `workers: N` is its own scrape target): how "
        "often it was started anew in the dashboard's range. A worker the supervisor keeps replacing shows here.",
        [P.prom(f"changes({sel(PROCESS_START_TIME)}[{RANGE}])", "{{instance}}")], "short"))
    d = d.with_panel(P.timeseries(
        "CPU and memory per process", "CPU seconds per second (one core = 1) and resident memory.",
        [P.prom(f"sum by (instance) ({rate(sel(PROCESS_CPU))})", "{{instance}} cpu"),
         P.prom(f"sum by (instance) ({sel(PROCESS_RSS)}) / 1e9", "{{instance}} rss GB")], "short"))
    d = d.with_panel(P.timeseries(
        "Config reloads by result", "Reloads applied or rejected.",
        [P.prom(sum_(increase(sel(CONFIG_RELOADS)), "instance", Label.RESULT), "{{instance}} {{result}}")],
        "short"))
    d = d.with_panel(P.table(
        "Running processes and versions", "One row per Gatewatch process Prometheus scrapes, with its version "
        "(the labels of the build info metric).",
        [P.prom(BUILD_INFO, instant=True, table=True)], w=24, h=5))
    return d
