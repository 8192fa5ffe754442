"""TLS termination on the listeners (issue 16 §1, §2, §6), with real certificates (`tests.support.certs`) and real
clients: curl and `openssl s_client` from Debian, and Python's `ssl`.

- certificates chosen by SNI, the first one by default; TLS 1.2 and 1.3 only; ALPN `h2`, then `http/1.1`;
- client certificates (mTLS): optional or required, verified against `client_ca_file`; the verified identity goes
  upstream in `X-Forwarded-Client-Cert`, which a client can never set itself;
- every failed handshake counted by reason (`gatewatch_tls_handshake_failures_total`), a stalled one closed after
  `handshake_timeout_s`, plaintext on the TLS port answered 400 in plaintext;
- certificates reloaded with the config, open connections kept; expiry as a gauge;
- tls.* attributes on the SERVER span.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
import yaml
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gatewatch.config import ConfigError, parse_config
from gatewatch.app.runtime import Runtime
from tests.support.certs import Pki
from tests.support.net import edge_port, raw_request, start_app
from tests.support.otlp import OtlpReceiver
from tests.support.runtime import running

PLANES = pytest.mark.parametrize("plane", ["fast", "aiohttp"])


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca, other = Pki(d / "ca"), Pki(d / "other", name="Unrelated CA")
    return {"ca": ca, "other": other,
            "api": ca.leaf("api", ["api.example.test", "localhost", "127.0.0.1"]),
            "wild": ca.leaf("wild", ["*.apps.example.test"]),
            "wrong": ca.leaf("wrong", ["elsewhere.test"]), "expired": ca.leaf("expired-server", expired=True),
            "client": ca.leaf("client", ["client-a.example.test"], client=True),
            "client_expired": ca.leaf("client-old", ["client-b"], client=True, expired=True),
            "stranger": other.leaf("stranger", ["intruder"], client=True)}


async def echo(request: web.Request) -> web.Response:
    """The backend: what reached it."""
    return web.json_response({"headers": {k.lower(): v for k, v in request.headers.items()}})


def config(tmp_path, backend: int, tls: dict | None, plane: str = "fast", plain_listener: bool = False) -> dict:
    listeners = [{"name": "tls", "address": "127.0.0.1:0", **({"tls": tls} if tls is not None else {})}]
    if plain_listener:
        listeners.append({"name": "plain", "address": "127.0.0.1:0"})
    return {"data_plane": plane, "admin": {"address": "127.0.0.1:0"},
            "telemetry": {"local_dir": str(tmp_path / "t")},
            "edge": {"listeners": listeners, "routes": [{"name": "r", "upstream": "b", "retries": {"attempts": 1}}]},
            "balancer": {"pools": [{"name": "b", "instances": [{"host": "127.0.0.1", "port": backend}]}]}}


def certs(*leaves) -> list[dict]:
    return [{"cert_file": leaf.cert, "key_file": leaf.key} for leaf in leaves]


def client_ctx(pki, cert=None, ca="ca", **versions) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki[ca].ca_file)
    for k, v in versions.items():
        setattr(ctx, k, v)
    if cert is not None:
        ctx.load_cert_chain(pki[cert].cert, pki[cert].key)
    return ctx


async def https_get(port: int, ctx: ssl.SSLContext, name: str = "api.example.test", path: str = "/x",
                    extra: bytes = b"") -> tuple[int, dict, ssl.SSLObject]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=name)
    try:
        writer.write(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: " + name.encode() + b"\r\n" + extra
                     + b"Connection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 10)
        obj = writer.get_extra_info("ssl_object")
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"chunked" in head.lower():
        size, _, rest = body.partition(b"\r\n")
        body = rest[:int(size, 16)]
    return int(head.split(b" ")[1]), json.loads(body) if body.startswith(b"{") else {}, obj


def der_sha256(leaf) -> str:
    cert = x509.load_pem_x509_certificate(Path(leaf.cert).read_bytes())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def metric(rt, name: str, **labels) -> float | None:
    text = rt.metrics.exposition(None)[0].decode()
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


def handshakes(rt) -> float:
    """Completed handshakes of the listener `tls`, all versions (each present from the start at 0)."""
    return sum(metric(rt, "gatewatch_tls_handshakes_total", gatewatch_listener="tls", tls_protocol_version=v)
               for v in ("1.2", "1.3"))


def failures(rt, reason: str) -> float:
    return metric(rt, "gatewatch_tls_handshake_failures_total", gatewatch_listener="tls", reason=reason)


def run(*cmd: str, stdin: bytes = b"") -> subprocess.CompletedProcess:
    return subprocess.run(cmd, input=stdin, capture_output=True, timeout=30)


@pytest.fixture
async def backend():
    runner, port = await start_app(echo)
    yield port
    await runner.cleanup()


@PLANES
async def test_curl_gets_the_certificate_its_sni_names(tmp_path, pki, backend, plane):
    async with running(config(tmp_path, backend, {"certificates": certs(pki["api"], pki["wild"])}, plane)) as rt:
        port = edge_port(rt)
        for name in ("api.example.test", "shop.apps.example.test"):
            out = await asyncio.to_thread(
                run, "curl", "-sS", "--cacert", pki["ca"].ca_file, "--resolve", f"{name}:{port}:127.0.0.1",
                f"https://{name}:{port}/hello")
            assert out.returncode == 0, out.stderr
            seen = json.loads(out.stdout)["headers"]
            assert seen["x-forwarded-proto"] == "https"  # curl verified the name: the SNI chose the certificate
        # a wildcard covers one label only (RFC 6125 §6.4.3): a deeper name gets the default, which fails
        # curl's name check
        out = await asyncio.to_thread(
            run, "curl", "-sS", "--cacert", pki["ca"].ca_file, "--resolve", f"a.b.apps.example.test:{port}:127.0.0.1",
            f"https://a.b.apps.example.test:{port}/")
        assert out.returncode == 60, out.stderr  # peer certificate cannot be authenticated


def served_subject(port: int, *args: str) -> str:
    out = run("openssl", "s_client", "-connect", f"127.0.0.1:{port}", *args, stdin=b"")
    cert = x509.load_pem_x509_certificate(out.stdout[out.stdout.index(b"-----BEGIN"):])
    return cert.subject.rfc4514_string()


async def test_no_sni_gets_the_first_certificate_and_alpn_prefers_h2(tmp_path, pki, backend):
    async with running(config(tmp_path, backend, {"certificates": certs(pki["api"], pki["wild"])})) as rt:
        port = edge_port(rt)
        assert await asyncio.to_thread(served_subject, port, "-noservername") == "CN=api.example.test"
        assert await asyncio.to_thread(served_subject, port, "-servername", "x.apps.example.test") == "CN=*.apps.example.test"
        out = await asyncio.to_thread(run, "openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-alpn",
                                      "h2,http/1.1", stdin=b"")
        assert b"ALPN protocol: h2" in out.stdout  # HTTP/2 preferred (docs/http2.md)


@pytest.mark.parametrize(("flag", "version"), [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
async def test_tls12_and_tls13_are_served(tmp_path, pki, backend, flag, version):
    async with running(config(tmp_path, backend, {"certificates": certs(pki["api"])})) as rt:
        port = edge_port(rt)
        out = await asyncio.to_thread(run, "openssl", "s_client", "-connect", f"127.0.0.1:{port}", flag,
                                      "-CAfile", pki["ca"].ca_file, "-servername", "api.example.test", "-quiet",
                                      "-verify_return_error",
                                      stdin=b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert out.stdout.startswith(b"HTTP/1.1 200"), out.stderr
        assert metric(rt, "gatewatch_tls_handshakes_total", gatewatch_listener="tls",
                      tls_protocol_version=version.removeprefix("TLSv")) == 1


@pytest.mark.parametrize("flag", ["-tls1", "-tls1_1"])
async def test_old_protocol_versions_are_refused_and_counted(tmp_path, pki, backend, flag):
    async with running(config(tmp_path, backend, {"certificates": certs(pki["api"])})) as rt:
        out = await asyncio.to_thread(run, "openssl", "s_client", "-connect", f"127.0.0.1:{edge_port(rt)}", flag,
                                      "-cipher", "DEFAULT@SECLEVEL=0", stdin=b"")
        assert out.returncode != 0
        assert failures(rt, "protocol_version") == 1


async def test_min_version_13_refuses_tls12(tmp_path, pki, backend):
    async with running(config(tmp_path, backend, {"certificates": certs(pki["api"]), "min_version": "1.3"})) as rt:
        with pytest.raises(ssl.SSLError):
            await https_get(edge_port(rt), client_ctx(pki, maximum_version=ssl.TLSVersion.TLSv1_2))
        assert failures(rt, "protocol_version") == 1
        status, _, obj = await https_get(edge_port(rt), client_ctx(pki))
        assert (status, obj.version()) == (200, "TLSv1.3")


@pytest.mark.parametrize(("server", "curl_reason"), [("wrong", None), ("expired", "server_cert_rejected")])
async def test_clients_refuse_a_bad_server_certificate_and_it_is_counted(tmp_path, pki, backend, server, curl_reason):
    """A client that refuses the chain says so with an alert (curl on the expired certificate). curl checks the
    name only after the handshake (to the listener, a handshake that succeeded), and asyncio's client flushes no
    alert: it just closes, which the listener can only count as a client that closed mid-handshake."""
    async with running(config(tmp_path, backend, {"certificates": certs(pki[server])})) as rt:
        out = await asyncio.to_thread(run, "curl", "-sS", "--cacert", pki["ca"].ca_file,
                                      f"https://localhost:{edge_port(rt)}/")
        assert out.returncode == 60, out.stderr
        await asyncio.sleep(0.1)
        if curl_reason is None:
            assert handshakes(rt) == 1
        else:
            assert failures(rt, curl_reason) == 1
        with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch" if server == "wrong" else "expired"):
            await https_get(edge_port(rt), client_ctx(pki), name="localhost")
        await asyncio.sleep(0.1)
        assert failures(rt, "client_closed") == 1


async def test_plaintext_to_the_tls_port_and_tls_to_a_plaintext_port(tmp_path, pki, backend):
    async with running(config(tmp_path, backend, {"certificates": certs(pki["api"])}, plain_listener=True)) as rt:
        tls_port, plain_port = (lst.bound[1] for lst in rt.listeners)
        answer = await raw_request(tls_port, b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
        assert b"use https://" in answer
        assert failures(rt, "not_tls") == 1
        # a TLS ClientHello on the plaintext port: not HTTP (0x16 is no method token), answered 400 and closed
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await https_get(plain_port, client_ctx(pki))
        assert metric(rt, "http_server_request_duration_seconds_count", error_type="invalid_method",
                      http_response_status_code="400") == 1


async def test_a_stalled_handshake_is_closed_and_does_not_stall_others(tmp_path, pki, backend):
    tls = {"certificates": certs(pki["api"]), "handshake_timeout_s": 0.5}
    async with running(config(tmp_path, backend, tls)) as rt:
        port = edge_port(rt)
        silent = await asyncio.open_connection("127.0.0.1", port)  # connects, never says hello
        half = await asyncio.open_connection("127.0.0.1", port)
        half[1].write(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # the start of a ClientHello, then nothing
        status, _, _ = await https_get(port, client_ctx(pki))  # served meanwhile
        assert status == 200
        for reader, _ in (silent, half):
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the listener
        assert failures(rt, "timeout") == 2


@pytest.fixture
def mtls(pki):
    def make(mode: str, header: str | None = "X-Forwarded-Client-Cert") -> dict:
        return {"certificates": certs(pki["api"]), "client_auth": mode, "client_ca_file": pki["ca"].ca_file,
                "client_cert_header": header}
    return make


@PLANES
async def test_verified_client_identity_goes_upstream_and_a_forged_one_never_does(tmp_path, pki, backend, mtls,
                                                                                 plane):
    forged = b"X-Forwarded-Client-Cert: Hash=00;Subject=\"CN=admin\"\r\n"
    async with running(config(tmp_path, backend, mtls("required"), plane, plain_listener=True)) as rt:
        status, body, obj = await https_get(edge_port(rt), client_ctx(pki, "client"), extra=forged)
        assert status == 200
        xfcc = body["headers"]["x-forwarded-client-cert"]
        assert xfcc == f'Hash={der_sha256(pki["client"])};Subject="CN=client-a.example.test";DNS=client-a.example.test'
        # the plaintext listener: a client's own copy is removed, nothing put in its place
        plain = rt.listeners[1].bound[1]
        raw = await raw_request(plain, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n" + forged + b"\r\n")
        assert b"x-forwarded-client-cert" not in raw.partition(b"\r\n\r\n")[2].lower()


async def test_optional_client_certificate(tmp_path, pki, backend, mtls):
    async with running(config(tmp_path, backend, mtls("optional", header="X-Client-Identity"))) as rt:
        status, body, _ = await https_get(edge_port(rt), client_ctx(pki), extra=b"X-Client-Identity: forged\r\n")
        assert status == 200 and "x-client-identity" not in body["headers"]
        status, body, _ = await https_get(edge_port(rt), client_ctx(pki, "client"))
        assert body["headers"]["x-client-identity"].startswith("Hash=")
        # a certificate that fails verification ends the handshake even when optional
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await https_get(edge_port(rt), client_ctx(pki, "stranger"))


@pytest.mark.parametrize(("cert", "reason"), [(None, "no_client_cert"), ("stranger", "client_cert_unknown_ca"),
                                              ("client_expired", "client_cert_expired")])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
async def test_required_client_certificate_failures_say_why(tmp_path, pki, backend, mtls, cert, reason, version):
    """In TLS 1.3 the client's side of the handshake is done before the server judges its certificate
    (RFC 8446 §4.4.2.4): it learns of the refusal on its first read."""
    async with running(config(tmp_path, backend, mtls("required"))) as rt:
        ctx = client_ctx(pki, cert, maximum_version=version, minimum_version=version)
        with pytest.raises((ssl.SSLError, ConnectionError, json.JSONDecodeError, IndexError)):
            await https_get(edge_port(rt), ctx)
        await asyncio.sleep(0.1)
        assert failures(rt, reason) == 1
        assert handshakes(rt) == 0


async def test_server_span_carries_tls_attributes(tmp_path, pki, backend, mtls):
    with OtlpReceiver() as rx:
        cfg = config(tmp_path, backend, mtls("required"))
        cfg["telemetry"] = {"otlp": {"endpoint": rx.grpc_endpoint, "protocol": "grpc"}, "export_interval_s": 0.1}
        async with running(cfg) as rt:
            ctx = client_ctx(pki, "client")
            ctx.set_alpn_protocols(["http/1.1"])
            status, _, obj = await https_get(edge_port(rt), ctx)
            assert status == 200
            assert await asyncio.to_thread(rx.data.wait_for,
                                           lambda spans, _: any(s["kind"] == "SERVER" for s in spans))
        [server] = [s for s in rx.data.snapshot()[0] if s["kind"] == "SERVER"]
        a = server["attributes"]
        assert a["url.scheme"] == "https"
        assert a["tls.protocol.version"] == "1.3" and a["tls.cipher"] == obj.cipher()[0]
        assert a["tls.client.server_name"] == "api.example.test"
        assert a["tls.next_protocol"] == "http/1.1"
        assert a["tls.client.subject"] == "CN=client-a.example.test"
        assert a["tls.client.hash.sha256"] == der_sha256(pki["client"]).upper()


def _write_leaf(src, dst: Path) -> None:
    shutil.copyfile(src.cert, dst / "served.crt")
    shutil.copyfile(src.key, dst / "served.key")


def _serial(obj) -> int:
    return x509.load_der_x509_certificate(obj.getpeercert(binary_form=True)).serial_number


async def test_reload_takes_rotated_files_and_keeps_open_connections(tmp_path, pki, backend):
    live = tmp_path / "live"
    live.mkdir()
    _write_leaf(pki["api"], live)
    cfg = config(tmp_path, backend, {"certificates": [{"cert_file": str(live / "served.crt"),
                                                       "key_file": str(live / "served.key")}]})
    path = tmp_path / "gatewatch.yaml"
    path.write_text(yaml.safe_dump(cfg))
    rt = Runtime(parse_config(cfg), env={}, config_path=str(path))
    await rt.start()
    try:
        port = edge_port(rt)
        old_serial = x509.load_pem_x509_certificate(Path(pki["api"].cert).read_bytes()).serial_number
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx(pki),
                                                       server_hostname="api.example.test")
        assert _serial(writer.get_extra_info("ssl_object")) == old_serial
        assert metric(rt, "gatewatch_tls_certificate_expiry_timestamp_seconds", serial=format(old_serial, "x"))
        rotated = pki["ca"].leaf("api-rotated", ["api.example.test"])
        _write_leaf(rotated, live)
        ok, problems = await rt.reload()
        assert ok, problems
        new_serial = x509.load_pem_x509_certificate(Path(rotated.cert).read_bytes()).serial_number
        _, _, obj = await https_get(port, client_ctx(pki))
        assert _serial(obj) == new_serial
        # the connection opened before the reload still serves
        writer.write(b"GET /again HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert (await asyncio.wait_for(reader.read(), 5)).startswith(b"HTTP/1.1 200")
        writer.close()
        # the gauge follows what is served: the replaced certificate's series is gone
        assert metric(rt, "gatewatch_tls_certificate_expiry_timestamp_seconds", serial=format(old_serial, "x")) is None
        expiry = metric(rt, "gatewatch_tls_certificate_expiry_timestamp_seconds", serial=format(new_serial, "x"))
        assert expiry == x509.load_pem_x509_certificate(Path(rotated.cert).read_bytes()).not_valid_after_utc.timestamp()
        # a rotated file that does not load: the reload fails, the running certificates stay
        (live / "served.key").write_text("not a key")
        ok, problems = await rt.reload()
        assert not ok and "served" in problems[0]
        _, _, obj = await https_get(port, client_ctx(pki))
        assert _serial(obj) == new_serial
    finally:
        await rt.stop(grace_s=1.0)


@pytest.mark.parametrize(("tls", "expected"), [
    ({"certificates": [{"cert_file": "/nonexistent.crt", "key_file": "/nonexistent.key"}]},
     "edge.listeners[0].tls.certificates[0]: cannot load cert_file '/nonexistent.crt'"),
    ({"certificates": "KEYMISMATCH"}, "edge.listeners[0].tls.certificates[0]: cannot load cert_file"),
    ({"certificates": []}, "edge.listeners[0].tls.certificates: must not be empty"),
    ({"certificates": "API", "client_auth": "required"},
     "edge.listeners[0].tls: client_auth 'required' needs client_ca_file"),
    ({"certificates": "API", "client_auth": "optional", "client_ca_file": "/nonexistent-ca.pem"},
     "edge.listeners[0].tls: client_ca_file: cannot load '/nonexistent-ca.pem'"),
    ({"certificates": "API", "min_version": "1.1"}, "edge.listeners[0].tls.min_version: expected '1.2' or '1.3', got the string '1.1'"),
    ({"certificates": "API", "ciphers": "ALL"}, "edge.listeners[0].tls.ciphers: unknown key"),
])
def test_config_errors_name_the_field(tmp_path, pki, tls, expected):
    if tls["certificates"] == "API":
        tls["certificates"] = certs(pki["api"])
    elif tls["certificates"] == "KEYMISMATCH":
        tls["certificates"] = [{"cert_file": pki["api"].cert, "key_file": pki["wild"].key}]
    with pytest.raises(ConfigError) as err:
        parse_config(config(tmp_path, 1, tls))
    assert any(p.startswith(expected) for p in err.value.problems), err.value.problems


# --- the verified identity in route policies (client_cert policy, consumer for rate limits) ---

def policy_config(tmp_path, backend, pki, policies: list[dict]) -> dict:
    cfg = config(tmp_path, backend, {"certificates": certs(pki["api"]), "client_auth": "optional",
                                     "client_ca_file": pki["ca"].ca_file})
    cfg["edge"]["routes"][0]["policies"] = policies
    return cfg


@pytest.fixture(scope="module")
def partners(pki):
    ca = pki["ca"]
    return {"alpha": ca.leaf("alpha", ["alpha.partners.example", "spiffe-less"], client=True),
            "beta": ca.leaf("beta", ["beta.partners.example"], client=True),
            "deep": ca.leaf("deep", ["x.beta.partners.example"], client=True)}


@pytest.mark.parametrize(("entry", "admitted"), [
    ({"subject": "CN=alpha.partners.example"}, {"alpha"}),
    ({"san": "DNS:*.partners.example"}, {"alpha", "beta"}),  # one label: not x.beta.partners.example
    ({"fingerprint": "ALPHA"}, {"alpha"}),
])
async def test_client_cert_policy_admits_by_subject_san_or_fingerprint(tmp_path, pki, partners, backend, entry,
                                                                     admitted):
    if entry.get("fingerprint") == "ALPHA":
        hexd = der_sha256(partners["alpha"]).upper()
        entry = {"fingerprint": ":".join(hexd[i:i + 2] for i in range(0, 64, 2))}  # colon form, as openssl prints
    pki = {**pki, **partners}
    policy = {"name": "partners", "type": "client_cert", "allow": [entry]}
    async with running(policy_config(tmp_path, backend, pki, [policy])) as rt:
        for who in ("alpha", "beta", "deep"):
            status, body, _ = await https_get(edge_port(rt), client_ctx(pki, who))
            assert status == (200 if who in admitted else 403), (who, body)
            if status == 200:
                assert body["headers"]["x-consumer"] == f"{who}.partners.example"  # the CN
        status, body, _ = await https_get(edge_port(rt), client_ctx(pki))  # no certificate: optional lets it in
        assert status == 401 and body["error"]["outcome"] == "denied_auth", body
        assert metric(rt, "gatewatch_policy_verdicts_total", gatewatch_policy="partners",
                      reason="client_cert.not_allowed") == 3 - len(admitted)


async def test_certificate_identity_is_the_rate_limit_consumer(tmp_path, pki, partners, backend):
    pki = {**pki, **partners}
    policies = [{"name": "who", "type": "client_cert", "consumer_header": None},
                {"name": "quota", "type": "rate_limit", "key": "consumer", "limit": 2, "window_s": 60}]
    async with running(policy_config(tmp_path, backend, pki, policies)) as rt:
        alpha = [(await https_get(edge_port(rt), client_ctx(pki, "alpha")))[0] for _ in range(3)]
        beta = (await https_get(edge_port(rt), client_ctx(pki, "beta")))[0]
        assert (alpha, beta) == ([200, 200, 429], 200)


def test_client_cert_policy_config_errors(tmp_path, pki):
    bad = [{"name": "p", "type": "client_cert", "allow": [{"subject": "CN=a", "san": "DNS:a"}]},
           {"name": "p", "type": "client_cert", "allow": [{"san": "dns-a"}]},
           {"name": "p", "type": "client_cert", "allow": [{"fingerprint": "AB" * 31}]}]
    for policy in bad:
        with pytest.raises(ConfigError) as err:
            parse_config(policy_config(tmp_path, 1, pki, [policy]))
        assert err.value.problems[0].startswith("edge.routes[0].policies[0]"), err.value.problems
