"""A pool's state, driven from outside with a fake clock and read back as data: the view (candidates, exclusions
and their reasons, the priority level, panic mode), the picks it allows, and the events it reports through
`notify` (failover, health transitions, ejections with the trace ids that caused them)."""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import pytest

from gatewatch.balancer.algorithms import NoHealthyEndpoint, Pick
from gatewatch.balancer.config import Algorithm, PoolConfig
from gatewatch.balancer.health import Result
from gatewatch.balancer.pool import Pool
from gatewatch.telemetry.names import Attr, Event, Reason

GW5 = Reason.OUTLIER_CONSECUTIVE_GATEWAY_ERRORS.value


@dataclass
class Ev:
    event: Event
    body: str
    attrs: dict
    trace_id: str | None
    span_id: str | None
    severity: str


class Events(list):
    """The pool's `notify`: every event kept as data. Always truthy: the pool takes `notify or <no-op>`."""

    def __bool__(self):
        return True

    def __call__(self, event, body, attrs, trace_id=None, span_id=None, severity="INFO"):
        self.append(Ev(event, body, dict(attrs), trace_id, span_id, severity))

    def of(self, event: Event) -> list[Ev]:
        return [e for e in self if e.event is event]

    def take(self) -> list[Ev]:
        out = list(self)
        self.clear()
        return out


class World:
    """A pool with a fake clock (`t[0]`) and its collected events."""

    def __init__(self, instances, **cfg):
        self.t = [1000.0]
        self.events = Events()
        specs = []
        for n, spec in enumerate(instances):
            name, extra = (spec, {}) if isinstance(spec, str) else spec
            specs.append({"host": f"10.0.0.{n + 1}", "port": 9000, "id": name, **extra})
        self.pool = Pool(PoolConfig.model_validate({"name": "p", "instances": specs, **cfg}),
                         clock=lambda: self.t[0], notify=self.events)

    def at(self, now: float) -> None:
        self.t[0] = now

    def down(self, *ids: str, detail: str = "connect refused") -> None:
        for i in ids:
            self.pool.probe(i, False, detail)

    def up(self, *ids: str, detail: str = "status 200") -> None:
        for i in ids:
            self.pool.probe(i, True, detail)

    def picks(self, n: int, exclude=None, seed: int = 0) -> Counter:
        rng = random.Random(seed)
        out = Counter()
        for i in range(n):
            p = self.pool.pick(f"k{i}", exclude or {}, rng)
            assert isinstance(p, Pick), p
            out[p.endpoint.id] += 1
        return out

    def candidates(self) -> set[str]:
        return {e.id for e in self.pool.view().candidates}


ACTIVE_1_1 = {"health_check": {"healthy_threshold": 1, "unhealthy_threshold": 1}}


# --- priority failover ---------------------------------------------------------------------------------------------

def zones(**cfg) -> World:
    return World(["a", "b", "c", "d", ("x", {"priority": 1}), ("y", {"priority": 1})], **ACTIVE_1_1, **cfg)


@pytest.mark.parametrize(("down", "priority", "candidates", "excluded"), [
    ((), 0, "abcd", {"x": "inactive_priority", "y": "inactive_priority"}),
    (("a",), 0, "bcd", {"a": "unhealthy", "x": "inactive_priority", "y": "inactive_priority"}),  # 75 % ≥ 70 %
    (("a", "b"), 1, "xy", {"a": "unhealthy", "b": "unhealthy", "c": "inactive_priority", "d": "inactive_priority"}),
    (("a", "b", "c", "d"), 1, "xy", dict.fromkeys("abcd", "unhealthy")),
    (("a", "x"), 0, "bcd", {"a": "unhealthy", "x": "unhealthy", "y": "inactive_priority"}),
])
def test_failover_view(down, priority, candidates, excluded):
    w = zones()
    w.down(*down)
    v = w.pool.view()
    assert (v.priority, w.candidates(), v.excluded, v.panic) == (priority, set(candidates), excluded, False)
    assert set(w.picks(60)) == set(candidates)


