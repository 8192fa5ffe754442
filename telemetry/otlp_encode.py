"""OTLP protobuf written directly from `span_models`/`log_models`: ExportTraceServiceRequest and
ExportLogsServiceRequest bytes without building SDK or protobuf objects (several times cheaper; the tests
decode the output with the official `opentelemetry-proto` messages to prove it is the same wire format).

Wire format notes: tag = field << 3 | type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32); attribute
keys are constant, so their encodings are cached.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

from gatewatch.telemetry.convert import LINK_ATTRS, Attrs, LogModel, SpanModel, attributes

_F64 = struct.Struct("<Q")
_DBL = struct.Struct("<d")
_F32 = struct.Struct("<I")


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _ld(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _varint(len(payload)) + payload


def _str(tag: int, s: str) -> bytes:
    b = s.encode("utf-8")
    n = len(b)
    if n < 0x80:
        return bytes((tag, n)) + b
    return bytes((tag,)) + _varint(n) + b


def _any(v: Any) -> bytes:
    """An AnyValue message body."""
    if isinstance(v, str):
        return _str(0x0A, v)  # string_value = 1
    if isinstance(v, bool):
        return b"\x10\x01" if v else b"\x10\x00"  # bool_value = 2
    if isinstance(v, int):
        return b"\x18" + _varint(v & 0xFFFFFFFFFFFFFFFF)  # int_value = 3 (two's complement)
    if isinstance(v, float):
        return b"\x21" + _DBL.pack(v)  # double_value = 4
    if isinstance(v, (list, tuple)):
        return _ld(0x2A, b"".join(_ld(0x0A, _any(x)) for x in v))  # array_value = 5 { repeated values = 1 }
    return _str(0x0A, str(v))


_CACHE_MAX = 20_000  # entries per cache
_CACHE_BYTES = 4 * 1024 * 1024  # bytes held per cache (encodings, and their keys' strings again)
_ENTRY_MAX = 4096  # an encoding larger than this is not kept (a long Host or User-Agent is unlikely to repeat)


class _Cache(dict):
    """Encodings by what they encode. Values that reach it can come from clients (Host, User-Agent, event
    attributes), so it is bounded by entries and by bytes: a full cache is emptied and refilled."""

    __slots__ = ("used",)

    def __init__(self) -> None:
        super().__init__()
        self.used = 0

    def keep(self, key: Any, value: Any, size: int) -> None:
        size = 2 * size + 64
        if size > 2 * _ENTRY_MAX:
            return
        if len(self) >= _CACHE_MAX or self.used + size > _CACHE_BYTES:
            self.clear()
            self.used = 0
        self[key] = value
        self.used += size


_key_cache = _Cache()  # attribute key → its encoded `key` field
# Per (repeated-field tag, shape): {(shared values, extra items and their types) → the encoded shared group and
# extras} and {connection values → their encoded group}. A request's spans and logs mostly repeat earlier
# combinations (same route, status, instance and pick; same client connection), so most of their attributes are
# two dict lookups.
_group_cache: dict[tuple[int, Any], tuple[_Cache, _Cache]] = {}
# Per tag: ((key, value), type) → the encoded field, for attributes written from a plain dict (resource, link,
# events, an extra that overrides a shape key).
_kv_cache: dict[int, _Cache] = {}


def _kv(tag: int, key: str, value: Any) -> bytes:
    """tag + varint(len) + KeyValue{key = 1, value = 2}. Strings and ints whose field fits one-byte lengths (most
    of them) are written in one go."""
    k = _key_cache.get(key)
    if k is None:
        k = _str(0x0A, key)
        _key_cache.keep(key, k, len(k))
    t = type(value)
    if t is str:
        b = value.encode("utf-8")
        n = len(b)
        total = len(k) + n + 4
        if total < 0x80:
            return bytes((tag, total)) + k + bytes((0x12, n + 2, 0x0A, n)) + b
    elif t is int and 0 <= value < 0x10000:
        iv = bytes((value,)) if value < 0x80 else _varint(value)
        n = len(iv)
        total = len(k) + n + 3
        if total < 0x80:
            return bytes((tag, total)) + k + bytes((0x12, n + 1, 0x18)) + iv
    body = k + _ld(0x12, _any(value))
    return bytes((tag,)) + _varint(len(body)) + body


def _fields(tag: int, keys: Iterable[str], values: Iterable[Any]) -> bytes:
    return b"".join([_kv(tag, k, v) for k, v in zip(keys, values) if v is not None and v != ""])


def _attrs(tag: int, attrs: dict[str, Any]) -> bytes:
    """A plain dict's attributes, each (key, value) field cached (values that cannot be hashed are not)."""
    cache = _kv_cache.get(tag)
    if cache is None:
        cache = _kv_cache[tag] = _Cache()
    out = []
    for item in attrs.items():
        key = (item, type(item[1]))  # True == 1 == 1.0 in Python, but not on the wire
        try:
            hit = cache.get(key)
        except TypeError:  # a list value
            out.append(_kv(tag, *item))
            continue
        if hit is None:
            hit = _kv(tag, *item)
            cache.keep(key, hit, len(hit))
        out.append(hit)
    return b"".join(out)


