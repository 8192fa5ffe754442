"""Route matching as a pure function: (route table, request head) → RouteMatch | NoRoute."""

from __future__ import annotations

import pytest

from gatewatch.config import parse_config
from gatewatch.edge.config import RouteConfig
from gatewatch.edge.routing import NoRoute, RouteMatch, Router, host_without_port, parse_query


def route(name: str, **match) -> RouteConfig:
    return RouteConfig.model_validate({"name": name, "upstream": "pool", "match": match})


def one(path_match: dict, **match) -> Router:
    return Router((route("r", path=path_match, **match),))


def matches(router: Router, path: str = "/", host: str = "example.com", method: str = "GET",
            headers: dict[str, str] | None = None, query: str = "") -> RouteMatch | NoRoute:
    return router.match(path, host, method, headers or {}, query)


# --- paths ---------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("path_match", "path", "params"), [
    # exact
    ({"exact": "/health"}, "/health", {}),
    ({"exact": "/health"}, "/health/", None),
    ({"exact": "/health"}, "/healthz", None),
    ({"exact": "/health"}, "/Health", None),
    ({"exact": "/"}, "/", {}),
    ({"exact": "/"}, "/a", None),
    # prefix: whole segments only
    ({"prefix": "/api"}, "/api", {}),
    ({"prefix": "/api"}, "/api/", {}),
    ({"prefix": "/api"}, "/api/x", {}),
    ({"prefix": "/api"}, "/api/x/y", {}),
    ({"prefix": "/api"}, "/apix", None),
    ({"prefix": "/api"}, "/ap", None),
    ({"prefix": "/api"}, "/", None),
    ({"prefix": "/api"}, "/v1/api", None),
    ({"prefix": "/api/"}, "/api", {}),  # a trailing slash on the prefix changes nothing
    ({"prefix": "/api/"}, "/api/x", {}),
    ({"prefix": "/api/"}, "/apix", None),
    ({"prefix": "/api/v1"}, "/api/v1/orders", {}),
    ({"prefix": "/api/v1"}, "/api/v10", None),
    ({"prefix": "/"}, "/", {}),
    ({"prefix": "/"}, "/anything/at/all", {}),
    # template: one whole segment per parameter, captured
    ({"template": "/orders/{id}"}, "/orders/42", {"id": "42"}),
    ({"template": "/orders/{id}"}, "/orders/a%2Fb", {"id": "a%2Fb"}),  # captured as canonical, undecoded
    ({"template": "/orders/{id}"}, "/orders/", None),  # an empty segment is not a value
    ({"template": "/orders/{id}"}, "/orders", None),
    ({"template": "/orders/{id}"}, "/orders/42/items", None),
    ({"template": "/orders/{id}"}, "/orders/42/", None),
    ({"template": "/orders/{id}"}, "/order/42", None),
    ({"template": "/orders/{id}/items/{item}"}, "/orders/7/items/x-1", {"id": "7", "item": "x-1"}),
    ({"template": "/orders/{id}/items/{item}"}, "/orders/7/lines/x-1", None),
    ({"template": "/{tenant}/orders"}, "/acme/orders", {"tenant": "acme"}),
    ({"template": "/{tenant}/orders"}, "//orders", None),
    ({"template": "/static/files"}, "/static/files", {}),
])
def test_path(path_match, path, params):
    result = matches(one(path_match), path)
    if params is None:
        assert result == NoRoute(reason="path", nearest=None)
    else:
        assert isinstance(result, RouteMatch)
        assert dict(result.params) == params
        assert result.index == 0
        # http.route: the configured value, never the raw path; a prefix as "{prefix}/*" (anything below it)
        kind, value = next(iter(path_match.items()))
        assert result.template == (value.rstrip("/") + "/*" if kind == "prefix" else value)


# --- hosts, methods, headers, query --------------------------------------------------------------------------------

