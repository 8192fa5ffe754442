"""Response caching at the edge: a shared cache after RFC 9111 (a subset), per route, in memory.

The rules are pure functions of headers and times (seconds of wall-clock time, since HTTP dates are):
- `directives(value)`: Cache-Control (RFC 9111 §5.2); `delta_seconds`, `http_date`.
- `freshness_lifetime(...)` (§4.2.1, heuristic §4.2.2 only when configured), `Entry.age(now)` (§4.2.3).
- `not_storable(...) -> CacheReason | None` (§3, §3.5, §5.2.2): why a response may not be stored.
- `vary_names(headers)` / `vary_values(...)` (§4.1), `cache_key(...)` (the route's key), `invalidated_uris` (§4.4).
- `precondition(...) -> 304 | 412 | None`: a client's conditional request against a stored response
  (RFC 9110 §13.2.2 evaluation order).

State: `Store` (one route's responses: LRU under a byte and an entry budget, Vary variants, invalidation, the
in-flight fetches that concurrent misses wait for), `Caches` (the stores of an engine, kept across reloads while a
route's `cache` block is unchanged), `Flow` (one request's way through the cache: lookup, the validators sent
upstream, what the upstream's answer does to the store, the outcome recorded once at the end) and
`StoredResponse` (a stored response served through the engine's ordinary response path). A route with
`cache.shared` also has a Redis tier behind its store (`proxy.cache_shared`).

The route's `cache:` block is `gatewatch.edge.cache.CacheConfig`. Not done (docs/traffic.md, "Caching"): partial
content (a Range request passes through, a 206 is never stored), `only-if-cached`, `max-stale` / `min-fresh`,
field lists of a qualified `private` / `no-cache` (treated as unqualified: not stored / always revalidated).
"""

from __future__ import annotations

import asyncio
import email.utils
import re
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from gatewatch.edge.cache import CacheConfig, CacheKeyConfig
from gatewatch.io.interfaces import Headers, RequestHead, UpstreamResponse
from gatewatch.proxy import headers as hdr
from gatewatch.telemetry.names import CacheEviction, CacheReason, CacheResult

MAX_DELTA = 2 ** 31  # RFC 9111 §1.2.2: a larger delta-seconds is taken as 2^31
# RFC 9110 §15.1: heuristically cacheable status codes (206 left out: partial content is not cached)
HEURISTIC = frozenset({200, 203, 204, 300, 301, 308, 404, 405, 410, 414, 501})
# what this cache understands and stores with explicit freshness information (§3: "understands the status code")
UNDERSTOOD = HEURISTIC | {302, 303, 307}
SAFE = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})  # RFC 9110 §9.2.1; the others invalidate (RFC 9111 §4.4)
# RFC 9110 §15.4.5: what a 304 carries of the 200 it stands for
NOT_MODIFIED_FIELDS = frozenset({"cache-control", "content-location", "date", "etag", "expires", "vary",
                                 "last-modified"})
# never stored: connection-specific (RFC 9111 §3.1), re-framed or recomputed on the way out
NOT_STORED = hdr.HOP_BY_HOP | {"content-length", "age", "x-request-id", "traceresponse"}
CONDITIONALS = frozenset({"if-none-match", "if-modified-since", "if-match", "if-unmodified-since", "if-range"})
NO_STALE = ("must-revalidate", "proxy-revalidate", "s-maxage", "no-cache")  # §4.2.4: stale use forbidden
ENTRY_OVERHEAD = 256  # bytes counted per entry beyond its fields (the objects holding them)
SHARED_REVALIDATABLE_S = 600  # how long the shared tier keeps a stale response that has validators
_ETAG = re.compile(r'(W/)?"([^"]*)"')
R, W = CacheResult, CacheReason
# every (result, reason) a request can be recorded with (the series created at 0 for a route with a cache)
OUTCOMES: tuple[tuple[CacheResult, CacheReason], ...] = (
    (R.HIT, W.FRESH), (R.HIT, W.COALESCED), (R.HIT, W.SHARED),
    *((result, why) for result in (R.MISS, R.REVALIDATED) for why in (
        W.EXPIRED, W.NO_CACHE, W.CLIENT_NO_CACHE, W.STALE_WHILE_REVALIDATE)),
    (R.MISS, W.ABSENT), (R.MISS, W.VARY_MISMATCH),
    (R.STALE, W.STALE_WHILE_REVALIDATE), (R.STALE, W.STALE_IF_ERROR),
    *((R.BYPASS, why) for why in (W.METHOD, W.CLIENT_NO_STORE, W.RANGE, W.NO_STORE, W.PRIVATE, W.AUTHORIZATION,
                                  W.SET_COOKIE, W.STATUS, W.NO_FRESHNESS, W.VARY_STAR, W.TOO_LARGE)))


