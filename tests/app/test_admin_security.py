"""Admin API security: the bearer token (RFC 6750), what stays open for probes, the browser checks (CSRF, DNS
rebinding), the config rules for the admin address, `/config` without secrets, the reload CLI with the token, and
the recent-events ring behind the admin page."""

from __future__ import annotations

import asyncio
import typing

import aiohttp
import pytest
import yaml
from aiohttp import web
from gatewatch.edge.policies.apikey import hash_key
from gatewatch.edge.policies.config import PolicyConfig
from gatewatch.telemetry.context import EventRecord
from gatewatch.telemetry.journal import Journal

from gatewatch.app import cli
from gatewatch.app.redact import REDACTED, redact_url, redacted_config
from gatewatch.app.runtime import Runtime
from gatewatch.config import ConfigError, load_config, parse_config
from tests.support.net import start_app
from tests.support.runtime import in_process_config, running

TOKEN = "admin-token-0123456789abcdef"
BEARER = {"Authorization": f"Bearer {TOKEN}"}


async def ok(_):
    return web.Response(text="ok")


def sample(text: str, reason: str) -> float:
    line = f'gatewatch_admin_auth_failures_total{{reason="{reason}"}} '
    return float(next(row for row in text.splitlines() if row.startswith(line)).split()[-1])


@pytest.mark.parametrize("protect_reads", [False, True])
async def test_token_guards_writes_and_optionally_reads(tmp_path, protect_reads):
    runner, port = await start_app(ok)
    (tmp_path / "token").write_text(f"  {TOKEN}\n")
    cfg = in_process_config([port], tmp_path)
    cfg["admin"].update({"token_file": str(tmp_path / "token"), "protect_reads": protect_reads})
    try:
        async with running(cfg) as rt, aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{rt.admin_bound[1]}"
            drain = f"{base}/upstreams/pool/instances/i0/drain"
            for path in ("/healthz", "/readyz", "/", "/admin.js", "/admin.css"):  # probes and the static page
                async with s.get(base + path) as r:
                    assert r.status == 200, path
            for path in ("/metrics", "/config", "/upstreams", "/events", "/status", "/routes", "/config/version"):
                async with s.get(base + path) as r:
                    assert r.status == (401 if protect_reads else 200), path
                async with s.get(base + path, headers=BEARER) as r:
                    assert r.status == 200, path
            async with s.post(drain) as r:  # RFC 6750 §3.1: no credentials → 401 without an error code
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == 'Bearer realm="gatewatch-admin"'
                assert (await r.json())["reason"] == "missing"
            async with s.post(drain, headers={"Authorization": f"Basic {TOKEN}"}) as r:  # another scheme
                assert r.status == 401
            async with s.post(drain, headers={"Authorization": "Bearer not-it-0123456789abcdef"}) as r:
                assert r.status == 401
                assert 'error="invalid_token"' in r.headers["WWW-Authenticate"]
            async with s.post(drain, headers={"Authorization": "Bearer two words"}) as r:
                assert r.status == 400
                assert 'error="invalid_request"' in r.headers["WWW-Authenticate"]
            assert not rt.balancer.pools["pool"].instances["i0"].draining
            async with s.post(drain, headers={"Authorization": f"bearer {TOKEN}"}) as r:  # scheme: any case
                assert r.status == 200 and (await r.json())["draining"] is True
            assert rt.balancer.pools["pool"].instances["i0"].draining
            async with s.get(f"{base}/metrics", headers=BEARER) as r:
                text = await r.text()
            reads = 7 if protect_reads else 0
            assert (sample(text, "missing"), sample(text, "invalid"), sample(text, "malformed")) == (reads + 2, 1, 1)
            assert sample(text, "cross_site") == 0
            # a rotated token file is taken up without a restart; the old token stops working
            (tmp_path / "token").write_text("rotated-token-0123456789abcdef\n")
            async with s.post(f"{base}/reload", headers=BEARER) as r:
                assert r.status == 401
            async with s.post(f"{base}/upstreams/pool/instances/i0/undrain",
                              headers={"Authorization": "Bearer rotated-token-0123456789abcdef"}) as r:
                assert r.status == 200
    finally:
        await runner.cleanup()


