"""The one place a finished request becomes telemetry: metrics now, spans and decision logs queued for export.

`Telemetry.start(resolved, layer_hint)` builds the pipeline for a process (resource, exporters, worker threads);
`Telemetry.finish(record)` is called exactly once per request by the engine, on the event loop, and does only
cheap work: a few histogram/counter updates and two bounded-queue appends.
"""

from __future__ import annotations

import socket
import time
import uuid

from opentelemetry.sdk.resources import Resource

from telemetry.config import ResolvedTelemetry
from telemetry.context import RequestRecord
from telemetry.convert import Converter
from telemetry.export import SignalWorker, build_exporters
from telemetry.metrics import Metrics, method_label, status_label
from telemetry.names import TelemetrySignal


def _span_count(r: RequestRecord) -> int:
    return 1 + len(r.attempts) + (1 if r.balance_span_id else 0)


class Telemetry:
    def __init__(self, resolved: ResolvedTelemetry, metrics: Metrics, version: str, file_stem: str):
        self.config = resolved
        self.metrics = metrics
        attrs = dict(resolved.resource_attributes)
        attrs.setdefault("service.instance.id", f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
        attrs.setdefault("service.version", version)
        attrs.setdefault("telemetry.sdk.language", "python")
        attrs.setdefault("telemetry.sdk.name", "gatewatch")
        self.resource = Resource(attrs)
        self.converter = Converter(self.resource, version)
        trace_exp, log_exp, self.destination = build_exporters(resolved, file_stem)
        self.traces = SignalWorker(
            TelemetrySignal.TRACES, trace_exp, self.converter.spans, _span_count, metrics,
            resolved.queue_size, resolved.batch_size, resolved.export_interval_s)
        self.logs = SignalWorker(
            TelemetrySignal.LOGS, log_exp, self.converter.logs, lambda item: len(item[1]), metrics,
            resolved.queue_size, resolved.batch_size, resolved.export_interval_s)
        m = metrics
        self._server = m.server_duration
        self._client = m.client_duration
        self._decisions = m.decisions
        self._enabled = resolved.enabled

    def finish(self, r: RequestRecord) -> None:
        exemplar = {"trace_id": f"{r.trace.trace_id:032x}"} if r.trace.sampled else None
        self._server.labels(r.layer, r.route or "", method_label(r.method), status_label(r.status),
                            r.outcome or "").observe(r.duration_s, exemplar)
        for a in r.attempts:
            self._client.labels(a.layer, r.route or "", a.upstream, a.instance, method_label(a.method),
                                status_label(a.status), a.outcome or "").observe(a.duration_s, exemplar)
        for d in r.decisions:
            self._decisions.labels(d.layer or r.layer, d.kind.value, d.result, d.reason).inc()
        if not self._enabled:
            return
        if r.trace.sampled:
            self.traces.submit(r)
        if r.decisions:
            self.logs.submit((r, r.decisions))

    def shutdown(self, timeout_s: float = 3.0) -> None:
        deadline = time.monotonic() + timeout_s
        self.traces.shutdown(deadline)
        self.logs.shutdown(deadline)
