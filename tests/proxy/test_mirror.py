"""Request mirroring (issue 19): shadows never touch the client's answer, stay within their bounds, are compared
with the primary and show up as their own CLIENT span. Real loopback backends, a real runtime, a real OTLP
receiver."""

from __future__ import annotations

import asyncio
import math

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict

from gatewatch.config import ConfigError, parse_config
from gatewatch.telemetry.names import Layer
from tests.support.configs import gateway_config
from tests.support.net import edge_port, start_app
from tests.support.otlp import OtlpReceiver
from tests.support.runtime import running


class Shadow:
    """A shadow backend: answers `status`, or hangs until the test ends (`hang`); keeps what it was sent."""

    def __init__(self, status: int = 200, hang: bool = False):
        self.status, self.hang = status, hang
        self.seen: list[tuple[str, CIMultiDict, bytes]] = []
        self.release = asyncio.Event()

    async def __call__(self, request: web.Request) -> web.Response:
        self.seen.append((request.method, request.headers.copy(), await request.read()))
        if self.hang:
            await self.release.wait()
        return web.json_response({"shadow": True}, status=self.status)


async def primary(request: web.Request) -> web.Response:
    return web.json_response({"primary": True, "body": (await request.read()).decode(),
                              "mirror": request.headers.get("x-gatewatch-mirror")})


@pytest.fixture
async def backends():
    shadows = {"hang": Shadow(hang=True), "fail": Shadow(500), "ok": Shadow(200)}
    started = {"primary": await start_app(primary)} | {n: await start_app(s.__call__) for n, s in shadows.items()}
    yield {n: port for n, (_, port) in started.items()}, shadows
    for s in shadows.values():
        s.release.set()
    for runner, _ in started.values():
        await runner.cleanup()


def config(ports: dict[str, int], tmp_path, mirror: dict, otlp=None) -> dict:
    return gateway_config(
        tmp_path, otlp,
        {"upstreams": [{"name": name, "url": f"http://127.0.0.1:{ports[name]}"} for name in ("hang", "fail")],
         "routes": [{"name": "api", "match": {"path": {"prefix": "/api"}}, "upstream": "primary",
                     "retries": {"attempts": 1}, "mirror": mirror}]},
        [{"name": name, "instances": [{"id": f"{name}0", "host": "127.0.0.1", "port": ports[name]}]}
         for name in ("primary", "ok")])


async def send(port: int, n: int, method: str = "GET", data=None, headers=None) -> list[tuple[int, dict, dict]]:
    out = []
    sem = asyncio.Semaphore(10)
    async with aiohttp.ClientSession() as s:
        async def one() -> None:
            body = data() if callable(data) else data
            async with sem, s.request(method, f"http://127.0.0.1:{port}/api/x", data=body, headers=headers) as r:
                out.append((r.status, dict(r.headers), await r.json()))
        await asyncio.gather(*(one() for _ in range(n)))
    return out


def requests(rt, shadow: str, result: str) -> float:
    return rt.metrics.mirror_requests.value(("api", shadow, result))


def compared(rt, shadow: str, match: str) -> float:
    return rt.metrics.mirror_comparisons.value(("api", shadow, match))


async def until(predicate) -> None:
    for _ in range(400):  # a bound on a hang, not a timing assertion
        if predicate():
            return
        await asyncio.sleep(0.025)
    assert predicate()


