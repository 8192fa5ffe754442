"""A user who got the config wrong: each typical mistake is told in the user's terms, with its field path and,
for a misspelling, the fix ("did you mean 'timeouts'?"). Never pydantic's own words ("Input should be a valid
tuple", "Field required", "Input tag ... found using 'type'").

Each case is one mistake in an otherwise valid file, so the expected list is the whole list.
"""

from __future__ import annotations

import copy
import datetime
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
import yaml

from gatewatch.config import ConfigError, parse_config
from gatewatch.edge.policies.config import PolicyConfig

VALID = {
    "edge": {"listeners": [{"name": "public", "address": "127.0.0.1:8080"}],
             "routes": [{"name": "orders", "upstream": "shop", "match": {"path": {"prefix": "/"}}}]},
    "balancer": {"pools": [{"name": "shop", "instances": [{"id": "a", "host": "127.0.0.1", "port": 9101}]}]},
}
ROUTE = ("edge", "routes", 0)
POLICY = ROUTE + ("policies",)
JWT = {"type": "jwt", "name": "auth", "issuer": "https://idp", "audience": "api", "keys": [{"secret": "s" * 32}]}
# Every policy type, in the union's order (the list grows with the policies).
POLICY_TYPES = ", ".join(get_args(member.model_fields["type"].annotation)[0]
                         for member in get_args(get_args(PolicyConfig)[0]))
# What pydantic would have said; none of it may reach the user.
PYDANTIC_WORDS = ("Input should", "Field required", "valid tuple", "valid dictionary", "Input tag", "discriminator",
                  "Tuple should", "String should", "instance of", "unable to parse", "Unable to extract")


def with_(path: tuple, value) -> dict:
    data = copy.deepcopy(VALID)
    at = data
    for key in path[:-1]:
        at = at[key]
    if value is KeyError:
        del at[path[-1]]
    else:
        at[path[-1]] = value
    return data


