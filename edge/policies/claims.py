"""Bearer tokens at the edge, whatever verified them: where the token is read, the scope and claim checks, and the
identity a verified token gives the request. Shared by `jwt` (claims from a verified JWT) and `introspection`
(claims from the authorization server's RFC 7662 answer), so both judge scopes and claims the same way.

Primitives:
- `bearer_token(req, cfg)`: the token from `Authorization: Bearer` (RFC 6750 §2.1) or the configured header, then
  the cookie, then the query parameter (RFC 6750 §2.3, discouraged: tokens end up in logs).
- `scopes(claims)`: the granted scopes — `scope`, a space-separated string (RFC 7662 §2.2, RFC 8693 §4.2,
  RFC 9068 §2.2.3), or `scp`, a list (a common JWT spelling).
- `shortfall(claims, required_claims, required_scopes)` → `Shortfall` | None: what the token lacks, if anything.
- `grant(req, claims, cfg)`: the verified identity onto the request (consumer, plan, `forward_claims` headers)
  and the verdict's safe attributes.
- `challenges(cfg)`: the `WWW-Authenticate` values of RFC 6750 §3 for this policy: no token (no error code,
  §3.1), `invalid_token` (401), `insufficient_scope` (403, with the scopes required).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from http.cookies import CookieError, SimpleCookie
from urllib.parse import parse_qsl

from gatewatch.edge.policies.base import PolicyRequest, header_values
from gatewatch.telemetry.names import Attr

MAX_CONSUMER_CHARS = 128
MAX_FORWARDED_CHARS = 1024


class Shortfall(Enum):
    MISSING_CLAIM = "missing_claim"  # 401 invalid_token: the token is not one this route accepts
    INSUFFICIENT_SCOPE = "insufficient_scope"  # 403 (RFC 6750 §3.1)


@dataclass(frozen=True, slots=True)
class Challenges:
    unauthorized: tuple[tuple[str, str], ...]  # no token at all
    invalid: tuple[tuple[str, str], ...]  # invalid_token
    scope: tuple[tuple[str, str], ...]  # insufficient_scope


def challenges(cfg) -> Challenges:
    realm = 'Bearer realm="gatewatch"'
    # Scope tokens cannot hold '"' or '\' (RFC 6749 §3.3; the config checks), so quoting is safe.
    needed = f', scope="{" ".join(cfg.required_scopes)}"' if cfg.required_scopes else ""
    return Challenges((("WWW-Authenticate", realm),),
                      (("WWW-Authenticate", f'{realm}, error="invalid_token"'),),
                      (("WWW-Authenticate", f'{realm}, error="insufficient_scope"{needed}'),))


def bearer_token(req: PolicyRequest, cfg) -> str | None:
    """The token, or None. `cfg.header` is `Authorization` (the Bearer scheme, case-insensitive) or any other
    header holding the bare token; then `cfg.cookie`, then `cfg.query`."""
    v = req.head.header(cfg.header.lower())
    if v is not None:
        if cfg.header.lower() != "authorization":
            if v.strip():
                return v.strip()
        else:
            scheme, _, tok = v.strip().partition(" ")
            if scheme.lower() == "bearer" and tok.strip():
                return tok.strip()
    if cfg.cookie:
        for v in header_values(req, "cookie"):
            try:
                c = SimpleCookie(v)
            except CookieError:
                continue
            if cfg.cookie in c and c[cfg.cookie].value:
                return c[cfg.cookie].value
    if cfg.query:
        for k, v in parse_qsl(req.query, keep_blank_values=False):
            if k == cfg.query:
                return v
    return None


def scopes(claims: dict) -> set[str]:
    granted = claims.get("scope", claims.get("scp", ""))
    if isinstance(granted, str):
        return set(granted.split())  # RFC 6749 §3.3: space-delimited
    if isinstance(granted, list):
        return {s for s in granted if isinstance(s, str)}
    return set()


def shortfall(claims: dict, required_claims: dict, required_scopes: tuple[str, ...]) -> Shortfall | None:
    """A required claim must equal one of its values (for a list claim, one of its elements must); every
    required scope must be granted. Claims are checked first: a token of the wrong tenant is invalid here, not
    merely short of a scope."""
    for claim, want in required_claims.items():
        have = claims.get(claim)
        wants = (want,) if isinstance(want, str) else want
        haves = [_text(h) for h in (have if isinstance(have, list) else [have])]
        if not any(h in wants for h in haves):
            return Shortfall.MISSING_CLAIM
    if required_scopes:
        granted = scopes(claims)
        if any(s not in granted for s in required_scopes):
            return Shortfall.INSUFFICIENT_SCOPE
    return None


def grant(req: PolicyRequest, claims: dict, cfg) -> dict:
    """Consumer, plan and forwarded claims from a verified token; the attributes for the allow verdict."""
    consumer = claims.get(cfg.consumer_claim) if cfg.consumer_claim else None
    if isinstance(consumer, str) and 0 < len(consumer) <= MAX_CONSUMER_CHARS and consumer.isprintable():
        req.consumer = consumer
    plan = claims.get(cfg.plan_claim) if cfg.plan_claim else None
    if isinstance(plan, str):
        req.plan = plan
    for header, claim in cfg.forward_claims.items():
        value = claims.get(claim)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            if text.isprintable() and len(text) <= MAX_FORWARDED_CHARS:  # no CR/LF or other controls
                req.upstream_set.append((header, text))
    return {Attr.CONSUMER: req.consumer} if req.consumer else {}


def _text(value) -> str | None:
    """A claim as config spells it: true/false for booleans, numbers in decimal, strings as they are."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float, str)):
        return str(value)
    return None