async def test_a_hanging_shadow_leaves_every_answer_alone_and_in_flight_bounded(backends, tmp_path):
    ports, shadows = backends
    mirror = {"upstream": "hang", "max_in_flight": 4, "timeout_s": 60}
    async with running(config(ports, tmp_path, mirror)) as rt:
        for result in ("sent", "skipped_full", "skipped_body", "skipped_streamed"):  # present at 0
            assert requests(rt, "hang", result) == 0
        answers = await send(edge_port(rt), 60)
        assert all(status == 200 and body == {"primary": True, "body": "", "mirror": None}
                   for status, _, body in answers)
        mirrors = rt.engines[Layer.EDGE].mirrors
        assert mirrors.in_flight["api"] == 4  # the four first copies still hang; nothing queued behind them
        assert requests(rt, "hang", "sent") == 4
        assert requests(rt, "hang", "skipped_full") == 56
        await until(lambda: len(shadows["hang"].seen) == 4)
        assert all(h.get("x-gatewatch-mirror") == "1" for _, h, _ in shadows["hang"].seen)
        # nothing compared yet: no shadow has answered
        assert sum(compared(rt, "hang", m) for m in ("same_status_class", "differs", "shadow_error",
                                                      "shadow_timeout")) == 0
    # shut down with shadows in flight: they end (cancelled) and are still counted, once each
    assert sum(compared(rt, "hang", m) for m in ("shadow_error", "shadow_timeout")) == 4
    assert rt.engines[Layer.EDGE].mirrors.in_flight["api"] == 0


async def test_shadow_timeout_is_counted_and_its_span_says_so(backends, tmp_path):
    ports, _ = backends
    mirror = {"upstream": "hang", "timeout_s": 0.2}
    with OtlpReceiver() as rx:
        async with running(config(ports, tmp_path, mirror, otlp=rx)) as rt:
            (status, headers, _), = await send(edge_port(rt), 1)
            assert status == 200
            await until(lambda: compared(rt, "hang", "shadow_timeout") == 1)
            assert rt.engines[Layer.EDGE].mirrors.in_flight["api"] == 0
            trace_id = headers["traceresponse"].split("-")[1]
            assert await asyncio.get_running_loop().run_in_executor(None, lambda: rx.data.wait_for(
                lambda spans, logs: any(s["trace_id"] == trace_id and s["attributes"].get("gatewatch.mirror")
                                        for s in spans)))
    shadow = next(s for s in rx.data.trace(trace_id) if s["attributes"].get("gatewatch.mirror"))["attributes"]
    assert shadow["error.type"] == "response_timeout" and shadow["gatewatch.outcome"] == "upstream_timeout"
    assert shadow["gatewatch.mirror.match"] == "shadow_timeout"
    assert shadow["gatewatch.mirror.primary_status_code"] == 200


async def test_shadow_500_against_primary_200_is_a_difference_with_its_own_client_span(backends, tmp_path):
    ports, shadows = backends
    with OtlpReceiver() as rx:
        async with running(config(ports, tmp_path, {"upstream": "fail", "host": "shadow.internal"}, otlp=rx)) as rt:
            # a client cannot pass a request off as a shadow copy: its x-gatewatch-mirror never reaches the primary
            (status, headers, body), = await send(edge_port(rt), 1, headers={"x-gatewatch-mirror": "1"})
            assert status == 200 and body["primary"] is True and body["mirror"] is None
            await until(lambda: compared(rt, "fail", "differs") == 1)
            assert requests(rt, "fail", "sent") == 1
            assert sum(sum(s[0]) for s in rt.metrics.mirror_latency_delta._series.values()) == 1
            trace_id = headers["traceresponse"].split("-")[1]
            assert await asyncio.get_running_loop().run_in_executor(None, lambda: rx.data.wait_for(
                lambda spans, logs: any(s["trace_id"] == trace_id and s["attributes"].get("gatewatch.mirror")
                                        for s in spans)
                and len([s for s in spans if s["trace_id"] == trace_id]) == 4  # SERVER, balance, 2 CLIENT
                and any(r["trace_id"] == trace_id and r["event_name"] == "gatewatch.decision.mirror" for r in logs)))
    spans = rx.data.trace(trace_id)
    server = next(s for s in spans if s["kind"] == "SERVER")
    shadow = next(s for s in spans if s["attributes"].get("gatewatch.mirror"))
    primary_attempt = next(s for s in spans if s["kind"] == "CLIENT" and s is not shadow)
    assert shadow["kind"] == "CLIENT" and shadow["parent_span_id"] == server["span_id"]
    a = shadow["attributes"]
    assert a["gatewatch.upstream"] == "fail" and a["http.response.status_code"] == 500
    assert a["gatewatch.mirror.match"] == "differs" and a["gatewatch.mirror.primary_status_code"] == 200
    assert isinstance(a["gatewatch.mirror.latency_delta_s"], float)
    assert primary_attempt["attributes"]["gatewatch.upstream"] == "primary"
    assert server["attributes"]["gatewatch.mirror.result"] == "sent"
    assert server["attributes"]["gatewatch.upstream"] == "primary"
    # what the shadow was sent: the shadow span's own traceparent, the mirror header, the configured Host
    _, sent, _ = shadows["fail"].seen[0]
    assert sent["traceparent"].split("-")[1:3] == [trace_id, shadow["span_id"]]
    assert sent.getall("x-gatewatch-mirror") == ["1"] and sent["Host"] == "shadow.internal"
    log = next(r for r in rx.data.snapshot()[1] if r["trace_id"] == trace_id
               and r["event_name"] == "gatewatch.decision.mirror")["attributes"]
    assert log["gatewatch.decision.result"] == "sent" and log["gatewatch.decision.reason"] == "mirror.percent"


