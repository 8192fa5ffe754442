"""Smooth WRR's precomputed schedule must be exactly the sequence the step-by-step algorithm produces."""

from __future__ import annotations

import random

import pytest

from gatewatch.balancer.algorithms import CursorState, Endpoint, _swrr_step, smooth_weighted_round_robin


@pytest.mark.parametrize("weights", [[5, 1, 1], [3, 1], [2, 4, 6], [1] * 50, [7, 3, 10, 1, 1]])
def test_schedule_equals_step_by_step(weights):
    eps = tuple(Endpoint(f"e{i}", "h", i + 1, w, None, i) for i, w in enumerate(weights))
    fast, slow = CursorState(), CursorState()
    rng = random.Random(1)
    for _ in range(3 * sum(weights)):
        a = smooth_weighted_round_robin(eps, fast, None, {}, rng).endpoint.id
        b = _swrr_step(list(eps), slow).id
        assert a == b
    assert fast.schedule is not None  # the O(1) path was the one exercised
