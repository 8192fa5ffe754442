"""The seam between the engine and the route policies (POLICY phase).

Primitives:
- `PolicyRequest`: what a policy sees of one request (head, canonical path, query, the client's body stream,
  what earlier policies established such as the consumer) and what it may change on the way upstream/back
  (upstream headers to set/remove, response headers to add, the path, the body stream).
- `PolicyVerdict`: one policy's decision — verdict (allow / deny / shadow_deny / error), a reason from the closed
  `telemetry.names.PolicyReason` vocabulary, safe context attributes (never a token), and when the request must
  stop (`block`), the local answer (status, outcome, extra headers).
- `Policy`: `name`, `type`, `async evaluate(req) -> PolicyVerdict`; optionally `observe(req, outcome, status)`,
  called once when the request ends (circuit breakers learn from results there).
- `allow()`, `deny()`, `error()`: build verdicts; `deny` and `error` implement shadow mode (never block).

Guarantees the engine gives: policies run in declared order, each at most once per request; the first verdict
with `block=True` ends the POLICY phase and is answered locally; every verdict is recorded once (deny,
shadow_deny and error as decision logs; allows summarised on the SERVER span and counted in metrics); `observe`
runs exactly once for every policy that was evaluated, whatever happened afterwards.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Protocol

from gatewatch.io.interfaces import RequestHead
from gatewatch.telemetry.names import Outcome, Verdict


@dataclass(slots=True)
class PolicyRequest:
    head: RequestHead
    route: str
    path: str  # canonical; a rewrite policy may change it (what the upstream receives)
    query: str  # raw query string, without "?"
    client_address: str  # the TCP peer (a policy applying a trusted-proxy model derives its own)
    body: AsyncIterator[bytes] | None  # the client's body; a policy may wrap or replace it
    now: float  # wall clock, seconds (time.time()), for token validity
    rng: random.Random
    consumer: str | None = None  # set by an authentication policy, read by rate limits and metrics
    plan: str | None = None
    upstream_set: list[tuple[str, str]] = field(default_factory=list)  # headers added/replaced upstream
    upstream_remove: set[str] = field(default_factory=set)  # lower-case names removed before forwarding
    response_headers: list[tuple[str, str]] = field(default_factory=list)  # added to whatever the client gets
    response_remove: set[str] = field(default_factory=set)  # lower-case names (or `prefix*`) of the upstream's
    state: dict[str, Any] = field(default_factory=dict)  # per-request scratch keyed by policy name
    trace_id: int = 0  # this request's trace and SERVER span: state-change events a request causes point at it
    span_id: int = 0


@dataclass(frozen=True, slots=True)
class PolicyVerdict:
    policy: str
    type: str
    verdict: Verdict
    reason: str  # PolicyReason value
    attributes: dict[str, Any] = field(default_factory=dict)  # safe context: limit, remaining, consumer, claim
    block: bool = False  # stop the request here and answer with `status`
    status: int = 403
    outcome: Outcome = Outcome.DENIED_POLICY
    headers: tuple[tuple[str, str], ...] = ()  # e.g. WWW-Authenticate, Retry-After, CORS preflight headers
    message: str | None = None  # short, safe explanation for the JSON error body


class Policy(Protocol):
    name: str
    type: str
    shadow: bool

    async def evaluate(self, req: PolicyRequest) -> PolicyVerdict: ...


def allow(policy: Policy, reason: str, **attributes: Any) -> PolicyVerdict:
    return PolicyVerdict(policy.name, policy.type, Verdict.ALLOW, reason, attributes)


def deny(policy: Policy, reason: str, status: int, outcome: Outcome, message: str | None = None,
         headers: tuple[tuple[str, str], ...] = (), **attributes: Any) -> PolicyVerdict:
    """A refusal, or in shadow mode a recorded would-be refusal that lets the request through."""
    if policy.shadow:
        return PolicyVerdict(policy.name, policy.type, Verdict.SHADOW_DENY, reason, attributes)
    return PolicyVerdict(policy.name, policy.type, Verdict.DENY, reason, attributes, True, status, outcome,
                         headers, message)


def error(policy: Policy, reason: str, fail_closed: bool, status: int, outcome: Outcome, message: str | None = None,
          headers: tuple[tuple[str, str], ...] = (), **attributes: Any) -> PolicyVerdict:
    """The policy could not decide (its key store or limiter is unreachable): verdict `error`, and its fail mode
    decides — fail-closed refuses (unless in shadow mode), fail-open lets the request through."""
    block = fail_closed and not policy.shadow
    return PolicyVerdict(policy.name, policy.type, Verdict.ERROR, reason, attributes, block, status, outcome,
                         headers if block else (), message if block else None)


def header_values(req: PolicyRequest, name: str) -> list[str]:
    name = name.lower()
    return [v for k, v in req.head.headers if k.lower() == name]