@pytest.mark.parametrize("data_plane", ["fast", "aiohttp"])
async def test_bodies_are_copied_up_to_the_limit_and_skipped_beyond_it(backends, tmp_path, data_plane):
    ports, shadows = backends
    cfg = config(ports, tmp_path, {"upstream": "ok", "max_body_bytes": 100}) | {"data_plane": data_plane}
    async with running(cfg) as rt:
        port = edge_port(rt)
        (status, _, body), = await send(port, 1, "POST", b"x" * 100)
        assert status == 200 and body["body"] == "x" * 100
        await until(lambda: compared(rt, "ok", "same_status_class") == 1)  # a pool shadow, 200 like the primary
        method, headers, copied = shadows["ok"].seen[0]
        assert (method, copied, headers["Content-Length"]) == ("POST", b"x" * 100, "100")
        (status, _, body), = await send(port, 1, "POST", b"y" * 101)
        assert status == 200 and body["body"] == "y" * 101
        assert requests(rt, "ok", "skipped_body") == 1

        async def chunked():
            yield b"z" * 10

        (status, _, body), = await send(port, 1, "POST", chunked)
        assert status == 200 and body["body"] == "z" * 10
        assert requests(rt, "ok", "skipped_streamed") == 1
        assert requests(rt, "ok", "sent") == 1 and len(shadows["ok"].seen) == 1


async def test_percent_selects_its_share(backends, tmp_path):
    ports, _ = backends
    n, p = 400, 0.3
    async with running(config(ports, tmp_path, {"upstream": "ok", "percent": 30})) as rt:
        await send(edge_port(rt), n)
        sent = requests(rt, "ok", "sent")
        assert abs(sent - n * p) <= 5 * math.sqrt(n * p * (1 - p)), sent  # binomial, 5 sigma: cannot flake
        await until(lambda: compared(rt, "ok", "same_status_class") == sent)


@pytest.mark.parametrize("mirror,problem", [
    ({"upstream": "nowhere"}, "edge.routes[0].mirror.upstream: unknown upstream 'nowhere'"),
    ({"upstream": "ok", "percent": 101}, "edge.routes[0].mirror.percent"),
    ({"upstream": "ok", "max_in_flight": 0}, "edge.routes[0].mirror.max_in_flight"),
    ({"upstream": "ok", "host": "bad host"}, "edge.routes[0].mirror.host: 'bad host' is not a host[:port]"),
    ({"percent": 5}, "edge.routes[0].mirror.upstream"),
])
def test_config_errors_name_the_field(mirror, problem, tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config(config({"primary": 1, "ok": 2, "hang": 3, "fail": 4}, tmp_path, mirror))
    assert any(problem in p for p in err.value.problems), err.value.problems
