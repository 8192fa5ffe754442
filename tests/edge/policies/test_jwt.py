"""The jwt policy's verdict for valid and hostile tokens: each case → the exact reason (table-driven)."""

from __future__ import annotations

import time

import pytest

from gatewatch.config import ConfigError, parse_config
from gatewatch.edge.policies.config import JwtPolicyConfig
from gatewatch.edge.policies.jwt_auth import JwtPolicy
from tests.edge.policies.jwt_keys import (AUD, HMAC_SECRET, ISS, claims, public_pem, raw_token, token)
from tests.edge.policies.support import request


def policy(**over) -> JwtPolicy:
    cfg = {"name": "auth", "type": "jwt", "issuer": ISS, "audience": AUD,
           "algorithms": ["RS256", "PS256", "ES256", "EdDSA", "HS256"],
           "keys": [{"kid": "r1", "public_key": public_pem("r1")}, {"kid": "e1", "public_key": public_pem("e1")},
                    {"kid": "d1", "public_key": public_pem("d1")}, {"kid": "h1", "secret": HMAC_SECRET}],
           "forward_claims": {"X-User": "sub"}}
    cfg.update(over)
    return JwtPolicy(JwtPolicyConfig(**cfg), None)


def bearer(tok):
    return [("Authorization", f"Bearer {tok}")]




def now() -> int:  # at evaluation time: the table is built when the module is collected, maybe minutes earlier
    return int(time.time())


CASES = [
    ("valid RS256", lambda: bearer(token("RS256", "r1")), "allow", "jwt.valid", 200),
    ("valid PS256", lambda: bearer(token("PS256", "r1")), "allow", "jwt.valid", 200),
    ("valid ES256", lambda: bearer(token("ES256", "e1")), "allow", "jwt.valid", 200),
    ("valid EdDSA", lambda: bearer(token("EdDSA", "d1")), "allow", "jwt.valid", 200),
    ("valid HS256", lambda: bearer(token("HS256", "h1")), "allow", "jwt.valid", 200),
    ("no token", lambda: [], "deny", "jwt.missing", 401),
    ("not bearer", lambda: [("Authorization", "Basic dXNlcjpwYXNz")], "deny", "jwt.missing", 401),
    ("garbage", lambda: bearer("abc.def"), "deny", "jwt.malformed", 401),
    ("alg none", lambda: bearer(raw_token({"alg": "none", "kid": "r1"}, claims())), "deny", "jwt.alg_not_allowed",
     401),
    ("alg None spelled oddly", lambda: bearer(raw_token({"alg": "nOnE"}, claims())), "deny", "jwt.alg_not_allowed",
     401),
    ("alg not listed", lambda: bearer(token("RS384", "r1")), "deny", "jwt.alg_not_allowed", 401),
    # HS256 signed with the RSA public key's PEM as the HMAC secret, naming the RSA key: classic confusion
    ("HS/RS confusion", lambda: bearer(raw_token({"alg": "HS256", "kid": "r1"}, claims(),
                                                 secret=public_pem("r1").encode())), "deny", "jwt.alg_not_allowed",
     401),
    ("ES256 naming the RSA key", lambda: bearer(token("ES256", "e1", headers={"kid": "r1"})), "deny",
     "jwt.alg_not_allowed", 401),
    ("expired", lambda: bearer(token(exp=now() - 3600)), "deny", "jwt.expired", 401),
    ("expired within leeway", lambda: bearer(token(exp=now() - 5)), "allow", "jwt.valid", 200),
    ("future nbf", lambda: bearer(token(nbf=now() + 3600)), "deny", "jwt.not_yet_valid", 401),
    ("wrong aud", lambda: bearer(token(aud="someone-else")), "deny", "jwt.bad_audience", 401),
    ("wrong iss", lambda: bearer(token(iss="https://evil.example")), "deny", "jwt.bad_issuer", 401),
    ("no exp", lambda: bearer(token(exp=None)), "deny", "jwt.missing_claim", 401),
    ("unknown kid", lambda: bearer(token("RS256", "r1", headers={"kid": "nope"})), "deny", "jwt.unknown_kid", 401),
    ("oversized", lambda: bearer(token(pad="x" * 9000)), "deny", "jwt.oversized", 401),
    ("crit", lambda: bearer(token(headers={"crit": ["exp"]})), "deny", "jwt.forbidden_header", 401),
    ("jku", lambda: bearer(token(headers={"jku": "https://evil.example/jwks"})), "deny", "jwt.forbidden_header",
     401),
    ("x5u", lambda: bearer(token(headers={"x5u": "https://evil.example/cert"})), "deny", "jwt.forbidden_header",
     401),
    ("embedded jwk", lambda: bearer(token(headers={"jwk": {"kty": "oct", "k": "AAAA"}})), "deny",
     "jwt.forbidden_header", 401),
    ("tampered payload", lambda: bearer(_tamper(token())), "deny", "jwt.bad_signature", 401),
    ("expired and bad signature", lambda: bearer(_tamper(token(exp=now() - 3600))), "deny", "jwt.bad_signature",
     401),
]


def _tamper(tok: str) -> str:
    h, p, s = tok.split(".")
    other = token(sub="mallory").split(".")[1]
    return f"{h}.{other}.{s}"


@pytest.mark.parametrize("name,headers,verdict,reason,status", CASES, ids=[c[0] for c in CASES])
async def test_token_table(name, headers, verdict, reason, status):
    v = await policy().evaluate(request(headers=headers()))
    assert (v.verdict.value, v.reason) == (verdict, reason)
    if verdict == "deny":
        assert (v.block, v.status, v.outcome.value) == (True, status, "denied_auth")
        assert v.headers[0][0] == "WWW-Authenticate"
    assert "Bearer" not in repr(v.attributes) and "eyJ" not in repr(v.attributes)  # never the token


