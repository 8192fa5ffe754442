"""Rate-limit arithmetic (pure, fake clock) and the local store; the Redis store runs the same table."""

from __future__ import annotations

import pytest

from gatewatch.edge.policies.limiter import LocalStore, sliding_window, token_bucket
from tests.edge.policies.support import FakeClock


def run(alg, limit, window_s, times):
    state, out = None, []
    for t in times:
        state, hit = alg(state, t, limit, window_s)
        out.append((hit.allowed, hit.remaining))
    return out


@pytest.mark.parametrize("alg,limit,window_s,times,expected", [
    # a burst of `limit`, then refused
    (token_bucket, 3, 3.0, [0, 0, 0, 0], [(True, 2), (True, 1), (True, 0), (False, 0)]),
    # refill: 1 token per second
    (token_bucket, 3, 3.0, [0, 0, 0, 0.5, 1.0, 1.0], [(True, 2), (True, 1), (True, 0), (False, 0), (True, 0),
                                                      (False, 0)]),
    # a full bucket does not overfill after a long pause
    (token_bucket, 2, 2.0, [0, 100, 100, 100], [(True, 1), (True, 1), (True, 0), (False, 0)]),
    # sliding window: `limit` per window, refused after
    (sliding_window, 3, 10.0, [0, 1, 2, 3], [(True, 2), (True, 1), (True, 0), (False, 0)]),
    # next window: the previous one still weighs by its overlap (3 * 0.9 = 2.7 → no room at 11s)
    (sliding_window, 3, 10.0, [0, 1, 2, 11], [(True, 2), (True, 1), (True, 0), (False, 0)]),
    # ... at 17s the weight is 3 * 0.3 = 0.9 → room for 2 more
    (sliding_window, 3, 10.0, [0, 1, 2, 17, 17, 17], [(True, 2), (True, 1), (True, 0), (True, 1), (True, 0),
                                                       (False, 0)]),
    # two windows later everything is forgotten
    (sliding_window, 2, 10.0, [0, 0, 25, 25, 25], [(True, 1), (True, 0), (True, 1), (True, 0), (False, 0)]),
])
def test_algorithms(alg, limit, window_s, times, expected):
    assert run(alg, limit, window_s, times) == expected


@pytest.mark.parametrize("alg,times,retry_after", [
    (token_bucket, [0, 0, 0], 1.0),  # limit 2 per 2s: one token per second
    (sliding_window, [0, 0, 0], 2.0),  # limit 2 per 2s: the current window must end
])
def test_retry_after_when_refused(alg, times, retry_after):
    state = None
    for t in times:
        state, hit = alg(state, t, 2, 2.0)
    assert not hit.allowed and hit.retry_after_s == pytest.approx(retry_after)


async def test_local_store_keys_are_independent_and_bounded():
    clock = FakeClock()
    store = LocalStore(max_keys=2, monotonic=clock)
    assert (await store.hit("a", "token_bucket", 1, 60)).allowed
    assert not (await store.hit("a", "token_bucket", 1, 60)).allowed
    assert (await store.hit("b", "token_bucket", 1, 60)).allowed
    await store.hit("c", "token_bucket", 1, 60)  # evicts the least recently used key ("a")
    assert (await store.hit("a", "token_bucket", 1, 60)).allowed
    clock.advance(60)
    assert (await store.hit("a", "token_bucket", 1, 60)).allowed
