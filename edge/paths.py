"""One canonical form of a request path, computed once: routing sees it and the upstream receives it.

`canonical_path(raw, rules)` normalises what RFC 3986 §6.2.2 says is equivalent and refuses what an upstream
could read differently from the router (each refusal an `InvalidPath` whose `reason` is the `error.type`; the
table, with the reasoning, is docs/refusals.md):
- only an origin-form path (`/...`, RFC 9112 §3.2.1) is routable: `*`, authority-form and relative targets are
  `invalid_target`; a character RFC 3986 §3.3 does not allow in a path (a raw backslash, space, quote, brace,
  control or non-ASCII character) is `path_invalid_char`; a malformed `%XX` is `path_invalid_percent`;
- percent-encoded *unreserved* characters are decoded (`%7E` → `~`, `%2E` → `.`, §6.2.2.2) and the hex of the
  others upper-cased (§6.2.2.1); an encoded control character (`%00`–`%1F`, `%7F`) is `path_control_char`, an
  encoded `%` that decodes to another escape (`%252e`) is `path_double_encoding`, escapes that do not decode to
  UTF-8 (`%C0%AE`, an overlong `.`; `%FF`) are `path_invalid_utf8` (RFC 3629 §3);
- an encoded slash or backslash (`%2F`, `%5C`) follows the listener's `escaped_slashes`: `reject` it
  (`path_escaped_slash`), `unescape` it into a `/` before anything else looks at the path, or `keep` it encoded
  (refused all the same when it sits next to a dot segment, `..%2F`, `%2E%2E%5C`);
- a path parameter (`;`, RFC 3986 §3.3) follows `path_parameters`: `reject` (`path_parameter`) or `keep`
  (refused all the same on a dot segment, `..;x`, which servlet containers resolve as `..`);
- `merge_slashes` turns `//` into `/`;
- dot-segments are removed last (§5.2.4), so `/api/../admin` and `/api/%2e%2e/admin` both become `/admin`
  before any route sees them.
The result is sent upstream byte for byte (the forwarder must not re-encode or re-normalise it), and is its own
canonical form: `canonical_path(canonical_path(p, r)) == canonical_path(p, r)`.

`PathRules` are the three settings (a `ListenerConfig` carries the same attributes); `LENIENT` (keep, keep, no
merging) is what a path that already passed a listener's rules is re-checked with (a rewrite policy's result).
`split_target(target)` splits path and query; `target_authority(target)` is an absolute-form target's authority;
`strip_prefix(path, prefix)` is the route rewrite, segment-aware.
"""

from __future__ import annotations

import re
from typing import NamedTuple
from urllib.parse import unquote_to_bytes

try:
    import cython
except ImportError:  # a pure install without Cython
    from gatewatch import cython_shim as cython

from gatewatch.telemetry.names import RejectReason as R

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar / "/" plus "%" (validated separately); anything else in a raw path is rejected.
_ALLOWED = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")  # fullmatch: '$' would accept a trailing newline
# The common case in one match: non-empty segments of pchars, no '%' or ';', none starting with '.' (so no dot
# segment): already canonical under any rules.
_PLAIN = re.compile(r"(?:/[A-Za-z0-9\-_~!$&'()*+,=:@][A-Za-z0-9\-._~!$&'()*+,=:@]*)+/?|/")
# The same test as one pass over the characters (`plain_path`): a segment's characters (`_PLAIN`'s second class)
# by code point; tests/edge/test_paths.py holds the two to the same answers.
_SEGMENT_CHARS = bytes(1 if re.fullmatch(r"[A-Za-z0-9\-._~!$&'()*+,=:@]", chr(c)) else 0 for c in range(128))
_PCT = re.compile(r"%(.{0,2})")
_HEX = frozenset("0123456789abcdefABCDEF")
_DOUBLE = re.compile(r"%25[0-9A-Fa-f]{2}")  # an escaped '%' followed by hex: a second decoding makes an escape
_NON_ASCII = re.compile(r"%[89A-F][0-9A-F]")  # (after upper-casing) an escaped byte 0x80-0xFF
_ESCAPED_SLASH = re.compile(r"%2F|%5C")
_SLASHES = re.compile(r"//+")
_DOTS = frozenset((".", ".."))


