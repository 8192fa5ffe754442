"""The pure health state machines as tables: active checks' rise/fall (`ProbeCounter`), passive outlier detection
(`OutlierTracker`) driven by results and a fake clock, and `classify`."""

from __future__ import annotations

import pytest

from gatewatch.balancer.config import OutlierConfig
from gatewatch.balancer.health import Ejection, OutlierTracker, ProbeCounter, Result, classify

OK, BAD = True, False
S, E5, GW = Result.SUCCESS, Result.SERVER_ERROR, Result.GATEWAY_ERROR


# --- ProbeCounter: rise / fall ------------------------------------------------------------------------------------

def trace(counter: ProbeCounter, probes: str) -> tuple[str, str]:
    """Feed probes ('+' pass, '-' fail); return the verdict after each ('H'/'U') and where it flipped ('^')."""
    verdicts, flips = [], []
    for p in probes:
        flipped = counter.observe(p == "+")
        verdicts.append("H" if counter.healthy else "U")
        flips.append("^" if flipped else ".")
    return "".join(verdicts), "".join(flips)


@pytest.mark.parametrize(("rise", "fall", "probes", "verdicts", "flips"), [
    # starts healthy; `fall` consecutive failures flip it once
    (2, 3, "---", "HHU", "..^"),
    (2, 3, "-----", "HHUUU", "..^.."),
    (2, 3, "--+---", "HHHHHU", ".....^"),  # a pass resets the failure count
    # recovery needs `rise` consecutive passes
    (2, 3, "---++", "HHUUH", "..^.^"),
    (2, 3, "---+-++", "HHUUUUH", "..^...^"),  # a failure resets the pass count
    (3, 1, "-+++", "UUUH", "^..^"),
    # thresholds of 1: every change of mind flips
    (1, 1, "-+-+", "UHUH", "^^^^"),
    (1, 1, "++--++", "HHUUHH", "..^.^."),
    # flapping never flips while both thresholds are above 1
    (2, 2, "-+-+-+-+-+-+-+-+", "H" * 16, "." * 16),
    (2, 3, "--+--+--+--+", "H" * 12, "." * 12),
    (3, 2, "---+-+-+-+-+", "HUUUUUUUUUUU", ".^.........."),  # once down, flapping keeps it down
    (3, 2, "--++-++-++-+++", "HUUUUUUUUUUUUH", ".^...........^"),
    # passes while healthy, failures while unhealthy change nothing
    (2, 2, "++++++", "HHHHHH", "......"),
    (2, 2, "--------", "HUUUUUUU", ".^......"),
])
def test_probe_counter_table(rise, fall, probes, verdicts, flips):
    assert trace(ProbeCounter(healthy_threshold=rise, unhealthy_threshold=fall), probes) == (verdicts, flips)


@pytest.mark.parametrize("rise", [2, 3, 5])
@pytest.mark.parametrize("fall", [2, 3, 5])
def test_probe_counter_flapping_never_flips_either_way(rise, fall):
    healthy = ProbeCounter(rise, fall)
    for flapping in ("-+" * 50, ("-" * (fall - 1) + "+") * 20):  # failure runs one short of `fall`
        assert trace(healthy, flapping) == ("H" * len(flapping), "." * len(flapping))
    down = ProbeCounter(rise, fall)
    assert trace(down, "-" * fall)[0].endswith("U")
    for flapping in ("+-" * 50, ("+" * (rise - 1) + "-") * 20):  # pass runs one short of `rise`
        assert trace(down, flapping) == ("U" * len(flapping), "." * len(flapping))
    assert trace(down, "+" * rise) == ("U" * (rise - 1) + "H", "." * (rise - 1) + "^")  # and it recovers


# --- OutlierTracker ------------------------------------------------------------------------------------------------

def tracker(**kw) -> OutlierTracker:
    return OutlierTracker(OutlierConfig(**kw))


def feed(t: OutlierTracker, results) -> list[str | None]:
    return [t.observe(r, f"t{n}", f"s{n}") for n, r in enumerate(results)]


G5, GGW = "outlier.consecutive_5xx", "outlier.consecutive_gateway_errors"


