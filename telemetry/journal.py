"""The recent decisions and state changes of this process, for the admin page (`GET /events`).

A bounded ring (`collections.deque(maxlen=size)`, default 200). The recorder appends, in O(1):
- a request (a reference to the `RequestRecord` it already holds; nothing is copied) when one of its decisions
  did not let it through as planned (deny, shadow deny, no route, no candidates, retry, failover, ...);
- every state-change event (health transition, ejection, failover, circuit, config reload, store/provider),
  whether or not telemetry is exported.
Turning them into JSON-ready dicts happens only when the admin asks (`entries`), off the request path. The
oldest entries fall out when the ring is full; `total` counts every entry ever appended, so a reader can tell
which ones are new (`seq`).
"""

from __future__ import annotations

import collections
from datetime import UTC, datetime
from typing import Any

from gatewatch.telemetry.context import EventRecord, RequestRecord
from gatewatch.telemetry.names import ALLOW_RESULTS

DEFAULT_SIZE = 200


class Journal:
    def __init__(self, size: int = DEFAULT_SIZE):
        self._ring: collections.deque[RequestRecord | EventRecord] = collections.deque(maxlen=size)
        self.size = size
        self.total = 0

    def add(self, record: RequestRecord | EventRecord) -> None:
        """O(1): one append (the oldest entry drops out) and one increment."""
        self._ring.append(record)
        self.total += 1

    def entries(self, trace_url_template: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """The entries with `seq` > `after`, newest first. `trace_url` is set for sampled traces (the only ones
        a trace store holds) when a template with `{trace_id}` is configured."""
        first = self.total - len(self._ring) + 1
        out = []
        for i, rec in enumerate(self._ring):
            seq = first + i
            if seq <= after:
                continue
            entry = _event(rec) if isinstance(rec, EventRecord) else _request(rec)
            entry["seq"] = seq
            tid = entry.get("trace_id")
            if tid and trace_url_template and entry.pop("_linkable", True):
                entry["trace_url"] = trace_url_template.replace("{trace_id}", tid)
            entry.pop("_linkable", None)
            out.append(entry)
        out.reverse()
        return out


def _time(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, UTC).isoformat(timespec="milliseconds")


def _request(r: RequestRecord) -> dict[str, Any]:
    return {
        "kind": "request", "time": _time(r.start_ns), "layer": r.layer, "method": r.method, "path": r.path,
        "route": r.route, "upstream": r.upstream, "status": r.status, "outcome": r.outcome,
        "request_id": r.request_id, "consumer": r.consumer,
        "instances": [a.instance for a in r.attempts],
        "decisions": [{"kind": str(d.kind), "rule": d.rule, "result": str(d.result), "reason": str(d.reason)}
                      for d in r.decisions if d.result not in ALLOW_RESULTS],
        "trace_id": f"{r.trace.trace_id:032x}", "sampled": r.trace.sampled, "_linkable": r.trace.sampled,
    }


def _plain(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def _event(e: EventRecord) -> dict[str, Any]:
    return {
        "kind": "event", "event": e.event, "time": _time(e.time_ns), "severity": e.severity, "body": e.body,
        "attributes": {k: _plain(v) for k, v in e.attributes.items() if v is not None},
        "trace_id": f"{e.trace_id:032x}" if e.trace_id else None,
    }