class PathRules(NamedTuple):
    """How a listener treats encoded slashes, path parameters and empty segments (`ListenerConfig` fields)."""

    escaped_slashes: str = "keep"  # reject | unescape | keep
    merge_slashes: bool = False
    path_parameters: str = "keep"  # reject | keep


LENIENT = PathRules()
STRICT = PathRules("reject", True, "reject")  # a listener's defaults


class InvalidPath(ValueError):
    """The request target cannot be routed: answered 400 `bad_request`, `reason` (a `RejectReason` value) being
    its `error.type`."""

    def __init__(self, reason: R, detail: str):
        super().__init__(detail)
        self.reason = reason.value


def canonical_path(raw: str, rules: PathRules = LENIENT) -> str:
    if plain_path(raw) if cython.compiled else _PLAIN.fullmatch(raw):
        return raw
    if not raw.startswith("/"):
        raise InvalidPath(R.INVALID_TARGET, "the request target must be an absolute path")
    if not _ALLOWED.fullmatch(raw):
        raise _bad_char(raw)
    path = _normalise_percent(raw, rules.escaped_slashes) if "%" in raw else raw
    if ";" in path:
        _check_parameters(path, rules.path_parameters)
    if "//" in path and rules.merge_slashes:
        path = _SLASHES.sub("/", path)
    if "/." in path:
        path = remove_dot_segments(path)
    return path


@cython.locals(table=cython.p_const_uchar, c=cython.uint, prev=cython.uint, i=cython.Py_ssize_t,
               n=cython.Py_ssize_t)
def plain_path(raw) -> cython.bint:
    """`_PLAIN.fullmatch(raw)` as one pass over the characters: "/", or segments of `_SEGMENT_CHARS` after single
    slashes, none starting with '.', with at most a trailing '/'. Compiled, ~10 instructions a character against
    ~3k for the regex match (as Python the regex is the faster: `canonical_path` uses it there)."""
    n = len(raw)
    if n == 0 or raw[0] != "/":
        return False
    table = _SEGMENT_CHARS
    prev = 47  # '/'
    for i in range(1, n):
        c = ord(raw[i])
        if c == 47:
            if prev == 47:  # an empty segment
                return False
        elif c >= 128 or not table[c] or (c == 46 and prev == 47):  # '%', ';', ...; a segment starting with '.'
            return False
        prev = c
    return True


def _bad_char(raw: str) -> InvalidPath:
    for ch in raw:
        if not _ALLOWED.fullmatch(ch):
            if ch == "#":  # RFC 9112 §3.2: a fragment is never part of a request target
                return InvalidPath(R.FRAGMENT_IN_TARGET, "the request target has a fragment")
            if ord(ch) < 0x20 or ch == "\x7f":
                return InvalidPath(R.PATH_CONTROL_CHAR, "the path contains a control character")
            return InvalidPath(R.PATH_INVALID_CHAR, f"the path contains {ch!r}, which must be percent-encoded")
    raise AssertionError("unreachable: the path matched character by character")


