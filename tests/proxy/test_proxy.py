"""Proxy behaviour of the data path, in-process on real loopback sockets: errors, headers, paths, framing."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from tests.support.net import closed_port, edge_port, raw_request, start_app
from tests.support.runtime import in_process_config, running

# Every behaviour here must hold for both I/O implementations: the engine must not notice which one runs.
pytestmark = pytest.mark.parametrize("data_plane", ["fast", "aiohttp"])


async def echo(request: web.Request) -> web.Response:
    return web.json_response({"raw_path": request.raw_path, "method": request.method,
                              "headers": [[k, v] for k, v in request.headers.items()]})


@pytest.fixture
async def echo_backend():
    runner, port = await start_app(echo)
    yield port
    await runner.cleanup()


async def test_no_route_is_404_with_json_outcome_and_request_id(data_plane, echo_backend, tmp_path):
    async with running(in_process_config([echo_backend], tmp_path, data_plane=data_plane)) as rt, aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{edge_port(rt)}/nothing-here") as r:
            body = await r.json()
            assert r.status == 404
            assert body["error"]["outcome"] == "no_route"
            assert body["error"]["request_id"] == r.headers["X-Request-Id"]
        async with s.get(f"http://127.0.0.1:{edge_port(rt)}/nothing", headers={"X-Request-Id": "abc-123"}) as r:
            assert (await r.json())["error"]["request_id"] == "abc-123"


@pytest.mark.parametrize("error,status,outcome", [
    ("refused", 502, "upstream_connect_error"),
    ("timeout", 504, "upstream_timeout"),
    ("garbage", 502, "upstream_error"),
])
async def test_upstream_failures_map_to_status_and_outcome(data_plane, tmp_path, error, status, outcome):
    runner = None
    server = None
    if error == "refused":
        port = closed_port()
    elif error == "timeout":
        async def slow(request):
            await asyncio.sleep(1.5)  # past response_s (0.5 s); short, because cleanup waits for it
            return web.Response(text="late")
        runner, port = await start_app(slow)
    else:
        async def garbage(reader, writer):
            await reader.read(1024)
            writer.write(b"NOT HTTP AT ALL\r\n\r\n")
            await writer.drain()
            writer.close()
        server = await asyncio.start_server(garbage, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
    cfg = in_process_config([port], tmp_path, data_plane=data_plane)
    cfg["edge"]["routes"][0]["timeouts"]["response_s"] = 0.5
    try:
        async with running(cfg) as rt, aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{edge_port(rt)}/api/x") as r:
                body = await r.json()
                assert r.status == status
                assert body["error"]["outcome"] == outcome
            text = rt.metrics.exposition(None)[0].decode()
            assert f'gatewatch_outcome="{outcome}"' in text
    finally:
        if runner:
            await runner.cleanup()
        if server:
            server.close()


async def test_forwarding_headers_and_hop_by_hop(data_plane, echo_backend, tmp_path):
    async with running(in_process_config([echo_backend], tmp_path, data_plane=data_plane)) as rt:
        raw = (b"GET /api/h HTTP/1.1\r\nHost: shop.example\r\nConnection: keep-alive, X-Secret\r\n"
               b"X-Secret: s3cret\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\nX-Forwarded-For: 10.1.1.1\r\n"
               b"X-Forwarded-Proto: https\r\nVia: 1.1 outer\r\nUser-Agent: t\r\nContent-Length: 0\r\n"
               b"Connection: close\r\n\r\n")
        resp = await raw_request(edge_port(rt), raw)
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    got = {k.lower(): v for k, v in json.loads(body)["headers"]}
    assert "x-secret" not in got and "keep-alive" not in got and "te" not in got
    assert got["host"] == "shop.example"
    assert got["x-forwarded-for"] == "10.1.1.1, 127.0.0.1"
    assert got["x-forwarded-proto"] == "http"  # untrusted client value overwritten on an edge listener
    assert got["x-forwarded-host"] == "shop.example"
    assert got["via"] == "1.1 outer, 1.1 gatewatch"
    assert len(got["x-request-id"]) == 32
    assert got["traceparent"].startswith("00-")
    assert "accept-encoding" not in got and got["user-agent"] == "t"  # the client library added nothing


@pytest.mark.parametrize("sent,upstream", [
    ("/api/a/../b", "/api/b"),
    ("/api/%2e%2e/api/c", "/api/c"),
    ("/api/a%41b/%7euser", "/api/aAb/~user"),
    ("/api/x%c3%a9?q=a%20b&r=%2F", "/api/x%C3%A9?q=a%20b&r=%2F"),  # the query goes as it came
    ("/api//double", "/api/double"),  # merge_slashes (the encoded-slash rules: tests/io/test_refusals.py)
])
async def test_canonical_path_is_what_upstream_receives(data_plane, echo_backend, tmp_path, sent, upstream):
    async with running(in_process_config([echo_backend], tmp_path, data_plane=data_plane)) as rt:
        resp = await raw_request(edge_port(rt), f"GET {sent} HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n".encode())
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), resp
    assert json.loads(body)["raw_path"] == upstream


async def test_dot_segments_cannot_escape_a_route(data_plane, echo_backend, tmp_path):
    async with running(in_process_config([echo_backend], tmp_path, data_plane=data_plane)) as rt:
        resp = await raw_request(edge_port(rt), b"GET /api/../admin HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 404")


async def test_invalid_path_encoding_is_400(data_plane, echo_backend, tmp_path):
    async with running(in_process_config([echo_backend], tmp_path, data_plane=data_plane)) as rt:
        resp = await raw_request(edge_port(rt), b"GET /api/%zz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    assert resp.startswith(b"HTTP/1.1 400")
    assert b'"bad_request"' in resp


async def test_strip_prefix_rewrite(data_plane, echo_backend, tmp_path):
    async with running(in_process_config([echo_backend], tmp_path, data_plane=data_plane, rewrite={"strip_prefix": "/api"})) as rt:
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{edge_port(rt)}/api/v1/x?y=1") as r:
            assert (await r.json())["raw_path"] == "/v1/x?y=1"
        async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{edge_port(rt)}/api") as r:
            assert (await r.json())["raw_path"] == "/"


async def test_no_redirect_followed_and_no_decompression(data_plane, tmp_path):
    import gzip

    async def h(request):
        if request.path.endswith("/redirect"):
            return web.Response(status=302, headers={"Location": "/api/elsewhere"})
        return web.Response(body=gzip.compress(b"hello" * 100), headers={"Content-Encoding": "gzip"})

    runner, port = await start_app(h)
    try:
        async with running(in_process_config([port], tmp_path, data_plane=data_plane)) as rt, aiohttp.ClientSession(auto_decompress=False) as s:
            async with s.get(f"http://127.0.0.1:{edge_port(rt)}/api/redirect", allow_redirects=False) as r:
                assert r.status == 302 and r.headers["Location"] == "/api/elsewhere"
            async with s.get(f"http://127.0.0.1:{edge_port(rt)}/api/gz") as r:
                raw = await r.read()
                assert r.headers["Content-Encoding"] == "gzip"
                assert gzip.decompress(raw) == b"hello" * 100
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_upstream_death_mid_body_aborts_the_client(data_plane, tmp_path, framing):
    async def dies(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        if framing == "content-length":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 100_000)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                         + b"186a0\r\n" + b"x" * 100_000 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.1)
        writer.transport.abort()

    server = await asyncio.start_server(dies, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with running(in_process_config([port], tmp_path, data_plane=data_plane)) as rt:
            async with aiohttp.ClientSession() as s:
                with pytest.raises(aiohttp.ClientPayloadError):
                    async with s.get(f"http://127.0.0.1:{edge_port(rt)}/api/big") as r:
                        assert r.status == 200
                        await r.read()
            await asyncio.sleep(0.1)
            text = rt.metrics.exposition(None)[0].decode()
            assert 'gatewatch_outcome="upstream_error"' in text
    finally:
        server.close()


async def test_expect_100_continue_is_answered_and_body_streams(data_plane, echo_backend, tmp_path):
    async def sink(request):
        data = await request.read()
        return web.json_response({"n": len(data)})

    runner, port = await start_app(sink)
    try:
        async with running(in_process_config([port], tmp_path, data_plane=data_plane)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
            writer.write(b"POST /api/up HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            await writer.drain()
            interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert interim.startswith(b"HTTP/1.1 100")
            writer.write(b"hello")
            await writer.drain()
            final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert final.startswith(b"HTTP/1.1 200")
            writer.close()
            # Refused before the body is read: the final status comes instead of 100 Continue.
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
            writer.write(b"POST /nope HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
            await writer.drain()
            first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            assert first.startswith(b"HTTP/1.1 404")
            writer.close()
    finally:
        await runner.cleanup()


async def test_client_abort_is_recorded(data_plane, tmp_path):
    async def slow(request):
        await asyncio.sleep(1.0)
        return web.Response(text="late")

    runner, port = await start_app(slow)
    try:
        async with running(in_process_config([port], tmp_path, data_plane=data_plane)) as rt:
            reader, writer = await asyncio.open_connection("127.0.0.1", edge_port(rt))
            writer.write(b"GET /api/slow HTTP/1.1\r\nHost: h\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.transport.abort()
            for _ in range(40):
                await asyncio.sleep(0.05)
                if 'gatewatch_outcome="client_abort"' in rt.metrics.exposition(None)[0].decode():
                    break
            assert 'gatewatch_outcome="client_abort"' in rt.metrics.exposition(None)[0].decode()
    finally:
        await runner.cleanup()


UNPARSEABLE = [
    (b"GET /api HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400,
     "framing_conflict"),
    (b"GET /api HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n", 431, "header_too_large"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, "uri_too_long"),
    (b"G@T /api HTTP/1.1\r\nHost: h\r\n\r\n", 400, "invalid_method"),
    (b"GET /api HTTP/1.1\r\n\r\n", 400, "invalid_host"),
    (b"POST /api HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n", 501, "unsupported_transfer_coding"),
]


async def test_unparseable_requests_are_answered_and_recorded_alike(data_plane, echo_backend, tmp_path, otlp):
    """Both listeners refuse what they cannot parse with the same status and `error.type`, the engine records
    each one (the Rejecter), and the answer is the same JSON naming the outcome and the request id."""
    cfg = in_process_config([echo_backend], tmp_path, data_plane=data_plane)
    async with running(cfg, env=otlp.env("http/protobuf")) as rt:
        for raw, status, _ in UNPARSEABLE:
            resp = await raw_request(edge_port(rt), raw)
            head, _, body = resp.partition(b"\r\n\r\n")
            assert head.split(b" ", 2)[1] == b"%d" % status, (raw[:40], head[:100])
            error = json.loads(body)["error"]
            assert (error["outcome"], error["status"]) == ("bad_request", status)
            assert b"X-Request-Id: " + error["request_id"].encode() in head
    # The method is unknown (it could not be parsed): http.request.method _OTHER, span named "HTTP" (semconv).
    assert otlp.data.wait_for(lambda spans, logs: len([s for s in spans if s["name"] == "HTTP"]) == len(UNPARSEABLE))
    got = sorted((s["attributes"]["http.response.status_code"], s["attributes"]["error.type"])
                 for s in otlp.data.snapshot()[0] if s["name"] == "HTTP")
    assert got == sorted((status, reason) for _, status, reason in UNPARSEABLE)
