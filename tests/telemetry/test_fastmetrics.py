"""The request-path metrics render exactly what prometheus_client would render for the same families."""

from __future__ import annotations

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from gatewatch.telemetry.fastmetrics import FastCounter, FastHistogram
from gatewatch.telemetry.metrics import Metrics


def populated() -> tuple[FastHistogram, FastCounter]:
    h = FastHistogram("demo_duration_seconds", 'Time "spent"\\ per request\nsecond line.',
                      ["zeta", "alpha", "method"], [0.005, 0.1, 1.0])
    c = FastCounter("demo_events", "Events.", ["kind", "a_label"])
    for i, v in enumerate([0.001, 0.05, 0.5, 3.0, 0.1]):
        h.observe((f"z{i % 2}", 'quote " and \\ back\nslash', "GET"), v, f"{i:032x}" if i % 2 else None)
    h.observe(("", "", "POST"), 0.2)
    c.inc(("x", "1"))
    c.inc(("x", "1"), 2.5)
    c.inc(('y"', "2"))
    return h, c


def reference(collectors, openmetrics: bool) -> bytes:
    reg = CollectorRegistry(auto_describe=True)
    for col in collectors:
        reg.register(col)
    return (generate_openmetrics if openmetrics else generate_latest)(reg)


def test_render_is_byte_for_byte_what_prometheus_client_writes():
    h, c = populated()
    for openmetrics in (False, True):
        out: list[str] = []
        h.render(out, openmetrics)
        c.render(out, openmetrics)
        expected = reference([h, c], openmetrics)
        if openmetrics:
            expected = expected[:-len(b"# EOF\n")]
        assert "".join(out).encode() == expected


def test_exposition_keeps_every_family_and_parses_as_openmetrics():
    m = Metrics("test")
    m.server_duration.observe(("edge", "r", "GET", "200", "proxied", "/r/*", "http", ""), 0.01, "ab" * 16)
    m.instance_requests.inc(("pool", "i1", "proxied"))
    m.telemetry_dropped.labels("traces", "queue_full").inc(3)
    body, ctype = m.exposition("application/openmetrics-text; version=1.0.0")
    assert ctype.startswith("application/openmetrics-text") and body.endswith(b"# EOF\n")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert {"http_server_request_duration_seconds", "gatewatch_instance_requests",
            "gatewatch_telemetry_dropped"} <= set(families)
    bucket = next(s for s in families["http_server_request_duration_seconds"].samples
                  if s.name.endswith("_bucket") and s.exemplar is not None)
    assert bucket.exemplar.labels == {"trace_id": "ab" * 16}
    assert families["http_server_request_duration_seconds"].unit == "seconds"  # OpenMetrics # UNIT
    assert b"# UNIT http_server_request_duration_seconds seconds\n" in body
    text, _ = m.exposition(None)
    assert b'http_server_request_duration_seconds_count{' in text and b"# EOF" not in text
