"""An in-process OTLP receiver that decodes the real protobuf, over gRPC (4317-style) and HTTP (4318-style).

Built on the official `opentelemetry-proto` messages: what tests assert is what went over the wire. Runs its
own threads, so sync and async tests can both use it. Spans and log records are flattened to plain dicts with
hex ids for easy assertions.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any, Callable

import grpc
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue

SPAN_KINDS = {0: "UNSPECIFIED", 1: "INTERNAL", 2: "SERVER", 3: "CLIENT", 4: "PRODUCER", 5: "CONSUMER"}


def any_value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [any_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind)


def attrs(kvs) -> dict[str, Any]:
    return {kv.key: any_value(kv.value) for kv in kvs}


@dataclass
class Received:
    spans: list[dict] = field(default_factory=list)
    logs: list[dict] = field(default_factory=list)
    requests: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add_traces(self, req: trace_service_pb2.ExportTraceServiceRequest) -> None:
        out = []
        for rs in req.resource_spans:
            res = attrs(rs.resource.attributes)
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.append({
                        "trace_id": s.trace_id.hex(), "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(), "name": s.name, "kind": SPAN_KINDS[s.kind],
                        "attributes": attrs(s.attributes), "resource": res, "status": s.status.code,
                        "start": s.start_time_unix_nano, "end": s.end_time_unix_nano,
                        "links": [{"trace_id": ln.trace_id.hex(), "span_id": ln.span_id.hex()} for ln in s.links],
                        "scope": ss.scope.name,
                    })
        with self.lock:
            self.spans.extend(out)
            self.requests += 1

    def add_logs(self, req: logs_service_pb2.ExportLogsServiceRequest) -> None:
        out = []
        for rl in req.resource_logs:
            res = attrs(rl.resource.attributes)
            for sl in rl.scope_logs:
                for r in sl.log_records:
                    out.append({
                        "event_name": r.event_name, "trace_id": r.trace_id.hex(), "span_id": r.span_id.hex(),
                        "attributes": attrs(r.attributes), "body": any_value(r.body), "resource": res,
                        "severity": r.severity_text, "time": r.time_unix_nano,
                    })
        with self.lock:
            self.logs.extend(out)
            self.requests += 1

    def snapshot(self) -> tuple[list[dict], list[dict]]:
        with self.lock:
            return list(self.spans), list(self.logs)

    def wait_for(self, predicate: Callable[[list[dict], list[dict]], bool], timeout_s: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            spans, logs = self.snapshot()
            if predicate(spans, logs):
                return True
            time.sleep(0.05)
        spans, logs = self.snapshot()
        return predicate(spans, logs)

    def trace(self, trace_id: str) -> list[dict]:
        return [s for s in self.snapshot()[0] if s["trace_id"] == trace_id]


class _TraceServicer(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, rx: Received):
        self.rx = rx

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        self.rx.add_traces(request)
        return trace_service_pb2.ExportTraceServiceResponse()


class _LogsServicer(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, rx: Received):
        self.rx = rx

    def Export(self, request, context):  # noqa: N802
        self.rx.add_logs(request)
        return logs_service_pb2.ExportLogsServiceResponse()


class OtlpReceiver:
    """`with OtlpReceiver() as rx:` → rx.grpc_endpoint ("http://127.0.0.1:PORT"), rx.http_endpoint, rx.data."""

    def __init__(self) -> None:
        self.data = Received()
        self._grpc: grpc.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.grpc_port = 0
        self.http_port = 0

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def env(self, protocol: str) -> dict[str, str]:
        endpoint = self.grpc_endpoint if protocol == "grpc" else self.http_endpoint
        return {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint, "OTEL_EXPORTER_OTLP_PROTOCOL": protocol}

    def start(self) -> "OtlpReceiver":
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_TraceServicer(self.data), self._grpc)
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_LogsServicer(self.data), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_http, args=(ready,), daemon=True)
        self._thread.start()
        if not ready.wait(10):
            raise RuntimeError("OTLP HTTP receiver did not start")
        return self

    def _run_http(self, ready: threading.Event) -> None:
        self._loop = asyncio.new_event_loop()
        rx = self.data

        async def handle(request: web.Request) -> web.Response:
            if request.content_type != "application/x-protobuf":
                return web.Response(status=415, text="expected application/x-protobuf")
            if request.path == "/v1/traces":
                msg, out, add = (trace_service_pb2.ExportTraceServiceRequest(),
                                 trace_service_pb2.ExportTraceServiceResponse(), rx.add_traces)
            elif request.path == "/v1/logs":
                msg, out, add = (logs_service_pb2.ExportLogsServiceRequest(),
                                 logs_service_pb2.ExportLogsServiceResponse(), rx.add_logs)
            else:
                return web.Response(status=404)
            try:
                msg.ParseFromString(await request.read())  # aiohttp has undone a `Content-Encoding: gzip` already
            except (RequestPayloadError, DecodeError) as err:
                # OTLP/HTTP: a request that cannot be decoded is answered 400 and not retried, as a collector does
                # (opentelemetry-proto docs/specification.md "Failures"); it never counts as received.
                return web.Response(status=400, text=f"undecodable OTLP request: {err}")
            add(msg)
            return web.Response(body=out.SerializeToString(), content_type="application/x-protobuf")

        async def main() -> None:
            app = web.Application(client_max_size=64 << 20)
            app.router.add_post("/v1/{signal}", handle)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, "127.0.0.1", 0)
            await site.start()
            self.http_port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001
            ready.set()

        self._loop.run_until_complete(main())
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def stop(self) -> None:
        if self._grpc:
            self._grpc.stop(grace=0.5)
        if self._loop:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread:
            self._thread.join(5)

    def __enter__(self) -> "OtlpReceiver":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
