"""DNS discovery against a real DNS server on loopback UDP (tests/support/dns_server.py): A/AAAA with a port, SRV
(RFC 2782), refresh by TTL within bounds, failures that keep the last good set (NXDOMAIN, SERVFAIL, timeout,
empty answer) as events and counters, and what the balancer runtime shows of it (`state()`, metric series)."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from gatewatch.balancer.config import DnsDiscoveryConfig, PoolConfig
from gatewatch.balancer.discovery.dns import DnsFailure, DnsSource, refresh_delay
from gatewatch.balancer.runtime import BalancerRuntime
from gatewatch.telemetry.config import TelemetryConfig, resolve
from gatewatch.telemetry.context import EventRecord
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import Attr, DiscoveryResult, Event
from gatewatch.telemetry.recorder import MemorySink, Telemetry

from tests.support.dns_server import DnsServer

FAST = {"min_refresh_s": 0.02, "max_refresh_s": 0.05, "timeout_s": 0.3}


class Balancer:
    """A BalancerRuntime with real metrics and telemetry into a memory sink."""

    def __init__(self, *pools: dict):
        self.metrics = Metrics("test")
        self.sink = MemorySink()
        self.telemetry = Telemetry(resolve(TelemetryConfig(), "t", {}), self.metrics, "test", "t", sink=self.sink)
        self.rt = BalancerRuntime(tuple(PoolConfig.model_validate(p) for p in pools), self.telemetry, self.metrics)

    def events(self, event: Event) -> list[EventRecord]:
        return [r for r in self.sink.records if isinstance(r, EventRecord) and r.event == event.value]

    def sample(self, name: str, **labels) -> float | None:
        for fam in self.metrics.collect_all():
            for s in fam.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    return s.value
        return None

    def ids(self, pool: str = "p") -> list[str]:
        return [e.id for e in self.rt.pools[pool].endpoints]


@contextlib.asynccontextmanager
async def balancer(*pools: dict):
    b = Balancer(*pools)
    await b.rt.start()
    try:
        yield b
    finally:
        await b.rt.stop()


async def until(predicate, what: str, timeout: float = 10.0) -> None:
    """Wait for a condition the system reaches by itself (no assertion on how long it took)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


@pytest.fixture
async def dns_server():
    s = DnsServer()
    await s.start()
    yield s
    s.close()


def dns_pool(server: DnsServer, **dns) -> dict:
    return {"name": "p", "discovery": {"dns": {"nameservers": [f"127.0.0.1:{server.port}"], **FAST, **dns}}}


@pytest.mark.parametrize(("ttl", "expected"), [(0, 5.0), (4, 5.0), (30, 30.0), (299, 299.0), (3600, 300.0)])
def test_refresh_follows_the_ttl_within_bounds(ttl, expected):
    cfg = DnsDiscoveryConfig(name="api.test", port=80, min_refresh_s=5, max_refresh_s=300)
    assert refresh_delay(ttl, cfg) == expected


async def test_a_records_become_instances_and_follow_changes(dns_server):
    dns_server.set("api.test", "A", ["10.0.0.2", "10.0.0.1"], ttl=0)
    async with balancer(dns_pool(dns_server, name="api.test", port=8080)) as b:
        assert b.ids() == ["10.0.0.1:8080", "10.0.0.2:8080"]  # known before the runtime serves
        [ev] = b.events(Event.DISCOVERY_CHANGE)
        assert ev.attributes[Attr.DISCOVERY_DETAIL] == "dns A api.test ttl 0"
        assert ev.attributes[Attr.DISCOVERY_ADDED] == ["10.0.0.1:8080", "10.0.0.2:8080"]
        dns_server.set("api.test", "A", ["10.0.0.1", "10.0.0.3"], ttl=0)
        await until(lambda: b.ids() == ["10.0.0.1:8080", "10.0.0.3:8080"], "the new set")
        last = b.events(Event.DISCOVERY_CHANGE)[-1].attributes
        assert (last[Attr.DISCOVERY_ADDED], last[Attr.DISCOVERY_REMOVED]) == (["10.0.0.3:8080"], ["10.0.0.2:8080"])
        state = b.rt.state()["p"]
        assert state["source"] == "dns" and {i["source"] for i in state["instances"]} == {"dns"}
        assert state["discovery"]["result"] == "ok" and state["discovery"]["detail"] == "dns A api.test ttl 0"
        assert b.sample("gatewatch_discovery_refreshes_total", gatewatch_pool="p", source="dns", result="ok") >= 2
        # the removed instance's series are gone, the new one's are there at 0
        assert b.sample("gatewatch_instance_requests_total", gatewatch_instance="10.0.0.2:8080") is None
        assert b.sample("gatewatch_instance_requests_total", gatewatch_instance="10.0.0.3:8080") == 0


