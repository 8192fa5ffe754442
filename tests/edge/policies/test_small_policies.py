"""Table-driven verdicts of the policies that need no server: api_key (and its hash CLI), cors, headers,
path_rewrite, size_limit, json_schema."""

from __future__ import annotations

import io

import pytest

from gatewatch.edge.policies import apikey
from gatewatch.edge.policies.apikey import ApiKeyPolicy, hash_key
from gatewatch.edge.policies.config import (ApiKeyPolicyConfig, CorsPolicyConfig, JsonSchemaPolicyConfig,
                                  PathRewritePolicyConfig, SizeLimitPolicyConfig)
from gatewatch.edge.policies.cors import CorsPolicy
from gatewatch.edge.policies.schema import JsonSchemaPolicy
from gatewatch.edge.policies.size import SizeLimitPolicy
from gatewatch.edge.policies.transform import PathRewritePolicy
from tests.edge.policies.support import collect, request

KEYS = [{"consumer": "acme", "hash": hash_key("k-acme"), "plan": "gold"}]


@pytest.mark.parametrize("over,headers,query,verdict,reason,consumer", [
    ({}, [("X-API-Key", "k-acme")], "", "allow", "apikey.valid", "acme"),
    ({}, [("X-API-Key", "k-other")], "", "deny", "apikey.invalid", None),
    ({}, [], "", "deny", "apikey.missing", None),
    ({}, [("X-API-Key", "x" * 10_000)], "", "deny", "apikey.invalid", None),
    ({"query": "api_key"}, [], "api_key=k-acme", "allow", "apikey.valid", "acme"),
    ({"header": None, "query": "api_key"}, [("X-API-Key", "k-acme")], "", "deny", "apikey.missing", None),
    ({"shadow": True}, [("X-API-Key", "k-other")], "", "shadow_deny", "apikey.invalid", None),
])
async def test_api_key(over, headers, query, verdict, reason, consumer):
    cfg = ApiKeyPolicyConfig(**{"name": "key", "type": "api_key", "keys": KEYS, **over})
    req = request(headers=headers + [("X-Consumer", "spoofed")], query=query)
    v = await ApiKeyPolicy(cfg).evaluate(req)
    assert (v.verdict.value, v.reason, req.consumer) == (verdict, reason, consumer)
    assert "x-consumer" in req.upstream_remove  # the client's copy never reaches the upstream
    if cfg.header:
        assert cfg.header.lower() in req.upstream_remove  # nor the key itself
    if consumer:
        assert req.plan == "gold" and ("X-Consumer", "acme") in req.upstream_set
    if verdict == "deny":
        assert (v.status, v.outcome.value) == (401, "denied_auth")
    assert "k-acme" not in repr(v)


