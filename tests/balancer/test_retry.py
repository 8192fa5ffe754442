"""Retry eligibility as a table over `decide(...)`, the backoff bounds, and the retry budget's arithmetic."""

from __future__ import annotations

import random

import pytest

from gatewatch.balancer.config import RetryBudgetConfig, RetryConfig
from gatewatch.balancer.retry import IDEMPOTENT, Body, Failure, RetryBudget, RetryVerdict, backoff_s, decide, failure_of
from gatewatch.telemetry.names import ErrorType, Reason

CONNECT, RESET, TIMEOUT, STATUS = Failure.CONNECT, Failure.RESET, Failure.TIMEOUT, Failure.STATUS
NONE, UNREAD, CONSUMED = Body.NONE, Body.UNREAD, Body.CONSUMED
ALL = {"retry_on": ["connect_failure", "reset", "timeout", "status"], "attempts": 3}


def yes(reason: Reason) -> RetryVerdict:
    return RetryVerdict(True, reason.value)


def no(reason: Reason) -> RetryVerdict:
    return RetryVerdict(False, reason.value)


@pytest.mark.parametrize(("cfg", "method", "failure", "made", "body", "budget", "time_left", "verdict"), [
    # a connect failure: nothing reached the upstream, any method
    (ALL, "GET", CONNECT, 1, NONE, 5, None, yes(Reason.RETRY_CONNECT_FAILURE)),
    (ALL, "POST", CONNECT, 1, UNREAD, 5, None, yes(Reason.RETRY_CONNECT_FAILURE)),
    (ALL, "PATCH", CONNECT, 1, NONE, 5, None, yes(Reason.RETRY_CONNECT_FAILURE)),
    (ALL, "CONNECT", CONNECT, 1, NONE, 5, None, yes(Reason.RETRY_CONNECT_FAILURE)),
    # reset / timeout / status: idempotent methods only
    (ALL, "GET", RESET, 1, NONE, 5, None, yes(Reason.RETRY_RESET)),
    (ALL, "PUT", RESET, 1, UNREAD, 5, None, yes(Reason.RETRY_RESET)),
    (ALL, "DELETE", TIMEOUT, 1, NONE, 5, None, yes(Reason.RETRY_TIMEOUT)),
    (ALL, "HEAD", STATUS, 1, NONE, 5, None, yes(Reason.RETRY_STATUS)),
    (ALL, "OPTIONS", STATUS, 1, NONE, 5, None, yes(Reason.RETRY_STATUS)),
    (ALL, "TRACE", TIMEOUT, 1, NONE, 5, None, yes(Reason.RETRY_TIMEOUT)),
    (ALL, "POST", RESET, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_IDEMPOTENT)),
    (ALL, "POST", TIMEOUT, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_IDEMPOTENT)),
    (ALL, "POST", STATUS, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_IDEMPOTENT)),
    (ALL, "PATCH", RESET, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_IDEMPOTENT)),
    (ALL, "get", RESET, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_IDEMPOTENT)),  # methods are case-sensitive
    # a consumed body is never retried, whatever the failure or method
    (ALL, "PUT", RESET, 1, CONSUMED, 5, None, no(Reason.RETRY_REFUSED_BODY_SENT)),
    (ALL, "POST", CONNECT, 1, CONSUMED, 5, None, no(Reason.RETRY_REFUSED_BODY_SENT)),
    (ALL, "GET", CONNECT, 1, CONSUMED, 5, None, no(Reason.RETRY_REFUSED_BODY_SENT)),
    (ALL, "POST", RESET, 1, CONSUMED, 5, None, no(Reason.RETRY_REFUSED_NOT_IDEMPOTENT)),  # the first refusal wins
    # retry_on is respected (default: connect_failure and reset)
    ({}, "GET", CONNECT, 1, NONE, 5, None, yes(Reason.RETRY_CONNECT_FAILURE)),
    ({}, "GET", RESET, 1, NONE, 5, None, yes(Reason.RETRY_RESET)),
    ({}, "GET", TIMEOUT, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_CONFIGURED)),
    ({}, "GET", STATUS, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_CONFIGURED)),
    ({"retry_on": ["timeout"]}, "GET", CONNECT, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_CONFIGURED)),
    ({"retry_on": ["timeout"]}, "GET", TIMEOUT, 1, NONE, 5, None, yes(Reason.RETRY_TIMEOUT)),
    ({"retry_on": []}, "POST", CONNECT, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_NOT_CONFIGURED)),
    # attempts count the first try
    ({"attempts": 1}, "GET", CONNECT, 1, NONE, 5, None, no(Reason.RETRY_REFUSED_ATTEMPTS)),
    ({"attempts": 2}, "GET", CONNECT, 1, NONE, 5, None, yes(Reason.RETRY_CONNECT_FAILURE)),
    ({"attempts": 2}, "GET", CONNECT, 2, NONE, 5, None, no(Reason.RETRY_REFUSED_ATTEMPTS)),
    ({"attempts": 5}, "GET", RESET, 4, NONE, 5, None, yes(Reason.RETRY_RESET)),
    ({"attempts": 5}, "GET", RESET, 5, NONE, 5, None, no(Reason.RETRY_REFUSED_ATTEMPTS)),
    # the overall deadline
    (ALL, "GET", RESET, 1, NONE, 5, 0.5, yes(Reason.RETRY_RESET)),
    (ALL, "GET", RESET, 1, NONE, 5, 0.0, no(Reason.RETRY_REFUSED_DEADLINE)),
    (ALL, "GET", RESET, 1, NONE, 5, -1.0, no(Reason.RETRY_REFUSED_DEADLINE)),
    # the budget
    (ALL, "GET", RESET, 1, NONE, 1, None, yes(Reason.RETRY_RESET)),
    (ALL, "GET", RESET, 1, NONE, 0, None, no(Reason.RETRY_REFUSED_BUDGET)),
    (ALL, "POST", CONNECT, 1, NONE, -2, None, no(Reason.RETRY_REFUSED_BUDGET)),
    # refusals in their documented order: method, body, retry_on, attempts, deadline, budget
    ({"attempts": 1}, "GET", TIMEOUT, 1, NONE, 0, 0.0, no(Reason.RETRY_REFUSED_NOT_CONFIGURED)),
    ({"attempts": 1}, "GET", RESET, 1, NONE, 0, 0.0, no(Reason.RETRY_REFUSED_ATTEMPTS)),
    (ALL, "GET", RESET, 1, NONE, 0, 0.0, no(Reason.RETRY_REFUSED_DEADLINE)),
])
def test_decide(cfg, method, failure, made, body, budget, time_left, verdict):
    assert decide(RetryConfig(**cfg), method, failure, made, body, budget, time_left) == verdict


