"""The one place a finished request becomes telemetry: metrics now, spans and decision logs handed to a sink.

`Telemetry.finish(record)` is called exactly once per request by the engine, on the event loop, and does only
cheap work: a few histogram/counter updates and an append to a bounded buffer. Where the spans and logs are
built and exported depends on `telemetry.exporter`:
- `process` (default): a child process (`telemetry.exporter_process`) on another core does the conversion and
  export; records cross a pipe as compact marshal frames (`telemetry.wire`), every ~50 ms.
- `thread`: the same pipeline in export threads of this process (simpler; costs the proxy's core).
Either way queues are bounded and every item that does not make it is counted in
`gatewatch_telemetry_dropped_total{signal,reason}`.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import logging
import marshal
import socket
import sys
import time
import uuid

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.telemetry import wire
from gatewatch.telemetry.config import ResolvedTelemetry
from gatewatch.telemetry.context import AttemptRecord, DecisionRecord, EventRecord, RequestRecord, hex128
from gatewatch.telemetry.export import destination
from gatewatch.telemetry.exporter_process import ThreadSink
from gatewatch.telemetry.fastmetrics import FastCounter, FastHistogram
from gatewatch.telemetry.journal import Journal
from gatewatch.telemetry.metrics import STATUS_LABELS as STATUS_TEXT
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import (ALLOW_RESULTS, DecisionKind, DecisionResult, DropReason, Event, Layer, Reason,
                                       TelemetrySignal)

log = logging.getLogger("gatewatch.telemetry")
FLUSH_S = 0.05
RETRY_OR_FAILOVER = frozenset({DecisionKind.RETRY, DecisionKind.FAILOVER})
BALANCER = Layer.BALANCER.value
# Label values are plain str; a StrEnum member hashes as its value, and the lookup costs less than `.value`.
KIND_LABEL = {kind: kind.value for kind in DecisionKind}
OTHER = "_OTHER"
# Plain str (the records hold `.value`s): a set of str finds a str without StrEnum's slower equality.
ALLOW = frozenset(str(r) for r in ALLOW_RESULTS)
# A port's label text, made once per port (at most 65,535): the same str object in every label tuple, hashed once.
_PORT_TEXT: dict[int | None, str] = {}
PIPE_LIMIT = 16 * 1024 * 1024  # bytes waiting in the pipe to the exporter before batches are dropped


class ProcessSink:
    def __init__(self, resolved: ResolvedTelemetry, resource_attrs: dict, metrics: Metrics, version: str,
                 file_stem: str):
        self._args = json.dumps({"resolved": dataclasses.asdict(resolved), "resource": resource_attrs,
                                 "version": version, "file_stem": file_stem})
        self._metrics = metrics
        self._pending: list[bytes] = []  # records already encoded for the pipe (`wire.encode_one`)
        self._pending_items = [0, 0]  # spans, log records
        self._max_items = resolved.queue_size
        self._batch = resolved.batch_size
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task] = []
        self._child_totals: dict = {"exported": {}, "dropped": {}}
        self._seen = {"exported": {}, "dropped": {}}
        self.destination = "exporter process: " + destination(resolved, file_stem)

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-P", "-m", "gatewatch.telemetry.exporter_process", self._args,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, start_new_session=True)
        self._tasks = [asyncio.get_running_loop().create_task(self._flusher()),
                       asyncio.get_running_loop().create_task(self._read_totals())]

    def submit(self, r: RequestRecord | EventRecord) -> None:
        if isinstance(r, EventRecord):
            spans, logs = 0, 1
        else:
            spans = wire.span_count(r) if r.trace.sampled else 0
            logs = len(r.decisions)
        p = self._pending_items
        if p[0] + spans > self._max_items or p[1] + logs > self._max_items:
            self._drop(spans, logs, DropReason.QUEUE_FULL)
            return
        self._pending.append(wire.encode_one(r))
        p[0] += spans
        p[1] += logs
        if len(self._pending) >= self._batch:
            self._flush()

    def _drop(self, spans: int, logs: int, reason: DropReason) -> None:
        if spans:
            self._metrics.telemetry_dropped.labels(TelemetrySignal.TRACES.value, reason.value).inc(spans)
        if logs:
            self._metrics.telemetry_dropped.labels(TelemetrySignal.LOGS.value, reason.value).inc(logs)

    def _flush(self) -> None:
        if not self._pending:
            return
        records, self._pending = self._pending, []
        spans, logs = self._pending_items
        self._pending_items = [0, 0]
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin.is_closing():
            self._drop(spans, logs, DropReason.EXPORT_FAILED)
            return
        if proc.stdin.transport.get_write_buffer_size() > PIPE_LIMIT:  # the exporter is not keeping up
            self._drop(spans, logs, DropReason.QUEUE_FULL)
            return
        proc.stdin.write(wire.frame(records))

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(FLUSH_S)
            self._flush()

    async def _read_totals(self) -> None:
        out = self._proc.stdout
        try:
            while True:
                head = await out.readexactly(wire.HEADER.size)
                (n,) = wire.HEADER.unpack(head)
                self._apply(marshal.loads(await out.readexactly(n)))
        except (asyncio.IncompleteReadError, ConnectionError):
            return

    def _apply(self, totals: dict) -> None:
        """The child reports running totals; add what is new to this process's counters."""
        m = self._metrics
        for i, signal in enumerate(("traces", "logs")):
            m.telemetry_queue.labels(signal).set(self._pending_items[i] + totals.get("queued", {}).get(signal, 0))
        for signal, v in totals["exported"].items():
            delta = v - self._seen["exported"].get(signal, 0)
            if delta > 0:
                m.telemetry_exported.labels(signal).inc(delta)
            self._seen["exported"][signal] = v
        for key, v in totals["dropped"].items():
            delta = v - self._seen["dropped"].get(key, 0)
            if delta > 0:
                m.telemetry_dropped.labels(*key).inc(delta)
            self._seen["dropped"][key] = v

    async def stop(self, timeout_s: float) -> None:
        self._flush()
        for t in self._tasks[:1]:
            t.cancel()
        proc = self._proc
        if proc is None:
            return
        try:
            proc.stdin.close()
            await asyncio.wait_for(proc.wait(), timeout_s + 2)
        except (asyncio.TimeoutError, ConnectionError):
            log.warning("telemetry exporter did not stop in time; killing it")
            proc.kill()
            await proc.wait()
        try:
            await asyncio.wait_for(self._tasks[1], 1.0)
        except (asyncio.TimeoutError, asyncio.CancelledError):
            pass


