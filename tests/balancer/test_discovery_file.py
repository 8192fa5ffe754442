"""Watched-file discovery: a YAML/JSON list of instances, applied without a reload once the file settles; a bad
file refused with field-path problems (the last good set stays); and a discovered pool end to end through a
running Gatewatch: requests reach discovered instances, `/upstreams` names each instance's source, the pick
names where its candidates came from, and a reload with the pool unchanged keeps what discovery found."""

from __future__ import annotations

import json
import os

import aiohttp
import pytest
from aiohttp import web

from gatewatch.balancer.config import InstanceConfig
from gatewatch.balancer.discovery.file import FileProblem, load_instances
from gatewatch.io.memory import Reply
from gatewatch.telemetry.names import Attr, DiscoveryResult, Event

from tests.balancer.test_discovery_dns import balancer, until
from tests.support.engine import EngineHarness
from tests.support.net import start_app
from tests.support.runtime import running

FAST = {"poll_interval_s": 0.02, "debounce_s": 0.05}


def write(path, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)  # atomically, as config management does


@pytest.mark.parametrize(("text", "problems"), [
    ("- host: 10.0.0.1\n  port: 99999\n", ["instances[0].port: must be less than or equal to 65535, got 99999"]),
    ("- host: 10.0.0.1\n  prot: 80\n", None),  # unknown key, and 'port' missing
    ("{host: 10.0.0.1}", ["(root): expected a list of instances (- host: ..., port: ...), got dict"]),
    ("", ["(root): expected a list of instances (- host: ..., port: ...), got an empty file"]),
    ("[]", None),
    ("- host: a\n  port: [\n", None),
    ("- {host: 10.0.0.1, port: 80, id: x}\n- {host: 10.0.0.2, port: 80, id: x}\n",
     ["instances[1]: duplicate instance 'x' (as instances[0])"]),
])
def test_bad_files_are_refused_with_field_paths(tmp_path, text, problems):
    path = tmp_path / "i.yaml"
    path.write_text(text)
    with pytest.raises(FileProblem) as err:
        load_instances(str(path))
    assert err.value.result is DiscoveryResult.INVALID
    if problems is not None:
        assert err.value.problems == problems
    else:
        assert err.value.problems and all(":" in p for p in err.value.problems)


def test_unknown_key_is_named_with_a_suggestion(tmp_path):
    path = tmp_path / "i.yaml"
    path.write_text("- host: 10.0.0.1\n  port: 80\n  wieght: 2\n")
    with pytest.raises(FileProblem) as err:
        load_instances(str(path))
    assert err.value.problems == ["instances[0].wieght: unknown key; did you mean 'weight'?"]


