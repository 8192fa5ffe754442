"""State-change events outside requests (`Telemetry.event`) reach the collector as OTLP log records with
their `event_name`, severity and, when one request caused them, its trace context — from both sinks."""

from __future__ import annotations

import asyncio
import json

import pytest

from gatewatch.telemetry.config import TelemetryConfig, resolve
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import Attr, Event
from gatewatch.telemetry.recorder import Telemetry


@pytest.mark.parametrize("exporter", ["process", "thread"])
async def test_events_are_exported_as_log_records(otlp, exporter):
    t = Telemetry(resolve(TelemetryConfig(), "svc", otlp.env("grpc")), Metrics(), "0", "svc", exporter)
    await t.start()
    t.event(Event.HEALTH_TRANSITION, "pool p instance a: healthy -> unhealthy",
            {Attr.POOL: "p", Attr.HEALTH_TO: "unhealthy"}, severity="WARN")
    t.event(Event.OUTLIER_EJECTION, "ejected", {Attr.EJECTION_TRACE_IDS: ["ab" * 16, "cd" * 16]},
            trace_id=0xAB, span_id=0xCD)
    await t.stop()
    assert otlp.data.wait_for(lambda spans, logs: len(logs) >= 2, 10)
    by_name = {r["event_name"]: r for r in otlp.data.snapshot()[1]}
    health = by_name["gatewatch.health.transition"]
    assert health["severity"] == "WARN" and health["trace_id"] == "" and health["attributes"][Attr.POOL] == "p"
    ejection = by_name["gatewatch.outlier.ejection"]
    assert ejection["trace_id"] == f"{0xAB:032x}" and ejection["span_id"] == f"{0xCD:016x}"
    assert ejection["attributes"][Attr.EJECTION_TRACE_IDS] == ["ab" * 16, "cd" * 16]


async def test_events_go_to_json_lines_without_an_endpoint(tmp_path):
    cfg = TelemetryConfig(local_dir=str(tmp_path))
    t = Telemetry(resolve(cfg, "svc", {}), Metrics(), "0", "svc", "thread")
    await t.start()
    t.event(Event.CONFIG_RELOAD, "reloaded", {"result": "ok"})
    await t.stop()
    lines = [json.loads(x) for x in (tmp_path / "svc.logs.jsonl").read_text().splitlines()]
    assert [x["event_name"] for x in lines] == ["gatewatch.config.reload"]


async def test_disabled_telemetry_drops_events_quietly():
    t = Telemetry(resolve(TelemetryConfig(), "svc", {"OTEL_SDK_DISABLED": "true"}), Metrics(), "0", "svc")
    await t.start()
    t.event(Event.CONFIG_RELOAD, "x", {})
    await asyncio.sleep(0)
    await t.stop()
