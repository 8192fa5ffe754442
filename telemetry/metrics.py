"""Prometheus instruments on a per-process registry (never the global one), served at the admin `/metrics`.

Labels come only from config names and closed enums (`telemetry.names`); the HTTP method is folded to
`_OTHER` when unknown and status codes are clamped to three digits, so a client cannot create series.
Exemplars (`trace_id`) are attached to duration observations of sampled requests; they appear in the
OpenMetrics exposition (`Accept: application/openmetrics-text`).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Info
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from telemetry.fastmetrics import FastCounter, FastHistogram
from telemetry.names import DURATION_BUCKETS_S, KNOWN_METHODS, Label, Metric

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def method_label(method: str) -> str:
    return method if method in KNOWN_METHODS else "_OTHER"


def status_label(status: int | None) -> str:
    if status is None or not 100 <= status <= 599:
        return ""
    return str(status)


class Metrics:
    def __init__(self, version: str = "0"):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.server_duration = FastHistogram(
            Metric.SERVER_DURATION, "Duration of HTTP server requests, per layer, route and outcome.",
            [Label.LAYER, Label.ROUTE, Label.METHOD, Label.STATUS, Label.OUTCOME], DURATION_BUCKETS_S)
        self.client_duration = FastHistogram(
            Metric.CLIENT_DURATION, "Duration of upstream attempts, per layer, upstream and instance.",
            [Label.LAYER, Label.ROUTE, Label.UPSTREAM, Label.INSTANCE, Label.METHOD, Label.STATUS, Label.OUTCOME],
            DURATION_BUCKETS_S)
        self.decisions = FastCounter(
            Metric.DECISIONS, "Decisions taken, by kind and result.",
            [Label.LAYER, Label.DECISION, Label.RESULT, Label.REASON])
        for c in (self.server_duration, self.client_duration, self.decisions):
            r.register(c)
        self.endpoints = Gauge(
            Metric.ENDPOINTS, "Instances per pool and state.", [Label.POOL, Label.STATE], registry=r)
        self.in_flight = Gauge(
            Metric.IN_FLIGHT, "Requests in flight per instance.", [Label.POOL, Label.INSTANCE], registry=r)
        self.telemetry_dropped = Counter(
            Metric.TELEMETRY_DROPPED, "Telemetry items (spans, log records) dropped, by signal and reason.",
            [Label.SIGNAL, Label.REASON], registry=r)
        self.telemetry_exported = Counter(
            Metric.TELEMETRY_EXPORTED, "Telemetry items exported successfully, by signal.", [Label.SIGNAL], registry=r)
        self.telemetry_queue = Gauge(
            Metric.TELEMETRY_QUEUE, "Telemetry items waiting for export, by signal.", [Label.SIGNAL], registry=r)
        self.build = Info(Metric.BUILD_INFO, "Gatewatch build information.", registry=r)
        self.build.info({"version": version})

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        if accept and "application/openmetrics-text" in accept:
            return generate_openmetrics(self.registry), OPENMETRICS_CONTENT_TYPE
        return generate_latest(self.registry), PROMETHEUS_CONTENT_TYPE