def test_json_and_yaml_read_alike(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.yaml"
    a.write_text(json.dumps([{"host": "10.0.0.1", "port": 80, "weight": 3, "zone": "z1"}]))
    b.write_text("- {host: 10.0.0.1, port: 80, weight: 3, zone: z1}\n")
    assert load_instances(str(a)) == load_instances(str(b))


async def test_changes_apply_without_reload_and_bad_files_keep_the_last_good_set(tmp_path):
    path = tmp_path / "instances.yaml"
    write(path, "- {host: 10.0.0.1, port: 80, id: a}\n")
    async with balancer({"name": "p", "discovery": {"file": {"path": str(path), **FAST}}}) as b:
        assert b.ids() == ["a"]
        write(path, "- {host: 10.0.0.1, port: 80, id: a}\n- {host: 10.0.0.2, port: 80, id: b, weight: 2}\n")
        await until(lambda: b.ids() == ["a", "b"], "the change")
        [_, change] = b.events(Event.DISCOVERY_CHANGE)
        assert change.attributes[Attr.DISCOVERY_DETAIL] == f"file {path} changed"
        assert change.attributes[Attr.DISCOVERY_ADDED] == ["b"]
        write(path, "- {host: 10.0.0.3, port: eighty}\n")
        await until(lambda: b.events(Event.DISCOVERY_FAILURE), "the refusal")
        [bad] = b.events(Event.DISCOVERY_FAILURE)
        assert bad.attributes[Attr.DISCOVERY_RESULT] == "invalid"
        assert "instances[0].port" in bad.attributes[Attr.DISCOVERY_DETAIL]
        assert b.ids() == ["a", "b"]
        assert b.sample("gatewatch_discovery_refreshes_total", source="file", result="invalid") == 1  # once
        write(path, "- {host: 10.0.0.2, port: 80, id: b, weight: 2}\n")
        await until(lambda: b.ids() == ["b"], "the fixed file")
        assert [e.attributes[Attr.DISCOVERY_RESULT] for e in b.events(Event.DISCOVERY_FAILURE)] == ["invalid", "ok"]


async def test_missing_file_at_start_then_created(tmp_path):
    path = tmp_path / "later.yaml"
    async with balancer({"name": "p", "discovery": {"file": {"path": str(path), **FAST}}}) as b:
        assert b.ids() == []
        [failed] = b.events(Event.DISCOVERY_FAILURE)
        assert failed.attributes[Attr.DISCOVERY_RESULT] == "error" and "cannot read" in failed.body
        write(path, "- {host: 10.0.0.1, port: 80}\n")
        await until(lambda: b.ids() == ["10.0.0.1:80"], "the new file")


@pytest.fixture
async def ports():
    """Two loopback backends, each answering its name ("one", "two"): their ports, in that order."""
    def answer(name: str):
        async def handler(request):
            return web.Response(text=name)
        return handler

    started = [await start_app(answer(name)) for name in ("one", "two")]
    yield [port for _, port in started]
    for runner, _ in started:
        await runner.cleanup()


async def test_end_to_end_through_a_running_gatewatch(tmp_path, ports):
    path = tmp_path / "instances.yaml"
    write(path, f"- {{host: 127.0.0.1, port: {ports[0]}, id: one}}\n")
    pool = {"name": "pool", "discovery": {"file": {"path": str(path), **FAST}}}
    cfg = {
        "admin": {"address": "127.0.0.1:0"},
        "telemetry": {"local_dir": str(tmp_path / "telemetry")},
        "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                 "routes": [{"name": "api", "match": {"path": {"prefix": "/"}}, "upstream": "pool"}]},
        "balancer": {"pools": [pool]},
    }
    config_path = tmp_path / "gatewatch.yaml"
    config_path.write_text(json.dumps(cfg))
    async with running(cfg) as rt, aiohttp.ClientSession() as s:
        rt.config_path = str(config_path)
        url = f"http://127.0.0.1:{rt.listeners[0].bound[1]}/x"
        admin = f"http://{rt.admin_bound[0]}:{rt.admin_bound[1]}"
        async with s.get(url) as r:
            assert (r.status, await r.text()) == (200, "one")
        write(path, f"- {{host: 127.0.0.1, port: {ports[1]}, id: two}}\n")
        await until(lambda: [e.id for e in rt.pools["pool"].endpoints] == ["two"], "the change")
        async with s.get(url) as r:
            assert (r.status, await r.text()) == (200, "two")
        async with s.get(f"{admin}/upstreams") as r:
            state = (await r.json())["pools"]["pool"]
        assert state["source"] == "file" and [(i["id"], i["source"]) for i in state["instances"]] == [
            ("two", "file")]
        assert state["discovery"]["detail"] == f"file {path} changed"
        ok, problems = await rt.reload()  # the pool's config is unchanged: it keeps what discovery found
        assert (ok, problems) == (True, [])
        assert [e.id for e in rt.pools["pool"].endpoints] == ["two"]
        async with s.get(url) as r:
            assert (r.status, await r.text()) == (200, "two")


async def test_the_pick_names_where_its_candidates_came_from():
    config = {"edge": {"listeners": [{"name": "public", "address": "127.0.0.1:0"}],
                       "routes": [{"name": "api", "match": {"path": {"prefix": "/"}}, "upstream": "pool"}]},
              "balancer": {"pools": [{"name": "pool", "discovery": {"file": {"path": "/x.yaml"}}}]}}
    h = EngineHarness(config, lambda request: Reply(200))
    try:
        h.pools["pool"].set_members([InstanceConfig(host="10.0.0.1", port=80, id="a"),
                                     InstanceConfig(host="10.0.0.2", port=80, id="b")], "file /x.yaml changed")
        await h.request("GET", "/")
        [rec] = h.records
        assert rec.lb[Attr.LB_SOURCES] == "file=2"
        [pick] = [d for d in rec.decisions if d.kind.value == "pick"]
        assert pick.attributes[Attr.LB_SOURCES] == "file=2"
    finally:
        await h.close()


async def test_health_checks_follow_the_membership(tmp_path, ports):
    path = tmp_path / "instances.yaml"
    write(path, f"- {{host: 127.0.0.1, port: {ports[0]}, id: one}}\n")
    hc = {"interval_s": 0.05, "timeout_s": 0.05, "jitter_s": 0, "path": "/", "healthy_threshold": 2}
    async with balancer({"name": "p", "health_check": hc,
                         "discovery": {"file": {"path": str(path), **FAST}}}) as b:
        probes = "gatewatch_health_probes_total"
        await until(lambda: b.sample(probes, gatewatch_instance="one", result="pass"), "a probe of one")
        write(path, f"- {{host: 127.0.0.1, port: {ports[0]}, id: one}}\n"
                    f"- {{host: 127.0.0.1, port: {ports[1]}, id: two}}\n")
        await until(lambda: "two" in b.ids(), "two added")
        await until(lambda: b.rt.pools["p"].states()["two"] == "healthy", "two probed healthy")
        # it took traffic only once its first probe passed (one pass, not healthy_threshold)
        [up] = [e for e in b.events(Event.HEALTH_TRANSITION) if e.attributes[Attr.INSTANCE] == "two"]
        assert (up.attributes[Attr.HEALTH_FROM], up.attributes[Attr.HEALTH_TO]) == ("unhealthy", "healthy")
        write(path, f"- {{host: 127.0.0.1, port: {ports[1]}, id: two}}\n")
        await until(lambda: b.ids() == ["two"], "one removed")
        assert b.sample(probes, gatewatch_instance="one") is None  # its series went with it ...
        seen = b.sample(probes, gatewatch_instance="two", result="pass")
        await until(lambda: b.sample(probes, gatewatch_instance="two", result="pass") >= seen + 3, "more probes")
        assert b.sample(probes, gatewatch_instance="one") is None  # ... and nobody probes it any more
