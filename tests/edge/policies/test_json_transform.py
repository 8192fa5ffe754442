"""`json_transform`: the edits as a pure function (table), the policy on its own, and end to end through a real
runtime and a real aiohttp backend — what the upstream receives, what the client gets, and the decision logs."""

from __future__ import annotations

import gzip
import json

import aiohttp
import pytest
from aiohttp import web

from gatewatch.config import ConfigError, parse_config
from gatewatch.edge.policies.config import JsonEditsConfig
from gatewatch.edge.policies.json_transform import Edits, JsonTransformPolicy
from gatewatch.telemetry.names import Verdict
from tests.edge.policies.support import collect, policy_config, policy_logs, request, server_span
from tests.support.net import edge_port, start_app
from tests.support.runtime import running

EDITS = {"remove": ["password", "internal.debug"], "rename": {"userName": "user.name"},
         "add": {"meta.source": "gateway", "meta.tags": ["a"]}}


@pytest.mark.parametrize("doc, edits, after, changes", [
    ({"password": "x", "userName": "ada", "keep": 1}, EDITS,
     {"keep": 1, "user": {"name": "ada"}, "meta": {"source": "gateway", "tags": ["a"]}},
     ["remove:password", "rename:userName>user.name", "add:meta.source", "add:meta.tags"]),
    ({"internal": {"debug": True, "x": 1}}, {"remove": ["internal.debug", "absent.deep"]}, {"internal": {"x": 1}},
     ["remove:internal.debug"]),
    ({"a": "text"}, {"add": {"a.b": 1}}, {"a": "text"}, []),  # crosses a string: nothing changes
    ({"a": {"b": 1}}, {"rename": {"a.b": "c.d.e"}}, {"a": {}, "c": {"d": {"e": 1}}}, ["rename:a.b>c.d.e"]),
    ({"a": 1}, {"rename": {"missing": "b"}}, {"a": 1}, []),
    ({"a": 1}, {"add": {"a": {"replaced": True}}}, {"a": {"replaced": True}}, ["add:a"]),
    ([1, 2], {"remove": ["a"]}, [1, 2], []),  # not an object: paths do not enter arrays
])
def test_edits(doc, edits, after, changes):
    assert Edits(JsonEditsConfig(**edits)).apply(doc) == changes
    assert doc == after


def test_added_values_are_fresh_copies():
    edits = Edits(JsonEditsConfig(add={"list": [1]}))
    first, second = {}, {}
    edits.apply(first)
    first["list"].append(2)
    edits.apply(second)
    assert second == {"list": [1]}


def policy(**cfg):
    full = parse_config({"admin": {"address": "127.0.0.1:0"}, "edge": {
        "listeners": [{"name": "l", "address": "127.0.0.1:0"}], "upstreams": [{"name": "u", "url": "http://h:1"}],
        "routes": [{"name": "r", "upstream": "u", "policies": [{"name": "t", "type": "json_transform", **cfg}]}]}})
    return JsonTransformPolicy(full.edge.routes[0].policies[0])


JSON = [("Content-Type", "application/json")]


@pytest.mark.parametrize("headers, body, reason, verdict", [
    (JSON, None, "json_transform.request_skipped", "allow"),
    ([("Content-Type", "text/plain")], [b'{"password": 1}'], "json_transform.request_skipped", "allow"),
    ([("Content-Type", "application/json"), ("Content-Encoding", "gzip")], [b"x"],
     "json_transform.request_skipped", "allow"),
    ([("Content-Type", "application/problem+json")], [b'{"password": 1}'], "json_transform.request_applied", "allow"),
    (JSON, [b'{"other": 1}'], "json_transform.request_skipped", "allow"),  # nothing to change: bytes kept
    (JSON, [b'{"pass', b'word": 1'], "json_transform.request_invalid_json", "deny"),
    (JSON + [("Content-Length", "101")], [b"{}"], "size.too_large", "deny"),
    (JSON, [b'{"password": "', b"x" * 100, b'"}'], "size.too_large", "deny"),  # no length: counted
])
async def test_request_verdicts(headers, body, reason, verdict):
    p = policy(request={"remove": ["password"]}, max_bytes=100)
    req = request("POST", headers=headers, body=body)
    v = await p.evaluate(req)
    assert (v.verdict.value, v.reason) == (verdict, reason)
    if verdict == "deny":
        assert v.status == (413 if reason == "size.too_large" else 400)
    if reason == "json_transform.request_applied":
        assert await collect(req.body) == b"{}" and req.upstream_set == [("Content-Length", "2")]