# --- the rules (pure) ---

def directives(value: str | None) -> dict[str, str | None]:
    """Cache-Control directives (RFC 9111 §5.2): names lower-cased, a quoted-string argument unquoted, the first
    occurrence of a directive kept (§4.2.1)."""
    out: dict[str, str | None] = {}
    if not value:
        return out
    i, n = 0, len(value)
    while i < n:
        j = i
        while j < n and value[j] not in ",=":
            j += 1
        name, arg = value[i:j].strip().lower(), None
        if j < n and value[j] == "=":
            j += 1
            while j < n and value[j] in " \t":
                j += 1
            if j < n and value[j] == '"':
                buf, j = [], j + 1
                while j < n and value[j] != '"':
                    if value[j] == "\\" and j + 1 < n:
                        j += 1
                    buf.append(value[j])
                    j += 1
                arg = "".join(buf)
                while j < n and value[j] != ",":
                    j += 1
            else:
                k = j
                while j < n and value[j] != ",":
                    j += 1
                arg = value[k:j].strip()
        if name and name not in out:
            out[name] = arg
        i = j + 1
    return out


def delta_seconds(arg: str | None) -> int | None:
    """RFC 9111 §1.2.2 delta-seconds: digits only (None otherwise); more than 2^31 is 2^31."""
    if arg is None or not arg.isascii() or not arg.isdigit():
        return None
    return min(int(arg), MAX_DELTA)


def http_date(value: str | None) -> float | None:
    """An HTTP-date (RFC 9110 §5.6.7, the three formats) as a timestamp; None if absent or invalid."""
    if not value:
        return None
    try:
        parsed = email.utils.parsedate_tz(value)
        return float(email.utils.mktime_tz(parsed)) if parsed else None
    except (TypeError, ValueError, OverflowError):
        return None


def freshness_lifetime(cc: dict, index: dict[str, str], date: float, status: int, cfg: CacheConfig) -> float:
    """RFC 9111 §4.2.1: s-maxage (a shared cache), else max-age, else Expires - Date; an invalid value means
    already stale. Else, only if configured, the §4.2.2 heuristic: a fraction of the time since Last-Modified."""
    for name in ("s-maxage", "max-age"):
        if name in cc:
            return float(delta_seconds(cc[name]) or 0)
    if "expires" in index:
        expires = http_date(index["expires"])
        return max(0.0, expires - date) if expires is not None else 0.0  # §5.3: invalid means in the past
    if cfg.heuristic_fraction and (status in HEURISTIC or "public" in cc):
        modified = http_date(index.get("last-modified"))
        if modified is not None and modified < date:
            return min(cfg.heuristic_fraction * (date - modified), cfg.heuristic_max_s)
    return 0.0


def explicit_freshness(cc: dict, index: dict[str, str]) -> bool:
    return "s-maxage" in cc or "max-age" in cc or "expires" in index


def not_storable(status: int, req_cc: dict, cc: dict, index: dict[str, str], authorization: bool,
                 cfg: CacheConfig) -> CacheReason | None:
    """Why a response to a GET may not be stored by a shared cache (RFC 9111 §3), None when it may."""
    if "no-store" in req_cc:  # §5.2.1.5
        return CacheReason.CLIENT_NO_STORE
    if status not in UNDERSTOOD:
        return CacheReason.STATUS
    if "no-store" in cc and "must-understand" not in cc:  # §5.2.2.5; must-understand overrides it (§5.2.2.3)
        return CacheReason.NO_STORE
    if "private" in cc:  # §5.2.2.7 (a qualified private is treated as unqualified)
        return CacheReason.PRIVATE
    if authorization and not cfg.allow_authorization and not (
            "public" in cc or "s-maxage" in cc or "must-revalidate" in cc):  # §3.5
        return CacheReason.AUTHORIZATION
    if "set-cookie" in index and not cfg.allow_set_cookie:
        return CacheReason.SET_COOKIE
    if status not in HEURISTIC and not explicit_freshness(cc, index) and "public" not in cc:  # §3
        return CacheReason.STATUS
    return None


def vary_names(headers) -> tuple[str, ...] | None:
    """The request header names a response's Vary lists, lower-case and sorted; None for `Vary: *`."""
    names: set[str] = set()
    for k, v in headers:
        if k.lower() == "vary":
            for part in v.split(","):
                name = part.strip().lower()
                if name == "*":
                    return None
                if name:
                    names.add(name)
    return tuple(sorted(names))