def test_failover_moves_traffic_and_back_with_events():
    w = zones()
    assert w.events.take() == []
    w.down("a")
    assert w.events.of(Event.DECISION_FAILOVER) == []  # 75 % usable: level 0 keeps the traffic
    w.events.clear()
    w.down("b")  # 50 % < 70 %
    [fo] = w.events.of(Event.DECISION_FAILOVER)
    episode = fo.attrs.pop(Attr.EVENT_ID)
    assert fo.attrs == {Attr.POOL: "p", Attr.FAILOVER_FROM: "0", Attr.FAILOVER_TO: "1",
                        Attr.DECISION_REASON: Reason.FAILOVER_PRIORITY_DEGRADED.value,
                        Attr.EVENT_TRACE_IDS: []}  # probes moved it: no request caused it
    assert fo.severity == "WARN" and w.pool.failover_event == episode  # requests served now name it
    assert set(w.picks(40)) == {"x", "y"}
    w.events.clear()
    w.down("c")  # still on level 1: no new failover event
    assert w.events.of(Event.DECISION_FAILOVER) == []
    w.up("c")
    w.up("b")  # back to 75 %
    [back] = w.events.of(Event.DECISION_FAILOVER)
    assert back.attrs == {Attr.POOL: "p", Attr.FAILOVER_FROM: "1", Attr.FAILOVER_TO: "0",
                          Attr.DECISION_REASON: Reason.FAILOVER_PRIORITY_RECOVERED.value,
                          Attr.EVENT_ID: episode, Attr.EVENT_TRACE_IDS: []}  # one id names the whole episode
    assert back.severity == "INFO" and w.pool.failover_event is None
    assert w.picks(30) == {"b": 10, "c": 10, "d": 10}


def test_failover_skips_a_degraded_level():
    w = World(["a", "b", ("m", {"priority": 1}), ("n", {"priority": 1}), ("z", {"priority": 2})], **ACTIVE_1_1)
    w.down("m")  # level 1 at 50 %
    w.events.clear()
    w.down("a")  # level 0 at 50 %: level 2 is the first healthy enough
    [fo] = w.events.of(Event.DECISION_FAILOVER)
    assert (fo.attrs[Attr.FAILOVER_FROM], fo.attrs[Attr.FAILOVER_TO]) == ("0", "2")
    assert w.candidates() == {"z"}


def test_nobody_healthy_enough_uses_the_best_level():
    w = World(["a", "b", "c", ("x", {"priority": 1}), ("y", {"priority": 1})], **ACTIVE_1_1,
              failover={"min_healthy_percent": 70, "panic_threshold_percent": 0})
    w.down("a", "x", "y")  # level 0: 66 %, level 1: 0 %
    v = w.pool.view()
    assert (v.priority, w.candidates(), v.panic) == (0, {"b", "c"}, False)


def test_min_healthy_percent_is_configurable():
    w = zones(failover={"min_healthy_percent": 50, "panic_threshold_percent": 0})
    w.down("a", "b")  # 50 % is enough now
    assert (w.pool.view().priority, w.candidates()) == (0, {"c", "d"})
    w.down("c")
    assert (w.pool.view().priority, w.candidates()) == (1, {"x", "y"})


# --- panic mode ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("down", "panic", "candidates"), [
    ((), False, "abcd"),
    (("a",), False, "bcd"),
    (("a", "b"), False, "cd"),  # 50 % is not below 50 %
    (("a", "b", "c"), True, "abcd"),  # 25 %: spread over all rather than crush d
    (("a", "b", "c", "d"), True, "abcd"),
])
def test_panic_mode_view(down, panic, candidates):
    w = World(["a", "b", "c", "d"], **ACTIVE_1_1)
    w.down(*down)
    v = w.pool.view()
    assert (v.panic, w.candidates()) == (panic, set(candidates))
    counts = w.picks(400)
    assert set(counts) == set(candidates)
    if panic:
        assert v.excluded == {}
        assert w.pool.pick(None, {}, random.Random(0)).excluded == ()


def test_panic_events_on_and_off():
    w = World(["a", "b", "c", "d"], **ACTIVE_1_1)
    w.down("a", "b")
    assert w.events.of(Event.DECISION_FAILOVER) == []
    w.down("c")
    [on] = w.events.of(Event.DECISION_FAILOVER)
    episode = on.attrs.pop(Attr.EVENT_ID)
    assert on.attrs == {Attr.POOL: "p", Attr.LB_PANIC: True, Attr.DECISION_REASON: Reason.FAILOVER_PANIC.value,
                        Attr.EVENT_TRACE_IDS: []}
    assert w.pool.panic is True
    w.events.clear()
    w.down("d")  # still panicking: no second event
    assert w.events.of(Event.DECISION_FAILOVER) == []
    w.up("a", "b")
    [off] = w.events.of(Event.DECISION_FAILOVER)
    assert off.attrs == {Attr.POOL: "p", Attr.LB_PANIC: False, Attr.DECISION_REASON: Reason.FAILOVER_PANIC.value,
                         Attr.EVENT_ID: episode, Attr.EVENT_TRACE_IDS: []}
    assert (w.pool.view().panic, w.candidates()) == (False, {"a", "b"})


def test_panic_excludes_draining_instances():
    w = World(["a", "b", "c", "d", "e"], **ACTIVE_1_1)
    w.pool.set_draining("e", True)
    w.down("a", "b", "c")  # 1 of 4 non-draining usable
    v = w.pool.view()
    assert (v.panic, w.candidates(), v.excluded) == (True, {"a", "b", "c", "d"}, {"e": "draining"})
    pick = w.pool.pick(None, {}, random.Random(0))
    assert pick.excluded == (("e", "draining"),)


