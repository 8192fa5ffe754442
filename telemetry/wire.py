"""Finished request records as plain tuples, for the trip to the exporter process.

`encode_one(record)` (framed, done as each request finishes) + `frame(encoded)` per batch, and
`decode(bytes) -> list[RequestRecord | EventRecord]`, use `marshal` (C, and unlike pickle
no code execution on load). A record travels as the tuple of its fields in its dataclass's order: the encoder
reads them one by one (C field reads when compiled), the decoder passes them positionally. A field added to a
record is added to its `_..._tuple` here too; tests/telemetry/test_wire.py fails until it is.
"""

from __future__ import annotations

import dataclasses
import marshal
import struct
from operator import attrgetter

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.telemetry.context import AttemptRecord, DecisionRecord, EventRecord, RequestRecord, TraceContext
from gatewatch.telemetry.names import DecisionKind

_REQ_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
# positions of the nested records in the request's field tuple (sent as tuples, rebuilt on decode)
_TRACE, _ATTEMPTS, _DECISIONS = (_REQ_FIELDS.index(name) for name in ("trace", "attempts", "decisions"))
_event = attrgetter(*(f.name for f in dataclasses.fields(EventRecord)))
_KIND = {k.value: k for k in DecisionKind}
HEADER = struct.Struct("!I")


def span_count(r: RequestRecord) -> int:
    """The spans a finished request becomes (telemetry.convert), counted against the export queue's bound."""
    if r.mirror:  # a shadow request: its CLIENT span only
        return len(r.attempts)
    if r.websocket is not None:  # a WebSocket session: its session span only
        return 1
    return 1 + len(r.attempts) + (1 if r.balance_span_id else 0)


def _to_tuple(r: RequestRecord | EventRecord) -> tuple:
    if isinstance(r, EventRecord):
        return ("E", _event(r))
    return _request_tuple(r)


# A record's fields in its dataclass's order, read one by one: compiled, each is a C field read (wire.pxd), where
# an attrgetter looks every name up (~30k instructions a request). tests/telemetry/test_wire.py holds these to the
# dataclasses' field order.
@cython.locals(r=RequestRecord)
def _request_tuple(r: RequestRecord) -> tuple:
    return (
        r.layer, _trace_tuple(r.trace), r.start_ns, r.start_mono, r.method, r.path, r.query, r.scheme, r.host,
        r.server_port, r.client_address, r.client_port, r.protocol_version, r.user_agent, r.request_id, r.listener,
        r.route, r.route_template, r.upstream, r.outcome, r.status, r.error_type, r.end_ns, r.duration_s,
        r.balance_span_id, r.balance_start_ns, r.balance_end_ns, r.lb, r.consumer, r.policies,
        [_attempt_tuple(a) for a in r.attempts], [_decision_tuple(d) for d in r.decisions], r.config_version,
        r.failover, r.event_ids, r.policy_durations, r.store_rtt_s, r.tls, r.headers_dropped, r.cache, r.span_attrs,
        r.mirror, r.tcp, r.websocket)


@cython.locals(t=TraceContext)
def _trace_tuple(t: TraceContext) -> tuple:
    return (t.trace_id, t.span_id, t.parent_span_id, t.sampled, t.treatment, t.tracestate, t.baggage, t.link, t.cut)


@cython.locals(a=AttemptRecord)
def _attempt_tuple(a: AttemptRecord) -> tuple:
    return (
        a.span_id, a.layer, a.upstream, a.instance, a.zone, a.host, a.port, a.url_full, a.method, a.resend_count,
        a.start_ns, a.end_ns, a.status, a.error_type, a.peer_address, a.peer_port, a.duration_s, a.outcome, a.lb,
        a.backoff_s, a.pool_wait_s, a.connect_s, a.tls_s, a.request_sent_s, a.ttfb_s, a.tls_failure,
        a.tls_protocol_version, a.tls_cipher)


@cython.locals(d=DecisionRecord)
def _decision_tuple(d: DecisionRecord) -> tuple:
    return (d.kind.value, d.rule, d.result, d.reason, d.time_ns, d.span_id, d.attributes, d.layer)


def encode_one(r: RequestRecord | EventRecord) -> bytes:
    """One record, framed. Called as the request finishes, while the record is still in the CPU cache: ~3 µs,
    against ~10 µs per record when a batch of cold records is encoded later."""
    body = marshal.dumps(_to_tuple(r))
    return HEADER.pack(len(body)) + body


def frame(encoded: list[bytes]) -> bytes:
    """A batch of `encode_one` results as one message on the pipe."""
    payload = b"".join(encoded)
    return HEADER.pack(len(payload)) + payload


def decode(payload: bytes) -> list[RequestRecord | EventRecord]:
    out = []
    view = memoryview(payload)
    pos, end, size = 0, len(payload), HEADER.size
    while pos < end:
        (n,) = HEADER.unpack_from(view, pos)
        item = marshal.loads(view[pos + size:pos + size + n])
        pos += size + n
        if item[0] == "E":
            out.append(EventRecord(*item[1]))
            continue
        fields = list(item)  # positional, in field order: no keyword matching per record
        fields[_TRACE] = TraceContext(*item[_TRACE])
        fields[_ATTEMPTS] = [AttemptRecord(*a) for a in item[_ATTEMPTS]]
        fields[_DECISIONS] = [DecisionRecord(_KIND[d[0]], *d[1:]) for d in item[_DECISIONS]]
        r = RequestRecord(*fields)
        out.append(r)
    return out
