"""Header rules of a proxy (RFC 9110 §7.6): hop-by-hop removal, forwarding headers, request ids.

Pure functions over `Headers` tuples; the engine calls them, the I/O ends never decide header policy.
"""

from __future__ import annotations

import re

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.io.http1 import HOP_BY_HOP, RESPONSE_DROP, RESPONSE_REPLACED  # noqa: F401 - re-exported
from gatewatch.io.interfaces import Headers
from gatewatch.telemetry.context import hex128

# Replaced by this proxy on the way upstream (trace context is re-issued for our own span; Expect is answered
# by the listener; Content-Length is re-derived by the forwarder from the body it streams).
# X-Forwarded-Client-Cert is a TLS listener's to set, from a client certificate it verified: a client never
# sets it (kept only from a trusted proxy in front, like X-Forwarded-Proto).
REISSUED_UPSTREAM = frozenset({"traceparent", "tracestate", "expect", "x-request-id", "via", "host",
                               "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
                               "x-forwarded-client-cert"})
# Inbound baggage is re-issued as well: a continued context's, cut to the W3C limits (telemetry.context.cap_baggage);
# none when the context was not continued.
UPSTREAM_DROP = HOP_BY_HOP | REISSUED_UPSTREAM | {"baggage"}
REQUEST_ID = re.compile(r"[A-Za-z0-9._:@+/=-]{1,128}")  # fullmatch: '$' would let "id\n" through