def _normalized(value: str | None) -> str | None:
    """A request header value as Vary compares it (§4.1): every field line combined, blanks around commas cut."""
    return None if value is None else ",".join(p.strip() for p in value.split(","))


def vary_values(names: tuple[str, ...], head: RequestHead) -> tuple[str | None, ...]:
    return tuple(_normalized(hdr.combined(head.headers, n, head.index)) for n in names)


def _query(query: str, key: CacheKeyConfig) -> str:
    if not key.query:
        return ""
    if not key.query_params:
        return query
    keep = set(key.query_params)
    parts = [p for p in query.split("&") if p.partition("=")[0] in keep]
    return "&".join(sorted(parts, key=lambda p: p.partition("=")[0]))


def cache_key(key: CacheKeyConfig, scheme: str, host: str, path: str, query: str,
              head: RequestHead) -> tuple[str, str]:
    """(the URI part, the header/cookie part) of a request's key. Invalidation (§4.4) drops every entry of a URI
    part, whatever the rest."""
    uri = (f"{scheme if key.scheme else ''}://{host.lower() if key.host else ''}{path if key.path else ''}"
           f"?{_query(query, key)}")
    if not key.headers and not key.cookies:
        return uri, ""
    parts = [hdr.combined(head.headers, h.lower(), head.index) or "" for h in key.headers]
    if key.cookies:
        jar: dict[str, str] = {}
        for line in (hdr.combined(head.headers, "cookie", head.index) or "").replace(",", ";").split(";"):
            name, _, value = line.strip().partition("=")
            jar.setdefault(name, value)
        parts += [jar.get(c, "") for c in key.cookies]
    return uri, "\x00".join(parts)


def invalidated_uris(key: CacheKeyConfig, scheme: str, host: str, path: str, query: str,
                     response_headers: Headers) -> list[str]:
    """RFC 9111 §4.4: the target URI, and the URIs in Location and Content-Location when on the same host."""
    uris = [cache_key(key, scheme, host, path, query, _NO_HEAD)[0]]
    for k, v in response_headers:
        if k.lower() in ("location", "content-location"):
            try:
                u = urlsplit(v.strip())
            except ValueError:
                continue
            if u.netloc and u.netloc.lower() != host.lower():
                continue
            if u.path.startswith("/"):
                uris.append(cache_key(key, scheme, host, u.path, u.query, _NO_HEAD)[0])
    return uris


def _etags(value: str) -> list[tuple[bool, str]]:
    return [(bool(weak), tag) for weak, tag in _ETAG.findall(value)]


def _etag_matches(value: str, etag: str | None, strong: bool) -> bool:
    """If-Match (strong comparison) / If-None-Match (weak) against a stored ETag (RFC 9110 §8.8.3.2)."""
    if value.strip() == "*":
        return True  # the stored response is a current representation
    if etag is None:
        return False
    parsed = _etags(etag)
    if not parsed:
        return False
    weak, tag = parsed[0]
    return any(t == tag and not (strong and (w or weak)) for w, t in _etags(value))


def precondition(head: RequestHead, etag: str | None, modified: float | None) -> int | None:
    """A client's conditional GET/HEAD against a stored response, in RFC 9110 §13.2.2's order: 412 when If-Match
    or If-Unmodified-Since fails, 304 when If-None-Match or If-Modified-Since says the client's copy is current,
    else None (send the stored response). `modified`: Last-Modified, else Date (RFC 9111 §4.3.2)."""
    index, headers = head.index, head.headers
    if_match = hdr.combined(headers, "if-match", index)
    if if_match is not None:
        if not _etag_matches(if_match, etag, strong=True):
            return 412
    elif "if-unmodified-since" in index:
        since = http_date(index["if-unmodified-since"])
        if since is not None and (modified is None or modified > since):
            return 412
    if_none = hdr.combined(headers, "if-none-match", index)
    if if_none is not None:
        return 304 if _etag_matches(if_none, etag, strong=False) else None
    if "if-modified-since" in index:
        since = http_date(index["if-modified-since"])
        if since is not None and modified is not None and modified <= since:
            return 304
    return None


_NO_HEAD = RequestHead("GET", "/", "1.1", (), "", 0, "http", "", 0, "", False, {})


# --- the store ---

