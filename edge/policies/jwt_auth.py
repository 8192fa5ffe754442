"""`jwt`: verify a bearer token and forward the verified identity.

Hostile-token rules, checked before any key is touched: oversized tokens, `alg: none` and algorithms the policy
does not list are refused; `jku`, `x5u`, `jwk`, `x5c` (keys named by the token) and `crit` (extensions we do not
implement) are refused, never followed. A key verifies only its own algorithm family (no HS/RS confusion).
Then signature, then `exp` (required), `nbf`, `iss`, `aud` with bounded leeway, then required claims and scopes
(`claims.shortfall`, the check the introspection policy uses too). With OIDC discovery the issuer is exactly one
URL, and a token's `iss` must equal it.
A token whose signature was verified is remembered (bounded LRU) while its key is still trusted, so a client
reusing its token costs a hash lookup; `exp`/`nbf`, claims and scopes are judged on every request.

Reasons: jwt.valid, jwt.missing, jwt.malformed, jwt.oversized, jwt.alg_not_allowed, jwt.forbidden_header,
jwt.unknown_kid, jwt.bad_signature, jwt.expired, jwt.not_yet_valid, jwt.bad_issuer, jwt.bad_audience,
jwt.missing_claim, jwt.insufficient_scope, jwt.keys_unavailable (verdict `error`, always fail-closed).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections import OrderedDict

import jwt as pyjwt

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny, error
from gatewatch.edge.policies.claims import Shortfall, bearer_token, challenges, grant, shortfall
from gatewatch.edge.policies.jwks import JwksCache, VerifyKey, static_keys
from gatewatch.telemetry.names import Attr, Outcome, PolicyReason as R

FORBIDDEN_HEADERS = ("jku", "x5u", "jwk", "x5c", "crit")
VALID = R.JWT_VALID.value  # plain str: verdicts cross a pipe to the exporter process
VERIFIED_CACHE = 1024  # tokens whose signature was verified (bounded: tokens may be up to max_token_bytes)

_ERRORS = (  # PyJWT exception → reason, most specific first
    (pyjwt.InvalidSignatureError, R.JWT_BAD_SIGNATURE),
    (pyjwt.ExpiredSignatureError, R.JWT_EXPIRED),
    (pyjwt.ImmatureSignatureError, R.JWT_NOT_YET_VALID),
    (pyjwt.InvalidIssuerError, R.JWT_BAD_ISSUER),
    (pyjwt.InvalidAudienceError, R.JWT_BAD_AUDIENCE),
    (pyjwt.MissingRequiredClaimError, R.JWT_MISSING_CLAIM),
)


class JwtPolicy:
    type = "jwt"

    def __init__(self, cfg, jwks: JwksCache | None):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.algorithms = frozenset(cfg.algorithms)
        self.keys: tuple[VerifyKey, ...] = static_keys(cfg.keys)
        self.jwks = jwks
        self.identity_headers = {h.lower() for h in cfg.forward_claims}
        self.challenges = challenges(cfg)
        self.require = ["exp", "iss", "aud"] + (["nbf"] if cfg.require_nbf else [])
        # Verified tokens (by SHA-256 of the token) → (claims, key): a client reusing its token skips the
        # signature check; times, claims and scopes are still judged on every request.
        self._verified: OrderedDict[bytes, tuple[dict, VerifyKey]] = OrderedDict()
        self.cache_hits = 0

    def token(self, req: PolicyRequest) -> str | None:
        return bearer_token(req, self.cfg)

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        req.upstream_remove |= self.identity_headers  # whatever happens, the client's copies never go upstream
        tok = self.token(req)
        if tok is None:
            return self._deny(R.JWT_MISSING, self.challenges.unauthorized)
        if len(tok) > self.cfg.max_token_bytes:
            return self._deny(R.JWT_OVERSIZED, self.challenges.invalid)
        digest = hashlib.sha256(tok.encode()).digest()
        cached = self._verified.get(digest)
        if cached is not None and self._current(cached[1]):
            self._verified.move_to_end(digest)
            self.cache_hits += 1
            late = self._times(cached[0], req.now)
            return self._deny(late, self.challenges.invalid) if late else self._authorize(req, cached[0])
        header = _header(tok)
        if header is None:
            return self._deny(R.JWT_MALFORMED, self.challenges.invalid)
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:  # includes "none"
            return self._deny(R.JWT_ALG_NOT_ALLOWED, self.challenges.invalid)
        if any(h in header for h in FORBIDDEN_HEADERS):
            return self._deny(R.JWT_FORBIDDEN_HEADER, self.challenges.invalid)
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            return self._deny(R.JWT_MALFORMED, self.challenges.invalid)
        candidates = tuple(k for k in self.keys if kid is None or k.kid is None or k.kid == kid)
        if not candidates and self.jwks is not None:
            fetched = await self.jwks.get(kid)
            if fetched is None:
                outage = self.jwks.event_id
                return error(self, R.JWT_KEYS_UNAVAILABLE.value, True, 401, Outcome.DENIED_AUTH,
                             "the token's signing keys are unavailable", self.challenges.invalid,
                             **({Attr.EVENT_ID: outage} if outage else {}))
            candidates = fetched
        if not candidates:
            return self._deny(R.JWT_UNKNOWN_KID, self.challenges.invalid)
        usable = [k for k in candidates if alg in k.algorithms]
        if not usable:  # e.g. an HS256 token naming an RSA key: algorithm confusion
            return self._deny(R.JWT_ALG_NOT_ALLOWED, self.challenges.invalid)
        claims, reason, key = self._verify(tok, alg, usable, req.now)
        if claims is None:
            return self._deny(reason, self.challenges.invalid)
        self._verified[digest] = (claims, key)
        if len(self._verified) > VERIFIED_CACHE:
            self._verified.popitem(last=False)
        return self._authorize(req, claims)

    def _current(self, key: VerifyKey) -> bool:
        """A cached verification counts only while its key is still one we trust (a JWKS refresh replaces the
        key objects, so every refresh — and any rotation — makes cached tokens verify again)."""
        if any(k is key for k in self.keys):
            return True
        if self.jwks is None or not self.jwks.usable() or not any(k is key for k in self.jwks.keys):
            return False
        self.jwks.touch()
        return True

    def _verify(self, tok: str, alg: str, keys, now: float) -> tuple[dict | None, R, VerifyKey | None]:
        reason = R.JWT_BAD_SIGNATURE
        for key in keys:
            try:
                claims = pyjwt.decode(
                    tok, key.key, algorithms=[alg], issuer=self.cfg.issuer, audience=self.cfg.audience,
                    options={"require": self.require, "verify_exp": False, "verify_nbf": False,
                             "verify_iat": False, "verify_sub": False, "verify_jti": False})
            except pyjwt.PyJWTError as e:
                reason = next((r for exc, r in _ERRORS if isinstance(e, exc)), R.JWT_MALFORMED)
                if reason is not R.JWT_BAD_SIGNATURE:
                    return None, reason, None  # the signature was good: the claims are the problem
                continue
            late = self._times(claims, now)
            return (None, late, None) if late else (claims, R.JWT_VALID, key)
        return None, reason, None

    def _times(self, claims: dict, now: float) -> R | None:
        """`exp` and `nbf` against the request's clock (not the library's), with the configured leeway."""
        exp, nbf = claims.get("exp"), claims.get("nbf")
        for v in (exp, nbf):
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
                return R.JWT_MALFORMED
        if now > exp + self.cfg.leeway_s:
            return R.JWT_EXPIRED
        if nbf is not None and now < nbf - self.cfg.leeway_s:
            return R.JWT_NOT_YET_VALID
        return None

    def _authorize(self, req: PolicyRequest, claims: dict) -> PolicyVerdict:
        short = shortfall(claims, self.cfg.required_claims, self.cfg.required_scopes)
        if short is Shortfall.MISSING_CLAIM:
            return self._deny(R.JWT_MISSING_CLAIM, self.challenges.invalid)
        if short is Shortfall.INSUFFICIENT_SCOPE:
            return deny(self, R.JWT_INSUFFICIENT_SCOPE.value, 403, Outcome.DENIED_AUTH,
                        "the token lacks a required scope", self.challenges.scope)
        return allow(self, VALID, **grant(req, claims, self.cfg))

    def _deny(self, reason: R, headers) -> PolicyVerdict:
        return deny(self, reason.value, 401, Outcome.DENIED_AUTH, None, headers)


def _header(tok: str) -> dict | None:
    """The JOSE header, read by hand: PyJWT's reader already judges some fields (`crit`), and the reason for
    refusing them must be ours."""
    parts = tok.split(".")
    if len(parts) != 3:
        return None
    seg = parts[0]
    try:
        header = json.loads(base64.urlsafe_b64decode(seg + "=" * (-len(seg) % 4)))
    except (ValueError, binascii.Error):
        return None
    return header if isinstance(header, dict) else None

