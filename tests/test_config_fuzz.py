"""Fuzzing the config loader (issue 18, category 5): whatever the document, `parse_config` returns a config or
raises `ConfigError` whose every problem starts with where it is: a field path (`edge.routes[0].timeouts`,
`telemetry.resource_attributes["a b"]`), `(root)`, `(file)` or `line N, column M`. Never another exception,
never pydantic's own words.

Documents are a valid skeleton that touches most of the schema (every policy type, pools with health checks,
TLS-free upstreams, telemetry), mutated a few times: a value replaced by random YAML-ish data (nested mappings,
lists, scalars, dates, NaN, huge numbers, keys that are not strings), a key deleted, renamed (a typo, a random
string, another field's name), added, a value wrapped in a list or a mapping. A second test mutates the YAML
text itself and loads it from a file.

Budget: the `ci` profile of tests/conftest.py; `HYPOTHESIS_PROFILE=long` for a longer run outside the suite.
"""

from __future__ import annotations

import copy
import datetime
import math
import re
import tempfile
from pathlib import Path

import yaml
from hypothesis import event, given, note
from hypothesis import strategies as st

from gatewatch.config import ConfigError, GatewatchConfig, load_config, parse_config

SKELETON = {
    "data_plane": "fast",
    "workers": 1,
    "admin": {"address": "127.0.0.1:0"},
    "telemetry": {"service_name": "gw", "sampling": {"ratio": 0.5}, "resource_attributes": {"env": "test"},
                  "otlp": {"endpoint": "http://collector:4318", "protocol": "http/protobuf"}},
    "edge": {
        "listeners": [{"name": "public", "address": "127.0.0.1:0", "incoming_trace_context": "link",
                       "trusted_trace_sources": ["10.0.0.0/8"], "max_header_size": 8190}],
        "routes": [
            {"name": "orders", "upstream": "shop",
             "match": {"path": {"prefix": "/api"}, "methods": ["GET", "POST"], "hosts": ["api.example.com"],
                       "headers": [{"name": "X-Tenant", "present": True}], "query": [{"name": "v", "value": "2"}]},
             "timeouts": {"connect_s": 1, "response_s": 5, "idle_s": 10},
             "rewrite": {"strip_prefix": "/api"},
             "retries": {"attempts": 2, "retry_on": ["connect_failure", "status"], "statuses": [503]},
             "policies": [
                 {"type": "ip_access", "name": "ips", "allow": ["10.0.0.0/8"]},
                 {"type": "api_key", "name": "keys", "keys": [{"consumer": "c", "hash": "sha256:" + "0" * 64}]},
                 {"type": "rate_limit", "name": "rl", "limit": 10, "window_s": 1, "plans": {"gold": {"limit": 100,
                                                                                                 "window_s": 1}}},
                 {"type": "cors", "name": "cors", "allow_origins": ["https://app.example.com"]},
                 {"type": "size_limit", "name": "size", "max_bytes": 1024},
                 {"type": "headers", "name": "hdr", "set": {"X-A": "1"}, "response_remove": ["Server"]},
                 {"type": "path_rewrite", "name": "rw", "regex": "^/old/(.*)", "replacement": "/new/\\1"},
                 {"type": "json_schema", "name": "schema", "schema": {"type": "object"}},
                 {"type": "circuit_breaker", "name": "cb", "failures": 3},
                 {"type": "jwt", "name": "jwt", "issuer": "https://idp.example.com", "audience": "api",
                  "algorithms": ["HS256"], "keys": [{"secret": "s" * 32}]},
                 {"type": "introspection", "name": "opaque", "endpoint": "https://idp.example.com/introspect",
                  "client_id": "gw", "client_secret": "secret"},
             ]},
            {"name": "billing", "upstream": "billing", "match": {"path": {"template": "/b/{id}"}}},
        ],
        "upstreams": [{"name": "billing", "url": "http://billing.internal:8080"}],
    },
    "balancer": {"pools": [{
        "name": "shop", "algorithm": "weighted_round_robin",
        "instances": [{"id": "a", "host": "127.0.0.1", "port": 9101, "weight": 2, "zone": "z1"},
                      {"host": "127.0.0.2", "port": 9102}],
        "health_check": {"path": "/healthz", "interval_s": 2, "timeout_s": 0.5, "expected_statuses": ["200-399"]},
        "outlier_detection": {"consecutive_gateway_errors": 3},
        "slow_start": {"window_s": 30},
    }]},
}


def _field_names(model, seen=None) -> set[str]:
    """Every key the schema knows, anywhere: mutations that rename a key to another real one reach deeper."""
    seen = seen if seen is not None else set()
    out: set[str] = set()
    if model in seen:
        return out
    seen.add(model)
    for name, f in model.model_fields.items():
        out.add(f.alias or name)
        for t in re.findall(r"\b[A-Z]\w*Config\b", str(f.annotation)):
            sub = _find_model(t)
            if sub is not None:
                out |= _field_names(sub, seen)
    return out


def _find_model(name: str):
    import gatewatch.balancer.config as b
    import gatewatch.config as c
    import gatewatch.edge.config as e
    import gatewatch.edge.policies.config as p
    import gatewatch.telemetry.config as t

    return next((getattr(m, name) for m in (c, e, p, b, t) if hasattr(m, name)), None)


KEYS = sorted(_field_names(GatewatchConfig) | {"type", "jwt", "rate_limit", "ratelimit", "timeout"})
WORDS = KEYS + ["fast", "aiohttp", "redis", "local", "link", "continue", "round_robin", "maglev", "ring_hash",
                "127.0.0.1:80", "[::1]:0", "localhost", "/api", "http://x:1", "https://idp", "10.0.0.0/8", "GET",
                "sha256:" + "0" * 64, "1.2", "200-399", "{id}", "/b/{id}"]

scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-(2 ** 70), 2 ** 70), st.integers(-3, 70_000),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=24), st.sampled_from(WORDS),
    st.dates(), st.datetimes(timezones=st.just(datetime.timezone.utc)))
key = st.one_of(st.sampled_from(KEYS), st.text(max_size=12), st.integers(-5, 500), st.none(), st.booleans(),
                st.floats(allow_nan=False))
value = st.recursive(scalar, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(key, inner, max_size=4)), max_leaves=16)


def _paths(node, here=()) -> list[tuple]:
    out = [here]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, here + (k,))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, here + (i,))
    return out


def _typo(word: str, i: int, how: int) -> str:
    if not word:
        return "x"
    i %= len(word)
    return [word[:i] + word[i + 1:], word[:i] + word[i] + word[i:], word[:i] + "_" + word[i:],
            word.upper(), word.replace("_", "-")][how % 5] or "x"


@st.composite
def mutated_document(draw):
    doc = copy.deepcopy(SKELETON)
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(_paths(doc)))
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        move = draw(st.sampled_from(["replace", "replace", "delete", "rename", "typo", "add", "wrap", "wrap_map"]))
        if not path:  # the root: add a key, or replace the whole document
            if move == "replace":
                doc = draw(value)
                if not isinstance(doc, dict):
                    return doc
            elif isinstance(doc, dict):
                doc[draw(key)] = draw(value)
            continue
        last = path[-1]
        here = parent[last]
        if move == "replace":
            parent[last] = draw(value)
        elif move == "delete":
            del parent[last]
        elif move in ("rename", "typo") and isinstance(parent, dict):
            new = draw(key) if move == "rename" else _typo(str(last), draw(st.integers(0, 40)), draw(st.integers()))
            parent[new] = parent.pop(last)
        elif move == "add" and isinstance(here, dict):
            here[draw(key)] = draw(value)
        elif move == "add" and isinstance(here, list):
            here.append(draw(value))
        elif move == "wrap":
            parent[last] = [here]
        elif move == "wrap_map":
            parent[last] = {draw(key): here}
    return doc


# Where a problem is: a field path (plain keys dotted, list indexes in brackets, other keys quoted), `(root)`,
# `(file)` or a YAML position.
_KEY = r'(?:[A-Za-z0-9_-]+|\["(?:[^"\\]|\\.)*"\])'
_STEP = r'(?:\.[A-Za-z0-9_-]+|\[\d+\]|\["(?:[^"\\]|\\.)*"\])'
PROBLEM = re.compile(rf"^(?:\(root\)|\(file\)|line \d+, column \d+|{_KEY}{_STEP}*): \S", re.S)
PYDANTIC_WORDS = ("Input should", "Field required", "valid tuple", "valid dictionary", "Input tag", "Tuple should",
                  "String should", "instance of", "Unable to extract")


def check(problems: list[str]) -> None:
    assert problems, "a ConfigError names at least one problem"
    for p in problems:
        assert PROBLEM.match(p), f"a problem that does not start with where it is: {p!r}"
        assert not any(w in p for w in PYDANTIC_WORDS), f"pydantic's words reached the user: {p!r}"


@given(doc=mutated_document())
def test_any_document_gives_a_config_or_problems_with_their_place(doc):
    note(f"document: {doc!r}")
    try:
        cfg = parse_config(doc)
    except ConfigError as err:
        note(f"problems: {err.problems}")
        event(f"problems: {len(err.problems) if len(err.problems) < 3 else '3+'}")
        check(err.problems)
    else:
        event("a config")
        assert isinstance(cfg, GatewatchConfig)


def test_the_skeleton_is_valid():
    assert isinstance(parse_config(copy.deepcopy(SKELETON)), GatewatchConfig)


@st.composite
def mutated_text(draw) -> bytes:
    text = bytearray(yaml.safe_dump(draw(mutated_document()), allow_unicode=True).encode("utf-8"))
    for _ in range(draw(st.integers(0, 3))):
        if not text:
            break
        i = draw(st.integers(0, len(text) - 1))
        text[i:i + draw(st.integers(0, 3))] = draw(st.sampled_from(
            [b"", b":", b"- ", b"\t", b"  ", b"\n", b"{", b"[", b"'", b'"', b"&a ", b"*a", b"!!python/object ",
             b"%YAML 1.1\n", b"\xff", b"\x00"]) | st.binary(max_size=3))
    return bytes(text)


@given(text=mutated_text())
def test_any_file_gives_a_config_or_problems_with_their_place(text):
    note(f"text: {text!r}")
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "gatewatch.yaml"
        path.write_bytes(text)
        try:
            cfg = load_config(path)
        except ConfigError as err:
            note(f"problems: {err.problems}")
            event("invalid YAML" if err.problems[0].startswith("line ") else "problems")
            check(err.problems)
        else:
            event("a config")
            assert isinstance(cfg, GatewatchConfig)


def test_nan_and_huge_numbers_are_problems_not_crashes():
    doc = copy.deepcopy(SKELETON)
    doc["edge"]["routes"][0]["timeouts"]["connect_s"] = math.nan
    doc["balancer"]["pools"][0]["instances"][0]["port"] = 2 ** 80
    try:
        parse_config(doc)
    except ConfigError as err:
        check(err.problems)
        assert len(err.problems) == 2
