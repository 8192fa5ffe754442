"""W3C trace context in and out, and the per-request record that the recorder turns into telemetry.

Primitives:
- `parse_traceparent(value) -> (trace_id, parent_span_id, sampled) | None`: strict W3C Trace Context level 1;
  anything invalid is ignored (a new root is started), never an error for the request.
- `start_trace(...) -> TraceContext`: applies the listener's trust setting (`continue` | `link` | `ignore`) and
  parent-based ratio sampling.
- `RequestRecord`, `AttemptRecord`, `DecisionRecord`: plain slotted data the engine fills during the request and
  hands to `Recorder.finish` exactly once. They hold ids and numbers, not SDK objects: turning them into spans
  and log records happens off the request path (`telemetry.export`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from typing import Any

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.cython_shim import slotted
from gatewatch.telemetry.names import DecisionKind, HeaderDrop

_TRACEPARENT = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$")
# W3C Trace Context §3.3.1.5: at most 32 list-members; vendors propagate at least 512 characters, and cut a longer
# value by whole entries, those over 128 characters first, then from the end.
MAX_TRACESTATE = 512
MAX_TRACESTATE_MEMBERS = 32
TRACESTATE_LONG_ENTRY = 128
# W3C Baggage (limits): a platform propagates at least 64 list-members and 8192 bytes, and may drop whole members
# beyond; Gatewatch keeps 8192 bytes and 180 members (OpenTelemetry's limits), cut from the end, never mid-member.
MAX_BAGGAGE = 8192
MAX_BAGGAGE_MEMBERS = 180


def parse_traceparent(value: str | None) -> tuple[int, int, bool] | None:
    if not value:
        return None
    m = _TRACEPARENT.match(value.strip())
    if not m:
        return None
    version, trace_hex, span_hex, flags_hex, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if trace_id == 0 or span_id == 0:
        return None
    return trace_id, span_id, bool(int(flags_hex, 16) & 1)


def cap_tracestate(value: str) -> tuple[str | None, bool]:
    """(the value to propagate, whether entries had to be cut): within 512 characters and 32 members, cut per W3C
    Trace Context §3.3.1.5 (entries over 128 characters removed first, then entries from the end)."""
    if len(value) <= MAX_TRACESTATE and value.count(",") < MAX_TRACESTATE_MEMBERS:
        return value, False
    members = [e.strip() for e in value.split(",") if e.strip()]
    entries = members[:MAX_TRACESTATE_MEMBERS]
    if len(",".join(entries)) > MAX_TRACESTATE:
        entries = [e for e in entries if len(e) <= TRACESTATE_LONG_ENTRY]
        while entries and len(",".join(entries)) > MAX_TRACESTATE:
            entries.pop()
    if len(entries) == len(members):
        return value, False
    return ",".join(entries) or None, True


def cap_baggage(value: str) -> tuple[str | None, bool]:
    """(the value to propagate, whether members had to be cut): whole list-members from the start while they fit
    8192 bytes and 180 members (a header value is one character per byte)."""
    if len(value) <= MAX_BAGGAGE and value.count(",") < MAX_BAGGAGE_MEMBERS:
        return value, False
    members = [m.strip() for m in value.split(",") if m.strip()]
    kept: list[str] = []
    size = -1  # the first member needs no comma
    for member in members:
        if len(kept) == MAX_BAGGAGE_MEMBERS or size + 1 + len(member) > MAX_BAGGAGE:
            break
        kept.append(member)
        size += 1 + len(member)
    if len(kept) == len(members):
        return value, False
    return ",".join(kept) or None, True


_LOW64 = 0xFFFFFFFFFFFFFFFF


def format_traceparent(trace_id: int, span_id: int, sampled: bool) -> str:
    """W3C Trace Context §3.2: `00-<trace-id>-<parent-id>-<flags>`, lowercase hex, zero-padded."""
    if cython.compiled:
        return _traceparent_c(trace_id >> 64, trace_id & _LOW64, span_id, sampled)
    # `to_bytes().hex()` takes half the time of `:032x`
    return "00-" + trace_id.to_bytes(16, "big").hex() + "-" + span_id.to_bytes(8, "big").hex() + (
        "-01" if sampled else "-00")


def hex128(value: int) -> str:
    """A 128-bit number as 32 lowercase hex digits, zero-padded (a minted X-Request-Id, a trace id)."""
    if cython.compiled:
        return _hex128_c(value >> 64, value & _LOW64)
    return value.to_bytes(16, "big").hex()


def hex64(value: int) -> str:
    """A 64-bit number as 16 lowercase hex digits, zero-padded (a span id)."""
    if cython.compiled:
        return _hex64_c(value)
    return value.to_bytes(8, "big").hex()


# Compiled, the ids are written as hex digits into a C array and decoded once: the Python form's method calls by
# name and string concatenations cost ~10x more (bench/README "Ids without method calls"). Never called as Python.
@cython.cfunc
@cython.locals(p=cython.p_char, at=cython.Py_ssize_t, v=cython.ulonglong, i=cython.Py_ssize_t, d=cython.uint)
def _put_hex64(p, at, v):
    for i in range(at + 15, at - 1, -1):
        d = v & 15
        p[i] = d + 48 if d < 10 else d + 87  # '0'..'9', 'a'..'f'
        v >>= 4


@cython.cfunc
@cython.locals(hi=cython.ulonglong, lo=cython.ulonglong, span=cython.ulonglong, sampled=cython.bint)
def _traceparent_c(hi, lo, span, sampled) -> str:
    buf = cython.declare(cython.char[55])
    buf[0] = buf[1] = 48  # "00"
    buf[2] = buf[35] = buf[52] = 45  # "-"
    _put_hex64(buf, 3, hi)
    _put_hex64(buf, 19, lo)
    _put_hex64(buf, 36, span)
    buf[53] = 48
    buf[54] = 49 if sampled else 48
    return buf[:55].decode("ascii")


@cython.cfunc
@cython.locals(v=cython.ulonglong)
def _hex64_c(v) -> str:
    buf = cython.declare(cython.char[16])
    _put_hex64(buf, 0, v)
    return buf[:16].decode("ascii")


@cython.cfunc
@cython.locals(hi=cython.ulonglong, lo=cython.ulonglong)
def _hex128_c(hi, lo) -> str:
    buf = cython.declare(cython.char[32])
    _put_hex64(buf, 0, hi)
    _put_hex64(buf, 16, lo)
    return buf[:32].decode("ascii")


def new_span_id(rng: random.Random) -> int:
    return rng.getrandbits(64) or 1


def new_trace_id(rng: random.Random) -> int:
    return rng.getrandbits(128) or 1


def new_event_id() -> str:
    """The id of one state-change event (`gatewatch.event.id`): 16 hex digits, random."""
    return f"{random.getrandbits(64):016x}"


def ratio_sampled(trace_id: int, ratio: float) -> bool:
    """The OTel TraceIdRatioBased rule: sample when the low 64 bits fall under ratio * 2^64. Deterministic per
    trace id, so every layer that samples on its own reaches the same verdict."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return (trace_id & 0xFFFFFFFFFFFFFFFF) < int(ratio * (1 << 64))


