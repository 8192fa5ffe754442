"""The demo backend: a small HTTP service that continues the trace, as a real user's service would.

It uses the stock OpenTelemetry SDK (what users run), with `service.name=demo-backend` and
`service.instance.id=<its id>`, so the last hop of every demo trace is the instance that answered.

Endpoints (any method):
  /anything...          JSON describing the request (instance, path, method, request id, forwarded headers)
  /bytes/{n}            streams n bytes (download test; n ≤ 8 GiB)
  POST/PUT any path     consumes the body and answers its length and sha256 (upload test)
A configurable base delay and jitter make one instance slower than the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
from pathlib import Path

from aiohttp import web
from opentelemetry.propagate import extract
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExportResult
from opentelemetry.trace import SpanKind, Status, StatusCode

from gatewatch.telemetry.config import TelemetryConfig, resolve
from gatewatch.telemetry.convert import server_address
from gatewatch.telemetry.export import JsonLinesExporter, NullExporter, jsonl_path

CHUNK = b"x" * 65536


class _FileSpanExporter:
    """SDK SpanExporter over our JSON-lines writer, for when no OTLP endpoint is set."""

    def __init__(self, inner):
        self._inner = inner

    def export(self, spans):
        self._inner.export(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self):
        self._inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _sdk_exporter(cfg, instance_id: str):
    """The stock OTLP span exporter for the endpoint (what a user's service runs), else JSON lines."""
    if not cfg.enabled:
        return _FileSpanExporter(NullExporter())  # OTEL_SDK_DISABLED=true
    endpoint = cfg.traces_endpoint
    if not endpoint:
        return _FileSpanExporter(JsonLinesExporter(jsonl_path(cfg, f"demo-backend-{instance_id}", "traces")))
    headers = cfg.headers or None
    if cfg.protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(endpoint=endpoint, insecure=not endpoint.startswith("https://"), headers=headers,
                                timeout=cfg.timeout_s)
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=endpoint, headers=headers, timeout=cfg.timeout_s)


def _tracer_provider(instance_id: str, zone: str | None) -> TracerProvider:
    attrs = {"service.instance.id": instance_id}
    if zone:
        attrs["cloud.availability_zone"] = zone
    cfg = resolve(TelemetryConfig(service_name="demo-backend", resource_attributes=attrs), "demo-backend",
                  {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"})
    exporter = _sdk_exporter(cfg, instance_id)
    provider = TracerProvider(resource=Resource(cfg.resource_attributes))
    provider.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=8192, schedule_delay_millis=500))
    return provider


def build_app(instance_id: str, zone: str | None, delay_ms: float, jitter_ms: float,
              provider: TracerProvider | None, request_log: str | None = None) -> web.Application:
    tracer = provider.get_tracer("gatewatch.demo_backend") if provider else None
    rng = random.Random()
    # One line per request ("METHOD X-Request-Id"), written before answering and flushed, so a test can count
    # what reached this instance even after it was killed.
    log_file = open(request_log, "a", buffering=1) if request_log else None

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.path == "/healthz":  # health probes: answered, never traced, never logged
            return web.json_response({"status": "ok", "instance": instance_id})
        if log_file is not None:
            log_file.write(f"{request.method} {request.headers.get('X-Request-Id', '-')}\n")
        ctx = extract(dict(request.headers))
        route = "/bytes/{n}" if request.path.startswith("/bytes/") else "/{path}"
        if tracer is None:
            return await respond(request)
        # The stable HTTP server span attributes (semconv): server.address/port parsed from Host.
        address, port = server_address(request.host, request.scheme)
        with tracer.start_as_current_span(f"{request.method} {route}", context=ctx, kind=SpanKind.SERVER, attributes={
                "http.request.method": request.method, "url.path": request.path, "url.scheme": request.scheme,
                "http.route": route, "server.address": address, "server.port": port,
                "network.protocol.version": f"{request.version.major}.{request.version.minor}",
                "gatewatch.instance": instance_id}) as span:
            resp = await respond(request)
            span.set_attribute("http.response.status_code", resp.status)
            if resp.status >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return resp

    async def respond(request: web.Request) -> web.StreamResponse:
        delay = delay_ms + (rng.uniform(0, jitter_ms) if jitter_ms else 0)
        if delay:
            await asyncio.sleep(delay / 1000)
        if request.method in ("POST", "PUT", "PATCH"):
            digest, size = hashlib.sha256(), 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
                digest.update(chunk)
            return web.json_response({"instance": instance_id, "received_bytes": size, "sha256": digest.hexdigest(),
                                      "request_id": request.headers.get("X-Request-Id")},
                                     headers={"X-Backend-Instance": instance_id})
        if request.path.startswith("/bytes/"):
            try:
                n = int(request.path.rsplit("/", 1)[1])
            except ValueError:
                return web.json_response({"error": "n must be an integer"}, status=400)
            n = max(0, min(n, 8 << 30))
            resp = web.StreamResponse(headers={"X-Backend-Instance": instance_id,
                                               "Content-Type": "application/octet-stream"})
            resp.content_length = n
            await resp.prepare(request)
            left = n
            while left > 0:
                part = CHUNK if left >= len(CHUNK) else CHUNK[:left]
                await resp.write(part)
                left -= len(part)
            await resp.write_eof()
            return resp
        forwarded = {k: request.headers[k] for k in ("Host", "X-Forwarded-For", "X-Forwarded-Proto",
                                                     "X-Forwarded-Host", "Via", "X-Request-Id", "traceparent")
                     if k in request.headers}
        return web.json_response({"instance": instance_id, "zone": zone, "method": request.method,
                                  "path": request.raw_path, "headers": forwarded},
                                 headers={"X-Backend-Instance": instance_id})

    app = web.Application(client_max_size=1 << 40)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


async def serve_backend(host: str, port: int, instance_id: str, zone: str | None, delay_ms: float,
                        jitter_ms: float, ready_file: str | None, stop: asyncio.Event,
                        request_log: str | None = None) -> None:
    provider = _tracer_provider(instance_id, zone)
    runner = web.AppRunner(build_app(instance_id, zone, delay_ms, jitter_ms, provider, request_log), access_log=None,
                           handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    await site.start()
    bound = site._server.sockets[0].getsockname()  # noqa: SLF001
    info = {"pid": os.getpid(), "id": instance_id, "address": f"{bound[0]}:{bound[1]}"}
    if ready_file:
        Path(ready_file + ".tmp").write_text(json.dumps(info))
        os.replace(ready_file + ".tmp", ready_file)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()
        provider.shutdown()
