"""Config reload (SIGHUP or POST /reload): the new snapshot serves new requests; a bad file, or a change that
needs a restart, is refused with the problems named and the running config keeps serving; pools whose config
did not change keep their state. Each reload is counted and logged as an event."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

import aiohttp
import yaml

from gatewatch.config import load_config
from gatewatch.app.runtime import GC_THRESHOLDS, Runtime
from tests.balancer.test_proxying import Backend, call, sample
from tests.support.procs import port_of


def cfg(backends, routes=("/a",), admin="127.0.0.1:0"):
    return {
        "admin": {"address": admin},
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                 "routes": [{"name": f"r{n}", "match": {"path": {"prefix": p}}, "upstream": "pool"}
                            for n, p in enumerate(routes)]},
        "balancer": {"pools": [{"name": "pool", "algorithm": "round_robin", "instances": [
            {"id": b.name, "host": "127.0.0.1", "port": b.port} for b in backends]}]},
    }


async def running_file(path, data):
    path.write_text(yaml.safe_dump(data))
    rt = Runtime(load_config(path), env={"OTEL_SDK_DISABLED": "true"}, config_path=str(path))
    await rt.start()
    return rt


async def test_reload_swaps_routes_and_keeps_unchanged_pool_state(tmp_path):
    path = tmp_path / "gw.yaml"
    async with Backend("a") as a, Backend("b") as b:
        rt = await running_file(path, cfg([a, b]))
        try:
            assert (await call(rt, path="/b/x"))[0] == 404
            assert rt.balancer.drain("pool", "a", True)
            pool_before = rt.balancer.pools["pool"]
            path.write_text(yaml.safe_dump(cfg([a, b], routes=("/a", "/b"))))
            assert await rt.reload() == (True, [])
            assert (await call(rt, path="/b/x"))[0] == 200
            assert rt.balancer.pools["pool"] is pool_before  # unchanged pool: same state (a still draining)
            assert {(await call(rt, path="/a"))[2] for _ in range(4)} == {b'{"instance": "b"}'}
            # a changed pool starts fresh
            path.write_text(yaml.safe_dump(cfg([a], routes=("/a", "/b"))))
            assert (await rt.reload())[0]
            assert rt.balancer.pools["pool"] is not pool_before
            assert {(await call(rt, path="/a"))[2] for _ in range(2)} == {b'{"instance": "a"}'}
            assert sample(rt, "gatewatch_config_reloads_total", result="ok") == 2
        finally:
            await rt.stop(grace_s=1)


async def test_bad_or_restart_only_changes_are_refused_and_the_old_config_keeps_serving(tmp_path):
    path = tmp_path / "gw.yaml"
    async with Backend("a") as a:
        rt = await running_file(path, cfg([a]))
        try:
            admin = f"http://{rt.admin_bound[0]}:{rt.admin_bound[1]}"
            path.write_text("edge: {listeners: []\n")  # broken YAML
            async with aiohttp.ClientSession() as s:
                async with s.post(f"{admin}/reload") as r:
                    assert r.status == 409
                    body = await r.json()
            assert body["reloaded"] is False and "invalid YAML" in body["problems"][0]
            bad = cfg([a])
            bad["edge"]["routes"][0]["upstream"] = "nope"
            path.write_text(yaml.safe_dump(bad))
            ok, problems = await rt.reload()
            assert not ok and problems == ["edge.routes[0].upstream: unknown upstream 'nope'"]
            moved = cfg([a], admin="127.0.0.1:1")
            moved["edge"]["listeners"][0]["address"] = "127.0.0.1:2"
            path.write_text(yaml.safe_dump(moved))
            ok, problems = await rt.reload()
            assert not ok and problems == ["admin: changed; this takes a restart",
                                           "edge.listeners: names, addresses, max_header_size or whether TLS is"
                                           " on changed; this takes a restart"]
            assert (await call(rt, path="/a"))[0] == 200  # still the original config
            assert sample(rt, "gatewatch_config_reloads_total", result="error") == 3
            assert sample(rt, "gatewatch_config_reloads_total", result="ok") == 0
        finally:
            await rt.stop(grace_s=1)


def test_sighup_reloads_a_running_process(cluster, otlp, tmp_path):
    cluster.env = otlp.env("grpc")
    backend = cluster.backend("x")
    port = port_of(backend.info["address"])
    data = {"admin": {"address": "127.0.0.1:0"},
            "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                     "routes": [{"name": "old", "match": {"path": {"prefix": "/old"}}, "upstream": "pool"}]},
            "balancer": {"pools": [{"name": "pool", "instances": [{"host": "127.0.0.1", "port": port}]}]}}
    gw = cluster.gatewatch("gw", data)
    # serving: the start-up objects frozen out of the cyclic collector's reach, and its serving thresholds
    assert gw.info["gc"]["thresholds"] == list(GC_THRESHOLDS) != [700, 10, 10]
    assert gw.info["gc"]["frozen_objects"] > 10_000
    url = f"http://{gw.listener('public')}"
    data["edge"]["routes"].append({"name": "new", "match": {"path": {"prefix": "/new"}}, "upstream": "pool"})
    (cluster.workdir / "gw.yaml").write_text(yaml.safe_dump(data))
    gw.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    status = None
    while time.monotonic() < deadline:
        try:
            status = urllib.request.urlopen(f"{url}/new/x", timeout=5).status
            break
        except urllib.error.HTTPError as e:
            status = e.code
            time.sleep(0.1)
    assert status == 200
    # the CLI does the same through the admin API, and says why when it cannot
    (cluster.workdir / "gw.yaml").write_text("edge: [")
    out = subprocess.run([sys.executable, "-m", "gatewatch", "reload", "--admin", gw.admin], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "reload refused, the running config stays" in out.stderr
    assert "invalid YAML" in out.stderr
    assert urllib.request.urlopen(f"{url}/new/x", timeout=5).status == 200
    assert otlp.data.wait_for(lambda s, logs: any(
        r["event_name"] == "gatewatch.config.reload" and r["attributes"]["gatewatch.decision.result"] == "ok"
        for r in logs))


def test_apikey_cli_hashes_from_stdin_and_generates():
    from gatewatch.edge.policies.apikey import hash_key

    out = subprocess.run([sys.executable, "-m", "gatewatch", "apikey", "hash"], input="s3cret\n",
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0 and out.stdout.strip() == hash_key("s3cret")
    gen = subprocess.run([sys.executable, "-m", "gatewatch", "apikey", "generate"], capture_output=True, text=True,
                         timeout=30)
    key, digest = (line.split(":", 1)[1].strip() for line in gen.stdout.splitlines())
    assert hash_key(key) == digest
