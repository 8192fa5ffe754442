"""The admin listener and the process lifecycle: health, readiness, config, upstream state, graceful drain."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request

import aiohttp
import pytest
from aiohttp import web

from tests.support.net import start_app
from tests.support.otlp import OtlpReceiver
from tests.support.runtime import in_process_config, running


async def test_admin_endpoints(tmp_path):
    async def ok(request):
        return web.Response(text="ok")

    runner, port = await start_app(ok)
    cfg = in_process_config([port, port + 0], tmp_path)
    cfg["balancer"]["pools"][0]["instances"][1]["id"] = "second"
    cfg["telemetry"]["otlp"] = {"headers": {"authorization": "Bearer s3cret"}}
    try:
        async with running(cfg) as rt, aiohttp.ClientSession() as s:
            base = f"http://{rt.admin_bound[0]}:{rt.admin_bound[1]}"
            async with s.get(f"{base}/healthz") as r:
                assert r.status == 200
            async with s.get(f"{base}/readyz") as r:
                body = await r.json()
                assert r.status == 200 and body["ready"] is True and "public" in body["listeners"]
            async with s.get(f"{base}/config") as r:
                text = await r.text()
                assert "s3cret" not in text and "<redacted>" in text
                assert json.loads(text)["edge"]["routes"][0]["name"] == "api"
            async with s.get(f"{base}/upstreams") as r:
                pools = (await r.json())["pools"]
                assert [i["id"] for i in pools["pool"]["instances"]] == ["i0", "second"]
            async with s.get(f"{base}/metrics") as r:
                assert r.headers["Content-Type"].startswith("text/plain")
                text = await r.text()
                assert 'gatewatch_endpoints{gatewatch_pool="pool",state="healthy"} 2.0' in text
            rt.draining = True
            async with s.get(f"{base}/readyz") as r:
                assert r.status == 503
            rt.draining = False
    finally:
        await runner.cleanup()


async def test_otlp_endpoint_from_config_file_without_env(tmp_path):
    async def ok(request):
        return web.Response(text="ok")

    runner, port = await start_app(ok)
    with OtlpReceiver() as rx:
        cfg = in_process_config([port], tmp_path)
        cfg["telemetry"].update({"otlp": {"endpoint": rx.grpc_endpoint, "protocol": "grpc"},
                                 "service_name": "from-file", "resource_attributes": {"deployment.environment": "t"},
                                 "export_interval_s": 0.1})
        try:
            async with running(cfg, env={}) as rt, aiohttp.ClientSession() as s:
                async with s.get(f"http://127.0.0.1:{rt.listeners[0].bound[1]}/api/x") as r:
                    assert r.status == 200
                    trace_id = r.headers["traceresponse"].split("-")[1]
                ok = await asyncio.get_running_loop().run_in_executor(
                    None, lambda: rx.data.wait_for(lambda spans, logs: any(s["trace_id"] == trace_id for s in spans)
                                                   and any(r["trace_id"] == trace_id for r in logs)))
                assert ok
            span = [s for s in rx.data.trace(trace_id) if s["kind"] == "SERVER"][0]
            assert span["resource"]["service.name"] == "from-file"
            assert span["resource"]["deployment.environment"] == "t"
        finally:
            await runner.cleanup()


def test_sigterm_drains_in_flight_requests(cluster):
    b = cluster.backend("slow", delay_ms=1500)
    from tests.integration.test_two_tier import edge_cfg

    edge = cluster.gatewatch("edge", edge_cfg(backends=[b]))
    result = {}

    def request():
        try:
            with urllib.request.urlopen(f"http://{edge.listener('public')}/api/orders/1", timeout=10) as r:
                result["status"] = r.status
                result["body"] = json.loads(r.read())
        except Exception as err:  # recorded and asserted below
            result["error"] = repr(err)

    t = threading.Thread(target=request)
    t.start()
    time.sleep(0.4)
    edge.popen.send_signal(15)
    t.join(15)
    assert result.get("status") == 200, result
    assert result["body"]["instance"] == "slow"
    assert edge.popen.wait(15) == 0
    with pytest.raises(urllib.error.URLError):  # the listener is closed after the drain
        urllib.request.urlopen(f"http://{edge.listener('public')}/api/orders/1", timeout=2)
