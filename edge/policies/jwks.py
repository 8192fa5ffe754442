"""JWT verification keys: inline/file keys and a JWKS endpoint cache.

Primitives:
- `VerifyKey`: one key, its `kid`, and the only algorithms it may verify. A key belongs to exactly one family
  (HMAC, RSA, EC P-256, EC P-384, OKP): an HMAC secret never verifies RS/ES tokens and a public key never
  verifies HS tokens, whatever the token's header claims.
- `static_keys(cfg)`: the keys written in config (secrets, PEM files), loaded once at build time.
- `JwksCache`: keys fetched from a configured URL (never a URL named by a token). Cached for `refresh_s`;
  refreshed in the background when old (the cached keys keep serving); an unknown `kid` triggers one refresh
  shared by all requests waiting for it (single flight), at most once per `min_refresh_interval_s`; a failed
  fetch keeps the previous keys for up to `max_stale_s` (stale-if-error).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

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
    def __init__(self, cfg, session: Callable[[], Any], monotonic: Callable[[], float] = time.monotonic):
        self.cfg = cfg
        self._session = session  # returns the process's aiohttp ClientSession (created in start())
        self._mono = monotonic
        self.keys: tuple[VerifyKey, ...] = ()
        self.fetched_at: float | None = None  # last successful fetch
        self._last_attempt = float("-inf")
        self._inflight: asyncio.Task | None = None
        self.fetches = 0  # attempts, for tests and the admin view

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
        if not found and self._mono() - self._last_attempt >= self.cfg.min_refresh_interval_s:
            await self.refresh()  # an unknown kid: the issuer may have rotated its keys
            found = self._find(kid)
        return found if self.usable() else None

    def touch(self) -> None:
        """A request used a cached key without `get`: keep the background refresh schedule anyway."""
        if self.fetched_at is not None and self._mono() - self.fetched_at > self.cfg.refresh_s:
            self._refresh_soon()

    def _find(self, kid: str | None) -> tuple[VerifyKey, ...]:
        return tuple(k for k in self.keys if kid is None or k.kid == kid)

    def _refresh_soon(self) -> None:
        if self._inflight is None and self._mono() - self._last_attempt >= self.cfg.min_refresh_interval_s:
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())

    async def refresh(self) -> None:
        """Fetch now unless a fetch is already running (then wait for that one) or one ran too recently."""
        if self._inflight is None:
            if self._mono() - self._last_attempt < self.cfg.min_refresh_interval_s:
                return
            self._inflight = asyncio.get_running_loop().create_task(self._fetch())
        await asyncio.shield(self._inflight)

    async def _fetch(self) -> None:
        self._last_attempt = self._mono()
        self.fetches += 1
        try:
            session = self._session()
            async with asyncio.timeout(self.cfg.timeout_s):
                async with session.get(self.cfg.url, allow_redirects=False) as r:
                    if r.status != 200:
                        raise ValueError(f"status {r.status}")
                    body = await r.content.read(MAX_JWKS_BYTES + 1)
            if len(body) > MAX_JWKS_BYTES:
                raise ValueError("key set too large")
            keys = parse_jwks(json.loads(body))
            if not keys:
                raise ValueError("no usable signature keys")
            self.keys, self.fetched_at = keys, self._mono()
        except Exception as e:  # stale-if-error: the previous keys stay
            log.warning("jwks %s: fetch failed (%s); %s", self.cfg.url, e or type(e).__name__,
                        "keeping cached keys" if self.keys else "no keys yet")
        finally:
            self._inflight = None
