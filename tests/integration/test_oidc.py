"""OAuth2 / OIDC at the edge (issue 16 §4), through the real gateway (an in-process runtime on real sockets)
against an OpenID provider stand-in over HTTPS (`tests.edge.policies.idp`) that Gatewatch trusts only through the
policy's own `tls.ca_file`:

- OIDC discovery → JWKS; `iss` must equal the issuer; a discovery document naming another issuer is refused;
  key rotation; a JWKS outage keeps the last good keys and shows as the gauge going 0 and back to 1;
- RFC 7662 introspection: active / inactive answers, positive and negative caching (counted on the stand-in),
  client_secret_basic, an endpoint that hangs or answers garbage → the documented fail mode (closed: 503, open:
  through, recorded), never a crash or a hang; the outage gauge and its events;
- scope and claim checks for both policies; the client secret redacted in the admin `/config`.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import pytest

from tests.edge.policies.idp import CLIENT_ID, CLIENT_SECRET, Idp
from tests.edge.policies.idp import running_idp  # noqa: F401 — fixtures `idp`, `session`
from tests.edge.policies.jwt_keys import AUD, token
from tests.edge.policies.support import policy_config, policy_logs, start_echo
from tests.support.runtime import running

ROUTE = "api"


@pytest.fixture
async def echo():
    runner, port = await start_echo()
    yield port
    await runner.cleanup()


def jwt_policy(idp: Idp, **over) -> dict:
    """Keys by OIDC discovery of the stand-in's issuer (no `keys`, no `jwks.url`), trusted by `tls.ca_file`."""
    p = {"name": "auth", "type": "jwt", "issuer": idp.issuer, "audience": AUD, "algorithms": ["RS256", "ES256"],
         "tls": {"ca_file": idp.pki.ca_file}, "forward_claims": {"X-User": "sub"},
         "jwks": {"min_refresh_interval_s": 0, "retry_after_s": 0.05, "retry_max_s": 0.2, "timeout_s": 2}}
    p.update(over)
    return p


def introspection_policy(idp: Idp, **over) -> dict:
    p = {"name": "opaque", "type": "introspection", "endpoint": idp.introspection_endpoint,
         "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET, "tls": {"ca_file": idp.pki.ca_file},
         "timeout_s": 2, "retry_after_s": 0.05, "retry_max_s": 0.2, "forward_claims": {"X-User": "sub"},
         "cache": {"max_ttl_s": 300, "negative_ttl_s": 300}}
    p.update(over)
    return p


async def get(rt, tok: str | None = None, headers: dict | None = None) -> tuple[int, dict, dict]:
    headers = dict(headers or {})
    if tok is not None:
        headers["Authorization"] = f"Bearer {tok}"
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{rt.listeners[0].bound[1]}/api/x", headers=headers) as r:
            body = await r.read()
            return r.status, r.headers.copy(), json.loads(body) if body else {}


async def scrape(rt) -> str:
    host, port = rt.admin_bound
    async with aiohttp.ClientSession() as s, s.get(f"http://{host}:{port}/metrics") as r:
        return await r.text()


def verdicts(rt, policy: str, ptype: str, verdict: str, reason: str) -> float:
    return rt.metrics.policy_verdicts.value((ROUTE, policy, ptype, verdict, reason))


def provider_up(rt, provider: str, endpoint: str) -> float:
    return rt.metrics.auth_provider_up.labels(provider, endpoint)._value.get()