@dataclass(slots=True, eq=False)
class Entry:
    """One stored response (RFC 9111 §3), and what its freshness and age are computed from (§4.2)."""

    uri: str
    extra: str
    vary: tuple[str, ...]  # request header names
    vary_values: tuple[str | None, ...]  # their values in the request that fetched it
    status: int
    reason: str
    headers: Headers  # as the upstream sent them, less NOT_STORED (and Set-Cookie)
    body: bytes
    cc: dict
    date: float  # Date, else when the response arrived
    response_time: float
    initial_age: float  # §4.2.3 corrected_initial_age
    lifetime: float  # §4.2.1
    etag: str | None
    last_modified: str | None
    size: int = 0
    revalidating: bool = False  # a stale-while-revalidate refresh is under way (one per entry)

    def age(self, now: float) -> float:
        """§4.2.3 current_age."""
        return self.initial_age + max(0.0, now - self.response_time)

    def window(self, directive: str, default: float) -> float:
        """How long past its freshness it may be served stale (RFC 5861); 0 when a directive forbids it."""
        cc = self.cc
        if any(d in cc for d in NO_STALE):
            return 0.0
        if directive in cc:
            return float(delta_seconds(cc[directive]) or 0)
        return default


def make_entry(uri: str, extra: str, vary: tuple[str, ...], values: tuple, status: int, reason: str,
               headers: Headers, cc: dict, request_time: float, response_time: float, cfg: CacheConfig) -> Entry:
    stored = tuple((k, v) for k, v in headers if k.lower() not in NOT_STORED and k.lower() != "set-cookie")
    index = {}
    for k, v in headers:
        index.setdefault(k.lower(), v)
    date = http_date(index.get("date"))
    date = response_time if date is None else date
    age_value = float(delta_seconds(index.get("age")) or 0)
    apparent = max(0.0, response_time - date)
    corrected = age_value + max(0.0, response_time - request_time)
    return Entry(uri, extra, vary, values, status, reason, stored, b"", cc, date, response_time,
                 max(apparent, corrected), freshness_lifetime(cc, index, date, status, cfg), index.get("etag"),
                 index.get("last-modified"))


def _size(e: Entry) -> int:
    return len(e.body) + sum(len(k) + len(v) for k, v in e.headers) + len(e.uri) + len(e.extra) + ENTRY_OVERHEAD


class Store:
    """One route's stored responses. LRU under `max_bytes` and `max_entries`; per key (URI part, header part) up
    to `max_variants` Vary variants, newest last. `inflight`: the fetch that concurrent misses of a key wait on."""

    def __init__(self, route: str, cfg: CacheConfig, on_evict: Callable[[str, int], None] | None = None):
        self.route = route
        self.cfg = cfg
        self.bytes = 0
        self._lru: OrderedDict[Entry, None] = OrderedDict()
        self._groups: dict[str, dict[str, list[Entry]]] = {}
        self._on_evict = on_evict
        self.inflight: dict[tuple[str, str], asyncio.Future] = {}
        self.waiting = 0  # requests waiting for an in-flight fetch right now
        self.shared = None  # the Redis tier (`proxy.cache_shared.Shared`) when `cache.shared` is set

    def __len__(self) -> int:
        return len(self._lru)

    def find(self, uri: str, extra: str, head: RequestHead) -> tuple[Entry | None, bool]:
        """(the newest variant whose Vary values match the request, whether any variant is stored)."""
        variants = self._groups.get(uri, {}).get(extra)
        if not variants:
            return None, False
        for e in reversed(variants):
            if not e.vary or vary_values(e.vary, head) == e.vary_values:
                self._lru.move_to_end(e)
                return e, True
        return None, True

    def put(self, e: Entry, share: bool = True) -> None:
        """Store `e` (and, unless it came from there, write it to the shared tier)."""
        if share and self.shared is not None:
            self._share(e)
        e.size = _size(e)
        variants = self._groups.setdefault(e.uri, {}).setdefault(e.extra, [])
        for old in [v for v in variants if v.vary == e.vary and v.vary_values == e.vary_values]:
            self._drop(old)
        variants = self._groups.setdefault(e.uri, {}).setdefault(e.extra, [])
        variants.append(e)
        self._lru[e] = None
        self.bytes += e.size
        evicted = 0
        while len(variants) > self.cfg.max_variants:
            self._drop(variants[0])
            evicted += 1
        while self._lru and (self.bytes > self.cfg.max_bytes or len(self._lru) > self.cfg.max_entries):
            self._drop(next(iter(self._lru)))
            evicted += 1
        if evicted:
            self._evicted(CacheEviction.CAPACITY, evicted)

    def _share(self, e: Entry) -> None:
        """Write `e` to the shared tier, to be kept as long as it can be of use (fresh, stale within a window, or
        revalidatable)."""
        cfg = self.cfg
        keep = max(e.window("stale-while-revalidate", cfg.stale_while_revalidate_s),
                   e.window("stale-if-error", cfg.stale_if_error_s))
        validators = e.etag is not None or e.last_modified is not None
        self.shared.put(e, e.lifetime - e.initial_age + keep + (SHARED_REVALIDATABLE_S if validators else 0),
                        cfg.max_variants)

    def refreshed(self, e: Entry) -> None:
        """`e`'s headers were updated in place (a 304): most recently used, its size counted again."""
        if self.shared is not None:
            self._share(e)
        self._lru.move_to_end(e)
        size = _size(e)
        self.bytes += size - e.size
        e.size = size

    def contains(self, e: Entry) -> bool:
        return e in self._lru

    def remove(self, e: Entry, reason: CacheEviction) -> None:
        if e in self._lru:
            self._drop(e)
            self._evicted(reason, 1)

    def invalidate(self, uris: list[str], share: bool = True) -> int:
        """Drop every response of these URIs (RFC 9111 §4.4); unless told by the shared tier, tell it."""
        if share and self.shared is not None:
            self.shared.invalidate(uris)
        n = 0
        for uri in uris:
            for variants in list(self._groups.get(uri, {}).values()):
                for e in list(variants):
                    self._drop(e)
                    n += 1
        if n:
            self._evicted(CacheEviction.INVALIDATED, n)
        return n

    def _drop(self, e: Entry) -> None:
        if e not in self._lru:
            return
        del self._lru[e]
        self.bytes -= e.size
        group = self._groups[e.uri]
        variants = group[e.extra]
        variants.remove(e)
        if not variants:
            del group[e.extra]
            if not group:
                del self._groups[e.uri]

    def _evicted(self, reason: CacheEviction, n: int) -> None:
        if self._on_evict is not None:
            self._on_evict(reason.value, n)


