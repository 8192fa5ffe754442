"""The admin page in a real headless Chromium (CDP), against a real runtime with real backends and active health
checks: it loads without console errors, shows a killed backend go unhealthy, links decisions to their traces,
and drains an instance only with the admin token (the 401 is shown without it)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from gatewatch.edge.policies.apikey import hash_key

from tests.support.chromium import browser, find_chromium
from tests.support.net import start_app
from tests.support.runtime import in_process_config, running

TOKEN = "page-test-token-0123456789abcdef"
TRACE_URL = "https://grafana.example/explore?left=tempo&trace={trace_id}"
CHROMIUM = find_chromium()


@pytest.fixture
def chromium() -> str:
    if CHROMIUM is None:
        if os.environ.get("CI") == "true":  # CI installs it (scripts/test.sh): missing there is a failure
            pytest.fail("chromium is not installed (Debian package `chromium`); it is required under CI=true")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return CHROMIUM

ROW = "document.querySelector('tr[data-pool=\"pool\"][data-instance=\"{}\"]')"


def state_of(instance: str) -> str:
    return f"({ROW.format(instance)} || {{}}).dataset?.state || ''"


async def test_admin_page_live_state_and_token_flow(tmp_path, chromium):
    async def backend(request):
        return web.json_response({"ok": True})

    backends = [await start_app(backend) for _ in range(3)]
    (tmp_path / "token").write_text(TOKEN + "\n")
    cfg = in_process_config([port for _, port in backends], tmp_path)
    cfg["admin"].update({"token_file": str(tmp_path / "token"), "trace_url_template": TRACE_URL})
    cfg["balancer"]["pools"][0]["health_check"] = {"path": "/healthz", "interval_s": 0.2, "jitter_s": 0,
                                                   "timeout_s": 0.2, "unhealthy_threshold": 1,
                                                   "healthy_threshold": 1}
    route = cfg["edge"]["routes"][0]
    route["policies"] = [{"name": "keys", "type": "api_key",
                          "keys": [{"consumer": "team-a", "hash": hash_key("a-key-for-team-a-0123456789")}]}]
    alive = list(backends)
    try:
        async with running(cfg) as rt, aiohttp.ClientSession() as s:
            admin = f"http://127.0.0.1:{rt.admin_bound[1]}"
            edge = f"http://127.0.0.1:{rt.listeners[0].bound[1]}"
            async with s.get(f"{edge}/api/x") as r:  # no key: a deny decision for the page's list
                assert r.status == 401
                denied_trace = r.headers["traceresponse"].split("-")[1]
            async with browser(chromium) as b:
                await b.navigate(f"{admin}/")
                for i in ("i0", "i1", "i2"):
                    assert await b.wait_for(f"{state_of(i)} === 'healthy'")
                await b.wait_for("document.querySelector('tr[data-kind=\"request\"]') !== null")
                assert await b.evaluate("document.getElementById('version').textContent") == rt.config_version
                assert (await b.evaluate("document.getElementById('process').textContent")).endswith(
                    " · hot path " + rt.build.describe())  # compiled or pure, as the process runs
                assert await b.evaluate(
                    "[...document.querySelectorAll('tr[data-route=\"api\"] .ptype')].map(e => e.textContent)"
                ) == ["api_key"]
                href = await b.evaluate("document.querySelector('tr[data-kind=\"request\"] td.trace a').href")
                assert href == TRACE_URL.replace("{trace_id}", denied_trace)
                assert b.console == [], b.console  # loaded and refreshed without errors or exceptions

                runner, _ = alive.pop(2)  # kill a backend: its health check fails, the page shows it
                await runner.cleanup()
                assert await b.wait_for(f"{state_of('i2')} === 'unhealthy'")
                await b.wait_for("[...document.querySelectorAll('tr[data-kind=\"event\"]')]"
                                 ".some(r => r.textContent.includes('i2 healthy -> unhealthy'))")
                shot = tmp_path / "admin-page.png"
                await b.screenshot(shot)
                assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                if os.environ.get("GATEWATCH_SCREENSHOT_DIR"):  # to refresh docs/images/admin-page.png
                    shutil.copy(shot, Path(os.environ["GATEWATCH_SCREENSHOT_DIR"]) / "admin-page.png")
                assert b.console == [], b.console

                drain_i0 = "document.querySelector('button[data-action=\"drain\"][data-instance=\"i0\"]').click()"
                await b.evaluate(drain_i0)  # no token: refused, and the page says so
                notice = await b.wait_for("document.getElementById('notice').textContent.includes('401') && "
                                          "document.getElementById('notice').textContent")
                assert "drain pool/i0" in notice and "token" in notice
                assert not rt.balancer.pools["pool"].instances["i0"].draining
                await b.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
                await b.evaluate("document.getElementById('token-save').click()")
                await b.evaluate(drain_i0)
                await b.wait_for("document.getElementById('notice').textContent === 'drain pool/i0: done'")
                assert rt.balancer.pools["pool"].instances["i0"].draining
                assert await b.wait_for(f"{state_of('i0')} === 'draining'")
                assert await b.evaluate("sessionStorage.getItem('gatewatch.admin.token')") == TOKEN
                # the one 401 the browser logged is the refused drain; nothing else went wrong
                assert [e for e in b.console if not (e["source"] == "network" and "401" in e["text"])] == []
                assert len([e for e in b.console if e["source"] == "network"]) == 1
            async with s.get(f"{admin}/metrics") as r:
                assert 'gatewatch_admin_auth_failures_total{reason="missing"} 1.0' in await r.text()
    finally:
        for runner, _ in alive:
            await runner.cleanup()
