"""Config of the OAuth2 / OIDC policies: what parses (discovery by `issuer` alone, introspection with a secret
file), and every mistake a config error naming the field path."""

from __future__ import annotations

import pytest

from gatewatch.config import ConfigError, parse_config
from tests.support.certs import Pki
from tests.support.runtime import in_process_config

ISSUER = "https://login.example.com/realms/acme"
AT = "edge.routes[0].policies[0]"


def parse(tmp_path, policy: dict):
    return parse_config(in_process_config([1], tmp_path, policies=[{"name": "auth", **policy}]))


def problems(tmp_path, policy: dict) -> list[str]:
    with pytest.raises(ConfigError) as e:
        parse(tmp_path, policy)
    return e.value.problems


def jwt(**over) -> dict:
    return {"type": "jwt", "issuer": ISSUER, "audience": "api", **over}


def opaque(**over) -> dict:
    return {"type": "introspection", "endpoint": ISSUER + "/introspect", "client_id": "gw", "client_secret": "s",
            **over}


def test_an_issuer_alone_means_discovery(tmp_path):
    for policy in (jwt(), jwt(jwks={"refresh_s": 60}), jwt(keys=[{"secret": "s" * 32}], jwks={})):
        p = parse(tmp_path, policy).edge.routes[0].policies[0]
        assert p.discovers
    assert not parse(tmp_path, jwt(jwks={"url": ISSUER + "/keys"})).edge.routes[0].policies[0].discovers
    assert not parse(tmp_path, jwt(keys=[{"secret": "s" * 32}])).edge.routes[0].policies[0].discovers


def test_introspection_defaults_and_a_secret_file(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    p = parse(tmp_path, opaque(client_secret=None, client_secret_file=str(secret))).edge.routes[0].policies[0]
    assert (p.fail_mode, p.timeout_s, p.token_type_hint, p.cache.max_entries) == ("closed", 1.0, "access_token", 10000)
    assert p.secret() == "from-a-file"


def test_tls_with_a_ca_file_parses(tmp_path):
    ca = Pki(tmp_path / "pki").ca_file
    assert parse(tmp_path, jwt(tls={"ca_file": ca})).edge.routes[0].policies[0].tls.ca_file == ca
    assert parse(tmp_path, opaque(tls={"ca_file": ca})).edge.routes[0].policies[0].tls.ca_file == ca


@pytest.mark.parametrize("policy,field,message", [
    (jwt(issuer=[ISSUER, "https://other.example"]), "jwt.issuer", "needs exactly one issuer"),
    (jwt(issuer="https://login.example.com/?realm=acme"), "jwt.issuer", "without query or fragment"),
    (jwt(issuer="login.example.com"), "jwt.issuer", "http(s) URL"),
    (jwt(keys=[{"secret": "s" * 32}], tls={"ca_file": None}), "jwt.tls", "https:// endpoints only"),
    (jwt(jwks={"url": "http://idp.internal/keys"}, tls={}), "jwt.tls", "https:// endpoints only"),
    (jwt(tls={"ca_file": "/nonexistent/ca.pem"}), "jwt.tls", "ca_file: cannot load"),
    (jwt(jwks={"retry_after_s": 10, "retry_max_s": 5}), "jwt.jwks.retry_max_s", "at least retry_after_s"),
    (jwt(required_scopes=["orders read"]), "jwt.required_scopes", "not a scope token"),
    (opaque(client_secret_file="/nonexistent"), "introspection.client_secret_file", "exactly one"),
    (opaque(client_secret=None), "introspection.client_secret_file", "exactly one"),
    (opaque(client_secret=None, client_secret_file="/nonexistent"), "introspection.client_secret_file",
     "cannot read"),
    (opaque(endpoint="http://idp.internal/introspect", tls={}), "introspection.tls", "https:// endpoints only"),
    (opaque(endpoint="ftp://idp/introspect"), "introspection.endpoint", "should match pattern"),
    (opaque(fail_mode="maybe"), "introspection.fail_mode", "'closed' or 'open'"),
    (opaque(timeout_s=0), "introspection.timeout_s", "greater than 0"),
    (opaque(retry_after_s=5, retry_max_s=1), "introspection.retry_max_s", "at least retry_after_s"),
    (opaque(cache={"max_entries": -1}), "introspection.cache.max_entries", "greater than or equal to 0"),
    (opaque(required_scopes=['a"b']), "introspection.required_scopes", "not a scope token"),
    (opaque(introspection_url="x"), "introspection.introspection_url", "unknown key"),
])
def test_mistakes_name_the_field(tmp_path, policy, field, message):
    found = problems(tmp_path, policy)
    assert any(p.startswith(f"{AT}.{field}:") and message in p for p in found), found
