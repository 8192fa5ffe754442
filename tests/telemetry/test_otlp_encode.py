"""The direct OTLP encoder must produce what the official SDK encoder produces for the same spans and logs:
decoded with the official protobuf messages, the two requests are equal field by field."""

from __future__ import annotations

import random

import pytest
from google.protobuf.json_format import MessageToDict
from opentelemetry.exporter.otlp.proto.common._internal import _encode_value
from opentelemetry.exporter.otlp.proto.common._log_encoder import encode_logs
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status
from opentelemetry.sdk.resources import Resource

from gatewatch.telemetry.context import AttemptRecord, DecisionRecord, RequestRecord, start_trace
from gatewatch.telemetry.convert import Converter, attributes, log_models, span_models
from gatewatch.telemetry.names import DecisionKind
from gatewatch.telemetry import otlp_encode
from gatewatch.telemetry.otlp_encode import Envelope, _kv, encode_log, encode_span

RESOURCE = {"service.name": "gw", "service.instance.id": "i-1", "deployment.environment": "test"}


def record(kind: str) -> RequestRecord:
    rng = random.Random(kind)
    inbound = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
    trust = {"continued": "continue", "linked": "link", "root": "continue"}[kind]
    t = start_trace(inbound if kind != "root" else None, None, None, trust, 1.0, rng)
    r = RequestRecord("edge", t, 1_700_000_000_000_000_000, 0.0, "POST", "/api/orders/7", "q=1", "http", "shop",
                      8080, "10.0.0.9", 51234, "1.1", "curl/8", "req-1", "public", route="orders",
                      route_template="/api/orders/{id}", upstream="pool", outcome="upstream_error", status=502,
                      error_type="upstream_reset", end_ns=1_700_000_000_005_000_000)
    if kind != "linked":
        r.balance_span_id = rng.getrandbits(64) or 1
        r.balance_start_ns, r.balance_end_ns = r.start_ns + 10, r.end_ns - 10
        r.lb = {"gatewatch.lb.algorithm": "round_robin", "gatewatch.lb.candidates": 3,
                "gatewatch.lb.excluded": ["a=tried", "b=unhealthy"]}
    r.attempts.append(AttemptRecord(rng.getrandbits(64) or 1, "balancer", "pool", "inst-1", "z1", "10.0.0.5", 9000,
                                    "http://10.0.0.5:9000/api/orders/7?q=1", "POST", 1, r.start_ns + 20,
                                    end_ns=r.end_ns - 20, status=None, error_type="upstream_reset",
                                    peer_address="10.0.0.5", peer_port=9000, outcome="upstream_error",
                                    lb={"gatewatch.lb.weight": 2, "gatewatch.lb.in_flight": 0}))
    r.decisions.append(DecisionRecord(DecisionKind.ROUTE, "orders", "matched", "route.matched", r.start_ns + 1,
                                      t.span_id, {"http.route": "/api/orders/{id}", "ratio": 0.5}))
    r.decisions.append(DecisionRecord(DecisionKind.PICK, "pool", "picked", "pick.round_robin", r.start_ns + 2,
                                      r.balance_span_id or t.span_id, {"gatewatch.instance": "inst-1"}, "balancer"))
    return r


@pytest.mark.parametrize("kind", ["continued", "linked", "root"])
def test_spans_match_the_sdk_encoder(kind):
    r = record(kind)
    sdk = encode_spans(Converter(Resource(RESOURCE), "9.9").request_spans(r))
    ours = ExportTraceServiceRequest()
    ours.ParseFromString(Envelope(RESOURCE, "gatewatch", "9.9").traces(encode_span(m) for m in span_models(r)))
    a = sdk.resource_spans[0]
    b = ours.resource_spans[0]
    assert {kv.key: kv.value for kv in a.resource.attributes} == {kv.key: kv.value for kv in b.resource.attributes}
    assert a.scope_spans[0].scope == b.scope_spans[0].scope
    sdk_spans, our_spans = a.scope_spans[0].spans, b.scope_spans[0].spans
    assert len(our_spans) == len(sdk_spans) == (3 if kind != "linked" else 2)
    for x, y in zip(sdk_spans, our_spans):
        # OTLP puts the W3C trace flags in bits 0-7 of Span.flags; the SDK 1.45 encoder leaves them out, we set
        # the sampled bit. Everything else is identical.
        assert y.flags & 0xFF == 0x01
        y.flags &= ~0xFF
        assert x == y, (x, y)