@dataclass
class TraceContext:
    trace_id: int
    span_id: int  # this layer's SERVER span
    parent_span_id: int | None  # remote parent, when continued
    sampled: bool
    treatment: str  # continued | linked | new_root | ignored | invalid
    tracestate: str | None = None
    baggage: str | None = None
    link: tuple[int, int] | None = None  # (trace_id, span_id) of an untrusted inbound context
    cut: tuple[str, ...] | None = None  # HeaderDrop values: inbound tracestate / baggage cut to the W3C limits


def start_trace(traceparent: str | None, tracestate: str | None, baggage: str | None, trust: str,
                ratio: float, rng: random.Random, parent_based: bool = True) -> TraceContext:
    span_id = new_span_id(rng)
    parsed = parse_traceparent(traceparent)
    if parsed and trust == "continue":
        trace_id, parent, sampled = parsed
        if not parent_based:  # e.g. OTEL_TRACES_SAMPLER=traceidratio: our own verdict, same for every tier
            sampled = ratio_sampled(trace_id, ratio)
        ts, ts_cut = cap_tracestate(tracestate) if tracestate else (None, False)
        bg, bg_cut = cap_baggage(baggage) if baggage else (None, False)
        cut = None
        if ts_cut or bg_cut:  # never a reason to refuse the request: what fits goes on, the cut is recorded
            cut = ((HeaderDrop.TRACESTATE_TRUNCATED.value,) if ts_cut else ()) + (
                (HeaderDrop.BAGGAGE_TRUNCATED.value,) if bg_cut else ())
        return TraceContext(trace_id, span_id, parent, sampled, "continued", ts, bg, cut=cut)
    trace_id = new_trace_id(rng)
    sampled = ratio_sampled(trace_id, ratio)
    if parsed and trust == "link":
        return TraceContext(trace_id, span_id, None, sampled, "linked", link=(parsed[0], parsed[1]))
    if parsed:
        return TraceContext(trace_id, span_id, None, sampled, "ignored")
    return TraceContext(trace_id, span_id, None, sampled, "invalid" if traceparent else "new_root")


