"""The records' trip to the exporter process (telemetry.wire): every field, in its dataclass's order, both ways."""

from __future__ import annotations

import dataclasses

from gatewatch.telemetry import wire
from gatewatch.telemetry.context import AttemptRecord, DecisionRecord, EventRecord, RequestRecord, TraceContext
from gatewatch.telemetry.names import DecisionKind


def value_for(f: dataclasses.Field, i: int, cls) -> object:
    """A value of the field's declared kind (compiled, a float or bool field is a C double or int)."""
    kind = str(f.type)  # (as compiled, a field the .pxd makes a C double reads "double")
    if kind in ("bool", "bint"):
        return i % 2 == 0
    if "float" in kind or kind == "double":
        return i + 0.25
    if "int" in kind:
        return 1000 + i
    return f"{cls.__name__}.{f.name}"


def filled(cls, **given):
    """An instance whose every field holds a value of its own (marshal-able), so a field sent in another's
    place or not at all shows."""
    values = {f.name: value_for(f, i, cls) for i, f in enumerate(dataclasses.fields(cls))}
    values.update(given)
    return cls(**values)


def record() -> RequestRecord:
    trace = filled(TraceContext)
    attempts = [filled(AttemptRecord, lb={"k": 1}), filled(AttemptRecord, span_id=7)]
    decisions = [filled(DecisionRecord, kind=DecisionKind.PICK, attributes={"a": "b"}),
                 filled(DecisionRecord, kind=DecisionKind.ROUTE)]
    return filled(RequestRecord, trace=trace, attempts=attempts, decisions=decisions, policies=[("p", "t", "allow",
                  "r")], lb={"x": 2})


def as_fields(r: RequestRecord) -> tuple:
    """What the encoder must send, worked out from the dataclasses' own field lists."""
    def plain(obj):
        return tuple(getattr(obj, f.name) for f in dataclasses.fields(obj))
    fields = list(plain(r))
    names = [f.name for f in dataclasses.fields(RequestRecord)]
    fields[names.index("trace")] = plain(r.trace)
    fields[names.index("attempts")] = [plain(a) for a in r.attempts]
    fields[names.index("decisions")] = [(d.kind.value,) + plain(d)[1:] for d in r.decisions]
    return tuple(fields)


def test_each_record_is_sent_as_all_its_fields_in_their_declared_order():
    r = record()
    assert wire._to_tuple(r) == as_fields(r)


def test_a_record_comes_back_equal_to_what_was_sent():
    r = record()
    event = filled(EventRecord, trace_id=5, span_id=6)
    batch = wire.frame([wire.encode_one(r), wire.encode_one(event)])
    (back, back_event) = wire.decode(batch[wire.HEADER.size:])  # (the pipe's reader takes the batch's frame off)
    assert back == r and back_event == event
    assert back.decisions[0].kind is DecisionKind.PICK
