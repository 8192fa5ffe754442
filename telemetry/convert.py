"""Turn finished `RequestRecord`s into spans and decision-log records. Runs in the exporter (never on the
request path).

`span_models(r)` / `log_models(r)` are the one definition of what a request looks like in telemetry (names,
attributes, parents, status). Two renderings consume them: `Converter` (OTel SDK objects, for the standard
exporters and the JSON-lines files) and `telemetry.otlp_encode` (OTLP protobuf bytes written directly, several
times cheaper, for OTLP export).

Span tree of one request in one layer (DESIGN §4):
    SERVER  "{method} {http.route}"            gatewatch.layer = this layer
      [INTERNAL "balance {pool}"]              in-process balancer layer (gatewatch.layer = balancer)
        CLIENT "{method}" per upstream attempt  server.address/port = the instance, gatewatch.instance
"""

from __future__ import annotations

from typing import Any, NamedTuple

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from telemetry.context import EventRecord, RequestRecord
from telemetry.names import DECISION_EVENTS, Attr, Layer, SCOPE_NAME

INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP SpanKind numbers
LINK_ATTRS = {"gatewatch.link": "untrusted_inbound"}


class SpanModel(NamedTuple):
    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    kind: int
    start_ns: int
    end_ns: int
    attributes: dict[str, Any]
    error: bool
    link: tuple[int, int] | None


class LogModel(NamedTuple):
    time_ns: int
    trace_id: int
    span_id: int
    sampled: bool
    body: str
    attributes: dict[str, Any]
    event_name: str
    severity: str = "INFO"


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None and v != ""}


def span_models(r: RequestRecord) -> list[SpanModel]:
    t = r.trace
    attrs = _clean({
        Attr.HTTP_REQUEST_METHOD: r.method,
        Attr.URL_PATH: r.path,
        Attr.URL_QUERY: r.query or None,
        Attr.URL_SCHEME: r.scheme,
        Attr.SERVER_ADDRESS: r.host,
        Attr.SERVER_PORT: r.server_port,
        Attr.CLIENT_ADDRESS: r.client_address,
        Attr.NETWORK_PEER_ADDRESS: r.client_address,
        Attr.NETWORK_PEER_PORT: r.client_port,
        Attr.NETWORK_PROTOCOL_VERSION: r.protocol_version,
        Attr.USER_AGENT_ORIGINAL: r.user_agent,
        Attr.HTTP_ROUTE: r.route_template,
        Attr.HTTP_RESPONSE_STATUS_CODE: r.status,
        Attr.ERROR_TYPE: r.error_type,
        Attr.LAYER: r.layer,
        Attr.ROUTE: r.route,
        Attr.UPSTREAM: r.upstream,
        Attr.OUTCOME: r.outcome,
        Attr.REQUEST_ID: r.request_id,
        Attr.TRACE_CONTEXT: t.treatment,
        Attr.CONSUMER: r.consumer,
        # every verdict of the route's policies, in order: "name=verdict:reason"
        Attr.POLICY_SUMMARY: [f"{p[0]}={p[2]}:{p[3]}" for p in r.policies] or None,
    })
    if r.lb and not r.balance_span_id:  # a balancer tier: its SERVER span carries the pick
        attrs.update(r.lb)
    name = f"{r.method} {r.route_template}" if r.route_template else r.method
    out = [SpanModel(name, t.trace_id, t.span_id, t.parent_span_id, SERVER, r.start_ns, r.end_ns, attrs,
                     (r.status or 0) >= 500 or r.error_type is not None, t.link)]
    attempt_parent = t.span_id
    if r.balance_span_id:
        lb_attrs = _clean({Attr.LAYER: Layer.BALANCER.value, Attr.UPSTREAM: r.upstream, Attr.ROUTE: r.route,
                           **r.lb})
        failed = r.outcome not in (None, "proxied", "client_abort")
        out.append(SpanModel(f"balance {r.upstream}", t.trace_id, r.balance_span_id, t.span_id, INTERNAL,
                             r.balance_start_ns, r.balance_end_ns or r.end_ns, lb_attrs, failed, None))
        attempt_parent = r.balance_span_id
    for a in r.attempts:
        a_attrs = _clean({
            Attr.HTTP_REQUEST_METHOD: a.method,
            Attr.SERVER_ADDRESS: a.host,
            Attr.SERVER_PORT: a.port,
            Attr.URL_FULL: a.url_full,
            Attr.NETWORK_PEER_ADDRESS: a.peer_address,
            Attr.NETWORK_PEER_PORT: a.peer_port,
            Attr.HTTP_RESPONSE_STATUS_CODE: a.status,
            Attr.HTTP_REQUEST_RESEND_COUNT: a.resend_count or None,
            Attr.ERROR_TYPE: a.error_type or (str(a.status) if a.status and a.status >= 400 else None),
            Attr.LAYER: a.layer,
            Attr.ROUTE: r.route,
            Attr.UPSTREAM: a.upstream,
            Attr.INSTANCE: a.instance,
            Attr.ZONE: a.zone,
            Attr.OUTCOME: a.outcome,
            Attr.REQUEST_ID: r.request_id,
            **(a.lb or r.lb),  # each attempt's own pick (a retry's exclusions never leak onto the first attempt)
        })
        out.append(SpanModel(a.method, t.trace_id, a.span_id, attempt_parent, CLIENT, a.start_ns,
                             a.end_ns or r.end_ns, a_attrs, a.error_type is not None or (a.status or 0) >= 400,
                             None))
    return out


