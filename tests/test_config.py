"""Config loading: a table of bad documents and the exact problems an operator is shown, valid documents, the CLI.

Each bad document is the smallest file that shows one mistake; the rest of it is valid, so the expected list is
the whole list. A broken item sits next to a valid sibling (second listener, second pool) because a list that
must not be empty, and whose every item is broken, also gets a spurious "at least 1 item" problem — a known bug,
pinned by `test_broken_only_item_is_not_reported_as_missing`.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gatewatch.config import ConfigError, GatewatchConfig, load_config, parse_config

POOLS = """\
balancer:
  pools:
    - name: orders
      instances: [{host: 10.0.0.1, port: 9000}, {host: 10.0.0.2, port: 9000}]
"""

LISTENERS = """\
listeners:
  - {name: main, address: "127.0.0.1:8080"}
"""


def doc(text: str) -> str:
    return textwrap.dedent(text)


def _block(text: str, indent: str) -> str:
    text = doc(text)
    return textwrap.indent(text if text.endswith("\n") else text + "\n", indent)


def edge_with(routes: str, listeners: str = LISTENERS, extra: str = "") -> str:
    """An `edge` section (`listeners`, then `routes:` holding the given items, then `extra` keys) plus the
    `orders` pool. Fragments are written unindented."""
    return ("edge:\n" + _block(listeners, "  ") + "  routes:\n" + _block(routes, "    ")
            + (_block(extra, "  ") if extra else "") + POOLS)


def second_pool(instances: str, extra: str = "") -> str:
    """A balancer whose pool `orders` is valid and whose second pool, `users`, has the given instances."""
    return (POOLS + f"    - {{name: users{extra}, instances: {instances}}}\n")


def second_listener(listener: str) -> str:
    """An edge listener list whose first listener is valid and whose second is the given flow mapping."""
    return f'listeners:\n  - {{name: main, address: "127.0.0.1:8080"}}\n  - {listener}\n'


def problems_of(tmp_path: Path, text: str | bytes) -> list[str]:
    path = tmp_path / "gatewatch.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.source == str(path)
    return info.value.problems


BAD_DOCUMENTS = [
    # --- unknown keys, at several depths -------------------------------------------------------------------------
    pytest.param("edg:\n  listeners: []\n" + POOLS, ["edg: unknown key; did you mean 'edge'?"],
                 id="unknown-top-level-section"),
    pytest.param(
        edge_with("- {name: r, upstream: orders}", listeners=doc("""\
              listeners:
                - {name: main, address: "127.0.0.1:8080"}
                - {name: alt, address: "127.0.0.1:8081", adress: "127.0.0.1:8082"}
            """)),
        ["edge.listeners[1].adress: unknown key; did you mean 'address'?"], id="unknown-key-in-listener"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {prefx: /api}}}"),
                 ["edge.routes[0].match.path.prefx: unknown key; did you mean 'prefix'?"],
                 id="unknown-key-in-path-match"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {headers: [{name: x, value: y, valeu: z}]}}"),
                 ["edge.routes[0].match.headers[0].valeu: unknown key; did you mean 'value'?"],
                 id="unknown-key-in-header-match"),
    pytest.param("telemetry:\n  otlp: {endpiont: 'http://c:4318'}\n" + POOLS,
                 ["telemetry.otlp.endpiont: unknown key; did you mean 'endpoint'?"],
                 id="unknown-key-in-telemetry-otlp"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}, {host: 10.0.0.3, port: 9000, wieght: 2}]"),
                 ["balancer.pools[1].instances[1].wieght: unknown key; did you mean 'weight'?"],
                 id="unknown-key-in-instance"),
    # --- missing required fields ---------------------------------------------------------------------------------
    pytest.param(
        edge_with("- {name: r, upstream: orders}", listeners=doc("""\
              listeners:
                - {name: main, address: "127.0.0.1:8080"}
                - {name: alt}
            """)),
        ["edge.listeners[1].address: missing required key"], id="listener-without-address"),
    pytest.param(edge_with("- {name: r}"), ["edge.routes[0].upstream: missing required key"],
                 id="route-without-upstream"),
    pytest.param(edge_with("- {upstream: orders}"), ["edge.routes[0].name: missing required key"],
                 id="route-without-name"),
    pytest.param("edge:\n  routes: [{name: r, upstream: orders}]\n" + POOLS, ["edge.listeners: missing required key"],
                 id="edge-without-listeners"),
    pytest.param(doc("""\
        balancer:
          pools:
            - {name: orders, instances: [{host: 10.0.0.1, port: 9000}]}
            - {name: users}
        """), ["balancer.pools[1].instances: missing required key"], id="pool-without-instances"),
    pytest.param("balancer: {}\n", ["balancer.pools: missing required key"], id="balancer-without-pools"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}, {port: 9000}]"),
                 ["balancer.pools[1].instances[1].host: missing required key"], id="instance-without-host"),
    # --- addresses and ports -------------------------------------------------------------------------------------
    pytest.param(edge_with("- {name: r, upstream: orders}", listeners=second_listener("{name: alt, address: localhost}")),
                 ["edge.listeners[1].address: expected 'host:port', got 'localhost'"], id="address-without-port"),
    pytest.param(edge_with("- {name: r, upstream: orders}", listeners=second_listener("{name: alt, address: '::1:80'}")),
                 ["edge.listeners[1].address: expected 'host:port', got '::1:80'"], id="ipv6-address-without-brackets"),
    pytest.param(
        edge_with("- {name: r, upstream: orders}", listeners=second_listener("{name: alt, address: '0.0.0.0:70000'}")),
        ["edge.listeners[1].address: port 70000 is out of range 0-65535"], id="listener-port-out-of-range"),
    pytest.param("admin: {address: 'nowhere'}\n" + POOLS, ["admin.address: expected 'host:port', got 'nowhere'"],
                 id="admin-address-without-port"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}, {host: 10.0.0.3, port: 0}]"),
                 ["balancer.pools[1].instances[1].port: must be greater than or equal to 1, got 0"],
                 id="instance-port-zero"),
    pytest.param(second_pool("[{host: '10.0.0.2:9000', port: 9000}, {host: 10.0.0.3, port: 9000}]"),
                 ["balancer.pools[1].instances[0].host: must be a bare host name or IP address "
                  "(put the port in 'port', no scheme)"], id="instance-host-with-port"),
    pytest.param(edge_with("- {name: r, upstream: billing}",
                           extra="upstreams: [{name: billing, url: 'http://billing:8080/v1'}]\n"),
                 ["edge.upstreams[0].url: expected 'http://host:port' (no path), got 'http://billing:8080/v1'"],
                 id="remote-upstream-url-with-path"),
    # --- duplicate names -----------------------------------------------------------------------------------------
    pytest.param(edge_with("""\
        - {name: orders, upstream: orders, match: {path: {prefix: /a}}}
        - {name: orders, upstream: orders, match: {path: {prefix: /b}}}
        """), ["edge.routes[1].name: duplicate name 'orders'"], id="duplicate-route"),
    pytest.param(
        edge_with("- {name: r, upstream: orders}", listeners=doc("""\
              listeners:
                - {name: main, address: "127.0.0.1:8080"}
                - {name: main, address: "127.0.0.1:8081"}
            """)),
        ["edge.listeners[1].name: duplicate name 'main'"], id="duplicate-listener"),
    pytest.param(doc("""\
        balancer:
          pools:
            - {name: orders, instances: [{host: 10.0.0.1, port: 9000}]}
            - {name: users, instances: [{host: 10.0.0.2, port: 9000}]}
            - {name: orders, instances: [{host: 10.0.0.3, port: 9000}]}
        """), ["balancer.pools[2].name: duplicate name 'orders'"], id="duplicate-pool"),
    pytest.param(doc("""\
        balancer:
          pools:
            - name: orders
              instances: [{host: 10.0.0.1, port: 9000}, {host: 10.0.0.2, port: 9000}, {host: 10.0.0.1, port: 9000}]
        """), ["balancer.pools[0].instances[2]: duplicate instance '10.0.0.1:9000'"], id="duplicate-instance-address"),
    pytest.param(doc("""\
        balancer:
          pools:
            - name: orders
              instances: [{host: 10.0.0.1, port: 9000, id: a}, {host: 10.0.0.2, port: 9000, id: a}]
        """), ["balancer.pools[0].instances[1]: duplicate instance 'a'"], id="duplicate-instance-id"),
    pytest.param(edge_with("- {name: r, upstream: orders}", extra=doc("""\
          upstreams:
            - {name: billing, url: 'http://billing:8080'}
            - {name: billing, url: 'http://billing2:8080'}
        """)), ["edge.upstreams[1].name: duplicate name 'billing'"], id="duplicate-remote-upstream"),
    pytest.param(edge_with("- {name: r, upstream: orders}",
                           extra="upstreams: [{name: orders, url: 'http://orders:8080'}]\n"),
                 ["edge.upstreams[0].name: 'orders' is also a pool name; names must be unique"],
                 id="remote-upstream-named-like-pool"),
    # --- references between sections -----------------------------------------------------------------------------
    pytest.param(edge_with("""\
        - {name: a, upstream: orders, match: {path: {prefix: /a}}}
        - {name: b, upstream: orders, match: {path: {prefix: /b}}}
        - {name: c, upstream: ordrs, match: {path: {prefix: /c}}}
        """), ["edge.routes[2].upstream: unknown upstream 'ordrs'; did you mean 'orders'?"],
        id="route-names-unknown-upstream"),
    pytest.param(doc("""\
        balancer:
          listeners: [{name: lb, address: "127.0.0.1:9090"}]
          routes: [{name: r, upstream: users}]
          pools: [{name: orders, instances: [{host: 10.0.0.1, port: 9000}]}]
        """), ["balancer.routes[0].upstream: unknown pool 'users'"], id="balancer-route-names-unknown-pool"),
    pytest.param(doc("""\
        edge:
          listeners: [{name: main, address: "127.0.0.1:8080"}]
          routes: [{name: r, upstream: billing}]
          upstreams: [{name: billing, url: "http://billing:8080"}]
        balancer:
          listeners: [{name: lb, address: "127.0.0.1:9090"}]
          routes: [{name: r, upstream: billing}]
          pools: [{name: orders, instances: [{host: 10.0.0.1, port: 9000}]}]
        """), ["balancer.routes[0].upstream: unknown pool 'billing'"], id="balancer-route-cannot-use-edge-upstream"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {prefix: /api}}, rewrite: {strip_prefix: /ap}}"),
                 ["edge.routes[0].rewrite.strip_prefix: '/ap' must be a prefix of the route's match.path.prefix"],
                 id="strip-prefix-cuts-a-segment"),
    pytest.param(
        edge_with("- {name: r, upstream: orders, match: {path: {prefix: /api}}, rewrite: {strip_prefix: /api/v1}}"),
        ["edge.routes[0].rewrite.strip_prefix: '/api/v1' must be a prefix of the route's match.path.prefix"],
        id="strip-prefix-longer-than-path-prefix"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {exact: /api}}, rewrite: {strip_prefix: /api}}"),
                 ["edge.routes[0].rewrite.strip_prefix: '/api' must be a prefix of the route's match.path.prefix"],
                 id="strip-prefix-on-exact-path"),
    pytest.param(edge_with("- {name: r, upstream: orders, rewrite: {strip_prefix: api}}"),
                 ["edge.routes[0].rewrite.strip_prefix: must start with '/'"], id="strip-prefix-relative"),
    # --- path, method and host matches ---------------------------------------------------------------------------
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {}}}"),
                 ["edge.routes[0].match.path: give exactly one of 'exact', 'prefix' or 'template'"],
                 id="path-match-without-kind"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {exact: /a, prefix: /a}}}"),
                 ["edge.routes[0].match.path: give exactly one of 'exact', 'prefix' or 'template'"],
                 id="path-match-with-two-kinds"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {prefix: api}}}"),
                 ["edge.routes[0].match.path: prefix: must start with '/'"], id="path-prefix-relative"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {exact: '/a?b=1'}}}"),
                 ["edge.routes[0].match.path: exact: must not contain a query or fragment"], id="path-with-query"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {template: '/orders/x{id}'}}}"),
                 ["edge.routes[0].match.path: template: segment 'x{id}' must be a whole '{name}' or contain no braces"],
                 id="template-param-not-whole-segment"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {template: '/orders/{1d}'}}}"),
                 ["edge.routes[0].match.path: template: segment '{1d}' must be a whole '{name}' or contain no braces"],
                 id="template-param-bad-name"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {path: {template: '/a/{id}/b/{id}'}}}"),
                 ["edge.routes[0].match.path: template: parameter names must be unique"], id="template-duplicate-param"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {methods: [GET, post]}}"),
                 ["edge.routes[0].match.methods: 'post' is not an upper-case HTTP method"], id="method-lower-case"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {methods: ['GET POST']}}"),
                 ["edge.routes[0].match.methods: 'GET POST' is not an upper-case HTTP method"], id="method-with-space"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {hosts: ['*example.com']}}"),
                 ["edge.routes[0].match.hosts: '*example.com' is not a host name or '*.domain' wildcard"],
                 id="host-wildcard-without-dot"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {hosts: [api.example.com, 'a.*.example.com']}}"),
                 ["edge.routes[0].match.hosts: 'a.*.example.com' is not a host name or '*.domain' wildcard"],
                 id="host-wildcard-in-the-middle"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {headers: [{name: x-tenant}]}}"),
                 ["edge.routes[0].match.headers[0]: give exactly one of 'value' or 'present'"],
                 id="header-match-without-condition"),
    pytest.param(edge_with("- {name: r, upstream: orders, match: {query: [{name: v, value: '1', present: true}]}}"),
                 ["edge.routes[0].match.query[0]: give exactly one of 'value' or 'present'"],
                 id="query-match-with-two-conditions"),
    # --- values out of range -------------------------------------------------------------------------------------
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}, {host: 10.0.0.3, port: 9000, weight: 0}]"),
                 ["balancer.pools[1].instances[1].weight: must be greater than or equal to 1, got 0"],
                 id="weight-zero"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}]", extra=", algorithm: least_conn"),
                 ["balancer.pools[1].algorithm: expected 'round_robin', 'weighted_round_robin', 'random', "
                  "'least_request', 'least_connections', 'ring_hash' or 'maglev', got the string 'least_conn'; "
                  "did you mean 'least_connections'?"],
                 id="unknown-algorithm"),
    # --- balancer knobs that would do nothing, or could never work --------------------------------------------
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}]", extra=", algorithm: ring_hash"),
                 ["balancer.pools[1]: algorithm ring_hash needs 'hash_key' (what to hash)"], id="hash-without-key"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}]", extra=", hash_key: {source: client_address}"),
                 ["balancer.pools[1]: 'hash_key' is only used by ring_hash and maglev, not round_robin"],
                 id="hash-key-ignored"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}]", extra=", slow_start: {window_s: 10}"),
                 ["balancer.pools[1]: 'slow_start' ramps weights, which round_robin does not use (use "
                  "weighted_round_robin, random, least_request or least_connections)"], id="slow-start-ignored"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}]",
                             extra=", failover: {min_healthy_percent: 50, panic_threshold_percent: 60}"),
                 ["balancer.pools[1].failover: panic_threshold_percent must not exceed min_healthy_percent (a level "
                  "healthy enough to take traffic cannot be in panic)"], id="panic-above-failover"),
    pytest.param(second_pool("[{host: 10.0.0.2, port: 9000}]",
                             extra=", health_check: {interval_s: 1, timeout_s: 2, expected_statuses: ['200-199']}"),
                 ["balancer.pools[1].health_check.expected_statuses: '200-199' is not a status code or range like "
                  "200-399"], id="health-check-bad-status-range"),
    pytest.param(edge_with("- {name: r, upstream: orders, retries: {statuses: [404]}}"),
                 ["edge.routes[0].retries.statuses: 404 is not a 5xx status (only server errors are retried)"],
                 id="retry-on-4xx"),
    pytest.param(edge_with("- {name: r, upstream: orders, timeouts: {connect_s: 0}}"),
                 ["edge.routes[0].timeouts.connect_s: must be greater than 0, got 0"], id="timeout-zero"),
    pytest.param(edge_with("- {name: 'bad name', upstream: orders}"),
                 ["edge.routes[0].name: 'bad name' is not a valid name: 1 to 63 letters, digits, '_', '.' or '-', "
                  "starting with a letter or digit (names become metric labels)"],
                 id="route-name-with-space"),
    # --- whole-file shape ----------------------------------------------------------------------------------------
    pytest.param("", ["(root): the file is empty"], id="empty-file"),
    pytest.param("# only a comment\n", ["(root): the file is empty"], id="comments-only"),
    pytest.param("- edge\n- balancer\n", ["(root): expected a mapping of sections, got list"], id="root-is-a-list"),
    pytest.param("gatewatch\n", ["(root): expected a mapping of sections, got str"], id="root-is-a-scalar"),
    pytest.param("admin: {address: '127.0.0.1:9901'}\n",
                 ["(root): declare an 'edge' section, a 'balancer' section, or both"], id="neither-edge-nor-balancer"),
    pytest.param("{}\n", ["(root): declare an 'edge' section, a 'balancer' section, or both"], id="empty-mapping"),
    pytest.param("edge:\n" + _block(LISTENERS, "  ") + POOLS, ["edge.routes: at least one route is needed"], id="edge-without-routes"),
    pytest.param(doc("""\
        balancer:
          listeners: [{name: lb, address: "127.0.0.1:9090"}]
          pools: [{name: orders, instances: [{host: 10.0.0.1, port: 9000}]}]
        """), ["balancer.routes: required when balancer.listeners is set (which pool serves a request?)"],
        id="balancer-listeners-without-routes"),
    pytest.param(doc("""\
        balancer:
          routes: [{name: r, upstream: orders}]
          pools: [{name: orders, instances: [{host: 10.0.0.1, port: 9000}]}]
        """), ["balancer.listeners: balancer.routes are set but no listener would serve them"],
        id="balancer-routes-without-listeners"),
    # --- addresses used twice ------------------------------------------------------------------------------------
    pytest.param(
        edge_with("- {name: r, upstream: orders}", listeners=doc("""\
              listeners:
                - {name: main, address: "127.0.0.1:8080"}
                - {name: alt, address: "127.0.0.1:8080"}
            """)),
        ["edge.listeners[1].address: 127.0.0.1:8080 is already used by edge.listeners[0]"],
        id="two-edge-listeners-one-address"),
    pytest.param(doc("""\
        edge:
          listeners: [{name: main, address: "127.0.0.1:8080"}]
          routes: [{name: r, upstream: orders}]
        balancer:
          listeners: [{name: lb, address: "127.0.0.1:8080"}]
          routes: [{name: r, upstream: orders}]
          pools: [{name: orders, instances: [{host: 10.0.0.1, port: 9000}]}]
        """), ["balancer.listeners[0].address: 127.0.0.1:8080 is already used by edge.listeners[0]"],
        id="edge-and-balancer-listener-one-address"),
    pytest.param(edge_with("- {name: r, upstream: orders}", listeners="listeners: [{name: main, address: '127.0.0.1:9901'}]\n"),
                 ["edge.listeners[0].address: 127.0.0.1:9901 is already used by admin.address"],
                 id="listener-on-default-admin-address"),
    # --- several problems in one file: all of them, in order -----------------------------------------------------
    pytest.param(edge_with("""\
        - {name: a, upstream: nope, match: {path: {prefix: /a}}, rewrite: {strip_prefix: /b}}
        - {name: a, upstream: orders}
        """), ["edge.routes[1].name: duplicate name 'a'",
               "edge.routes[0].upstream: unknown upstream 'nope'",
               "edge.routes[0].rewrite.strip_prefix: '/b' must be a prefix of the route's match.path.prefix"],
        id="several-semantic-problems"),
    pytest.param(edge_with("""\
        - {name: a, upstream: orders, match: {methods: [get]}}
        - {name: b, upstream: orders, match: {hosts: ['*x']}, bogus: 1}
        """), ["edge.routes[0].match.methods: 'get' is not an upper-case HTTP method",
               "edge.routes[1].match.hosts: '*x' is not a host name or '*.domain' wildcard",
               "edge.routes[1].bogus: unknown key (valid keys here: name, match, upstream, upstreams, split, mirror, "
               "aggregate, timeouts, rewrite, preserve_host, retries, policies, cache, websocket)"],
        id="several-schema-problems"),
]


@pytest.mark.parametrize(("text", "expected"), BAD_DOCUMENTS)
def test_bad_document_reports_exact_problems(tmp_path, text, expected):
    assert problems_of(tmp_path, text) == expected


def test_yaml_syntax_error_names_line_and_column(tmp_path):
    text = doc("""\
        edge:
          listeners:
            - {name: main, address: "127.0.0.1:8080"
          routes: []
        """)
    problems = problems_of(tmp_path, text)
    assert len(problems) == 1
    assert problems[0].startswith("line 4, column 3: invalid YAML: "), problems


def test_yaml_tab_indentation_is_a_syntax_error(tmp_path):
    problems = problems_of(tmp_path, "edge:\n\tlisteners: []\n")
    assert len(problems) == 1
    assert problems[0].startswith("line 2, column 1: invalid YAML: "), problems


@pytest.mark.parametrize(("make", "expected"), [
    pytest.param(lambda d: d / "missing.yaml", "(file): cannot read: No such file or directory", id="missing"),
    pytest.param(lambda d: d, "(file): cannot read: Is a directory", id="directory"),
])
def test_unreadable_file(tmp_path, make, expected):
    path = make(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems == [expected]
    assert info.value.source == str(path)


def test_file_that_is_not_utf8(tmp_path):
    assert problems_of(tmp_path, b"edge: \xff\xfe\n") == ["(file): not UTF-8 text"]


def test_error_message_lists_source_and_every_problem(tmp_path):
    path = tmp_path / "x.yaml"
    path.write_text("", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: 1 problem(s)\n(root): the file is empty"


@pytest.mark.parametrize(("data", "expected"), [
    pytest.param(None, ["(root): the file is empty"], id="none"),
    pytest.param([1, 2], ["(root): expected a mapping of sections, got list"], id="list"),
    pytest.param({"balancer": {"pools": []}},
                 ["balancer.pools: must not be empty"], id="empty-pools"),
    pytest.param({"balancer": {"pools": [{"name": "p", "instances": [{"host": "h", "port": 1}]},
                                           {"name": "q", "instances": [{"host": "h", "port": 1}, {"host": "h", "port": "x"}]}]},
                  "admin": {"address": 9901}},
                 ["admin.address: expected a string, got the number 9901 (quote it)",
                  "balancer.pools[1].instances[1].port: expected an integer, got the string 'x'"], id="wrong-types"),
])
def test_parse_config_problems(data, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="inline")
    assert info.value.source == "inline"
    assert info.value.problems == expected


def test_broken_only_item_is_not_reported_as_missing():
    data = {"balancer": {"pools": [{"name": "p", "instances": [{"host": "h", "port": 9000, "weight": 0}]}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == ["balancer.pools[0].instances[0].weight: must be greater than or equal to 1, got 0"]


def test_method_with_trailing_newline_is_rejected():
    data = {"edge": {"listeners": [{"name": "m", "address": "127.0.0.1:0"}],
                     "routes": [{"name": "r", "upstream": "p", "match": {"methods": ["GET\n"]}}]},
            "balancer": {"pools": [{"name": "p", "instances": [{"host": "h", "port": 1}]}]}}
    with pytest.raises(ConfigError) as info:
        parse_config(data)
    assert info.value.problems == ["edge.routes[0].match.methods: 'GET\\n' is not an upper-case HTTP method"]


def test_problems_are_listed_in_file_order(tmp_path):
    text = doc("""\
        edge:
          listeners: [{name: main, address: "127.0.0.1:8080"}]
          routes: [{name: r, upstream: ordrs}]
        balancer:
          pools:
            - {name: orders, instances: [{host: 10.0.0.1, port: 9000}]}
            - {name: orders, instances: [{host: 10.0.0.2, port: 9000}]}
        """)
    assert problems_of(tmp_path, text) == ["edge.routes[0].upstream: unknown upstream 'ordrs'; did you mean 'orders'?",
                                           "balancer.pools[1].name: duplicate name 'orders'"]


# --- valid documents ---------------------------------------------------------------------------------------------

GATEWAY_AND_BALANCER = doc("""\
    admin: {address: "127.0.0.1:0"}
    telemetry:
      service_name: gw
      otlp: {endpoint: "http://collector:4318", protocol: http/protobuf}
    edge:
      listeners:
        - {name: public, address: "0.0.0.0:0", incoming_trace_context: link}
        - {name: v6, address: "[::1]:0"}
      routes:
        - name: orders
          match:
            path: {prefix: /api/orders/}
            hosts: [API.Example.com, "*.example.org"]
            methods: [GET, POST]
            headers: [{name: X-Tenant, present: true}]
            query: [{name: v, value: "2"}]
          upstream: orders
          rewrite: {strip_prefix: /api}
        - {name: one, match: {path: {template: "/orders/{id}/items/{item_id}"}}, upstream: billing}
        - {name: home, match: {path: {exact: /}}, upstream: billing, preserve_host: false}
      upstreams:
        - {name: billing, url: "http://billing.internal:8080/"}
    balancer:
      pools:
        - name: orders
          algorithm: weighted_round_robin
          instances:
            - {host: 10.0.0.1, port: 9000, weight: 3, id: orders-a, zone: z1}
            - {host: "::1", port: 9000}
    """)

BALANCER_TIER = doc("""\
    balancer:
      listeners: [{name: lb, address: "127.0.0.1:0", trust_forwarded_headers: true}]
      routes: [{name: all, upstream: orders}]
      pools: [{name: orders, instances: [{host: orders-1, port: 9000}]}]
    """)


def test_gateway_and_balancer_load(tmp_path):
    path = tmp_path / "gw.yaml"
    path.write_text(GATEWAY_AND_BALANCER, encoding="utf-8")
    cfg = load_config(path)
    assert isinstance(cfg, GatewatchConfig)
    orders = cfg.edge.routes[0]
    assert orders.match.hosts == ("api.example.com", "*.example.org")  # lower-cased
    assert (orders.match.path.kind, orders.match.path.value) == ("prefix", "/api/orders/")
    assert cfg.edge.routes[1].match.path.kind == "template"
    assert cfg.edge.upstreams[0].url == "http://billing.internal:8080"  # trailing slash dropped
    assert cfg.edge.listeners[0].incoming_trace_context == "link"
    assert [i.instance_id for i in cfg.balancer.pools[0].instances] == ["orders-a", "::1:9000"]


def test_balancer_tier_loads(tmp_path):
    path = tmp_path / "lb.yaml"
    path.write_text(BALANCER_TIER, encoding="utf-8")
    cfg = load_config(path)
    assert cfg.edge is None
    assert cfg.balancer.listeners[0].trust_forwarded_headers is True
    assert cfg.balancer.routes[0].match.path.value == "/"  # default: every path


# --- the command line --------------------------------------------------------------------------------------------

def gatewatch(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "gatewatch", *args], capture_output=True, text=True, timeout=30,
                          cwd=Path(__file__).resolve().parents[1])


BAD_FOR_CLI = edge_with("""\
    - {name: a, upstream: orders}
    - {name: a, upstream: ordrs}
    """)
BAD_FOR_CLI_PROBLEMS = ["edge.routes[1].name: duplicate name 'a'",
                        "edge.routes[1].upstream: unknown upstream 'ordrs'; did you mean 'orders'?"]


def test_cli_validate_bad_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_FOR_CLI, encoding="utf-8")
    assert problems_of(tmp_path, BAD_FOR_CLI) == BAD_FOR_CLI_PROBLEMS
    result = gatewatch("validate", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [f"{bad}: invalid (2 problems)"] + [f"  {p}" for p in BAD_FOR_CLI_PROBLEMS]


def test_cli_validate_good_file(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text(BALANCER_TIER, encoding="utf-8")
    result = gatewatch("validate", str(good))
    assert (result.returncode, result.stdout, result.stderr) == (0, f"{good}: ok\n", "")


def test_cli_run_refuses_bad_file_without_starting(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(BAD_FOR_CLI, encoding="utf-8")
    ready = tmp_path / "ready.json"
    result = gatewatch("run", "-c", str(bad), "--ready-file", str(ready))
    assert result.returncode == 2
    assert result.stderr.splitlines() == ([f"{bad}: invalid configuration, not starting:"]
                                          + [f"  {p}" for p in BAD_FOR_CLI_PROBLEMS])
    assert not ready.exists()


@pytest.mark.parametrize(("setting", "problem"), [(None, True), ("reject", True), ("allow", False)])
def test_a_route_condition_on_an_underscored_header_the_listeners_drop_is_a_config_error(setting, problem):
    listener = {"name": "l", "address": "127.0.0.1:0", **({"headers_with_underscores": setting} if setting else {})}
    data = {"edge": {"listeners": [listener], "routes": [{"name": "r", "upstream": "u", "match": {
        "headers": [{"name": "x-ok", "present": True}, {"name": "x_tenant", "value": "t"}]}}],
        "upstreams": [{"name": "u", "url": "http://127.0.0.1:9"}]}}
    if not problem:
        parse_config(data)
        return
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert err.value.problems[0].startswith("edge.routes[0].match.headers[1].name: 'x_tenant' has an underscore")
