"""One canonical form of a request path, computed once: routing sees it and the upstream receives it.

`canonical_path(raw)`:
- rejects what is not an origin-form path (`*`, control characters, spaces, bad or truncated `%XX`);
- decodes percent-encoded *unreserved* characters (`%7E` → `~`, `%2E` → `.`), which RFC 3986 §6.2.2.2 says
  are equivalent, and upper-cases the hex of the others. `%2F` stays encoded: it is data, not a separator;
- removes dot-segments (RFC 3986 §5.2.4), so `/api/../admin` and `/api/%2e%2e/admin` both become `/admin`
  before any route sees them.
The result is sent upstream byte for byte (the forwarder must not re-encode or re-normalise it).

`strip_prefix(path, prefix)` is the route rewrite, segment-aware.
"""

from __future__ import annotations

import re

UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
# RFC 3986 pchar / "/" plus "%" (validated separately); anything else in a raw path is rejected.
_ALLOWED = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/%]*")  # fullmatch: '$' would accept a trailing newline
_PCT = re.compile(r"%(.{0,2})")
_HEX = frozenset("0123456789abcdefABCDEF")


class InvalidPath(ValueError):
    """The request target cannot be a path; answered 400 `bad_request`."""


def _normalise_percent(path: str) -> str:
    def fix(m: re.Match[str]) -> str:
        hexpair = m.group(1)
        if len(hexpair) != 2 or not set(hexpair) <= _HEX:
            raise InvalidPath("invalid percent-encoding")
        byte = int(hexpair, 16)
        if byte in UNRESERVED:
            return chr(byte)
        return "%" + hexpair.upper()

    return _PCT.sub(fix, path)


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


def canonical_path(raw: str) -> str:
    if not raw.startswith("/"):
        raise InvalidPath("the request target must be an absolute path")
    if not _ALLOWED.fullmatch(raw):
        raise InvalidPath("the path contains characters that must be percent-encoded")
    path = _normalise_percent(raw) if "%" in raw else raw
    if "/." in path:
        path = remove_dot_segments(path)
    return path


def split_target(target: str) -> tuple[str, str]:
    """Split a request target into (path, query) without decoding anything. Absolute-form targets
    (`http://host/path?q`, sent to proxies) keep only their path and query."""
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


def target_authority(target: str) -> str | None:
    """The authority of an absolute-form target (`http://host:port/path`), which RFC 9112 §3.2.2 says wins over
    the Host header; None for the usual origin-form `/path`."""
    if target.startswith("/") or not target[:8].lower().startswith(("http://", "https://")):
        return None
    rest = target.split("://", 1)[1]
    end = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0), default=len(rest))
    authority = rest[:end].rsplit("@", 1)[-1]
    return authority or None


def strip_prefix(path: str, prefix: str) -> str:
    """`/api/orders/1` minus `/api` → `/orders/1`; the prefix itself becomes `/`. Caller guarantees the match."""
    prefix = prefix.rstrip("/")
    rest = path[len(prefix):]
    if not rest:
        return "/"
    return rest if rest.startswith("/") else "/" + rest
