"""`gatewatch journey TRACE_ID`: one request's path across tiers, as plain text an SRE pastes into an incident
(or `--json`, the same model for machines).

Three layers, one way:

1. Loading, one function per source; each returns a `Loaded` (spans, log records, notes about the source):
   - `load_dir(directory, trace_id)`: the JSON-lines files the exporter writes without an OTLP endpoint
     (`*.traces.jsonl`, `*.logs.jsonl`, rotated `*.jsonl.1`, per-worker `<service>-wN.*`): the OTel SDK's
     `to_json` form, ids as "0x…" hex, times as ISO 8601 strings.
   - `load_tempo(url, trace_id, timeout_s)`: Tempo's `GET /api/traces/{id}` (OTLP JSON under `batches` or
     `resourceSpans`, ids hex or base64, enums as numbers or names).
   - `load_loki(url, trace_id, timeout_s, window, event_ids)`: Loki's `query_range` over the decision logs the
     collector sends to Loki's OTLP endpoint (trace_id/span_id and attributes as structured metadata, dots in
     attribute names turned into underscores).
   A source that cannot answer raises `SourceError` naming the URL (and the HTTP status when there is one).
2. The model: `Span`, `Link`, `LogRecord` (ids as lowercase hex, attributes under their names.py keys) and
   `Journey` (`build_journey`): the span tree, each span's decisions, the linked state-change events, and
   `tier_timings(journey)`: where the time went at each tier and in each upstream attempt.
3. Rendering: `render_text(journey, color)` and `render_json(journey)`.

`run(args) -> exit code` is what `gatewatch journey` calls: 0 printed, 1 nothing matched or a source failed,
2 a malformed trace id.
"""

from __future__ import annotations

import base64
import binascii
import calendar
import http.client
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gatewatch.telemetry.config import TelemetryConfig
from gatewatch.telemetry.names import DECISION_EVENTS, Attr, DecisionKind, Event

# OTel's own keys (resource semantic conventions), not Gatewatch names: names.py does not define them.
SERVICE_NAME = "service.name"
# Loki's names for OTLP log-record fields it keeps as structured metadata, and its service label.
LOKI_TRACE_ID, LOKI_SPAN_ID, LOKI_SEVERITY = "trace_id", "span_id", "severity_text"
LOKI_EVENT_NAME, LOKI_SERVICE = "event_name", "service_name"
LOKI_LIMIT = 5000
LOKI_MARGIN_NS = 10 * 60 * 10**9  # decision logs and events around a trace Tempo placed in time
DEFAULT_DIR = TelemetryConfig.model_fields["local_dir"].default
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

SERVER, CLIENT, INTERNAL = "SERVER", "CLIENT", "INTERNAL"
_OTLP_KINDS = {0: "UNSPECIFIED", 1: INTERNAL, 2: SERVER, 3: CLIENT, 4: "PRODUCER", 5: "CONSUMER"}
_OTLP_STATUS = {0: "UNSET", 1: "OK", 2: "ERROR"}
_DECISION_EVENT_NAMES = frozenset(e.value for e in DECISION_EVENTS.values())
_DECISION_KINDS = frozenset(k.value for k in DecisionKind)
_LB_PREFIX = Attr.LB_ALGORITHM.rsplit(".", 1)[0] + "."  # every gatewatch.lb.* attribute is a key one

# What a span line shows, in this order (then any other gatewatch.lb.* attribute).
SPAN_KEYS = (Attr.LAYER, Attr.ROUTE, Attr.HTTP_ROUTE, Attr.HTTP_RESPONSE_STATUS_CODE, Attr.OUTCOME, Attr.ERROR_TYPE,
             Attr.UPSTREAM, Attr.INSTANCE, Attr.LB_ALGORITHM, Attr.LB_CANDIDATES, Attr.LB_EXCLUDED,
             Attr.HTTP_REQUEST_RESEND_COUNT, Attr.POLICY_SUMMARY, Attr.TRACE_CONTEXT, Attr.CONFIG_VERSION,
             Attr.EVENT_IDS)
# What a decision line shows after "decision <kind> <rule>: <result> (<reason>)".
DECISION_KEYS = (Attr.INSTANCE, Attr.LB_CANDIDATES, Attr.LB_EXCLUDED, Attr.PRIORITY, Attr.LB_PANIC, Attr.LB_AFFINITY,
                 Attr.RETRY_ATTEMPT, Attr.RETRY_FAILURE, Attr.RETRY_BUDGET_REMAINING, Attr.FAILOVER_FROM,
                 Attr.FAILOVER_TO, Attr.POLICY_TYPE, Attr.CONSUMER, Attr.RATELIMIT_LIMIT, Attr.RATELIMIT_REMAINING)