@pytest.mark.parametrize("over,tok_claims,verdict,reason", [
    ({"required_scopes": ["write"]}, {}, "allow", "jwt.valid"),
    ({"required_scopes": ["admin"]}, {}, "deny", "jwt.insufficient_scope"),
    ({"required_scopes": ["admin"]}, {"scope": None, "scp": ["admin"]}, "allow", "jwt.valid"),
    ({"required_claims": {"tenant": "acme"}}, {"tenant": "acme"}, "allow", "jwt.valid"),
    ({"required_claims": {"tenant": ["acme", "globex"]}}, {"tenant": "globex"}, "allow", "jwt.valid"),
    ({"required_claims": {"tenant": "acme"}}, {"tenant": "initech"}, "deny", "jwt.missing_claim"),
    ({"required_claims": {"roles": "admin"}}, {"roles": ["user", "admin"]}, "allow", "jwt.valid"),
    ({"required_claims": {"email_verified": "true"}}, {"email_verified": True}, "allow", "jwt.valid"),
    ({"required_claims": {"email_verified": "true"}}, {"email_verified": False}, "deny", "jwt.missing_claim"),
    ({"required_claims": {"tier": "2"}}, {"tier": 2}, "allow", "jwt.valid"),
    ({"require_nbf": True}, {}, "deny", "jwt.missing_claim"),
    ({"audience": ["other", AUD]}, {}, "allow", "jwt.valid"),
])
async def test_claim_and_scope_requirements(over, tok_claims, verdict, reason):
    v = await policy(**over).evaluate(request(headers=bearer(token(**tok_claims))))
    assert (v.verdict.value, v.reason) == (verdict, reason)
    if reason == "jwt.insufficient_scope":
        assert v.status == 403


async def test_identity_goes_upstream_and_client_copies_are_stripped():
    req = request(headers=bearer(token(sub="alice")) + [("X-User", "root")])
    v = await policy(plan_claim="plan").evaluate(req)
    assert v.reason == "jwt.valid" and req.consumer == "alice"
    assert req.upstream_set == [("X-User", "alice")] and "x-user" in req.upstream_remove
    denied = request(headers=[("X-User", "root")])
    await policy().evaluate(denied)  # even a refused (or shadow-denied) request never forwards the copy
    assert "x-user" in denied.upstream_remove


@pytest.mark.parametrize("source,headers,query", [
    ({"cookie": "session"}, [("Cookie", "a=b; session=TOKEN")], ""),
    ({"query": "access_token"}, [], "access_token=TOKEN"),
    ({"header": "X-Token"}, [("X-Token", "TOKEN")], ""),
])
async def test_token_sources(source, headers, query):
    tok = token()
    headers = [(k, v.replace("TOKEN", tok)) for k, v in headers]
    v = await policy(**source).evaluate(request(headers=headers, query=query.replace("TOKEN", tok)))
    assert v.reason == "jwt.valid"


async def test_shadow_mode_lets_a_bad_token_through_as_shadow_deny():
    v = await policy(shadow=True).evaluate(request(headers=bearer(token(exp=now() - 3600))))
    assert (v.verdict.value, v.reason, v.block) == ("shadow_deny", "jwt.expired", False)


@pytest.mark.parametrize("key,problem", [
    ({"secret": "short"}, "at least 32 bytes"),
    ({"public_key_file": "/nonexistent.pem"}, "cannot load key"),
    ({"public_key": "not a pem"}, "cannot load key"),
    ({"secret": HMAC_SECRET, "public_key": "x"}, "exactly one"),
    ({"secret": HMAC_SECRET, "algorithms": ["RS256"]}, "cannot verify"),
])
def test_bad_keys_are_config_errors_naming_the_field(tmp_path, key, problem):
    from tests.support.runtime import in_process_config

    cfg = in_process_config([1], tmp_path, policies=[{"name": "auth", "type": "jwt", "issuer": ISS,
                                                      "audience": AUD, "keys": [key]}])
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert any(p.startswith("edge.routes[0].policies[0].jwt.keys[0]") and problem in p
               for p in e.value.problems), e.value.problems


@pytest.mark.parametrize("offset_s,reason", [
    (0, "jwt.valid"), (300 + 30, "jwt.valid"), (300 + 31, "jwt.expired"),  # exp = iat + 300, leeway 30
    (-60 - 30, "jwt.valid"), (-60 - 31, "jwt.not_yet_valid"),  # nbf = iat - 60
])
async def test_validity_is_judged_on_the_requests_clock(offset_s, reason):
    t = 1_700_000_000
    tok = token(iat=t, exp=t + 300, nbf=t - 60)
    v = await policy().evaluate(request(headers=bearer(tok), now=t + offset_s))
    assert v.reason == reason


async def test_non_numeric_exp_is_malformed():
    v = await policy().evaluate(request(headers=bearer(token(exp="tomorrow"))))
    assert v.reason in ("jwt.malformed",)


@pytest.mark.parametrize("sub,forwarded", [("alice", [("X-User", "alice")]), ("a\r\nX-Admin: 1", []),
                                           ("a\x00b", []), ("x" * 2000, [])])
async def test_forwarded_claims_never_carry_control_characters(sub, forwarded):
    req = request(headers=bearer(token(sub=sub)))
    await policy().evaluate(req)
    assert req.upstream_set == forwarded