class _ThreadSinkAdapter:
    def __init__(self, sink: ThreadSink):
        self._sink = sink
        self.destination = sink.destination

    async def start(self) -> None:
        pass

    def submit(self, r: RequestRecord | EventRecord) -> None:
        self._sink.submit(r)

    async def stop(self, timeout_s: float) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._sink.shutdown, timeout_s)


class MemorySink:
    """Keeps the records the recorder submits (requests with spans or decision logs, events), the latest
    `keep`: telemetry as data for tests and benchmarks, with no exporter."""

    destination = "memory"

    def __init__(self, keep: int = 100_000):
        self.records: collections.deque[RequestRecord | EventRecord] = collections.deque(maxlen=keep)

    async def start(self) -> None:
        pass

    def submit(self, r: RequestRecord | EventRecord) -> None:
        self.records.append(r)

    async def stop(self, timeout_s: float) -> None:
        pass


class Telemetry:
    # An extension type when compiled (recorder.pxd): `finish` reads its metric families as C fields.
    __slots__ = ("config", "metrics", "resource_attributes", "sink", "destination", "journal", "_server", "_client",
                 "_decisions", "_verdicts", "_instances", "_pool_requests", "_cache_requests", "_known_methods",
                 "_allow_logs_sampled_only")

    def __init__(self, resolved: ResolvedTelemetry, metrics: Metrics, version: str, file_stem: str,
                 exporter: str = "process", sink: MemorySink | None = None):
        """`exporter`: where spans and logs are built and sent (`process` or `thread`); a `sink` given here
        replaces both (tests, benchmarks)."""
        self.config = resolved
        self.metrics = metrics
        attrs = dict(resolved.resource_attributes)
        attrs.setdefault("service.instance.id", f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}")
        attrs.setdefault("service.version", version)
        attrs.setdefault("telemetry.sdk.language", "python")
        attrs.setdefault("telemetry.sdk.name", "gatewatch")
        self.resource_attributes = attrs
        if not resolved.enabled:
            self.sink = None
            self.destination = "disabled (OTEL_SDK_DISABLED=true)"
        elif sink is not None:
            self.sink = sink
            self.destination = sink.destination
        elif exporter == "thread":
            self.sink = _ThreadSinkAdapter(ThreadSink(resolved, attrs, metrics, version, file_stem))
            self.destination = self.sink.destination
        else:
            self.sink = ProcessSink(resolved, attrs, metrics, version, file_stem)
            self.destination = self.sink.destination
        self._server = metrics.server_duration
        self._client = metrics.client_duration
        self._decisions = metrics.decisions
        self._verdicts = metrics.policy_verdicts
        self._instances = metrics.instance_requests
        self._pool_requests = metrics.pool_requests
        self._cache_requests = metrics.cache_requests
        self._known_methods = frozenset(resolved.known_methods)
        self._allow_logs_sampled_only = resolved.allow_decision_logs == "sampled"
        # The admin page's recent decisions and events (bounded ring, O(1) per entry; telemetry.journal).
        self.journal = Journal()

    async def start(self) -> None:
        if self.sink is not None:
            await self.sink.start()

    @cython.locals(r=RequestRecord, a=AttemptRecord, d=DecisionRecord, server=FastHistogram, client=FastHistogram,
                   instances=FastCounter, decisions=FastCounter)
    def finish(self, r: RequestRecord) -> None:
        server, client, instances, decisions = self._server, self._client, self._instances, self._decisions
        trace_id = hex128(r.trace.trace_id) if r.trace.sampled and self.sink is not None else None
        route = r.route or ""
        method = r.method if r.method in self._known_methods else OTHER
        status = r.status
        status_text = STATUS_TEXT.get(status, "")  # "" for none (no response)
        error_type = r.error_type or (status_text if status is not None and status >= 500 else "")
        server.observe((r.layer, route, method, status_text, r.outcome or "", r.route_template or "", r.scheme,
                        error_type), r.duration_s, trace_id)
        for a in r.attempts:
            a_status = a.status
            a_text = STATUS_TEXT.get(a_status, "")
            a_error = a.error_type or (a_text if a_status is not None and a_status >= 400 else "")
            port = _PORT_TEXT.get(a.port)
            if port is None:
                port = _PORT_TEXT[a.port] = str(a.port)
            client.observe((a.layer, route, a.upstream, a.instance, method, a_text, a.outcome or "", a.host,
                            port, a_error), a.duration_s, trace_id)
            if a.layer == BALANCER:  # per-instance counts of a pool (bounded by the pool's size)
                instances.inc((a.upstream, a.instance, a.outcome or ""))
        if r.failover is not None:  # a pool of this process served it: normally, or while failing over
            self._pool_requests.inc((r.upstream, r.failover))
        if r.cache is not None:  # a route with a response cache: how it took part (issue 19)
            self._cache_requests.inc((route, r.cache[0], r.cache[1]))
        notable = False
        for d in r.decisions:
            decisions.inc((d.layer or r.layer, KIND_LABEL[d.kind], d.result, d.reason))
            if d.kind in RETRY_OR_FAILOVER:
                self._retry_metrics(r, d)
            if d.result not in ALLOW:
                notable = True
        if notable:  # denied, no route, no candidates, retried, failed over: kept for the admin page
            self.journal.add(r)
        for p in r.policies:
            self._verdicts.inc((route, *p))
        if r.headers_dropped:  # rare: an underscore header dropped, an oversized tracestate or baggage cut
            for reason in r.headers_dropped:
                self.metrics.headers_dropped.labels(r.layer, reason).inc()
        if self.sink is None:
            return
        if r.decisions and not self.exports_allowed_decisions(r.trace.sampled):
            # Volume control (DESIGN §4): an unsampled request's allow decisions (route matched, instance
            # picked) are counted in gatewatch_decisions_total but not logged; anything else always is.
            kept = [d for d in r.decisions if d.result not in ALLOW_RESULTS]
            if len(kept) != len(r.decisions):
                r.decisions = kept
        if r.trace.sampled or r.decisions:
            self.sink.submit(r)

    def exports_allowed_decisions(self, sampled: bool) -> bool:
        """Whether a request's allowed decisions (route matched, instance picked) and its span attributes can ever
        be read: something exports, and the request is sampled or allowed decisions are logged whatever the
        sampling (`allow_decision_logs`). The engine records a pick's detail only then (`recording.pick`)."""
        return self.sink is not None and (sampled or not self._allow_logs_sampled_only)

    def event(self, event: Event, body: str, attributes: dict, trace_id: int | None = None,
              span_id: int | None = None, severity: str = "INFO") -> None:
        """A state change outside any request (health transition, ejection, circuit transition, config
        reload) as one decision-log record. Bounded like everything else: queued with the request records.
        Kept in `journal` too (the admin page), exported or not."""
        rec = EventRecord(event.value, time.time_ns(), body, attributes, trace_id or 0, span_id or 0, severity)
        self.journal.add(rec)
        if self.sink is not None:
            self.sink.submit(rec)

    def _retry_metrics(self, r: RequestRecord, d) -> None:
        m = self.metrics
        if d.kind is DecisionKind.FAILOVER:
            m.failovers.labels(d.rule, d.reason).inc()
        elif d.result == DecisionResult.RETRY:
            m.retries.labels(r.route or "", r.upstream or "", d.reason).inc()
        elif d.reason == Reason.RETRY_REFUSED_BUDGET.value:
            m.retry_budget_exhausted.labels(r.route or "", r.upstream or "").inc()

    async def stop(self, timeout_s: float = 3.0) -> None:
        if self.sink is not None:
            await self.sink.stop(timeout_s)
