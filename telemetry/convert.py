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
      [CLIENT "{method}" of a shadow request]  request mirroring: a record of its own, `shadow_models`
"""

from __future__ import annotations

from typing import Any, NamedTuple

from opentelemetry._logs import LogRecord, SeverityNumber
from opentelemetry.sdk._logs import ReadableLogRecord
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags

from gatewatch.telemetry.context import EventRecord, RequestRecord
from gatewatch.telemetry.names import DECISION_EVENTS, DEFAULT_KNOWN_METHODS, REDACTED, SCOPE_NAME, Attr, Layer

INTERNAL, SERVER, CLIENT = 1, 2, 3  # OTLP SpanKind numbers
DEFAULT_PORTS = {"http": 80, "https": 443}
LINK_ATTRS = {Attr.LINK: "untrusted_inbound"}


class Shape:
    """The attribute keys of one kind of span or log record, in groups by how often their values change:
    `shared` values repeat across requests (method, route, status, instance...), `connection` values repeat for
    the requests of one client connection (peer address and port, user agent), `unique` values are new on every
    request (ids, paths). `telemetry.otlp_encode` writes the first two groups once per distinct combination of
    values and reuses the bytes; the SDK rendering ignores the split. Compared by identity.

    The values of the shared and connection groups key those caches as they are, so they must be str, int
    (never bool or float: True == 1 == 1.0 in Python), None or tuples of str; the record fields they come from
    are typed so (a test checks every value). `extra` values may be anything: their types are in the key."""

    __slots__ = ("shared", "connection", "unique", "keys")

    def __init__(self, shared: tuple[str, ...], connection: tuple[str, ...] = (), unique: tuple[str, ...] = ()):
        self.shared, self.connection, self.unique = shared, connection, unique
        self.keys = frozenset(shared + connection + unique)


class Attrs(NamedTuple):
    """One span's or log record's attributes: `shape`'s keys with their values, then `extra` (keys that vary:
    the pick's `gatewatch.lb.*`, a decision's own attributes), which win over a shape key of the same name.
    None and "" mean absent."""
    shape: Shape
    shared: tuple
    connection: tuple
    unique: tuple
    extra: dict[str, Any]


def attributes(a: Attrs) -> dict[str, Any]:
    """The attributes as one dict, in the order they are written: shared, connection, unique, extra."""
    shape = a.shape
    return _clean({**dict(zip(shape.shared, a.shared)), **dict(zip(shape.connection, a.connection)),
                   **dict(zip(shape.unique, a.unique)), **a.extra})


class SpanModel(NamedTuple):
    name: str
    trace_id: int
    span_id: int
    parent_span_id: int | None
    kind: int
    start_ns: int
    end_ns: int
    attributes: Attrs
    error: bool
    link: tuple[int, int] | None


class LogModel(NamedTuple):
    time_ns: int
    trace_id: int
    span_id: int
    sampled: bool
    body: str
    attributes: Attrs
    event_name: str
    severity: str = "INFO"


def _clean(attrs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attrs.items() if v is not None and v != ""}


SERVER_SHAPE = Shape(
    (Attr.HTTP_REQUEST_METHOD, Attr.HTTP_REQUEST_METHOD_ORIGINAL, Attr.URL_SCHEME, Attr.SERVER_ADDRESS,
     Attr.SERVER_PORT, Attr.NETWORK_PROTOCOL_VERSION, Attr.HTTP_ROUTE, Attr.HTTP_RESPONSE_STATUS_CODE,
     Attr.ERROR_TYPE, Attr.LAYER, Attr.ROUTE, Attr.UPSTREAM, Attr.OUTCOME, Attr.TRACE_CONTEXT, Attr.CONSUMER,
     Attr.POLICY_SUMMARY, Attr.CONFIG_VERSION),
    (Attr.CLIENT_ADDRESS, Attr.NETWORK_PEER_ADDRESS, Attr.NETWORK_PEER_PORT, Attr.USER_AGENT_ORIGINAL,
     Attr.TLS_PROTOCOL_VERSION, Attr.TLS_CIPHER, Attr.TLS_SERVER_NAME, Attr.TLS_NEXT_PROTOCOL, Attr.TLS_CLIENT_SUBJECT,
     Attr.TLS_CLIENT_HASH),
    (Attr.URL_PATH, Attr.URL_QUERY, Attr.REQUEST_ID, Attr.EVENT_IDS, Attr.POLICY_DURATIONS,
     Attr.RATELIMIT_STORE_RTT, Attr.REQUEST_HEADERS_DROPPED))
BALANCE_SHAPE = Shape((Attr.LAYER, Attr.UPSTREAM, Attr.ROUTE))
CLIENT_SHAPE = Shape(
    (Attr.HTTP_REQUEST_METHOD, Attr.HTTP_REQUEST_METHOD_ORIGINAL, Attr.SERVER_ADDRESS, Attr.SERVER_PORT,
     Attr.NETWORK_PEER_ADDRESS, Attr.HTTP_RESPONSE_STATUS_CODE, Attr.HTTP_REQUEST_RESEND_COUNT, Attr.ERROR_TYPE,
     Attr.LAYER, Attr.ROUTE, Attr.UPSTREAM, Attr.INSTANCE, Attr.ZONE, Attr.OUTCOME, Attr.NETWORK_PEER_PORT),
    (), (Attr.URL_FULL, Attr.REQUEST_ID, Attr.TIMING_BACKOFF, Attr.TIMING_POOL_WAIT, Attr.TIMING_CONNECT,
         Attr.TIMING_TLS, Attr.TIMING_REQUEST_SENT, Attr.TIMING_TTFB, Attr.TLS_FAILURE, Attr.TLS_PROTOCOL_VERSION,
         Attr.TLS_CIPHER))
DECISION_SHAPE = Shape(
    (Attr.DECISION, Attr.DECISION_RULE, Attr.DECISION_RESULT, Attr.DECISION_REASON, Attr.LAYER, Attr.ROUTE,
     Attr.HTTP_REQUEST_METHOD, Attr.CONSUMER, Attr.CONFIG_VERSION),
    (), (Attr.REQUEST_ID, Attr.URL_PATH))
EVENT_SHAPE = Shape(())
_BALANCER = Layer.BALANCER.value
_NO_TLS = (None,) * 6  # a plaintext listener's request: no tls.* attributes
_EVENT_NAME = {kind: event.value for kind, event in DECISION_EVENTS.items()}


class Conventions(NamedTuple):
    """What the semantic conventions leave to configuration: the methods recorded as themselves, and the
    query parameters whose values may be recorded (None: all of them)."""

    known_methods: frozenset[str] = DEFAULT_KNOWN_METHODS
    query_values: frozenset[str] | None = frozenset()

    @classmethod
    def of(cls, known_methods, query_values) -> "Conventions":
        keep = frozenset(query_values)
        return cls(frozenset(known_methods) or DEFAULT_KNOWN_METHODS, None if "*" in keep else keep)


DEFAULT_CONVENTIONS = Conventions()


def _method(method: str, known: frozenset[str]) -> tuple[str, str | None, str]:
    """(http.request.method, http.request.method_original, the span name's method): an unknown method is
    recorded as _OTHER, kept in method_original, and names the span "HTTP" (semconv HTTP spans, Name)."""
    if method in known:
        return method, None, method
    return "_OTHER", (method if method != "_OTHER" else None), "HTTP"


def server_address(host: str | None, scheme: str) -> tuple[str | None, int | None]:
    """server.address and server.port from a Host / :authority value (semconv: parsed from the header; a missing
    port is the scheme's default). `[v6]:port` and bare IPv6 literals are understood."""
    if not host:
        return None, None
    if host.startswith("["):
        end = host.find("]")
        address, rest = host[1:end] if end > 0 else host, host[end + 1:] if end > 0 else ""
        port_text = rest[1:] if rest.startswith(":") else ""
    elif host.count(":") == 1:
        address, _, port_text = host.partition(":")
    else:
        address, port_text = host, ""
    if port_text.isdigit() and len(port_text) <= 5:
        return address, int(port_text)
    return address, DEFAULT_PORTS.get(scheme)


def redact_query(query: str, keep: frozenset[str] | None) -> str:
    """url.query with every parameter's value replaced by REDACTED unless its name is kept (semconv: sensitive
    content in url.query SHOULD be scrubbed). Names, order and separators stay as sent."""
    if not query or keep is None:
        return query
    parts = []
    for part in query.split("&"):
        name, eq, value = part.partition("=")
        parts.append(part if not eq or not value or name in keep else f"{name}={REDACTED}")
    return "&".join(parts)


def _server_extra(r: RequestRecord) -> dict[str, Any]:
    lb = r.lb if r.lb and not r.balance_span_id else {}
    return {**lb, **r.span_attrs} if r.span_attrs else lb


def span_models(r: RequestRecord, conv: Conventions = DEFAULT_CONVENTIONS) -> list[SpanModel]:
    if r.mirror:
        return shadow_models(r, conv)
    if r.tcp is not None:
        return tcp_models(r)
    if r.websocket is not None:
        return websocket_models(r)
    t = r.trace
    # every verdict of the route's policies, in order: "name=verdict:reason"
    summary = tuple(f"{p[0]}={p[2]}:{p[3]}" for p in r.policies) if r.policies else None
    method, original, name_method = _method(r.method, conv.known_methods)
    address, port = server_address(r.host, r.scheme)
    status = r.status
    # SERVER span status (semconv HTTP spans, Status): an error for a 5xx, or when no status was sent; a 4xx
    # is the client's, not the server's.
    failed = status >= 500 if status is not None else r.error_type is not None
    error_type = r.error_type or (str(status) if status is not None and status >= 500 else None)
    attrs = Attrs(SERVER_SHAPE,
                  (method, original, r.scheme, address, port, r.protocol_version, r.route_template, status,
                   error_type, r.layer, r.route, r.upstream, r.outcome, t.treatment, r.consumer, summary,
                   r.config_version),
                  (r.client_address, r.client_address, r.client_port, r.user_agent, *(r.tls or _NO_TLS)),
                  (r.path, redact_query(r.query, conv.query_values), r.request_id,
                   tuple(r.event_ids) if r.event_ids else None,
                   tuple(r.policy_durations) if r.policy_durations else None, r.store_rtt_s,
                   r.headers_dropped),
                  # a balancer tier: its SERVER span carries the pick; a split or mirror its decision (issue 19)
                  _server_extra(r))
    name = f"{name_method} {r.route_template}" if r.route_template else name_method
    out = [SpanModel(name, t.trace_id, t.span_id, t.parent_span_id, SERVER, r.start_ns, r.end_ns, attrs,
                     failed, t.link)]
    attempt_parent = t.span_id
    if r.balance_span_id:
        failed = r.outcome not in (None, "proxied", "client_abort")
        out.append(SpanModel(f"balance {r.upstream}", t.trace_id, r.balance_span_id, t.span_id, INTERNAL,
                             r.balance_start_ns, r.balance_end_ns or r.end_ns,
                             Attrs(BALANCE_SHAPE, (_BALANCER, r.upstream, r.route), (), (), r.lb), failed, None))
        attempt_parent = r.balance_span_id
    for a in r.attempts:
        status = a.status
        error_type = a.error_type or (str(status) if status and status >= 400 else None)
        # an aggregate route's call has its own method; every other attempt sends the request's
        a_method, a_original, a_name = (method, original, name_method) if a.method == r.method else \
            _method(a.method, conv.known_methods)
        a_attrs = Attrs(CLIENT_SHAPE,
                        (a_method, a_original, a.host, a.port, a.peer_address, status, a.resend_count or None,
                         error_type, a.layer, r.route, a.upstream, a.instance, a.zone, a.outcome, a.peer_port),
                        (), (a.url_full, r.request_id, a.backoff_s, a.pool_wait_s, a.connect_s, a.tls_s,
                             a.request_sent_s, a.ttfb_s, a.tls_failure, a.tls_protocol_version, a.tls_cipher),
                        a.lb or r.lb)  # each attempt's own pick (a retry's exclusions never leak onto the first)
        out.append(SpanModel(a_name, t.trace_id, a.span_id, attempt_parent, CLIENT, a.start_ns,
                             a.end_ns or r.end_ns, a_attrs, a.error_type is not None or (status or 0) >= 400,
                             None))
    return out


def shadow_models(r: RequestRecord, conv: Conventions = DEFAULT_CONVENTIONS) -> list[SpanModel]:
    """A shadow request (request mirroring, issue 19): one CLIENT span per shadow attempt, a child of the primary's
    SERVER span (`r.trace.span_id`) in the primary's trace. A child rather than a span link: the shadow is caused
    by that request and nothing else, and a child keeps it in the request's trace tree (OTel lets a child end
    after its parent); `gatewatch.mirror = true` and the comparison with the primary are its own attributes."""
    t = r.trace
    method, original, name_method = _method(r.method, conv.known_methods)
    out = []
    for a in r.attempts:
        status = a.status
        error_type = a.error_type or (str(status) if status and status >= 400 else None)
        attrs = Attrs(CLIENT_SHAPE,
                      (method, original, a.host, a.port, a.peer_address, status, None, error_type, a.layer, r.route,
                       a.upstream, a.instance, a.zone, a.outcome, a.peer_port),
                      (), (a.url_full, r.request_id, None, a.pool_wait_s, a.connect_s, a.tls_s, a.request_sent_s,
                           a.ttfb_s, a.tls_failure, a.tls_protocol_version, a.tls_cipher), a.lb)
        out.append(SpanModel(name_method, t.trace_id, a.span_id, t.span_id, CLIENT, a.start_ns, a.end_ns or r.end_ns,
                             attrs, a.error_type is not None or (status or 0) >= 400, None))
    return out


# A TCP pass-through connection (gatewatch.io.tcp_proxy): a SERVER span for the client's connection, a CLIENT
# span per connect attempt (the last one lasts as long as the relay). No OTel convention names TCP proxy spans;
# the attributes are the general `network.*`, `server.*` and `client.*` ones.
TCP_SERVER_SHAPE = Shape(
    (Attr.NETWORK_TRANSPORT, Attr.NETWORK_TYPE, Attr.SERVER_ADDRESS, Attr.SERVER_PORT, Attr.LAYER, Attr.LISTENER,
     Attr.UPSTREAM, Attr.INSTANCE, Attr.OUTCOME, Attr.ERROR_TYPE, Attr.TCP_CLOSED_BY, Attr.TCP_PROXY_PROTOCOL,
     Attr.CONFIG_VERSION),
    (Attr.CLIENT_ADDRESS, Attr.CLIENT_PORT, Attr.NETWORK_PEER_ADDRESS, Attr.NETWORK_PEER_PORT),
    (Attr.REQUEST_ID, Attr.TCP_RECEIVED_BYTES, Attr.TCP_SENT_BYTES, Attr.EVENT_IDS))
TCP_CLIENT_SHAPE = Shape(
    (Attr.NETWORK_TRANSPORT, Attr.SERVER_ADDRESS, Attr.SERVER_PORT, Attr.NETWORK_PEER_ADDRESS,
     Attr.NETWORK_PEER_PORT, Attr.LAYER, Attr.LISTENER, Attr.UPSTREAM, Attr.INSTANCE, Attr.ZONE, Attr.OUTCOME,
     Attr.ERROR_TYPE), (), (Attr.REQUEST_ID, Attr.TIMING_CONNECT))
TCP = "tcp"


def tcp_models(r: RequestRecord) -> list[SpanModel]:
    t = r.trace
    received, sent, closed_by, network_type, proxy_protocol = r.tcp
    last = r.attempts[-1] if r.attempts else None
    attrs = Attrs(TCP_SERVER_SHAPE,
                  (TCP, network_type, r.host, r.server_port, r.layer, r.listener, r.upstream,
                   last.instance if last is not None and last.error_type is None else None, r.outcome, r.error_type,
                   closed_by, proxy_protocol, r.config_version),
                  (r.client_address, r.client_port, r.client_address, r.client_port),
                  (r.request_id, received, sent, tuple(r.event_ids) if r.event_ids else None), r.lb)
    out = [SpanModel(f"tcp {r.listener}", t.trace_id, t.span_id, None, SERVER, r.start_ns, r.end_ns, attrs,
                     r.error_type is not None, None)]
    for a in r.attempts:
        a_attrs = Attrs(TCP_CLIENT_SHAPE,
                        (TCP, a.host, a.port, a.peer_address, a.peer_port, a.layer, r.listener, a.upstream,
                         a.instance, a.zone, a.outcome, a.error_type), (), (r.request_id, a.connect_s), a.lb)
        out.append(SpanModel(f"tcp {a.upstream}", t.trace_id, a.span_id, t.span_id, CLIENT, a.start_ns,
                             a.end_ns or r.end_ns, a_attrs, a.error_type is not None, None))
    return out


# A WebSocket session (issue 17, gatewatch.io.websocket): an INTERNAL span from the 101 to the session's end, a
# child of the handshake's SERVER span (which ends at the 101, its status 101). Its own record, exported when the
# session ends.
WEBSOCKET_SHAPE = Shape(
    (Attr.LAYER, Attr.ROUTE, Attr.HTTP_ROUTE, Attr.UPSTREAM, Attr.INSTANCE, Attr.WEBSOCKET_END,
     Attr.WEBSOCKET_CLOSED_BY, Attr.WEBSOCKET_CLOSE_CODE),
    (), (Attr.REQUEST_ID, Attr.WEBSOCKET_CLIENT_BYTES, Attr.WEBSOCKET_UPSTREAM_BYTES, Attr.WEBSOCKET_CLIENT_MESSAGES,
         Attr.WEBSOCKET_UPSTREAM_MESSAGES))
_WS_FAILED = frozenset({"protocol_error", "message_too_big", "upstream_disconnect"})


def websocket_models(r: RequestRecord) -> list[SpanModel]:
    t = r.trace
    span_id, end, closed_by, code, c_bytes, u_bytes, c_msgs, u_msgs, instance = r.websocket
    attrs = Attrs(WEBSOCKET_SHAPE, (r.layer, r.route, r.route_template, r.upstream, instance, end, closed_by, code),
                  (), (r.request_id, c_bytes, u_bytes, c_msgs, u_msgs), {})
    name = f"websocket {r.route_template}" if r.route_template else "websocket"
    return [SpanModel(name, t.trace_id, span_id, t.span_id, INTERNAL, r.start_ns, r.end_ns, attrs,
                      end in _WS_FAILED, None)]


def log_models(r: RequestRecord | EventRecord, conv: Conventions = DEFAULT_CONVENTIONS) -> list[LogModel]:
    if isinstance(r, EventRecord):
        return [LogModel(r.time_ns, r.trace_id, r.span_id, bool(r.trace_id), r.body,
                         Attrs(EVENT_SHAPE, (), (), (), r.attributes), r.event, r.severity)]
    out = []
    unique = (r.request_id, r.path)
    method = _method(r.method, conv.known_methods)[0] if r.tcp is None else None  # a TCP connection has none
    for d in r.decisions:
        kind = d.kind.value
        attrs = Attrs(DECISION_SHAPE,
                      (kind, d.rule, d.result, d.reason, d.layer or r.layer, r.route, method, r.consumer,
                       r.config_version),
                      (), unique, d.attributes)
        out.append(LogModel(d.time_ns, r.trace.trace_id, d.span_id, r.trace.sampled,
                            f"{kind} {d.rule or '-'}: {d.result} ({d.reason})", attrs, _EVENT_NAME[d.kind]))
    return out


_SDK_KIND = {INTERNAL: SpanKind.INTERNAL, SERVER: SpanKind.SERVER, CLIENT: SpanKind.CLIENT}
SAMPLED = TraceFlags(TraceFlags.SAMPLED)


def _ctx(trace_id: int, span_id: int, remote: bool = False) -> SpanContext:
    return SpanContext(trace_id, span_id, is_remote=remote, trace_flags=SAMPLED)


class Converter:
    """SDK objects for the standard exporters and the JSON-lines files."""

    def __init__(self, resource: Resource, version: str, conv: Conventions = DEFAULT_CONVENTIONS):
        self.resource = resource
        self.scope = InstrumentationScope(SCOPE_NAME, version)
        self.conv = conv

    def spans(self, records: list[RequestRecord]) -> list[ReadableSpan]:
        out: list[ReadableSpan] = []
        for r in records:
            out.extend(self.request_spans(r))
        return out

    def request_spans(self, r: RequestRecord) -> list[ReadableSpan]:
        out = []
        for m in span_models(r, self.conv):
            remote_parent = m.kind == SERVER
            parent = _ctx(m.trace_id, m.parent_span_id, remote=remote_parent) if m.parent_span_id else None
            links = [Link(_ctx(m.link[0], m.link[1], remote=True), LINK_ATTRS)] if m.link else []
            out.append(ReadableSpan(
                name=m.name, context=_ctx(m.trace_id, m.span_id), parent=parent, resource=self.resource,
                attributes=attributes(m.attributes), links=links, kind=_SDK_KIND[m.kind],
                status=Status(StatusCode.ERROR) if m.error else Status(StatusCode.UNSET),
                start_time=m.start_ns, end_time=m.end_ns, instrumentation_scope=self.scope))
        return out

    def logs(self, batches: list[tuple[RequestRecord, list]]) -> list[ReadableLogRecord]:
        out = []
        for r, _ in batches:
            for m in log_models(r, self.conv):
                record = LogRecord(
                    timestamp=m.time_ns, observed_timestamp=m.time_ns, trace_id=m.trace_id, span_id=m.span_id,
                    trace_flags=TraceFlags(TraceFlags.SAMPLED if m.sampled else TraceFlags.DEFAULT),
                    severity_text=m.severity,
                    severity_number=SeverityNumber.WARN if m.severity == "WARN" else SeverityNumber.INFO, body=m.body,
                    attributes=attributes(m.attributes), event_name=m.event_name)
                out.append(ReadableLogRecord(record, resource=self.resource, instrumentation_scope=self.scope))
        return out