class Caches:
    """An engine's stores, by route name. A store outlives reloads while its route's `cache` block is unchanged;
    a changed block starts empty. `metrics`: where entries, bytes and evictions are published."""

    def __init__(self, metrics=None):
        self._stores: dict[str, Store] = {}
        self._metrics = metrics
        self._closing: list = []  # shared tiers of replaced stores, closed with the rest

    async def close(self) -> None:
        """Stop the shared tiers' background work and close their connections (at shutdown)."""
        shared = [*self._closing, *(s.shared for s in self._stores.values() if s.shared is not None)]
        self._closing = []
        for sh in shared:
            await sh.close()

    def get(self, route: str) -> Store | None:
        return self._stores.get(route)

    def store(self, route: str, cfg: CacheConfig) -> Store:
        s = self._stores.get(route)
        if s is not None and (s.cfg is cfg or s.cfg == cfg):
            s.cfg = cfg
            return s
        m = self._metrics
        if s is not None and s.shared is not None:
            self._closing.append(s.shared)
        s = Store(route, cfg, None if m is None else (
            lambda reason, n: m.cache_evictions.labels(route, reason).inc(n)))
        if cfg.shared is not None:
            from gatewatch.proxy.cache_shared import Shared  # needs the Redis client
            s.shared = Shared(route, cfg.shared, lambda uris, s=s: s.invalidate(uris, share=False))
            s.shared.listen()
        if m is not None:
            m.cache_entries.labels(route).set_function(s.__len__)
            m.cache_bytes.labels(route).set_function(lambda: s.bytes)
        self._stores[route] = s
        return s


class StoredResponse:
    """A stored response (or a 304/412 answered from one) in the shape of an `UpstreamResponse`, its body whole:
    the engine relays it like any other."""

    __slots__ = ("headers", "peer_address", "peer_port", "reason", "status", "whole")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes):
        self.status, self.reason, self.headers, self.whole = status, reason, headers, body
        self.peer_address = self.peer_port = None

    async def body(self):
        if self.whole:
            yield self.whole

    def close(self) -> None:
        pass


def serve(e: Entry, head: RequestHead, now: float) -> tuple[StoredResponse, int]:
    """The stored response for this request, with its Age (RFC 9111 §5.1; (response, age in whole seconds)), or
    the 304 / 412 its conditional headers call for (RFC 9110 §13.2.2)."""
    age = min(int(e.age(now)), MAX_DELTA)
    modified = http_date(e.last_modified) if e.last_modified else e.date
    status = precondition(head, e.etag, modified) if head.index.keys() & CONDITIONALS else None
    if status is None:  # a HEAD gets the GET's head, its Content-Length included (RFC 9110 §9.3.2), no body
        return StoredResponse(e.status, e.reason, e.headers + (("Age", str(age)), ("Content-Length", str(len(
            e.body)))), b"" if head.method == "HEAD" else e.body), age
    kept = tuple(h for h in e.headers if h[0].lower() in NOT_MODIFIED_FIELDS) if status == 304 else ()
    return StoredResponse(status, "", kept + (("Age", str(age)), ("Content-Length", "0")), b""), age