# An attempt's phases, in the order they happen (the backoff is shown with the gap before the attempt).
PHASE_KEYS = (Attr.TIMING_POOL_WAIT, Attr.TIMING_CONNECT, Attr.TIMING_TLS, Attr.TIMING_REQUEST_SENT, Attr.TIMING_TTFB)
# Attributes of a state-change event that list the requests (trace ids) it concerns.
TRACE_LIST_KEYS = (Attr.EVENT_TRACE_IDS, Attr.EJECTION_TRACE_IDS)
# When a source does not carry the event name (Loki before it kept OTLP event_name), the attribute that only
# one kind of record has tells which one it is.
EVENT_BY_ATTRIBUTE = ((Attr.HEALTH_FROM, Event.HEALTH_TRANSITION), (Attr.CIRCUIT_FROM, Event.CIRCUIT_TRANSITION),
                      (Attr.EJECTION_COUNT, Event.OUTLIER_EJECTION), (Attr.EJECTION_TRACE_IDS, Event.OUTLIER_EJECTION),
                      (Attr.FAILOVER_TO, Event.DECISION_FAILOVER), (Attr.LB_PANIC, Event.DECISION_FAILOVER),
                      (Attr.CONFIG_LOADED_AT, Event.CONFIG_RELOAD))


class SourceError(Exception):
    """A source that could not be read; the message names it (URL or directory) and the HTTP status."""


# --- the model ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Link:
    trace_id: str
    span_id: str
    attributes: dict[str, Any]


@dataclass(frozen=True)
class Span:
    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: str  # SERVER | CLIENT | INTERNAL | ...
    service: str
    start_ns: int
    end_ns: int
    status: str  # UNSET | OK | ERROR
    attributes: dict[str, Any]
    links: tuple[Link, ...] = ()

    @property
    def duration_ns(self) -> int:
        return self.end_ns - self.start_ns


@dataclass(frozen=True)
class LogRecord:
    time_ns: int
    trace_id: str | None
    span_id: str | None
    event_name: str
    severity: str
    body: str
    service: str
    attributes: dict[str, Any]

    @property
    def is_decision(self) -> bool:
        """A request's decision (it carries its kind); a pool's failover note is an event, not a decision."""
        return Attr.DECISION in self.attributes and (self.event_name in _DECISION_EVENT_NAMES or not self.event_name)

    def key(self) -> tuple:
        return self.time_ns, self.span_id, self.event_name, self.body


