"""LogQL for the decision logs, as Loki stores Gatewatch's OTLP log records.

Loki's native OTLP ingestion turns the resource's `service.name` into the stream label `service_name` and every
record attribute into structured metadata with dots replaced by underscores (`gatewatch.decision` →
`gatewatch_decision`); the record's trace id becomes `trace_id`, which the Loki datasource links to Tempo.
Attribute names come from `telemetry.names.Attr`.
"""

from __future__ import annotations

from gatewatch.telemetry.names import Attr

STREAM = '{service_name=~"gatewatch.*"}'


def field(attr: str) -> str:
    return attr.replace(".", "_")


def decision_logs(*kinds: str, extra: str = "") -> str:
    """Decision records of the given kinds (`gatewatch.decision` = route|policy|pick|retry|failover)."""
    alternatives = "|".join(str(k) for k in kinds)
    return f'{STREAM} | {field(Attr.DECISION)}=~"{alternatives}"{extra}'


def state_event_logs(*attrs: str, extra: str = "") -> str:
    """Records outside requests (failover episodes, health transitions, ejections, circuit and rate-limit store
    transitions, reloads), recognised by an attribute only they carry."""
    return f"{STREAM} | " + " or ".join(f'{field(a)}!=""' for a in attrs) + extra


def event_lines() -> str:
    """A `line_format` stage that ends each event's line with its id (`gatewatch.event.id`) and the trace ids of
    the requests that caused it (`gatewatch.event.trace_ids`, a JSON array once in Loki), when it has them: what
    links the event to requests is visible in the row, not only in its details."""
    eid, causes = field(Attr.EVENT_ID), field(Attr.EVENT_TRACE_IDS)
    return (f' | line_format "{{{{ __line__ }}}}{{{{ with .{eid} }}}} · event {{{{ . }}}}{{{{ end }}}}'
            f'{{{{ with .{causes} }}}} · caused by {{{{ . }}}}{{{{ end }}}}"')