def test_logs_match_the_sdk_encoder():
    r = record("continued")
    sdk = encode_logs(Converter(Resource(RESOURCE), "9.9").logs([(r, r.decisions)]))
    ours = ExportLogsServiceRequest()
    ours.ParseFromString(Envelope(RESOURCE, "gatewatch", "9.9").logs(encode_log(m) for m in log_models(r)))
    x = sdk.resource_logs[0].scope_logs[0].log_records
    y = ours.resource_logs[0].scope_logs[0].log_records
    assert len(x) == len(y) == 2
    for a, b in zip(x, y):
        assert a == b, (a, b)


def _decoded_attrs(encoded: bytes):
    """Span attributes written by `encode_span`, decoded by the official message, as (key, value) pairs in order."""
    span = Span()
    span.ParseFromString(encoded)
    return [(kv.key, MessageToDict(kv.value)) for kv in span.attributes]


@pytest.mark.parametrize("value", ["", "x", "é" * 40, "a" * 120, "a" * 123, "a" * 124, "a" * 200, "a" * 20_000,
                                   0, 1, 127, 128, 16_383, 16_384, 65_535, 65_536, 2**40, -1, -2**63, True, False,
                                   0.5, ("a", 1, False), [], ["x" * 130]])
@pytest.mark.parametrize("key", ["k", "gatewatch.lb.in_flight", "k" * 150])
def test_every_attribute_value_matches_the_official_encoding(key, value):
    # Short-form writes (one-byte lengths) and the general path meet at the 128-byte boundaries.
    ours = KeyValue()
    ours.ParseFromString(_strip(_kv(0x0A, key, value)))
    theirs = KeyValue(key=key, value=_encode_value(value))
    assert ours == theirs


def _strip(field: bytes) -> bytes:
    """The KeyValue message inside one length-delimited field (tag byte + varint length + body)."""
    pos = 1
    while field[pos] & 0x80:
        pos += 1
    return field[pos + 1:]


def test_the_shared_group_is_reused_and_unique_values_are_not():
    r1, r2 = record("root"), record("root")
    r2.path, r2.request_id, r2.client_port = "/api/orders/8", "req-2", 40000
    a, b = (span_models(r)[0] for r in (r1, r2))
    first, second = _decoded_attrs(encode_span(a)), _decoded_attrs(encode_span(b))
    again = _decoded_attrs(encode_span(a))  # now from the cache
    assert first == again
    assert dict(first)["url.path"] == {"stringValue": "/api/orders/7"}
    assert dict(second)["url.path"] == {"stringValue": "/api/orders/8"}
    assert dict(second)["gatewatch.request_id"] == {"stringValue": "req-2"}
    assert dict(second)["network.peer.port"] == {"intValue": "40000"}
    assert [k for k, _ in first] == list(attributes(a.attributes))
    r2.status, r2.outcome = 200, "proxied"  # another combination of shared values: its own entry
    assert dict(_decoded_attrs(encode_span(span_models(r2)[0])))["http.response.status_code"] == {"intValue": "200"}


def test_an_extra_attribute_overrides_the_shape_key_of_the_same_name():
    r = record("root")
    r.decisions[0].attributes = {"gatewatch.route": "overridden", "gatewatch.consumer": None, "list": ["a", "b"]}
    r.consumer = "alice"
    m = log_models(r)[0]
    expected = attributes(m.attributes)
    assert expected["gatewatch.route"] == "overridden" and "gatewatch.consumer" not in expected
    rec = LogRecord()
    rec.ParseFromString(encode_log(m))
    assert [kv.key for kv in rec.attributes] == list(expected)
    assert {kv.key: MessageToDict(kv.value) for kv in rec.attributes}["gatewatch.route"] == {"stringValue": "overridden"}