def problems(data: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    return info.value.problems


MISTAKES = [
    # --- misspelt keys: the closest key at that place is suggested -------------------------------------------
    pytest.param(ROUTE + ("timeout",), {"connect_s": 1},
                 ["edge.routes[0].timeout: unknown key; did you mean 'timeouts'?"], id="route-key-misspelt"),
    pytest.param(ROUTE + ("timeouts",), {"conect_s": 1},
                 ["edge.routes[0].timeouts.conect_s: unknown key; did you mean 'connect_s'?"], id="nested-key"),
    pytest.param(("telemtry",), {}, ["telemtry: unknown key; did you mean 'telemetry'?"], id="top-level-key"),
    pytest.param(("balancer", "pools", 0, "health_check"), {"interval": 2},
                 ["balancer.pools[0].health_check.interval: unknown key; did you mean 'interval_s'?"],
                 id="unit-suffix-forgotten"),
    pytest.param(POLICY, [{"type": "rate_limit", "name": "rl", "limit": 1, "window_s": 1, "windw_s": 2}],
                 ["edge.routes[0].policies[0].rate_limit.windw_s: unknown key; did you mean 'window_s'?"],
                 id="policy-key-misspelt"),
    pytest.param(ROUTE + ("colour",), "blue",
                 ["edge.routes[0].colour: unknown key (valid keys here: name, match, upstream, upstreams, split, "
                  "mirror, aggregate, timeouts, rewrite, preserve_host, retries, policies, cache, websocket)"],
                 id="unknown-key-lists-the-valid-ones"),
    # --- policy types: a discriminated union, told as the `type` key ---------------------------------------------
    pytest.param(POLICY, [{"type": "ratelimit", "name": "rl", "limit": 1, "window_s": 1}],
                 ["edge.routes[0].policies[0].type: unknown type 'ratelimit'; did you mean 'rate_limit'?"],
                 id="policy-type-misspelt"),
    pytest.param(POLICY, [{"type": "oauth", "name": "x"}],
                 [f"edge.routes[0].policies[0].type: unknown type 'oauth' (known types: {POLICY_TYPES})"],
                 id="policy-type-unknown"),
    pytest.param(POLICY, [{"name": "rl", "limit": 1}],
                 [f"edge.routes[0].policies[0].type: missing required key (one of: {POLICY_TYPES})"],
                 id="policy-without-type"),
    pytest.param(POLICY, [{"type": ["jwt"], "name": "x"}],
                 [f"edge.routes[0].policies[0].type: expected one of: {POLICY_TYPES}; got a list"],
                 id="policy-type-not-a-string"),
    pytest.param(POLICY, ["rate_limit"],
                 ["edge.routes[0].policies[0]: expected a mapping (key: value), got the string 'rate_limit'"],
                 id="policy-written-as-a-string"),
    # --- a list where a map is expected, and the other way round ---------------------------------------------------
    pytest.param(("edge", "routes"), {"name": "orders", "upstream": "shop"},
                 ["edge.routes: expected a list, got a mapping (write each item on its own line starting with '- ')"],
                 id="map-for-a-list"),
    pytest.param(ROUTE + ("match", "methods"), "GET",
                 ["edge.routes[0].match.methods: expected a list, got the string 'GET' (write it as a list: [GET])"],
                 id="scalar-for-a-list"),
    pytest.param(ROUTE + ("timeouts",), [{"connect_s": 1}],
                 ["edge.routes[0].timeouts: expected a mapping (key: value), got a list (its items are mappings: "
                  "remove the '- ' before the keys)"], id="list-for-a-map"),
    pytest.param(("admin",), "127.0.0.1:9901",
                 ["admin: expected a mapping (key: value), got the string '127.0.0.1:9901'"], id="scalar-for-a-map"),
    # --- wrong scalar types, YAML's surprises among them ------------------------------------------------------
    pytest.param(ROUTE + ("timeouts",), {"connect_s": "fast"},
                 ["edge.routes[0].timeouts.connect_s: expected a number, got the string 'fast'"], id="word-for-a-number"),
    pytest.param(("workers",), 1.5, ["workers: expected a whole number, got 1.5"], id="fraction-for-an-integer"),
    pytest.param(ROUTE + ("preserve_host",), "maybe",
                 ["edge.routes[0].preserve_host: expected true or false, got the string 'maybe'"], id="not-a-boolean"),
    pytest.param(("edge", "listeners", 0, "address"), 8080,
                 ["edge.listeners[0].address: expected a string, got the number 8080 (quote it)"],
                 id="number-for-a-string"),
    pytest.param(ROUTE + ("upstream",), datetime.date(2024, 1, 2),
                 ["edge.routes[0].upstream: expected a string, got a date (2024-01-02) (quote it)"],
                 id="yaml-date-for-a-string"),
    pytest.param(("balancer", "pools", 0, "tls"), {"min_version": 1.2},
                 ["balancer.pools[0].tls.min_version: expected '1.2' or '1.3', got the number 1.2 (YAML reads it as "
                  "a number: quote it, '1.2')"], id="yaml-number-for-a-version"),
    pytest.param(POLICY, [{"type": "rate_limit", "name": "rl", "limit": 1, "window_s": 1, "store": "redis",
                           "redis": {"on_error": False}}],
                 ["edge.routes[0].policies[0].rate_limit.redis.on_error: expected 'open' or 'closed', got false "
                  "(YAML reads unquoted yes/no/on/off/true/false as a boolean: quote it)"], id="yaml-off-is-false"),
    pytest.param(POLICY, [dict(JWT, issuer=5)],
                 ["edge.routes[0].policies[0].jwt.issuer: expected a string or a list, got the number 5"],
                 id="union-told-once"),
    pytest.param(POLICY, [dict(JWT, issuer=["https://idp", 7])],
                 ["edge.routes[0].policies[0].jwt.issuer[1]: expected a string, got the number 7 (quote it)"],
                 id="union-branch-the-value-took"),
    # --- values: choices (with the closest), ranges, names ----------------------------------------------------
    pytest.param(("data_plane",), "fastest",
                 ["data_plane: expected 'fast' or 'aiohttp', got the string 'fastest'; did you mean 'fast'?"],
                 id="choice-misspelt"),
    pytest.param(("balancer", "pools", 0, "algorithm"), "round-robin",
                 ["balancer.pools[0].algorithm: expected 'round_robin', 'weighted_round_robin', 'random', "
                  "'least_request', 'least_connections', 'ring_hash' or 'maglev', got the string 'round-robin'; "
                  "did you mean 'round_robin'?"], id="enum-misspelt"),
    pytest.param(("workers",), 0, ["workers: must be greater than or equal to 1, got 0"], id="below-minimum"),
    pytest.param(ROUTE + ("timeouts",), {"connect_s": 1e9},
                 ["edge.routes[0].timeouts.connect_s: must be less than or equal to 300, got 1000000000"],
                 id="above-maximum"),
    pytest.param(ROUTE + ("timeouts",), {"connect_s": float("nan")},
                 ["edge.routes[0].timeouts.connect_s: expected a finite number, got nan"], id="nan"),
    pytest.param(("balancer", "pools", 0, "instances"), [], ["balancer.pools[0].instances: must not be empty"],
                 id="empty-list"),
    pytest.param(ROUTE + ("name",), "my route",
                 ["edge.routes[0].name: 'my route' is not a valid name: 1 to 63 letters, digits, '_', '.' or '-', "
                  "starting with a letter or digit (names become metric labels)"], id="bad-name"),
    # --- missing required keys ------------------------------------------------------------------------------
    pytest.param(ROUTE + ("upstream",), KeyError, ["edge.routes[0].upstream: missing required key"],
                 id="missing-key"),
    pytest.param(POLICY, [{k: v for k, v in JWT.items() if k != "issuer"}],
                 ["edge.routes[0].policies[0].jwt.issuer: missing required key"], id="missing-policy-key"),
    # --- names that refer to each other -------------------------------------------------------------------
    pytest.param(ROUTE + ("upstream",), "shpo",
                 ["edge.routes[0].upstream: unknown upstream 'shpo'; did you mean 'shop'?"], id="upstream-misspelt"),
    # --- keys YAML did not read as strings ------------------------------------------------------------------
    pytest.param(POLICY, [{"type": "headers", "name": "h", "set": {404: "x"}}],
                 ["edge.routes[0].policies[0].headers.set: the key 404 is not a string: quote it ('404')"],
                 id="number-as-a-key"),
    pytest.param(("telemetry",), {"resource_attributes": {"deployment.environment": 3}},
                 ['telemetry.resource_attributes["deployment.environment"]: expected a string, got the number 3 '
                  "(quote it)"], id="dotted-key-is-quoted"),
]


@pytest.mark.parametrize(("path", "value", "expected"), MISTAKES)
def test_a_mistake_is_told_in_the_users_terms(path, value, expected):
    found = problems(with_(path, value))
    assert found == expected
    assert not [p for p in found if any(word in p for word in PYDANTIC_WORDS)]


def test_validate_prints_one_clear_line_per_mistake(tmp_path):
    """The command line prints exactly these lines: no pydantic text, no traceback, exit 2."""
    data = with_(ROUTE + ("timeout",), {"connect_s": 1})
    data["edge"]["routes"][0]["policies"] = [{"type": "ratelimit", "name": "rl"}]
    data["edge"]["listeners"] = {"public": {"address": "127.0.0.1:8080"}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "gatewatch", "validate", str(path)], capture_output=True, text=True,
                         timeout=60, cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        f"{path}: invalid (3 problems)",
        "  edge.listeners: expected a list, got a mapping (write each item on its own line starting with '- ')",
        "  edge.routes[0].policies[0].type: unknown type 'ratelimit'; did you mean 'rate_limit'?",
        "  edge.routes[0].timeout: unknown key; did you mean 'timeouts'?",
    ]