async def test_browsers_from_other_origins_and_rebound_names_are_refused(tmp_path):
    runner, port = await start_app(ok)
    try:
        async with running(in_process_config([port], tmp_path)) as rt, aiohttp.ClientSession() as s:
            base = f"http://127.0.0.1:{rt.admin_bound[1]}"
            drain = f"{base}/upstreams/pool/instances/i0/drain"
            # no token configured: loopback writes are open to local tools, not to web pages (CSRF)
            async with s.post(drain, headers={"Origin": "https://evil.example"}) as r:
                assert r.status == 403 and (await r.json())["reason"] == "cross_site"
            async with s.post(drain, headers={"Sec-Fetch-Site": "cross-site"}) as r:
                assert r.status == 403
            # DNS rebinding: a page whose name now points at 127.0.0.1 reads with its own Host
            async with s.get(f"{base}/config", headers={"Host": f"evil.example:{rt.admin_bound[1]}"}) as r:
                assert r.status == 403
            assert not rt.balancer.pools["pool"].instances["i0"].draining
            async with s.post(drain, headers={"Origin": base, "Sec-Fetch-Site": "same-origin"}) as r:
                assert r.status == 200  # the admin page itself
            for host in (f"localhost:{rt.admin_bound[1]}", f"127.0.0.1:{rt.admin_bound[1]}"):
                async with s.get(f"{base}/upstreams", headers={"Host": host}) as r:
                    assert r.status == 200
            async with s.get(f"{base}/")as r:
                assert r.headers["X-Content-Type-Options"] == "nosniff"
                csp = r.headers["Content-Security-Policy"]
                assert "script-src 'self'" in csp and "default-src 'none'" in csp and "unsafe-inline" not in csp
    finally:
        await runner.cleanup()


BASE = {"balancer": {"pools": [{"name": "p", "instances": [{"host": "127.0.0.1", "port": 1}]}]}}


@pytest.mark.parametrize("admin, problem", [
    ({"address": "0.0.0.0:9901"}, "admin: address 0.0.0.0:9901 is reachable from other hosts and no token is set"),
    ({"address": "[::]:9901"}, "admin: address [::]:9901 is reachable from other hosts"),
    ({"address": "admin.internal:9901"}, "admin: address admin.internal:9901 is reachable from other hosts"),
    ({"protect_reads": True}, "admin: protect_reads needs a token (token_file or token_env)"),
    ({"token_file": "/nonexistent/token"}, "admin: token_file: cannot read '/nonexistent/token'"),
    ({"token_env": "GW_TEST_UNSET_TOKEN"}, "admin: token_env: the environment variable GW_TEST_UNSET_TOKEN is not set"),
    ({"token_env": "GW_TEST_SHORT"}, "admin: token_env: the token is 5 characters; use at least 16"),
    ({"token_env": "GW_TEST_SPACES"}, "admin: token_env: the token must be one RFC 6750 b64token"),
    ({"token_env": "GW_TEST_OK", "token_file": "/x"}, "admin: set one of token_file, token_env"),
    ({"trace_url_template": "javascript:alert({trace_id})"}, "admin.trace_url_template:"),
    ({"trace_url_template": "https://grafana.example/explore"}, "admin.trace_url_template:"),
    ({"token": TOKEN}, "admin.token:"),  # never inline: unknown key
])
def test_admin_config_errors(monkeypatch, admin, problem):
    monkeypatch.setenv("GW_TEST_SHORT", "short")
    monkeypatch.setenv("GW_TEST_SPACES", "two words and more of them")
    monkeypatch.setenv("GW_TEST_OK", TOKEN)
    monkeypatch.delenv("GW_TEST_UNSET_TOKEN", raising=False)
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "admin": admin})
    assert any(p.startswith(problem) for p in err.value.problems), err.value.problems


@pytest.mark.parametrize("admin", [
    {"address": "0.0.0.0:9901", "allow_remote_without_token": True},
    {"address": "0.0.0.0:9901", "token_env": "GW_TEST_OK"},
    {"address": "[::1]:9901"},
    {"address": "localhost:9901"},
    {"address": "127.0.0.2:9901", "token_env": "GW_TEST_OK", "protect_reads": True,
     "trace_url_template": "https://grafana.example/explore?trace={trace_id}"},
])
def test_admin_config_accepted(monkeypatch, admin):
    monkeypatch.setenv("GW_TEST_OK", TOKEN)
    assert parse_config({**BASE, "admin": admin}).admin.address == admin["address"]