@pytest.mark.parametrize(("cfg", "results", "reasons"), [
    # consecutive 5xx (gateway errors count as 5xx too)
    ({"consecutive_5xx": 3, "consecutive_gateway_errors": None}, [E5, E5, E5], [None, None, G5]),
    ({"consecutive_5xx": 3, "consecutive_gateway_errors": None}, [E5, S, E5, E5], [None, None, None, None]),
    ({"consecutive_5xx": 3, "consecutive_gateway_errors": None}, [GW, E5, GW], [None, None, G5]),
    ({"consecutive_5xx": 3, "consecutive_gateway_errors": None}, [E5, E5, S, E5, E5, E5],
     [None, None, None, None, None, G5]),
    # consecutive gateway errors: a plain 5xx breaks the streak
    ({"consecutive_5xx": None, "consecutive_gateway_errors": 2}, [GW, GW], [None, GGW]),
    ({"consecutive_5xx": None, "consecutive_gateway_errors": 2}, [GW, E5, GW], [None, None, None]),
    ({"consecutive_5xx": None, "consecutive_gateway_errors": 2}, [GW, S, GW], [None, None, None]),
    ({"consecutive_5xx": None, "consecutive_gateway_errors": 2}, [E5, E5, E5, E5], [None] * 4),
    # both armed: the gateway rule wins when both trip; 5xx wins when the gateway streak was broken
    ({"consecutive_5xx": 3, "consecutive_gateway_errors": 3}, [GW, GW, GW], [None, None, GGW]),
    ({"consecutive_5xx": 3, "consecutive_gateway_errors": 3}, [E5, GW, GW], [None, None, G5]),
    ({"consecutive_5xx": 5, "consecutive_gateway_errors": 2}, [E5, GW, GW], [None, None, GGW]),
    # neither armed: never
    # successes never eject
    ({"consecutive_5xx": 1, "consecutive_gateway_errors": 1}, [S] * 5, [None] * 5),
])
def test_outlier_thresholds(cfg, results, reasons):
    assert feed(tracker(**cfg), results) == reasons


def test_outlier_success_resets_both_counts():
    t = tracker(consecutive_5xx=5, consecutive_gateway_errors=3)
    feed(t, [GW, GW, E5, GW])
    assert (t.consecutive_5xx, t.consecutive_gateway) == (4, 1)
    t.observe(S, "tok", "sok")
    assert (t.consecutive_5xx, t.consecutive_gateway) == (0, 0)


@pytest.mark.parametrize(("base", "cap", "durations"), [
    (30.0, 300.0, [30, 60, 90, 120, 150, 180, 210, 240, 270, 300, 300, 300]),
    (10.0, 25.0, [10, 20, 25, 25]),
    (7.5, 1000.0, [7.5, 15, 22.5]),
])
def test_ejection_duration_grows_base_times_n_capped(base, cap, durations):
    t = tracker(base_ejection_s=base, max_ejection_s=cap)
    now = 1000.0
    got = []
    for n, want in enumerate(durations, start=1):
        ej = t.eject(GGW, now)
        got.append(ej.duration_s)
        assert ej.count == n
        assert t.ejected(now) and t.ejected(now + ej.duration_s - 0.001) and not t.ejected(now + ej.duration_s)
        assert t.expire(now + ej.duration_s)
        now += ej.duration_s + 1.0  # back, in good standing for 1 s only (far below max_ejection_s)
    assert got == durations


def test_ejection_expiry_with_a_fake_clock():
    t = tracker(consecutive_gateway_errors=1, base_ejection_s=30.0)
    assert not t.ejected(0.0) and not t.expire(0.0)
    t.observe(GW, "a" * 32, "b" * 16)
    ej = t.eject(GGW, 100.0)
    assert ej.duration_s == 30.0
    table = [(100.0, True, False), (129.999, True, False), (130.0, False, True), (130.0, False, False),
             (500.0, False, False)]
    for now, ejected, returned in table:
        assert (t.ejected(now), t.expire(now)) == (ejected, returned), now
    assert t.returned_at == 130.0


def test_ejection_count_resets_after_max_ejection_s_in_good_standing():
    t = tracker(base_ejection_s=10.0, max_ejection_s=100.0)
    assert t.eject(G5, 0.5).count == 1  # until 10.5
    assert t.expire(10.5)
    assert t.eject(G5, 20.0).count == 2  # 9.5 s of good standing: still the second ejection, 20 s
    assert t.expire(40.0)
    assert t.eject(G5, 140.0).count == 3  # exactly max_ejection_s after the return: not yet reset
    assert t.expire(170.0)
    ej = t.eject(G5, 270.001)  # more than max_ejection_s after returning: a first offence again
    assert (ej.count, ej.duration_s) == (1, 10.0)