def test_panic_threshold_zero_disables_panic():
    w = World(["a", "b", "c", "d"], **ACTIVE_1_1, failover={"panic_threshold_percent": 0})
    w.down("a", "b", "c")
    assert (w.pool.view().panic, w.candidates()) == (False, {"d"})
    w.down("d")
    assert isinstance(w.pool.pick(None, {}, random.Random(0)), NoHealthyEndpoint)


def test_panic_on_the_failover_level_when_every_level_is_degraded():
    w = World(["a", "b", "c", "d", ("x", {"priority": 1}), ("y", {"priority": 1})], **ACTIVE_1_1)
    w.down("a", "b", "c", "x", "y")  # level 0: 25 %, level 1: 0 %: level 0 is the best, and it panics
    v = w.pool.view()
    assert (v.priority, v.panic, w.candidates()) == (0, True, {"a", "b", "c", "d"})
    assert v.excluded == {"x": "unhealthy", "y": "unhealthy"}


# --- draining ------------------------------------------------------------------------------------------------------

def test_draining_is_excluded_and_comes_back():
    w = World(["a", "b", "c"], algorithm="round_robin")
    assert w.pool.set_draining("b", True)
    [ev] = w.events.take()
    assert (ev.event, ev.severity) == (Event.HEALTH_TRANSITION, "WARN")
    assert {k: ev.attrs[k] for k in (Attr.INSTANCE, Attr.HEALTH_FROM, Attr.HEALTH_TO, Attr.HEALTH_CHECK)} == {
        Attr.INSTANCE: "b", Attr.HEALTH_FROM: "healthy", Attr.HEALTH_TO: "draining", Attr.HEALTH_CHECK: "admin"}
    assert w.pool.view().excluded == {"b": "draining"}
    assert w.pool.states() == {"a": "healthy", "b": "draining", "c": "healthy"}
    pick = w.pool.pick(None, {}, random.Random(0))
    assert (pick.candidates, pick.excluded) == (2, (("b", "draining"),))
    assert w.picks(20) == {"a": 10, "c": 10}
    assert w.pool.set_draining("b", True)  # already draining: nothing to report
    assert w.events.take() == []
    assert w.pool.set_draining("b", False)
    [ev] = w.events.take()
    assert (ev.attrs[Attr.HEALTH_FROM], ev.attrs[Attr.HEALTH_TO], ev.severity) == ("draining", "healthy", "INFO")
    assert w.picks(30) == {"a": 10, "b": 10, "c": 10}
    assert w.pool.set_draining("nope", True) is False


def test_a_fully_draining_pool_has_no_candidates():
    w = World(["a", "b"])
    w.pool.set_draining("a", True)
    w.pool.set_draining("b", True)
    v = w.pool.view()
    assert (v.candidates, v.panic, v.usable, v.total) == ((), False, 0, 0)
    result = w.pool.pick(None, {}, random.Random(0))
    assert isinstance(result, NoHealthyEndpoint)
    assert result.excluded == (("a", "draining"), ("b", "draining"))


def test_draining_a_whole_level_fails_over():
    w = World(["a", "b", ("x", {"priority": 1})])
    w.pool.set_draining("a", True)
    assert w.events.of(Event.DECISION_FAILOVER) == []  # b alone is 100 % of the non-draining level
    w.pool.set_draining("b", True)
    [fo] = w.events.of(Event.DECISION_FAILOVER)
    assert (fo.attrs[Attr.FAILOVER_FROM], fo.attrs[Attr.FAILOVER_TO]) == ("0", "1")
    assert w.candidates() == {"x"}


def test_draining_in_flight_requests_are_not_touched():
    w = World(["a", "b"])
    a = w.pool.endpoint("a")
    w.pool.acquire(a)
    w.pool.set_draining("a", True)
    assert w.pool.in_flight == {"a": 1, "b": 0}
    w.pool.release(a)
    assert w.pool.in_flight == {"a": 0, "b": 0}


def test_configured_draining_instance_starts_excluded():
    w = World(["a", ("b", {"draining": True})])
    assert w.pool.view().excluded == {"b": "draining"}
    assert w.picks(10) == {"a": 10}


def test_undraining_a_configured_draining_instance_reports_the_transition():
    w = World(["a", ("b", {"draining": True})])
    w.events.clear()
    w.pool.set_draining("b", False)
    [ev] = w.events.of(Event.HEALTH_TRANSITION)
    assert (ev.attrs[Attr.HEALTH_FROM], ev.attrs[Attr.HEALTH_TO]) == ("draining", "healthy")


# --- active health transitions -------------------------------------------------------------------------------------

