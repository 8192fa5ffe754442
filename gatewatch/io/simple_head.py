"""The simple head: one read that holds exactly one complete, ordinary message, parsed without llhttp's callbacks.

llhttp (httptools) stays the parser of record. It calls back into Python once per message begin, URL piece,
header, head end, body piece and message end: about a dozen calls for a small exchange, a quarter of the CPU a
request costs here (bench/README, "The simple head"). Most exchanges are a few plain lines in one read, so the two
protocols first try the functions below, which check and split such a head in one pass over its bytes:

- `simple_request`: a bodiless HTTP/1.1 request in origin form, one Host, keep-alive, and nothing after it;
- `simple_response`: an HTTP/1.1 response with one Content-Length whose body is exactly the rest of the read.

They accept a strict subset of what llhttp accepts and return None for anything else: another version or form,
an unknown or extension method, any byte outside visible ASCII, SP and HTAB, a bare CR or LF, a header name that
is not a token (RFC 9110 §5.6.2), obs-fold (RFC 9112 §5.2), Transfer-Encoding, Expect, Upgrade, Connection
other than keep-alive, a request body, an interim, 204 or 304 response, a partial or extra message, a head over
the limits. None means "feed the same bytes to llhttp": it then answers exactly as before, including every
refusal (docs/refusals.md). What they return is what llhttp's callbacks would have built (the differential test
in tests/io/test_simple_head.py holds them to it): names as received, values with leading whitespace removed and
trailing whitespace kept, as llhttp hands them over.

The pass is a loop over bytes: compiled (a C loop over the buffer) it costs a few instructions a byte; run as
Python it would cost far more than llhttp's callbacks, so `ENABLED` is true only compiled, and the pure build
parses every message with llhttp as before (the tests run these functions in both builds).
"""

from __future__ import annotations

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.io.http1 import HTTP_TOKEN, RESPONSE_DROP
from gatewatch.io.http1 import METHODS as REGISTERED

ENABLED: bool = cython.compiled  # the protocols try these functions only compiled (see above)

# What each byte may be, as flags: a token character (RFC 9110 §5.6.2), a field-value character (VCHAR, SP, HTAB;
# obs-text is llhttp's), an origin-form target character (RFC 9112 §3.2.1: RFC 3986 pchar, "/", "?", and "%" of
# pct-encoding). Controls, DEL and bytes above 0x7E are none of them.
TOKEN = 1
VALUE = 2
TARGET = 4
_TARGET_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~!$&'()*+,;=:@%/?"
_CLASSES = bytes((TOKEN if HTTP_TOKEN.fullmatch(bytes((b,))) else 0)
                 | (VALUE if 0x20 <= b < 0x7F or b == 0x09 else 0)
                 | (TARGET if b in _TARGET_CHARS else 0) for b in range(256))
CR, LF, SP, HTAB, COLON, SLASH = 13, 10, 32, 9, 58, 47

# The methods a simple request may have: the registered ones (the same str objects the llhttp path gives), but
# CONNECT, whose target is an authority, not a path. Extension methods go to llhttp, which knows its own table.
METHODS = {raw: m for raw, m in REGISTERED.items() if m != "CONNECT"}
# A header with one of these names makes a head not simple: framing, 100-continue and upgrades are llhttp's.
_FRAMING = frozenset({"transfer-encoding", "content-length", "expect", "upgrade"})
_RESPONSE_FRAMING = frozenset({"transfer-encoding", "upgrade"})

# Header name as received → its lower-case form: one dict lookup per header instead of a `lower()`, and every
# message's lower-case name is the same str object. Bounded: past the bound, new names are lowered each time.
_NAMES: dict = {}
_NAMES_MAX = 2048
_NAME_MAX = 64


@cython.cfunc
@cython.locals(data=bytes, start=cython.Py_ssize_t, headers=list, lowers=list, p=cython.p_const_uchar,
               classes=cython.p_const_uchar, n=cython.Py_ssize_t, k=cython.Py_ssize_t, ns=cython.Py_ssize_t,
               vs=cython.Py_ssize_t, c=cython.uchar, name=str, lk=object, names=dict)