def test_ejection_resets_the_consecutive_counts():
    t = tracker(consecutive_5xx=2, consecutive_gateway_errors=2)
    assert feed(t, [GW, GW]) == [None, GGW]
    t.eject(GGW, 1.0)
    assert (t.consecutive_5xx, t.consecutive_gateway) == (0, 0)
    assert t.observe(GW, "x", "y") is None  # a new streak starts from zero


# --- the trace ids an ejection carries -----------------------------------------------------------------------------

def test_ejection_carries_the_failing_requests_trace_ids_oldest_first():
    t = tracker(consecutive_gateway_errors=3, trace_ids_kept=5)
    feed(t, [GW, GW])
    assert t.observe(GW, "t2", "s2") == GGW
    ej = t.eject(GGW, 10.0)
    assert ej == Ejection(GGW, 1, 30.0, ("t0", "t1", "t2"), "t2", "s2")


@pytest.mark.parametrize(("kept", "failures", "expected"), [
    (1, 5, ("t4",)),
    (3, 5, ("t2", "t3", "t4")),
    (5, 5, ("t0", "t1", "t2", "t3", "t4")),
    (5, 8, ("t3", "t4", "t5", "t6", "t7")),
    (50, 8, tuple(f"t{i}" for i in range(8))),
])
def test_ejection_trace_ids_are_bounded_by_trace_ids_kept(kept, failures, expected):
    t = tracker(consecutive_5xx=1000, consecutive_gateway_errors=1000, trace_ids_kept=kept)
    feed(t, [E5] * failures)
    ej = t.eject(G5, 1.0)
    assert ej.trace_ids == expected
    assert (ej.last_trace_id, ej.last_span_id) == (f"t{failures - 1}", f"s{failures - 1}")


def test_failures_without_a_trace_are_counted_but_not_listed():
    t = tracker(consecutive_gateway_errors=3)
    assert [t.observe(GW, None, None), t.observe(GW, "t1", "s1"), t.observe(GW, None, None)] == [None, None, GGW]
    ej = t.eject(GGW, 1.0)
    assert (ej.trace_ids, ej.last_trace_id, ej.last_span_id) == (("t1",), "t1", "s1")


def test_ejection_without_any_trace():
    t = tracker(consecutive_gateway_errors=1)
    t.observe(GW, None, None)
    ej = t.eject(GGW, 1.0)
    assert (ej.trace_ids, ej.last_trace_id, ej.last_span_id) == ((), None, None)


def test_an_ejection_starts_a_fresh_list_of_trace_ids():
    t = tracker(consecutive_gateway_errors=2)
    feed(t, [GW, GW])
    t.eject(GGW, 1.0)
    t.expire(31.0)
    assert [t.observe(GW, "n1", "m1"), t.observe(GW, "n2", "m2")] == [None, GGW]
    assert t.eject(GGW, 40.0).trace_ids == ("n1", "n2")


def test_ejection_lists_only_the_streak_that_caused_it():
    t = tracker(consecutive_gateway_errors=2)
    assert feed(t, [GW, S, GW, GW]) == [None, None, None, GGW]
    assert t.eject(GGW, 1.0).trace_ids == ("t2", "t3")


# --- classify ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("status", "gateway_failure", "expected"), [
    (200, False, S),
    (204, False, S),
    (404, False, S),  # the client's fault, not the instance's
    (429, False, S),
    (499, False, S),
    (500, False, E5),
    (501, False, E5),
    (502, False, GW),
    (503, False, GW),
    (504, False, GW),
    (505, False, E5),
    (599, False, E5),
    (None, True, GW),  # connect failure, reset, timeout: no status at all
    (200, True, GW),  # the failure flag wins over any status
    (500, True, GW),
    (None, False, S),
])
def test_classify(status, gateway_failure, expected):
    assert classify(status, gateway_failure) is expected


@pytest.mark.parametrize(("cfg", "message"), [
    ({"consecutive_5xx": None, "consecutive_gateway_errors": None}, "set consecutive_5xx or consecutive_gateway_errors"),
    ({"base_ejection_s": 50.0, "max_ejection_s": 20.0}, "base_ejection_s must not exceed max_ejection_s"),
])
def test_outlier_config_that_could_never_work_is_refused(cfg, message):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=message):
        OutlierConfig(**cfg)