def test_probe_transitions_follow_the_thresholds():
    w = World(["a", ("b", {"zone": "z2"})],
              health_check={"healthy_threshold": 2, "unhealthy_threshold": 3})
    w.down("b", detail="connect refused")
    w.down("b", detail="timeout")
    assert w.events.take() == []  # two failures of three: no transition yet
    assert w.candidates() == {"a", "b"}
    w.down("b", detail="status 503")
    [ev] = w.events.take()
    assert ev.event is Event.HEALTH_TRANSITION and ev.severity == "WARN"
    assert len(ev.attrs.pop(Attr.EVENT_ID)) == 16  # every event has an id
    assert ev.attrs == {Attr.POOL: "p", Attr.INSTANCE: "b", Attr.ZONE: "z2", Attr.HEALTH_FROM: "healthy",
                        Attr.HEALTH_TO: "unhealthy", Attr.HEALTH_CHECK: "active", Attr.PROBE_RESULT: "status 503"}
    assert (w.candidates(), w.pool.view().excluded) == ({"a"}, {"b": "unhealthy"})
    w.down("b")  # more failures: no more events
    w.up("b", detail="status 200")
    assert w.events.take() == []
    w.up("b", detail="status 204")
    [ev] = w.events.take()
    assert (ev.attrs[Attr.HEALTH_FROM], ev.attrs[Attr.HEALTH_TO], ev.attrs[Attr.PROBE_RESULT], ev.severity) == (
        "unhealthy", "healthy", "status 204", "INFO")
    assert w.candidates() == {"a", "b"}


def test_flapping_probes_never_transition():
    w = World(["a", "b"], health_check={"healthy_threshold": 2, "unhealthy_threshold": 2})
    for _ in range(20):
        w.down("a")
        w.up("a")
    assert w.events == []
    assert w.pool.states() == {"a": "healthy", "b": "healthy"}


def test_probes_without_health_checks_change_nothing():
    w = World(["a", "b"])
    for _ in range(10):
        w.down("a")
    assert (w.events, w.candidates()) == ([], {"a", "b"})


# --- outlier ejection ----------------------------------------------------------------------------------------------

OUTLIER = {"outlier_detection": {"consecutive_5xx": None, "consecutive_gateway_errors": 3, "base_ejection_s": 30,
                                 "max_ejection_s": 300, "max_ejection_percent": 50, "trace_ids_kept": 5}}


def fail(w: World, instance: str, n: int, prefix: str = "t", result=Result.GATEWAY_ERROR) -> None:
    for i in range(n):
        w.pool.observe(instance, result, f"{prefix}{i:031x}", f"{i:016x}")


def test_outlier_ejection_event_carries_the_failing_trace_ids():
    w = World(["a", "b", "c", "d"], **OUTLIER)
    w.pool.observe("a", Result.GATEWAY_ERROR, "01" * 16, "aa" * 8)
    w.pool.observe("a", Result.GATEWAY_ERROR, "02" * 16, "bb" * 8)
    assert w.events == []
    w.pool.observe("a", Result.GATEWAY_ERROR, "03" * 16, "cc" * 8)
    ej, tr = w.events.take()
    assert ej.event is Event.OUTLIER_EJECTION and ej.severity == "WARN"
    ejection = ej.attrs.pop(Attr.EVENT_ID)
    assert ej.attrs == {Attr.POOL: "p", Attr.INSTANCE: "a", Attr.DECISION_REASON: GW5, Attr.EJECTION_COUNT: 1,
                        Attr.EJECTION_DURATION_S: 30.0, Attr.EJECTION_TRACE_IDS: ["01" * 16, "02" * 16, "03" * 16],
                        Attr.HEALTH_CHECK: "passive", Attr.EVENT_TRACE_IDS: ["01" * 16, "02" * 16, "03" * 16]}
    assert w.pool.ejection_events == {"a": ejection}  # requests steered around it name the ejection
    assert (ej.trace_id, ej.span_id) == ("03" * 16, "cc" * 8)  # the last failing request
    assert tr.event is Event.HEALTH_TRANSITION
    assert (tr.attrs[Attr.HEALTH_FROM], tr.attrs[Attr.HEALTH_TO], tr.attrs[Attr.HEALTH_CHECK],
            tr.attrs[Attr.PROBE_RESULT]) == ("healthy", "ejected", "passive", GW5)
    assert w.pool.view().excluded == {"a": "ejected"}
    assert set(w.picks(30)) == {"b", "c", "d"}


def test_success_between_failures_prevents_ejection():
    w = World(["a", "b"], **OUTLIER)
    for _ in range(5):
        fail(w, "a", 2)
        w.pool.observe("a", Result.SUCCESS, None, None)
    assert w.events == [] and w.candidates() == {"a", "b"}


