"""The route trie must never change which route wins: the same answers as a plain first-match scan."""

from __future__ import annotations

import random

from gatewatch.edge.config import RouteConfig
from gatewatch.edge.routing import NoRoute, Router


def scan(routes, path):
    """The reference: first route in declared order whose path matches (no host/method conditions here)."""
    for route in routes:
        single = Router((route,))
        m = single.match(path, "h", "GET", {}, "")
        if not isinstance(m, NoRoute):
            return route.name
    return None


def test_index_agrees_with_a_plain_scan():
    rng = random.Random(5)
    shapes = [{"prefix": "/"}, {"prefix": "/api"}, {"prefix": "/api/v1"}, {"exact": "/"}, {"exact": "/api"},
              {"template": "/{tenant}/items"}, {"template": "/api/{id}"}, {"template": "/orders/{id}"},
              {"prefix": "/orders"}, {"exact": "/orders/7"}, {"template": "/{a}/{b}"},
              {"template": "/bench/items/{id}"}, {"template": "/bench/items/{id}/v1"}, {"prefix": "/bench/x1"},
              {"exact": "/api/"}, {"template": "/{a}/items/{b}"}, {"prefix": "/bench"}]
    for trial in range(200):
        routes = tuple(RouteConfig(name=f"r{i}", upstream="p", match={"path": rng.choice(shapes)})
                       for i in range(rng.randint(1, 8)))
        router = Router(routes)
        for path in ("/", "/api", "/api/", "/api/v1/x", "/orders/7", "/orders/8", "/acme/items", "/x/y", "/apix",
                     "/api/3", "/bench/items/42", "/bench/items/42/v1", "/bench/x1/y", "/bench/items/", "//x",
                     "/orders//7"):
            m = router.match(path, "h", "GET", {}, "")
            got = None if isinstance(m, NoRoute) else m.route.name
            assert got == scan(routes, path), (trial, path, [r.match.path for r in routes])