def strip_hop_by_hop(headers: Headers, also: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """`headers` without the hop-by-hop ones, the names any `Connection` header lists, and `also` (lower-case)."""
    return _without(headers, HOP_BY_HOP | also)


@cython.locals(h=tuple, name=str, out=list, connection=list)
def _without(headers: Headers, drop: frozenset[str]) -> list[tuple[str, str]]:
    """`headers` minus the names in `drop` (lower-case, a superset of HOP_BY_HOP) and the names any `Connection`
    header lists. One pass in the common case; a second only when `Connection` names extra headers."""
    out: list[tuple[str, str]] = []
    connection: list[str] = []
    for h in headers:
        name = h[0]
        name = name.lower()  # (typed str: a direct call of str.lower, not a lookup by name)
        if name not in drop:
            out.append(h)
        elif name == "connection":
            connection.append(h[1])
    return _without_listed(out, connection, drop) if connection else out


@cython.locals(value=str, t=str, listed=set, drop=frozenset)
def _without_listed(out: list[tuple[str, str]], connection: list[str], drop: frozenset[str]) -> list[tuple[str, str]]:
    """`out` less the header names the `Connection` values list (RFC 9110 §7.6.1), except those `drop` removed
    already. Nothing to do (and no second pass) in the common case of no `Connection` header."""
    listed: set[str] = set()
    for value in connection:
        for t in value.split(","):
            t = t.strip()
            t = t.lower()
            if t and t not in drop:
                listed.add(t)
    return [h for h in out if h[0].lower() not in listed] if listed else out


def request_id(inbound: str | None, rng) -> str:
    """Keep a well-formed inbound X-Request-Id (so a caller's id follows the request); otherwise mint one."""
    if inbound is not None and REQUEST_ID.fullmatch(inbound):
        return inbound
    return hex128(rng.getrandbits(128))  # 32 hex digits


def _first(headers: Headers, lname: str) -> str | None:
    for k, v in headers:
        if k.lower() == lname:
            return v
    return None


def _one(headers: Headers, lname: str, index: dict[str, str] | None) -> str | None:
    """The first value of a header, from `index` when there is one. (Not a lambda over `headers`: an inner
    function makes the compiled caller allocate a closure scope on every call, used or not.)"""
    return index.get(lname) if index is not None else _first(headers, lname)


def _all(headers: Headers, lname: str, index: dict[str, str] | None) -> str:
    """Every value of a header, comma-joined; `index` (lower-case name → first value) skips the scan when the
    header is absent, which is the common case."""
    if index is not None and lname not in index:
        return ""
    # (a list, not a generator: a generator is a closure, which a C function (headers.pxd) cannot hold)
    return ", ".join([v for k, v in headers if k.lower() == lname])


def combined(headers: Headers, lname: str, index: dict[str, str] | None) -> str | None:
    """Every value of a header as one (RFC 9110 §5.3: comma-joined in order), None when absent."""
    return _all(headers, lname, index) or None


@cython.locals(name=str)
def has_underscored_name(index: dict[str, str]) -> bool:
    """Whether a header name has an underscore. CGI-style backends (RFC 3875 §4.1.18) map `X_Forwarded_For` and
    `X-Forwarded-For` to the same HTTP_X_FORWARDED_FOR, so a client could pass one off as the other that this
    proxy sets (what nginx's `underscores_in_headers` and Envoy's `headers_with_underscores_action` guard)."""
    if cython.compiled:  # a C loop over the names: no joined str made (~2k instructions less per request)
        for name in index:
            if "_" in name:
                return True
        return False
    return "_" in "".join(index)  # one scan in C instead of a Python loop per header name


def without_underscored(headers: Headers) -> Headers:
    return tuple(h for h in headers if "_" not in h[0])


def upstream_request_headers(headers: Headers, client_address: str, scheme: str, host: str | None,
                             upstream_host: str, preserve_host: bool, trust_forwarded: bool, request_id: str,
                             traceparent: str, tracestate: str | None, version: str,
                             baggage: str | None, index: dict[str, str] | None = None) -> tuple[tuple[str, str], ...]:
    """The request's headers as the upstream gets them. (The engine passes the arguments in this order, by
    position, on every request: a call by keyword costs the callee a match per name.)"""
    out = _without(headers, UPSTREAM_DROP)
    out.insert(0, ("Host", host if (preserve_host and host) else upstream_host))
    xff = _all(headers, "x-forwarded-for", index)
    out.append(("X-Forwarded-For", f"{xff}, {client_address}" if xff else client_address))
    proto = _one(headers, "x-forwarded-proto", index) if trust_forwarded else None
    out.append(("X-Forwarded-Proto", proto or scheme))
    fwd_host = _one(headers, "x-forwarded-host", index) if trust_forwarded else None
    if fwd_host or host:
        out.append(("X-Forwarded-Host", fwd_host or host or ""))
    if trust_forwarded:
        xfcc = _all(headers, "x-forwarded-client-cert", index)
        if xfcc:
            out.append(("X-Forwarded-Client-Cert", xfcc))
    via = _all(headers, "via", index)
    out.append(("Via", f"{via}, {version} gatewatch" if via else f"{version} gatewatch"))
    out.append(("X-Request-Id", request_id))
    out.append(("traceparent", traceparent))
    if tracestate:
        out.append(("tracestate", tracestate))
    if baggage:
        out.append(("baggage", baggage))
    return tuple(out)


@cython.locals(h=tuple, name=str, out=list, via_values=list, lengths=list, connection=list, drop=frozenset)
def downstream_response_headers(headers: Headers, version: str) -> tuple[list[tuple[str, str]], int | None]:
    """Upstream response headers for the client, and the upstream's Content-Length (None: not known, stream it).
    Removed: hop-by-hop and framing (the listener re-frames), an inner tier's X-Request-Id and traceresponse
    (ours replace them); `Via` gets our hop. One pass over the headers in the common case."""
    out: list[tuple[str, str]] = []
    via_values: list[str] = []
    lengths: list[str] = []
    connection: list[str] = []
    drop = RESPONSE_DROP
    for h in headers:
        name = h[0]
        name = name.lower()
        if name not in drop:
            out.append(h)
        elif name == "content-length":
            lengths.append(h[1].strip())
        elif name == "via":
            via_values.append(h[1])
        elif name == "connection":
            connection.append(h[1])
    if connection:  # (rare: a call saved on every other response)
        out = _without_listed(out, connection, drop)
    via = ", ".join(via_values)
    out.append(("Via", f"{via}, {via_hop(version)}" if via else via_hop(version)))
    return out, _length(lengths)


def via_hop(version: str) -> str:
    """This proxy's entry in a `Via` (RFC 9110 §7.6.3: the protocol version it received, and its name)."""
    return f"{version} gatewatch"


def without(headers: list[tuple[str, str]], names: set[str]) -> list[tuple[str, str]]:
    """`headers` less those named in `names` (lower-case; an entry ending in `*` is a prefix)."""
    exact = {n for n in names if not n.endswith("*")}
    prefixes = tuple(n[:-1] for n in names if n.endswith("*"))
    return [h for h in headers
            if (name := h[0].lower()) not in exact and not (prefixes and name.startswith(prefixes))]


def content_length(headers: Headers) -> int | None:
    """The upstream's Content-Length if it is one well-formed value; None means "not known" (stream it)."""
    return _length([v.strip() for k, v in headers if k.lower() == "content-length"])


def _length(values: list[str]) -> int | None:
    if not values or (len(values) > 1 and any(v != values[0] for v in values)):
        return None
    v = values[0]
    return int(v) if v.isascii() and v.isdigit() else None


def apply_changes(headers: Headers, set_: list[tuple[str, str]], remove: set[str]) -> Headers:
    """Policy edits to the upstream request headers: drop every header named in `remove` (lower-case) or in
    `set_` (so a client-sent copy of an identity header can never survive next to ours), then append `set_`."""
    drop = remove | {k.lower() for k, _ in set_}
    return tuple((k, v) for k, v in headers if k.lower() not in drop) + tuple(set_)