async def test_shadow_records_and_sends_the_original():
    p = policy(request={"remove": ["password"]}, shadow=True)
    req = request("POST", headers=JSON, body=[b'{"password": 1}'])
    v = await p.evaluate(req)
    assert v.verdict is Verdict.ALLOW and v.reason == "json_transform.request_applied"
    assert await collect(req.body) == b'{"password": 1}' and req.upstream_set == []


@pytest.mark.parametrize("cfg, problem", [
    ({}, "edge.routes[0].policies[0].json_transform: give request, response or both"),
    ({"request": {}}, "edge.routes[0].policies[0].json_transform.request: give at least one of remove, rename, add"),
    ({"request": {"remove": ["a..b"]}},
     "edge.routes[0].policies[0].json_transform.request: remove: 'a..b' is not a dotted path of keys (e.g. "
     "'user.name')"),
    ({"response": {"rename": {"a": "a.b"}}},
     "edge.routes[0].policies[0].json_transform.response: rename: 'a' cannot move into itself ('a.b')"),
])
def test_config_errors_name_the_field(cfg, problem):
    with pytest.raises(ConfigError) as err:
        policy(**cfg)
    assert problem in err.value.problems, err.value.problems


# --- end to end ---

async def backend(request: web.Request) -> web.Response:
    if request.method == "POST":
        raw = await request.read()
        return web.json_response({"received": json.loads(raw) if raw[:1] in (b"{", b"[") else raw.decode(),
                                  "length_ok": request.content_length == len(raw),
                                  "chunked": "chunked" in request.headers.get("Transfer-Encoding", "")})
    doc = {"secret": "s", "a": {"b": 1}, "keep": True}
    if request.path == "/api/big":
        doc["pad"] = "x" * 3000
    if request.path == "/api/text":
        return web.Response(text=json.dumps(doc), headers={"ETag": '"t1"'})
    if request.path == "/api/gzip":
        return web.Response(body=gzip.compress(json.dumps(doc).encode()), content_type="application/json",
                            headers={"Content-Encoding": "gzip"})
    if request.path == "/api/chunked":
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        text = json.dumps(doc).encode()
        await resp.write(text[:10])
        await resp.write(text[10:])
        await resp.write_eof()
        return resp
    return web.json_response(doc, headers={"ETag": '"v1"'})


@pytest.fixture
async def json_backend():
    runner, port = await start_app(backend)
    yield port
    await runner.cleanup()


def route_config(port, tmp_path, otlp=None, data_plane="fast"):
    cfg = policy_config(port, tmp_path, [{"name": "shape", "type": "json_transform", "request": EDITS,
                                          "response": {"remove": ["secret"], "rename": {"a.b": "c"},
                                                       "add": {"v": 2}}, "max_bytes": 1000}])
    cfg["data_plane"] = data_plane
    if otlp is not None:
        cfg["telemetry"].update({"otlp": {"endpoint": otlp.grpc_endpoint, "protocol": "grpc"},
                                 "export_interval_s": 0.1})
    return cfg


