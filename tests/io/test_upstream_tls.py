"""TLS from Gatewatch to its upstreams (issue 16 §3), with real certificates (`tests.support.certs`) and real TLS
backends (aiohttp on loopback), on both data planes: verified by default, a private CA by `ca_file`, SNI and the
name checked by `server_name`, mTLS by `client_cert`/`client_key`, and every handshake failure its own outcome,
`upstream_tls_error` with the reason, never a refused connection. Health checks use the same settings."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl

import pytest
from aiohttp import web

from gatewatch.config import ConfigError, parse_config
from gatewatch.telemetry.convert import attributes, span_models
from tests.support.certs import Pki
from tests.support.net import edge_port, raw_request
from tests.support.runtime import running

PLANES = pytest.mark.parametrize("plane", ["fast", "aiohttp"])


async def tls_backend(cert, *, client_ca: str | None = None, max_version=None):
    """An aiohttp server over TLS on loopback answering `who` with the client certificate's subject."""

    async def handler(request: web.Request) -> web.Response:
        peer = request.transport.get_extra_info("peercert") if request.transport else None
        subject = dict(x[0] for x in peer["subject"]) if peer else {}
        return web.json_response({"tls": True, "client": subject.get("commonName")})

    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(cert.cert, cert.key)
    if client_ca:
        ctx.load_verify_locations(client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    if max_version:
        ctx.maximum_version = max_version
    app = web.Application()
    app.router.add_get("/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    return runner, site._server.sockets[0].getsockname()[1]


def config(tmp_path, port: int, tls: dict | None, plane: str = "fast", health: dict | None = None) -> dict:
    pool = {"name": "secure", "instances": [{"id": "b0", "host": "127.0.0.1", "port": port}]}
    if tls is not None:
        pool["tls"] = tls
    if health:
        pool["health_check"] = health
    return {"data_plane": plane, "admin": {"address": "127.0.0.1:0"},
            "telemetry": {"local_dir": str(tmp_path / "t")},
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                     "routes": [{"name": "r", "upstream": "secure", "timeouts": {"connect_s": 2},
                                 "retries": {"attempts": 1}}]},
            "balancer": {"pools": [pool]}}


async def get(rt) -> tuple[int, dict]:
    raw = await raw_request(edge_port(rt), b"GET /who HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ")[1])
    if b"chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return status, json.loads(body)


def outcomes(rt) -> dict[str, float]:
    text = rt.metrics.exposition(None)[0].decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("http_server_request_duration_seconds_count{"):
            outcome = line.split('gatewatch_outcome="')[1].split('"')[0]
            out[outcome] = out.get(outcome, 0) + float(line.rsplit(" ", 1)[1])
    return {k: v for k, v in out.items() if v}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = Pki(d / "ca"), Pki(d / "other", name="Unrelated CA")
    return {"ca": ca, "other": other, "server": ca.leaf("server"), "wrong_name": ca.leaf("wrong", ["elsewhere.test"]),
            "named": ca.leaf("named", ["api.internal.test"]), "expired": ca.leaf("expired", expired=True),
            "client": ca.leaf("client", ["gatewatch-edge"], client=True),
            "stranger": other.leaf("stranger", ["intruder"], client=True)}


@PLANES
async def test_verified_with_the_configured_ca(tmp_path, pki, plane):
    runner, port = await tls_backend(pki["server"])
    try:
        async with running(config(tmp_path, port, {"ca_file": pki["ca"].ca_file}, plane)) as rt:
            assert await get(rt) == (200, {"tls": True, "client": None})
    finally:
        await runner.cleanup()


@PLANES
@pytest.mark.parametrize(("cert", "tls", "failure"), [
    ("server", {}, "unknown_ca"),  # the system's CAs do not know the test CA
    ("server", {"ca_file": "other"}, "unknown_ca"),
    ("wrong_name", {"ca_file": "ca"}, "name_mismatch"),
    ("named", {"ca_file": "ca", "server_name": "other.internal.test"}, "name_mismatch"),
    ("expired", {"ca_file": "ca"}, "expired"),
])
async def test_certificate_failures_are_tls_errors_that_say_why(tmp_path, pki, plane, cert, tls, failure):
    tls = {k: (pki[v].ca_file if k == "ca_file" else v) for k, v in tls.items()}
    runner, port = await tls_backend(pki[cert])
    try:
        async with running(config(tmp_path, port, tls, plane)) as rt:
            status, body = await get(rt)
            assert status == 502
            assert body["error"]["outcome"] == "upstream_tls_error"
            assert f"({failure})" in body["error"]["message"]
            assert outcomes(rt) == {"upstream_tls_error": 1}  # never upstream_connect_error
            if plane == "fast":  # the failed connection is no longer counted against the pool's limit
                pools = rt.forwarder._pools.values()  # noqa: SLF001 -- the accounting under test
                for _ in range(50):
                    if sum(p.open for p in pools) == 0:
                        break
                    await asyncio.sleep(0.02)
                assert [p.open for p in pools] == [0]
    finally:
        await runner.cleanup()


