"""JWT verification keys: inline/file keys and a JWKS endpoint cache.

Primitives:
- `VerifyKey`: one key, its `kid`, and the only algorithms it may verify. A key belongs to exactly one family
  (HMAC, RSA, EC P-256, EC P-384, OKP): an HMAC secret never verifies RS/ES tokens and a public key never
  verifies HS tokens, whatever the token's header claims.
- `static_keys(cfg)`: the keys written in config (secrets, PEM files), loaded once at build time.
- `JwksCache`: keys fetched from a configured URL, or from the `jwks_uri` of the issuer's OIDC discovery
  document (`oidc.Discovery`) — never a URL named by a token. Cached for `refresh_s`; refreshed in the
  background when old (the cached keys keep serving); an unknown `kid` triggers one refresh shared by all
  requests waiting for it (single flight), at most once per `min_refresh_interval_s`; a failed fetch keeps the
  previous keys for up to `max_stale_s` (stale-if-error) and the next attempt waits a bounded, jittered backoff
  (`retry_after_s` doubling up to `retry_max_s`). Each fetch's outcome moves the endpoint's `ProviderHealth`.
- `keep_fresh(ref)`: the background schedule of one cache (started by `PolicyResources`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from gatewatch.edge.policies.oidc import Discovery
from gatewatch.edge.policies.provider import Backoff, Http, ProviderError, ProviderHealth
from gatewatch.telemetry.names import ProviderFailure

log = logging.getLogger("gatewatch.policies.jwks")

FAMILY_ALGORITHMS = {
    "HMAC": frozenset({"HS256", "HS384", "HS512"}),
    "RSA": frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}),
    "EC-P-256": frozenset({"ES256"}),
    "EC-P-384": frozenset({"ES384"}),
    "OKP": frozenset({"EdDSA"}),
}
MAX_JWKS_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class VerifyKey:
    kid: str | None
    algorithms: frozenset[str]
    key: Any  # bytes for HMAC, a cryptography public key otherwise


def _public_family(key) -> str:
    if isinstance(key, rsa.RSAPublicKey):
        return "RSA"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return {"secp256r1": "EC-P-256", "secp384r1": "EC-P-384"}.get(key.curve.name, "unsupported")
    if isinstance(key, ed25519.Ed25519PublicKey):
        return "OKP"
    return "unsupported"


def _narrow(family: str, wanted) -> frozenset[str]:
    algs = FAMILY_ALGORITHMS.get(family, frozenset())
    if wanted:
        algs = algs & frozenset(wanted)
    if not algs:
        raise ValueError(f"key of family {family} cannot verify any of {sorted(wanted) if wanted else 'its algorithms'}")
    return algs


def static_keys(keys) -> tuple[VerifyKey, ...]:
    """Load the configured keys (raises ValueError naming the problem; the build turns it into a config error)."""
    out = []
    for k in keys:
        if k.secret or k.secret_file:
            secret = (k.secret.get_secret_value().encode() if k.secret else Path(k.secret_file).read_bytes().strip())
            if len(secret) < 32:
                raise ValueError("an HMAC secret must be at least 32 bytes")
            out.append(VerifyKey(k.kid, _narrow("HMAC", k.algorithms), secret))
            continue
        pem = (k.public_key.encode() if k.public_key else Path(k.public_key_file).read_bytes())
        key = serialization.load_pem_public_key(pem)
        out.append(VerifyKey(k.kid, _narrow(_public_family(key), k.algorithms), key))
    return tuple(out)


def parse_jwks(doc: dict) -> tuple[VerifyKey, ...]:
    """Signature keys of a JWKS document. Symmetric (`oct`) keys, encryption keys and keys of unsupported
    types are skipped: a published key set holds public keys only."""
    out = []
    for jwk in doc.get("keys", ()):
        if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
            continue
        kty, raw = jwk.get("kty"), json.dumps(jwk)
        try:
            if kty == "RSA":
                key = RSAAlgorithm.from_jwk(raw)
            elif kty == "EC":
                key = ECAlgorithm.from_jwk(raw)
            elif kty == "OKP":
                key = OKPAlgorithm.from_jwk(raw)
            else:
                continue
            if hasattr(key, "public_key") and not hasattr(key, "verify"):
                key = key.public_key()  # a private JWK by mistake: use its public half only
            family = _public_family(key)
            algs = _narrow(family, (jwk["alg"],) if isinstance(jwk.get("alg"), str) else ())
        except Exception:  # one bad key must not hide the others
            continue
        out.append(VerifyKey(jwk.get("kid") if isinstance(jwk.get("kid"), str) else None, algs, key))
    return tuple(out)


class JwksCache:
    def __init__(self, cfg, session: Callable[[], Any], monotonic: Callable[[], float] = time.monotonic, *,
                 http: Http | None = None, discovery: Discovery | None = None, health: ProviderHealth | None = None,
                 rng: random.Random | None = None):
        """`cfg`: the policy's `jwks` settings. Keys come from `cfg.url`, or with `discovery` from the issuer's
        `jwks_uri`. `session` returns the process's aiohttp ClientSession (used when no `http` is given)."""
        self.cfg = cfg
        self.http = http or Http(session)
        self.discovery = discovery
        self.health = health  # the JWKS endpoint's availability (the discovery endpoint has its own)
        self._mono = monotonic
        self._backoff = Backoff(cfg.retry_after_s, cfg.retry_max_s, rng)
        self.keys: tuple[VerifyKey, ...] = ()
        self.fetched_at: float | None = None  # last successful fetch
        self._last_attempt = float("-inf")
        self.failures = 0  # consecutive failed fetches
        self._retry_at = float("-inf")  # no fetch before this after a failure (backoff)
        self._inflight: asyncio.Task | None = None
        self.fetched = asyncio.Event()  # set after every fetch: the schedule re-plans (see keep_fresh)
        self.fetches = 0  # attempts, for tests and the admin view

    @property
    def event_id(self) -> str | None:
        """The outage in force (the key set's endpoint, else the discovery endpoint), if any."""
        for health in (self.health, self.discovery.health if self.discovery else None):
            if health is not None and health.event_id:
                return health.event_id
        return None

    @property
    def source(self) -> str:
        return self.cfg.url or (self.discovery.issuer if self.discovery else "")

    def cancel(self) -> None:
        if self._inflight is not None:
            self._inflight.cancel()

    def usable(self) -> bool:
        return self.fetched_at is not None and self._mono() - self.fetched_at <= self.cfg.max_stale_s

    async def get(self, kid: str | None) -> tuple[VerifyKey, ...] | None:
        """The keys that may verify a token with this `kid`; () when the kid is unknown after a (throttled)
        refresh; None when no usable key set exists (never fetched, or stale beyond max_stale_s)."""
        now = self._mono()
        if not self.usable():
            await self.refresh()
        elif now - self.fetched_at > self.cfg.refresh_s:
            self._refresh_soon()  # serve the cached keys meanwhile
        found = self._find(kid)
        if not found and self._allowed():
            await self.refresh()  # an unknown kid: the issuer may have rotated its keys
            found = self._find(kid)
        return found if self.usable() else None

    def touch(self) -> None:
        """A request used a cached key without `get`: keep the background refresh schedule anyway."""
        if self.fetched_at is not None and self._mono() - self.fetched_at > self.cfg.refresh_s:
            self._refresh_soon()

    def due_in(self) -> float:
        """Seconds until the next scheduled fetch: `refresh_s` after a success, the backoff after a failure."""
        if self.failures:
            return self._retry_at - self._mono()
        if self.fetched_at is None:
            return 0.0
        return self.fetched_at + self.cfg.refresh_s - self._mono()

    def _allowed(self) -> bool:
        """May a request start a fetch now? Not within `min_refresh_interval_s` of the last one (a stream of
        random `kid`s cannot hammer the issuer), nor before the backoff after a failure has run out."""
        now = self._mono()
        return now - self._last_attempt >= self.cfg.min_refresh_interval_s and now >= self._retry_at

    def _find(self, kid: str | None) -> tuple[VerifyKey, ...]:
        return tuple(k for k in self.keys if kid is None or k.kid == kid)

    def _refresh_soon(self) -> None:
        if self._inflight is None and self._allowed():
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())

    async def refresh(self, scheduled: bool = False) -> None:
        """Fetch now unless a fetch is already running (then wait for that one) or one is not allowed yet
        (`scheduled`: the background schedule, which keeps its own time, see `keep_fresh`)."""
        if self._inflight is None:
            if not scheduled and not self._allowed():
                return
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        self._last_attempt = self._mono()
        self.fetches += 1
        url = self.cfg.url
        try:
            if self.discovery is not None:  # after a failed fetch, look again: the keys may have moved
                url = await self.discovery.jwks_uri(0 if self.failures else self.cfg.refresh_s)
            doc = await self.http.get_json(url, self.cfg.timeout_s, MAX_JWKS_BYTES)
            keys = parse_jwks(doc)
            if not keys:
                raise ProviderError(ProviderFailure.INVALID, "no usable signature keys")
        except ProviderError as e:  # stale-if-error: the previous keys stay
            self._failed(e, url)
        except Exception as e:  # noqa: BLE001 -- a bug here must not end the schedule
            log.exception("jwks %s: fetch failed", self.source)
            self._failed(ProviderError(ProviderFailure.BAD_RESPONSE, type(e).__name__), url)
        else:
            self.keys, self.fetched_at, self.failures, self._retry_at = keys, self._mono(), 0, float("-inf")
            if self.health is not None:
                self.health.up(url)
        finally:
            self._inflight = None
            self.fetched.set()

    def _failed(self, e: ProviderError, url: str | None) -> None:
        self.failures += 1
        self._retry_at = self._mono() + self._backoff.delay(self.failures)
        if url is not None and self.health is not None:  # a discovery failure is the discovery endpoint's
            self.health.down(e, url)
        log.warning("jwks %s: fetch failed (%s: %s); %s", self.source, e.failure.value, e.detail,
                    "keeping cached keys" if self.keys else "no keys yet")


async def keep_fresh(ref: "weakref.ref[JwksCache]", floor_s: float = 0.05) -> None:
    """Refresh a key set on schedule — every `refresh_s`, and after a failure with backoff — for as long as any
    policy still holds it (a reload that drops the issuer ends the schedule). The keys are then fresh before a
    request needs them, and the provider's gauge comes back by itself once the provider does."""
    while (cache := ref()) is not None:
        if cache.due_in() <= 0:
            await cache.refresh(scheduled=True)
        delay = max(cache.due_in(), floor_s)
        fetched = cache.fetched
        fetched.clear()
        del cache  # hold no reference while asleep
        try:  # a fetch a request started (an unknown kid) re-plans the schedule: e.g. it failed, so back off
            await asyncio.wait_for(fetched.wait(), delay)
        except TimeoutError:
            pass
