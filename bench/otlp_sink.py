#!/usr/bin/env python3
"""A local OTLP receiver for the benchmark: the tests' `OtlpReceiver`, in its own process, counting what it decodes.

    python bench/otlp_sink.py --status-file FILE [--flatten]

It reuses `tests/support/otlp.py` (`OtlpReceiver`: OTLP/HTTP protobuf on `/v1/traces` and `/v1/logs`, and OTLP
gRPC), so every export is really parsed with the official `opentelemetry-proto` messages (`ParseFromString`).
The only change is what happens to a decoded message: the tests keep every span and log record as a dict,
which over a benchmark would grow without bound; here each span and log record is walked and counted (spans by
kind, log records by `event_name`) and then forgotten. `--flatten` additionally runs the tests' own
dict conversion on every message (more CPU on the sink's core, same counts) and keeps nothing.

The counts are written atomically as JSON to `--status-file` (about every 0.1 s while they change, every second
otherwise) and a line is printed every 5 s. The harness runs this pinned to the load-generator core, never to
the proxy's core, and reports its CPU separately from gatewatch's. SIGTERM/SIGINT stop it.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests.support.otlp import SPAN_KINDS, OtlpReceiver, Received  # noqa: E402


class CountingReceived(Received):
    """Counts decoded spans and log records instead of keeping them."""

    def __init__(self, flatten: bool = False) -> None:
        super().__init__()
        self.flatten = flatten
        self.span_count = 0
        self.log_count = 0
        self.trace_requests = 0
        self.log_requests = 0
        self.spans_by_kind: collections.Counter[str] = collections.Counter()
        self.logs_by_event: collections.Counter[str] = collections.Counter()
        self.changed = threading.Event()

    def add_traces(self, req) -> None:  # an ExportTraceServiceRequest, already parsed from the wire
        kinds: collections.Counter[str] = collections.Counter()
        for rs in req.resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    kinds[SPAN_KINDS.get(s.kind, str(s.kind))] += 1
        if self.flatten:
            super().add_traces(req)
            with self.lock:
                self.spans.clear()
        with self.lock:
            self.span_count += sum(kinds.values())
            self.spans_by_kind.update(kinds)
            self.trace_requests += 1
            self.requests += 1
        self.changed.set()

    def add_logs(self, req) -> None:  # an ExportLogsServiceRequest
        events: collections.Counter[str] = collections.Counter()
        for rl in req.resource_logs:
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    events[r.event_name or "(none)"] += 1
        if self.flatten:
            super().add_logs(req)
            with self.lock:
                self.logs.clear()
        with self.lock:
            self.log_count += sum(events.values())
            self.logs_by_event.update(events)
            self.log_requests += 1
            self.requests += 1
        self.changed.set()

    def status(self) -> dict:
        with self.lock:
            return {"spans": self.span_count, "logs": self.log_count, "trace_requests": self.trace_requests,
                    "log_requests": self.log_requests, "spans_by_kind": dict(self.spans_by_kind),
                    "logs_by_event": dict(self.logs_by_event)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--status-file", required=True, help="where to write the counts as JSON")
    ap.add_argument("--flatten", action="store_true", help="also run the tests' dict conversion on every message")
    args = ap.parse_args()

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    rx = OtlpReceiver()
    counting = CountingReceived(flatten=args.flatten)
    rx.data = counting  # before start(): the HTTP handler and the gRPC servicers capture rx.data then
    rx.start()
    status_path = Path(args.status_file)
    base = {"pid": os.getpid(), "http_endpoint": rx.http_endpoint, "grpc_endpoint": rx.grpc_endpoint}

    def write() -> dict:
        st = {**base, **counting.status(), "time": time.time()}
        tmp = status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(st))
        os.replace(tmp, status_path)
        return st

    write()
    print(f"otlp_sink: listening http {rx.http_endpoint} grpc {rx.grpc_endpoint} (pid {os.getpid()})", flush=True)
    last_print = time.monotonic()
    last_line = ""
    try:
        while not stop.is_set():
            changed = counting.changed.wait(1.0)
            counting.changed.clear()
            st = write()
            now = time.monotonic()
            if now - last_print >= 5:
                line = f"otlp_sink: decoded {st['spans']} spans, {st['logs']} log records"
                if line != last_line:
                    print(line, flush=True)
                    last_line = line
                last_print = now
            if changed:
                time.sleep(0.1)  # batch the status writes while exports arrive
    finally:
        rx.stop()
        st = write()
        print(f"otlp_sink: stopped after {st['spans']} spans, {st['logs']} log records "
              f"({json.dumps(st['spans_by_kind'])}, {json.dumps(st['logs_by_event'])})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