@cython.returns(cython.Py_ssize_t)
def _fields(data: bytes, start: int, headers: list, lowers: list) -> int:
    """Parse the header lines from `start` up to and including the empty line: (name, value) pairs into `headers`
    and the lower-case names into `lowers`. The offset just past the empty line, or -1 if a line is not
    `token ":" OWS value CRLF` of `_CLASSES` (no obs-fold, no whitespace before the colon, no bare CR or LF)."""
    p = data
    classes = _CLASSES
    names = _NAMES
    n = len(data)
    k = start
    while True:
        if k >= n:
            return -1
        if p[k] == CR:
            if k + 1 < n and p[k + 1] == LF:
                return k + 2
            return -1
        ns = k
        while k < n and classes[p[k]] & TOKEN:
            k += 1
        if k == ns or k >= n or p[k] != COLON:
            return -1
        name = data[ns:k].decode("ascii")
        k += 1
        while k < n and (p[k] == SP or p[k] == HTAB):
            k += 1
        vs = k
        while k < n and classes[p[k]] & VALUE:
            k += 1
        if k + 1 >= n or p[k] != CR or p[k + 1] != LF:
            return -1
        lk = names.get(name)
        if lk is None:
            lk = name.lower()
            if len(names) < _NAMES_MAX and len(name) <= _NAME_MAX:
                names[name] = lk
        headers.append((name, data[vs:k].decode("ascii")))
        lowers.append(lk)
        k += 2


@cython.cfunc
@cython.locals(value=str, i=cython.Py_ssize_t)
@cython.returns(cython.bint)
def _keep_alive(value: str) -> bool:
    """The Connection value is exactly `keep-alive`, in any case (a token, RFC 9110 §7.6.1)."""
    if len(value) != 10:
        return False
    for i in range(10):
        if (ord(value[i]) | 0x20) != ord("keep-alive"[i]):  # ("-" | 0x20 is "-": no other byte maps to it here)
            return False
    return True


@cython.locals(data=bytes, p=cython.p_const_uchar, classes=cython.p_const_uchar, n=cython.Py_ssize_t,
               k=cython.Py_ssize_t, ts=cython.Py_ssize_t, end=cython.Py_ssize_t, i=cython.Py_ssize_t,
               hosts=cython.Py_ssize_t, headers=list, lowers=list, index=dict, lk=str, value=str, methods=dict,
               framing=frozenset)
def simple_request(data: bytes, max_header_bytes: int, max_headers: int,
                   max_target: int) -> tuple[str, str, list, dict] | None:
    """(method, target, headers, index) of the one bodiless keep-alive HTTP/1.1 request that `data` holds
    exactly, or None: llhttp parses it. `index` maps each lower-case name to its first value. Within the limits
    of `fast_listener`'s llhttp path, counted so that a head this accepts is one that path would accept too."""
    p = data
    classes = _CLASSES
    n = len(data)
    k = 0
    while k < n and k < 8 and classes[p[k]] & TOKEN:
        k += 1
    if k >= n or p[k] != SP:
        return None
    methods = METHODS
    method = methods.get(data[:k])
    if method is None:
        return None
    k += 1
    ts = k
    if k >= n or p[k] != SLASH:  # origin form only
        return None
    while k < n and classes[p[k]] & TARGET:
        k += 1
    if k - ts > max_target or not data.startswith(b" HTTP/1.1\r\n", k):
        return None
    target = data[ts:k].decode("ascii")
    headers = []
    lowers = []
    end = _fields(data, k + 11, headers, lowers)
    # Nothing may follow (a pipelined request, a body). llhttp's path counts len(name) + len(value) + 4 per
    # header, at most the line's length + 3.
    if end != n or len(headers) > max_headers or end + 3 * len(headers) > max_header_bytes:
        return None
    index = {}
    hosts = 0
    framing = _FRAMING
    for i in range(len(headers)):
        lk = lowers[i]
        if lk in framing:
            return None
        value = headers[i][1]
        if lk == "host":
            hosts += 1
        elif lk == "connection" and not _keep_alive(value):
            return None  # close, upgrade, or a list of hop-by-hop names: llhttp's keep-alive rules decide
        if lk not in index:
            index[lk] = value
    if hosts != 1:
        return None  # none or several: llhttp's path answers 400 (RFC 9112 §3.2)
    return method, target, headers, index


