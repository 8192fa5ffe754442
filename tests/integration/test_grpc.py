"""gRPC through Gatewatch (issue 17 part 3; docs/http2.md): a real grpcio server (generic handlers with raw bytes,
no protoc) behind a pool with `protocol: h2`, a real grpcio client in front of an h2c listener.

- unary, server-streaming and bidi calls stream through, trailers (grpc-status, custom trailing metadata) kept;
- an unknown method: the backend's UNIMPLEMENTED passes through;
- an exceeded `grpc-timeout`: Gatewatch answers DEADLINE_EXCEEDED itself (trailers-only, HTTP 200), and cuts a
  response already streaming (trailers grpc-status 4, the instance's stream cancelled);
- no reachable instance: Gatewatch answers UNAVAILABLE (14) itself;
- rpc.system / rpc.service / rpc.method / rpc.grpc.status_code on the SERVER span (OTLP receiver).
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import h2.config
import h2.connection
import h2.events
import pytest

from tests.support.certs import Pki
from tests.support.net import closed_port, edge_port
from tests.support.otlp import OtlpReceiver
from tests.support.runtime import running

SERVICE = "demo.Echo"


def _unary(request: bytes, context) -> bytes:
    context.set_trailing_metadata((("x-trailer", "kept"),))
    return b"echo:" + request


def _stream(request: bytes, context):
    for i in range(int(request)):
        yield b"item-%d" % i


def _bidi(requests, context):
    for r in requests:
        yield r.upper()


def _slow(request: bytes, context) -> bytes:
    time.sleep(1.5)
    return request


DRIP_CANCELLED = threading.Event()


def _drip(request: bytes, context):
    """One message at once, the next only after 5 s, unless the call is cancelled first (noted)."""
    yield b"first"
    end = time.monotonic() + 5
    while context.is_active() and time.monotonic() < end:
        time.sleep(0.02)
    if not context.is_active():
        DRIP_CANCELLED.set()
        return
    yield b"late"


@pytest.fixture(scope="module")
def backend():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    ident = (lambda b: b, lambda b: b)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, *ident),
        "Stream": grpc.unary_stream_rpc_method_handler(_stream, *ident),
        "Bidi": grpc.stream_stream_rpc_method_handler(_bidi, *ident),
        "Slow": grpc.unary_unary_rpc_method_handler(_slow, *ident),
        "Drip": grpc.unary_stream_rpc_method_handler(_drip, *ident),
    }),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    yield port
    server.stop(0)


def config(tmp_path, port: int, telemetry: dict | None = None) -> dict:
    return {"admin": {"address": "127.0.0.1:0"},
            "telemetry": telemetry or {"local_dir": str(tmp_path / "t")},
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                     "routes": [{"name": "echo", "match": {"grpc": {"service": SERVICE}}, "upstream": "grpc",
                                 "retries": {"attempts": 1},
                                 "timeouts": {"connect_s": 1, "response_s": 10, "idle_s": 10}}]},
            "balancer": {"pools": [{"name": "grpc", "protocol": "h2",
                                    "instances": [{"host": "127.0.0.1", "port": port}]}]}}


def calls(port: int) -> dict:
    """The three kinds of call and an unknown method, from a grpcio client (in a thread)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as ch:
        unary = ch.unary_unary(f"/{SERVICE}/Unary")
        reply, call = unary.with_call(b"hi", timeout=10)
        stream = list(ch.unary_stream(f"/{SERVICE}/Stream")(b"5", timeout=10))
        bidi = list(ch.stream_stream(f"/{SERVICE}/Bidi")(iter([b"a", b"b", b"c"]), timeout=10))
        try:
            ch.unary_unary(f"/{SERVICE}/Nope")(b"", timeout=10)
            unknown = None
        except grpc.RpcError as err:
            unknown = err.code()
        return {"unary": reply, "trailers": dict(call.trailing_metadata()), "stream": stream, "bidi": bidi,
                "unknown": unknown}


