"""Prometheus instruments on a per-process registry (never the global one), served at the admin `/metrics`.

Labels come only from config names and closed enums (`telemetry.names`); the HTTP method is folded to
`_OTHER` when unknown (the recorder does it, with the configured known methods) and status codes are clamped to
three digits, so a client cannot create series. Label names of the HTTP duration histograms are the semantic
conventions' attribute names with dots as underscores (`http_route`, `url_scheme`, `error_type`,
`server_address`, `server_port`), beside Gatewatch's own.
Exemplars (`trace_id`) are attached to duration observations of sampled requests; they appear in the
OpenMetrics exposition (`Accept: application/openmetrics-text`).
"""

from __future__ import annotations

import platform
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info, ProcessCollector
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS_CONTENT_TYPE
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from gatewatch.telemetry.fastmetrics import FastCounter, FastHistogram
from gatewatch.telemetry.names import (CONNECT_BUCKETS_S, CONSUMER_LABEL_CAP, DURATION_BUCKETS_S,
                                       MIRROR_DELTA_BUCKETS_S, OVERFLOW_LABEL,
                                       Label, Metric)

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


STATUS_LABELS = {status: str(status) for status in range(100, 600)}  # a status code as a label value, made once


class Metrics:
    def __init__(self, version: str = "0", compiled: bool = False):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.server_duration = FastHistogram(
            Metric.SERVER_DURATION, "Duration of HTTP server requests, per layer, route and outcome.",
            [Label.LAYER, Label.ROUTE, Label.METHOD, Label.STATUS, Label.OUTCOME, Label.HTTP_ROUTE, Label.SCHEME,
             Label.ERROR_TYPE], DURATION_BUCKETS_S, unit="seconds")
        self.client_duration = FastHistogram(
            Metric.CLIENT_DURATION, "Duration of upstream attempts, per layer, upstream and instance.",
            [Label.LAYER, Label.ROUTE, Label.UPSTREAM, Label.INSTANCE, Label.METHOD, Label.STATUS, Label.OUTCOME,
             Label.SERVER_ADDRESS, Label.SERVER_PORT, Label.ERROR_TYPE], DURATION_BUCKETS_S, unit="seconds")
        self.pool_requests = FastCounter(
            Metric.POOL_REQUESTS, "Requests a pool served, by how: normally (failover=none) or while failing over "
            "(retry to another instance, a failover priority level, panic mode).", [Label.POOL, Label.FAILOVER])
        self.decisions = FastCounter(
            Metric.DECISIONS, "Decisions taken, by kind and result.",
            [Label.LAYER, Label.DECISION, Label.RESULT, Label.REASON])
        self.policy_verdicts = FastCounter(
            Metric.POLICY_VERDICTS, "Policy verdicts, by route, policy, policy type, verdict and reason.",
            [Label.ROUTE, Label.POLICY, Label.POLICY_TYPE, Label.VERDICT, Label.REASON])
        self.instance_requests = FastCounter(
            Metric.INSTANCE_REQUESTS, "Upstream attempts per instance, by pool and outcome.",
            [Label.POOL, Label.INSTANCE, Label.OUTCOME])
        self.cache_requests = FastCounter(  # response caching (issue 19)
            Metric.CACHE_REQUESTS, "Requests to routes with a response cache, by how the cache took part (hit, "
            "miss, stale, revalidated, bypass) and why.", [Label.ROUTE, Label.RESULT, Label.REASON])
        # weighted splits and request mirroring (issue 19)
        self.split_requests = FastCounter(
            Metric.SPLIT_REQUESTS, "Requests of a route with a weighted split, by the side (upstream) that took "
            "them and why (weight, sticky key or cookie, tester override).",
            [Label.ROUTE, Label.UPSTREAM, Label.REASON])
        self.mirror_requests = FastCounter(
            Metric.MIRROR_REQUESTS, "Requests a route's mirror selected, by shadow upstream and result: sent, or "
            "skipped (never queued) and why.", [Label.ROUTE, Label.UPSTREAM, Label.RESULT])
        self.mirror_comparisons = FastCounter(
            Metric.MIRROR_COMPARISONS, "Shadow answers compared with the primary's, by shadow upstream and match "
            "(same status class, differs, shadow error, shadow timeout).", [Label.ROUTE, Label.UPSTREAM, Label.MATCH])
        self.mirror_latency_delta = FastHistogram(
            Metric.MIRROR_LATENCY_DELTA, "Shadow request duration minus the primary's, for shadows that answered.",
            [Label.ROUTE, Label.UPSTREAM], MIRROR_DELTA_BUCKETS_S, unit="seconds")
        # Rendered by `exposition` itself (see fastmetrics), not through the registry.
        self.fast = (self.server_duration, self.client_duration, self.decisions, self.policy_verdicts,
                     self.instance_requests, self.pool_requests, self.cache_requests, self.split_requests,
                     self.mirror_requests, self.mirror_comparisons, self.mirror_latency_delta)
        # balancer state and events (per pool; instance labels are bounded by the pool's size)
        self.failovers = Counter(
            Metric.FAILOVERS, "Failovers: traffic moved to another priority or a retry went to another instance.",
            [Label.POOL, Label.REASON], registry=r)
        self.ejections = Counter(
            Metric.EJECTIONS, "Outlier ejections, by pool, instance and reason.",
            [Label.POOL, Label.INSTANCE, Label.REASON], registry=r)
        self.ejected = Gauge(Metric.EJECTIONS_ACTIVE, "Instances currently ejected, by pool.", [Label.POOL], registry=r)
        self.retries = Counter(
            Metric.RETRIES, "Retries taken, by route, upstream and reason.",
            [Label.ROUTE, Label.UPSTREAM, Label.REASON], registry=r)
        self.retry_budget_exhausted = Counter(
            Metric.RETRY_BUDGET_EXHAUSTED, "Retries refused because the retry budget was exhausted.",
            [Label.ROUTE, Label.UPSTREAM], registry=r)
        self.panic_mode = Gauge(
            Metric.PANIC_MODE, "1 while the pool balances across all instances because too few are healthy.",
            [Label.POOL], registry=r)
        self.active_priority = Gauge(
            Metric.ACTIVE_PRIORITY, "The highest priority level currently taking traffic, by pool.",
            [Label.POOL], registry=r)
        self.slow_start = Gauge(
            Metric.SLOW_START_WEIGHT, "Effective share of an instance's weight during slow start (1 = full).",
            [Label.POOL, Label.INSTANCE], registry=r)
        self.health_probes = Counter(
            Metric.HEALTH_PROBES, "Active health probes, by pool, instance and result.",
            [Label.POOL, Label.INSTANCE, Label.RESULT], registry=r)
        self.health_transitions = Counter(
            Metric.HEALTH_TRANSITIONS, "Instance state changes, by pool, instance and new state.",
            [Label.POOL, Label.INSTANCE, Label.STATE], registry=r)
        # policies
        self.ratelimit_consumers = Counter(
            Metric.RATE_LIMITED_CONSUMERS,
            f"Requests refused by a rate limit, by consumer (at most {CONSUMER_LABEL_CAP} consumers, then "
            f"'{OVERFLOW_LABEL}').", [Label.ROUTE, Label.CONSUMER], registry=r)
        self.consumer_label = CappedLabel(CONSUMER_LABEL_CAP)
        self.circuit_state = Gauge(
            Metric.CIRCUIT_STATE, "1 for the circuit breaker's current state, by route and state.",
            [Label.ROUTE, Label.STATE], registry=r)
        self.ratelimit_store_up = Gauge(
            Metric.RATELIMIT_STORE_UP, "1 while a rate-limit store (Redis) answers, 0 while it is down, by store.",
            [Label.STORE], registry=r)
        self.auth_provider_up = Gauge(  # OAuth2 / OIDC (issue 16)
            Metric.AUTH_PROVIDER_UP, "1 while an identity provider's endpoint (OIDC discovery, JWKS, token "
            "introspection) answers, 0 while it is failing, by provider and endpoint.",
            [Label.PROVIDER, Label.ENDPOINT], registry=r)
        self.cache_entries = Gauge(  # response caching (issue 19)
            Metric.CACHE_ENTRIES, "Responses held by a route's cache.", [Label.ROUTE], registry=r)
        self.cache_bytes = Gauge(
            Metric.CACHE_BYTES, "Bytes held by a route's cache (bodies and headers).", [Label.ROUTE], registry=r)
        self.cache_evictions = Counter(
            Metric.CACHE_EVICTIONS, "Stored responses removed from a route's cache, by reason.",
            [Label.ROUTE, Label.REASON], registry=r)
        self.discovery_refreshes = Counter(  # service discovery (issue 20)
            Metric.DISCOVERY_REFRESHES, "Service-discovery refreshes of a pool's instances, by pool, source and "
            "result (ok, or why the last good set was kept).", [Label.POOL, Label.SOURCE, Label.RESULT], registry=r)
        self.config_reloads = Counter(
            Metric.CONFIG_RELOADS, "Configuration reloads, by result.", [Label.RESULT], registry=r)
        self.drain_steps = Counter(
            Metric.DRAIN_STEPS, "SIGTERM drains of this process that reached a step (started, stopped_accepting, "
            "drained or grace_expired).", [Label.STEP], registry=r)
        self.drain_connections_closed = Counter(
            Metric.DRAIN_CONNECTIONS_CLOSED, "Client connections ended during a drain, by listener and how: "
            "after a response saying Connection: close, closed idle, or cut when the grace ran out.",
            [Label.LISTENER, Label.REASON], registry=r)
        self.headers_dropped = Counter(
            Metric.REQUEST_HEADERS_DROPPED, "Inbound request headers removed or cut before routing (the request was "
            "served), by layer and reason.", [Label.LAYER, Label.REASON], registry=r)
        self.aggregate_calls = Counter(  # aggregate routes (issue 19)
            Metric.AGGREGATE_CALLS, "Calls of aggregate routes, by route, call and result (ok, or why the call's "
            "part could not be used).", [Label.ROUTE, Label.CALL, Label.RESULT], registry=r)
        # L4 TCP pass-through (mode: tcp listeners, gatewatch.io.tcp_proxy)
        tcp = [Label.LISTENER, Label.POOL, Label.INSTANCE]
        self.tcp_connections = Counter(
            Metric.TCP_CONNECTIONS, "TCP pass-through connections ended, by listener, pool, instance (empty when "
            "none was reached) and outcome.", tcp + [Label.OUTCOME], registry=r)
        self.tcp_active = Gauge(Metric.TCP_ACTIVE, "TCP pass-through connections relaying now.", tcp, registry=r)
        self.tcp_received = Counter(Metric.TCP_RECEIVED, "Bytes received from TCP pass-through clients and relayed "
                                    "to the instance.", tcp, registry=r)
        self.tcp_sent = Counter(Metric.TCP_SENT, "Bytes relayed from the instance to TCP pass-through clients.",
                                tcp, registry=r)
        self.tcp_connect_duration = Histogram(
            Metric.TCP_CONNECT_DURATION, "TCP connects to pool instances, by result (ok, or the error.type).",
            [Label.POOL, Label.INSTANCE, Label.RESULT], buckets=CONNECT_BUCKETS_S, registry=r)
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
        self.config_info = Info(Metric.CONFIG_INFO, "The running configuration's version (gatewatch.config.version).",
                                registry=r)
        self.config_loaded = Gauge(Metric.CONFIG_LOADED, "When the running configuration was loaded (Unix time).",
                                   registry=r)
        self.tls_handshakes = Counter(
            Metric.TLS_HANDSHAKES, "TLS handshakes a listener completed, by protocol version.",
            [Label.LISTENER, Label.TLS_VERSION], registry=r)
        self.tls_handshake_failures = Counter(
            Metric.TLS_HANDSHAKE_FAILURES, "TLS handshakes a listener saw fail, by reason.",
            [Label.LISTENER, Label.REASON], registry=r)
        self.tls_cert_expiry = Gauge(
            Metric.TLS_CERT_EXPIRY, "When a certificate a listener serves expires (notAfter, Unix time).",
            [Label.LISTENER, Label.CERTIFICATE, Label.SERIAL], registry=r)
        self.h2_events = Counter(  # issue 17, HTTP/2 downstream
            Metric.HTTP2_EVENTS, "HTTP/2 connections and streams opened, resets and GOAWAYs, by listener and reason.",
            [Label.LISTENER, Label.EVENT, Label.REASON], registry=r)
        self.websocket_sessions = Gauge(  # issue 17
            Metric.WEBSOCKET_SESSIONS, "WebSocket sessions open, by route, upstream and instance.",
            [Label.ROUTE, Label.UPSTREAM, Label.INSTANCE], registry=r)
        self.websocket_ended = Counter(
            Metric.WEBSOCKET_SESSIONS_ENDED, "WebSocket sessions ended, by route and why (WebSocketEnd).",
            [Label.ROUTE, Label.REASON], registry=r)
        self.build = Info(Metric.BUILD_INFO, "Gatewatch build information.", registry=r)
        ProcessCollector(registry=r)  # process_start_time_seconds, process_cpu_seconds_total, ... (worker health)
        self.build.info({Label.VERSION: version, Label.COMPILED: "true" if compiled else "false",
                         Label.PYTHON: f"{platform.python_implementation()} {platform.python_version()}"})

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        openmetrics = bool(accept and "application/openmetrics-text" in accept)
        fast: list[str] = []
        for c in self.fast:
            c.render(fast, openmetrics)
        tail = "".join(fast).encode("utf-8")
        if openmetrics:
            head = generate_openmetrics(self.registry)
            assert head.endswith(b"# EOF\n")
            return head[:-len(b"# EOF\n")] + tail + b"# EOF\n", OPENMETRICS_CONTENT_TYPE
        return generate_latest(self.registry) + tail, PROMETHEUS_CONTENT_TYPE

    def collect_all(self) -> Iterable:
        """Every metric family, the request-path ones included (for code that walks metrics in-process)."""
        yield from self.registry.collect()
        for c in self.fast:
            yield from c.collect()


class CappedLabel:
    """A user-derived label value (e.g. a consumer name) under a cardinality cap: the first `cap` distinct values
    pass through, later ones become `_overflow`, so no client can create unbounded series."""

    def __init__(self, cap: int):
        self._cap = cap
        self._seen: set[str] = set()

    def __call__(self, value: str | None) -> str:
        if not value:
            return ""
        if value in self._seen:
            return value
        if len(self._seen) >= self._cap:
            return OVERFLOW_LABEL
        self._seen.add(value)
        return value
