"""OTLP protobuf written directly from `span_models`/`log_models`: ExportTraceServiceRequest and
ExportLogsServiceRequest bytes without building SDK or protobuf objects (several times cheaper; the tests
decode the output with the official `opentelemetry-proto` messages to prove it is the same wire format).

Wire format notes: tag = field << 3 | type (0 varint, 1 fixed64, 2 length-delimited, 5 fixed32); attribute
keys are constant, so their encodings are cached.
"""

from __future__ import annotations

import struct
from typing import Any, Iterable

from telemetry.convert import LINK_ATTRS, LogModel, SpanModel

_F64 = struct.Struct("<Q")
_DBL = struct.Struct("<d")
_F32 = struct.Struct("<I")


def _varint(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
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


_key_cache: dict[str, bytes] = {}
# Per repeated-field tag: (key, value) → the whole encoded field (tag + length + KeyValue) for attribute values
# that repeat across requests: layer, method, route, outcome, instance... Unique values (ids, paths) are
# encoded each time and never cached. The dict's own (key, value) item tuples are the cache keys.
_kv_cache: dict[int, dict[tuple[str, Any], bytes]] = {}
_UNIQUE_KEYS = frozenset({"url.path", "url.query", "url.full", "network.peer.port", "gatewatch.request_id",
                          "client.address", "network.peer.address", "gatewatch.lb.in_flight"})
_KV_CACHE_MAX = 20_000


def _kv(tag: int, key: str, value: Any) -> bytes:
    """tag + varint(len) + KeyValue{key, value}."""
    k = _key_cache.get(key)
    if k is None:
        k = _key_cache[key] = _str(0x0A, key)  # key = 1
    body = k + _ld(0x12, _any(value))  # value = 2
    return bytes((tag,)) + _varint(len(body)) + body


def _attrs(tag: int, attrs: dict[str, Any]) -> bytes:
    cache = _kv_cache.get(tag)
    if cache is None:
        cache = _kv_cache[tag] = {}
    out = []
    for item in attrs.items():
        key, value = item
        if key in _UNIQUE_KEYS or type(value) is list:
            out.append(_kv(tag, key, value))
            continue
        hit = cache.get(item)
        if hit is None:
            hit = _kv(tag, key, value)
            if len(cache) >= _KV_CACHE_MAX:
                cache.clear()
            cache[item] = hit
        out.append(hit)
    return b"".join(out)


def _id(tag: int, value: int, size: int) -> bytes:
    return bytes((tag, size)) + value.to_bytes(size, "big")


def encode_span(m: SpanModel) -> bytes:
    parts = [_id(0x0A, m.trace_id, 16), _id(0x12, m.span_id, 8)]  # trace_id = 1, span_id = 2
    if m.parent_span_id:
        parts.append(_id(0x22, m.parent_span_id, 8))  # parent_span_id = 4
    parts.append(_str(0x2A, m.name))  # name = 5
    parts.append(b"\x30" + _varint(m.kind))  # kind = 6
    parts.append(b"\x39" + _F64.pack(m.start_ns))  # start_time_unix_nano = 7 (fixed64)
    parts.append(b"\x41" + _F64.pack(m.end_ns))  # end_time_unix_nano = 8
    parts.append(_attrs(0x4A, m.attributes))  # attributes = 9
    if m.link:
        # links = 13 { trace_id = 1, span_id = 2, attributes = 4, flags = 6: HAS_IS_REMOTE | IS_REMOTE }
        link = _id(0x0A, m.link[0], 16) + _id(0x12, m.link[1], 8) + _attrs(0x22, LINK_ATTRS) + b"\x35" + _F32.pack(0x300)
        parts.append(_ld(0x6A, link))  # links = 13
    if m.error:
        parts.append(_ld(0x7A, b"\x18\x02"))  # status = 15 { code = 3: ERROR }
    # flags = 16: W3C trace flags (sampled) | HAS_IS_REMOTE (0x100) | IS_REMOTE (0x200, a SERVER span's parent
    # is in the calling process)
    parts.append(b"\x85\x01" + _F32.pack(0x301 if m.parent_span_id and m.kind == 2 else 0x101))
    return b"".join(parts)


def encode_log(m: LogModel) -> bytes:
    parts = [
        b"\x09" + _F64.pack(m.time_ns),  # time_unix_nano = 1
        b"\x10\x0d" if m.severity == "WARN" else b"\x10\x09",  # severity_number = 2: WARN 13 / INFO 9
        _str(0x1A, m.severity),  # severity_text = 3
        _ld(0x2A, _any(m.body)),  # body = 5
        _attrs(0x32, m.attributes),  # attributes = 6
        b"\x45" + _F32.pack(1 if m.sampled else 0),  # flags = 8
        _id(0x4A, m.trace_id, 16) if m.trace_id else b"",  # trace_id = 9 (absent: not caused by one request)
        _id(0x52, m.span_id, 8) if m.span_id else b"",  # span_id = 10
        b"\x59" + _F64.pack(m.time_ns),  # observed_time_unix_nano = 11
        _str(0x62, m.event_name),  # event_name = 12
    ]
    return b"".join(parts)


class Envelope:
    """Resource and scope, encoded once per process."""

    def __init__(self, resource_attrs: dict[str, Any], scope_name: str, scope_version: str):
        self.resource = _ld(0x0A, _attrs(0x0A, resource_attrs))  # resource = 1 { attributes = 1 }
        self.scope = _ld(0x0A, _str(0x0A, scope_name) + _str(0x12, scope_version))  # scope = 1 {name, version}

    def traces(self, spans: Iterable[bytes]) -> bytes:
        scope_spans = self.scope + b"".join(_ld(0x12, s) for s in spans)  # spans = 2
        resource_spans = self.resource + _ld(0x12, scope_spans)  # scope_spans = 2
        return _ld(0x0A, resource_spans)  # ExportTraceServiceRequest.resource_spans = 1

    def logs(self, records: Iterable[bytes]) -> bytes:
        scope_logs = self.scope + b"".join(_ld(0x12, r) for r in records)  # log_records = 2
        resource_logs = self.resource + _ld(0x12, scope_logs)  # scope_logs = 2
        return _ld(0x0A, resource_logs)  # ExportLogsServiceRequest.resource_logs = 1