def log_models(r: RequestRecord | EventRecord) -> list[LogModel]:
    if isinstance(r, EventRecord):
        return [LogModel(r.time_ns, r.trace_id, r.span_id, bool(r.trace_id), r.body, _clean(r.attributes), r.event,
                         r.severity)]
    out = []
    for d in r.decisions:
        attrs = _clean({
            Attr.DECISION: d.kind.value,
            Attr.DECISION_RULE: d.rule,
            Attr.DECISION_RESULT: d.result,
            Attr.DECISION_REASON: d.reason,
            Attr.LAYER: d.layer or r.layer,
            Attr.REQUEST_ID: r.request_id,
            Attr.ROUTE: r.route,
            Attr.HTTP_REQUEST_METHOD: r.method,
            Attr.URL_PATH: r.path,
            Attr.CONSUMER: r.consumer,
            **d.attributes,
        })
        out.append(LogModel(d.time_ns, r.trace.trace_id, d.span_id, r.trace.sampled,
                            f"{d.kind.value} {d.rule or '-'}: {d.result} ({d.reason})", attrs,
                            DECISION_EVENTS[d.kind].value))
    return out


_SDK_KIND = {INTERNAL: SpanKind.INTERNAL, SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT}
SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _ctx(trace_id: int, span_id: int, remote: bool = False) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=SAMPLED)


class Converter:
    """SDK objects for the standard exporters and the JSON-lines files."""

    def __init__(self, resource: Resource, version: str):
        self.resource = resource
        self.scope = InstrumentationScope(SCOPE_NAME, version)

    def spans(self, records: list[RequestRecord]) -> list[ReadableSpan]:
        out: list[ReadableSpan] = []
        for r in records:
            out.extend(self.request_spans(r))
        return out

    def request_spans(self, r: RequestRecord) -> list[ReadableSpan]:
        out = []
        for m in span_models(r):
            remote_parent = m.kind == SERVER
            parent = _ctx(m.trace_id, m.parent_span_id, remote=remote_parent) if m.parent_span_id else None
            links = [Link(_ctx(m.link[0], m.link[1], remote=True), LINK_ATTRS)] if m.link else []
            out.append(ReadableSpan(
                name=m.name, context=_ctx(m.trace_id, m.span_id), parent=parent, resource=self.resource,
                attributes=m.attributes, links=links, kind=_SDK_KIND[m.kind],
                status=Status(StatusCode.ERROR) if m.error else Status(StatusCode.UNSET),
                start_time=m.start_ns, end_time=m.end_ns, instrumentation_scope=self.scope))
        return out

    def logs(self, batches: list[tuple[RequestRecord, list]]) -> list[ReadableLogRecord]:
        out = []
        for r, _ in batches:
            for m in log_models(r):
                record = LogRecord(
                    timestamp=m.time_ns, observed_timestamp=m.time_ns, trace_id=m.trace_id, span_id=m.span_id,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED if m.sampled else TraceFlags.DEFAULT),
                    severity_text=m.severity,
                    severity_number=SeverityNumber.WARN if m.severity == "WARN" else SeverityNumber.INFO, body=m.body,
                    attributes=m.attributes, event_name=m.event_name)
                out.append(ReadableLogRecord(record, resource=self.resource, instrumentation_scope=self.scope))
        return out