@pytest.mark.parametrize(("hosts", "host", "ok"), [
    ((), "anything.example", True),
    ((), "", True),
    (("api.example.com",), "api.example.com", True),
    (("api.example.com",), "API.Example.COM", True),
    (("api.example.com",), "api.example.com:8443", True),  # the port is ignored
    (("API.example.com",), "api.example.com", True),  # config is lower-cased
    (("api.example.com",), "www.example.com", False),
    (("api.example.com",), "api.example.com.evil", False),
    (("api.example.com",), "", False),
    (("*.example.com",), "a.example.com", True),
    (("*.example.com",), "a.b.example.com", True),
    (("*.example.com",), "A.EXAMPLE.com:80", True),
    (("*.example.com",), "example.com", False),  # the wildcard needs a label
    (("*.example.com",), ".example.com", False),  # nor an empty one
    (("*.example.com",), "aexample.com", False),
    (("*.example.com",), "a.example.com.evil", False),
    (("api.example.com", "*.example.org"), "x.example.org", True),
    (("api.example.com", "*.example.org"), "api.example.org", True),
    (("api.example.com", "*.example.org"), "x.example.com", False),
    (("127.0.0.1",), "127.0.0.1:8080", True),
])
def test_hosts(hosts, host, ok):
    result = matches(one({"prefix": "/"}, hosts=list(hosts)), host=host)
    assert isinstance(result, RouteMatch) if ok else result == NoRoute(reason="host", nearest="r")


@pytest.mark.parametrize(("host", "expected"), [
    ("Example.COM", "example.com"),
    ("example.com:8080", "example.com"),
    (" example.com ", "example.com"),
    ("[::1]:8080", "[::1]"),
    ("[::1]", "[::1]"),
    ("::1", "::1"),  # more than one ':' without brackets: not a port
])
def test_host_without_port(host, expected):
    assert host_without_port(host) == expected


@pytest.mark.parametrize(("methods", "method", "ok"), [
    ((), "PATCH", True),
    (("GET",), "GET", True),
    (("GET", "HEAD"), "HEAD", True),
    (("GET",), "POST", False),
    (("GET",), "get", False),  # methods are case-sensitive
])
def test_methods(methods, method, ok):
    result = matches(one({"prefix": "/"}, methods=list(methods)), method=method)
    assert isinstance(result, RouteMatch) if ok else result == NoRoute(reason="method", nearest="r")


@pytest.mark.parametrize(("conds", "headers", "ok"), [
    ([{"name": "X-Tenant", "value": "acme"}], {"x-tenant": "acme"}, True),  # names are case-insensitive
    ([{"name": "x-tenant", "value": "acme"}], {"x-tenant": "Acme"}, False),  # values are not
    ([{"name": "x-tenant", "value": "acme"}], {"x-tenant": "acme "}, False),
    ([{"name": "x-tenant", "value": "acme"}], {}, False),
    ([{"name": "x-tenant", "value": ""}], {"x-tenant": ""}, True),
    ([{"name": "x-tenant", "present": True}], {"x-tenant": ""}, True),
    ([{"name": "x-tenant", "present": True}], {}, False),
    ([{"name": "x-debug", "present": False}], {}, True),
    ([{"name": "x-debug", "present": False}], {"x-debug": "1"}, False),
    ([{"name": "a", "value": "1"}, {"name": "b", "present": True}], {"a": "1", "b": "x"}, True),
    ([{"name": "a", "value": "1"}, {"name": "b", "present": True}], {"a": "1"}, False),
])
def test_headers(conds, headers, ok):
    result = matches(one({"prefix": "/"}, headers=conds), headers=headers)
    assert isinstance(result, RouteMatch) if ok else result == NoRoute(reason="header", nearest="r")


@pytest.mark.parametrize(("conds", "query", "ok"), [
    ([{"name": "v", "value": "2"}], "v=2", True),
    ([{"name": "v", "value": "2"}], "a=1&v=2&b", True),
    ([{"name": "v", "value": "2"}], "v=3", False),
    ([{"name": "v", "value": "2"}], "", False),
    ([{"name": "v", "value": "2"}], "v=2&v=3", True),  # the first value counts
    ([{"name": "v", "value": "2"}], "v=3&v=2", False),
    ([{"name": "q", "value": "a b"}], "q=a+b", True),  # values are decoded
    ([{"name": "q", "value": "a/b"}], "q=a%2Fb", True),
    ([{"name": "V", "value": "2"}], "v=2", False),  # names are case-sensitive
    ([{"name": "debug", "present": True}], "debug", True),
    ([{"name": "debug", "present": True}], "debug=", True),
    ([{"name": "debug", "present": True}], "debugger=1", False),
    ([{"name": "debug", "present": False}], "x=1", True),
    ([{"name": "debug", "present": False}], "debug=0", False),
])
def test_query(conds, query, ok):
    result = matches(one({"prefix": "/"}, query=conds), query=query)
    assert isinstance(result, RouteMatch) if ok else result == NoRoute(reason="query", nearest="r")


