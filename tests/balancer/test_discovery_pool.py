"""Membership changes applied to a running pool (`Pool.set_members`), driven with a fake clock and read back as
data: state of the instances that stay, slow start and first-probe wait of new ones, in-flight requests of removed
ones, the algorithms' rebuilt tables, and the `gatewatch.discovery.change` event."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gatewatch.balancer.algorithms import NoHealthyEndpoint, Pick
from gatewatch.balancer.config import InstanceConfig, PoolConfig
from gatewatch.balancer.health import Result
from gatewatch.balancer.pool import MembershipChange, Pool
from gatewatch.telemetry.names import Attr, Event

from tests.balancer.test_pool_state import Events

FILE = {"discovery": {"file": {"path": "/nonexistent/instances.yaml"}}}


def inst(n: int, **kw) -> InstanceConfig:
    return InstanceConfig(host=f"10.0.0.{n}", port=80, id=f"i{n}", **kw)


class World:
    def __init__(self, **cfg):
        self.t = [1000.0]
        self.events = Events()
        self.pool = Pool(PoolConfig.model_validate({"name": "p", **FILE, **cfg}), clock=lambda: self.t[0],
                         notify=self.events)

    def set(self, *ns: int, **kw) -> MembershipChange:
        return self.pool.set_members([inst(n, **kw) for n in ns], "file /x.yaml changed")

    def picks(self, n: int, seed: int = 0) -> Counter:
        rng = random.Random(seed)
        out = Counter()
        for i in range(n):
            p = self.pool.pick(f"key-{i}", {}, rng)
            assert isinstance(p, Pick), p
            out[p.endpoint.id] += 1
        return out


def test_empty_pool_has_no_candidates_until_discovery_answers():
    w = World()
    assert w.pool.source == "file" and w.pool.endpoints == ()
    none = w.pool.pick(None, {}, random.Random(1))
    assert isinstance(none, NoHealthyEndpoint) and none.candidates == 0
    assert w.pool.view().sources == "file=0"
    change = w.set(1, 2)
    assert change == MembershipChange(added=("i1", "i2"))
    assert set(w.picks(10)) == {"i1", "i2"}
    assert w.pool.view().sources == "file=2"
    assert {e.source for e in w.pool.endpoints} == {"file"}


def test_change_event_says_what_and_why():
    w = World()
    w.set(1, 2)
    w.events.clear()
    change = w.pool.set_members([inst(2, weight=5), inst(3)], "file /x.yaml changed")
    assert change == MembershipChange(added=("i3",), removed=("i1",), updated=("i2",))
    [ev] = w.events.of(Event.DISCOVERY_CHANGE)
    ev.attrs.pop(Attr.EVENT_ID)
    assert ev.attrs == {Attr.POOL: "p", Attr.DISCOVERY_SOURCE: "file", Attr.DISCOVERY_DETAIL: "file /x.yaml changed",
                        Attr.DISCOVERY_ADDED: ["i3"], Attr.DISCOVERY_REMOVED: ["i1"], Attr.DISCOVERY_UPDATED: ["i2"],
                        Attr.DISCOVERY_INSTANCES: 2}
    assert ev.body == "pool p: added i3; removed i1; updated i2 (file /x.yaml changed); 2 instance(s)"
    w.events.clear()
    assert not w.pool.set_members([inst(2, weight=5), inst(3)], "again")  # nothing changed: no event
    assert w.events == []


def test_instances_that_stay_keep_their_state():
    w = World(algorithm="least_connections",
              outlier_detection={"consecutive_gateway_errors": 1, "max_ejection_percent": 100})
    w.set(1, 2, 3)
    w.pool.observe("i1", Result.GATEWAY_ERROR, None, None)  # ejected
    ep2 = w.pool.endpoint("i2")
    w.pool.acquire(ep2)
    w.pool.set_draining("i3", True)
    w.set(1, 2, 3, 4)
    states = w.pool.states()
    assert states == {"i1": "ejected", "i2": "healthy", "i3": "draining", "i4": "healthy"}
    assert w.pool.in_flight["i2"] == 1
    assert w.pool.instances["i1"].outlier.ejections == 1
    assert w.picks(20) == {"i4": 20}  # least_connections still sees i2's request in flight


def test_removed_instance_gets_no_picks_and_its_in_flight_requests_finish():
    w = World()
    w.set(1, 2)
    ep1 = w.pool.endpoint("i1")
    w.pool.acquire(ep1)
    w.set(2)
    assert set(w.picks(10)) == {"i2"}
    assert w.pool.in_flight["i1"] == 1  # still counted while it runs
    w.pool.release(ep1)
    w.pool.tick()
    assert "i1" not in w.pool.in_flight
    w.pool.acquire(ep1)  # picked before the removal, attempted after it: counted, then retired
    w.pool.release(ep1)
    w.pool.tick()
    assert "i1" not in w.pool.in_flight


def test_new_instance_starts_in_slow_start():
    w = World(algorithm="weighted_round_robin", slow_start={"window_s": 10, "min_weight_percent": 10})
    w.set(1)
    assert w.pool.slow_start_ratio("i1") == 1.0  # the first set is the pool's start: no ramp
    w.set(1, 2)
    assert w.pool.slow_start_ratio("i2") == pytest.approx(0.1)
    assert w.picks(110) == {"i1": 100, "i2": 10}
    w.t[0] += 10
    w.pool.tick()
    assert w.pool.slow_start_ratio("i2") == 1.0


def test_new_instance_waits_for_its_first_passing_probe():
    w = World(health_check={"healthy_threshold": 3, "unhealthy_threshold": 2}, algorithm="random",
              slow_start={"window_s": 10})
    w.set(1)
    assert w.pool.states() == {"i1": "healthy"}
    w.set(1, 2)
    assert w.pool.states() == {"i1": "healthy", "i2": "unhealthy"}
    assert set(w.picks(20)) == {"i1"}
    w.events.clear()
    w.pool.probe("i2", True, "status 200")  # one pass is enough for a new instance
    [tr] = w.events.of(Event.HEALTH_TRANSITION)
    assert (tr.attrs[Attr.INSTANCE], tr.attrs[Attr.HEALTH_FROM], tr.attrs[Attr.HEALTH_TO]) == ("i2", "unhealthy",
                                                                                                  "healthy")
    assert w.pool.slow_start_ratio("i2") < 1.0  # and ramps from there
    assert set(w.picks(200)) == {"i1", "i2"}


def test_source_draining_flag_drains_and_undrains():
    w = World()
    w.set(1, 2)
    w.events.clear()
    change = w.pool.set_members([inst(1), inst(2, draining=True)], "k8s EndpointSlice shop/api-1 modified rv 7")
    assert change.updated == ("i2",)
    assert w.pool.states()["i2"] == "draining"
    [tr] = w.events.of(Event.HEALTH_TRANSITION)
    assert (tr.attrs[Attr.HEALTH_TO], tr.attrs[Attr.HEALTH_CHECK], tr.attrs[Attr.PROBE_RESULT]) == (
        "draining", "discovery", "terminating")
    w.set(1, 2)
    assert w.pool.states()["i2"] == "healthy"


def test_same_id_at_a_new_address_is_a_new_instance():
    w = World(outlier_detection={"consecutive_gateway_errors": 1, "max_ejection_percent": 100})
    w.set(1, 2)
    w.pool.observe("i1", Result.GATEWAY_ERROR, None, None)
    change = w.pool.set_members([InstanceConfig(host="10.9.9.9", port=80, id="i1"), inst(2)], "moved")
    assert change.updated == ("i1",)
    assert w.pool.states()["i1"] == "healthy" and w.pool.endpoint("i1").host == "10.9.9.9"


@pytest.mark.parametrize("algorithm", ["ring_hash", "maglev"])
def test_consistent_hashing_tables_are_rebuilt(algorithm):
    w = World(algorithm=algorithm, hash_key={"source": "header", "name": "x-user"})
    w.set(1, 2, 3)
    before = {f"key-{i}": w.pool.pick(f"key-{i}", {}, random.Random(0)).endpoint.id for i in range(300)}
    w.set(1, 2, 3, 4)
    after = {k: w.pool.pick(k, {}, random.Random(0)).endpoint.id for k in before}
    moved = {k for k in before if before[k] != after[k]}
    assert moved and all(after[k] == "i4" for k in moved)  # only keys the new instance now owns moved
    w.set(1, 2)
    final = {k: w.pool.pick(k, {}, random.Random(0)).endpoint.id for k in before}
    assert set(final.values()) == {"i1", "i2"}
    assert all(final[k] == before[k] for k in before if before[k] in ("i1", "i2"))


@pytest.mark.parametrize("algorithm", ["round_robin", "weighted_round_robin", "random", "least_request",
                                       "least_connections"])
def test_other_algorithms_follow_the_new_set(algorithm):
    w = World(algorithm=algorithm)
    w.set(1, 2)
    assert set(w.picks(40)) == {"i1", "i2"}
    w.pool.set_members([inst(2), inst(3)], "changed")
    assert set(w.picks(40)) == {"i2", "i3"}


def test_affinity_cookie_of_a_removed_instance_is_forgotten():
    w = World(affinity={})
    w.set(1, 2)
    cookie = w.pool.affinity_value("i1")
    assert w.pool.affinity_target(cookie) == "i1"
    w.set(2, 3)
    assert w.pool.affinity_target(cookie) is None
    assert w.pool.affinity_target(w.pool.affinity_value("i3")) == "i3"