@dataclass
class DecisionRecord:
    kind: DecisionKind
    rule: str  # the route / policy / pool that decided
    result: str  # matched | no_match | picked | no_candidates | ...
    reason: str  # closed vocabulary (telemetry.names.Reason)
    time_ns: int
    span_id: int  # the span the decision belongs to
    attributes: dict[str, Any] = None  # type: ignore[assignment]  # {} when not given (__post_init__)
    layer: str | None = None  # the deciding layer when it differs from the record's (in-process balancer)

    # The mutable defaults are made in __post_init__, not by `field(default_factory=...)`: Cython's compiled __init__
    # imports `dataclasses` once per such field to test for the factory sentinel, ~2,300 instructions each time.
    def __post_init__(self) -> None:
        if self.attributes is None:
            self.attributes = {}


@dataclass(slots=True)
class EventRecord:
    """A state change outside any request (health transition, outlier ejection, circuit transition, config
    reload): becomes one log record with `event_name`. `trace_id`/`span_id` are set when one request caused it."""

    event: str  # telemetry.names.Event value
    time_ns: int
    body: str
    attributes: dict[str, Any] = field(default_factory=dict)
    trace_id: int = 0
    span_id: int = 0
    severity: str = "INFO"  # INFO | WARN


@dataclass
class AttemptRecord:
    span_id: int
    layer: str
    upstream: str
    instance: str
    zone: str | None
    host: str
    port: int
    url_full: str
    method: str
    resend_count: int
    start_ns: int
    end_ns: int = 0
    status: int | None = None
    error_type: str | None = None
    peer_address: str | None = None
    peer_port: int | None = None
    duration_s: float = 0.0
    outcome: str | None = None
    lb: dict[str, Any] = None  # type: ignore[assignment]  # {} when not given (__post_init__)
    # where the time went (seconds; None: that step did not happen), filled by the forwarder and the engine
    backoff_s: float | None = None  # the retry backoff slept before this attempt
    pool_wait_s: float | None = None  # waiting for a free connection
    connect_s: float | None = None  # connecting (a new connection)
    tls_s: float | None = None  # the TLS handshake of a new connection
    request_sent_s: float | None = None  # writing the request
    ttfb_s: float | None = None  # request written → response head parsed
    tls_failure: str | None = None  # why the TLS handshake failed (`TlsFailure`), with error.type upstream_tls_error
    tls_protocol_version: str | None = None  # the connection's TLS version ("1.2", "1.3"); None: plain HTTP
    tls_cipher: str | None = None

    def __post_init__(self) -> None:  # see DecisionRecord's
        if self.lb is None:
            self.lb = {}


