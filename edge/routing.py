"""Route matching: a pure function from a compiled route table and a request head to a decision.

`Router.match(path, host, method, headers, query) -> RouteMatch | NoRoute`. Routes are tried in declared order;
the first whose every condition holds wins (like Envoy and Traefik's priority by order). `NoRoute.nearest`
names the route that got furthest (matched the path but not, say, the method) so the decision log can say why.

Paths are matched on the canonical form from `edge.paths`; prefixes are segment-aware; templates match
whole segments and capture them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping

from gatewatch.edge.config import RouteConfig

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython


_BY_INDEX = operator.attrgetter("index")  # config order (a module constant: no key function per request)


@dataclass(frozen=True, slots=True)
class RouteMatch:
    route: RouteConfig
    index: int
    template: str  # `http.route`: the template, the exact path, or `{prefix}/*`; never the raw path
    params: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class NoRoute:
    reason: str  # no_match | path | host | method | header | query: the first condition the nearest route failed
    nearest: str | None  # name of the route that matched the path but failed `reason`, if any


NO_PARAMS: Mapping[str, str] = MappingProxyType({})


class _Compiled:
    __slots__ = ("route", "index", "kind", "value", "segments", "hosts", "wild_hosts", "any_host", "methods",
                 "headers", "query", "template", "static_match")

    def __init__(self, route: RouteConfig, index: int):
        m = route.match
        self.route = route
        self.index = index
        self.kind = m.path.kind
        self.value = m.path.value
        if self.kind == "prefix" and self.value != "/":
            self.value = self.value.rstrip("/")
        self.segments = tuple(self.value.split("/")[1:]) if self.kind == "template" else ()
        self.hosts = frozenset(h for h in m.hosts if not h.startswith("*."))
        self.wild_hosts = tuple(h[1:] for h in m.hosts if h.startswith("*."))  # ".example.com"
        self.any_host = not self.hosts and not self.wild_hosts
        self.methods = frozenset(m.methods)
        self.headers = tuple((h.name.lower(), h.value, h.present) for h in m.headers)
        self.query = tuple((q.name, q.value, q.present) for q in m.query)
        # http.route is a template with the dynamic part as a placeholder (semconv): a prefix route is
        # "/api/*" (anything below /api), not "/api", which would read as the exact path.
        self.template = m.path.value if self.kind != "prefix" else self.value.rstrip("/") + "/*"
        # A match without parameters is the same immutable value on every request: built once (a frozen
        # dataclass costs about a microsecond to construct).
        self.static_match = RouteMatch(route, index, self.template, NO_PARAMS) if self.kind != "template" else None

    @cython.locals(path=str, v=str)  # (str methods then called directly, not by name)
    def match_path(self, path: str) -> dict[str, str] | None:
        if self.kind == "exact":
            return {} if path == self.value else None
        if self.kind == "prefix":
            v = self.value
            if v == "/" or path == v or path.startswith(v + "/"):
                return {}
            return None
        segs = path.split("/")[1:]
        if len(segs) != len(self.segments):
            return None
        params: dict[str, str] = {}
        for want, got in zip(self.segments, segs):
            if want.startswith("{"):
                if not got:
                    return None
                params[want[1:-1]] = got
            elif want != got:
                return None
        return params

    def match_host(self, host: str) -> bool:
        if self.any_host:
            return True
        return host in self.hosts or any(host.endswith(w) and len(host) > len(w) for w in self.wild_hosts)

    @staticmethod
    def match_pairs(conds, lookup) -> bool:
        for name, value, present in conds:
            got = lookup(name)
            if present is not None:
                if (got is not None) != present:
                    return False
            elif got != value:
                return False
        return True


def parse_query(query: str) -> dict[str, str]:
    """First value of each raw query parameter (names compared as sent, values percent-decoded)."""
    from urllib.parse import unquote_plus

    out: dict[str, str] = {}
    for part in query.split("&"):
        if not part:
            continue
        k, _, v = part.partition("=")
        k = unquote_plus(k)
        if k not in out:
            out[k] = unquote_plus(v)
    return out


def host_without_port(host: str) -> str:
    host = host.strip().lower()
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class _Node:
    __slots__ = ("children", "wildcard", "ends", "prefixes")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.wildcard: _Node | None = None  # a `{param}` segment
        self.ends: list[_Compiled] = []  # exact and template routes whose last segment is this node
        self.prefixes: list[_Compiled] = []  # prefix routes: this node and everything below


class Router:
    """Routes in a trie of path segments (literal children, one wildcard child for `{param}`), so a request is
    tested only against the routes whose literal segments lie along its path, then in declared order (first
    match wins): matching cost follows the depth of the path, not the size of the table."""

    __slots__ = ("_routes", "_root")  # an extension type when compiled, as are its nodes and routes (routing.pxd)

    def __init__(self, routes: tuple[RouteConfig, ...]):
        self._routes = [_Compiled(r, i) for i, r in enumerate(routes)]
        self._root = _Node()
        for c in self._routes:
            node = self._root
            if c.kind == "prefix" and c.value == "/":
                node.prefixes.append(c)
                continue
            for seg in c.value[1:].split("/"):
                if c.kind == "template" and seg.startswith("{"):
                    node.wildcard = node.wildcard or _Node()
                    node = node.wildcard
                else:
                    node = node.children.setdefault(seg, _Node())
            (node.prefixes if c.kind == "prefix" else node.ends).append(c)

    @cython.locals(found=list, frontier=list, nxt=list, node=_Node, child=_Node, path=str)
    def _candidates(self, path: str) -> list[_Compiled]:
        found: list[_Compiled] = list(self._root.prefixes)
        frontier = [self._root]
        for seg in path[1:].split("/"):
            nxt = []
            for node in frontier:
                child = node.children.get(seg)
                if child is not None:
                    nxt.append(child)
                if node.wildcard is not None and seg:
                    nxt.append(node.wildcard)
            if not nxt:
                break
            for node in nxt:
                found.extend(node.prefixes)
            frontier = nxt
        else:
            for node in frontier:
                found.extend(node.ends)
        if len(found) > 1:
            found.sort(key=_BY_INDEX)
        return found

    @cython.locals(c=_Compiled)
    def match(self, path: str, host: str, method: str, headers: Mapping[str, str], query: str) -> RouteMatch | NoRoute:
        """`headers` maps lower-case names to values (first occurrence)."""
        hostname: str | None = None  # normalised when a route first asks for it
        nearest: tuple[str, str] | None = None
        qparams: dict[str, str] | None = None
        for c in self._candidates(path):
            params = c.match_path(path)
            if params is None:
                continue
            failed = None
            if not c.any_host and hostname is None:
                hostname = host_without_port(host)
            if not c.any_host and not c.match_host(hostname):
                failed = "host"
            elif c.methods and method not in c.methods:
                failed = "method"
            elif c.headers and not c.match_pairs(c.headers, headers.get):
                failed = "header"
            elif c.query:
                if qparams is None:
                    qparams = parse_query(query)
                if not c.match_pairs(c.query, qparams.get):
                    failed = "query"
            if failed is None:
                return c.static_match or RouteMatch(route=c.route, index=c.index, template=c.template, params=params)
            if nearest is None:
                nearest = (failed, c.route.name)
        if nearest:
            return NoRoute(reason=nearest[0], nearest=nearest[1])
        return NoRoute(reason="path", nearest=None)
