"""Weighted splits between a route's upstreams (issue 19): shares, stickiness across reloads, tester overrides,
and what each decision leaves in metrics, spans and decision logs. Real loopback backends, a real runtime."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys

import aiohttp
import pytest
import yaml
from aiohttp import web

from gatewatch.app.runtime import Runtime
from gatewatch.config import ConfigError, load_config, parse_config
from gatewatch.proxy.split import Side, key_hash, rendezvous
from tests.support.configs import gateway_config
from tests.support.net import edge_port, start_app
from tests.support.otlp import OtlpReceiver
from tests.support.runtime import running

N = 1000
USERS = 400  # clients of the stickiness tests (the shares themselves are measured over N)


def within_5_sigma(hits: int, n: int, p: float) -> bool:
    """A binomial count within 5 standard deviations of its mean: a correct split fails this once in ~1.7 million
    runs, so the test cannot flake, while a wrong share (e.g. 10% for 5%) fails it every time."""
    return abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p))


def side_app(name: str):
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"side": name, "mirror": request.headers.get("x-gatewatch-mirror")})
    return handler


@pytest.fixture
async def sides():
    started = {name: await start_app(side_app(name)) for name in ("stable", "canary")}
    yield {name: port for name, (_, port) in started.items()}
    for runner, _ in started.values():
        await runner.cleanup()


def config(ports: dict[str, int], tmp_path, weights=(95, 5), split=None, otlp=None) -> dict:
    route = {"name": "api", "match": {"path": {"prefix": "/api"}}, "retries": {"attempts": 1},
             "upstreams": [{"name": "stable", "weight": weights[0]}, {"name": "canary", "weight": weights[1]}]}
    if split is not None:
        route["split"] = split
    # one side a URL upstream, the other a pool of this process: a split takes either
    return gateway_config(tmp_path, otlp,
                          {"upstreams": [{"name": "canary", "url": f"http://127.0.0.1:{ports['canary']}"}],
                           "routes": [route]},
                          [{"name": "stable", "instances": [
                              {"id": "s0", "host": "127.0.0.1", "port": ports["stable"]}]}])


async def sides_of(port: int, headers_per_request: list[dict]) -> list[tuple[str, dict]]:
    """Each request's side and response headers, 20 at a time."""
    out: list = [None] * len(headers_per_request)
    sem = asyncio.Semaphore(20)
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
        async def one(i: int) -> None:
            async with sem, s.get(f"http://127.0.0.1:{port}/api/x", headers=headers_per_request[i]) as r:
                assert r.status == 200
                out[i] = ((await r.json())["side"], r.headers)
        await asyncio.gather(*(one(i) for i in range(len(headers_per_request))))
    return out


def split_count(rt, side: str, reason: str) -> float:
    return rt.metrics.split_requests.value(("api", side, reason))


async def test_weights_hold_over_a_thousand_requests_and_are_counted_per_side(sides, tmp_path):
    async with running(config(sides, tmp_path, weights=(90, 10))) as rt:
        # present at 0 for every configured side before any request
        assert split_count(rt, "canary", "split.weight") == 0 and split_count(rt, "stable", "split.weight") == 0
        text = rt.metrics.exposition(None)[0].decode()
        assert 'gatewatch_split_requests_total{gatewatch_route="api",gatewatch_upstream="canary",' \
               'reason="split.weight"} 0.0' in text
        got = [side for side, _ in await sides_of(edge_port(rt), [{}] * N)]
        canary = got.count("canary")
        assert within_5_sigma(canary, N, 0.10), canary
        assert split_count(rt, "canary", "split.weight") == canary
        assert split_count(rt, "stable", "split.weight") == N - canary
        # the per-upstream series follow the side (the attempt's upstream, not the route's)
        client = rt.metrics.client_duration._series
        assert sum(sum(s[0]) for k, s in client.items() if k[2] == "canary") == canary


def write(path, cfg) -> str:
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


async def test_sticky_key_holds_across_reloads_and_a_raised_weight_only_adds_users(sides, tmp_path):
    sticky = {"sticky": {"hash_key": {"source": "header", "name": "x-user"}}}
    path = tmp_path / "gatewatch.yaml"
    rt = Runtime(load_config(write(path, config(sides, tmp_path, (95, 5), sticky))), env={},
                 config_path=str(path))
    await rt.start()
    try:
        users = [{"x-user": f"user-{i}"} for i in range(USERS)]
        before = [side for side, _ in await sides_of(edge_port(rt), users)]
        assert within_5_sigma(before.count("canary"), USERS, 0.05)
        assert split_count(rt, "canary", "split.sticky_hash") == before.count("canary")
        write(path, config(sides, tmp_path, (95, 5), sticky))
        ok, problems = await rt.reload()
        assert ok, problems
        assert [side for side, _ in await sides_of(edge_port(rt), users)] == before  # same weights: nobody moves
        write(path, config(sides, tmp_path, (90, 10), sticky))
        ok, problems = await rt.reload()
        assert ok, problems
        after = [side for side, _ in await sides_of(edge_port(rt), users)]
        assert all(a == "canary" for b, a in zip(before, after) if b == "canary")  # every canary user stays
        assert within_5_sigma(after.count("canary"), USERS, 0.10)
        assert after.count("canary") > before.count("canary")
    finally:
        await rt.stop(grace_s=1.0)