# --- one request's way through the cache ---

class Flow:
    """A request on a route with a cache. `begin` looks it up; the engine then serves `hit` (a StoredResponse),
    waits on `wait` (a concurrent fetch of the key) or goes upstream (with `upstream_headers`), hands the
    upstream's answer to `response`, a failure to `stale_if_error`, and calls `finish` once at the end."""

    __slots__ = (
        "age",
        "background",
        "can_store",
        "cfg",
        "consult",
        "entry",
        "extra",
        "head",
        "hit",
        "host",
        "invalidate",
        "leader",
        "now",
        "path",
        "query",
        "reason",
        "result",
        "scheme",
        "store",
        "swr",
        "uri",
        "validating",
        "wait",
    )

    def __init__(self, store: Store, head: RequestHead, scheme: str, host: str, path: str, query: str, now: float):
        self.store, self.cfg, self.head, self.now = store, store.cfg, head, now
        self.scheme, self.host, self.path, self.query = scheme, host, path, query
        self.uri = self.extra = ""
        self.entry: Entry | None = None  # the stored response this request found (fresh or not)
        self.result, self.reason = CacheResult.MISS, CacheReason.ABSENT
        self.age: int | None = None  # the Age served, for the record
        self.hit: StoredResponse | None = None  # answer this without going upstream
        self.wait: asyncio.Future | None = None  # another request fetches this key: wait for it first
        self.validating = False  # the entry's validators go upstream (a 304 freshens it)
        self.leader = False  # this request's fetch is the one others wait for
        self.invalidate = False  # an unsafe method: a success invalidates the URI (§4.4)
        self.can_store = False
        self.swr = False  # served stale: refresh the entry in the background (RFC 5861 §3)
        self.background = False  # this request is that refresh
        self.consult = False  # nothing in-process: ask the shared tier first (`consult_shared`)

    def begin(self, coalesce: bool = True, shared: bool = True) -> Flow:
        head, cfg = self.head, self.cfg
        method = head.method
        if method not in ("GET", "HEAD"):
            self.result, self.reason = CacheResult.BYPASS, CacheReason.METHOD
            self.invalidate = method not in SAFE
            return self
        if "range" in head.index:
            self.result, self.reason = CacheResult.BYPASS, CacheReason.RANGE
            return self
        req_cc = self._request_cc()
        self.uri, self.extra = cache_key(cfg.key, self.scheme, self.host, self.path, self.query, head)
        e, any_variant = self.store.find(self.uri, self.extra, head)
        self.can_store = method == "GET" and "no-store" not in req_cc
        if e is None:
            self.reason = CacheReason.VARY_MISMATCH if any_variant else CacheReason.ABSENT
            if shared and self.store.shared is not None and self.store.shared.available():
                self.consult = True
                return self
            return self._upstream(coalesce)
        self.entry = e
        age = e.age(self.now)
        max_age = delta_seconds(req_cc.get("max-age")) if "max-age" in req_cc else None
        if "no-cache" in e.cc:
            self.reason = CacheReason.NO_CACHE  # §5.2.2.4
        elif "no-cache" in req_cc or (max_age is not None and (max_age == 0 or age > max_age)):
            self.reason = CacheReason.CLIENT_NO_CACHE  # §5.2.1.4, §5.2.1.1
        elif age < e.lifetime:
            self.result, self.reason = CacheResult.HIT, CacheReason.FRESH
            self.hit, self.age = serve(e, head, self.now)
            return self
        else:
            self.reason = CacheReason.EXPIRED
            if age - e.lifetime <= e.window("stale-while-revalidate", cfg.stale_while_revalidate_s):
                self.result, self.reason = CacheResult.STALE, CacheReason.STALE_WHILE_REVALIDATE
                self.hit, self.age = serve(e, head, self.now)
                self.swr = not e.revalidating
                e.revalidating = True
                return self
        self.validating = e.etag is not None or e.last_modified is not None
        return self._upstream(coalesce)

    async def consult_shared(self, now: float) -> None:
        """Nothing in-process: what the shared tier holds for the key fills the store, then the lookup again (a
        fresh response found there is a hit, reason `shared`)."""
        self.consult = False
        found = await self.store.shared.find(self.uri, self.extra)
        for e in found:
            self.store.put(e, share=False)
        self.now = now
        self.begin(shared=False)
        if found and self.result is CacheResult.HIT:
            self.reason = CacheReason.SHARED

    def refresh(self, e: Entry) -> Flow:
        """This request is the background refresh of `e` that a stale-while-revalidate answer started."""
        self.entry, self.uri, self.extra = e, e.uri, e.extra
        self.reason, self.background, self.can_store = CacheReason.STALE_WHILE_REVALIDATE, True, True
        self.validating = e.etag is not None or e.last_modified is not None
        return self

    def _request_cc(self) -> dict:
        head = self.head
        cc = directives(hdr.combined(head.headers, "cache-control", head.index))
        if not cc and "no-cache" in head.index.get("pragma", "").lower():  # §5.4: where Cache-Control is absent
            cc["no-cache"] = None
        return cc

    def _upstream(self, coalesce: bool) -> Flow:
        if not self.cfg.coalesce or not coalesce or self.head.method != "GET":
            return self
        key = (self.uri, self.extra)
        pending = self.store.inflight.get(key)
        if pending is not None and not pending.done():
            self.wait = pending
            self.store.waiting += 1
        else:
            self.store.inflight[key] = asyncio.get_running_loop().create_future()
            self.leader = True
        return self

    def after_wait(self, now: float) -> None:
        """The fetch this request waited on is over: look again; a stored response answers it (a coalesced hit),
        otherwise it goes upstream itself."""
        self.wait = None
        self.store.waiting -= 1
        self.now = now
        e, _ = self.store.find(self.uri, self.extra, self.head)
        if e is not None and e.age(now) < e.lifetime and "no-cache" not in e.cc:
            self.entry = e
            self.result, self.reason = CacheResult.HIT, CacheReason.COALESCED
            self.hit, self.age = serve(e, self.head, now)

    def upstream_headers(self, headers: Headers) -> Headers:
        """The request as it goes upstream: when revalidating, the stored response's validators (RFC 9111 §4.3.1)
        replace the client's own conditions (answered here, against the entry, once it is confirmed)."""
        if not self.validating:
            return headers
        e = self.entry
        out = tuple(h for h in headers if h[0].lower() not in CONDITIONALS)
        if e.etag is not None:
            out += (("If-None-Match", e.etag),)
        if e.last_modified is not None:
            out += (("If-Modified-Since", e.last_modified),)
        return out

    def response(self, r: UpstreamResponse, now: float) -> UpstreamResponse:
        """What the upstream's answer does: invalidate (an unsafe method's success), freshen the entry and serve
        it (a 304 to our validators, §4.3.4), serve it stale (a 5xx within stale-if-error), or store it — now if
        its body came whole, else as it streams to the client (`_Tee`). Returns what the client is sent."""
        status = r.status
        if self.invalidate:
            if 200 <= status < 400:
                self.store.invalidate(invalidated_uris(self.cfg.key, self.scheme, self.host, self.path, self.query,
                                                       r.headers))
            return r
        if self.result is CacheResult.BYPASS:
            return r
        e = self.entry
        if status == 304 and self.validating and e is not None:
            r.close()
            self._freshen(e, r.headers, now)
            self.result = CacheResult.REVALIDATED
            self.hit, self.age = serve(e, self.head, now)
            return self.hit
        if status >= 500:
            stale = self.stale_if_error(now)
            if stale is not None:
                r.close()
                return stale
        if not self.can_store:  # a HEAD's answer has no body to keep; a request may say no-store (§5.2.1.5)
            if self.head.method == "GET":
                self.result, self.reason = CacheResult.BYPASS, CacheReason.CLIENT_NO_STORE
            return r
        index: dict[str, str] = {}
        for k, v in r.headers:
            index.setdefault(k.lower(), v)
        cc = directives(hdr.combined(r.headers, "cache-control", index))
        why = not_storable(status, self._request_cc(), cc, index, "authorization" in self.head.index, self.cfg)
        vary = vary_names(r.headers)
        if why is None and vary is None:
            why = CacheReason.VARY_STAR  # §4.1: it would never match a later request
        if why is None:
            entry = make_entry(self.uri, self.extra, vary, vary_values(vary, self.head), status, r.reason,
                               r.headers, cc, self.now, now, self.cfg)
            if entry.lifetime <= 0 and entry.etag is None and entry.last_modified is None:
                why = CacheReason.NO_FRESHNESS  # nothing to reuse it for
        if why is not None:
            self.result, self.reason = CacheResult.BYPASS, why
            if e is not None and status < 500 and self.store.contains(e):
                self.store.remove(e, CacheEviction.EXPIRED)  # superseded by an answer that may not be kept
            return r
        length = hdr.content_length(r.headers)
        if length is not None and length > self.cfg.max_entry_bytes:
            self.result, self.reason = CacheResult.BYPASS, CacheReason.TOO_LARGE
            return r
        if r.whole is not None and length is not None and len(r.whole) == length:
            self.stored(entry, r.whole)
            return r
        return _Tee(r, self, entry)

    def stored(self, entry: Entry, body: bytes) -> None:
        entry.body = body
        self.store.put(entry)
        self.release()

    def _freshen(self, e: Entry, headers: Headers, now: float) -> None:
        """RFC 9111 §4.3.4: the 304's fields replace the stored ones of the same name (framing aside); the age and
        freshness start over from this response."""
        new = [h for h in headers if h[0].lower() not in NOT_STORED]
        names = {k.lower() for k, _ in new}
        merged = tuple(h for h in e.headers if h[0].lower() not in names) + tuple(new)
        index: dict[str, str] = {}
        for k, v in merged:
            index.setdefault(k.lower(), v)
        fresh = make_entry(e.uri, e.extra, e.vary, e.vary_values, e.status, e.reason, merged,
                           directives(hdr.combined(merged, "cache-control", None)), self.now, now, self.cfg)
        e.headers, e.cc, e.date, e.response_time = fresh.headers, fresh.cc, fresh.date, fresh.response_time
        e.initial_age, e.lifetime, e.etag, e.last_modified = (fresh.initial_age, fresh.lifetime, fresh.etag,
                                                              fresh.last_modified)
        e.revalidating = False
        if self.store.contains(e):
            self.store.refreshed(e)
        self.release()

    def stale_if_error(self, now: float) -> StoredResponse | None:
        """RFC 5861 §4: the upstream failed (a 5xx, or no answer): the stale entry, if within its window."""
        e = self.entry
        if e is None or self.invalidate or self.background or not self.store.contains(e):
            return None
        if e.age(now) - e.lifetime > e.window("stale-if-error", self.cfg.stale_if_error_s):
            return None
        self.result, self.reason = CacheResult.STALE, CacheReason.STALE_IF_ERROR
        self.hit, self.age = serve(e, self.head, now)
        return self.hit

    def too_large(self) -> None:
        self.result, self.reason = CacheResult.BYPASS, CacheReason.TOO_LARGE
        self.release()

    def release(self) -> None:
        """The fetch others may wait on is over (stored, or nothing to store): wake them."""
        if self.leader:
            self.leader = False
            fut = self.store.inflight.pop((self.uri, self.extra), None)
            if fut is not None and not fut.done():
                fut.set_result(None)

    def finish(self) -> tuple[str, str, int | None]:
        """The request is over: wake any waiters, and its outcome (result, reason, age served) for the record."""
        self.release()
        if self.background and self.entry is not None:
            self.entry.revalidating = False
        return self.result.value, self.reason.value, self.age