def test_ejection_expires_on_tick_with_the_fake_clock():
    w = World(["a", "b", "c", "d"], **OUTLIER)
    w.at(100.0)
    fail(w, "a", 3)
    w.events.clear()
    for now in (100.0, 110.0, 129.999):
        w.at(now)
        w.pool.tick()
        assert w.events == [] and "a" not in w.candidates()
    w.at(130.0)
    w.pool.tick()
    back, tr = w.events.take()
    assert back.event is Event.OUTLIER_EJECTION
    assert back.attrs.pop(Attr.EVENT_ID) != ""  # the ejection's id: its start and its end
    assert back.attrs == {Attr.POOL: "p", Attr.INSTANCE: "a",
                          Attr.DECISION_REASON: Reason.OUTLIER_EJECTION_EXPIRED.value, Attr.EJECTION_COUNT: 1,
                          Attr.HEALTH_CHECK: "passive"}
    assert w.pool.ejection_events == {}
    assert (tr.attrs[Attr.HEALTH_FROM], tr.attrs[Attr.HEALTH_TO]) == ("ejected", "healthy")
    assert w.candidates() == {"a", "b", "c", "d"}
    w.pool.tick()
    assert w.events == []  # returned once


def test_repeated_ejections_last_longer():
    w = World(["a", "b", "c", "d"], **OUTLIER)
    now, durations = 0.0, []
    for round_ in range(4):
        w.at(now)
        fail(w, "a", 3, prefix=f"{round_}")
        ej = w.events.of(Event.OUTLIER_EJECTION)[-1]
        durations.append((ej.attrs[Attr.EJECTION_COUNT], ej.attrs[Attr.EJECTION_DURATION_S]))
        now += ej.attrs[Attr.EJECTION_DURATION_S]
        w.at(now)
        w.pool.tick()
        now += 5.0
    assert durations == [(1, 30.0), (2, 60.0), (3, 90.0), (4, 120.0)]


@pytest.mark.parametrize(("instances", "percent", "ejectable"), [
    (4, 50, 2),
    (3, 50, 1),
    (5, 40, 2),
    (4, 10, 1),  # at least one may always be ejected
    (4, 100, 4),
])
def test_max_ejection_percent_caps_ejections(instances, percent, ejectable):
    ids = [f"e{i}" for i in range(instances)]
    w = World(ids, outlier_detection={**OUTLIER["outlier_detection"], "max_ejection_percent": percent})
    for i in ids:
        fail(w, i, 3, prefix=i[1])
    ejected = [e.attrs[Attr.INSTANCE] for e in w.events.of(Event.OUTLIER_EJECTION)
               if Attr.EJECTION_DURATION_S in e.attrs]
    refused = [e for e in w.events.of(Event.OUTLIER_EJECTION) if Attr.EJECTION_DURATION_S not in e.attrs]
    assert ejected == ids[:ejectable]
    assert [e.attrs[Attr.INSTANCE] for e in refused] == ids[ejectable:]
    for e in refused:
        assert e.attrs[Attr.DECISION_REASON] == Reason.OUTLIER_MAX_EJECTION_PERCENT.value
        assert e.severity == "WARN"
        assert e.attrs[Attr.EJECTION_TRACE_IDS] == [f"{e.attrs[Attr.INSTANCE][1]}{i:031x}" for i in range(3)]
        assert e.trace_id == e.attrs[Attr.EJECTION_TRACE_IDS][-1]
    assert w.pool.states() == {i: ("ejected" if i in ejected else "healthy") for i in ids}


def test_max_ejection_percent_zero_never_ejects():
    w = World(["a", "b"], outlier_detection={**OUTLIER["outlier_detection"], "max_ejection_percent": 0})
    fail(w, "a", 6)
    refused = w.events.of(Event.OUTLIER_EJECTION)
    assert len(refused) == 2  # one per streak reaching the threshold
    assert all(e.attrs[Attr.DECISION_REASON] == Reason.OUTLIER_MAX_EJECTION_PERCENT.value for e in refused)
    assert w.candidates() == {"a", "b"}


def test_refused_ejection_happens_once_there_is_room():
    w = World(["a", "b", "c"], **OUTLIER)  # one of three may be ejected
    w.at(0.0)
    fail(w, "a", 3)
    fail(w, "b", 3)
    assert w.pool.states() == {"a": "ejected", "b": "healthy", "c": "healthy"}
    w.at(30.0)
    w.pool.tick()
    fail(w, "b", 3)
    assert w.pool.states() == {"a": "healthy", "b": "ejected", "c": "healthy"}


def test_refused_ejection_does_not_leak_trace_ids_into_the_next_event():
    w = World(["a", "b", "c"], **OUTLIER)
    fail(w, "a", 3, prefix="a")
    fail(w, "c", 3, prefix="c")
    w.events.clear()
    for i in range(3, 6):
        w.pool.observe("c", Result.GATEWAY_ERROR, f"c{i:031x}", f"{i:016x}")
    [refused] = w.events.of(Event.OUTLIER_EJECTION)
    assert refused.attrs[Attr.EJECTION_TRACE_IDS] == [f"c{i:031x}" for i in range(3, 6)]


