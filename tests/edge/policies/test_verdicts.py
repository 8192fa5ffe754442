"""Every policy type through the engine: its verdict on the wire (status, headers), in the SERVER span's policy
summary, in the decision log (non-allow verdicts) and in gatewatch_policy_verdicts_total; and in shadow mode the
same would-be refusal lets the request through, recorded as shadow_deny."""

from __future__ import annotations

import aiohttp
import pytest

from gatewatch.edge.policies.apikey import hash_key
from tests.edge.policies.jwt_keys import AUD, ISS, public_pem
from tests.edge.policies.support import policy_config, policy_logs, server_span
from tests.support.runtime import running

SCHEMA = {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}

# (policy, request: (method, path, headers, body), n requests, status of the last, verdict, reason, outcome)
CASES = {
    "ip_access": ({"type": "ip_access", "deny": ["127.0.0.0/8"]}, ("GET", "/api/x", {}, None), 1, 403,
                  "deny", "ip.denied", "denied_policy"),
    "jwt": ({"type": "jwt", "issuer": ISS, "audience": AUD, "keys": [{"public_key": public_pem("r1")}]},
            ("GET", "/api/x", {"Authorization": "Bearer nope.nope.nope"}, None), 1, 401, "deny", "jwt.malformed",
            "denied_auth"),
    "api_key": ({"type": "api_key", "keys": [{"consumer": "acme", "hash": hash_key("k-good")}]},
                ("GET", "/api/x", {"X-API-Key": "k-bad"}, None), 1, 401, "deny", "apikey.invalid", "denied_auth"),
    "rate_limit": ({"type": "rate_limit", "limit": 1, "window_s": 60}, ("GET", "/api/x", {}, None), 2, 429,
                   "deny", "ratelimit.exceeded", "rate_limited"),
    "cors": ({"type": "cors", "allow_origins": ["https://app.example"]},
             ("GET", "/api/x", {"Origin": "https://evil.example"}, None), 1, 403, "deny", "cors.origin_denied",
             "denied_policy"),
    "cors_preflight": ({"type": "cors", "allow_origins": ["https://app.example"], "allow_headers": ["x-a"]},
                       ("OPTIONS", "/api/x", {"Origin": "https://app.example", "Access-Control-Request-Method":
                                              "POST", "Access-Control-Request-Headers": "X-A"}, None), 1, 204,
                       "allow", "cors.preflight", "preflight"),
    "size_limit": ({"type": "size_limit", "max_bytes": 10}, ("POST", "/api/x", {}, b"x" * 11), 1, 413, "deny",
                   "size.too_large", "payload_too_large"),
    "headers": ({"type": "headers", "set": {"X-Env": "prod"}}, ("GET", "/api/x", {}, None), 1, 200, "allow",
                "transform.applied", "proxied"),
    "path_rewrite": ({"type": "path_rewrite", "regex": "^/api/(.*)$", "replacement": "/v2/\\1"},
                     ("GET", "/api/x", {}, None), 1, 200, "allow", "rewrite.applied", "proxied"),
    "json_schema": ({"type": "json_schema", "schema": SCHEMA},
                    ("POST", "/api/x", {"Content-Type": "application/json"}, b'{"n": "one"}'), 1, 400, "deny",
                    "schema.invalid", "invalid_body"),
    "circuit_breaker": ({"type": "circuit_breaker", "failures": 1},
                        ("GET", "/api/x?status=503", {}, None), 2, 503, "deny", "circuit.open", "circuit_open"),
}


async def send(port, method, path, headers, body, n):
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.request(method, f"http://127.0.0.1:{port}{path}", headers=headers, data=body) as r:
                payload = await r.read()
        return r.status, r.headers.copy(), payload


PARAMS = [pytest.param(case, shadow, id=f"{case}-{'shadow' if shadow else 'enforced'}")
          for case in CASES for shadow in (False, True) if not (shadow and CASES[case][4] == "allow")]


@pytest.mark.parametrize("case,shadow", PARAMS)
async def test_verdict_in_response_span_log_and_metrics(echo_port, tmp_path, otlp, case, shadow):
    policy, (method, path, headers, body), n, status, verdict, reason, outcome = CASES[case]
    cfg = policy_config(echo_port, tmp_path, [{"name": "p", "shadow": shadow, **policy}])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        got, resp_headers, payload = await send(rt.listeners[0].bound[1], method, path, headers, body, n)
        request_id = resp_headers["X-Request-Id"]
        if shadow:  # the would-be refusal is recorded and the request goes on as if the policy were absent
            verdict, outcome = "shadow_deny", "proxied"
            status = 503 if case == "circuit_breaker" else 200
        assert got == status, payload
        ptype = policy["type"]
        assert rt.metrics.policy_verdicts.value(("api", "p", ptype, verdict, reason)) == 1
    span = server_span(otlp, request_id)
    assert span["attributes"]["gatewatch.policy.summary"] == [f"p={verdict}:{reason}"]
    assert span["attributes"]["gatewatch.outcome"] == outcome
    logs = policy_logs(otlp, request_id)
    if verdict == "allow":
        assert logs == []  # summarised on the span, not logged
    else:
        [log] = logs
        a = log["attributes"]
        assert (a["gatewatch.decision.result"], a["gatewatch.decision.reason"], a["gatewatch.policy.type"]) == (
            verdict, reason, ptype)
        assert a.get("gatewatch.policy.shadow") == (True if shadow else None)
        assert log["span_id"] == span["span_id"]


async def test_circuit_transitions_are_logged_events(echo_port, tmp_path, otlp):
    cfg = policy_config(echo_port, tmp_path, [{"name": "cb", "type": "circuit_breaker", "failures": 2,
                                               "open_s": 60}])
    async with running(cfg, env=otlp.env("grpc")) as rt:
        statuses = [(await send(rt.listeners[0].bound[1], "GET", "/api/x?status=502", {}, None, 1))[0]
                    for _ in range(3)]
        assert statuses == [502, 502, 503]
        assert rt.metrics.circuit_state.labels("api", "open")._value.get() == 1

    def transition(spans, logs):
        return [r for r in logs if r["event_name"] == "gatewatch.circuit.transition"]

    assert otlp.data.wait_for(lambda s, logs: transition(s, logs))
    [event] = transition(*otlp.data.snapshot())
    a = event["attributes"]
    assert (a["gatewatch.route"], a["gatewatch.policy.name"], a["gatewatch.circuit.from"],
            a["gatewatch.circuit.to"]) == ("api", "cb", "closed", "open")


async def test_consumer_label_is_capped(echo_port, tmp_path):
    from gatewatch.edge.policies.apikey import hash_key as h

    keys = [{"consumer": f"c{i}", "hash": h(f"k{i}")} for i in range(103)]
    cfg = policy_config(echo_port, tmp_path, [{"name": "key", "type": "api_key", "keys": keys},
                                              {"name": "rl", "type": "rate_limit", "key": "consumer", "limit": 1,
                                               "window_s": 60}])
    async with running(cfg) as rt:
        port = rt.listeners[0].bound[1]
        async with aiohttp.ClientSession() as s:
            for i in range(103):
                for _ in range(2):
                    async with s.get(f"http://127.0.0.1:{port}/api/x", headers={"X-API-Key": f"k{i}"}) as r:
                        await r.read()
        labels = {sample.labels["gatewatch_consumer"] for m in rt.metrics.ratelimit_consumers.collect()
                  for sample in m.samples if sample.name.endswith("_total")}
    assert len(labels) == 101 and "_overflow" in labels