def _varied_record(rng: random.Random, i: int) -> RequestRecord:
    """A request record with a random mix of what real ones carry: absent and empty values, long and non-ASCII
    strings, large ints, policies, a balancer span or not, retries with their own picks, and decision attributes
    of every value type (some overriding a shape key)."""
    def text(short: bool = False) -> str:
        return rng.choice(["", "x", "ñandú/ü", "a" * rng.choice([50, 119, 120, 121, 130, 300]), f"v{rng.randrange(5)}"]
                          if not short else ["", "a", f"v{rng.randrange(3)}"])

    def maybe(v):
        return v if rng.random() < 0.7 else rng.choice([None, ""])

    trust = rng.choice(["continue", "link", "ignore"])
    inbound = rng.choice([None, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"])
    t = start_trace(inbound, None, None, trust, 1.0, rng)
    start = 1_700_000_000_000_000_000 + i * 1000
    r = RequestRecord(rng.choice(["edge", "balancer"]), t, start, 0.0, rng.choice(["GET", "POST", "PURGE"]),
                      "/p/" + text(), maybe(f"q={rng.randrange(3)}"), "http", maybe("shop" + text(True)),
                      rng.choice([80, 8080, 65535]), maybe("10.0.0." + str(rng.randrange(3))),
                      rng.choice([1, 127, 128, 40000, 65535]), "1.1", maybe("curl/" + text(True)), f"req-{i}", "public",
                      route=maybe("r" + text(True)), route_template=maybe("/p/{id}"), upstream=maybe("pool"),
                      outcome=rng.choice([None, "proxied", "upstream_error", "client_abort"]),
                      status=rng.choice([None, 200, 404, 502]), error_type=rng.choice([None, "timeout", ""]),
                      end_ns=start + 500, consumer=maybe("alice" + text(True)))
    r.policies = [(f"p{k}", "jwt", rng.choice(["allow", "deny"]), "ok") for k in range(rng.randrange(3))]
    lb = {"gatewatch.lb.algorithm": rng.choice(["round_robin", "maglev"]), "gatewatch.lb.candidates": rng.randrange(4)}
    if rng.random() < 0.5:
        lb["gatewatch.lb.excluded"] = rng.choice([("a=tried",), ["b=unhealthy", "c=ejected"]])
    if rng.random() < 0.3:
        lb["gatewatch.lb.panic"] = True
    r.lb = lb
    if rng.random() < 0.6:
        r.balance_span_id = rng.getrandbits(64) or 1
        r.balance_start_ns, r.balance_end_ns = start + 10, rng.choice([0, start + 400])
    for k in range(rng.randrange(3)):
        r.attempts.append(AttemptRecord(
            rng.getrandbits(64) or 1, "balancer", "pool", f"i{rng.randrange(3)}", maybe("z1"), "10.0.0.5",
            rng.choice([9000, 70000 - 4465]), "http://10.0.0.5:9000/p/" + text(), r.method, k, start + 20,
            end_ns=rng.choice([0, start + 300]), status=rng.choice([None, 200, 503]),
            error_type=rng.choice([None, "connect_refused"]), peer_address=maybe("10.0.0.5"),
            peer_port=rng.choice([None, 9000]), outcome=maybe("proxied"),
            lb=rng.choice([{}, {**lb, "gatewatch.lb.weight": 2, "gatewatch.lb.in_flight": rng.randrange(200)}])))
    for k in range(rng.randrange(4)):
        attrs = rng.choice([
            {}, {"gatewatch.instance": "i1", "gatewatch.zone": None, "gatewatch.lb.weight": -3},
            {"ratio": 0.25, "flag": False, "many": ["x", "y"], "n": 2**40},
            {"gatewatch.route": "overridden", "gatewatch.consumer": None},  # shape keys: the extra wins
            {"long": "é" * 100}])
        r.decisions.append(DecisionRecord(rng.choice(list(DecisionKind)), maybe("rule"), "matched", "why",
                                          start + k, rng.choice([t.span_id, r.balance_span_id or t.span_id]),
                                          attrs, rng.choice([None, "balancer"])))
    return r


def test_varied_records_match_the_sdk_encoder_with_cold_and_warm_caches():
    rng = random.Random(7)
    converter, envelope = Converter(Resource(RESOURCE), "9.9"), Envelope(RESOURCE, "gatewatch", "9.9")
    records = [_varied_record(rng, i) for i in range(300)]
    for attempt in ("cold", "warm"):
        for r in records:
            sdk = encode_spans(converter.request_spans(r)).resource_spans[0].scope_spans[0].spans
            for m in [*span_models(r), *log_models(r)]:  # the cache keys of these groups carry no types
                for v in m.attributes.shared + m.attributes.connection:
                    assert type(v) in (str, int, type(None)) or (type(v) is tuple and
                                                                 all(type(x) is str for x in v)), (m, v)
            ours = ExportTraceServiceRequest()
            ours.ParseFromString(envelope.traces(encode_span(m) for m in span_models(r)))
            spans = ours.resource_spans[0].scope_spans[0].spans
            assert len(spans) == len(sdk)
            for x, y in zip(sdk, spans):
                y.flags &= ~0xFF  # the sampled bit, which the SDK encoder leaves out (see above)
                if x.status == Status():  # the SDK writes an empty status for UNSET, we leave the default out
                    assert not y.HasField("status")
                    x.ClearField("status")
                assert x == y, (attempt, r, x, y)
            if r.decisions:
                sdk_logs = encode_logs(converter.logs([(r, r.decisions)])).resource_logs[0].scope_logs[0].log_records
                ours_logs = ExportLogsServiceRequest()
                ours_logs.ParseFromString(envelope.logs(encode_log(m) for m in log_models(r)))
                assert list(ours_logs.resource_logs[0].scope_logs[0].log_records) == list(sdk_logs), (attempt, r)


def test_equal_values_of_different_types_are_not_confused_by_the_caches():
    # True == 1 == 1.0 and hash alike in Python; on the wire they are bool_value, int_value and double_value.
    for value in (1, True, 1.0, 0, False, 0.0, 1, True):
        r = record("root")
        r.decisions[1].attributes = {"gatewatch.flag": value}
        r.lb = {"gatewatch.lb.candidates": value}
        m = log_models(r)[1]
        rec = LogRecord()
        rec.ParseFromString(encode_log(m))
        assert {kv.key: kv.value for kv in rec.attributes}["gatewatch.flag"] == _encode_value(value)
        balance = span_models(r)[1]
        assert dict(_decoded_attrs(encode_span(balance)))["gatewatch.lb.candidates"] == MessageToDict(
            _encode_value(value))
        event = Envelope({"k": value}, "gatewatch", "9.9").resource
        assert _encode_value(value).SerializeToString() in event


def test_the_caches_stay_bounded_when_clients_send_long_distinct_values():
    # Host and User-Agent reach the shared and connection groups; a client can make every request distinct.
    r = record("root")
    cache = None
    for i in range(3000):
        r.host, r.user_agent = f"h{i}-" + "x" * 2000, f"ua{i}-" + "y" * 1000
        encoded = encode_span(span_models(r)[0])
        assert f"h{i}-".encode() in encoded and f"ua{i}-".encode() in encoded
    for shared, by_connection in otlp_encode._group_cache.values():
        for cache in (shared, by_connection):
            assert cache.used <= otlp_encode._CACHE_BYTES
            assert sum(2 * (len(v) if isinstance(v, bytes) else len(v[0]) + len(v[1])) + 64
                       for v in cache.values()) == cache.used
    assert cache is not None
    r.host = "h" + "x" * 10_000  # too big to keep at all, still encoded
    assert b"x" * 10_000 in encode_span(span_models(r)[0])
