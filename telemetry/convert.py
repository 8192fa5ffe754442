"""Turn finished `RequestRecord`s into OTel SDK spans and log records. Runs on the export threads only.

Span tree of one request in one layer (DESIGN §4):
    SERVER  "{method} {http.route}"            gatewatch.layer = this layer
      [INTERNAL "balance {pool}"]              in-process balancer layer (gatewatch.layer = balancer)
        CLIENT "{method}" per upstream attempt  server.address/port = the instance, gatewatch.instance
"""

from __future__ import annotations

from typing import Any

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from telemetry.context import AttemptRecord, DecisionRecord, RequestRecord
from telemetry.names import DECISION_EVENTS, Attr, Layer, SCOPE_NAME

SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _ctx(trace_id: int, span_id: int, remote: bool = False) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=SAMPLED)


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None and v != ""}


class Converter:
    def __init__(self, resource: Resource, version: str):
        self.resource = resource
        self.scope = InstrumentationScope(SCOPE_NAME, version)

    def spans(self, records: list[RequestRecord]) -> list[ReadableSpan]:
        out: list[ReadableSpan] = []
        for r in records:
            out.extend(self.request_spans(r))
        return out

    def request_spans(self, r: RequestRecord) -> list[ReadableSpan]:
        t = r.trace
        parent = _ctx(t.trace_id, t.parent_span_id, remote=True) if t.parent_span_id else None
        links = [Link(_ctx(t.link[0], t.link[1], remote=True), {"gatewatch.link": "untrusted_inbound"})] if t.link else []
        name = f"{r.method} {r.route_template}" if r.route_template else r.method
        server_status = Status(StatusCode.ERROR) if (r.status or 0) >= 500 or r.error_type else Status(StatusCode.UNSET)
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
        })
        if r.lb and not r.balance_span_id:  # a balancer tier: its SERVER span carries the pick
            attrs.update(r.lb)
        spans = [ReadableSpan(
            name=name, context=_ctx(t.trace_id, t.span_id), parent=parent, resource=self.resource,
            attributes=attrs, links=links, kind=SpanKind.SERVER, status=server_status,
            start_time=r.start_ns, end_time=r.end_ns, instrumentation_scope=self.scope)]
        attempt_parent = t.span_id
        if r.balance_span_id:
            lb_attrs = _clean({Attr.LAYER: Layer.BALANCER.value, Attr.UPSTREAM: r.upstream, Attr.ROUTE: r.route,
                               **r.lb})
            failed = r.outcome not in (None, "proxied", "client_abort")
            spans.append(ReadableSpan(
                name=f"balance {r.upstream}", context=_ctx(t.trace_id, r.balance_span_id),
                parent=_ctx(t.trace_id, t.span_id), resource=self.resource, attributes=lb_attrs,
                kind=SpanKind.INTERNAL, status=Status(StatusCode.ERROR) if failed else Status(StatusCode.UNSET),
                start_time=r.balance_start_ns, end_time=r.balance_end_ns or r.end_ns,
                instrumentation_scope=self.scope))
            attempt_parent = r.balance_span_id
        for a in r.attempts:
            spans.append(self._attempt_span(t.trace_id, attempt_parent, a, r))
        return spans

    def _attempt_span(self, trace_id: int, parent: int, a: AttemptRecord, r: RequestRecord) -> ReadableSpan:
        attrs = _clean({
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
            **a.lb,
        })
        error = a.error_type is not None or (a.status or 0) >= 400
        return ReadableSpan(
            name=a.method, context=_ctx(trace_id, a.span_id), parent=_ctx(trace_id, parent),
            resource=self.resource, attributes=attrs, kind=SpanKind.CLIENT,
            status=Status(StatusCode.ERROR) if error else Status(StatusCode.UNSET),
            start_time=a.start_ns, end_time=a.end_ns or r.end_ns, instrumentation_scope=self.scope)

    def logs(self, batches: list[tuple[RequestRecord, list[DecisionRecord]]]) -> list[ReadableLogRecord]:
        out = []
        for r, decisions in batches:
            for d in decisions:
                out.append(self.decision_log(r, d))
        return out

    def decision_log(self, r: RequestRecord, d: DecisionRecord) -> ReadableLogRecord:
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
            **d.attributes,
        })
        body = f"{d.kind.value} {d.rule or '-'}: {d.result} ({d.reason})"
        record = LogRecord(
            timestamp=d.time_ns, observed_timestamp=d.time_ns, trace_id=r.trace.trace_id, span_id=d.span_id,
            trace_flags=TraceFlags(TraceFlags.SAMPLED if r.trace.sampled else TraceFlags.DEFAULT),
            severity_text="INFO", severity_number=SeverityNumber.INFO, body=body, attributes=attrs,
            event_name=DECISION_EVENTS[d.kind].value)
        return ReadableLogRecord(record, resource=self.resource, instrumentation_scope=self.scope)
