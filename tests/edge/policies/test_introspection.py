"""The RFC 7662 client (`introspect.Introspector`) against the HTTPS provider stand-in, on a fake clock: how long
answers are reused (never past `exp`), the LRU bound, single flight, the backoff while the endpoint fails, lone
timeouts, and that a token never reaches a log. Plus the backoff's arithmetic, table-driven."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest

from gatewatch.edge.policies.config import IntrospectionPolicyConfig
from gatewatch.edge.policies.introspect import Introspector
from gatewatch.edge.policies.provider import Backoff, Http, ProviderHealth
from gatewatch.io.tls import client_context
from gatewatch.telemetry.metrics import Metrics
from gatewatch.telemetry.names import AuthEndpoint
from tests.edge.policies.idp import CLIENT_ID, CLIENT_SECRET
from tests.edge.policies.idp import running_idp, client_session  # noqa: F401 — fixtures `idp`, `session`
from tests.edge.policies.support import FakeClock, NullTelemetry

NOW = 1_700_000_000.0  # the requests' wall clock


def client(idp, session, clock, **over) -> Introspector:
    cfg = IntrospectionPolicyConfig(**{
        "name": "opaque", "type": "introspection", "endpoint": idp.introspection_endpoint, "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET, "timeout_s": 2, "retry_after_s": 1, "retry_max_s": 8,
        "cache": {"max_entries": 100, "max_ttl_s": 60, "negative_ttl_s": 5}, **over})
    health = ProviderHealth(cfg.endpoint, AuthEndpoint.INTROSPECTION, Metrics(), NullTelemetry())
    return Introspector(cfg, Http(lambda: session, client_context(idp.pki.ca_file)), health, clock, random.Random(7))


async def test_an_active_answer_is_reused_until_its_exp_never_past_it(idp, session):
    idp.tokens["t"] = {"active": True, "sub": "alice", "exp": NOW + 5}
    clock = FakeClock()
    c = client(idp, session, clock)
    assert (await c.introspect("t", NOW)).active
    assert (await c.introspect("t", NOW + 4.9)).claims["sub"] == "alice"
    assert idp.hits["introspect"] == 1 and c.cache_hits == 1
    await c.introspect("t", NOW + 5)  # the token's lifetime is over: ask again
    assert idp.hits["introspect"] == 2


async def test_an_active_answer_is_reused_at_most_max_ttl_s(idp, session):
    idp.tokens["t"] = {"active": True, "sub": "alice"}  # no exp
    clock = FakeClock()
    c = client(idp, session, clock)
    await c.introspect("t", NOW)
    clock.advance(59.9)
    await c.introspect("t", NOW)
    assert idp.hits["introspect"] == 1
    clock.advance(0.1)
    await c.introspect("t", NOW)
    assert idp.hits["introspect"] == 2


async def test_an_inactive_answer_is_reused_negative_ttl_s(idp, session):
    clock = FakeClock()
    c = client(idp, session, clock)
    assert not (await c.introspect("revoked", NOW)).active
    clock.advance(4.9)
    assert not (await c.introspect("revoked", NOW)).active
    assert idp.hits["introspect"] == 1
    clock.advance(0.1)
    await c.introspect("revoked", NOW)
    assert idp.hits["introspect"] == 2


async def test_the_cache_is_bounded_least_recently_used_first(idp, session):
    idp.tokens.update({t: {"active": True, "sub": t} for t in ("a", "b", "c")})
    c = client(idp, session, FakeClock(), cache={"max_entries": 2, "max_ttl_s": 60})
    for t in ("a", "b", "a", "c"):  # c evicts b (a was used more recently)
        await c.introspect(t, NOW)
    assert idp.hits["introspect"] == 3
    await c.introspect("a", NOW)
    assert idp.hits["introspect"] == 3
    await c.introspect("b", NOW)
    assert idp.hits["introspect"] == 4


async def test_concurrent_requests_with_one_token_share_one_call(idp, session):
    idp.tokens["t"] = {"active": True}
    c = client(idp, session, FakeClock())
    answers = await asyncio.gather(*(c.introspect("t", NOW) for _ in range(20)))
    assert all(a.active for a in answers) and idp.hits["introspect"] == 1


async def test_a_failing_endpoint_is_not_called_again_until_its_backoff_ran_out(idp, session):
    idp.mode["introspect"] = "status_500"
    clock = FakeClock()
    c = client(idp, session, clock)
    assert await c.introspect("t1", NOW) is None
    assert c.health.available is False and c.event_id
    for t in ("t2", "t3"):
        assert await c.introspect(t, NOW) is None  # failing fast: the fail mode at once
    assert idp.hits["introspect"] == 1
    clock.advance(1.0)  # the first backoff is 0.5-1 s (retry_after_s, jittered)
    idp.mode["introspect"] = "ok"
    idp.tokens["t4"] = {"active": True}
    assert (await c.introspect("t4", NOW)).active
    assert c.health.available is True and c.event_id is None


async def test_a_lone_timeout_is_not_an_outage_three_in_a_row_are(idp, session):
    idp.mode["introspect"] = "hang"
    c = client(idp, session, FakeClock(), timeout_s=0.1)
    for n in range(1, 4):
        assert await c.introspect(f"t{n}", NOW) is None
        assert c.health.available is (n < 3)
    assert idp.hits["introspect"] == 3
    assert await c.introspect("t4", NOW) is None and idp.hits["introspect"] == 3  # now skipped for the backoff


async def test_the_token_never_reaches_a_log(idp, session, caplog):
    idp.mode["introspect"] = "garbage"
    c = client(idp, session, FakeClock())
    with caplog.at_level(logging.DEBUG):
        assert await c.introspect("secret-token-value", NOW) is None
    assert "not_json" in caplog.text and "secret-token-value" not in caplog.text and CLIENT_SECRET not in caplog.text


@pytest.mark.parametrize("failures,low,high", [
    (1, 0.5, 1.0), (2, 1.0, 2.0), (3, 2.0, 4.0), (4, 4.0, 8.0), (5, 4.0, 8.0), (60, 4.0, 8.0)])
def test_backoff_doubles_is_bounded_and_jittered(failures, low, high):
    rng = random.Random(3)
    delays = [Backoff(1.0, 8.0, rng).delay(failures) for _ in range(200)]
    assert all(low <= d <= high for d in delays)
    assert len(set(delays)) == 200  # jittered: processes that failed together do not retry together


async def test_an_endpoint_nobody_listens_on_is_a_connect_error(idp, session):
    from tests.support.net import closed_port

    c = client(idp, session, FakeClock(), endpoint=f"https://127.0.0.1:{closed_port()}/introspect")
    assert await c.introspect("t", NOW) is None
    assert not c.health.available
