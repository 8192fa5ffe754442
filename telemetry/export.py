"""Off-the-request-path export: bounded queues, a worker thread per signal, counted drops.

The event loop only appends finished records to a bounded queue (`submit_*`, O(1), never blocks). A worker
thread per signal wakes every `export_interval_s` or when a batch is full, converts the records (OTLP protobuf
for an endpoint, SDK objects for JSON lines under `local_dir`; see `ThreadSink`) and exports them. A dead or slow collector only blocks that thread: the queue fills
and the overflow is counted in `gatewatch_telemetry_dropped_total{reason="queue_full"}`; failed exports are
counted with `reason="export_failed"`. `shutdown(timeout_s)` flushes what it can within the deadline and
counts the rest as `reason="shutdown"`.
"""

from __future__ import annotations

import collections
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from gatewatch.telemetry.config import ResolvedTelemetry
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import DropReason, TelemetrySignal

log = logging.getLogger("gatewatch.telemetry")


class JsonLinesExporter:
    """Writes each item's OTel JSON form as one line. Used when no OTLP endpoint is configured."""

    def __init__(self, path: Path, max_bytes: int = 64 * 1024 * 1024):
        self.path = path
        self.max_bytes = max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(path, "a", encoding="utf-8")

    def export(self, batch: Sequence[Any]) -> bool:
        for item in batch:
            self._fh.write(item.to_json(indent=None).replace("\n", " ") + "\n")
        self._fh.flush()
        if self._fh.tell() > self.max_bytes:  # keep one previous file, bounded disk use
            self._fh.close()
            try:
                os.replace(self.path, self.path.with_suffix(self.path.suffix + ".1"))
            except OSError as err:  # e.g. the file was moved away underneath us: keep writing, never stop
                log.warning("could not rotate %s: %s", self.path, err)
            finally:
                self._fh = open(self.path, "a", encoding="utf-8")
        return True

    def shutdown(self) -> None:
        self._fh.close()


class NullExporter:
    """For OTEL_SDK_DISABLED=true: nothing is queued, so nothing reaches here."""

    def export(self, batch: Sequence[Any]) -> bool:
        return True

    def shutdown(self) -> None:
        pass


def jsonl_path(cfg: ResolvedTelemetry, file_stem: str, signal: str) -> Path:
    """Where a signal without an OTLP endpoint is written."""
    return Path(cfg.local_dir) / f"{file_stem}.{signal}.jsonl"


def destination(cfg: ResolvedTelemetry, file_stem: str) -> str:
    """Where each signal goes, in words (the ready file, the logs and `gatewatch demo` show it)."""
    if not cfg.enabled:
        return "disabled (OTEL_SDK_DISABLED=true)"
    parts = []
    for signal, endpoint in (("traces", cfg.traces_endpoint), ("logs", cfg.logs_endpoint)):
        parts.append(f"{signal}: OTLP {cfg.protocol} to {endpoint}" if endpoint else
                     f"{signal}: JSON lines in {jsonl_path(cfg, file_stem, signal).resolve()}")
    return "; ".join(parts)


class SignalWorker:
    """One bounded queue and one export thread for one signal."""

    def __init__(self, signal: TelemetrySignal, exporter: Any, convert: Callable[[list[Any]], list[Any]],
                 count: Callable[[Any], int], metrics: Metrics, queue_size: int, batch_size: int,
                 interval_s: float):
        self.signal = signal
        self._exporter = exporter
        self._convert = convert
        self._count = count
        self._queue: collections.deque[Any] = collections.deque()
        self._queued_items = 0  # items (spans / log records), not records
        self._max_items = queue_size
        self._batch_items = batch_size
        self._interval_s = interval_s
        self._lock = threading.Lock()  # `_queued_items` is shared by the loop thread and the export thread
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._dropped = metrics.telemetry_dropped
        self._exported = metrics.telemetry_exported.labels(signal.value)
        self._queue_gauge = metrics.telemetry_queue.labels(signal.value)
        self._thread = threading.Thread(target=self._run, name=f"gatewatch-export-{signal.value}", daemon=True)
        self._thread.start()

    @property
    def queued(self) -> int:
        """Items (spans / log records) waiting for export."""
        return self._queued_items

    def submit(self, record: Any) -> None:
        """Called on the event loop. Never blocks: a full queue drops the record and counts it."""
        n = self._count(record)
        if self._queued_items + n > self._max_items or self._stop.is_set():
            self._dropped.labels(self.signal.value, DropReason.QUEUE_FULL.value).inc(n)
            return
        self._queue.append(record)
        with self._lock:
            self._queued_items += n
        if self._queued_items >= self._batch_items:
            self._wake.set()

    def _take_batch(self) -> list[Any]:
        out: list[Any] = []
        items = 0
        while self._queue and items < self._batch_items:
            rec = self._queue.popleft()
            n = self._count(rec)
            with self._lock:
                self._queued_items -= n
            items += n
            out.append(rec)
        return out

    def _export_once(self) -> bool:
        records = self._take_batch()
        self._queue_gauge.set(self._queued_items)
        if not records:
            return False
        try:
            batch = self._convert(records)
            ok = self._exporter.export(batch)
        except Exception:
            log.warning("telemetry export of %s failed", self.signal.value, exc_info=True)
            batch, ok = None, False
        n = len(batch) if batch is not None else sum(self._count(r) for r in records)
        if ok:
            self._exported.inc(n)
        else:
            self._dropped.labels(self.signal.value, DropReason.EXPORT_FAILED.value).inc(n)
        return True

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self._interval_s)
            self._wake.clear()
            while self._queue and not self._stop.is_set():
                self._export_once()
                if self._queued_items < self._batch_items:
                    break

    def shutdown(self, deadline: float) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(max(0.0, deadline - time.monotonic()))
        while self._queue and time.monotonic() < deadline and not self._thread.is_alive():
            self._export_once()
        left = sum(self._count(r) for r in self._queue)
        if left:
            self._dropped.labels(self.signal.value, DropReason.SHUTDOWN.value).inc(left)
            self._queue.clear()
        if not self._thread.is_alive():
            self._exporter.shutdown()