def raw_call(port: int, path: str, timeout: str | None) -> dict:
    """A gRPC unary call by hand (h2 library), so the client sets no deadline of its own: what came back is
    what Gatewatch sent."""
    import socket
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
    conn.initiate_connection()
    headers = [(":method", "POST"), (":scheme", "http"), (":authority", "gw"), (":path", path),
               ("content-type", "application/grpc"), ("te", "trailers")]
    if timeout is not None:
        headers.append(("grpc-timeout", timeout))
    conn.send_headers(1, headers)
    conn.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    s.sendall(conn.data_to_send())
    got: dict = {"headers": [], "ended_with_headers": False, "data": b""}
    try:
        while True:
            data = s.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                    got["headers"] += ev.headers
                    got["ended_with_headers"] = ev.stream_ended is not None
                if isinstance(ev, h2.events.DataReceived):
                    got["data"] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                if isinstance(ev, h2.events.StreamEnded):
                    return {**got, **{k: v for k, v in got["headers"]}}
            s.sendall(conn.data_to_send())
    finally:
        s.close()
    return got


async def test_unary_streaming_bidi_and_unknown_method_through_gatewatch(tmp_path, backend):
    with OtlpReceiver() as rx:
        telemetry = {"otlp": {"endpoint": rx.grpc_endpoint, "protocol": "grpc"}, "export_interval_s": 0.1}
        async with running(config(tmp_path, backend, telemetry)) as rt:
            got = await asyncio.to_thread(calls, edge_port(rt))
            assert got["unary"] == b"echo:hi" and got["trailers"]["x-trailer"] == "kept"
            assert got["stream"] == [b"item-%d" % i for i in range(5)]
            assert got["bidi"] == [b"A", b"B", b"C"]
            assert got["unknown"] == grpc.StatusCode.UNIMPLEMENTED  # the backend's, passed through
            assert await asyncio.to_thread(rx.data.wait_for, lambda spans, _: sum(
                s["kind"] == "SERVER" for s in spans) >= 4)
        servers = {s["attributes"].get("rpc.method"): s["attributes"] for s in rx.data.snapshot()[0]
                   if s["kind"] == "SERVER"}
        assert servers["Unary"]["rpc.system"] == "grpc" and servers["Unary"]["rpc.service"] == SERVICE
        assert servers["Unary"]["rpc.grpc.status_code"] == 0
        assert servers["Unary"]["network.protocol.version"] == "2"
        assert servers["Stream"]["rpc.grpc.status_code"] == 0 and servers["Bidi"]["rpc.grpc.status_code"] == 0
        assert servers["Nope"]["rpc.grpc.status_code"] == 12


async def test_grpc_to_instances_over_tls_by_alpn(tmp_path):
    """A pool with `protocol: h2` and `tls`: h2 chosen by ALPN (RFC 9113 §3.2), the certificate verified."""
    pki = Pki(tmp_path / "ca")
    leaf = pki.leaf("grpc", ["grpc.example.test", "127.0.0.1"])
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, {
        "Unary": grpc.unary_unary_rpc_method_handler(_unary, lambda b: b, lambda b: b)}),))
    creds = grpc.ssl_server_credentials([(Path(leaf.key).read_bytes(), Path(leaf.cert).read_bytes())])
    port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    try:
        cfg = config(tmp_path, port)
        cfg["balancer"]["pools"][0]["tls"] = {"ca_file": pki.ca_file, "server_name": "grpc.example.test"}
        async with running(cfg) as rt:
            with grpc.insecure_channel(f"127.0.0.1:{edge_port(rt)}") as ch:
                reply = await asyncio.to_thread(ch.unary_unary(f"/{SERVICE}/Unary"), b"tls", timeout=10)
            assert reply == b"echo:tls"
    finally:
        server.stop(0)


