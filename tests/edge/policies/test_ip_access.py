"""The `ip_access` policy through the engine: verdicts on the wire (status), in the span, in the decision log
and in the metrics — the pattern every policy type's tests follow."""

from __future__ import annotations

import aiohttp
import pytest

from tests.proxy.test_proxy import echo_backend  # noqa: F401 - fixture
from tests.support.runtime import in_process_config, running


def policy_config(port, tmp_path, **policy):
    cfg = in_process_config([port], tmp_path, policies=[{"name": "office", "type": "ip_access", **policy}])
    cfg["telemetry"]["exporter"] = "thread"
    return cfg


@pytest.mark.parametrize("policy,status,verdict,reason", [
    ({"allow": ["127.0.0.0/8"]}, 200, "allow", "ip.allowed"),
    ({"allow": ["10.0.0.0/8"]}, 403, "deny", "ip.denied"),
    ({"deny": ["127.0.0.1/32"]}, 403, "deny", "ip.denied"),
    ({"deny": ["127.0.0.1"], "shadow": True}, 200, "shadow_deny", "ip.denied"),
])
async def test_verdict_in_response_span_log_and_metrics(echo_backend, tmp_path, otlp, policy, status, verdict,  # noqa: F811
                                                        reason):
    async with running(policy_config(echo_backend, tmp_path, **policy), env=otlp.env("grpc")) as rt:
        port = rt.listeners[0].bound[1]
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://127.0.0.1:{port}/api/x") as r:
                assert r.status == status
                body = await r.json()
                request_id = r.headers["X-Request-Id"]
        if status == 403:
            assert body["error"]["outcome"] == "denied_policy"
        assert rt.metrics.policy_verdicts.value(("api", "office", "ip_access", verdict, reason)) == 1
    assert otlp.data.wait_for(lambda spans, logs: any(
        s["attributes"].get("gatewatch.request_id") == request_id and s["kind"] == "SERVER"
        for s in spans))
    spans, logs = otlp.data.snapshot()
    server = next(s for s in spans if s["attributes"].get("gatewatch.request_id") == request_id
                  and s["kind"] == "SERVER")
    assert server["attributes"]["gatewatch.policy.summary"] == [f"office={verdict}:{reason}"]
    policy_logs = [r for r in logs if r["event_name"] == "gatewatch.decision.policy"
                   and r["attributes"].get("gatewatch.request_id") == request_id]
    if verdict == "allow":
        assert policy_logs == []  # allows are summarised on the span, not logged
    else:
        [log] = policy_logs
        assert log["attributes"]["gatewatch.decision.result"] == verdict
        assert log["attributes"]["gatewatch.decision.reason"] == reason
        assert log["attributes"]["gatewatch.policy.type"] == "ip_access"
        assert log["span_id"] == server["span_id"]


async def test_trusted_proxy_model_uses_rightmost_untrusted_hop(echo_backend, tmp_path):  # noqa: F811
    cfg = policy_config(echo_backend, tmp_path, deny=["203.0.113.0/24"], trusted_proxies=["127.0.0.1/32"])
    async with running(cfg) as rt:
        port = rt.listeners[0].bound[1]
        async with aiohttp.ClientSession() as s:
            # the client-controlled left part may claim anything; the right-most untrusted hop is the client
            async with s.get(f"http://127.0.0.1:{port}/api/x",
                             headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.9"}) as r:
                assert r.status == 403
            async with s.get(f"http://127.0.0.1:{port}/api/x",
                             headers={"X-Forwarded-For": "203.0.113.9, 198.51.100.7"}) as r:
                assert r.status == 200


def test_bad_cidr_is_a_config_error_naming_the_field(tmp_path):
    from gatewatch.config import ConfigError, parse_config

    cfg = policy_config(1, tmp_path, allow=["10.0.0.0/33"])
    with pytest.raises(ConfigError) as e:
        parse_config(cfg)
    assert any(p.startswith("edge.routes[0].policies[0].ip_access.allow") for p in e.value.problems), e.value.problems