@cython.locals(data=bytes, p=cython.p_const_uchar, classes=cython.p_const_uchar, n=cython.Py_ssize_t,
               k=cython.Py_ssize_t, end=cython.Py_ssize_t, i=cython.Py_ssize_t, status=cython.int,
               length=cython.Py_ssize_t, digits=cython.Py_ssize_t, c=cython.uchar, headers=list, lowers=list, lk=str,
               value=str, name=str, framing=frozenset, drop=frozenset, pos=cython.Py_ssize_t, run=cython.Py_ssize_t,
               line=cython.Py_ssize_t, relayable=cython.bint, dated=cython.bint, pieces=list)
def simple_response(data: bytes, max_head: int) -> tuple[int, str, list, bytes, bytes | None, bool] | None:
    """(status, reason, headers, body, block, dated) of the one keep-alive HTTP/1.1 response with a
    Content-Length that `data` holds exactly, body included, or None: llhttp parses it.

    `block` is the head's header lines as a proxy relays them, cut straight from `data`: every line but those of
    `RESPONSE_DROP`, each exactly `name ": " value CRLF`. That is byte for byte what serializing
    `proxy.headers.downstream_response_headers` writes before its `Via` line, so the listener may write it as it
    is. None when a line is written any other way (no space, or more than one, after the colon) or when there is
    a `Via` (ours is merged into it): the relay then serializes the headers. `dated`: a Date line is among them."""
    p = data
    classes = _CLASSES
    n = len(data)
    # "HTTP/1.1 " 3DIGIT SP reason-phrase CRLF (RFC 9112 §4); the reason may be empty, the SP before it may not
    if n < 15 or not data.startswith(b"HTTP/1.1 ") or p[12] != SP:
        return None
    status = 0
    for k in range(9, 12):
        c = p[k]
        if c < 48 or c > 57:
            return None
        status = status * 10 + (c - 48)
    if status < 200 or status == 204 or status == 304:
        return None  # interim responses, and the statuses without a body, are llhttp's
    k = 13
    while k < n and classes[p[k]] & VALUE:
        k += 1
    if k + 1 >= n or p[k] != CR or p[k + 1] != LF:
        return None
    reason = data[13:k].decode("ascii")
    headers = []
    lowers = []
    end = _fields(data, k + 2, headers, lowers)
    if end < 0 or end > max_head:
        return None
    length = -1
    framing = _RESPONSE_FRAMING
    drop = RESPONSE_DROP
    pos = run = k + 2  # the start of the line being looked at, and of the run of kept lines it belongs to
    relayable = True
    dated = False
    pieces = []
    for i in range(len(headers)):
        lk = lowers[i]
        if lk in framing:
            return None
        name = headers[i][0]
        value = headers[i][1]
        if relayable:
            # The line is `name ": " value CRLF` exactly when a SP follows the colon and a CR is where that
            # length puts it: with no OWS the CR comes one byte early, with more OWS a value byte (or a second
            # SP) is there, and a value holds no CR. (So `pos` is always the true start of line i.)
            line = len(name) + len(value) + 4
            if p[pos + len(name) + 1] != SP or p[pos + line - 2] != CR:
                relayable = False
            else:
                if lk in drop:
                    if lk == "via":
                        relayable = False
                    if pos > run:
                        pieces.append(data[run:pos])
                    run = pos + line
                elif lk == "date":
                    dated = True
                pos += line
        if lk == "content-length":
            # RFC 9110 §8.6: 1*DIGIT. Several lines, even equal ones, and trailing whitespace are llhttp's.
            if length >= 0 or not value or len(value) > 18:
                return None
            length = 0
            for digits in range(len(value)):
                c = ord(value[digits])
                if c < 48 or c > 57:
                    return None
                length = length * 10 + (c - 48)
        elif lk == "connection" and not _keep_alive(value):
            return None
    if length != n - end:
        return None  # no length, or the body is still arriving, or more follows it
    if not relayable:
        return status, reason, headers, data[end:], None, False
    if end - 2 > run:
        pieces.append(data[run:end - 2])
    return status, reason, headers, data[end:], (pieces[0] if len(pieces) == 1 else b"".join(pieces)), dated
