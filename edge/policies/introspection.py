"""`introspection`: accept an opaque bearer token when the authorization server says it is active (RFC 7662).

The token is read like the jwt policy's (`claims.bearer_token`) and judged by the shared `introspect.Introspector`
(cached answers, single flight, backoff while the endpoint fails). An active answer's claims are checked with the
jwt policy's own scope and claim check (`claims.shortfall`) and give the request its identity (`claims.grant`).

Answers (RFC 6750 §3 for the challenges):
- no token → 401 `WWW-Authenticate: Bearer realm="gatewatch"` (no error code, §3.1);
- `active: false` → 401 `error="invalid_token"`; a required claim missing → the same;
- a required scope missing → 403 `error="insufficient_scope"` with the scopes required;
- the endpoint unavailable (down, no answer within `timeout_s`, garbage) → verdict `error`, and `fail_mode`
  decides: `closed` (default) answers 503 with `Retry-After` — the token may be fine, so the client is told to
  retry rather than to fetch a new token — and `open` lets the request through without an identity. Either way
  the verdict is logged, and names the outage (`gatewatch.event.id`) once the endpoint is down.

Reasons: introspection.active, introspection.missing, introspection.oversized, introspection.inactive,
introspection.missing_claim, introspection.insufficient_scope, introspection.unavailable (verdict `error`).
"""

from __future__ import annotations

import math

from gatewatch.edge.policies.base import PolicyRequest, PolicyVerdict, allow, deny, error
from gatewatch.edge.policies.claims import Shortfall, bearer_token, challenges, grant, shortfall
from gatewatch.edge.policies.introspect import Introspector
from gatewatch.telemetry.names import Attr, Outcome, PolicyReason as R

ACTIVE = R.INTROSPECTION_ACTIVE.value  # plain str: verdicts cross a pipe to the exporter process
UNAVAILABLE = "the token introspection endpoint is unavailable"


class IntrospectionPolicy:
    type = "introspection"

    def __init__(self, cfg, client: Introspector):
        self.name, self.shadow, self.cfg = cfg.name, cfg.shadow, cfg
        self.client = client
        self.fail_closed = cfg.fail_mode == "closed"
        self.challenges = challenges(cfg)
        self.identity_headers = {h.lower() for h in cfg.forward_claims}
        self.retry_after = (("Retry-After", str(max(1, math.ceil(cfg.retry_after_s)))),)

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict:
        req.upstream_remove |= self.identity_headers  # whatever happens, the client's copies never go upstream
        tok = bearer_token(req, self.cfg)
        if tok is None:
            return self._deny(R.INTROSPECTION_MISSING, self.challenges.unauthorized)
        if len(tok) > self.cfg.max_token_bytes:
            return self._deny(R.INTROSPECTION_OVERSIZED, self.challenges.invalid)
        answer = await self.client.introspect(tok, req.now, req.trace_id)
        if answer is None:
            outage = self.client.event_id
            return error(self, R.INTROSPECTION_UNAVAILABLE.value, self.fail_closed, 503, Outcome.DENIED_AUTH,
                         UNAVAILABLE, self.retry_after, **({Attr.EVENT_ID: outage} if outage else {}))
        if not answer.active:
            return self._deny(R.INTROSPECTION_INACTIVE, self.challenges.invalid)
        short = shortfall(answer.claims, self.cfg.required_claims, self.cfg.required_scopes)
        if short is Shortfall.INSUFFICIENT_SCOPE:
            return deny(self, R.INTROSPECTION_INSUFFICIENT_SCOPE.value, 403, Outcome.DENIED_AUTH,
                        "the token lacks a required scope", self.challenges.scope)
        if short is Shortfall.MISSING_CLAIM:
            return self._deny(R.INTROSPECTION_MISSING_CLAIM, self.challenges.invalid)
        return allow(self, ACTIVE, **grant(req, answer.claims, self.cfg))

    def _deny(self, reason: R, headers) -> PolicyVerdict:
        return deny(self, reason.value, 401, Outcome.DENIED_AUTH, None, headers)