@PLANES
async def test_server_name_sets_sni_and_the_name_verified(tmp_path, pki, plane):
    runner, port = await tls_backend(pki["named"])
    try:
        tls = {"ca_file": pki["ca"].ca_file, "server_name": "api.internal.test"}
        async with running(config(tmp_path, port, tls, plane)) as rt:
            assert (await get(rt))[0] == 200
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def openssl_server(pki, *extra: str, verify_client: bool = True):
    """`openssl s_server`, by default requiring a client certificate from the test CA: a real TLS stack that
    sends the alert when it refuses a handshake (Python's own server just closes)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = await asyncio.create_subprocess_exec(
        "openssl", "s_server", "-accept", f"127.0.0.1:{port}", "-cert", pki["server"].cert, "-key",
        pki["server"].key, "-CAfile", pki["ca"].ca_file, "-www", "-quiet",
        *(("-Verify", "1", "-verify_return_error") if verify_client else ()), *extra, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.05)
        yield port
    finally:
        proc.kill()
        await proc.wait()


@PLANES
async def test_mtls_to_the_upstream(tmp_path, pki, plane):
    runner, port = await tls_backend(pki["server"], client_ca=pki["ca"].ca_file)
    try:
        good = {"ca_file": pki["ca"].ca_file, "client_cert": pki["client"].cert, "client_key": pki["client"].key}
        async with running(config(tmp_path, port, good, plane)) as rt:
            assert await get(rt) == (200, {"tls": True, "client": "gatewatch-edge"})
    finally:
        await runner.cleanup()


@PLANES
@pytest.mark.parametrize("version", ["-tls1_3", "-tls1_2"])
@pytest.mark.parametrize("client", [None, "stranger"], ids=["no-client-cert", "untrusted-client-cert"])
async def test_a_refused_client_certificate_is_a_tls_error(tmp_path, pki, plane, version, client):
    """In TLS 1.3 the client's handshake is over before the server judges its certificate: the refusal is an
    alert on the first read (RFC 8446 §4.4.2.4), still reported as the TLS failure it is."""
    tls = {"ca_file": pki["ca"].ca_file}
    if client:
        tls.update(client_cert=pki[client].cert, client_key=pki[client].key)
    # TLS 1.2 with no certificate at all: OpenSSL's server answers a bare handshake_failure alert, which could
    # as well be a cipher mismatch, so it is reported as the generic failure it is.
    expected = "handshake_failed" if (version, client) == ("-tls1_2", None) else "client_cert_rejected"
    async with openssl_server(pki, version) as port, running(config(tmp_path, port, tls, plane)) as rt:
        status, body = await get(rt)
        assert (status, body["error"]["outcome"]) == (502, "upstream_tls_error"), body
        assert f"({expected})" in body["error"]["message"], body


@PLANES
async def test_min_version_above_what_the_upstream_speaks(tmp_path, pki, plane):
    tls = {"ca_file": pki["ca"].ca_file, "min_version": "1.3"}
    async with openssl_server(pki, "-tls1_2", verify_client=False) as port, \
            running(config(tmp_path, port, tls, plane)) as rt:
        status, body = await get(rt)
        assert (status, body["error"]["outcome"]) == (502, "upstream_tls_error")
        assert "(protocol_version)" in body["error"]["message"], body


@PLANES
async def test_plaintext_upstream_behind_a_tls_pool(tmp_path, pki, plane):
    async def plain(reader, writer):
        await reader.read(100)
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(plain, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        async with running(config(tmp_path, port, {"ca_file": pki["ca"].ca_file}, plane)) as rt:
            status, body = await get(rt)
            assert (status, body["error"]["outcome"]) == (502, "upstream_tls_error")
            assert "(not_tls)" in body["error"]["message"], body
    finally:
        server.close()


async def test_health_checks_use_the_pool_tls(tmp_path, pki, monkeypatch):
    from gatewatch.balancer import checker
    seen: list[tuple[bool, str]] = []
    real = checker.probe_http  # what each probe found (Pool, compiled, is an extension type: not patchable)

    async def probe_http(*args, **kwargs):
        ok, detail = await real(*args, **kwargs)
        seen.append((ok, detail))
        return ok, detail

    monkeypatch.setattr(checker, "probe_http", probe_http)
    runner, port = await tls_backend(pki["server"])
    health = {"type": "http", "path": "/who", "interval_s": 0.1, "timeout_s": 0.1}
    try:
        async with running(config(tmp_path, port, {"ca_file": pki["ca"].ca_file}, health=health)) as rt:
            await asyncio.sleep(0.6)
            assert seen and all(s == (True, "status 200") for s in seen), seen
            assert (await get(rt))[0] == 200
        seen.clear()
        async with running(config(tmp_path, port, {"ca_file": pki["other"].ca_file}, health=health)):
            await asyncio.sleep(0.6)
        assert seen and all(not ok and detail.startswith("tls_error") for ok, detail in seen), seen
    finally:
        await runner.cleanup()


def test_the_client_span_says_which_tls_check_failed():
    from gatewatch.telemetry.context import AttemptRecord, RequestRecord, TraceContext
    trace = TraceContext(trace_id=1, span_id=2, parent_span_id=None, sampled=True, treatment="new")
    attempt = AttemptRecord(span_id=3, layer="edge", upstream="secure", instance="b0", zone=None, host="127.0.0.1",
                            port=9, url_full="https://127.0.0.1:9/", method="GET", resend_count=0, start_ns=1,
                            end_ns=2, error_type="upstream_tls_error", outcome="upstream_tls_error",
                            tls_failure="unknown_ca")
    rec = RequestRecord(layer="edge", trace=trace, start_ns=1, start_mono=0.0, method="GET", path="/", query="",
                        scheme="http", host="h", server_port=80, client_address="127.0.0.1", client_port=1,
                        protocol_version="1.1", user_agent=None, request_id="r", listener="public",
                        outcome="upstream_tls_error", status=502, error_type="upstream_tls_error", end_ns=2,
                        attempts=[attempt])
    [_, client] = span_models(rec)
    attrs = attributes(client.attributes)
    assert attrs["gatewatch.tls.failure"] == "unknown_ca"
    assert attrs["error.type"] == "upstream_tls_error"


@pytest.mark.parametrize(("tls", "field", "words"), [
    ({"ca_file": "/nonexistent/ca.pem"}, "balancer.pools[0].tls", "ca_file: cannot load"),
    ({"client_cert": "CLIENT"}, "balancer.pools[0].tls", "go together"),
    ({"verify": False, "ca_file": "CA"}, "balancer.pools[0].tls", "ignored"),
    ({"min_version": "1.1"}, "balancer.pools[0].tls.min_version", "'1.2' or '1.3'"),
    ({"client_cert": "CLIENT", "client_key": "WRONGKEY"}, "balancer.pools[0].tls", "key values mismatch"),
])
def test_bad_tls_settings_are_config_errors_naming_the_field(tmp_path, pki, tls, field, words):
    subst = {"CLIENT": pki["client"].cert, "WRONGKEY": pki["server"].key, "CA": pki["ca"].ca_file}
    tls = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in tls.items()}
    with pytest.raises(ConfigError) as err:
        parse_config(config(tmp_path, 9, tls))
    text = "\n".join(err.value.problems)
    assert field in text and words in text, text


def test_tls_on_a_plain_http_url_upstream_is_a_config_error(tmp_path, pki):
    cfg = {"admin": {"address": "127.0.0.1:0"},
           "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                    "routes": [{"name": "r", "upstream": "u"}],
                    "upstreams": [{"name": "u", "url": "http://127.0.0.1:9", "tls": {"ca_file": pki["ca"].ca_file}}]}}
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert "https:// url only" in "\n".join(err.value.problems)


@PLANES
async def test_url_upstream_with_a_private_ca(tmp_path, pki, plane):
    runner, port = await tls_backend(pki["server"])
    cfg = {"data_plane": plane, "admin": {"address": "127.0.0.1:0"}, "telemetry": {"local_dir": str(tmp_path / "t")},
           "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                    "routes": [{"name": "r", "upstream": "u"}],
                    "upstreams": [{"name": "u", "url": f"https://127.0.0.1:{port}",
                                   "tls": {"ca_file": pki["ca"].ca_file}}]}}
    try:
        async with running(cfg) as rt:
            assert await get(rt) == (200, {"tls": True, "client": None})
    finally:
        await runner.cleanup()


async def test_the_attempt_says_how_long_the_handshake_took_and_what_was_negotiated(tmp_path, pki):
    """A new connection's TCP connect and TLS handshake are timed apart; every attempt on a TLS connection, new or
    pooled, carries the negotiated version and cipher (OTel `tls.protocol.version`, `tls.cipher`)."""
    from gatewatch.io.fast_forwarder import RawForwarder
    from gatewatch.io.interfaces import UpstreamRequest
    from gatewatch.io.tls import UpstreamTLS, client_context
    from gatewatch.telemetry.context import AttemptRecord

    runner, port = await tls_backend(pki["server"])
    forwarder = RawForwarder({})
    forwarder.set_tls({"secure": UpstreamTLS(client_context(pki["ca"].ca_file))})
    request = UpstreamRequest("GET", "127.0.0.1", port, "https", "/who", (("Host", "h"),), False)
    try:
        timings = []
        for _ in range(2):
            t = AttemptRecord(span_id=1, layer="edge", upstream="secure", instance="b0", zone=None, host="127.0.0.1",
                              port=port, url_full="", method="GET", resend_count=0, start_ns=0)
            response = await forwarder.send("secure", request, None, 2.0, 2.0, 2.0, t)
            assert b"".join([c async for c in response.body()]) and response.status == 200
            response.close()
            timings.append(t)
        first, pooled = timings
        assert first.connect_s is not None and first.tls_s is not None and first.tls_s > 0
        assert pooled.connect_s is None and pooled.tls_s is None  # reused: nothing connected
        assert {t.tls_protocol_version for t in timings} == {"1.3"}
        assert all(t.tls_cipher for t in timings)
    finally:
        await forwarder.close()
        await runner.cleanup()