async def test_ipv4_and_ipv6_together(dns_server):
    dns_server.set("api.test", "A", ["10.0.0.1"], ttl=60)
    dns_server.set("api.test", "AAAA", ["fd00::1"], ttl=30)
    src = DnsSource(DnsDiscoveryConfig(name="api.test", record="A+AAAA", port=80,
                                       nameservers=[f"127.0.0.1:{dns_server.port}"]))
    instances, ttl = await src.resolve()
    assert [(i.host, i.port) for i in instances] == [("10.0.0.1", 80), ("fd00::1", 80)]
    assert ttl == 30  # the smallest TTL of what was used
    dns_server.set("api.test", "AAAA", [])  # NODATA for AAAA: the A records still make a set
    instances, _ = await src.resolve()
    assert [i.host for i in instances] == ["10.0.0.1"]


async def test_srv_records_priority_weight_port_target(dns_server):
    dns_server.set("_http._tcp.api.test", "SRV", ["10 60 8080 a.test.", "10 0 8081 b.test.", "20 5 9090 c.test.",
                                                   "30 1 80 ."], ttl=40)
    dns_server.set("a.test", "A", ["10.0.0.1"], ttl=20)
    dns_server.set("c.test", "A", ["10.0.0.3", "10.0.0.4"])
    dns_server.glue("b.test", "A", ["10.0.0.2"])  # in the additional section: no query for it
    src = DnsSource(DnsDiscoveryConfig(name="_http._tcp.api.test", record="SRV",
                                       nameservers=[f"127.0.0.1:{dns_server.port}"]))
    instances, ttl = await src.resolve()
    assert [(i.host, i.port, i.weight, i.priority) for i in instances] == [
        ("10.0.0.1", 8080, 60, 0), ("10.0.0.2", 8081, 1, 0), ("10.0.0.3", 9090, 5, 1), ("10.0.0.4", 9090, 5, 1)]
    assert ttl == 20
    assert ("b.test.", "A") not in dns_server.queries
    assert not any(q[0] == "." for q in dns_server.queries)  # "." : not offered, never resolved


@pytest.mark.parametrize(("setup", "result"), [
    (lambda s: s.remove("api.test"), DiscoveryResult.NXDOMAIN),
    (lambda s: s.fail("api.test"), DiscoveryResult.SERVFAIL),
    (lambda s: s.silence("api.test"), DiscoveryResult.TIMEOUT),
    (lambda s: s.set("api.test", "A", []), DiscoveryResult.EMPTY),
])
async def test_failures_keep_the_last_good_set(dns_server, setup, result):
    dns_server.set("api.test", "A", ["10.0.0.1"], ttl=0)
    async with balancer(dns_pool(dns_server, name="api.test", port=80)) as b:
        assert b.ids() == ["10.0.0.1:80"]
        setup(dns_server)
        labels = {"gatewatch_pool": "p", "source": "dns", "result": result.value}
        await until(lambda: b.sample("gatewatch_discovery_refreshes_total", **labels) >= 3, "three failed refreshes")
        assert b.ids() == ["10.0.0.1:80"]
        [failed] = b.events(Event.DISCOVERY_FAILURE)  # one event for the outage, the repeats counted
        assert failed.severity == "WARN"
        assert failed.attributes[Attr.DISCOVERY_RESULT] == result.value
        assert failed.attributes[Attr.DISCOVERY_DETAIL].startswith("dns A api.test: ")
        assert b.rt.state()["p"]["discovery"]["consecutive_failures"] >= 3
        dns_server.set("api.test", "A", ["10.0.0.1"], ttl=0)
        await until(lambda: len(b.events(Event.DISCOVERY_FAILURE)) == 2, "the recovery")
        recovered = b.events(Event.DISCOVERY_FAILURE)[-1]
        assert (recovered.severity, recovered.attributes[Attr.DISCOVERY_RESULT]) == ("INFO", "ok")
        assert b.rt.state()["p"]["discovery"]["consecutive_failures"] == 0


async def test_failure_details(dns_server):
    src = DnsSource(DnsDiscoveryConfig(name="nx.test", port=80, nameservers=[f"127.0.0.1:{dns_server.port}"]))
    with pytest.raises(DnsFailure) as err:
        await src.resolve()
    assert (err.value.result, err.value.detail) == (DiscoveryResult.NXDOMAIN, "nx.test does not exist (NXDOMAIN)")


async def test_counters_present_at_zero_for_a_configured_pool(dns_server):
    dns_server.set("api.test", "A", ["10.0.0.1"], ttl=3600)
    b = Balancer(dns_pool(dns_server, name="api.test", port=80))
    for result in DiscoveryResult:
        assert b.sample("gatewatch_discovery_refreshes_total", gatewatch_pool="p", source="dns",
                        result=result.value) == 0