def test_idempotent_methods():
    assert IDEMPOTENT == {"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"}


@pytest.mark.parametrize(("error_type", "failure"), [
    (ErrorType.CONNECT_REFUSED, CONNECT),
    (ErrorType.CONNECT_TIMEOUT, CONNECT),
    (ErrorType.RESPONSE_TIMEOUT, TIMEOUT),
    (ErrorType.UPSTREAM_RESET, RESET),
    (ErrorType.PROTOCOL_ERROR, RESET),
    (ErrorType.READ_TIMEOUT, RESET),
])
def test_failure_of(error_type, failure):
    assert failure_of(error_type) is failure


# --- backoff -------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("base", "cap", "caps"), [
    (0.025, 0.25, [0.025, 0.05, 0.1, 0.2, 0.25, 0.25, 0.25]),
    (0.1, 10.0, [0.1, 0.2, 0.4, 0.8, 1.6]),
    (1.0, 0.5, [0.5, 0.5]),
])
def test_backoff_is_full_jitter_below_the_exponential_cap(base, cap, caps):
    cfg = RetryConfig(backoff_base_s=base, backoff_max_s=cap)
    rng = random.Random(17)
    for n, bound in enumerate(caps, start=1):
        draws = [backoff_s(cfg, n, rng) for _ in range(500)]
        assert all(0.0 <= d <= bound for d in draws), n
        assert max(draws) > 0.9 * bound and min(draws) < 0.1 * bound  # the whole range, not a constant


@pytest.mark.parametrize(("base", "cap"), [(0.0, 0.25), (0.025, 0.0), (0.0, 0.0)])
def test_backoff_zero(base, cap):
    cfg = RetryConfig(backoff_base_s=base, backoff_max_s=cap)
    assert [backoff_s(cfg, n, random.Random(1)) for n in (1, 2, 5)] == [0.0, 0.0, 0.0]


def test_backoff_follows_the_seed():
    cfg = RetryConfig()
    a = [backoff_s(cfg, n, random.Random(3)) for n in (1, 2, 3)]
    b = [backoff_s(cfg, n, random.Random(3)) for n in (1, 2, 3)]
    assert a == b
    assert a == [random.Random(3).uniform(0, c) for c in (0.025, 0.05, 0.1)]


# --- the retry budget ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("percent", "floor", "active", "retrying", "left"), [
    (20.0, 3, 100, 0, 20),
    (20.0, 3, 100, 5, 15),
    (20.0, 3, 100, 20, 0),
    (20.0, 3, 100, 25, -5),  # already over: negative, refused by decide
    (20.0, 3, 2, 0, 3),  # the floor
    (20.0, 3, 0, 0, 3),
    (20.0, 3, 2, 2, 1),
    (20.0, 3, 19, 0, 3),  # 3.8 rounds down to 3
    (20.0, 3, 20, 0, 4),
    (20.0, 3, 24, 0, 4),
    (50.0, 0, 3, 0, 1),
    (100.0, 0, 7, 7, 0),
    (0.0, 0, 1000, 0, 0),  # retries disabled by budget
    (0.0, 5, 1000, 4, 1),
    (12.5, 1, 80, 0, 10),
])
def test_retry_budget_left(percent, floor, active, retrying, left):
    budget = RetryBudget()
    budget.active, budget.retrying = active, retrying
    assert budget.left(RetryBudgetConfig(percent=percent, min_concurrent=floor)) == left


def test_retry_budget_under_a_full_outage():
    """Every request fails and wants a retry: concurrent retries never exceed the budget share (or the floor)."""
    cfg = RetryConfig(attempts=10, retry_on=["connect_failure"])
    budget = RetryBudget()
    budget.active = 200
    granted = 0
    for _ in range(200):
        verdict = decide(cfg, "GET", CONNECT, 1, NONE, budget.left(cfg.budget), None)
        if verdict.retry:
            budget.retrying += 1
            granted += 1
        else:
            assert verdict.reason == Reason.RETRY_REFUSED_BUDGET.value
    assert granted == 40  # 20 % of 200
    budget.retrying -= 10  # ten retries finish
    assert budget.left(cfg.budget) == 10