# One secret per place a config can hold one; none may appear in /config.
SECRETS = {
    "jwt": "jwt-hmac-secret-0123456789abcdefghijkl",
    "introspection": "introspection-client-secret-42",
    "api_key_hash": hash_key("an-api-key-0123456789"),
    "redis": "redis-password-77",
    "header_set": "upstream-credential-99",
    "header_match": "match-credential-55",
    "otlp": "otlp-bearer-13",
    "json_add": "injected-api-token-31",
}


def every_policy() -> list[dict]:
    return [
        {"name": "ip", "type": "ip_access", "allow": ["127.0.0.0/8"]},
        {"name": "jwt", "type": "jwt", "keys": [{"secret": SECRETS["jwt"]}], "algorithms": ["HS256"],
         "issuer": "https://issuer.example", "audience": "api"},
        {"name": "keys", "type": "api_key", "keys": [{"consumer": "a", "hash": SECRETS["api_key_hash"]}]},
        {"name": "rl", "type": "rate_limit", "limit": 10, "window_s": 1, "store": "redis",
         "redis": {"url": f"redis://:{SECRETS['redis']}@127.0.0.1:6379/0"}},
        {"name": "cors", "type": "cors", "allow_origins": ["https://app.example"]},
        {"name": "size", "type": "size_limit", "max_bytes": 1000},
        {"name": "hdr", "type": "headers", "set": {"Authorization": f"Bearer {SECRETS['header_set']}"}},
        {"name": "rw", "type": "path_rewrite", "regex": "^/a", "replacement": "/b"},
        {"name": "schema", "type": "json_schema", "schema": {"type": "object"}},
        {"name": "cb", "type": "circuit_breaker"},
        {"name": "intro", "type": "introspection", "endpoint": "http://127.0.0.1:1/introspect", "client_id": "gw",
         "client_secret": SECRETS["introspection"]},
        {"name": "cert", "type": "client_cert"},
        {"name": "jt", "type": "json_transform", "request": {"add": {"auth.api_token": SECRETS["json_add"]},
                                                             "remove": ["debug"]}},
    ]


def test_config_output_never_shows_a_secret():
    route = {"name": "api", "upstream": "p", "policies": every_policy(),
             "match": {"headers": [{"name": "X-Api-Key", "value": SECRETS["header_match"]}]}}
    cfg = parse_config({"telemetry": {"otlp": {"headers": {"authorization": f"Bearer {SECRETS['otlp']}"}}},
                        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}], "routes": [route]},
                        **BASE})
    # every policy type the schema knows is in this config: a new type must be added here (and be redacted)
    union = typing.get_args(typing.get_args(PolicyConfig)[0])
    known = {typing.get_args(m.model_fields["type"].annotation)[0] for m in union}
    assert {p["type"] for p in every_policy()} == known
    text = str(redacted_config(cfg))
    for where, secret in SECRETS.items():
        assert secret not in text, where
    data = redacted_config(cfg)
    policies = {p["name"]: p for p in data["edge"]["routes"][0]["policies"]}
    assert policies["jwt"]["keys"][0]["secret"] == REDACTED
    assert policies["intro"]["client_secret"] == REDACTED and policies["intro"]["client_id"] == "gw"
    assert policies["keys"]["keys"][0] == {"consumer": "a", "hash": REDACTED, "plan": None}
    assert policies["rl"]["redis"]["url"] == f"redis://{REDACTED}@127.0.0.1:6379/0"
    assert policies["hdr"]["set"] == {"Authorization": REDACTED}
    assert data["telemetry"]["otlp"]["headers"] == {"authorization": REDACTED}
    assert data["edge"]["routes"][0]["match"]["headers"][0] == {"name": "X-Api-Key", "value": REDACTED,
                                                                 "present": None}
    assert policies["schema"]["schema_"] == {"type": "object"}  # what is not a secret stays


