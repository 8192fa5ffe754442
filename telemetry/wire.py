"""Finished request records as plain tuples, for the trip to the exporter process.

`encode_one(record)` (framed, done as each request finishes) + `frame(encoded)` per batch, and
`decode(bytes) -> list[RequestRecord | EventRecord]`, use `marshal` (C, and unlike pickle
no code execution on load). The field order
comes from the dataclasses themselves, so adding a field to a record needs no change here.
"""

from __future__ import annotations

import dataclasses
import marshal
import struct
from operator import attrgetter

from gatewatch.telemetry.context import AttemptRecord, DecisionRecord, EventRecord, RequestRecord, TraceContext
from gatewatch.telemetry.names import DecisionKind

_REQ_FIELDS = tuple(f.name for f in dataclasses.fields(RequestRecord))
_req = attrgetter(*_REQ_FIELDS)
# positions of the nested records in the request's field tuple (sent as tuples, rebuilt on decode)
_TRACE, _ATTEMPTS, _DECISIONS = (_REQ_FIELDS.index(name) for name in ("trace", "attempts", "decisions"))
_trace = attrgetter(*(f.name for f in dataclasses.fields(TraceContext)))
_attempt = attrgetter(*(f.name for f in dataclasses.fields(AttemptRecord)))
_decision = attrgetter(*(f.name for f in dataclasses.fields(DecisionRecord)))
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
    fields = list(_req(r))
    fields[_TRACE] = _trace(r.trace)
    fields[_ATTEMPTS] = [_attempt(a) for a in r.attempts]
    fields[_DECISIONS] = [(d.kind.value,) + _decision(d)[1:] for d in r.decisions]
    return tuple(fields)


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