@dataclass
class Loaded:
    spans: list[Span] = field(default_factory=list)
    logs: list[LogRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class Journey:
    trace_id: str
    spans: dict[str, Span]  # by span id, in tree order (depth first, children by start time)
    children: dict[str | None, list[str]]  # parent span id (None: roots) -> child span ids by start time
    decisions: dict[str, list[LogRecord]]  # span id -> its decision logs, by time
    orphan_decisions: list[LogRecord]  # decisions of this trace whose span is not in the data
    events: list[tuple[LogRecord, str]]  # linked state-change events, each with how it is linked
    notes: list[str]
    start_ns: int
    end_ns: int

    @property
    def empty(self) -> bool:
        return not (self.spans or self.orphan_decisions or self.events)

    def depth(self, span_id: str) -> int:
        d, s = 0, self.spans[span_id]
        while s.parent_id in self.spans:
            d, s = d + 1, self.spans[s.parent_id]
        return d

    def root_server(self) -> Span | None:
        return next((s for s in self.spans.values() if s.kind == SERVER), None)

    def services(self) -> list[str]:
        seen = [s.service for s in self.spans.values()] + [r.service for r in self._all_decisions()]
        return list(dict.fromkeys(x for x in seen if x))

    def _all_decisions(self) -> list[LogRecord]:
        return [r for rs in self.decisions.values() for r in rs] + self.orphan_decisions


# --- ids, times, values ------------------------------------------------------------------------------------

_HEX32 = re.compile(r"^(?:0x)?([0-9a-f]{32})$")
_TRACEPARENT = re.compile(r"^[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


def parse_trace_id(text: str) -> str:
    """32 lowercase hex digits from a trace id, or from a `traceparent` / `traceresponse` value."""
    value = text.strip().lower()
    m = _HEX32.match(value) or _TRACEPARENT.match(value)
    if not m or int(m.group(1), 16) == 0:
        raise ValueError(f"not a trace id: {text!r} (expected 32 hex digits, or a traceparent/traceresponse "
                         "value like 00-<32 hex>-<16 hex>-01)")
    return m.group(1)


def _hex(value: Any) -> str | None:
    """An id as lowercase hex without "0x"; an absent or all-zero id is None."""
    if not isinstance(value, str):
        return None
    v = value.strip().lower().removeprefix("0x")
    return v if v and v.strip("0") else None


def _otlp_id(value: Any, size: int) -> str | None:
    """OTLP JSON ids are hex by the spec, base64 in protobuf-JSON (Tempo 2.x): told apart by their length."""
    if not isinstance(value, str) or not value:
        return None
    if len(value) == 2 * size and re.fullmatch(r"[0-9a-fA-F]+", value):
        return _hex(value)
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return _hex(raw.hex()) if len(raw) == size else None


def _iso_ns(text: str | None) -> int:
    """The SDK's ns_to_iso_str form (microseconds, UTC) to integer nanoseconds, without float rounding."""
    if not text:
        return 0
    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")
    return (calendar.timegm(dt.timetuple()) * 1_000_000 + dt.microsecond) * 1000


def _fmt(value: Any) -> str:
    """One attribute value as text, alike whichever source it came from (Loki keeps only strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_fmt(v) for v in value)
    return str(value)


def _ms(ns: int) -> str:
    return f"{ns / 1e6:.3f} ms" if abs(ns) < 10 * 10**9 else f"{ns / 1e9:.3f} s"


def _offset(ns: int) -> str:
    return ("+" if ns >= 0 else "-") + _ms(abs(ns))


def _as_list(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return list(value)
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return [value]
        return parsed if isinstance(parsed, list) else [value]
    return [] if value is None else [value]


# --- source 1: JSON-lines files ----------------------------------------------------------------------------

_JSONL = re.compile(r"\.(traces|logs)\.jsonl(\.\d+)?$")


def load_dir(directory: Path, trace_id: str) -> Loaded:
    """Every span of the trace, and every log record that may belong to it, from the files in `directory`."""
    if not directory.is_dir():
        raise SourceError(f"{directory}: no such directory (JSON-lines telemetry is written under "
                          f"telemetry.local_dir, default ./{DEFAULT_DIR})")
    files = sorted(p for p in directory.iterdir() if _JSONL.search(p.name))
    out, skipped = Loaded(), 0
    for path in files:
        traces = _JSONL.search(path.name).group(1) == "traces"
        for obj in _candidate_lines(path, trace_id):
            try:
                if traces:
                    out.spans.append(_sdk_span(obj))
                else:
                    out.logs.append(_sdk_log(obj))
            except (KeyError, TypeError, ValueError, AttributeError):
                skipped += 1
    out.spans = [s for s in out.spans if s.trace_id == trace_id]
    note = f"dir {directory} ({len(files)} files)"
    out.notes.append(note + (f", {skipped} unreadable records skipped" if skipped else ""))
    return out


def _candidate_lines(path: Path, trace_id: str) -> Iterator[dict]:
    """Only lines that mention the trace id (or carry an event id) are parsed: files may hold 64 MiB each."""
    event_key = f'"{Attr.EVENT_ID}"'
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if trace_id not in line.lower() and event_key not in line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:  # a line the exporter is still writing
                continue
            if isinstance(obj, dict):
                yield obj


def _resource_service(obj: dict) -> str:
    return str(((obj.get("resource") or {}).get("attributes") or {}).get(SERVICE_NAME, ""))


def _sdk_span(obj: dict) -> Span:
    ctx = obj["context"]
    links = tuple(Link(_hex(ln["context"]["trace_id"]) or "", _hex(ln["context"]["span_id"]) or "",
                       dict(ln.get("attributes") or {})) for ln in obj.get("links") or ())
    return Span(_hex(ctx["trace_id"]) or "", _hex(ctx["span_id"]) or "", _hex(obj.get("parent_id")),
                obj["name"], str(obj["kind"]).rsplit(".", 1)[-1], _resource_service(obj),
                _iso_ns(obj["start_time"]), _iso_ns(obj.get("end_time") or obj["start_time"]),
                str((obj.get("status") or {}).get("status_code", "UNSET")), dict(obj.get("attributes") or {}), links)


def _sdk_log(obj: dict) -> LogRecord:
    attrs = dict(obj.get("attributes") or {})
    body = obj.get("body")
    return LogRecord(_iso_ns(obj.get("timestamp") or obj.get("observed_timestamp")), _hex(obj.get("trace_id")),
                     _hex(obj.get("span_id")), obj.get("event_name") or _infer_event(attrs),
                     str(obj.get("severity_text") or ""), body if isinstance(body, str) else json.dumps(body),
                     _resource_service(obj), attrs)


def _infer_event(attrs: dict) -> str:
    kind = attrs.get(Attr.DECISION)
    if kind in _DECISION_KINDS:
        return DECISION_EVENTS[DecisionKind(kind)].value
    return next((event.value for key, event in EVENT_BY_ATTRIBUTE if key in attrs), "")


# --- HTTP, shared by Tempo and Loki ------------------------------------------------------------------------


def _http_get(url: str, what: str, timeout_s: float, headers: dict[str, str]) -> tuple[int, bytes]:
    """(status, body) of a GET; an unreachable or silent server is a SourceError naming the URL."""
    req = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout_s) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()
    except TimeoutError:  # socket.timeout is TimeoutError
        raise SourceError(f"{what} at {url} did not answer within {timeout_s:g} s (--timeout)") from None
    except urllib.error.URLError as err:
        if isinstance(err.reason, TimeoutError):
            raise SourceError(f"{what} at {url} did not answer within {timeout_s:g} s (--timeout)") from None
        raise SourceError(f"cannot reach {what} at {url}: {err.reason}") from None
    except (OSError, http.client.HTTPException) as err:
        raise SourceError(f"{what} at {url}: the connection failed: {err!r}") from None


def _json_ok(status: int, body: bytes, what: str, url: str) -> Any:
    snippet = body[:300].decode("utf-8", "replace").strip()
    if status != 200:
        raise SourceError(f"{what} at {url} answered HTTP {status}: {snippet or '(empty body)'}")
    try:
        return json.loads(body)
    except ValueError as err:
        raise SourceError(f"{what} at {url} answered HTTP 200 with a body that is not JSON ({err}): "
                          f"{snippet[:120]!r}") from None


# --- source 2: Tempo ---------------------------------------------------------------------------------------


def load_tempo(base_url: str, trace_id: str, timeout_s: float) -> Loaded:
    """The trace from Tempo. A 404 is "Tempo has no such trace" (e.g. tail sampling dropped it), not a failure:
    Loki may still hold its decisions."""
    url = f"{base_url.rstrip('/')}/api/traces/{trace_id}"
    status, body = _http_get(url, "Tempo", timeout_s, {"Accept": "application/json"})
    if status == 404:
        return Loaded(notes=[f"tempo {url}: no such trace (HTTP 404)"])
    doc = _json_ok(status, body, "Tempo", url)
    try:
        spans = [s for s in _tempo_spans(doc) if s.trace_id == trace_id]
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        raise SourceError(f"Tempo at {url} answered JSON that is not an OTLP trace: {err!r}") from None
    return Loaded(spans=spans, notes=[f"tempo {url} ({len(spans)} spans)"])


def _tempo_spans(doc: dict) -> Iterator[Span]:
    trace = doc.get("trace", doc)  # /api/v2/traces wraps the trace; /api/traces does not
    batches = trace.get("batches", trace.get("resourceSpans"))
    if batches is None and trace:
        raise ValueError("neither batches nor resourceSpans")
    for rs in batches or ():
        resource = _otlp_attrs((rs.get("resource") or {}).get("attributes"))
        for ss in rs.get("scopeSpans") or rs.get("instrumentationLibrarySpans") or ():
            for s in ss.get("spans") or ():
                yield _otlp_span(s, str(resource.get(SERVICE_NAME, "")))


def _otlp_span(s: dict, service: str) -> Span:
    links = tuple(Link(_otlp_id(ln.get("traceId"), 16) or "", _otlp_id(ln.get("spanId"), 8) or "",
                       _otlp_attrs(ln.get("attributes"))) for ln in s.get("links") or ())
    return Span(_otlp_id(s["traceId"], 16) or "", _otlp_id(s["spanId"], 8) or "",
                _otlp_id(s.get("parentSpanId"), 8), s.get("name", ""), _otlp_enum(s.get("kind", 0), _OTLP_KINDS),
                service, int(s.get("startTimeUnixNano", 0)), int(s.get("endTimeUnixNano", 0)),
                _otlp_enum((s.get("status") or {}).get("code", 0), _OTLP_STATUS), _otlp_attrs(s.get("attributes")),
                links)


def _otlp_enum(value: Any, names: dict[int, str]) -> str:
    """A protobuf enum in JSON: its number (OTLP/JSON) or its name (SPAN_KIND_SERVER, STATUS_CODE_ERROR)."""
    if isinstance(value, int):
        return names.get(value, str(value))
    text = str(value)
    return next((n for n in names.values() if text.endswith("_" + n)), text)


def _otlp_attrs(kvs: Iterable[dict] | None) -> dict[str, Any]:
    return {kv["key"]: _otlp_value(kv.get("value") or {}) for kv in kvs or ()}


def _otlp_value(v: dict) -> Any:
    if "stringValue" in v:
        return v["stringValue"]
    if "intValue" in v:
        return int(v["intValue"])  # int64 is a JSON string in protobuf-JSON
    if "doubleValue" in v:
        return float(v["doubleValue"])
    if "boolValue" in v:
        return bool(v["boolValue"])
    if "arrayValue" in v:
        return [_otlp_value(x) for x in (v["arrayValue"] or {}).get("values") or ()]
    if "kvlistValue" in v:
        return _otlp_attrs((v["kvlistValue"] or {}).get("values"))
    if "bytesValue" in v:
        return base64.b64decode(v["bytesValue"]).hex()
    return None


# --- source 3: Loki ----------------------------------------------------------------------------------------


def logql_for_trace(trace_id: str) -> str:
    """The decision logs of the trace (trace_id is structured metadata after Loki's OTLP ingestion) and the
    state-change events that list it among the requests that caused them."""
    lists = " or ".join(f'{_loki_name(k)}=~".*{trace_id}.*"' for k in TRACE_LIST_KEYS)
    return f'{{{LOKI_SERVICE}=~".+"}} | {LOKI_TRACE_ID}="{trace_id}" or {lists}'


def logql_for_events(event_ids: Iterable[str]) -> str:
    """The events a span names in gatewatch.event.ids (exact matches: ids need no regex escaping)."""
    key = _loki_name(Attr.EVENT_ID)
    return f'{{{LOKI_SERVICE}=~".+"}} | ' + " or ".join(f"{key}={json.dumps(i)}" for i in sorted(event_ids))


def _loki_name(key: str) -> str:
    """How Loki stores an OTLP attribute name: every character outside [A-Za-z0-9_] becomes "_"."""
    return re.sub(r"[^A-Za-z0-9_]", "_", key)


_FROM_LOKI = {_loki_name(v): v for k, v in vars(Attr).items() if k.isupper() and isinstance(v, str)}


def load_loki(base_url: str, trace_id: str, timeout_s: float, window: tuple[int, int],
              event_ids: Iterable[str] = ()) -> Loaded:
    queries = [logql_for_trace(trace_id)] + ([logql_for_events(event_ids)] if event_ids else [])
    out = Loaded()
    for query in queries:
        logs, note = _loki_query(base_url, query, timeout_s, window)
        out.logs.extend(logs)
        out.notes.append(note)
    return out


def _loki_query(base_url: str, query: str, timeout_s: float, window: tuple[int, int]) -> tuple[list, str]:
    params = urllib.parse.urlencode({"query": query, "start": str(window[0]), "end": str(window[1]),
                                     "limit": str(LOKI_LIMIT), "direction": "forward"})
    url = f"{base_url.rstrip('/')}/loki/api/v1/query_range?{params}"
    # categorize-labels: structured metadata comes apart from the stream labels (third element of each value)
    status, body = _http_get(url, "Loki", timeout_s, {"X-Loki-Response-Encoding-Flags": "categorize-labels"})
    doc = _json_ok(status, body, "Loki", url)
    try:
        logs = [_loki_record(stream.get("stream") or {}, value) for stream in doc["data"]["result"]
                for value in stream["values"]]
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise SourceError(f"Loki at {url} answered JSON that is not a streams result: {err!r}") from None
    full = " (the limit: some records may be missing)" if len(logs) >= LOKI_LIMIT else ""
    return logs, f"loki {base_url} {query} ({len(logs)} records{full})"


def _loki_record(labels: dict, value: list) -> LogRecord:
    meta = dict(labels)
    if len(value) > 2 and isinstance(value[2], dict):
        meta.update(value[2].get("structuredMetadata") or {})
        meta.update(value[2].get("parsed") or {})
    attrs = {_FROM_LOKI.get(k, k): _loki_value(v) for k, v in meta.items()}
    return LogRecord(int(value[0]), _hex(meta.get(LOKI_TRACE_ID)), _hex(meta.get(LOKI_SPAN_ID)),
                     meta.get(LOKI_EVENT_NAME) or _infer_event(attrs), str(meta.get(LOKI_SEVERITY, "")),
                     str(value[1]), str(meta.get(LOKI_SERVICE, "")), attrs)


def _loki_value(text: Any) -> Any:
    """Loki keeps every value as a string; an array attribute is its JSON text."""
    return _as_list(text) if isinstance(text, str) and text.startswith("[") else text


# --- all sources together ----------------------------------------------------------------------------------


def load_all(trace_id: str, directory: str | None, tempo: str | None, loki: str | None, timeout_s: float,
             since_s: float) -> Loaded:
    """The JSON-lines directory unless only HTTP sources were named, then Tempo, then Loki (which gets the time
    window and the event ids from the spans already found)."""
    parts: list[Loaded] = []
    if directory is not None or not (tempo or loki):
        parts.append(load_dir(Path(directory or DEFAULT_DIR), trace_id))
    if tempo:
        parts.append(load_tempo(tempo, trace_id, timeout_s))
    if loki:
        spans = [s for p in parts for s in p.spans]
        parts.append(load_loki(loki, trace_id, timeout_s, _loki_window(spans, since_s), _event_ids(spans)))
    return Loaded([s for p in parts for s in p.spans], [r for p in parts for r in p.logs],
                  [n for p in parts for n in p.notes])


def _loki_window(spans: list[Span], since_s: float) -> tuple[int, int]:
    if spans:
        return (min(s.start_ns for s in spans) - LOKI_MARGIN_NS, max(s.end_ns for s in spans) + LOKI_MARGIN_NS)
    now = time.time_ns()
    return now - int(since_s * 1e9), now


def _event_ids(spans: Iterable[Span]) -> set[str]:
    return {str(i) for s in spans for i in _as_list(s.attributes.get(Attr.EVENT_IDS))}


# --- the journey -------------------------------------------------------------------------------------------


def build_journey(trace_id: str, loaded: Loaded) -> Journey:
    spans = _dedupe_spans(loaded.spans)
    children: dict[str | None, list[str]] = {}
    for s in sorted(spans.values(), key=lambda s: (s.start_ns, s.span_id)):
        children.setdefault(s.parent_id if s.parent_id in spans else None, []).append(s.span_id)
    ordered = {sid: spans[sid] for sid in _depth_first(children, None)}
    logs = sorted({r.key(): r for r in loaded.logs}.values(), key=lambda r: (r.time_ns, r.body))
    decisions: dict[str, list[LogRecord]] = {}
    orphans, events = [], []
    event_ids = _event_ids(ordered.values())
    for r in logs:
        if r.is_decision and r.trace_id == trace_id:
            (decisions.setdefault(r.span_id, []) if r.span_id in ordered else orphans).append(r)
        elif r.is_decision:  # another request's decision, even one that names the same event (an outage)
            continue
        elif (via := _linked_by(r, trace_id, event_ids)) is not None:
            events.append((r, via))
    shown = orphans + [r for r, _ in events]  # without spans, the trace's time is its records'
    times = [(s.start_ns, s.end_ns) for s in ordered.values()] or [(r.time_ns, r.time_ns) for r in shown] or [(0, 0)]
    return Journey(trace_id, ordered, children, decisions, orphans, events, loaded.notes,
                   min(t[0] for t in times), max(t[1] for t in times))


def _dedupe_spans(spans: Iterable[Span]) -> dict[str, Span]:
    out: dict[str, Span] = {}
    for s in spans:
        out.setdefault(s.span_id, s)  # the same span from two sources: the first source wins
    return out


def _depth_first(children: dict[str | None, list[str]], parent: str | None) -> Iterator[str]:
    for sid in children.get(parent, ()):
        yield sid
        yield from _depth_first(children, sid)


def _linked_by(r: LogRecord, trace_id: str, event_ids: set[str]) -> str | None:
    """How a log record that is not one of this trace's decisions concerns it, or None."""
    if r.trace_id == trace_id:
        return "its trace id"
    for key in TRACE_LIST_KEYS:
        if trace_id in {_hex(str(t)) for t in _as_list(r.attributes.get(key))}:
            return f"listed in {key}"
    if Attr.EVENT_ID in r.attributes and str(r.attributes[Attr.EVENT_ID]) in event_ids:
        return f"{Attr.EVENT_ID} named in a span's {Attr.EVENT_IDS}"
    return None


# --- timing ------------------------------------------------------------------------------------------------


@dataclass
class Attempt:
    number: int
    span: Span
    gap_before_ns: int | None  # from the previous attempt's end (None for the first)
    backoff_ns: int | None  # the part of that gap gatewatch.timing.backoff_s explains
    phases: list[tuple[str, int]]  # (phase, ns) from the gatewatch.timing.* attributes present
    next_tier: Span | None  # the SERVER span this attempt reached, when it is in the data


@dataclass
class TierTiming:
    span: Span  # a SERVER span (one tier) or an INTERNAL one (the in-process balancer)
    children_ns: int  # covered by its direct CLIENT/INTERNAL children
    own_ns: int  # the rest: this tier's own time
    lead_ns: int  # before the first child
    between_ns: int  # between children (retry backoff and re-pick)
    tail_ns: int  # after the last child (relaying the response)
    attempts: list[Attempt]


def tier_timings(j: Journey) -> list[TierTiming]:
    return [_tier_timing(j, s) for s in j.spans.values() if s.kind in (SERVER, INTERNAL)]


def _tier_timing(j: Journey, s: Span) -> TierTiming:
    kids = [j.spans[c] for c in j.children.get(s.span_id, ()) if j.spans[c].kind in (CLIENT, INTERNAL)]
    covered = _union_ns([(k.start_ns, k.end_ns) for k in kids])
    lead = (kids[0].start_ns - s.start_ns) if kids else 0
    tail = (s.end_ns - max(k.end_ns for k in kids)) if kids else 0
    own = s.duration_ns - covered
    between = max(0, own - lead - tail) if kids else 0
    clients = [k for k in kids if k.kind == CLIENT]
    return TierTiming(s, covered, own, lead, between, tail, _attempts(j, clients))


def _union_ns(intervals: list[tuple[int, int]]) -> int:
    total, end = 0, None
    for a, b in sorted(intervals):
        if end is None or a > end:
            total, end = total + (b - a), b
        elif b > end:
            total, end = total + (b - end), b
    return total


def _attempts(j: Journey, clients: list[Span]) -> list[Attempt]:
    out = []
    for i, c in enumerate(clients):
        gap = c.start_ns - clients[i - 1].end_ns if i else None
        backoff = _seconds_ns(c.attributes.get(Attr.TIMING_BACKOFF))
        phases = [(_phase(k), ns) for k in PHASE_KEYS if (ns := _seconds_ns(c.attributes.get(k))) is not None]
        nxt = next((j.spans[x] for x in j.children.get(c.span_id, ()) if j.spans[x].kind == SERVER), None)
        out.append(Attempt(i + 1, c, gap, backoff, phases, nxt))
    return out


def _seconds_ns(value: Any) -> int | None:
    try:
        return None if value is None else round(float(value) * 1e9)
    except (TypeError, ValueError):
        return None


def _phase(key: str) -> str:
    """gatewatch.timing.pool_wait_s -> "pool wait"."""
    return key.rsplit(".", 1)[-1].removesuffix("_s").replace("_", " ")


# --- text --------------------------------------------------------------------------------------------------


class _Style:
    """ANSI styles with --color; plain text otherwise (the default: pasted text must not carry escapes)."""

    def __init__(self, on: bool):
        self.on = on

    def __call__(self, text: str, code: str) -> str:
        return f"\x1b[{code}m{text}\x1b[0m" if self.on and text else text


def render_text(j: Journey, color: bool = False) -> str:
    st = _Style(color)
    lines = [st(_header(j), "1"), ""]
    for root in j.children.get(None, ()):
        lines += _span_lines(j, root, "", None, st)
    if not j.spans:
        lines.append("no spans in the data")
    lines += _orphan_lines(j, st) + _timing_lines(j) + _event_lines(j, st)
    lines += ["", "sources: " + "; ".join(j.notes)]
    return "\n".join(lines)


def _header(j: Journey) -> str:
    root = j.root_server()
    if root is None:
        outcome = "outcome unknown (no SERVER span in the data)"
    else:
        status = root.attributes.get(Attr.HTTP_RESPONSE_STATUS_CODE)
        outcome = f"outcome {_fmt(root.attributes.get(Attr.OUTCOME, root.status.lower()))}" + \
            (f" (HTTP {_fmt(status)})" if status is not None else "")
    request = root.attributes.get(Attr.REQUEST_ID) if root else None
    parts = [f"trace {j.trace_id}", "services " + (", ".join(j.services()) or "-"),
             f"duration {_ms(j.end_ns - j.start_ns)}", outcome] + ([f"request {request}"] if request else [])
    return "  ".join(parts)


def _span_headline(j: Journey, s: Span) -> str:
    parent = f"  (parent {s.parent_id} not in the data)" if s.parent_id and s.parent_id not in j.spans else ""
    error = "  ERROR" if s.status == "ERROR" else ""
    return (f"{s.kind} {s.name}  [{s.service or '?'}]  {_offset(s.start_ns - j.start_ns)}  {_ms(s.duration_ns)}"
            f"  span {s.span_id}{error}{parent}")


def _span_attrs(s: Span) -> str:
    keys = list(SPAN_KEYS) + sorted(k for k in s.attributes if k.startswith(_LB_PREFIX) and k not in SPAN_KEYS)
    return " ".join(f"{k}={_fmt(s.attributes[k])}" for k in keys if k in s.attributes)


def _decision_line(j: Journey, r: LogRecord) -> str:
    a = r.attributes
    text = (f"decision {_fmt(a.get(Attr.DECISION))} {_fmt(a.get(Attr.DECISION_RULE, '-'))}: "
            f"{_fmt(a.get(Attr.DECISION_RESULT, '?'))} ({_fmt(a.get(Attr.DECISION_REASON, '?'))})")
    extra = " ".join(f"{k}={_fmt(a[k])}" for k in DECISION_KEYS if k in a)
    return f"{text}  {_offset(r.time_ns - j.start_ns)}" + (f"  {extra}" if extra else "")


def _span_lines(j: Journey, sid: str, prefix: str, last: bool | None, st: _Style) -> list[str]:
    """One span, its details, then its decisions and child spans interleaved by time, as a tree."""
    s = j.spans[sid]
    items = [(r.time_ns, 0, r) for r in j.decisions.get(sid, ())]
    items += [(j.spans[c].start_ns, 1, c) for c in j.children.get(sid, ())]
    items.sort(key=lambda t: (t[0], t[1]))
    branch = "" if last is None else ("└─ " if last else "├─ ")
    inner = prefix + ("" if last is None else ("   " if last else "│  "))
    detail = inner + ("│     " if items else "      ")
    out = [prefix + branch + st(_span_headline(j, s), "31" if s.status == "ERROR" else "1")]
    attrs = _span_attrs(s)
    out += [detail + st(attrs, "2")] if attrs else []
    out += [detail + st(f"link -> trace {ln.trace_id} span {ln.span_id}" +
                        "".join(f" {k}={_fmt(v)}" for k, v in ln.attributes.items()), "2") for ln in s.links]
    for n, (_, is_span, item) in enumerate(items):
        end = n == len(items) - 1
        if is_span:
            out += _span_lines(j, item, inner, end, st)
        else:
            out.append(inner + ("└─ " if end else "├─ ") + st(_decision_line(j, item), "36"))
    return out


def _orphan_lines(j: Journey, st: _Style) -> list[str]:
    if not j.orphan_decisions:
        return []
    out = ["", "decisions of spans not in the data"]
    for r in j.orphan_decisions:
        out.append(f"  span {r.span_id or '-'} [{r.service or '?'}]  " + st(_decision_line(j, r), "36"))
    return out


def _timing_lines(j: Journey) -> list[str]:
    timings = tier_timings(j)
    if not timings:
        return ["", "timing: no SERVER or INTERNAL span in the data"]
    out = ["", "timing (own time = the tier's time outside its CLIENT/INTERNAL children)"]
    for t in timings:
        s = t.span
        head = f"  {s.kind} {s.name} [{s.service or '?'}] span {s.span_id}: {_ms(s.duration_ns)} = "
        if t.children_ns or j.children.get(s.span_id):
            out.append(head + f"{_ms(t.children_ns)} in children + {_ms(t.own_ns)} own (before first "
                       f"{_ms(t.lead_ns)}, between {_ms(t.between_ns)}, after last {_ms(t.tail_ns)})")
        else:
            out.append(head + f"{_ms(t.own_ns)} own (no CLIENT/INTERNAL children in the data)")
        out += _policy_timing(s) + [line for a in t.attempts for line in _attempt_lines(a)]
    return out


def _policy_timing(s: Span) -> list[str]:
    durations = _as_list(s.attributes.get(Attr.POLICY_DURATIONS))
    names = [str(p).split("=", 1)[0] for p in _as_list(s.attributes.get(Attr.POLICY_SUMMARY))]
    parts = [f"{names[i] if i < len(names) else i} {_ms(ns)}" for i, d in enumerate(durations)
             if (ns := _seconds_ns(d)) is not None]
    rtt = _seconds_ns(s.attributes.get(Attr.RATELIMIT_STORE_RTT))
    parts += [f"rate-limit store round trip {_ms(rtt)}"] if rtt is not None else []
    return ["    policies: " + ", ".join(parts)] if parts else []


def _attempt_lines(a: Attempt) -> list[str]:
    out = []
    if a.gap_before_ns is not None:
        if a.backoff_ns is None:
            why = f"unexplained (no {Attr.TIMING_BACKOFF})"
        else:
            why = f"backoff {_ms(a.backoff_ns)} + unexplained {_ms(a.gap_before_ns - a.backoff_ns)}"
        out.append(f"    gap before attempt {a.number}: {_ms(a.gap_before_ns)}: {why}")
    c = a.span
    target = c.attributes.get(Attr.INSTANCE) or c.attributes.get(Attr.SERVER_ADDRESS) or "?"
    line = f"    attempt {a.number}: CLIENT {c.name} -> {_fmt(target)} span {c.span_id}: {_ms(c.duration_ns)}"
    if Attr.ERROR_TYPE in c.attributes:
        line += f"  {Attr.ERROR_TYPE}={_fmt(c.attributes[Attr.ERROR_TYPE])}"
    if a.phases:
        line += "  (" + ", ".join(f"{name} {_ms(ns)}" for name, ns in a.phases) + ")"
    if a.next_tier is not None:
        wire = c.duration_ns - a.next_tier.duration_ns
        line += (f"; next tier's SERVER {_ms(a.next_tier.duration_ns)}, {_ms(wire)} on the wire and in queues "
                 "(includes clock skew between hosts)")
    return out + [line]


def _event_lines(j: Journey, st: _Style) -> list[str]:
    if not j.events:
        return ["", "linked events: none"]
    out = ["", "linked events"]
    for r, via in j.events:
        line = (f"  {_offset(r.time_ns - j.start_ns)}  {r.event_name or '?'}  {r.severity or '-'}  {r.body}"
                f"  [{r.service or '?'}; {via}]")
        out.append(st(line, "33" if r.severity == "WARN" else ""))
    return out


# --- JSON --------------------------------------------------------------------------------------------------


def render_json(j: Journey) -> str:
    timings = {t.span.span_id: t for t in tier_timings(j)}
    root = j.root_server()
    doc = {
        "trace_id": j.trace_id, "services": j.services(), "start_unix_nano": j.start_ns,
        "duration_ms": (j.end_ns - j.start_ns) / 1e6,
        "outcome": root.attributes.get(Attr.OUTCOME) if root else None,
        "root_span_id": root.span_id if root else None,
        "spans": [_span_json(j, s, timings.get(s.span_id)) for s in j.spans.values()],
        "orphan_decisions": [_log_json(j, r) for r in j.orphan_decisions],
        "linked_events": [{**_log_json(j, r), "linked_by": via} for r, via in j.events],
        "sources": j.notes,
    }
    return json.dumps(doc, indent=2, default=str)


def _span_json(j: Journey, s: Span, timing: TierTiming | None) -> dict:
    return {
        "span_id": s.span_id, "parent_span_id": s.parent_id, "parent_in_data": s.parent_id in j.spans,
        "depth": j.depth(s.span_id), "kind": s.kind, "name": s.name, "service": s.service, "status": s.status,
        "start_unix_nano": s.start_ns, "end_unix_nano": s.end_ns, "offset_ms": (s.start_ns - j.start_ns) / 1e6,
        "duration_ms": s.duration_ns / 1e6, "attributes": s.attributes,
        "links": [{"trace_id": ln.trace_id, "span_id": ln.span_id, "attributes": ln.attributes} for ln in s.links],
        "decisions": [_log_json(j, r) for r in j.decisions.get(s.span_id, ())],
        "timing": _timing_json(timing) if timing else None,
    }


def _timing_json(t: TierTiming) -> dict:
    return {
        "children_ms": t.children_ns / 1e6, "own_ms": t.own_ns / 1e6, "before_first_ms": t.lead_ns / 1e6,
        "between_ms": t.between_ns / 1e6, "after_last_ms": t.tail_ns / 1e6,
        "attempts": [{"number": a.number, "span_id": a.span.span_id, "duration_ms": a.span.duration_ns / 1e6,
                      "gap_before_ms": None if a.gap_before_ns is None else a.gap_before_ns / 1e6,
                      "backoff_ms": None if a.backoff_ns is None else a.backoff_ns / 1e6,
                      "phases_ms": {name: ns / 1e6 for name, ns in a.phases},
                      "next_tier_span_id": a.next_tier.span_id if a.next_tier else None} for a in t.attempts],
    }


def _log_json(j: Journey, r: LogRecord) -> dict:
    return {"time_unix_nano": r.time_ns, "offset_ms": (r.time_ns - j.start_ns) / 1e6, "event_name": r.event_name,
            "severity": r.severity, "body": r.body, "service": r.service, "trace_id": r.trace_id,
            "span_id": r.span_id, "attributes": r.attributes}


# --- the command -------------------------------------------------------------------------------------------

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str) -> float:
    m = _DURATION.match(text.strip())
    if not m:
        raise ValueError(f"--since: not a duration: {text!r} (e.g. 30m, 6h, 2d)")
    return float(m.group(1)) * _UNIT_S[m.group(2)]


def run(args: Any) -> int:
    """`gatewatch journey`: args.trace, .dir, .tempo, .loki, .json, .color, .timeout, .since."""
    try:
        trace_id = parse_trace_id(args.trace)
        since_s = parse_since(args.since)
    except ValueError as err:
        print(f"gatewatch journey: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        loaded = load_all(trace_id, args.dir, args.tempo, args.loki, args.timeout, since_s)
    except SourceError as err:
        print(f"gatewatch journey: {err}", file=sys.stderr)
        return EXIT_FAILED
    journey = build_journey(trace_id, loaded)
    if journey.empty:
        print(f"gatewatch journey: trace {trace_id} matches nothing in: {'; '.join(loaded.notes)}", file=sys.stderr)
        return EXIT_FAILED
    try:
        print(render_json(journey) if args.json else render_text(journey, args.color), flush=True)
    except BrokenPipeError:  # `gatewatch journey … | head`: the reader has what it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_OK
