"""The canonical request path: what routing sees is exactly what the upstream receives."""

from __future__ import annotations

import pytest

from gatewatch.edge.paths import InvalidPath, canonical_path, remove_dot_segments, split_target, strip_prefix


@pytest.mark.parametrize(("raw", "expected"), [
    ("/", "/"),
    ("/api/orders", "/api/orders"),
    ("/api/orders/", "/api/orders/"),
    ("/a//b", "/a//b"),  # empty segments are data, not collapsed
    # dot segments (RFC 3986 §5.2.4)
    ("/api/../admin", "/admin"),
    ("/api/./orders", "/api/orders"),
    ("/a/b/c/./../../g", "/a/g"),
    ("/a/b/.", "/a/b/"),
    ("/a/b/..", "/a/"),
    ("/..", "/"),
    ("/.", "/"),
    ("/../../etc/passwd", "/etc/passwd"),
    ("/a/.../b", "/a/.../b"),  # three dots is a name
    ("/a/..b/.c", "/a/..b/.c"),
    ("/.well-known/acme", "/.well-known/acme"),
    # encoded dot segments, any case, are decoded first and then removed
    ("/api/%2e%2e/admin", "/admin"),
    ("/api/%2E%2E/admin", "/admin"),
    ("/api/%2e%2E/admin", "/admin"),
    ("/api/.%2e/admin", "/admin"),
    ("/api/%2e/orders", "/api/orders"),
    ("/api/orders/%2e%2e", "/api/"),
    # unreserved characters are decoded
    ("/%7Euser", "/~user"),
    ("/%7euser", "/~user"),
    ("/%41%62%2D%5F%30", "/Ab-_0"),
    # everything else stays encoded, hex upper-cased
    ("/a%2Fb", "/a%2Fb"),
    ("/a%2fb", "/a%2Fb"),
    ("/a%2f..%2fb", "/a%2F..%2Fb"),  # an encoded slash does not make '..' a segment
    ("/a%20b", "/a%20b"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/%3f%23", "/%3F%23"),
    ("/%25", "/%25"),
    ("/%252e%252e/x", "/%252e%252e/x"),  # decoded once only: %25 stays, no second pass
    # RFC 3986 pchar sub-delims and ':' '@' are allowed as they are
    ("/a;b=c,d:e@f!$&'()*+", "/a;b=c,d:e@f!$&'()*+"),
])
def test_canonical_path(raw, expected):
    assert canonical_path(raw) == expected


@pytest.mark.parametrize("raw", [
    pytest.param("", id="empty"),
    pytest.param("*", id="asterisk-form"),
    pytest.param("api/orders", id="relative"),
    pytest.param("http://example.com/a", id="absolute-form"),
    pytest.param("/a b", id="space"),
    pytest.param("/a\tb", id="tab"),
    pytest.param("/a\x00b", id="nul"),
    pytest.param("/a\x7fb", id="del"),
    pytest.param("/a\r\nb", id="crlf-inside"),
    pytest.param("/a\nb", id="lf-inside"),
    pytest.param("/caf\u00e9", id="non-ascii"),
    pytest.param('/a"b', id="double-quote"),
    pytest.param("/a<b>", id="angle-brackets"),
    pytest.param("/a\\b", id="backslash"),
    pytest.param("/a{b}", id="braces"),
    pytest.param("/a|b", id="pipe"),
    pytest.param("/a^b", id="caret"),
    pytest.param("/a`b", id="backtick"),
    pytest.param("/a[0]", id="square-brackets"),
    pytest.param("/a?b", id="query-not-split"),
    pytest.param("/a#b", id="fragment-not-split"),
    pytest.param("/a%", id="truncated-percent-0"),
    pytest.param("/a%2", id="truncated-percent-1"),
    pytest.param("/a%zz", id="non-hex"),
    pytest.param("/a%2g", id="half-hex"),
    pytest.param("/a%%41", id="percent-percent"),
    pytest.param("/a%-1", id="sign"),
    pytest.param("/%2e%2", id="truncated-after-valid"),
])
def test_canonical_path_rejects(raw):
    with pytest.raises(InvalidPath):
        canonical_path(raw)


def test_canonical_path_rejects_trailing_newline():
    with pytest.raises(InvalidPath):
        canonical_path("/api\n")


def test_invalid_path_is_a_value_error():
    assert issubclass(InvalidPath, ValueError)


@pytest.mark.parametrize(("path", "expected"), [
    ("/", "/"),
    ("/a/b/c/./../../g", "/a/g"),
    ("/a/./b/../c/", "/a/c/"),
    ("/./", "/"),
    ("/../a", "/a"),
    ("/a/..", "/"),
    ("/a/../", "/"),
    ("/a/b/../..", "/"),
    ("/a/b/../../..", "/"),
    ("/a/./", "/a/"),
    ("/a/b", "/a/b"),
])
def test_remove_dot_segments(path, expected):
    assert remove_dot_segments(path) == expected


@pytest.mark.parametrize(("target", "expected"), [
    ("/a", ("/a", "")),
    ("/a?b=1", ("/a", "b=1")),
    ("/a?", ("/a", "")),
    ("/a?b=1&c=%2F", ("/a", "b=1&c=%2F")),  # nothing is decoded
    ("/a%20b?q", ("/a%20b", "q")),
    ("/a?x=1?y=2", ("/a", "x=1?y=2")),  # only the first '?' splits
    ("/a?x#frag", ("/a", "x")),
    ("/a#frag?x", ("/a", "")),  # '?' after '#' is part of the fragment
    ("/a#", ("/a", "")),
    ("*", ("*", "")),
    # absolute-form (sent to a proxy): only the path and query are kept
    ("http://example.com/a/b?q=1", ("/a/b", "q=1")),
    ("https://example.com:8443/x", ("/x", "")),
    ("http://example.com", ("/", "")),
    ("http://example.com/", ("/", "")),
    ("http://example.com?q=1", ("/", "q=1")),
    ("http://example.com?q=/x", ("/", "q=/x")),  # a '/' in the query is not the path
    ("http://example.com#f", ("/", "")),
    ("http://user@example.com/p?x#f", ("/p", "x")),
])
def test_split_target(target, expected):
    assert split_target(target) == expected


@pytest.mark.parametrize(("path", "prefix", "expected"), [
    ("/api/orders/1", "/api", "/orders/1"),
    ("/api/orders/1", "/api/", "/orders/1"),
    ("/api/v1/orders", "/api/v1", "/orders"),
    ("/api", "/api", "/"),
    ("/api/", "/api", "/"),
    ("/api", "/api/", "/"),
    ("/x/y", "/", "/x/y"),
    ("/", "/", "/"),
])
def test_strip_prefix(path, prefix, expected):
    assert strip_prefix(path, prefix) == expected
