"""Telemetry configuration: the config file's `telemetry:` section merged with the standard OTEL_* variables.

Precedence (most specific wins): OTEL_* environment variables, then the config file, then defaults. That is
what the OpenTelemetry SDKs do and what operators expect: a container can be pointed at another collector
without editing the file.

Primitives: `TelemetryConfig` (the file), `ResolvedTelemetry` (what the process actually uses) and `resolve()`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal, Mapping
from urllib.parse import unquote

from pydantic import Field

from gatewatch.schema import Strict
from gatewatch.telemetry.names import DEFAULT_KNOWN_METHODS

Protocol = Literal["grpc", "http/protobuf"]


class OtlpConfig(Strict):
    endpoint: str | None = None  # e.g. http://collector:4317 (grpc) or http://collector:4318 (http/protobuf)
    protocol: Protocol | None = None
    headers: dict[str, str] = Field(default_factory=dict)
    timeout_s: float = Field(default=5.0, gt=0, le=60)


class SamplingConfig(Strict):
    ratio: float = Field(default=1.0, ge=0.0, le=1.0)  # head sampling of new root traces; parents are respected


class TelemetryConfig(Strict):
    service_name: str | None = None
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    otlp: OtlpConfig = OtlpConfig()
    sampling: SamplingConfig = SamplingConfig()
    local_dir: str = "gatewatch-telemetry"  # JSON-lines traces and decision logs when there is no OTLP endpoint
    queue_size: int = Field(default=8192, ge=1, le=1_000_000)  # per signal; beyond it records are dropped, counted
    batch_size: int = Field(default=512, ge=1, le=10_000)
    export_interval_s: float = Field(default=1.0, gt=0, le=60)
    # Where spans and decision logs are built and exported: a child process on another core (default), or
    # threads of this process.
    exporter: Literal["process", "thread"] = "process"
    # Allow decisions (route matched, instance picked) of requests that head sampling left out: "sampled" logs
    # them only for sampled requests (they stay in gatewatch_decisions_total), "all" logs every one. Denials,
    # no-match, no-candidate and failover decisions are always logged.
    allow_decision_logs: Literal["sampled", "all"] = "sampled"
    # url.query on spans: the values of these query parameters are recorded as they are; every other value is
    # replaced by REDACTED, names kept (a token in a query string must not land in a trace store). "*": all.
    url_query_values: tuple[str, ...] = ()
    # The HTTP methods recorded as themselves; any other becomes _OTHER (semconv). Default: RFC 9110's, PATCH
    # and QUERY. OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS (comma-separated) overrides it, as the conventions say.
    known_methods: tuple[str, ...] | None = None


@dataclass(frozen=True)
class ResolvedTelemetry:
    service_name: str
    resource_attributes: dict[str, str]
    endpoint: str | None
    protocol: Protocol
    headers: dict[str, str]
    timeout_s: float
    sampling_ratio: float
    local_dir: str
    queue_size: int
    batch_size: int
    export_interval_s: float
    warnings: list[str] = field(default_factory=list)
    enabled: bool = True  # False with OTEL_SDK_DISABLED=true: no spans, no decision logs (metrics stay)
    parent_based: bool = True  # follow an inbound context's sampled flag (parentbased_* samplers, the default)
    traces_endpoint: str | None = None  # full URL (http/protobuf) or host URL (grpc); None → JSON lines
    logs_endpoint: str | None = None
    allow_decision_logs: str = "sampled"
    url_query_values: tuple[str, ...] = ()
    known_methods: tuple[str, ...] = ()


def _parse_kv_list(text: str) -> dict[str, str]:
    """Parse the W3C-baggage-like `k1=v1,k2=v2` format of OTEL_RESOURCE_ATTRIBUTES and OTEL_*_HEADERS."""
    out: dict[str, str] = {}
    for item in text.split(","):
        if "=" not in item:
            continue
        k, v = item.split("=", 1)
        if k.strip():
            out[k.strip()] = unquote(v.strip())
    return out


def _sampler_ratio(env: Mapping[str, str], default: float) -> tuple[float, list[str]]:
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if not sampler:
        return default, []
    if sampler in ("always_on", "parentbased_always_on"):
        return 1.0, []
    if sampler in ("always_off", "parentbased_always_off"):
        return 0.0, []
    if sampler in ("traceidratio", "parentbased_traceidratio"):
        try:
            ratio = float(arg) if arg else 1.0
        except ValueError:
            return default, [f"OTEL_TRACES_SAMPLER_ARG: not a number {arg!r}; using {default}"]
        if not 0.0 <= ratio <= 1.0:
            return default, [f"OTEL_TRACES_SAMPLER_ARG: {ratio} is outside [0, 1]; using {default}"]
        return ratio, []
    return default, [f"OTEL_TRACES_SAMPLER: unsupported sampler {sampler!r}; using ratio {default}"]


def resolve(cfg: TelemetryConfig, default_service: str, env: Mapping[str, str] | None = None) -> ResolvedTelemetry:
    env = os.environ if env is None else env
    warnings: list[str] = []
    attrs = dict(cfg.resource_attributes)
    env_attrs = _parse_kv_list(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    attrs.update(env_attrs)
    service = (env.get("OTEL_SERVICE_NAME") or env_attrs.get("service.name") or cfg.service_name
               or cfg.resource_attributes.get("service.name") or default_service)
    attrs["service.name"] = service

    endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or cfg.otlp.endpoint
    protocol_text = env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or cfg.otlp.protocol or "http/protobuf"
    if protocol_text not in ("grpc", "http/protobuf"):
        warnings.append(f"OTEL_EXPORTER_OTLP_PROTOCOL: unsupported {protocol_text!r}; using http/protobuf")
        protocol_text = "http/protobuf"
    headers = dict(cfg.otlp.headers)
    headers.update(_parse_kv_list(env.get("OTEL_EXPORTER_OTLP_HEADERS", "")))
    timeout_s = cfg.otlp.timeout_s
    if env.get("OTEL_EXPORTER_OTLP_TIMEOUT"):
        try:
            ms = float(env["OTEL_EXPORTER_OTLP_TIMEOUT"])  # the variable is in milliseconds
        except ValueError:
            ms = float("nan")
        if 0 < ms <= 60_000:
            timeout_s = ms / 1000.0
        else:
            warnings.append(f"OTEL_EXPORTER_OTLP_TIMEOUT: expected milliseconds in (0, 60000], got "
                            f"{env['OTEL_EXPORTER_OTLP_TIMEOUT']!r}; using {timeout_s}s")
    ratio, sampler_warnings = _sampler_ratio(env, cfg.sampling.ratio)
    warnings += sampler_warnings
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    parent_based = not sampler or sampler.startswith("parentbased_") or bool(sampler_warnings)
    enabled = env.get("OTEL_SDK_DISABLED", "").strip().lower() != "true"
    if not enabled:
        ratio = 0.0  # nothing is sampled, so no exemplars or traceresponse point at traces that do not exist
    signal_endpoints = {}
    for signal in ("traces", "logs"):
        specific = env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
        if specific:  # per the spec, a signal-specific endpoint is used as-is
            signal_endpoints[signal] = specific
        elif endpoint:
            base = endpoint.rstrip("/")
            signal_endpoints[signal] = f"{base}/v1/{signal}" if protocol_text == "http/protobuf" else endpoint
        else:
            signal_endpoints[signal] = None
    methods_env = env.get("OTEL_INSTRUMENTATION_HTTP_KNOWN_METHODS")
    known = tuple(m.strip() for m in methods_env.split(",") if m.strip()) if methods_env is not None \
        else cfg.known_methods if cfg.known_methods is not None else tuple(sorted(DEFAULT_KNOWN_METHODS))
    return ResolvedTelemetry(
        url_query_values=tuple(cfg.url_query_values),
        known_methods=known,
        service_name=service,
        resource_attributes=attrs,
        endpoint=endpoint or None,
        protocol=protocol_text,  # type: ignore[arg-type]
        headers=headers,
        timeout_s=timeout_s,
        sampling_ratio=ratio,
        local_dir=cfg.local_dir,
        queue_size=cfg.queue_size,
        batch_size=cfg.batch_size,
        export_interval_s=cfg.export_interval_s,
        warnings=warnings,
        enabled=enabled,
        parent_based=parent_based,
        allow_decision_logs=cfg.allow_decision_logs,
        traces_endpoint=signal_endpoints["traces"],
        logs_endpoint=signal_endpoints["logs"],
    )