@pytest.mark.parametrize("data_plane", ["fast", "aiohttp"])
async def test_request_body_is_rewritten_with_its_length(json_backend, tmp_path, data_plane):
    async with running(route_config(json_backend, tmp_path, data_plane=data_plane)) as rt:
        url = f"http://127.0.0.1:{edge_port(rt)}/api/echo"
        async with aiohttp.ClientSession() as s:
            async with s.post(url, json={"password": "x", "userName": "ada", "keep": 1}) as r:
                got = await r.json()
            assert got["received"] == {"keep": 1, "user": {"name": "ada"}, "meta": {"source": "gateway",
                                                                                    "tags": ["a"]}}
            assert got["length_ok"] and not got["chunked"]

            async def chunks():
                yield b'{"password": "x", '
                yield b'"keep": 2}'

            async with s.post(url, data=chunks(), headers={"Content-Type": "application/json"}) as r:
                got = await r.json()
            assert got["received"]["keep"] == 2 and "password" not in got["received"] and got["length_ok"]
            async with s.post(url, data=b"plain", headers={"Content-Type": "text/plain"}) as r:
                assert (await r.json())["received"] == "plain"
            async with s.post(url, data=b'{"broken', headers={"Content-Type": "application/json"}) as r:
                assert r.status == 400 and (await r.json())["error"]["outcome"] == "invalid_body"
            async with s.post(url, json={"pad": "x" * 2000}) as r:
                assert r.status == 413


async def test_response_body_is_rewritten_bounded_and_logged(json_backend, tmp_path, otlp):
    async with running(route_config(json_backend, tmp_path, otlp)) as rt:
        base = f"http://127.0.0.1:{edge_port(rt)}/api"
        async with aiohttp.ClientSession() as s:
            for path in ("/doc", "/chunked"):
                async with s.get(base + path) as r:
                    raw = await r.read()
                    assert json.loads(raw) == {"keep": True, "a": {}, "c": 1, "v": 2}
                    assert int(r.headers["Content-Length"]) == len(raw)
                    assert "ETag" not in r.headers  # the representation changed (RFC 9110 §8.8.3)
                    applied = r.headers["X-Request-Id"]
            async with s.get(base + "/big") as r:  # over max_bytes: relayed as it is
                assert "secret" in await r.json()
                too_large = r.headers["X-Request-Id"]
            async with s.get(base + "/text") as r:  # not JSON: untouched, ETag kept
                assert "secret" in json.loads(await r.read()) and r.headers["ETag"] == '"t1"'
            async with s.get(base + "/gzip", headers={"Accept-Encoding": "gzip"}) as r:
                assert "secret" in await r.json()  # content-coded: untouched
            async with s.post(base + "/echo", json={"password": "x"}) as r:
                posted = r.headers["X-Request-Id"]
        m = rt.metrics.policy_verdicts
        assert m.value(("api", "shape", "json_transform", "allow", "json_transform.response_applied")) == 3
        assert m.value(("api", "shape", "json_transform", "allow", "json_transform.response_too_large")) == 1
        assert m.value(("api", "shape", "json_transform", "allow", "json_transform.response_skipped")) == 2
    span = server_span(otlp, applied)
    assert span["attributes"]["gatewatch.policy.summary"] == [
        "shape=allow:json_transform.request_skipped", "shape=allow:json_transform.response_applied"]
    [log] = policy_logs(otlp, applied)
    a = log["attributes"]
    assert a["gatewatch.decision.reason"] == "json_transform.response_applied"
    assert a["gatewatch.transform.direction"] == "response"
    assert a["gatewatch.transform.changes"] == ["remove:secret", "rename:a.b>c", "add:v"]
    assert [r["attributes"]["gatewatch.decision.reason"] for r in policy_logs(otlp, too_large)] == [
        "json_transform.response_too_large"]
    logs = policy_logs(otlp, posted)
    request_log = next(r["attributes"] for r in logs if r["attributes"]["gatewatch.transform.direction"] == "request")
    assert request_log["gatewatch.transform.changes"] == ["remove:password", "add:meta.source", "add:meta.tags"]
    assert request_log["gatewatch.transform.bytes_before"] == len(b'{"password": "x"}')