def test_outlier_ejection_can_trigger_failover():
    w = World(["a", "b", ("x", {"priority": 1})],
              outlier_detection={**OUTLIER["outlier_detection"], "max_ejection_percent": 100})
    fail(w, "a", 3)
    [fo] = w.events.of(Event.DECISION_FAILOVER)
    assert (fo.attrs[Attr.FAILOVER_FROM], fo.attrs[Attr.FAILOVER_TO]) == ("0", "1")
    assert w.candidates() == {"x"}


def test_observe_without_outlier_detection_or_unknown_instance_is_ignored():
    w = World(["a", "b"])
    fail(w, "a", 50)
    w2 = World(["a", "b"], **OUTLIER)
    fail(w2, "nope", 50)
    assert (w.events, w2.events, w.candidates(), w2.candidates()) == ([], [], {"a", "b"}, {"a", "b"})


# --- slow start ----------------------------------------------------------------------------------------------------

def slow(algorithm="weighted_round_robin", **ss) -> World:
    w = World(["a", "b"], algorithm=algorithm, **ACTIVE_1_1, slow_start={"window_s": 30, **ss})
    w.at(100.0)
    w.down("a")
    w.at(200.0)
    w.up("a")  # a usable again at t=200: its ramp starts
    return w


@pytest.mark.parametrize(("now", "ratio", "weights", "counts"), [
    (200.0, 0.10, {"a": 10, "b": 100}, {"a": 10, "b": 100}),  # min_weight_percent at once
    (201.0, 0.10, {"a": 10, "b": 100}, {"a": 10, "b": 100}),  # 1/30 is below the floor
    (215.0, 0.50, {"a": 50, "b": 100}, {"a": 100, "b": 200}),
    (222.5, 0.75, {"a": 75, "b": 100}, {"a": 75, "b": 100}),
    (230.0, 1.00, {"a": 1, "b": 1}, {"a": 100, "b": 100}),  # done: plain weights again
    (999.0, 1.00, {"a": 1, "b": 1}, {"a": 100, "b": 100}),
])
def test_slow_start_ramps_the_effective_weight(now, ratio, weights, counts):
    w = slow()
    w.at(now)
    w.pool.tick()
    assert w.pool.slow_start_ratio("a") == pytest.approx(ratio)
    assert w.pool.slow_start_ratio("b") == 1.0
    v = w.pool.view()
    assert {e.id: e.weight for e in v.candidates} == weights
    assert v.ramping is (ratio < 1.0)
    assert w.picks(sum(counts.values())) == counts  # smooth WRR: exact over whole periods


def test_slow_start_aggression_front_loads_the_ramp():
    w = slow(aggression=2.0)
    w.at(215.0)
    w.pool.tick()
    assert w.pool.slow_start_ratio("a") == pytest.approx(0.5 ** 0.5)
    assert {e.id: e.weight for e in w.pool.view().candidates} == {"a": 71, "b": 100}


def test_slow_start_min_weight_percent():
    w = slow(min_weight_percent=40)
    assert w.pool.slow_start_ratio("a") == pytest.approx(0.4)
    w.at(206.0)  # 20 % of the window: still the floor
    w.pool.tick()
    assert w.pool.slow_start_ratio("a") == pytest.approx(0.4)
    w.at(218.0)
    w.pool.tick()
    assert w.pool.slow_start_ratio("a") == pytest.approx(0.6)


def test_slow_start_weights_need_a_tick_to_advance():
    w = slow()
    w.at(215.0)
    assert {e.id: e.weight for e in w.pool.view().candidates} == {"a": 10, "b": 100}  # the view of t=200
    w.pool.tick()
    assert {e.id: e.weight for e in w.pool.view().candidates} == {"a": 50, "b": 100}


def test_slow_start_after_an_ejection_returns():
    w = World(["a", "b", "c", "d"], algorithm="weighted_round_robin", slow_start={"window_s": 10},
              **OUTLIER)
    w.at(0.5)
    fail(w, "a", 3)
    w.at(30.5)
    w.pool.tick()
    assert w.pool.slow_start_ratio("a") == pytest.approx(0.1)
    w.at(35.5)
    w.pool.tick()
    assert w.pool.slow_start_ratio("a") == pytest.approx(0.5)
    assert {e.id: e.weight for e in w.pool.view().candidates} == {"a": 50, "b": 100, "c": 100, "d": 100}


