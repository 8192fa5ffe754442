"""Retry eligibility (pure) and the retry budget.

`decide(cfg, method, failure, attempts_made, body, budget_left, time_left_s) -> RetryVerdict` answers whether
one more attempt may be made after a failed one, and why (a `telemetry.names.Reason` value either way):
- `Failure.CONNECT`: nothing reached the upstream (connect refused/timed out, no free connection): any method.
- `Failure.RESET` / `TIMEOUT` / `STATUS`: the upstream may have acted on the request: idempotent methods only.
- a request body that was streamed to a failed attempt is gone: never retried (`retry.body_not_replayable`).
- then the configured `retry_on`, the attempt count, the overall deadline and the budget, in that order.

`RetryBudget`: concurrent retries per upstream may be at most `percent` % of the requests active on it, never
fewer than `min_concurrent` (Envoy's retry budget), so a full outage cannot multiply the load. `RetryBudgets`
keeps one per upstream name for the life of the process (reloads included): a snapshot gets the map of its
upstreams' budgets when it is built and never adds to it.

`RetryState`: one request's retries on its upstream — the time each attempt may take (per-try timeout within the
overall deadline), the verdict after a failure, the backoff before the next try, and the budget accounting: the
request counts as active from start to `close()`; a granted retry holds its share of the budget from the verdict
(so failures arriving during its backoff see it taken) until its attempt ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Iterable, Mapping

from gatewatch.balancer.config import RetryBudgetConfig, RetryConfig
from gatewatch.telemetry.names import ErrorType, Reason

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})


class Failure(Enum):
    CONNECT = "connect_failure"
    RESET = "reset"
    TIMEOUT = "timeout"
    STATUS = "status"


def failure_of(error_type: ErrorType) -> Failure:
    if error_type in (ErrorType.CONNECT_REFUSED, ErrorType.CONNECT_TIMEOUT, ErrorType.UPSTREAM_TLS_ERROR,
                      ErrorType.DNS_ERROR, ErrorType.CONNECT_ERROR):
        return Failure.CONNECT  # nothing of the request was sent: safe to retry, as `connect_failure`
    if error_type is ErrorType.RESPONSE_TIMEOUT:
        return Failure.TIMEOUT
    return Failure.RESET  # reset, protocol error, read timeout before the head


class Body(Enum):
    NONE = "none"  # the request has no body
    UNREAD = "unread"  # it has one, and no byte of it was read yet (replayable as is)
    CONSUMED = "consumed"  # bytes went to a failed attempt: gone


@dataclass(frozen=True, slots=True)
class RetryVerdict:
    retry: bool
    reason: str


_WHY = {Failure.CONNECT: Reason.RETRY_CONNECT_FAILURE, Failure.RESET: Reason.RETRY_RESET,
        Failure.TIMEOUT: Reason.RETRY_TIMEOUT, Failure.STATUS: Reason.RETRY_STATUS}


def decide(cfg: RetryConfig, method: str, failure: Failure, attempts_made: int, body: Body, budget_left: int,
           time_left_s: float | None) -> RetryVerdict:
    if failure is not Failure.CONNECT and method not in IDEMPOTENT:
        return RetryVerdict(False, Reason.RETRY_REFUSED_NOT_IDEMPOTENT.value)
    if body is Body.CONSUMED:
        return RetryVerdict(False, Reason.RETRY_REFUSED_BODY_SENT.value)
    if failure.value not in cfg.retry_on:
        return RetryVerdict(False, Reason.RETRY_REFUSED_NOT_CONFIGURED.value)
    if attempts_made >= cfg.attempts:
        return RetryVerdict(False, Reason.RETRY_REFUSED_ATTEMPTS.value)
    if time_left_s is not None and time_left_s <= 0:
        return RetryVerdict(False, Reason.RETRY_REFUSED_DEADLINE.value)
    if budget_left <= 0:
        return RetryVerdict(False, Reason.RETRY_REFUSED_BUDGET.value)
    return RetryVerdict(True, _WHY[failure].value)


def backoff_s(cfg: RetryConfig, retry_number: int, rng) -> float:
    """Full-jitter exponential backoff before retry `retry_number` (1-based)."""
    cap = min(cfg.backoff_max_s, cfg.backoff_base_s * (2 ** (retry_number - 1)))
    return rng.uniform(0, cap) if cap > 0 else 0.0


class RetryBudget:
    __slots__ = ("active", "retrying")

    def __init__(self):
        self.active = 0  # requests in flight to this upstream
        self.retrying = 0  # of which are in a retry attempt now

    def left(self, cfg: RetryBudgetConfig) -> int:
        return max(cfg.min_concurrent, int(self.active * cfg.percent / 100)) - self.retrying


class RetryBudgets:
    def __init__(self) -> None:
        self._by_upstream: dict[str, RetryBudget] = {}

    def for_upstreams(self, names: Iterable[str]) -> Mapping[str, RetryBudget]:
        """The live budgets of these upstreams (created at 0 for new names), as a read-only map."""
        return MappingProxyType({n: self._by_upstream.setdefault(n, RetryBudget()) for n in names})


class RetryState:
    __slots__ = ("cfg", "budget", "deadline", "per_try_s")

    def __init__(self, cfg: RetryConfig, budget: RetryBudget, now: float, per_try_s: float, deadline_s: float | None):
        """`now`: the monotonic clock at the first attempt; `per_try_s`: how long each attempt waits for its
        response head (`per_try_timeout_s`, else the route's `response_s`); `deadline_s`: `cfg.deadline_s`
        (both as `snapshot.RoutePlan` read them out of the config once)."""
        self.cfg = cfg
        self.budget = budget
        self.deadline = now + deadline_s if deadline_s else None
        self.per_try_s = per_try_s
        budget.active += 1

    def attempt_timeout(self, now: float) -> float:
        """How long the next attempt may wait for its response head."""
        if self.deadline is None:
            return self.per_try_s
        return max(0.001, min(self.per_try_s, self.deadline - now))

    def decide(self, method: str, failure: Failure, attempts_made: int, body: Body,
               now: float) -> tuple[RetryVerdict, int]:
        """The verdict after a failed attempt, and the budget left when it was taken. A granted retry takes its
        share of the budget now."""
        left = self.budget.left(self.cfg.budget)
        verdict = decide(self.cfg, method, failure, attempts_made, body, left,
                         None if self.deadline is None else self.deadline - now)
        if verdict.retry:
            self.budget.retrying += 1
        return verdict, left

    def pause(self, retry_number: int, rng, now: float) -> float:
        """The backoff before retry `retry_number`, never past the deadline."""
        pause = backoff_s(self.cfg, retry_number, rng)
        if self.deadline is not None:
            pause = min(pause, max(0.0, self.deadline - now))
        return pause

    def attempt_ended(self, attempt_number: int) -> None:
        """Attempt `attempt_number` (0 = the first try) is over: a retry gives its share of the budget back."""
        if attempt_number:
            self.budget.retrying -= 1

    def close(self) -> None:
        self.budget.active -= 1
