"""A dead or hanging collector changes nothing for clients: requests succeed without waiting on export, drops
are counted, and shutdown stays bounded."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.integration.test_two_tier import edge_cfg


def metric_value(text: str, name: str, **labels) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.parametrize("protocol", ["grpc", "http/protobuf"])
@pytest.mark.parametrize("collector", ["hanging", "refused"])
def test_dead_collector_does_not_touch_requests(cluster, blackhole, protocol, collector):
    if collector == "refused":
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{s.getsockname()[1]}"
        s.close()
    else:
        endpoint = blackhole
    env = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol,
           "OTEL_EXPORTER_OTLP_TIMEOUT": "10000"}
    b = cluster.backend("inst-a")
    cfg = edge_cfg(backends=[b])
    cfg["telemetry"] = {"queue_size": 32, "batch_size": 8, "export_interval_s": 0.2}
    edge = cluster.gatewatch("edge", cfg, env=env)
    worst = 0.0
    for i in range(150):
        t0 = time.monotonic()
        with urllib.request.urlopen(f"http://{edge.listener('public')}/api/orders/{i}", timeout=10) as r:
            assert r.status == 200
            r.read()
        worst = max(worst, time.monotonic() - t0)
    # The exporter may hang for 10 s per batch; no request may wait for it.
    assert worst < 2.0, f"a request took {worst:.2f}s: the data path waited on telemetry"
    # Drops are counted where they happen (the exporter process reports its totals every second).
    deadline = time.monotonic() + 5
    while True:
        with urllib.request.urlopen(f"http://{edge.admin}/metrics", timeout=5) as r:
            text = r.read().decode()
        dropped = metric_value(text, "gatewatch_telemetry_dropped_total", signal="traces")
        if dropped > 0 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert dropped > 0, text
    assert metric_value(text, "gatewatch_telemetry_exported_total", signal="traces") == 0
    t0 = time.monotonic()
    assert edge.stop(timeout_s=15) == 0
    assert time.monotonic() - t0 < 12, "shutdown must be bounded even with a hanging collector"