@pytest.mark.parametrize("algorithm", ["ring_hash", "maglev", "round_robin"])
def test_slow_start_where_weights_mean_nothing_is_a_config_error(algorithm):
    from pydantic import ValidationError

    extra = {"hash_key": {"source": "header", "name": "x-user"}} if algorithm in ("ring_hash", "maglev") else {}
    with pytest.raises(ValidationError, match="'slow_start' ramps weights"):
        World(["a", "b"], algorithm=algorithm, **extra, **ACTIVE_1_1, slow_start={"window_s": 30})


def test_no_slow_start_without_config_or_transition():
    w = World(["a", "b"], **ACTIVE_1_1)
    w.down("a")
    w.up("a")
    assert w.pool.slow_start_ratio("a") == 1.0
    w2 = World(["a", "b"], algorithm="weighted_round_robin", slow_start={"window_s": 30})
    assert w2.pool.slow_start_ratio("a") == 1.0  # configured healthy from the start: no ramp


# --- per-instance limits -------------------------------------------------------------------------------------------

LIMITS = {"max_connections_per_instance": 2, "max_pending_per_instance": 1}  # over limit at 3 in flight


def load(w: World, **in_flight: int) -> None:
    for name, n in in_flight.items():
        for _ in range(n):
            w.pool.acquire(w.pool.endpoint(name))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_over_limit_instance_is_excluded(algorithm):
    extra = {"hash_key": {"source": "header", "name": "x-user"}} if algorithm.value in ("ring_hash", "maglev") else {}
    w = World(["a", "b", "c"], algorithm=algorithm.value, **LIMITS, **extra)
    load(w, a=3, b=2)  # b: 2 connections busy, one may still wait
    rng = random.Random(1)
    listed = 0
    for i in range(60):
        pick = w.pool.pick(f"user-{i}", {}, rng)
        assert isinstance(pick, Pick)
        assert pick.endpoint.id in {"b", "c"}
        assert pick.excluded == (("a", "over_limit"),)  # every pick says so, whatever the algorithm
        listed += bool(pick.excluded)
    assert listed == 60


def test_every_pick_lists_the_instances_over_their_limit():
    w = World(["a", "b", "c"], algorithm="round_robin", **LIMITS)
    load(w, a=3)
    rng = random.Random(0)
    answers = [w.pool.pick(None, {}, rng) for _ in range(4)]
    assert [(p.candidates, p.excluded) for p in answers] == [(2, (("a", "over_limit"),))] * 4


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_all_over_limit_is_no_healthy_endpoint(algorithm):
    extra = {"hash_key": {"source": "header", "name": "x-user"}} if algorithm.value in ("ring_hash", "maglev") else {}
    w = World(["a", "b", "c"], algorithm=algorithm.value, **LIMITS, **extra)
    load(w, a=3, b=3, c=4)
    result = w.pool.pick("user-1", {}, random.Random(0))
    assert isinstance(result, NoHealthyEndpoint)
    assert result.excluded == (("a", "over_limit"), ("b", "over_limit"), ("c", "over_limit"))
    assert result.algorithm is algorithm


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_many_over_limit_finds_the_one_left(algorithm):
    extra = {"hash_key": {"source": "header", "name": "x-user"}} if algorithm.value in ("ring_hash", "maglev") else {}
    ids = [f"e{i:02d}" for i in range(20)]
    w = World(ids, algorithm=algorithm.value, **LIMITS, **extra)
    load(w, **{i: 3 for i in ids if i != "e13"})
    rng = random.Random(2)
    for n in range(10):
        pick = w.pool.pick(f"user-{n}", {}, rng)
        assert pick.endpoint.id == "e13"
        # the full ones it landed on (today: not necessarily all of them), in endpoint order, all over limit
        assert [i for i, _ in pick.excluded] == sorted(i for i, _ in pick.excluded)
        assert {reason for _, reason in pick.excluded} <= {"over_limit"}
        assert "e13" not in dict(pick.excluded)


def test_over_limit_together_with_state_and_caller_exclusions():
    w = World(["a", "b", "c", "d"], **LIMITS, **ACTIVE_1_1)
    w.pool.set_draining("b", True)
    w.down("d")
    load(w, a=3)
    result = w.pool.pick(None, {"c": "tried"}, random.Random(0))
    assert isinstance(result, NoHealthyEndpoint)
    assert result.excluded == (("a", "over_limit"), ("b", "draining"), ("c", "tried"), ("d", "unhealthy"))


def test_released_instance_is_under_its_limit_again():
    w = World(["a", "b"], **LIMITS)
    load(w, a=3, b=3)
    assert isinstance(w.pool.pick(None, {}, random.Random(0)), NoHealthyEndpoint)
    w.pool.release(w.pool.endpoint("b"))
    assert w.pool.pick(None, {}, random.Random(0)).endpoint.id == "b"


# --- affinity helpers ----------------------------------------------------------------------------------------------