async def test_split_cookie_makes_a_new_client_sticky_and_survives_a_weight_change(sides, tmp_path):
    sticky = {"sticky": {"cookie": {"name": "gw_split", "max_age_s": 3600}}}
    path = tmp_path / "gatewatch.yaml"
    rt = Runtime(load_config(write(path, config(sides, tmp_path, (80, 20), sticky))), env={},
                 config_path=str(path))
    await rt.start()
    try:
        first = await sides_of(edge_port(rt), [{}] * 200)
        cookies = []
        for _, headers in first:
            set_cookie = headers["Set-Cookie"]
            assert "Max-Age=3600" in set_cookie and "HttpOnly" in set_cookie and "Path=/" in set_cookie
            cookies.append({"Cookie": set_cookie.split(";")[0]})
        assert split_count(rt, "canary", "split.weight") + split_count(rt, "stable", "split.weight") == 200
        again = await sides_of(edge_port(rt), cookies)
        assert [s for s, _ in again] == [s for s, _ in first]  # the cookie's key lands where the first answer came from
        assert all("Set-Cookie" not in h for _, h in again)  # a known client is not given a new cookie
        assert split_count(rt, "canary", "split.sticky_cookie") == [s for s, _ in first].count("canary")
        write(path, config(sides, tmp_path, (60, 40), sticky))
        ok, problems = await rt.reload()
        assert ok, problems
        after = [s for s, _ in await sides_of(edge_port(rt), cookies)]
        assert all(a == "canary" for (b, _), a in zip(first, after) if b == "canary")
        # a cookie Gatewatch never wrote is replaced, not trusted
        forged = await sides_of(edge_port(rt), [{"Cookie": "gw_split=not-ours"}])
        assert forged[0][1]["Set-Cookie"].startswith("gw_split=")
    finally:
        await rt.stop(grace_s=1.0)


async def test_overrides_force_a_side_only_when_allowed_and_are_recorded(sides, tmp_path):
    split = {"override": {"header": "x-gatewatch-upstream", "cookie": "gw_force", "allowed": ["canary"]}}
    with OtlpReceiver() as rx:
        async with running(config(sides, tmp_path, (100, 0), split, otlp=rx)) as rt:
            port = edge_port(rt)
            assert split_count(rt, "canary", "split.override_header") == 0  # present at 0
            got = await sides_of(port, [{"x-gatewatch-upstream": "canary"}, {"Cookie": "a=1; gw_force=canary"},
                                        {"x-gatewatch-upstream": "stable"},  # not in `allowed`
                                        {"x-gatewatch-upstream": "elsewhere"}])  # not a side at all
            assert [s for s, _ in got] == ["canary", "canary", "stable", "stable"]
            assert {s for s, _ in await sides_of(port, [{}] * 50)} == {"stable"}  # weight 0 takes nothing else
            assert split_count(rt, "canary", "split.override_header") == 1
            assert split_count(rt, "canary", "split.override_cookie") == 1
            assert split_count(rt, "stable", "split.weight") == 52
            trace_id = got[0][1]["traceresponse"].split("-")[1]
            assert await asyncio.get_running_loop().run_in_executor(None, lambda: rx.data.wait_for(
                lambda spans, logs: any(s["trace_id"] == trace_id and s["kind"] == "SERVER" for s in spans)
                and any(r["trace_id"] == trace_id and r["event_name"] == "gatewatch.decision.split" for r in logs)))
    server = next(s for s in rx.data.trace(trace_id) if s["kind"] == "SERVER")["attributes"]
    assert server["gatewatch.upstream"] == "canary" and server["gatewatch.split.upstream"] == "canary"
    assert server["gatewatch.split.weight"] == 0 and server["gatewatch.split.reason"] == "split.override_header"
    log = next(r for r in rx.data.snapshot()[1] if r["trace_id"] == trace_id
               and r["event_name"] == "gatewatch.decision.split")["attributes"]
    assert log["gatewatch.decision.result"] == "overridden" and log["gatewatch.decision.rule"] == "api"
    assert log["gatewatch.upstream"] == "canary"
    client = next(s for s in rx.data.trace(trace_id) if s["kind"] == "CLIENT")["attributes"]
    assert client["gatewatch.upstream"] == "canary"


