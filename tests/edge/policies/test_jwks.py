"""JWKS keys from a real local endpoint (port 0): caching, single-flight refresh on an unknown kid, throttling,
stale-if-error when the endpoint goes down, fail-closed for unknown kids, never following `jku`."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from gatewatch.edge.policies.config import JwksConfig, JwtPolicyConfig
from gatewatch.edge.policies.jwks import JwksCache
from gatewatch.edge.policies.jwt_auth import JwtPolicy
from tests.edge.policies.jwt_keys import AUD, ISS, jwk, token
from tests.edge.policies.support import FakeClock, request
from tests.edge.policies.idp import client_session  # noqa: F401 — fixtures `idp`, `session`


class Idp:
    """A JWKS endpoint whose key set, latency and availability the test controls."""

    def __init__(self):
        self.kids = ["r1"]
        self.hits = 0
        self.delay_s = 0.0
        self.status = 200
        self.runner: web.AppRunner | None = None
        self.url = ""

    async def handle(self, request):
        self.hits += 1
        await asyncio.sleep(self.delay_s)
        if self.status != 200:
            return web.Response(status=self.status)
        return web.json_response({"keys": [jwk(k) for k in self.kids]})

    async def start(self):
        app = web.Application()
        app.router.add_get("/jwks", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/jwks"  # noqa: SLF001
        return self

    async def stop(self):
        await self.runner.cleanup()


@pytest.fixture
async def idp():
    server = await Idp().start()
    yield server
    await server.stop()


def make(idp, session, clock, **jwks):
    cfg = JwksConfig(url=idp.url, refresh_s=60, min_refresh_interval_s=5, timeout_s=1, max_stale_s=3600, **jwks)
    cache = JwksCache(cfg, lambda: session, clock)
    pol = JwtPolicy(JwtPolicyConfig(name="auth", type="jwt", issuer=ISS, audience=AUD,
                                    algorithms=["RS256", "ES256"], jwks=cfg.model_dump()), cache)
    return pol, cache


async def verdict(pol, tok):
    v = await pol.evaluate(request(headers=[("Authorization", f"Bearer {tok}")]))
    return v.verdict.value, v.reason


async def test_keys_are_fetched_once_and_cached(idp, session):
    clock = FakeClock()
    pol, cache = make(idp, session, clock)
    for _ in range(5):
        assert await verdict(pol, token("RS256", "r1")) == ("allow", "jwt.valid")
    assert idp.hits == 1


async def test_unknown_kid_refreshes_once_for_all_concurrent_requests(idp, session):
    clock = FakeClock()
    pol, cache = make(idp, session, clock)
    assert await verdict(pol, token("RS256", "r1")) == ("allow", "jwt.valid")
    idp.kids = ["r1", "e1"]  # the issuer rotates in a new key
    idp.delay_s = 0.1
    clock.advance(5)
    results = await asyncio.gather(*(verdict(pol, token("ES256", "e1")) for _ in range(20)))
    assert set(results) == {("allow", "jwt.valid")}
    assert idp.hits == 2  # one refresh shared by 20 requests (single flight)


async def test_unknown_kid_refreshes_are_throttled_and_fail_closed(idp, session):
    clock = FakeClock()
    pol, cache = make(idp, session, clock)
    assert await verdict(pol, token("RS256", "r1")) == ("allow", "jwt.valid")
    for _ in range(10):  # an attacker spraying random kids cannot make us hammer the issuer
        assert await verdict(pol, token("RS256", "r1", headers={"kid": "random"})) == ("deny", "jwt.unknown_kid")
    assert idp.hits == 1  # within min_refresh_interval_s of the first fetch: no refresh at all
    clock.advance(5)
    assert await verdict(pol, token("RS256", "r1", headers={"kid": "random"})) == ("deny", "jwt.unknown_kid")
    assert idp.hits == 2


async def test_endpoint_down_cached_keys_keep_working_unknown_kids_fail_closed(idp, session):
    clock = FakeClock()
    pol, cache = make(idp, session, clock)
    assert await verdict(pol, token("RS256", "r1")) == ("allow", "jwt.valid")
    await idp.stop()  # the identity provider goes away
    clock.advance(120)  # the keys are older than refresh_s: a background refresh is attempted and fails
    assert await verdict(pol, token("RS256", "r1")) == ("allow", "jwt.valid")
    await asyncio.sleep(0.05)
    assert cache.fetches == 2 and cache.keys  # stale-if-error: the cached key set survives
    clock.advance(10)
    assert await verdict(pol, token("ES256", "e1")) == ("deny", "jwt.unknown_kid")
    assert await verdict(pol, token("RS256", "r1")) == ("allow", "jwt.valid")
    clock.advance(3600)  # beyond max_stale_s: the stale keys are no longer trusted
    assert await verdict(pol, token("RS256", "r1")) == ("error", "jwt.keys_unavailable")


async def test_never_reachable_is_an_error_verdict_that_refuses(idp, session):
    idp.status = 500
    pol, cache = make(idp, session, FakeClock())
    v = await pol.evaluate(request(headers=[("Authorization", f"Bearer {token()}")]))
    assert (v.verdict.value, v.reason, v.block, v.status) == ("error", "jwt.keys_unavailable", True, 401)


async def test_jku_is_never_followed(idp, session):
    pol, cache = make(idp, session, FakeClock())
    tok = token("RS256", "r1", headers={"kid": "attacker", "jku": idp.url})
    assert await verdict(pol, tok) == ("deny", "jwt.forbidden_header")
    assert idp.hits == 0


def test_jwks_symmetric_and_encryption_keys_are_ignored():
    from gatewatch.edge.policies.jwks import parse_jwks

    keys = parse_jwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}, {**jwk("r1"), "use": "enc"},
                                {**jwk("e1"), "alg": "ES256"}, {"kty": "RSA", "kid": "broken"}]})
    assert [(k.kid, sorted(k.algorithms)) for k in keys] == [("e1", ["ES256"])]


async def test_verified_tokens_are_cached_until_the_key_set_changes(idp, session):
    clock = FakeClock()
    pol, cache = make(idp, session, clock)
    tok = token("RS256", "r1")
    for _ in range(3):
        assert await verdict(pol, tok) == ("allow", "jwt.valid")
    assert pol.cache_hits == 2
    idp.kids = ["e1"]  # the issuer retires r1
    clock.advance(61)
    await verdict(pol, tok)  # still the cached key set: served, and a background refresh starts
    await asyncio.sleep(0.05)
    assert cache.fetches == 2
    assert await verdict(pol, tok) == ("deny", "jwt.unknown_kid")  # the retired key's tokens stop working


async def test_a_cached_token_still_expires():
    from gatewatch.edge.policies.config import JwtPolicyConfig
    from tests.edge.policies.jwt_keys import public_pem

    pol = JwtPolicy(JwtPolicyConfig(name="auth", type="jwt", issuer=ISS, audience=AUD, leeway_s=0,
                                    keys=[{"kid": "r1", "public_key": public_pem("r1")}]), None)
    t = 1_700_000_000
    tok = token(iat=t, exp=t + 10)
    ok = await pol.evaluate(request(headers=[("Authorization", f"Bearer {tok}")], now=t))
    late = await pol.evaluate(request(headers=[("Authorization", f"Bearer {tok}")], now=t + 11))
    assert (ok.reason, late.reason, pol.cache_hits) == ("jwt.valid", "jwt.expired", 1)