def _grouped(tag: int, a: Attrs) -> bytes:
    """`attributes(a)`'s fields: the shared and connection groups and the extras from their caches, the unique
    group written every time."""
    shape, extra = a.shape, a.extra
    if extra and not shape.keys.isdisjoint(extra):  # an extra overrides a shape key: write the merged dict
        return _attrs(tag, attributes(a))
    caches = _group_cache.get((tag, shape))
    if caches is None:
        caches = _group_cache[tag, shape] = (_Cache(), _Cache())
    shared, by_connection = caches
    try:
        # the extras' types are part of the key: True == 1 == 1.0 in Python, but not on the wire
        key = (a.shared, tuple(extra.items()), tuple(map(type, extra.values()))) if extra else a.shared
        hit = shared.get(key)
    except TypeError:  # an unhashable extra value (a policy's list attribute): no caching
        key, hit = None, None
    if hit is None:
        hit = (_fields(tag, shape.shared, a.shared),
               _fields(tag, extra.keys(), extra.values()) if extra else b"")
        if key is not None:
            shared.keep(key, hit, len(hit[0]) + len(hit[1]))
    middle = b""
    if shape.connection:
        middle = by_connection.get(a.connection)
        if middle is None:
            middle = _fields(tag, shape.connection, a.connection)
            by_connection.keep(a.connection, middle, len(middle))
    if shape.unique:
        middle += _fields(tag, shape.unique, a.unique)
    return hit[0] + middle + hit[1]


def _id(tag: int, value: int, size: int) -> bytes:
    return bytes((tag, size)) + value.to_bytes(size, "big")


_KIND_TIMES = struct.Struct("<BBBQBQ")  # kind = 6 (varint < 128), start/end_time_unix_nano = 7/8 (fixed64)
_ERROR = _ld(0x7A, b"\x18\x02")  # status = 15 { code = 3: ERROR }
# flags = 16: W3C trace flags (sampled) | HAS_IS_REMOTE (0x100) | IS_REMOTE (0x200, a SERVER span's parent is in
# the calling process)
_FLAGS_LOCAL = b"\x85\x01" + _F32.pack(0x101)
_FLAGS_REMOTE = b"\x85\x01" + _F32.pack(0x301)
_span_names = _Cache()  # "{method} {route}", "balance {pool}": a few per route


