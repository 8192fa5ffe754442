"""The OTLP/HTTP sender against the tests' real receiver (official protobuf messages decode what arrives)."""

from __future__ import annotations

import socket
import threading
import http.server

from gatewatch.telemetry.config import ResolvedTelemetry
from gatewatch.telemetry.convert import EVENT_SHAPE, SERVER, Attrs, SpanModel
from gatewatch.telemetry.otlp_encode import Envelope, encode_span
from gatewatch.telemetry.otlp_send import EncodedBatch, HttpSender
from tests.support.otlp import OtlpReceiver


def resolved(endpoint: str) -> ResolvedTelemetry:
    return ResolvedTelemetry(service_name="t", resource_attributes={"service.name": "t"}, endpoint=endpoint,
                             protocol="http/protobuf", headers={"x-tenant": "a"}, timeout_s=2.0, sampling_ratio=1.0,
                             local_dir="/tmp", queue_size=100, batch_size=10, export_interval_s=1.0, warnings=[],
                             enabled=True, parent_based=True, traces_endpoint=f"{endpoint}/v1/traces",
                             logs_endpoint=f"{endpoint}/v1/logs", allow_decision_logs="sampled")


def batch(trace_id: int) -> EncodedBatch:
    span = SpanModel("GET /x", trace_id, 7, None, SERVER, 1, 2, Attrs(EVENT_SHAPE, (), (), (), {"gatewatch.route": "r"}), False,
                     None)
    return EncodedBatch(Envelope({"service.name": "t"}, "gatewatch", "0").traces([encode_span(span)]), 1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_exports_arrive_decoded_over_one_kept_alive_connection(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with OtlpReceiver() as rx:
        sender = HttpSender(f"{rx.http_endpoint}/v1/traces", resolved(rx.http_endpoint))
        assert sender.export(batch(1)) and sender.export(batch(2))
        first = sender._conn  # noqa: SLF001 -- the connection reuse under test
        assert sender.export(batch(3)) and sender._conn is first  # noqa: SLF001
        assert rx.data.wait_for(lambda spans, _: len(spans) == 3)
        spans, _ = rx.data.snapshot()
        assert sorted(s["trace_id"] for s in spans) == [f"{i:032x}" for i in (1, 2, 3)]
        sender.shutdown()


def test_failures_are_reported_and_the_next_export_reconnects(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    port = free_port()
    sender = HttpSender(f"http://127.0.0.1:{port}/v1/traces", resolved(f"http://127.0.0.1:{port}"))
    assert not sender.export(batch(1))  # nothing listening: a failed export, never an exception

    statuses = iter([500, 200])
    seen: list[tuple[str, str | None]] = []

    class Collector(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self):  # noqa: N802 - http.server's naming
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append((self.path, self.headers.get("x-tenant")))
            self.send_response(next(statuses))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Collector)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert not sender.export(batch(2))  # 500: reported as failed (the caller counts the drop)
        assert sender.export(batch(3))
        assert seen == [("/v1/traces", "a"), ("/v1/traces", "a")]  # path and OTEL headers as configured
    finally:
        server.shutdown()
        sender.shutdown()


def test_the_receiver_answers_an_undecodable_export_400_and_counts_nothing(monkeypatch):
    """As a collector does (OTLP/HTTP "Failures"): the tests' and the benchmark's receiver must never take bytes
    it cannot decode as received telemetry, nor answer them with a 5xx an exporter would retry."""
    import urllib.error
    import urllib.request

    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    with OtlpReceiver() as rx:
        for path, body, headers in (("/v1/traces", b"\xff\xff not protobuf", {}),
                                    ("/v1/logs", b"not gzip", {"Content-Encoding": "gzip"})):
            req = urllib.request.Request(rx.http_endpoint + path, data=body, method="POST",
                                         headers={"Content-Type": "application/x-protobuf", **headers})
            try:
                urllib.request.urlopen(req, timeout=5)
                status = 200
            except urllib.error.HTTPError as err:
                status = err.code
            assert status == 400, path
        assert rx.data.spans == [] and rx.data.logs == []
