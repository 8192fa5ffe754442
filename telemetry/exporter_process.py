"""The telemetry exporter process: decodes finished request records from its stdin, turns them into spans
and decision logs and exports them (OTLP or JSON lines) on its own CPU, off the proxy's core.

Started by `ProcessSink` with one JSON argument (the resolved telemetry config, resource attributes, version
and file stem). Frames in: 4-byte length + `telemetry.wire` payload. Frames out (stdout), once a second and at
exit: 4-byte length + marshal({"exported": {signal: n}, "dropped": {(signal, reason): n}}) as running totals.
EOF on stdin means shut down: export what fits in the deadline, count the rest as dropped.
"""

from __future__ import annotations

import gc
import json
import marshal
import os
import sys
import threading
import time

from opentelemetry.sdk.resources import Resource

from gatewatch.telemetry import wire
from gatewatch.telemetry.config import ResolvedTelemetry
from gatewatch.telemetry.context import EventRecord
from gatewatch.telemetry.convert import Converter, Conventions, log_models, span_models
from gatewatch.telemetry.otlp_encode import Envelope, encode_log, encode_span
from gatewatch.telemetry.otlp_send import EncodedBatch, GrpcSender, HttpSender
from gatewatch.telemetry.export import JsonLinesExporter, NullExporter, SignalWorker, destination, jsonl_path
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import SCOPE_NAME, TelemetrySignal


class ThreadSink:
    """Two bounded queues with an export thread each (the in-process pipeline; also what the exporter
    process runs)."""

    def __init__(self, resolved: ResolvedTelemetry, resource_attrs: dict, metrics: Metrics, version: str,
                 file_stem: str):
        self.destination = destination(resolved, file_stem)
        conv = Conventions.of(resolved.known_methods, resolved.url_query_values)
        converter = Converter(Resource(resource_attrs), version, conv)
        envelope = Envelope(resource_attrs, SCOPE_NAME, version)

        def to_spans(records):
            models = [m for r in records for m in span_models(r, conv)]
            return EncodedBatch(envelope.traces(encode_span(m) for m in models), len(models))

        def to_logs(items):
            models = [m for r, _ in items for m in log_models(r, conv)]
            return EncodedBatch(envelope.logs(encode_log(m) for m in models), len(models))

        # Per signal: an OTLP endpoint gets protobuf written directly (several times cheaper than SDK objects
        # + the stock encoder); without one, the SDK's JSON form goes to a file.
        workers = []
        for signal, endpoint, encode, to_sdk, count in (
                (TelemetrySignal.TRACES, resolved.traces_endpoint, to_spans, converter.spans, wire.span_count),
                (TelemetrySignal.LOGS, resolved.logs_endpoint, to_logs, converter.logs, lambda item: len(item[1]))):
            if not resolved.enabled:
                exporter, convert = NullExporter(), to_sdk
            elif endpoint:
                exporter, convert = _sender(resolved, signal.value, endpoint), encode
            else:
                exporter, convert = JsonLinesExporter(jsonl_path(resolved, file_stem, signal.value)), to_sdk
            workers.append(SignalWorker(signal, exporter, convert, count, metrics, resolved.queue_size,
                                        resolved.batch_size, resolved.export_interval_s))
        self.traces, self.logs = workers

    def submit(self, r) -> None:
        if isinstance(r, EventRecord):
            self.logs.submit((r, (r,)))
            return
        if r.trace.sampled:
            self.traces.submit(r)
        if r.decisions:
            self.logs.submit((r, r.decisions))

    def shutdown(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        self.traces.shutdown(deadline)
        self.logs.shutdown(deadline)


def _sender(resolved: ResolvedTelemetry, signal: str, endpoint: str):
    if resolved.protocol == "grpc":
        return GrpcSender(endpoint, signal, resolved)
    return HttpSender(endpoint, resolved)


def _totals(metrics: Metrics, sink: "ThreadSink") -> dict:
    out = {"exported": {}, "dropped": {}, "queued": {"traces": sink.traces.queued, "logs": sink.logs.queued}}
    for fam in metrics.registry.collect():
        for s in fam.samples:
            if s.name == "gatewatch_telemetry_exported_total":
                out["exported"][s.labels["signal"]] = s.value
            elif s.name == "gatewatch_telemetry_dropped_total":
                out["dropped"][(s.labels["signal"], s.labels["reason"])] = s.value
    return out


def _leave_the_proxy_core() -> None:
    """Run on the cores the proxy is not pinned to (the child inherits the parent's affinity): the point of
    this process is to keep encoding and export off the proxy's core."""
    if not hasattr(os, "sched_getaffinity"):
        return
    mine = os.sched_getaffinity(0)
    everything = set(range(os.cpu_count() or 1))
    others = everything - mine
    if others:
        try:
            os.sched_setaffinity(0, others)
        except OSError:
            pass


def main() -> int:
    _leave_the_proxy_core()
    args = json.loads(sys.argv[1])
    resolved = ResolvedTelemetry(**args["resolved"])
    metrics = Metrics(args["version"])
    sink = ThreadSink(resolved, args["resource"], metrics, args["version"], args["file_stem"])
    # Everything alive now (modules, protobuf and SDK classes: most of the heap) stays for the process's life;
    # out of the collector's sight, full collections no longer walk it (GC time measured with gc.callbacks over
    # 30k requests: 0.20 -> 0.08 s, the full collections 0.11 -> 0.003 s).
    gc.freeze()
    out = sys.stdout.buffer
    lock = threading.Lock()
    stop = threading.Event()

    def report() -> None:
        payload = marshal.dumps(_totals(metrics, sink))
        with lock:
            out.write(wire.HEADER.pack(len(payload)) + payload)
            out.flush()

    def reporter() -> None:
        while not stop.wait(1.0):
            try:
                report()
            except (BrokenPipeError, ValueError):
                return

    threading.Thread(target=reporter, daemon=True).start()
    stdin = sys.stdin.buffer
    while True:
        head = stdin.read(wire.HEADER.size)
        if len(head) < wire.HEADER.size:
            break
        (n,) = wire.HEADER.unpack(head)
        payload = stdin.read(n)
        if len(payload) < n:
            break
        for record in wire.decode(payload):
            sink.submit(record)
    stop.set()
    sink.shutdown(float(args.get("shutdown_s", 3.0)))
    try:
        report()
    except (BrokenPipeError, ValueError):
        pass
    os._exit(0)  # exporter threads stuck on a dead collector must not hold the exit


if __name__ == "__main__":
    sys.exit(main())
