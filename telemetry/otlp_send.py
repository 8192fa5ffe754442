"""Send pre-encoded OTLP requests: HTTP/protobuf (POST, keep-alive session) or gRPC (a generic unary call on
the standard service method, so the bytes from `telemetry.otlp_encode` go out unchanged).

Used by the exporter process with the endpoint, headers and timeout resolved from the config and the OTEL_*
variables. A failed send is reported as `False`; the caller counts the items as dropped (`export_failed`).
"""

from __future__ import annotations

import http.client
import logging
import ssl
import urllib.parse
import urllib.request
from typing import Any, Callable

from gatewatch.telemetry.config import ResolvedTelemetry

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
    """POSTs to one OTLP/HTTP endpoint over a keep-alive `http.client` connection (reconnected on the next
    export after any failure). `requests` re-derives proxies, CA settings and pool keys for every POST (on
    disk: ~/.netrc, the CA path): that was a fifth of the exporter's CPU. It is still used when a proxy
    variable applies to the endpoint, the one thing http.client would not do for us."""

    def __init__(self, endpoint: str, cfg: ResolvedTelemetry):
        url = urllib.parse.urlsplit(endpoint)
        self._endpoint = endpoint
        self._timeout = cfg.timeout_s
        self._headers = {"Content-Type": "application/x-protobuf", **cfg.headers}
        self._https = url.scheme == "https"
        self._host = url.hostname or "localhost"
        self._port = url.port or (443 if self._https else 80)
        self._path = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self._conn: http.client.HTTPConnection | None = None
        self._session = None
        proxies = urllib.request.getproxies()
        if proxies.get(url.scheme) and not urllib.request.proxy_bypass(self._host):
            import requests

            self._session = requests.Session()
            self._session.headers.update(self._headers)

    def _connect(self) -> http.client.HTTPConnection:
        if self._https:
            return http.client.HTTPSConnection(self._host, self._port, timeout=self._timeout,
                                               context=ssl.create_default_context())
        return http.client.HTTPConnection(self._host, self._port, timeout=self._timeout)

    def export(self, batch: EncodedBatch) -> bool:
        try:
            if self._session is not None:
                status = self._session.post(self._endpoint, data=batch.payload, timeout=self._timeout).status_code
            else:
                if self._conn is None:
                    self._conn = self._connect()
                self._conn.request("POST", self._path, body=batch.payload, headers=self._headers)
                resp = self._conn.getresponse()
                resp.read()  # the whole answer, so the connection can carry the next export
                status = resp.status
                if resp.will_close:
                    self._close()
        except Exception as err:  # noqa: BLE001 - any transport failure is a failed export, counted by the caller
            self._close()
            log.warning("OTLP/HTTP export to %s failed: %s", self._endpoint, err)
            return False
        if 200 <= status < 300:
            return True
        log.warning("OTLP/HTTP export to %s answered %s", self._endpoint, status)
        return False

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def shutdown(self) -> None:
        self._close()
        if self._session is not None:
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
