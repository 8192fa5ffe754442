"""OpenID Connect Discovery (`oidc.Discovery`) and the key set it leads to (`JwksCache` with discovery), against
the HTTPS provider stand-in on a fake clock: the well-known URL (§4.1), the issuer compared exactly (§4.3), no
downgrade of the keys URL, stale-if-error, re-discovery after a failed key fetch, and the backoff."""

from __future__ import annotations

import random

import pytest

from gatewatch.edge.policies.config import JwksConfig
from gatewatch.edge.policies.jwks import JwksCache
from gatewatch.edge.policies.oidc import Discovery, discovery_url
from gatewatch.edge.policies.provider import Http, ProviderError, ProviderHealth
from gatewatch.io.tls import client_context
from gatewatch.telemetry.names import AuthEndpoint
from tests.edge.policies.idp import running_idp, client_session  # noqa: F401 — fixtures `idp`, `session`
from tests.edge.policies.support import FakeClock


@pytest.mark.parametrize("issuer,url", [
    ("https://idp.example", "https://idp.example/.well-known/openid-configuration"),
    ("https://idp.example/", "https://idp.example/.well-known/openid-configuration"),
    ("https://idp.example/realms/acme", "https://idp.example/realms/acme/.well-known/openid-configuration"),
    ("https://idp.example/realms/acme/", "https://idp.example/realms/acme/.well-known/openid-configuration"),
])
def test_the_well_known_url(issuer, url):
    assert discovery_url(issuer) == url


def discovery(idp, session, clock) -> Discovery:
    http = Http(lambda: session, client_context(idp.pki.ca_file))
    return Discovery(idp.issuer, http, 2, ProviderHealth(idp.issuer, AuthEndpoint.DISCOVERY), clock)


async def test_the_document_is_cached_then_refetched_and_kept_when_the_provider_fails(idp, session):
    clock = FakeClock()
    d = discovery(idp, session, clock)
    assert await d.jwks_uri(60) == idp.issuer + "/keys"
    assert await d.jwks_uri(60) == idp.issuer + "/keys" and idp.hits["discovery"] == 1
    clock.advance(60)
    idp.mode["discovery"] = "status_500"
    assert await d.jwks_uri(60) == idp.issuer + "/keys"  # stale-if-error
    assert idp.hits["discovery"] == 2 and not d.health.available


@pytest.mark.parametrize("document,failure", [
    ({"issuer_in_document": "https://evil.example/realms/acme"}, "issuer_mismatch"),
    ({"jwks_uri": "http://127.0.0.1:1/keys"}, "invalid"),  # an https issuer's keys over plain http: refused
    ({"jwks_uri": "/relative/keys"}, "invalid"),
])
async def test_a_document_that_does_not_validate_is_not_used(idp, session, document, failure):
    for k, v in document.items():
        setattr(idp, k, v)
    d = discovery(idp, session, FakeClock())
    with pytest.raises(ProviderError) as e:
        await d.jwks_uri(60)
    assert e.value.failure.value == failure and d.jwks_uri_value is None


async def test_a_failed_key_fetch_looks_again_and_backs_off(idp, session):
    clock = FakeClock()
    cfg = JwksConfig(refresh_s=300, min_refresh_interval_s=0, retry_after_s=2, retry_max_s=16)
    cache = JwksCache(cfg, lambda: session, clock, http=Http(lambda: session, client_context(idp.pki.ca_file)),
                      discovery=discovery(idp, session, clock), rng=random.Random(1))
    assert await cache.get("r1")
    assert (idp.hits["discovery"], idp.hits["jwks"]) == (1, 1)
    assert cache.due_in() == 300
    idp.mode["jwks"] = "status_500"
    assert await cache.get("unknown") == ()  # an unknown kid refreshes, which fails
    assert cache.failures == 1 and 1 <= cache.due_in() <= 2  # retry_after_s, jittered
    assert idp.hits["discovery"] == 1  # the document was fresh
    assert await cache.get("unknown") == () and idp.hits["jwks"] == 2  # within the backoff: no new fetch
    clock.advance(2)
    await cache.get("unknown")
    assert cache.failures == 2 and 2 <= cache.due_in() <= 4
    assert idp.hits["discovery"] == 2  # after a failure the keys URL is looked up again
    assert await cache.get("r1")  # the last good keys keep serving meanwhile