async def test_override_from_an_untrusted_network_is_ignored(sides, tmp_path):
    split = {"override": {"header": "x-gatewatch-upstream", "trusted_networks": ["10.0.0.0/8"]}}
    async with running(config(sides, tmp_path, (100, 0), split)) as rt:
        got = await sides_of(edge_port(rt), [{"x-gatewatch-upstream": "canary"}])
        assert got[0][0] == "stable"  # the test client is 127.0.0.1


# --- the hashing itself: pure, table-driven ---

def test_rendezvous_shares_match_the_weights_and_moves_are_minimal():
    keys = [key_hash(f"k{i}") for i in range(20_000)]

    def assign(weights):
        sides = tuple(Side(name, w, key_hash(name), None) for name, w in weights)
        return [rendezvous(k, sides).name for k in keys]

    a = assign([("a", 60), ("b", 30), ("c", 10)])
    for name, p in (("a", 0.6), ("b", 0.3), ("c", 0.1)):
        assert within_5_sigma(a.count(name), len(keys), p)
    b = assign([("a", 60), ("b", 30), ("c", 20)])  # c raised: keys move only to c
    assert all(x == y or y == "c" for x, y in zip(a, b))
    c = assign([("a", 60), ("b", 15), ("c", 10)])  # b lowered: keys move only away from b
    assert all(x == y or x == "b" for x, y in zip(a, c))
    assert assign([("a", 60), ("b", 30), ("c", 10)]) == a  # deterministic: no process-local state


@pytest.mark.parametrize("route,problem", [
    ({"upstream": "stable", "upstreams": [{"name": "canary", "weight": 1}]},
     "edge.routes[0]: give exactly one of 'upstream' or 'upstreams'"),
    ({"upstreams": [{"name": "stable", "weight": 0}, {"name": "canary", "weight": 0}]},
     "edge.routes[0].upstreams: at least one side needs a weight above 0"),
    ({"upstreams": [{"name": "stable", "weight": 1}, {"name": "stable", "weight": 1}]},
     "edge.routes[0].upstreams: duplicate upstream(s) stable"),
    ({"upstreams": [{"name": "stable", "weight": 1}, {"name": "canry", "weight": 1}]},
     "edge.routes[0].upstreams[1].name: unknown upstream 'canry'; did you mean 'canary'?"),
    ({"upstreams": [{"name": "stable", "weight": -1}]}, "edge.routes[0].upstreams[0].weight"),
    ({"upstream": "stable", "split": {}}, "edge.routes[0]: split: applies to a route with 'upstreams' only"),
    ({"upstreams": [{"name": "stable", "weight": 1}], "split": {"override": {"header": "x-f", "allowed": ["x"]}}},
     "split.override.allowed: 'x' is not a side"),
    ({"upstreams": [{"name": "stable", "weight": 1}], "split": {"sticky": {}}},
     "edge.routes[0].split.sticky: give exactly one of 'hash_key' or 'cookie'"),
    ({"upstreams": [{"name": "stable", "weight": 1}], "split": {"override": {}}},
     "edge.routes[0].split.override: give 'header', 'cookie' or both"),
    ({"upstreams": [{"name": "stable", "weight": 1}],
      "split": {"override": {"header": "x-f", "trusted_networks": ["nope"]}}},
     "edge.routes[0].split.override.trusted_networks"),
])
def test_config_errors_name_the_field(route, problem, tmp_path):
    cfg = config({"stable": 1, "canary": 2}, tmp_path)
    cfg["edge"]["routes"][0] = {"name": "api", **route}
    with pytest.raises(ConfigError) as err:
        parse_config(cfg)
    assert any(problem in p for p in err.value.problems), err.value.problems


ASSIGN = ("from gatewatch.proxy.split import Side, key_hash, rendezvous\n"
          "sides = (Side('stable', 50, key_hash('stable'), None), Side('canary', 50, key_hash('canary'), None))\n"
          "print(''.join(rendezvous(key_hash(f'user-{i}'), sides).name[0] for i in range(200)))")


def test_same_key_same_side_in_every_process():
    """Another process with another string-hash seed assigns every key alike (no salted `hash()` anywhere)."""
    other = subprocess.run([sys.executable, "-c", ASSIGN], env={**os.environ, "PYTHONHASHSEED": "1"},
                           capture_output=True, text=True, check=True).stdout.strip()
    sides = (Side("stable", 50, key_hash("stable"), None), Side("canary", 50, key_hash("canary"), None))
    here = "".join(rendezvous(key_hash(f"user-{i}"), sides).name[0] for i in range(200))
    assert other == here and set(here) == {"s", "c"}