def encode_span(m: SpanModel) -> bytes:
    parts = [b"\x0a\x10", m.trace_id.to_bytes(16, "big"), b"\x12\x08", m.span_id.to_bytes(8, "big")]  # ids 1, 2
    if m.parent_span_id:
        parts.append(_id(0x22, m.parent_span_id, 8))  # parent_span_id = 4
    name = _span_names.get(m.name)
    if name is None:
        name = _str(0x2A, m.name)  # name = 5
        _span_names.keep(m.name, name, len(name))
    parts.append(name)
    parts.append(_KIND_TIMES.pack(0x30, m.kind, 0x39, m.start_ns, 0x41, m.end_ns))
    parts.append(_grouped(0x4A, m.attributes))  # attributes = 9
    if m.link:
        # links = 13 { trace_id = 1, span_id = 2, attributes = 4, flags = 6: HAS_IS_REMOTE | IS_REMOTE }
        link = _id(0x0A, m.link[0], 16) + _id(0x12, m.link[1], 8) + _attrs(0x22, LINK_ATTRS) + b"\x35" + _F32.pack(0x300)
        parts.append(_ld(0x6A, link))
    if m.error:
        parts.append(_ERROR)
    parts.append(_FLAGS_REMOTE if m.parent_span_id and m.kind == 2 else _FLAGS_LOCAL)
    return b"".join(parts)


# severity_number = 2 (WARN 13 / INFO 9) + severity_text = 3
_SEVERITY = {"WARN": b"\x10\x0d" + _str(0x1A, "WARN"), "INFO": b"\x10\x09" + _str(0x1A, "INFO")}
_LOG_FLAGS = {True: b"\x45" + _F32.pack(1), False: b"\x45" + _F32.pack(0)}  # flags = 8: W3C sampled bit
_event_names = _Cache()


_bodies = _Cache()  # "pick pool: picked (pick.round_robin)": a few per route and pool


def _body(text: str) -> bytes:
    """body = 5 (an AnyValue string)."""
    hit = _bodies.get(text)
    if hit is None:
        hit = _ld(0x2A, _any(text))
        if len(text) < 200:  # decision summaries repeat; an event's long text is not kept
            _bodies.keep(text, hit, len(hit))
    return hit


def encode_log(m: LogModel) -> bytes:
    event = _event_names.get(m.event_name)
    if event is None:
        event = _str(0x62, m.event_name)  # event_name = 12
        _event_names.keep(m.event_name, event, len(event))
    time = _F64.pack(m.time_ns)
    return b"".join((
        b"\x09", time,  # time_unix_nano = 1
        _SEVERITY.get(m.severity) or b"\x10\x09" + _str(0x1A, m.severity),
        _body(m.body),
        _grouped(0x32, m.attributes),  # attributes = 6
        _LOG_FLAGS[bool(m.sampled)],
        _id(0x4A, m.trace_id, 16) if m.trace_id else b"",  # trace_id = 9 (absent: not caused by one request)
        _id(0x52, m.span_id, 8) if m.span_id else b"",  # span_id = 10
        b"\x59", time,  # observed_time_unix_nano = 11
        event,
    ))


class Envelope:
    """Resource and scope, encoded once per process."""

    def __init__(self, resource_attrs: dict[str, Any], scope_name: str, scope_version: str):
        self.resource = _ld(0x0A, _attrs(0x0A, resource_attrs))  # resource = 1 { attributes = 1 }
        self.scope = _ld(0x0A, _str(0x0A, scope_name) + _str(0x12, scope_version))  # scope = 1 {name, version}

    def _request(self, items: Iterable[bytes]) -> bytes:
        """{resource_x = 1 {resource = 1, scope_x = 2 {scope = 1, item = 2 ...}}}, the same field numbers for
        traces (spans) and logs (log records); lengths are summed, so the batch is copied once."""
        parts = [b"", b"", self.resource, b"", self.scope]
        size = len(self.scope)
        for item in items:
            n = len(item)
            head = bytes((0x12, n)) if n < 0x80 else b"\x12" + _varint(n)
            parts.append(head)
            parts.append(item)
            size += len(head) + n
        parts[3] = b"\x12" + _varint(size)
        parts[1] = _varint(len(self.resource) + len(parts[3]) + size)
        parts[0] = b"\x0a"
        return b"".join(parts)

    def traces(self, spans: Iterable[bytes]) -> bytes:
        """An ExportTraceServiceRequest: resource_spans = 1 {resource, scope_spans = 2 {scope, spans = 2}}."""
        return self._request(spans)

    def logs(self, records: Iterable[bytes]) -> bytes:
        """An ExportLogsServiceRequest: resource_logs = 1 {resource, scope_logs = 2 {scope, log_records = 2}}."""
        return self._request(records)
