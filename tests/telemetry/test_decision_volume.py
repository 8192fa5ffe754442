"""Decision-log volume control: an unsampled request's allow decisions are counted, not logged; anything else
is always logged."""

from __future__ import annotations

import random

import pytest

from gatewatch.telemetry.config import TelemetryConfig, resolve
from gatewatch.telemetry.context import DecisionRecord, RequestRecord, start_trace
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import DecisionKind
from gatewatch.telemetry.recorder import Telemetry


class Sink:
    def __init__(self):
        self.records = []

    def submit(self, r):
        self.records.append(r)


def record(sampled: bool, results: list[str]) -> RequestRecord:
    t = start_trace(None, None, None, "continue", 1.0 if sampled else 0.0, random.Random(1))
    r = RequestRecord("edge", t, 1, 0.0, "GET", "/", "", "http", "h", 80, "1.2.3.4", 1, "1.1", None, "rid", "public")
    r.decisions = [DecisionRecord(DecisionKind.ROUTE, "r", res, "x", 1, t.span_id) for res in results]
    return r


@pytest.mark.parametrize("mode,sampled,results,logged", [
    ("sampled", True, ["matched", "picked"], ["matched", "picked"]),
    ("sampled", False, ["matched", "picked"], None),  # nothing to send at all
    ("sampled", False, ["no_match"], ["no_match"]),
    ("sampled", False, ["matched", "no_candidates"], ["no_candidates"]),
    ("all", False, ["matched", "picked"], ["matched", "picked"]),
])
def test_allow_decisions_of_unsampled_requests(tmp_path, mode, sampled, results, logged):
    cfg = TelemetryConfig(allow_decision_logs=mode, local_dir=str(tmp_path), exporter="thread")
    metrics = Metrics()
    tel = Telemetry(resolve(cfg, "gw", {}), metrics, "0", "gw", exporter="thread")
    tel.sink = Sink()
    tel.finish(record(sampled, results))
    got = [d.result for r in tel.sink.records for d in r.decisions] if tel.sink.records else None
    assert got == logged
    counted = sum(metrics.decisions.value(("edge", "route", res, "x")) for res in set(results))
    assert counted == len(results)  # every decision is counted, logged or not
