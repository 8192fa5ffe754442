"""Send pre-encoded OTLP requests: HTTP/protobuf (POST, keep-alive session) or gRPC (a generic unary call on
the standard service method, so the bytes from `telemetry.otlp_encode` go out unchanged).

Used by the exporter process with the endpoint, headers and timeout resolved from the config and the OTEL_*
variables. A failed send is reported as `False`; the caller counts the items as dropped (`export_failed`).
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from telemetry.config import ResolvedTelemetry

log = logging.getLogger("gatewatch.telemetry")

GRPC_METHODS = {
    "traces": "/opentelemetry.proto.collector.trace.v1.TraceService/Export",
    "logs": "/opentelemetry.proto.collector.logs.v1.LogsService/Export",
}


class EncodedBatch:
    """An encoded export request and how many items (spans or log records) it carries."""

    __slots__ = ("payload", "count")

    def __init__(self, payload: bytes, count: int):
        self.payload = payload
        self.count = count

    def __len__(self) -> int:
        return self.count


class HttpSender:
    def __init__(self, endpoint: str, cfg: ResolvedTelemetry):
        import requests

        self._endpoint = endpoint
        self._timeout = cfg.timeout_s
        self._session = requests.Session()
        self._session.headers.update({"Content-Type": "application/x-protobuf", **cfg.headers})
        # requests re-reads the environment (proxy variables, CA bundle variables, ~/.netrc on disk) for every
        # POST; that was ~8 % of the exporter's CPU. Read it once here instead: same proxies and CA bundle, and
        # no netrc (OTLP credentials come from OTEL_EXPORTER_OTLP_HEADERS).
        settings = self._session.merge_environment_settings(endpoint, {}, None, None, None)
        self._session.trust_env = False
        self._session.proxies = settings.get("proxies") or {}
        self._session.verify = settings.get("verify", True)

    def export(self, batch: EncodedBatch) -> bool:
        try:
            resp = self._session.post(self._endpoint, data=batch.payload, timeout=self._timeout)
        except Exception as err:  # noqa: BLE001 - any transport failure is a failed export, counted by the caller
            log.warning("OTLP/HTTP export to %s failed: %s", self._endpoint, err)
            return False
        if 200 <= resp.status_code < 300:
            return True
        log.warning("OTLP/HTTP export to %s answered %s", self._endpoint, resp.status_code)
        return False

    def shutdown(self) -> None:
        self._session.close()


class GrpcSender:
    def __init__(self, endpoint: str, signal: str, cfg: ResolvedTelemetry):
        import grpc

        target = endpoint.split("://", 1)[-1].rstrip("/")
        if endpoint.startswith("https://"):
            self._channel = grpc.secure_channel(target, grpc.ssl_channel_credentials())
        else:
            self._channel = grpc.insecure_channel(target)
        self._call: Callable[..., Any] = self._channel.unary_unary(
            GRPC_METHODS[signal], request_serializer=None, response_deserializer=None)
        self._timeout = cfg.timeout_s
        self._metadata = tuple((k.lower(), v) for k, v in cfg.headers.items())
        self._endpoint = endpoint

    def export(self, batch: EncodedBatch) -> bool:
        try:
            self._call(batch.payload, timeout=self._timeout, metadata=self._metadata or None)
            return True
        except Exception as err:  # noqa: BLE001 - grpc.RpcError and channel errors: a failed export
            log.warning("OTLP/gRPC export to %s failed: %s", self._endpoint, getattr(err, "code", lambda: err)())
            return False

    def shutdown(self) -> None:
        self._channel.close()