async def test_an_exceeded_grpc_timeout_is_answered_deadline_exceeded(tmp_path, backend):
    async with running(config(tmp_path, backend)) as rt:
        got = await asyncio.to_thread(raw_call, edge_port(rt), f"/{SERVICE}/Slow", "200m")
        assert got[":status"] == "200" and got["grpc-status"] == "4" and got["ended_with_headers"]  # trailers-only
        got = await asyncio.to_thread(raw_call, edge_port(rt), f"/{SERVICE}/Slow", "20S")  # long enough
        assert got["grpc-status"] == "0"


async def test_the_deadline_cuts_a_response_already_streaming(tmp_path, backend):
    """grpc-timeout passes mid-stream: the instance's stream is cancelled (RST_STREAM CANCEL, seen by the grpcio
    server as an inactive call) and the client's ends with trailers grpc-status 4 after the data relayed so far."""
    DRIP_CANCELLED.clear()
    async with running(config(tmp_path, backend)) as rt:
        # 2 s: room for the first message on a loaded machine (a 300 ms deadline once expired before it came),
        # well before the instance's second one at 5 s
        got = await asyncio.to_thread(raw_call, edge_port(rt), f"/{SERVICE}/Drip", "2S")
    assert got[":status"] == "200" and b"first" in got["data"] and b"late" not in got["data"]
    assert got["grpc-status"] == "4" and got["ended_with_headers"]
    assert await asyncio.to_thread(DRIP_CANCELLED.wait, 10)


async def test_no_reachable_instance_is_answered_unavailable(tmp_path):
    async with running(config(tmp_path, closed_port())) as rt:
        got = await asyncio.to_thread(raw_call, edge_port(rt), f"/{SERVICE}/Unary", None)
        assert got[":status"] == "200" and got["grpc-status"] == "14" and got["ended_with_headers"]
        assert got["grpc-message"]
        with grpc.insecure_channel(f"127.0.0.1:{edge_port(rt)}") as ch, pytest.raises(grpc.RpcError) as err:
            await asyncio.to_thread(ch.unary_unary(f"/{SERVICE}/Unary"), b"x", timeout=10)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize(("value", "seconds"), [
    ("1H", 3600.0), ("2M", 120.0), ("3S", 3.0), ("250m", 0.25), ("5u", 5e-6), ("7n", 7e-9), ("99999999S", 99999999.0),
    (None, None), ("", None), ("S", None), ("10", None), ("1x", None), ("123456789S", None), ("-1S", None),
    ("1.5S", None), ("１S", None),
])
def test_grpc_timeout_parsing(value, seconds):
    from gatewatch.proxy.grpc import parse_timeout
    assert parse_timeout(value) == (pytest.approx(seconds) if seconds else seconds)


@pytest.mark.parametrize(("status", "code"), [(401, 16), (403, 7), (404, 12), (429, 14), (502, 14), (503, 14),
                                              (504, 4), (413, 8), (500, 2)])
def test_local_errors_map_http_statuses_to_grpc_codes(status, code):
    from gatewatch.proxy.grpc import local_error
    http_status, headers, body = local_error(status, "no healthy upstream: 100% down")
    assert http_status == 200 and body == b""
    assert dict(headers)["grpc-status"] == str(code)
    assert dict(headers)["grpc-message"] == "no healthy upstream: 100%25 down"  # percent-encoded


def test_grpc_match_sugar_and_its_errors():
    from gatewatch.config import ConfigError, parse_config
    cfg = config(Path("/tmp"), 1)
    route = cfg["edge"]["routes"][0]
    route["match"] = {"grpc": {"service": SERVICE, "method": "Unary"}}
    assert parse_config(cfg).edge.routes[0].match.path.exact == f"/{SERVICE}/Unary"
    for bad in ({"grpc": {"service": "demo/Echo"}}, {"grpc": {"method": "X"}},
                {"grpc": {"service": SERVICE}, "path": {"prefix": "/"}}):
        route["match"] = bad
        with pytest.raises(ConfigError) as err:
            parse_config(cfg)
        assert "edge.routes[0].match" in str(err.value)