def test_apikey_cli_hash_and_generate(capsys, monkeypatch):
    assert apikey.main(["hash", "k-acme"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("k-acme")
    monkeypatch.setattr("sys.stdin", io.StringIO("k-acme\n"))
    assert apikey.main(["hash"]) == 0
    assert capsys.readouterr().out.strip() == hash_key("k-acme")
    assert apikey.main(["generate"]) == 0
    key_line, hash_line = capsys.readouterr().out.strip().splitlines()
    assert hash_key(key_line.split()[1]) == hash_line.split()[1]
    ApiKeyPolicyConfig(name="k", type="api_key", keys=[{"consumer": "c", "hash": hash_line.split()[1]}])


CORS = {"name": "cors", "type": "cors", "allow_origins": ["https://app.example"], "allow_methods": ["GET", "PUT"],
        "allow_headers": ["X-Trace"], "expose_headers": ["X-Total"]}
PRE = [("Origin", "https://app.example"), ("Access-Control-Request-Method", "PUT")]


@pytest.mark.parametrize("over,method,headers,verdict,reason,status,added", [
    ({}, "GET", [], "allow", "cors.no_origin", None, []),
    ({}, "GET", [("Origin", "https://app.example")], "allow", "cors.allowed", None,
     [("Access-Control-Allow-Origin", "https://app.example"), ("Vary", "Origin"),
      ("Access-Control-Expose-Headers", "X-Total")]),
    ({}, "GET", [("Origin", "https://evil.example")], "deny", "cors.origin_denied", 403, []),
    ({}, "OPTIONS", PRE, "allow", "cors.preflight", 204, []),
    ({}, "OPTIONS", PRE + [("Access-Control-Request-Headers", "x-trace")], "allow", "cors.preflight", 204, []),
    ({}, "OPTIONS", PRE + [("Access-Control-Request-Headers", "x-secret")], "deny", "cors.origin_denied", 403, []),
    ({}, "OPTIONS", [("Origin", "https://app.example"), ("Access-Control-Request-Method", "DELETE")], "deny",
     "cors.origin_denied", 403, []),
    ({"allow_origins": ["*"]}, "GET", [("Origin", "https://any.example")], "allow", "cors.allowed", None,
     [("Access-Control-Allow-Origin", "*"), ("Access-Control-Expose-Headers", "X-Total")]),
    ({"shadow": True}, "OPTIONS", PRE, "allow", "cors.preflight", None, []),  # shadow: never answers itself
    ({"shadow": True}, "GET", [("Origin", "https://evil.example")], "shadow_deny", "cors.origin_denied", None, []),
])
async def test_cors(over, method, headers, verdict, reason, status, added):
    req = request(method=method, headers=headers)
    v = await CorsPolicy(CorsPolicyConfig(**{**CORS, **over})).evaluate(req)
    assert (v.verdict.value, v.reason) == (verdict, reason)
    assert (v.status if v.block else None) == status
    assert req.response_headers == added
    if status == 204:
        h = dict(v.headers)
        assert v.outcome.value == "preflight" and h["Access-Control-Allow-Methods"] == "GET, PUT"


def test_cors_credentials_with_wildcard_is_a_config_error():
    with pytest.raises(ValueError, match="allow_credentials"):
        CorsPolicyConfig(**{**CORS, "allow_origins": ["*"], "allow_credentials": True})


@pytest.mark.parametrize("regex,replacement,path,new_path,reason", [
    ("^/api/(.*)$", "/v2/\\1", "/api/a/b", "/v2/a/b", "rewrite.applied"),
    ("^/old", "/new", "/old/x", "/new/x", "rewrite.applied"),
    ("^/nomatch", "/x", "/api/a", "/api/a", "rewrite.no_match"),
    ("^/api/(.*)$", "/a/../../\\1", "/api/etc", "/etc", "rewrite.applied"),  # dot segments resolved, never above /
    ("^/api/(.*)$", "/x y", "/api/a", "/api/a", "rewrite.invalid_result"),  # not a valid path: original kept
])
async def test_path_rewrite(regex, replacement, path, new_path, reason):
    req = request(path=path)
    v = await PathRewritePolicy(PathRewritePolicyConfig(name="rw", type="path_rewrite", regex=regex,
                                                        replacement=replacement)).evaluate(req)
    assert (v.reason, req.path) == (reason, new_path)


def test_bad_regex_is_a_config_error():
    with pytest.raises(ValueError, match="invalid regular expression"):
        PathRewritePolicyConfig(name="rw", type="path_rewrite", regex="(", replacement="/")


@pytest.mark.parametrize("headers,chunks,verdict,reason,forwarded", [
    ([("Content-Length", "5")], [b"hello"], "allow", "size.within_limit", None),
    ([("Content-Length", "6")], [b"hello!"], "deny", "size.too_large", None),
    ([("Transfer-Encoding", "chunked")], [b"he", b"llo"], "allow", "size.within_limit", b"hello"),
    ([("Transfer-Encoding", "chunked")], [b"hel", b"lo!"], "deny", "size.too_large", None),
])
async def test_size_limit(headers, chunks, verdict, reason, forwarded):
    req = request(method="POST", headers=headers, body=chunks)
    v = await SizeLimitPolicy(SizeLimitPolicyConfig(name="s", type="size_limit", max_bytes=5)).evaluate(req)
    assert (v.verdict.value, v.reason) == (verdict, reason)
    if forwarded is not None:
        assert await collect(req.body) == forwarded


@pytest.mark.parametrize("schema,problem", [
    ({"type": "nonsense"}, "invalid JSON Schema"),
    (None, "exactly one"),
    ({"properties": {"a": {"$ref": "http://127.0.0.1:9/x.json"}}}, "only local \\$ref"),
])
def test_bad_schema_is_a_config_error(schema, problem):
    with pytest.raises(ValueError, match=problem):
        JsonSchemaPolicyConfig(name="j", type="json_schema", schema=schema)


async def test_schema_shadow_forwards_the_body_it_read():
    cfg = JsonSchemaPolicyConfig(name="j", type="json_schema", schema={"type": "array"}, shadow=True)
    req = request(method="POST", headers=[("Content-Type", "application/json")], body=[b'{"a"', b": 1}"])
    v = await JsonSchemaPolicy(cfg).evaluate(req)
    assert (v.verdict.value, v.reason) == ("shadow_deny", "schema.invalid")
    assert await collect(req.body) == b'{"a": 1}'


async def test_admin_config_never_shows_secrets(tmp_path):
    import aiohttp

    from tests.edge.policies.jwt_keys import AUD, HMAC_SECRET, ISS
    from tests.edge.policies.support import policy_config
    from tests.support.runtime import running

    cfg = policy_config(1, tmp_path, [
        {"name": "auth", "type": "jwt", "issuer": ISS, "audience": AUD, "algorithms": ["HS256"],
         "keys": [{"secret": HMAC_SECRET}]},
        {"name": "rl", "type": "rate_limit", "limit": 1, "window_s": 1, "store": "redis",
         "redis": {"url": "redis://user:hunter2@127.0.0.1:1/0"}}])
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        host, port = rt.admin_bound
        async with s.get(f"http://{host}:{port}/config") as r:
            text = await r.text()
    assert r.status == 200 and HMAC_SECRET not in text and "hunter2" not in text
    assert "redis://<redacted>@127.0.0.1:1/0" in text


async def test_schema_local_refs_work_and_a_dangling_one_is_an_error_not_a_crash():
    schema = {"$defs": {"n": {"type": "integer"}}, "properties": {"a": {"$ref": "#/$defs/n"},
                                                                   "b": {"$ref": "#/$defs/missing"}}}
    pol = JsonSchemaPolicy(JsonSchemaPolicyConfig(name="j", type="json_schema", schema=schema))

    async def judge(body):
        v = await pol.evaluate(request(method="POST", headers=[("Content-Type", "application/json")], body=[body]))
        return v.verdict.value, v.reason, v.status if v.block else None

    assert await judge(b'{"a": 1}') == ("allow", "schema.valid", None)
    assert await judge(b'{"a": "x"}') == ("deny", "schema.invalid", 400)
    assert await judge(b'{"b": 1}') == ("error", "schema.invalid", 500)