@dataclass
class RequestRecord:
    layer: str
    trace: TraceContext
    start_ns: int
    start_mono: float
    method: str
    path: str
    query: str
    scheme: str
    host: str
    server_port: int
    client_address: str
    client_port: int
    protocol_version: str
    user_agent: str | None
    request_id: str
    listener: str
    route: str | None = None
    route_template: str | None = None
    upstream: str | None = None
    outcome: str | None = None
    status: int | None = None
    error_type: str | None = None
    end_ns: int = 0
    duration_s: float = 0.0
    balance_span_id: int | None = None  # the in-process balancer layer's INTERNAL span
    balance_start_ns: int = 0
    balance_end_ns: int = 0
    lb: dict[str, Any] = None  # type: ignore[assignment]  # {} when not given (__post_init__, as for the lists)
    consumer: str | None = None  # established by an authentication policy
    policies: list[tuple[str, str, str, str]] = None  # type: ignore[assignment]  # (name, type, verdict, reason)
    attempts: list[AttemptRecord] = None  # type: ignore[assignment]
    decisions: list[DecisionRecord] = None  # type: ignore[assignment]
    config_version: str = ""  # the snapshot's config version
    failover: str | None = None  # FailoverKind of a request served by a pool of this process (None: no pick)
    event_ids: list[str] | None = None  # state-change events that affected this request (gatewatch.event.id)
    policy_durations: list[float] | None = None  # seconds per evaluated policy, in the order of `policies`
    store_rtt_s: float | None = None  # the longest rate-limit store round trip of the request's policies
    # a TLS listener's connection: (tls.protocol.version, tls.cipher, tls.client.server_name, tls.next_protocol,
    # tls.client.subject, tls.client.hash.sha256), the last two only for a verified client certificate
    tls: tuple | None = None
    headers_dropped: tuple[str, ...] | None = None  # HeaderDrop values: inbound headers removed or cut, request served
    cache: tuple | None = None  # a route with a response cache: (CacheResult, CacheReason, Age served or None)
    # weighted split / request mirroring (issue 19): more SERVER span attributes (gatewatch.split.*, gatewatch.mirror.*)
    span_attrs: dict[str, Any] | None = None
    # a shadow request's record (issue 19): no SERVER span of its own, only `attempts[0]`'s CLIENT span, a child of
    # `trace.span_id` (the primary's SERVER span); exported after the primary's record, when the shadow is done
    mirror: bool = False
    # a TCP pass-through connection (mode: tcp listener, gatewatch.io.tcp_proxy): (bytes received from the client,
    # bytes sent to it, TcpClosedBy, network.type, proxy protocol sent or None). Its spans are `convert.tcp_models`;
    # the HTTP fields (method, path, ...) are empty, `listener` names the listener, `upstream` the pool.
    tcp: tuple | None = None
    # a WebSocket session's record (issue 17): no SERVER span of its own, only the session's INTERNAL span, a child
    # of `trace.span_id` (the handshake's SERVER span), from the 101 to the session's end: (span id, WebSocketEnd,
    # closed by, close code, client bytes, upstream bytes, client messages, upstream messages, instance)
    websocket: tuple | None = None

    def __post_init__(self) -> None:  # see DecisionRecord's
        if self.lb is None:
            self.lb = {}
        if self.policies is None:
            self.policies = []
        if self.attempts is None:
            self.attempts = []
        if self.decisions is None:
            self.decisions = []


if not cython.compiled:  # as Python: slotted, like the extension types they compile to (context.pxd)
    TraceContext, DecisionRecord = slotted(TraceContext), slotted(DecisionRecord)
    AttemptRecord, RequestRecord = slotted(AttemptRecord), slotted(RequestRecord)