async def until(predicate, what: str, limit_s: float = 15.0) -> None:
    """Wait (bounded) for something the gateway does in the background; no assertion on how long it took."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting for {what}"
        await asyncio.sleep(0.02)


def upstream_header(body: dict, name: str) -> list[str]:
    return [v for k, v in body.get("headers", []) if k.lower() == name.lower()]


def transitions(otlp) -> list[dict]:
    return [r for r in otlp.data.snapshot()[1] if r["event_name"] == "gatewatch.auth.provider.transition"]


# --- OIDC discovery and JWKS -------------------------------------------------------------------------------------

async def test_discovery_finds_the_keys_and_iss_must_equal_the_issuer(tmp_path, idp, echo):
    cfg = policy_config(echo, tmp_path, [jwt_policy(idp, jwks=None)])  # just `issuer`: discovery by default
    async with running(cfg) as rt:
        status, _, body = await get(rt, token("RS256", "r1", iss=idp.issuer))
        assert status == 200 and upstream_header(body, "X-User") == ["alice"]
        status, headers, _ = await get(rt, token("RS256", "r1", iss=idp.issuer + "/"))  # not the same string
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert verdicts(rt, "auth", "jwt", "deny", "jwt.bad_issuer") == 1
        assert (idp.hits["discovery"], idp.hits["jwks"]) == (1, 1)
        assert provider_up(rt, idp.issuer, "discovery") == provider_up(rt, idp.issuer, "jwks") == 1


async def test_the_providers_ca_is_trusted_only_through_the_policys_ca_file(tmp_path, idp, echo, otlp):
    cfg = policy_config(echo, tmp_path, [jwt_policy(idp, tls=None)])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        status, _, body = await get(rt, token("RS256", "r1", iss=idp.issuer))
        assert status == 401 and body["error"]["outcome"] == "denied_auth"
        assert verdicts(rt, "auth", "jwt", "error", "jwt.keys_unavailable") == 1
        assert provider_up(rt, idp.issuer, "discovery") == 0
        assert idp.hits["discovery"] == 0  # the handshake failed: no request reached the provider
    assert otlp.data.wait_for(lambda s, logs: transitions(otlp))
    [down] = transitions(otlp)[:1]
    assert down["attributes"]["gatewatch.auth.endpoint"] == "discovery"
    assert down["attributes"]["gatewatch.decision.reason"] == "tls_error"
    assert down["attributes"]["gatewatch.tls.failure"] == "unknown_ca"
    assert down["severity"] == "WARN"


async def test_a_discovery_document_naming_another_issuer_is_not_used_then_recovers(tmp_path, idp, echo, otlp):
    idp.issuer_in_document = idp.issuer + "/"  # §4.3: must be identical, so even a trailing slash is refused
    cfg = policy_config(echo, tmp_path, [jwt_policy(idp)])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        tok = token("RS256", "r1", iss=idp.issuer)
        status, _, _ = await get(rt, tok)
        assert status == 401 and verdicts(rt, "auth", "jwt", "error", "jwt.keys_unavailable") == 1
        assert idp.hits["jwks"] == 0  # the refused document's jwks_uri was never followed
        assert provider_up(rt, idp.issuer, "discovery") == 0
        idp.issuer_in_document = None  # the provider is fixed: the refresh schedule (with backoff) finds out
        await until(lambda: provider_up(rt, idp.issuer, "discovery") == 1, "discovery back up")
        assert (await get(rt, tok))[0] == 200
    assert otlp.data.wait_for(lambda s, logs: len(transitions(otlp)) >= 2)
    down, up = transitions(otlp)[:2]
    assert (down["attributes"]["gatewatch.auth.provider.to"], up["attributes"]["gatewatch.auth.provider.to"]) == \
        ("down", "up")
    assert down["attributes"]["gatewatch.decision.reason"] == "issuer_mismatch"
    assert down["attributes"]["gatewatch.event.id"] == up["attributes"]["gatewatch.event.id"] != ""


async def test_key_rotation_and_a_jwks_outage_keep_the_last_good_keys(tmp_path, idp, echo, otlp):
    cfg = policy_config(echo, tmp_path, [jwt_policy(idp)])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        old = token("RS256", "r1", iss=idp.issuer)
        assert (await get(rt, old))[0] == 200
        idp.kids = ["e1"]  # the provider rotates: e1 in, r1 retired
        new = token("ES256", "e1", iss=idp.issuer)
        assert (await get(rt, new))[0] == 200  # an unknown kid: one refresh finds it
        assert (await get(rt, old))[0] == 401  # the retired key's tokens stop working
        assert verdicts(rt, "auth", "jwt", "deny", "jwt.unknown_kid") == 1

        idp.mode["jwks"] = "status_500"  # the key endpoint fails
        status, _, _ = await get(rt, token("ES256", "e1", iss=idp.issuer, headers={"kid": "e2"}))
        assert status == 401  # e2 is unknown and the refresh it triggered failed
        assert provider_up(rt, idp.issuer, "jwks") == 0
        assert provider_up(rt, idp.issuer, "discovery") == 1
        assert (await get(rt, new))[0] == 200  # stale-if-error: the last good keys keep verifying
        idp.mode["jwks"] = "ok"
        await until(lambda: provider_up(rt, idp.issuer, "jwks") == 1, "jwks back up")
    assert otlp.data.wait_for(lambda s, logs: len(transitions(otlp)) >= 2)
    down, up = [t for t in transitions(otlp) if t["attributes"]["gatewatch.auth.endpoint"] == "jwks"][:2]
    assert down["attributes"]["gatewatch.decision.reason"] == "http_status"
    assert down["attributes"]["gatewatch.auth.url"] == idp.issuer + "/keys"  # the discovered jwks_uri
    assert up["attributes"]["gatewatch.auth.provider.to"] == "up"


async def test_jwt_scope_and_claim_checks(tmp_path, idp, echo):
    cfg = policy_config(echo, tmp_path, [jwt_policy(idp, required_scopes=["orders:write"],
                                                    required_claims={"tenant": ["acme", "globex"]})])
    async with running(cfg) as rt:
        ok = token("RS256", "r1", iss=idp.issuer, scope="read orders:write", tenant="acme")
        assert (await get(rt, ok))[0] == 200
        status, headers, _ = await get(rt, token("RS256", "r1", iss=idp.issuer, scope="read", tenant="acme"))
        assert status == 403
        assert headers["WWW-Authenticate"] == \
            'Bearer realm="gatewatch", error="insufficient_scope", scope="orders:write"'  # RFC 6750 §3
        status, headers, _ = await get(rt, token("RS256", "r1", iss=idp.issuer, scope=None,
                                                 scp=["orders:write"], tenant="initech"))
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert verdicts(rt, "auth", "jwt", "deny", "jwt.insufficient_scope") == 1
        assert verdicts(rt, "auth", "jwt", "deny", "jwt.missing_claim") == 1


# --- RFC 7662 introspection -----------------------------------------------------------------------------------

async def test_introspection_active_inactive_and_cached(tmp_path, idp, echo):
    idp.tokens["tok-alice"] = {"active": True, "sub": "alice", "scope": "read", "exp": int(time.time()) + 300}
    cfg = policy_config(echo, tmp_path, [introspection_policy(idp)])
    async with running(cfg) as rt:
        for _ in range(3):
            status, _, body = await get(rt, "tok-alice", {"X-User": "mallory"})
            assert status == 200 and upstream_header(body, "X-User") == ["alice"]  # never the client's copy
        assert idp.hits["introspect"] == 1  # the positive answer is cached
        assert idp.forms == [{"token": "tok-alice", "token_type_hint": "access_token"}]  # RFC 7662 §2.1

        for _ in range(3):
            status, headers, body = await get(rt, "tok-revoked")
            assert status == 401 and body["error"]["outcome"] == "denied_auth"
            assert headers["WWW-Authenticate"] == 'Bearer realm="gatewatch", error="invalid_token"'
        assert idp.hits["introspect"] == 2  # ... and so is the negative one

        status, headers, _ = await get(rt)
        assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="gatewatch"'  # §3.1: no error code
        assert idp.hits["introspect"] == 2
        assert verdicts(rt, "opaque", "introspection", "allow", "introspection.active") == 3
        assert verdicts(rt, "opaque", "introspection", "deny", "introspection.inactive") == 3
        assert verdicts(rt, "opaque", "introspection", "deny", "introspection.missing") == 1


async def test_introspection_scope_and_claim_checks(tmp_path, idp, echo):
    exp = int(time.time()) + 300
    idp.tokens.update({
        "writer": {"active": True, "sub": "w", "scope": "orders:read orders:write", "aud": ["orders-api"], "exp": exp},
        "reader": {"active": True, "sub": "r", "scope": "orders:read", "aud": "orders-api", "exp": exp},
        "elsewhere": {"active": True, "sub": "e", "scope": "orders:write", "aud": "billing", "exp": exp}})
    cfg = policy_config(echo, tmp_path, [introspection_policy(idp, required_scopes=["orders:write"],
                                                              required_claims={"aud": "orders-api"})])
    async with running(cfg) as rt:
        assert (await get(rt, "writer"))[0] == 200
        status, headers, _ = await get(rt, "reader")
        assert status == 403 and headers["WWW-Authenticate"] == \
            'Bearer realm="gatewatch", error="insufficient_scope", scope="orders:write"'
        status, headers, _ = await get(rt, "elsewhere")
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert verdicts(rt, "opaque", "introspection", "deny", "introspection.insufficient_scope") == 1
        assert verdicts(rt, "opaque", "introspection", "deny", "introspection.missing_claim") == 1


@pytest.mark.parametrize("fail_mode,status", [("closed", 503), ("open", 200)])
async def test_a_hanging_endpoint_times_out_into_the_fail_mode(tmp_path, idp, echo, otlp, fail_mode, status):
    idp.mode["introspect"] = "hang"
    cfg = policy_config(echo, tmp_path, [introspection_policy(idp, timeout_s=0.3, fail_mode=fail_mode)])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        got, headers, body = await get(rt, "tok-any")
        assert idp.pending == 1  # the answer came from the timeout: the endpoint is still holding the call
        assert got == status
        if fail_mode == "closed":
            assert body["error"]["outcome"] == "denied_auth" and headers["Retry-After"] == "1"
            assert "introspection endpoint is unavailable" in body["error"]["message"]
        request_id = headers["X-Request-Id"]
        assert verdicts(rt, "opaque", "introspection", "error", "introspection.unavailable") == 1
    assert otlp.data.wait_for(lambda s, logs: policy_logs(otlp, request_id))
    [log] = policy_logs(otlp, request_id)  # fail open is recorded as much as fail closed
    assert log["attributes"]["gatewatch.decision.result"] == "error"
    assert log["attributes"]["gatewatch.decision.reason"] == "introspection.unavailable"


@pytest.mark.parametrize("mode,failure", [("garbage", "not_json"), ("html", "not_json"),
                                          ("status_500", "http_status"), ("not_bool", "invalid")])
async def test_garbage_from_the_endpoint_fails_closed_and_is_an_outage(tmp_path, idp, echo, otlp, mode, failure):
    idp.tokens["tok-alice"] = {"active": True, "sub": "alice"}
    idp.mode["introspect"] = mode
    cfg = policy_config(echo, tmp_path, [introspection_policy(idp)])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        status, headers, body = await get(rt, "tok-alice")
        assert status == 503 and body["error"]["outcome"] == "denied_auth"
        assert provider_up(rt, idp.introspection_endpoint, "introspection") == 0
        request_id = headers["X-Request-Id"]
    assert otlp.data.wait_for(lambda s, logs: transitions(otlp) and policy_logs(otlp, request_id))
    [down] = transitions(otlp)
    assert down["attributes"]["gatewatch.decision.reason"] == failure
    [log] = policy_logs(otlp, request_id)
    assert log["attributes"]["gatewatch.event.id"] == down["attributes"]["gatewatch.event.id"]


async def test_introspection_outage_gauge_goes_down_and_back_up(tmp_path, idp, echo, otlp):
    idp.tokens["tok-alice"] = {"active": True, "sub": "alice"}
    cfg = policy_config(echo, tmp_path, [introspection_policy(idp, fail_mode="open", cache={"max_entries": 0})])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        endpoint = idp.introspection_endpoint
        assert (await get(rt, "tok-alice"))[0] == 200 and provider_up(rt, endpoint, "introspection") == 1
        idp.mode["introspect"] = "status_500"
        status, _, body = await get(rt, "tok-alice")
        assert status == 200 and upstream_header(body, "X-User") == []  # through, without an identity
        assert provider_up(rt, endpoint, "introspection") == 0
        assert f'gatewatch_auth_provider_up{{endpoint="introspection",provider="{endpoint}"}} 0.0' in \
            await scrape(rt)  # what Prometheus sees at the admin /metrics
        calls = idp.hits["introspect"]
        assert (await get(rt, "tok-alice"))[0] == 200
        assert idp.hits["introspect"] in (calls, calls + 1)  # within the backoff: not called again
        idp.mode["introspect"] = "ok"

        async def healed() -> bool:
            _, _, body = await get(rt, "tok-alice")
            return upstream_header(body, "X-User") == ["alice"]

        deadline = time.monotonic() + 15
        while not await healed():
            assert time.monotonic() < deadline, "introspection never came back"
            await asyncio.sleep(0.02)
        assert provider_up(rt, endpoint, "introspection") == 1
    assert otlp.data.wait_for(lambda s, logs: len(transitions(otlp)) >= 2)
    down, up = transitions(otlp)[:2]
    assert (down["attributes"]["gatewatch.auth.provider.to"], up["attributes"]["gatewatch.auth.provider.to"]) == \
        ("down", "up")
    assert down["attributes"]["gatewatch.auth.provider"] == endpoint


async def test_wrong_client_credentials_are_an_unavailable_endpoint(tmp_path, idp, echo):
    cfg = policy_config(echo, tmp_path, [introspection_policy(idp, client_secret="not-it")])
    async with running(cfg) as rt:
        status, _, _ = await get(rt, "tok-any")
        assert status == 503 and idp.hits["introspect"] == 1
        assert provider_up(rt, idp.introspection_endpoint, "introspection") == 0


async def test_the_admin_config_never_shows_the_client_secret(tmp_path, idp, echo):
    cfg = policy_config(echo, tmp_path, [introspection_policy(idp)])
    async with running(cfg) as rt:
        host, port = rt.admin_bound
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{host}:{port}/config") as r:
                text = await r.text()
    assert r.status == 200 and CLIENT_SECRET not in text and json.dumps(CLIENT_SECRET)[1:-1] not in text
    policy = json.loads(text)["edge"]["routes"][0]["policies"][0]
    assert policy["client_secret"] == "<redacted>"  # one marker for every secret (gatewatch.app.redact)


async def test_reloads_keep_the_key_set_and_a_dropped_issuer_is_let_go(tmp_path, idp, echo):
    import gc

    import yaml

    from gatewatch.app.runtime import Runtime
    from gatewatch.config import load_config

    path = tmp_path / "gatewatch.yaml"
    with_policy = policy_config(echo, tmp_path, [jwt_policy(idp)])
    path.write_text(yaml.safe_dump(with_policy))
    rt = Runtime(load_config(path), env={}, config_path=str(path))
    await rt.start()
    try:
        tok = token("RS256", "r1", iss=idp.issuer)
        assert (await get(rt, tok))[0] == 200
        assert await rt.reload() == (True, [])  # the same policy: its key set (and schedule) carries on
        assert (await get(rt, tok))[0] == 200
        assert (idp.hits["discovery"], idp.hits["jwks"]) == (1, 1)
        without = policy_config(echo, tmp_path, [])
        path.write_text(yaml.safe_dump(without))
        assert await rt.reload() == (True, [])
        gc.collect()
        assert len(rt.policy_resources.jwks) == 0  # no policy holds it: its schedule ends at its next wake-up
        assert provider_up(rt, idp.issuer, "jwks") == 1
    finally:
        await rt.stop(grace_s=1.0)
