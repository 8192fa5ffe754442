"""Every load-balancing algorithm, called as the pure function it is: exact sequences and distributions with a
seeded (or scripted) rng, deterministic in-flight tables, consistent hashing's key movement, and what every
answer says about its candidates and exclusions."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from gatewatch.balancer.algorithms import (ALGORITHMS, CursorState, Endpoint, NoHealthyEndpoint, Pick, _swrr_step,
                                 build_maglev, least_connections, least_request, maglev, ring_hash, round_robin,
                                 smooth_weighted_round_robin, weighted_random)
from gatewatch.balancer.config import Algorithm, PoolConfig
from gatewatch.balancer.pool import Pool

KEYS = tuple(f"user-{i}" for i in range(20_000))
FEW = KEYS[:4000]  # enough where no share of 20k is asserted


def endpoints(**weights: int) -> tuple[Endpoint, ...]:
    return tuple(Endpoint(id=name, host=f"10.0.0.{n + 1}", port=9000, weight=w, zone=None, index=n)
                 for n, (name, w) in enumerate(weights.items()))


class ScriptedRng:
    """An rng whose draws are written in the test: `random()` and `randrange()` answer from their own queues."""

    def __init__(self, randoms=(), indexes=()):
        self.randoms, self.indexes = list(randoms), list(indexes)
        self.randrange_calls: list[int] = []

    def random(self) -> float:
        return self.randoms.pop(0)

    def randrange(self, n: int) -> int:
        self.randrange_calls.append(n)
        i = self.indexes.pop(0)
        assert 0 <= i < n
        return i


class RecordingRng(random.Random):
    """A seeded rng that remembers the indexes it handed out (so a P2C pick can be checked against its sample)."""

    def __init__(self, seed):
        super().__init__(seed)
        self.drawn: list[int] = []

    def randrange(self, *args, **kwargs):
        i = super().randrange(*args, **kwargs)
        self.drawn.append(i)
        return i


def ids(picks) -> str:
    return " ".join(p.endpoint.id for p in picks)


def run(algo, eps, n, *, state=None, key=None, exclude=None, rng=None):
    state = state if state is not None else CursorState()
    rng = rng if rng is not None else random.Random(7)
    return [algo(eps, state, key, exclude or {}, rng) for _ in range(n)]


# --- round robin ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "exclude", "n", "expected"), [
    ({"a": 1}, {}, 3, "a a a"),
    ({"a": 1, "b": 1, "c": 1}, {}, 7, "a b c a b c a"),
    ({"a": 9, "b": 1, "c": 1}, {}, 6, "a b c a b c"),  # weights are ignored
    ({"a": 1, "b": 1, "c": 1}, {"a": "tried"}, 4, "b c b c"),
    ({"a": 1, "b": 1, "c": 1, "d": 1}, {"b": "tried", "c": "over_limit"}, 4, "a d a d"),
])
def test_round_robin_exact_sequence(weights, exclude, n, expected):
    assert ids(run(round_robin, endpoints(**weights), n, exclude=exclude)) == expected


def test_round_robin_picks_around_exclusions_leave_the_first_attempts_rotation_alone():
    eps, state, rng = endpoints(a=1, b=1, c=1), CursorState(), ScriptedRng()
    first, retries = [], []
    for _ in range(6):
        first.append(round_robin(eps, state, None, {}, rng).endpoint.id)
        retries.append(round_robin(eps, state, None, {first[-1]: "tried"}, rng).endpoint.id)
    assert first == ["a", "b", "c", "a", "b", "c"]  # as if no retry had happened
    assert all(r != f for r, f in zip(retries, first))


def test_round_robin_uses_no_randomness():
    picks = run(round_robin, endpoints(a=1, b=1), 4, rng=ScriptedRng())  # any draw would raise
    assert ids(picks) == "a b a b"


# --- smooth weighted round robin -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "picks", "expected"), [
    ({"a": 3, "b": 1}, 4000, {"a": 3000, "b": 1000}),
    ({"a": 1, "b": 1}, 4000, {"a": 2000, "b": 2000}),
    ({"a": 1, "b": 2, "c": 3, "d": 4}, 4000, {"a": 400, "b": 800, "c": 1200, "d": 1600}),
    ({"a": 6, "b": 4}, 1000, {"a": 600, "b": 400}),  # gcd-reduced period 5
    ({"a": 100, "b": 1}, 1010, {"a": 1000, "b": 10}),
])
def test_smooth_wrr_distribution_is_exact(weights, picks, expected):
    assert Counter(p.endpoint.id for p in run(smooth_weighted_round_robin, endpoints(**weights), picks)) == expected


@pytest.mark.parametrize(("weights", "exclude", "picks", "expected"), [
    ({"a": 3, "b": 1, "c": 5}, {"c": "ejected"}, 4000, {"a": 3000, "b": 1000}),  # the step-by-step path
    ({"a": 2, "b": 2, "c": 1}, {"a": "tried"}, 3000, {"b": 2000, "c": 1000}),
])
def test_smooth_wrr_distribution_with_exclusions_is_exact(weights, exclude, picks, expected):
    result = run(smooth_weighted_round_robin, endpoints(**weights), picks, exclude=exclude)
    assert Counter(p.endpoint.id for p in result) == expected


def longest_run(seq: list[str]) -> int:
    best = cur = 0
    prev = None
    for x in seq:
        cur = cur + 1 if x == prev else 1
        prev = x
        best = max(best, cur)
    return best


@pytest.mark.parametrize(("weights", "longest"), [
    ({"a": 1, "b": 1}, 1),  # strictly alternating: never 4 (or even 2) of the same in a row
    ({"a": 1, "b": 1, "c": 1, "d": 1}, 1),
    ({"a": 3, "b": 1}, 3),  # a a b a | a a b a: the period boundary makes three
    ({"a": 5, "b": 1, "c": 1}, 4),
])
def test_smooth_wrr_never_bursts(weights, longest):
    seq = [p.endpoint.id for p in run(smooth_weighted_round_robin, endpoints(**weights), 4000)]
    assert longest_run(seq) == longest


def test_smooth_wrr_one_to_one_sequence():
    assert ids(run(smooth_weighted_round_robin, endpoints(a=1, b=1), 6)) == "a b a b a b"


def test_smooth_wrr_huge_period_falls_back_to_step_by_step():
    weights = [10_000 if i % 2 else 9_999 for i in range(200)]  # period × endpoints far above the schedule budget
    eps = tuple(Endpoint(f"e{i}", "h", 1, w, None, i) for i, w in enumerate(weights))
    fast, slow = CursorState(), CursorState()
    rng = random.Random(0)
    got = [smooth_weighted_round_robin(eps, fast, None, {}, rng).endpoint.id for _ in range(500)]
    want = [_swrr_step(list(eps), slow).id for _ in range(500)]
    assert fast.schedule is None
    assert got == want


def test_smooth_wrr_rebuilds_its_schedule_for_a_new_endpoint_set():
    state = CursorState()
    first = run(smooth_weighted_round_robin, endpoints(a=3, b=1), 4, state=state)
    second = run(smooth_weighted_round_robin, endpoints(a=1, b=1, c=2), 400, state=state)
    assert Counter(p.endpoint.id for p in first) == {"a": 3, "b": 1}
    assert Counter(p.endpoint.id for p in second) == {"a": 100, "b": 100, "c": 200}


# --- weighted random -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("draw", "expected"), [
    (0.0, "a"),
    (0.4999, "a"),  # a owns [0, 3) of the total 6
    (0.5, "b"),
    (0.6666, "b"),  # b owns [3, 4)
    (0.6667, "c"),
    (0.9999999, "c"),
])
def test_weighted_random_maps_each_draw_to_its_weight_interval(draw, expected):
    pick = weighted_random(endpoints(a=3, b=1, c=2), CursorState(), None, {}, ScriptedRng(randoms=[draw]))
    assert pick.endpoint.id == expected


@pytest.mark.parametrize(("draw", "expected"), [(0.0, "a"), (0.74, "a"), (0.75, "c"), (0.99, "c")])
def test_weighted_random_intervals_over_the_remaining_candidates(draw, expected):
    pick = weighted_random(endpoints(a=3, b=100, c=1), CursorState(), None, {"b": "tried"},
                           ScriptedRng(randoms=[draw]))
    assert pick.endpoint.id == expected


@pytest.mark.parametrize(("weights", "picks"), [
    ({"a": 3, "b": 1}, 40_000),
    ({"a": 1, "b": 2, "c": 3, "d": 4}, 40_000),
])
def test_weighted_random_distribution_with_seeded_rng(weights, picks):
    eps, total = endpoints(**weights), sum(weights.values())
    counts = Counter(p.endpoint.id for p in run(weighted_random, eps, picks, rng=random.Random(1234)))
    assert set(counts) == set(weights)
    for name, w in weights.items():
        assert abs(counts[name] / picks - w / total) < 0.01, (name, counts)
    again = Counter(p.endpoint.id for p in run(weighted_random, eps, picks, rng=random.Random(1234)))
    assert again == counts  # the seed decides everything


def test_weighted_random_cache_follows_the_endpoint_set():
    state = CursorState()
    first = weighted_random(endpoints(a=1, b=1), state, None, {}, ScriptedRng(randoms=[0.9]))
    second = weighted_random(endpoints(a=1, b=1, c=98), state, None, {}, ScriptedRng(randoms=[0.9]))
    assert (first.endpoint.id, second.endpoint.id) == ("b", "c")


# --- least request (power of `choice_count` choices) ---------------------------------------------------------------

@pytest.mark.parametrize(("weights", "in_flight", "sampled", "choices", "expected"), [
    ({"a": 1, "b": 1, "c": 1}, {"a": 5, "b": 0, "c": 2}, [0, 1], 2, "b"),
    ({"a": 1, "b": 1, "c": 1}, {"a": 5, "b": 0, "c": 2}, [0, 2], 2, "c"),  # b was not sampled
    ({"a": 1, "b": 1, "c": 1}, {"a": 5, "b": 0, "c": 2}, [0, 0], 2, "a"),  # sampled twice: with replacement
    ({"a": 1, "b": 1, "c": 1}, {"a": 5, "b": 0, "c": 2}, [0, 2, 1], 3, "b"),  # choice_count 3 samples three
    ({"a": 1, "b": 1, "c": 1}, {}, [2, 0], 2, "c"),  # tie: the first sampled
    ({"a": 4, "b": 1}, {"a": 3, "b": 0}, [0, 1], 2, "a"),  # (3+1)/4 = 1 vs (0+1)/1 = 1: tie, first sampled
    ({"a": 4, "b": 1}, {"a": 2, "b": 0}, [1, 0], 2, "a"),  # 3/4 < 1: weight makes a less loaded
    ({"a": 1, "b": 4}, {"a": 0, "b": 4}, [0, 1], 2, "a"),  # 1 < 5/4
])
def test_least_request_keeps_the_least_loaded_sample(weights, in_flight, sampled, choices, expected):
    state = CursorState(in_flight=dict(in_flight))
    rng = ScriptedRng(indexes=sampled)
    pick = least_request(endpoints(**weights), state, None, {}, rng, choices)
    assert pick.endpoint.id == expected
    assert rng.indexes == []  # exactly `choices` samples were drawn
    assert rng.randrange_calls == [len(weights)] * choices


@pytest.mark.parametrize(("n", "choices", "samples"), [(1, 2, 1), (2, 5, 2), (3, 2, 2), (5, 4, 4)])
def test_least_request_sample_count(n, choices, samples):
    eps = endpoints(**{f"e{i}": 1 for i in range(n)})
    rng = ScriptedRng(indexes=[0] * samples)
    least_request(eps, CursorState(), None, {}, rng, choices)
    assert len(rng.randrange_calls) == samples


@pytest.mark.parametrize("choices", [2, 3])
def test_least_request_with_seeded_rng_never_picks_a_more_loaded_sample(choices):
    eps = endpoints(a=1, b=1, c=1, d=1)
    state = CursorState(in_flight={"a": 9, "b": 0, "c": 4, "d": 1})
    rng = RecordingRng(99)
    counts = Counter()
    for _ in range(4000):
        before = len(rng.drawn)
        pick = least_request(eps, state, None, {}, rng, choices)
        sample = [eps[i] for i in rng.drawn[before:]]
        assert len(sample) == choices
        loads = [state.in_flight[e.id] for e in sample]
        assert state.in_flight[pick.endpoint.id] == min(loads)
        counts[pick.endpoint.id] += 1
    # with replacement: P(pick = k-th least loaded) = ((n-k+1)^c - (n-k)^c) / n^c
    n = 4
    for k, name in enumerate(["b", "d", "c", "a"], start=1):
        share = ((n - k + 1) ** choices - (n - k) ** choices) / n ** choices
        assert abs(counts[name] / 4000 - share) < 0.025, (name, counts)


@pytest.mark.parametrize(("weights", "choices"), [
    ({"a": 3, "b": 1}, 2),
    ({"a": 2, "b": 1, "c": 1}, 2),
    ({"a": 1, "b": 2, "c": 3, "d": 4}, 2),
    ({"a": 1, "b": 2, "c": 3, "d": 4}, 3),
])
def test_least_request_respects_weights_under_load(weights, choices):
    """Requests that never finish pile up: P2C keeps in-flight per unit of weight level, so the counts end up
    proportional to the weights."""
    eps, total, picks = endpoints(**weights), sum(weights.values()), 4000
    state = CursorState(in_flight={k: 0 for k in weights})
    rng = random.Random(5)
    for _ in range(picks):
        state.in_flight[least_request(eps, state, None, {}, rng, choices).endpoint.id] += 1
    for name, w in weights.items():
        assert abs(state.in_flight[name] - picks * w / total) <= 0.01 * picks, state.in_flight


def test_least_request_samples_only_candidates():
    eps = endpoints(a=1, b=1, c=1)
    state = CursorState(in_flight={"a": 0, "b": 50, "c": 50})
    picks = run(lambda *a: least_request(*a, choices=2), eps, 200, state=state, exclude={"a": "tried"},
                rng=random.Random(3))
    assert {p.endpoint.id for p in picks} == {"b", "c"}


# --- least connections ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("weights", "in_flight", "n", "expected"), [
    ({"a": 1, "b": 1, "c": 1}, {"a": 2, "b": 0, "c": 1}, 3, "b b b"),
    ({"a": 1, "b": 1, "c": 1}, {}, 6, "a b c a b c"),  # idle pool: ties go round robin
    ({"a": 1, "b": 1, "c": 1}, {"a": 0, "b": 0, "c": 5}, 6, "a b a a b a"),  # the tie rotation skips c
    ({"a": 2, "b": 1}, {"a": 1, "b": 0}, 4, "a b a b"),  # 2/2 == 1/1: tie
    ({"a": 3, "b": 1}, {"a": 1, "b": 0}, 4, "a a a a"),  # 2/3 < 1
    ({"a": 1, "b": 3}, {"a": 0, "b": 3}, 3, "a a a"),  # 1 < 4/3
])
def test_least_connections_exact(weights, in_flight, n, expected):
    state = CursorState(in_flight=dict(in_flight))
    assert ids(run(least_connections, endpoints(**weights), n, state=state, rng=ScriptedRng())) == expected


def test_least_connections_follows_live_counts():
    eps = endpoints(a=1, b=2)
    state = CursorState(in_flight={"a": 0, "b": 0})
    seq = []
    for _ in range(30):
        pick = least_connections(eps, state, None, {}, ScriptedRng())
        state.in_flight[pick.endpoint.id] += 1
        seq.append(pick.endpoint.id)
    assert "".join(seq[:6]) == "bbabab"  # per unit of weight b is emptier; ties (picks 2 and 5) rotate
    assert state.in_flight == {"a": 10, "b": 20}  # exact: in-flight per unit of weight stays level


def test_least_connections_skips_excluded():
    state = CursorState(in_flight={"a": 0, "b": 7, "c": 3})
    picks = run(least_connections, endpoints(a=1, b=1, c=1), 3, state=state, exclude={"a": "over_limit"})
    assert ids(picks) == "c c c"


# --- consistent hashing --------------------------------------------------------------------------------------------

HASHERS = [pytest.param(ring_hash, id="ring_hash"), pytest.param(maglev, id="maglev")]


def owners(algo, eps, *, exclude=None, state=None, keys=KEYS) -> dict[str, str]:
    state = state if state is not None else CursorState()
    rng = ScriptedRng()  # a keyed pick draws nothing
    out = {}
    for k in keys:
        pick = algo(eps, state, k, exclude or {}, rng)
        assert pick.hashed
        out[k] = pick.endpoint.id
    return out


@pytest.mark.parametrize("algo", HASHERS)
def test_hash_same_key_same_instance(algo):
    eps = endpoints(a=1, b=1, c=1, d=1)
    state = CursorState()
    first = {k: algo(eps, state, k, {}, ScriptedRng()).endpoint.id for k in KEYS[:500]}
    again = {k: algo(eps, state, k, {}, ScriptedRng()).endpoint.id for k in reversed(KEYS[:500])}
    fresh = {k: algo(eps, CursorState(), k, {}, ScriptedRng()).endpoint.id for k in KEYS[:3]}
    assert first == again
    assert all(first[k] == v for k, v in fresh.items())  # no hidden state: a new cursor agrees
    assert set(first.values()) == {"a", "b", "c", "d"}


@pytest.mark.parametrize("algo", HASHERS)
@pytest.mark.parametrize("weights", [{"a": 1, "b": 1, "c": 1, "d": 1}, {"a": 1, "b": 2, "c": 3}, {"a": 5, "b": 1}])
def test_hash_respects_weights(algo, weights):
    counts = Counter(owners(algo, endpoints(**weights)).values())
    total = sum(weights.values())
    for name, w in weights.items():
        assert abs(counts[name] / len(KEYS) - w / total) < 0.025, (name, counts)


@pytest.mark.parametrize("algo", HASHERS)
@pytest.mark.parametrize("n", [2, 4, 7])
def test_hash_adding_an_instance_moves_at_most_one_nth(algo, n):
    before = owners(algo, endpoints(**{f"e{i}": 1 for i in range(n)}))
    after = owners(algo, endpoints(**{f"e{i}": 1 for i in range(n + 1)}))
    moved = [k for k in KEYS if before[k] != after[k]]
    assert len(moved) <= len(KEYS) / n
    assert len(moved) >= len(KEYS) / (n + 1) / 2  # the newcomer does get a share
    to_new = sum(1 for k in moved if after[k] == f"e{n}")
    if algo is ring_hash:
        assert to_new == len(moved)  # what moves, moves to the newcomer
    else:
        assert len(moved) - to_new <= 0.005 * len(KEYS)  # Maglev's rebuild shuffles a handful more, by design


def test_ring_hash_removing_an_instance_moves_only_its_own_keys():
    before = owners(ring_hash, endpoints(a=1, b=1, c=1, d=1))
    after = owners(ring_hash, endpoints(a=1, b=1, c=1))
    moved = {k for k in KEYS if before[k] != after[k]}
    assert moved == {k for k in KEYS if before[k] == "d"}


def test_maglev_removing_an_instance_moves_its_keys_and_barely_any_other():
    before = owners(maglev, endpoints(a=1, b=1, c=1, d=1))
    after = owners(maglev, endpoints(a=1, b=1, c=1))
    moved = {k for k in KEYS if before[k] != after[k]}
    own = {k for k in KEYS if before[k] == "d"}
    assert own <= moved
    assert len(moved - own) <= 0.002 * len(KEYS)  # Maglev's table rebuild disrupts a little, by design


@pytest.mark.parametrize("algo", HASHERS)
@pytest.mark.parametrize("gone", ["a", "c"])
def test_hash_excluding_an_instance_moves_only_its_own_keys(algo, gone):
    eps = endpoints(a=1, b=1, c=1, d=1)
    state = CursorState()
    before = owners(algo, eps, state=state, keys=FEW)
    after = owners(algo, eps, state=state, exclude={gone: "ejected"}, keys=FEW)
    moved = {k for k in FEW if before[k] != after[k]}
    assert moved == {k for k in FEW if before[k] == gone}
    assert gone not in after.values()
    spread = Counter(after[k] for k in moved)
    assert set(spread) == set("abcd") - {gone}  # its keys spread over the others
    assert min(spread.values()) > len(moved) / 6
    back = owners(algo, eps, state=state, keys=FEW)
    assert back == before  # and come back when it does


@pytest.mark.parametrize("algo", HASHERS)
def test_hash_excluding_all_but_one(algo):
    eps = endpoints(a=1, b=1, c=1, d=1)
    exclude = {"a": "tried", "b": "ejected", "d": "over_limit"}
    got = owners(algo, eps, exclude=exclude, keys=FEW)
    assert set(got.values()) == {"c"}


@pytest.mark.parametrize("algo", HASHERS)
def test_hash_with_all_endpoints_skips_non_candidates(algo):
    """In a pool the table is built over every instance; the candidates are the healthy subset."""
    everyone = endpoints(a=1, b=1, c=1, d=1)
    state = CursorState(all_endpoints=everyone)
    full = owners(algo, everyone, state=CursorState(all_endpoints=everyone))
    subset = tuple(e for e in everyone if e.id != "b")
    got = owners(algo, subset, state=state)
    moved = {k for k in KEYS if full[k] != got[k]}
    assert moved == {k for k in KEYS if full[k] == "b"}


@pytest.mark.parametrize("algo", HASHERS)
def test_hash_missing_key_falls_back_to_random(algo):
    eps = endpoints(a=1, b=1, c=1)
    pick = algo(eps, CursorState(), None, {"a": "tried"}, ScriptedRng(indexes=[1]))
    assert (pick.endpoint.id, pick.hashed, pick.candidates, pick.excluded) == ("c", False, 2, (("a", "tried"),))
    counts = Counter(p.endpoint.id for p in run(algo, eps, 3000, rng=random.Random(11)))
    assert set(counts) == {"a", "b", "c"} and min(counts.values()) > 900


def test_maglev_table_is_full_and_weighted():
    eps = endpoints(a=1, b=3)
    table = build_maglev(eps, size=1009)
    assert len(table) == 1009 and all(e is not None for e in table)
    counts = Counter(e.id for e in table)
    assert abs(counts["b"] / 1009 - 0.75) < 0.01


# --- what every answer says ----------------------------------------------------------------------------------------

def call(algorithm: Algorithm, eps, exclude, key="k", rng=None):
    rng = rng if rng is not None else random.Random(0)
    return ALGORITHMS[algorithm](eps, CursorState(), key, exclude, rng)


@pytest.mark.parametrize("algorithm", list(Algorithm))
@pytest.mark.parametrize(("exclude", "candidates", "excluded", "allowed"), [
    ({}, 4, (), set("abcd")),
    ({"b": "tried"}, 3, (("b", "tried"),), set("acd")),
    ({"d": "over_limit", "b": "tried"}, 2, (("b", "tried"), ("d", "over_limit")), set("ac")),  # endpoint order
    ({"zz": "tried"}, 4, (), set("abcd")),  # an unknown id excludes nothing
])
@pytest.mark.parametrize("key", ["some-key", None])
def test_every_algorithm_reports_candidates_and_exclusions(algorithm, exclude, candidates, excluded, allowed, key):
    eps = endpoints(a=1, b=2, c=1, d=3)
    rng = random.Random(4)
    state = CursorState()
    for _ in range(20):
        pick = ALGORITHMS[algorithm](eps, state, key, exclude, rng)
        assert isinstance(pick, Pick)
        assert pick.endpoint.id in allowed
        assert (pick.algorithm, pick.candidates, pick.excluded) == (algorithm, candidates, excluded)
        assert pick.hashed == (algorithm in (Algorithm.RING_HASH, Algorithm.MAGLEV) and key is not None)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_algorithm_answers_no_healthy_endpoint_when_all_are_excluded(algorithm):
    eps = endpoints(a=1, b=2, c=1)
    exclude = {"c": "over_limit", "a": "tried", "b": "ejected"}
    assert call(algorithm, eps, exclude) == NoHealthyEndpoint(
        algorithm, 0, (("a", "tried"), ("b", "ejected"), ("c", "over_limit")))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_every_algorithm_with_one_candidate_picks_it(algorithm):
    eps = endpoints(a=1, b=2, c=1)
    pick = call(algorithm, eps, {"a": "tried", "c": "tried"})
    assert (pick.endpoint.id, pick.candidates) == ("b", 1)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_pool_picks_with_every_algorithm(algorithm):
    extra = {"hash_key": {"source": "header", "name": "x-user"}} if algorithm in (
        Algorithm.RING_HASH, Algorithm.MAGLEV) else {}
    p = Pool(PoolConfig.model_validate({
        "name": "p", "algorithm": algorithm.value, **extra,
        "instances": [{"host": f"10.0.0.{n}", "port": 9000, "id": f"e{n}", "weight": n} for n in (1, 2, 3)]}))
    rng = random.Random(8)
    picks = []
    for i in range(300):  # requests that stay in flight: the least_* algorithms must spread too
        picks.append(p.pick(f"key-{i}", {"e2": "tried"}, rng))
        p.acquire(picks[-1].endpoint)
    assert {pk.endpoint.id for pk in picks} == {"e1", "e3"}
    assert {(pk.algorithm, pk.candidates, pk.excluded) for pk in picks} == {(algorithm, 2, (("e2", "tried"),))}
