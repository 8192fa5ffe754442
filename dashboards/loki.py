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


def state_event_logs(*attrs: str) -> str:
    """Records outside requests (health transitions, ejections, circuit transitions, reloads), recognised by an
    attribute only they carry."""
    return f"{STREAM} | " + " or ".join(f'{field(a)}!=""' for a in attrs)