@pytest.mark.parametrize(("query", "expected"), [
    ("", {}),
    ("a=1&b=2", {"a": "1", "b": "2"}),
    ("a=1&a=2", {"a": "1"}),
    ("a&b=", {"a": "", "b": ""}),
    ("&&a=1&", {"a": "1"}),
    ("x=a%20b+c", {"x": "a b c"}),
    ("k=v=w", {"k": "v=w"}),
])
def test_parse_query(query, expected):
    assert parse_query(query) == expected


# --- order and the NoRoute explanation -----------------------------------------------------------------------------

TABLE = parse_config({
    "edge": {
        "listeners": [{"name": "main", "address": "127.0.0.1:0"}],
        "routes": [
            {"name": "admin", "match": {"path": {"prefix": "/admin"}, "hosts": ["admin.example.com"]},
             "upstream": "pool"},
            {"name": "order", "match": {"path": {"template": "/orders/{id}"}, "methods": ["GET"]}, "upstream": "pool"},
            {"name": "order-write", "match": {"path": {"template": "/orders/{id}"}, "methods": ["PUT"],
                                              "headers": [{"name": "x-tenant", "present": True}]},
             "upstream": "pool"},
            {"name": "orders-v2", "match": {"path": {"prefix": "/orders"}, "query": [{"name": "v", "value": "2"}]},
             "upstream": "pool"},
            {"name": "orders", "match": {"path": {"prefix": "/orders"}}, "upstream": "pool"},
            {"name": "root", "match": {"path": {"exact": "/"}}, "upstream": "pool"},
        ],
    },
    "balancer": {"pools": [{"name": "pool", "instances": [{"host": "h", "port": 1}]}]},
}).edge.routes


@pytest.mark.parametrize(("path", "host", "method", "headers", "query", "expected"), [
    ("/orders/1", "x", "GET", {}, "", "order"),  # the template is declared before the prefix: it wins
    ("/orders/1", "x", "PUT", {"x-tenant": "a"}, "", "order-write"),
    ("/orders/1", "x", "PUT", {}, "", "orders"),  # falls through to the next route whose conditions hold
    ("/orders/1", "x", "PUT", {}, "v=2", "orders-v2"),
    ("/orders", "x", "GET", {}, "v=2", "orders-v2"),
    ("/orders", "x", "GET", {}, "v=1", "orders"),
    ("/orders/1/items", "x", "GET", {}, "", "orders"),
    ("/admin/users", "admin.example.com", "DELETE", {}, "", "admin"),
    ("/", "x", "GET", {}, "", "root"),
])
def test_first_match_wins(path, host, method, headers, query, expected):
    result = Router(TABLE).match(path, host, method, headers, query)
    assert isinstance(result, RouteMatch)
    assert result.route.name == expected
    assert result.index == [r.name for r in TABLE].index(expected)


@pytest.mark.parametrize(("path", "host", "method", "headers", "query", "expected"), [
    ("/nothing", "x", "GET", {}, "", NoRoute(reason="path", nearest=None)),
    ("/admin", "www.example.com", "GET", {}, "", NoRoute(reason="host", nearest="admin")),
    ("/admin/x", "", "GET", {}, "", NoRoute(reason="host", nearest="admin")),
])
def test_no_route_names_nearest(path, host, method, headers, query, expected):
    assert Router(TABLE).match(path, host, method, headers, query) == expected


@pytest.mark.parametrize(("routes", "request_", "expected"), [
    # the first route that matched the path is the nearest, with its first failed condition
    ([route("a", path={"prefix": "/x"}, methods=["GET"]), route("b", path={"prefix": "/x"}, hosts=["b.example"])],
     ("/x", "c.example", "POST"), NoRoute(reason="method", nearest="a")),
    ([route("a", path={"prefix": "/y"}), route("b", path={"prefix": "/x"}, hosts=["b.example"], methods=["GET"])],
     ("/x", "c.example", "POST"), NoRoute(reason="host", nearest="b")),
    ([route("a", path={"prefix": "/x"}, methods=["GET"], headers=[{"name": "h", "value": "1"}])],
     ("/x", "c.example", "GET"), NoRoute(reason="header", nearest="a")),
    ([], ("/", "c.example", "GET"), NoRoute(reason="path", nearest=None)),
])
def test_no_route_reason(routes, request_, expected):
    path, host, method = request_
    assert Router(tuple(routes)).match(path, host, method, {}, "") == expected


def test_route_defaults_match_everything():
    router = Router((RouteConfig.model_validate({"name": "all", "upstream": "pool"}),))
    result = router.match("/any/path", "any.host", "OPTIONS", {"x": "y"}, "q=1")
    assert isinstance(result, RouteMatch)
    assert (result.route.name, result.template, dict(result.params)) == ("all", "/*", {})