class _Tee:
    """An upstream response streamed to the client and kept, up to `max_entry_bytes`, for the store."""

    __slots__ = ("_entry", "_flow", "_r", "headers", "peer_address", "peer_port", "reason", "status", "whole")

    def __init__(self, r: UpstreamResponse, flow: Flow, entry: Entry):
        self._r, self._flow, self._entry = r, flow, entry
        self.status, self.reason, self.headers, self.whole = r.status, r.reason, r.headers, r.whole
        self.peer_address, self.peer_port = r.peer_address, r.peer_port

    async def body(self):
        kept: list[bytes] | None = []
        size, limit = 0, self._flow.cfg.max_entry_bytes
        async for chunk in self._r.body():
            if kept is not None:
                size += len(chunk)
                if size > limit:
                    kept = None
                    self._flow.too_large()
                else:
                    kept.append(chunk)
            yield chunk
        if kept is not None:  # the body is complete by its framing
            self._flow.stored(self._entry, b"".join(kept))

    def close(self) -> None:
        self._r.close()


class Discard:
    """The downstream of a background refresh (stale-while-revalidate): nobody is waiting for the answer; the
    body is read (so it can be stored) and dropped. Implements `io.interfaces.SyncDownstream`."""

    started = False

    def close_after_response(self) -> None:
        pass

    async def start(self, status, reason, headers, content_length) -> None:
        self.started = True

    async def write(self, chunk: bytes) -> None:
        pass

    async def finish(self) -> None:
        pass

    async def respond(self, status, reason, headers, body) -> None:
        self.started = True

    def respond_now(self, status, reason, headers, body) -> None:
        self.started = True

    def abort(self) -> None:
        pass

    def done(self) -> None:
        pass
