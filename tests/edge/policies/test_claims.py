"""The scope and claim check both bearer-token policies use (`claims.shortfall`), table-driven, and the
RFC 6750 §3 challenges they answer with."""

from __future__ import annotations

import pytest

from gatewatch.edge.policies.claims import Shortfall, challenges, scopes, shortfall
from gatewatch.edge.policies.config import IntrospectionPolicyConfig, JwtPolicyConfig

MISSING, SCOPE = Shortfall.MISSING_CLAIM, Shortfall.INSUFFICIENT_SCOPE


@pytest.mark.parametrize("claims,granted", [
    ({"scope": "read  write"}, {"read", "write"}),  # RFC 8693 §4.2 / RFC 9068: space-separated
    ({"scp": ["read", "write", 7]}, {"read", "write"}),  # a list (non-strings ignored)
    ({"scope": "read", "scp": ["admin"]}, {"read"}),  # `scope` wins when both are present
    ({"scope": 42}, set()),
    ({}, set()),
])
def test_granted_scopes(claims, granted):
    assert scopes(claims) == granted


@pytest.mark.parametrize("claims,required_claims,required_scopes,expected", [
    ({"scope": "a b"}, {}, ("a",), None),
    ({"scope": "a b"}, {}, ("a", "c"), SCOPE),
    ({"scp": ["c"]}, {}, ("c",), None),
    ({}, {}, ("a",), SCOPE),
    ({"tenant": "acme"}, {"tenant": "acme"}, (), None),
    ({"tenant": "acme"}, {"tenant": ("globex", "acme")}, (), None),
    ({"tenant": "initech"}, {"tenant": "acme"}, (), MISSING),
    ({}, {"tenant": "acme"}, (), MISSING),
    ({"aud": ["billing", "orders-api"]}, {"aud": "orders-api"}, (), None),  # a list claim: one element matches
    ({"email_verified": True}, {"email_verified": "true"}, (), None),
    ({"email_verified": False}, {"email_verified": "true"}, (), MISSING),
    ({"tier": 2}, {"tier": "2"}, (), None),
    ({"tier": {"n": 2}}, {"tier": "2"}, (), MISSING),
    ({"tenant": "initech", "scope": ""}, {"tenant": "acme"}, ("a",), MISSING),  # claims first: not this route's
])
def test_shortfall(claims, required_claims, required_scopes, expected):
    assert shortfall(claims, required_claims, required_scopes) is expected


def test_both_policies_share_the_check_and_the_challenges():
    jwt = JwtPolicyConfig(name="a", type="jwt", issuer="https://idp.example", audience="x",
                          keys=[{"secret": "s" * 32}], required_scopes=["orders:read", "orders:write"])
    opaque = IntrospectionPolicyConfig(name="b", type="introspection", endpoint="https://idp.example/i",
                                       client_id="c", client_secret="s",
                                       required_scopes=["orders:read", "orders:write"])
    for cfg in (jwt, opaque):
        c = challenges(cfg)
        assert c.unauthorized == (("WWW-Authenticate", 'Bearer realm="gatewatch"'),)
        assert c.invalid == (("WWW-Authenticate", 'Bearer realm="gatewatch", error="invalid_token"'),)
        assert c.scope == (("WWW-Authenticate", 'Bearer realm="gatewatch", error="insufficient_scope", '
                                                 'scope="orders:read orders:write"'),)
