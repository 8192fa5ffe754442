"""CPU per request of the telemetry exporter, on records the real engine produced (3 spans + 2 decision logs per
request, from `engine_micro.py`'s setup). Two measurements:

    python bench/exporter_micro.py stages  [--requests 2000]
        In this process, pinned if you pin it: decoding the pipe format, building span/log models and writing
        OTLP protobuf, each stage alone and all together (best of 9 passes over the same records; the encoder's
        caches are warm after the first pass, as in a running exporter).

    python bench/exporter_micro.py process [--requests 30000] [--rate 6000]
        End to end: `python -m gatewatch.telemetry.exporter_process` (the real child, pinned to the last CPU) fed the records
        in frames at --rate requests/s, exporting OTLP/HTTP to `bench/otlp_sink.py` (which decodes every message,
        pinned to the first CPU). Prints the exporter's CPU per request with its start-up (imports, measured
        separately by a run with nothing to export) taken off, and checks the sink received every span and log
        record.

Both are for A/B-testing exporter changes across two trees (run each tree alternately, several times: the machine's
noise is ±15 % for `process`); the end-to-end harness (bench/run.py) reports the exporter's CPU under real load.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(BENCH))

import engine_micro  # noqa: E402
from gatewatch.telemetry import wire  # noqa: E402
from gatewatch.telemetry.config import ResolvedTelemetry  # noqa: E402
from gatewatch.telemetry.convert import log_models, span_models  # noqa: E402
from gatewatch.telemetry.otlp_encode import Envelope, encode_log, encode_span  # noqa: E402
from gatewatch.telemetry.recorder import MemorySink  # noqa: E402


def records(n: int) -> list:
    """n finished request records, as the engine hands them to the recorder (telemetry on, 3 instances)."""
    sink = MemorySink(keep=n)  # every request is sampled ("on"), so every record reaches the sink
    asyncio.run(engine_micro.run(n + 600, "on", sink=sink))
    return list(sink.records)


def best_us(f, per: int, passes: int = 9) -> float:
    f()
    best = float("inf")
    for _ in range(passes):
        t = time.process_time()
        f()
        best = min(best, time.process_time() - t)
    return best / per * 1e6


def stages(n: int) -> None:
    recs = records(n)
    payload = b"".join(wire.encode_one(r) for r in recs)
    envelope = Envelope({"service.name": "bench"}, "gatewatch", "0")
    decoded = wire.decode(payload)
    spans = [m for r in decoded for m in span_models(r)]
    logs = [m for r in decoded for m in log_models(r)]

    def whole():
        rs = wire.decode(payload)
        envelope.traces(encode_span(m) for r in rs for m in span_models(r))
        envelope.logs(encode_log(m) for r in rs for m in log_models(r))

    print(f"exporter work per request ({len(spans) / n:.0f} spans, {len(logs) / n:.0f} log records), µs of CPU, "
          f"best of 9 passes over {n} requests:")
    print(f"  decode {best_us(lambda: wire.decode(payload), n):.1f}"
          f"  span_models {best_us(lambda: [span_models(r) for r in decoded], n):.1f}"
          f"  log_models {best_us(lambda: [log_models(r) for r in decoded], n):.1f}"
          f"  encode spans {best_us(lambda: envelope.traces(encode_span(m) for m in spans), n):.1f}"
          f"  encode logs {best_us(lambda: envelope.logs(encode_log(m) for m in logs), n):.1f}")
    print(f"  all together: {best_us(whole, n):.1f}")


def _cpu_of_exporter(frames: list[bytes], endpoint: str, rate: float, requests: int) -> float:
    resolved = ResolvedTelemetry("bench", {}, endpoint, "http/protobuf", {}, 10.0, 1.0, tempfile.gettempdir(), 8192,
                                 512, 1.0, traces_endpoint=endpoint + "/v1/traces", logs_endpoint=endpoint + "/v1/logs")
    args = json.dumps({"resolved": dataclasses.asdict(resolved), "resource": {"service.name": "bench"},
                       "version": "0", "file_stem": "exporter-micro", "shutdown_s": 60})
    last = str((os.cpu_count() or 1) - 1)
    p = subprocess.Popen(["taskset", "-c", last, sys.executable, "-m", "gatewatch.telemetry.exporter_process", args],
                         cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    time.sleep(1.0)  # imports done before the clock of the pacing starts
    start = time.monotonic()
    per_frame = requests / max(1, len(frames))
    for i, frame in enumerate(frames):
        delay = start + i * per_frame / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        p.stdin.write(frame)
        p.stdin.flush()
    p.stdin.close()
    _, status, usage = os.wait4(p.pid, 0)
    if status != 0:
        raise SystemExit(f"the exporter process exited with status {status}")
    return usage.ru_utime + usage.ru_stime


def process(n: int, rate: float) -> None:
    recs = records(n)
    encoded = [wire.encode_one(r) for r in recs]
    frames = [wire.frame(encoded[i:i + 200]) for i in range(0, n, 200)]
    spans = sum(len(span_models(r)) for r in recs)
    logs = sum(len(log_models(r)) for r in recs)
    status = Path(tempfile.mkdtemp(prefix="exporter-micro-")) / "sink.json"
    sink = subprocess.Popen(["taskset", "-c", "0", sys.executable, str(BENCH / "otlp_sink.py"), "--status-file",
                             str(status)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not status.exists():
            if time.monotonic() > deadline or sink.poll() is not None:
                raise SystemExit("the OTLP sink did not start")
            time.sleep(0.05)
        endpoint = json.loads(status.read_text())["http_endpoint"]
        startup = _cpu_of_exporter([], endpoint, rate, 0)  # start, nothing to export, exit
        cpu = _cpu_of_exporter(frames, endpoint, rate, n)
        after, deadline = json.loads(status.read_text()), time.monotonic() + 5
        while (after["spans"], after["logs"]) != (spans, logs) and time.monotonic() < deadline:
            time.sleep(0.2)  # the sink writes its counts every ~0.1-1 s
            after = json.loads(status.read_text())
    finally:
        sink.terminate()
        sink.wait()
    got_spans, got_logs = after["spans"], after["logs"]
    print(f"exporter process: {cpu:.2f} s CPU for {n} requests at {rate:.0f}/s, start-up ~{startup:.2f} s → "
          f"{(cpu - startup) / n * 1e6:.1f} µs per request; the sink decoded {got_spans}/{spans} spans, "
          f"{got_logs}/{logs} log records")
    if (got_spans, got_logs) != (spans, logs):
        raise SystemExit("the sink did not receive everything")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("mode", choices=["stages", "process"])
    ap.add_argument("--requests", type=int)
    ap.add_argument("--rate", type=float, default=6000.0, help="requests/s offered to the exporter process")
    args = ap.parse_args()
    if args.mode == "stages":
        stages(args.requests or 2000)
    else:
        process(args.requests or 30000, args.rate)


if __name__ == "__main__":
    main()