def _normalise_percent(path: str, escaped_slashes: str) -> str:
    def fix(m: re.Match[str]) -> str:
        hexpair = m.group(1)
        if len(hexpair) != 2 or not set(hexpair) <= _HEX:
            raise InvalidPath(R.PATH_INVALID_PERCENT, "invalid percent-encoding")
        byte = int(hexpair, 16)
        if byte in UNRESERVED:  # RFC 3986 §6.2.2.2
            return chr(byte)
        if byte < 0x20 or byte == 0x7F:  # NUL truncates a C string; CR/LF split log lines and headers
            raise InvalidPath(R.PATH_CONTROL_CHAR, "the path contains an encoded control character")
        if byte == 0x2F or byte == 0x5C:
            if escaped_slashes == "reject":
                raise InvalidPath(R.PATH_ESCAPED_SLASH, "the path contains an encoded slash or backslash")
            if escaped_slashes == "unescape":
                return "/"  # a backslash too: the separator of the servers that decode it (IIS, Windows paths)
        return "%" + hexpair.upper()  # RFC 3986 §6.2.2.1

    path = _PCT.sub(fix, path)
    if "%25" in path and _DOUBLE.search(path):
        raise InvalidPath(R.PATH_DOUBLE_ENCODING, "the path is percent-encoded twice (%25 followed by hex)")
    if _NON_ASCII.search(path):
        try:
            unquote_to_bytes(path).decode("utf-8")  # strict: overlong forms and surrogates fail (RFC 3629 §3)
        except UnicodeDecodeError:
            raise InvalidPath(R.PATH_INVALID_UTF8, "the path's escapes are not UTF-8") from None
    if escaped_slashes == "keep" and _ESCAPED_SLASH.search(path):
        # Kept encoded, but an upstream that decodes it would see a dot segment the router never resolved.
        for segment in path.split("/"):
            if ("%2F" in segment or "%5C" in segment) and _DOTS.intersection(_ESCAPED_SLASH.split(segment)):
                raise InvalidPath(R.PATH_ESCAPED_SLASH, "an encoded slash next to a dot segment")
    return path


def _check_parameters(path: str, policy: str) -> None:
    if policy == "reject":
        raise InvalidPath(R.PATH_PARAMETER, "the path has a parameter (';')")
    for segment in path.split("/"):
        if ";" in segment and segment.partition(";")[0] in _DOTS:
            raise InvalidPath(R.PATH_PARAMETER, "a dot segment with a parameter ('..;')")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 §5.2.4 for an absolute path; the result always starts with '/'."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, seg in enumerate(segments):
        last = i == len(segments) - 1
        if seg == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif seg == ".":
            if last:
                out.append("")
        else:
            out.append(seg)
    return "/" + "/".join(out)


@cython.locals(rest=str, path=str, query=str)  # (str methods then called directly, not by name)
def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (path, query) without decoding anything. Absolute-form targets
    (`http://host/path?q`, sent to proxies) keep only their path and query. A fragment is cut off here (the
    engine refuses a target that has one: `fragment_in_target`)."""
    if not target.startswith("/") and target[:8].lower().startswith(("http://", "https://")):  # case-insensitive
        rest = target.split("://", 1)[1]
        slash = rest.find("/")
        q = rest.find("?")
        if slash < 0 or (0 <= q < slash):
            target = "/" + (rest[q:] if q >= 0 else "")
        else:
            target = rest[slash:]
    if "#" in target:
        target = target.split("#", 1)[0]
    path, sep, query = target.partition("?")
    return path, query


@cython.locals(rest=str)
def target_authority(target: str) -> str | None:
    """The authority of an absolute-form target (`http://host:port/path`), which RFC 9112 §3.2.2 says wins over
    the Host header; None for the usual origin-form `/path`."""
    if target.startswith("/") or not target[:8].lower().startswith(("http://", "https://")):
        return None
    rest = target.split("://", 1)[1]
    end = min([i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0], default=len(rest))
    authority = rest[:end].rsplit("@", 1)[-1]
    return authority or None


def strip_prefix(path: str, prefix: str) -> str:
    """`/api/orders/1` minus `/api` → `/orders/1`; the prefix itself becomes `/`. Caller guarantees the match."""
    prefix = prefix.rstrip("/")
    rest = path[len(prefix):]
    if not rest:
        return "/"
    return rest if rest.startswith("/") else "/" + rest
