"""What a pick records depends on who will read it (recording.pick's `detail`): an unsampled request whose allowed
decisions are not logged keeps only what metrics and the admin journal read; every exported pick is whole."""

from __future__ import annotations

import pytest

from gatewatch.io.memory import Reply
from gatewatch.telemetry.names import Attr
from tests.proxy.test_engine_table import config
from tests.support.engine import EngineHarness, by_instance

FULL = {Attr.UPSTREAM, Attr.LB_ALGORITHM, Attr.LB_CANDIDATES, Attr.INSTANCE, Attr.ZONE, Attr.LB_WEIGHT,
        Attr.LB_IN_FLIGHT}


@pytest.mark.parametrize("now", [False, True], ids=["task", "sync"])
@pytest.mark.parametrize(("ratio", "logs", "whole"), [
    (1.0, "sampled", True),  # a sampled request: its spans carry the pick
    (0.0, "all", True),  # every allowed decision is logged
    (0.0, "sampled", False),  # neither: nothing reads the attributes
])
async def test_a_pick_is_recorded_whole_wherever_it_is_exported(ratio, logs, whole, now):
    cfg = {**config(), "telemetry": {"sampling": {"ratio": ratio}, "allow_decision_logs": logs}}
    h = EngineHarness(cfg, by_instance(p9001=Reply(200, b"ok"), p9002=Reply(200, b"ok")), now=now)
    try:
        down = await h.request("GET", "/api/x")
        assert down.status == 200
        if not whole:
            # not submitted (nothing of it is exported) and not in the journal (nothing notable): counted only
            assert not h.sink.records and not h.telemetry.journal.total
        else:
            (rec,) = h.records
            pick = next(d for d in rec.decisions if d.kind == "pick")
            assert FULL <= set(pick.attributes) and pick.attributes[Attr.INSTANCE] == "i0"
            assert rec.attempts[0].lb[Attr.LB_ALGORITHM] == "round_robin"
        assert h.sample("gatewatch_decisions_total", decision="pick", result="picked") == 1
    finally:
        await h.close()


async def test_a_failed_pick_is_logged_whole_even_unsampled():
    cfg = {**config(pool={"instances": [{"id": "i0", "host": "10.0.0.1", "port": 9001, "draining": True}]}),
           "telemetry": {"sampling": {"ratio": 0.0}}}
    h = EngineHarness(cfg, by_instance(), now=True)
    try:
        down = await h.request("GET", "/api/x")
        assert down.status == 503
        (rec,) = h.records
        pick = next(d for d in rec.decisions if d.kind == "pick")
        assert pick.result == "no_candidates" and {Attr.UPSTREAM, Attr.LB_ALGORITHM} <= set(pick.attributes)
    finally:
        await h.close()