def test_affinity_value_is_opaque_stable_and_reversible():
    w = World(["alpha", "beta", ("gamma", {"priority": 1})])
    values = {i: w.pool.affinity_value(i) for i in ("alpha", "beta", "gamma")}
    assert len(set(values.values())) == 3
    for i, v in values.items():
        assert i not in v and "10.0.0" not in v
        assert w.pool.affinity_value(i) == v  # stable
        assert w.pool.affinity_target(v) == i
    assert World(["alpha"]).pool.affinity_value("alpha") == values["alpha"]  # same pool name and id: same value
    cfg = PoolConfig.model_validate({"name": "q", "instances": [{"host": "10.0.0.1", "port": 9000, "id": "alpha"}]})
    assert Pool(cfg).affinity_value("alpha") != values["alpha"]  # another pool, another value


@pytest.mark.parametrize("value", [None, "", "a", "0000000000000000", "not-a-cookie"])
def test_affinity_target_of_unknown_values(value):
    assert World(["a", "b"]).pool.affinity_target(value) is None


def test_usable_for_affinity():
    w = World(["a", "b", "c", "d", "e", "f", ("x", {"priority": 1})], **ACTIVE_1_1, **LIMITS)
    w.pool.set_draining("b", True)
    w.down("c")
    load(w, d=3)
    assert w.pool.usable("a", {}) == w.pool.endpoint("a")
    assert w.pool.usable("a", {"a": "tried"}) is None
    assert w.pool.usable("b", {}) is None  # draining
    assert w.pool.usable("c", {}) is None  # unhealthy
    assert w.pool.usable("d", {}) is None  # over limit
    assert w.pool.usable("x", {}) is None  # healthy, but a lower priority level
    assert w.pool.usable("nope", {}) is None
    w.pool.release(w.pool.endpoint("d"))
    assert w.pool.usable("d", {}) == w.pool.endpoint("d")


# --- events and the requests they touched, linked both ways ----------------------------------------------------------

def test_a_failover_caused_by_an_ejection_names_the_failing_requests_and_the_picks_name_it():
    from gatewatch.balancer.context import PickContext

    w = World(["a", "b", ("x", {"priority": 1})], outlier_detection={
        "consecutive_gateway_errors": 2, "max_ejection_percent": 100}, failover={"min_healthy_percent": 100,
                                                                                  "panic_threshold_percent": 0})
    rng = random.Random(1)
    before = PickContext(w.pool, None, None).pick(rng)
    assert (before.failover, before.event_ids) == ("none", ())
    w.pool.observe("a", Result.GATEWAY_ERROR, "01" * 16, "aa" * 8)
    w.pool.observe("a", Result.GATEWAY_ERROR, "02" * 16, "bb" * 8)  # ejected: level 0 at 50 % < 100 %
    ejection = w.events.of(Event.OUTLIER_EJECTION)[0].attrs[Attr.EVENT_ID]
    [fo] = w.events.of(Event.DECISION_FAILOVER)
    assert fo.attrs[Attr.EVENT_TRACE_IDS] == ["01" * 16, "02" * 16]  # the requests behind the ejection
    during = PickContext(w.pool, None, None).pick(rng)
    assert (during.endpoint.id, during.failover) == ("x", "priority")
    assert during.event_ids == (fo.attrs[Attr.EVENT_ID], ejection)  # the failover in force, the ejection skipped


def test_an_active_check_that_sees_an_ejected_instance_recover_ends_the_ejection():
    w = World(["a", "b", "c", "d"], health_check={"healthy_threshold": 2, "unhealthy_threshold": 1},
              outlier_detection={"consecutive_gateway_errors": 1, "base_ejection_s": 300})
    w.pool.observe("a", Result.GATEWAY_ERROR, "01" * 16, "aa" * 8)
    w.down("a")  # the active check sees it down too
    w.events.clear()
    w.up("a")
    assert w.events == [] and "a" not in w.candidates()  # one pass is not a recovery (rise 2)
    w.up("a")
    back, tr = w.events.take()
    assert (back.event, back.attrs[Attr.DECISION_REASON]) == (Event.OUTLIER_EJECTION,
                                                              Reason.OUTLIER_ACTIVE_RECOVERY.value)
    assert (tr.attrs[Attr.HEALTH_TO], "a" in w.candidates()) == ("healthy", True)  # not after 300 s


def test_without_uneject_on_recovery_an_ejection_runs_its_course():
    w = World(["a", "b", "c", "d"], health_check={"healthy_threshold": 1, "unhealthy_threshold": 1},
              outlier_detection={"consecutive_gateway_errors": 1, "base_ejection_s": 300,
                                 "uneject_on_active_recovery": False})
    w.pool.observe("a", Result.GATEWAY_ERROR, "01" * 16, "aa" * 8)
    w.down("a")
    w.up("a")
    assert "a" not in w.candidates()
    assert w.pool.instances["a"].state(w.t[0]) == "ejected"