@pytest.mark.parametrize("url, shown", [
    ("redis://:pw@host:6379/0", f"redis://{REDACTED}@host:6379/0"),
    ("redis://user:pw@host", f"redis://user:{REDACTED}@host"),
    ("https://TOKEN@git.example/x", f"https://{REDACTED}@git.example/x"),
    ("http://host:80/a@b", "http://host:80/a@b"),  # '@' in the path is not userinfo
    ("plain text", "plain text"),
])
def test_redact_url(url, shown):
    assert redact_url(url) == shown


async def test_config_endpoint_redacts_a_running_config(tmp_path):
    runner, port = await start_app(ok)
    cfg = in_process_config([port], tmp_path, policies=[every_policy()[1]])
    try:
        async with running(cfg) as rt, aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{rt.admin_bound[1]}/config") as r:
                text = await r.text()
            assert r.status == 200 and SECRETS["jwt"] not in text and REDACTED in text
    finally:
        await runner.cleanup()


async def test_reload_cli_sends_the_token_and_history_is_kept(tmp_path, monkeypatch):
    runner, port = await start_app(ok)
    (tmp_path / "token").write_text(TOKEN)
    data = in_process_config([port], tmp_path)
    data["admin"]["token_file"] = str(tmp_path / "token")
    path = tmp_path / "gw.yaml"
    path.write_text(yaml.safe_dump(data))
    rt = Runtime(load_config(path), env={"OTEL_SDK_DISABLED": "true"}, config_path=str(path))
    await rt.start()
    loop = asyncio.get_running_loop()
    admin = f"127.0.0.1:{rt.admin_bound[1]}"
    try:
        monkeypatch.delenv("GATEWATCH_ADMIN_TOKEN", raising=False)
        assert await loop.run_in_executor(None, cli.main, ["reload", "--admin", admin]) == 2
        assert not rt.reload_history  # refused before reaching the runtime
        (tmp_path / "cli-token").write_text(TOKEN + "\n")
        argv = ["reload", "--admin", admin, "--token-file", str(tmp_path / "cli-token")]
        assert await loop.run_in_executor(None, cli.main, argv) == 0
        monkeypatch.setenv("GATEWATCH_ADMIN_TOKEN", TOKEN)
        data["edge"]["routes"][0]["name"] = "renamed"
        path.write_text(yaml.safe_dump(data))
        assert await loop.run_in_executor(None, cli.main, ["reload", "--admin", admin]) == 0
        path.write_text("edge: [")
        assert await loop.run_in_executor(None, cli.main, ["reload", "--admin", admin]) == 2
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{admin}/config/version") as r:
                body = await r.json()
            async with s.get(f"http://{admin}/events") as r:
                events = (await r.json())["entries"]
            async with s.get(f"http://{admin}/events?after=x") as r:
                assert r.status == 400
        reloads = body["reloads"]  # newest first
        assert [x["result"] for x in reloads] == ["error", "ok", "ok"]
        assert reloads[1]["from"] != reloads[1]["to"] == body["version"] == reloads[0]["to"]
        assert "invalid YAML" in reloads[0]["problems"][0]
        # the events ring holds them too, though telemetry export is disabled in this process
        assert [e["attributes"]["gatewatch.decision.result"] for e in events
                if e.get("event") == "gatewatch.config.reload"] == ["error", "ok", "ok"]
    finally:
        await rt.stop(grace_s=1)
        await runner.cleanup()


def test_journal_is_a_bounded_ring_with_sequence_numbers():
    j = Journal(size=3)
    for n in range(5):
        j.add(EventRecord("gatewatch.config.reload", 1_700_000_000_000_000_000 + n, f"e{n}", {}, trace_id=n + 1))
    entries = j.entries("https://t.example/{trace_id}")
    assert [e["body"] for e in entries] == ["e4", "e3", "e2"]  # newest first, the oldest two dropped
    assert [e["seq"] for e in entries] == [5, 4, 3]
    assert entries[0]["trace_url"] == f"https://t.example/{5:032x}"
    assert [e["body"] for e in j.entries(after=4)] == ["e4"]
    assert j.entries(after=5) == [] and j.total == 5
