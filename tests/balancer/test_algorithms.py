"""Load-balancing picks, asserted exactly: sequences, distributions, exclusions and their reasons."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gatewatch.balancer.algorithms import (ALGORITHMS, CursorState, Endpoint, NoHealthyEndpoint, Pick, round_robin,
                                 smooth_weighted_round_robin)
from gatewatch.balancer.config import Algorithm, PoolConfig
from gatewatch.balancer.pool import Pool


def endpoints(**weights: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(id=name, host=f"10.0.0.{n + 1}", port=9000, weight=w, zone=None, index=n)
                 for n, (name, w) in enumerate(weights.items()))


def pool(algorithm: str, **weights: int) -> Pool:
    return Pool(PoolConfig.model_validate({
        "name": "p", "algorithm": algorithm,
        "instances": [{"host": f"10.0.0.{n + 1}", "port": 9000, "weight": w, "id": name}
                      for n, (name, w) in enumerate(weights.items())],
    }))


def sequence(pick, n: int, exclude=None) -> str:
    out = []
    for _ in range(n):
        result = pick(None, exclude or {}, random.Random(7))
        assert isinstance(result, Pick)
        out.append(result.endpoint.id)
    return " ".join(out)


# --- round robin ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "n", "expected"), [
    ({"a": 1}, 3, "a a a"),
    ({"a": 1, "b": 1, "c": 1}, 7, "a b c a b c a"),
    ({"a": 5, "b": 1}, 4, "a b a b"),  # round robin ignores weights
])
def test_round_robin_sequence(weights, n, expected):
    p = pool("round_robin", **weights)
    assert sequence(p.pick, n) == expected


def test_round_robin_rotates_over_the_remaining_candidates():
    eps = endpoints(a=1, b=1, c=1)
    state, rng = CursorState(), random.Random(1)
    picks = [round_robin(eps, state, None, exclude, rng) for exclude in ({}, {"b": "tried"}, {"b": "tried"})]
    assert [p.endpoint.id for p in picks] == ["a", "c", "a"]
    assert [p.candidates for p in picks] == [3, 2, 2]
    assert [p.excluded for p in picks] == [(), (("b", "tried"),), (("b", "tried"),)]
    assert all(p.algorithm is Algorithm.ROUND_ROBIN for p in picks)
    assert (state.counter, state.detour) == (1, 2)  # retries rotate on their own counter


# --- smooth weighted round robin ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "expected"), [
    ({"a": 5, "b": 1, "c": 1}, "a a b a c a a"),  # nginx's example: never five a's in a row
    ({"a": 1, "b": 1}, "a b"),
    ({"a": 2, "b": 1}, "a b a"),
    ({"a": 3, "b": 1}, "a a b a"),
    ({"a": 1, "b": 2, "c": 3}, "c b a c b c"),
])
def test_smooth_weighted_round_robin_sequence(weights, expected):
    p = pool("weighted_round_robin", **weights)
    cycle = len(expected.split())
    assert sequence(p.pick, 3 * cycle) == " ".join([expected] * 3)  # and it repeats exactly


@pytest.mark.parametrize(("weights", "picks", "expected"), [
    ({"a": 3, "b": 1}, 4000, {"a": 3000, "b": 1000}),
    ({"a": 5, "b": 1, "c": 1}, 7000, {"a": 5000, "b": 1000, "c": 1000}),
    ({"a": 1, "b": 1, "c": 1, "d": 1}, 1000, {"a": 250, "b": 250, "c": 250, "d": 250}),
    ({"a": 10_000, "b": 1}, 10_001, {"a": 10_000, "b": 1}),
])
def test_smooth_weighted_round_robin_distribution_is_exact(weights, picks, expected):
    p = pool("weighted_round_robin", **weights)
    rng = random.Random(42)
    counts = Counter(p.pick(None, {}, rng).endpoint.id for _ in range(picks))
    assert counts == expected


def test_smooth_weighted_round_robin_never_bursts():
    p = pool("weighted_round_robin", a=5, b=1, c=1)
    seq = "".join(sequence(p.pick, 700).split())
    runs = seq.replace("b", " ").replace("c", " ").split()
    assert max(len(run) for run in runs) == 4  # 'aa' ends one cycle and starts the next; never all five


def test_smooth_weighted_round_robin_with_exclusion():
    eps = endpoints(a=5, b=1, c=1)
    state, rng = CursorState(), random.Random(3)
    picks = [smooth_weighted_round_robin(eps, state, None, {"a": "ejected"}, rng) for _ in range(4)]
    assert [p.endpoint.id for p in picks] == ["b", "c", "b", "c"]
    assert {(p.candidates, p.excluded, p.algorithm) for p in picks} == {
        (2, (("a", "ejected"),), Algorithm.WEIGHTED_ROUND_ROBIN)}


# --- exclusions and no healthy endpoint ----------------------------------------------------------------------------

@pytest.mark.parametrize("algorithm", ["round_robin", "weighted_round_robin"])
@pytest.mark.parametrize(("exclude", "candidates", "excluded", "allowed"), [
    ({}, 3, (), {"a", "b", "c"}),
    ({"b": "tried"}, 2, (("b", "tried"),), {"a", "c"}),
    ({"c": "tried", "a": "unhealthy"}, 1, (("a", "unhealthy"), ("c", "tried")), {"b"}),  # in endpoint order
    ({"zz": "tried"}, 3, (), {"a", "b", "c"}),  # an unknown id excludes nothing
])
def test_exclusions(algorithm, exclude, candidates, excluded, allowed):
    p = pool(algorithm, a=2, b=1, c=1)
    rng = random.Random(0)
    for _ in range(8):
        result = p.pick(None, exclude, rng)
        assert isinstance(result, Pick)
        assert result.endpoint.id in allowed
        assert (result.candidates, result.excluded) == (candidates, excluded)
        assert result.algorithm == Algorithm(algorithm)


@pytest.mark.parametrize("algorithm", ["round_robin", "weighted_round_robin"])
def test_all_excluded_is_no_healthy_endpoint(algorithm):
    p = pool(algorithm, a=1, b=2)
    result = p.pick(None, {"b": "tried", "a": "unhealthy"}, random.Random(0))
    assert result == NoHealthyEndpoint(Algorithm(algorithm), 0, (("a", "unhealthy"), ("b", "tried")))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_algorithm_is_registered(algorithm):
    assert algorithm in ALGORITHMS


# --- the pool ------------------------------------------------------------------------------------------------------

def test_pool_endpoints_from_config():
    p = Pool(PoolConfig.model_validate({"name": "orders", "instances": [
        {"host": "10.0.0.1", "port": 9000, "id": "a", "zone": "z1", "weight": 3},
        {"host": "10.0.0.2", "port": 9001},
    ]}))
    assert p.name == "orders" and p.algorithm is Algorithm.ROUND_ROBIN
    assert p.endpoints == (Endpoint("a", "10.0.0.1", 9000, 3, "z1", 0),
                           Endpoint("10.0.0.2:9001", "10.0.0.2", 9001, 1, None, 1))
    assert p.endpoint("10.0.0.2:9001") is p.endpoints[1]
    assert p.endpoint("nope") is None


def test_pool_in_flight():
    p = pool("round_robin", a=1, b=1)
    a, b = p.endpoints
    p.acquire(a)
    p.acquire(a)
    p.acquire(b)
    p.release(a)
    assert p.in_flight == {"a": 1, "b": 1}


def test_pools_do_not_share_cursor_state():
    p1, p2 = pool("round_robin", a=1, b=1), pool("round_robin", a=1, b=1)
    rng = random.Random(0)
    assert [p1.pick(None, {}, rng).endpoint.id for _ in range(3)] == ["a", "b", "a"]
    assert p2.pick(None, {}, rng).endpoint.id == "a"
