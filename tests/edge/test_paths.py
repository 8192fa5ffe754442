"""The canonical request path: what routing sees is exactly what the upstream receives."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gatewatch.edge import paths
from gatewatch.edge.paths import (LENIENT, STRICT, InvalidPath, PathRules, canonical_path, remove_dot_segments,
                                  split_target, strip_prefix)
from gatewatch.telemetry.names import RejectReason as R


@pytest.mark.parametrize(("raw", "expected"), [
    ("/", "/"),
    ("/api/orders", "/api/orders"),
    ("/api/orders/", "/api/orders/"),
    ("/a//b", "/a//b"),  # empty segments are data unless the listener merges them (merge_slashes)
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
    # everything else stays encoded, hex upper-cased (escaped_slashes: keep, for %2F)
    ("/a%2Fb", "/a%2Fb"),
    ("/a%2fb", "/a%2Fb"),
    ("/a%20b", "/a%20b"),
    ("/caf%c3%a9", "/caf%C3%A9"),
    ("/%3f%23", "/%3F%23"),
    ("/%25", "/%25"),
    ("/%25zz", "/%25zz"),  # an encoded '%' that does not start another escape
    ("/%f0%9f%98%80", "/%F0%9F%98%80"),  # four-byte UTF-8
    # RFC 3986 pchar sub-delims and ':' '@' are allowed as they are (path_parameters: keep, for ';')
    ("/a;b=c,d:e@f!$&'()*+", "/a;b=c,d:e@f!$&'()*+"),
])
def test_canonical_path(raw, expected):
    assert canonical_path(raw) == expected
    assert canonical_path(expected) == expected  # the canonical form is its own canonical form


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
    with pytest.raises(InvalidPath):
        canonical_path(raw, STRICT)


# --- the request-target category, case by case (docs/refusals.md): (raw, policy under STRICT, under LENIENT) -----
# A string is the canonical path forwarded; an `R` member the refusal's error.type.

CATEGORY = [
    # percent-encoded slash and backslash, inside or next to dot segments (..%2f, %2e%2e%5c)
    pytest.param("/api/..%2fadmin", R.PATH_ESCAPED_SLASH, R.PATH_ESCAPED_SLASH, id="dotdot-pct2f"),
    pytest.param("/api/..%2Fadmin", R.PATH_ESCAPED_SLASH, R.PATH_ESCAPED_SLASH, id="dotdot-pct2F"),
    pytest.param("/api/%2e%2e%5cadmin", R.PATH_ESCAPED_SLASH, R.PATH_ESCAPED_SLASH, id="pct2e2e-pct5c"),
    pytest.param("/api/%2e%2e%2fadmin", R.PATH_ESCAPED_SLASH, R.PATH_ESCAPED_SLASH, id="pct2e2e-pct2f"),
    pytest.param("/api%2f..%2fadmin", R.PATH_ESCAPED_SLASH, R.PATH_ESCAPED_SLASH, id="pct2f-dotdot-pct2f"),
    pytest.param("/api/.%2fx", R.PATH_ESCAPED_SLASH, R.PATH_ESCAPED_SLASH, id="dot-pct2f"),
    pytest.param("/files/a%2fb", R.PATH_ESCAPED_SLASH, "/files/a%2Fb", id="pct2f-data"),
    pytest.param("/files/a%5Cb", R.PATH_ESCAPED_SLASH, "/files/a%5Cb", id="pct5c-data"),
    pytest.param("/api/%2e%2e/admin", "/admin", "/admin", id="pct2e2e-slash"),  # decoded, then removed
    pytest.param("/api/%2E./admin", "/admin", "/admin", id="pct2E-dot-slash"),
    # raw backslash
    pytest.param("/api\\..\\admin", R.PATH_INVALID_CHAR, R.PATH_INVALID_CHAR, id="raw-backslash"),
    # NUL and other control characters, raw or percent-encoded
    pytest.param("/a\x00b", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="raw-nul"),
    pytest.param("/a\x1bb", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="raw-esc"),
    pytest.param("/a%00b", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="pct00"),
    pytest.param("/a%0ab", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="pct0a"),
    pytest.param("/a%0D%0Ab", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="pct0d0a"),
    pytest.param("/a%09b", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="pct09"),
    pytest.param("/a%7fb", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="pct7f"),
    pytest.param("/a%1Fb", R.PATH_CONTROL_CHAR, R.PATH_CONTROL_CHAR, id="pct1f"),
    # double encoding
    pytest.param("/%252e%252e/admin", R.PATH_DOUBLE_ENCODING, R.PATH_DOUBLE_ENCODING, id="pct252e"),
    pytest.param("/a%252fb", R.PATH_DOUBLE_ENCODING, R.PATH_DOUBLE_ENCODING, id="pct252f"),
    pytest.param("/a%2500", R.PATH_DOUBLE_ENCODING, R.PATH_DOUBLE_ENCODING, id="pct2500"),
    pytest.param("/%25%32%65", R.PATH_DOUBLE_ENCODING, R.PATH_DOUBLE_ENCODING, id="pct25-then-decoded-hex"),
    # overlong and otherwise invalid UTF-8
    pytest.param("/%c0%ae%c0%ae/admin", R.PATH_INVALID_UTF8, R.PATH_INVALID_UTF8, id="overlong-dot"),
    pytest.param("/%c0%af", R.PATH_INVALID_UTF8, R.PATH_INVALID_UTF8, id="overlong-slash"),
    pytest.param("/%e0%80%ae", R.PATH_INVALID_UTF8, R.PATH_INVALID_UTF8, id="overlong-dot-3byte"),
    pytest.param("/%ff", R.PATH_INVALID_UTF8, R.PATH_INVALID_UTF8, id="byte-ff"),
    pytest.param("/%80", R.PATH_INVALID_UTF8, R.PATH_INVALID_UTF8, id="lone-continuation"),
    pytest.param("/caf%c3", R.PATH_INVALID_UTF8, R.PATH_INVALID_UTF8, id="truncated-sequence"),
    pytest.param("/%ed%a0%80", R.PATH_INVALID_UTF8, R.PATH_INVALID_UTF8, id="surrogate"),
    pytest.param("/caf%c3%a9", "/caf%C3%A9", "/caf%C3%A9", id="valid-utf8"),
    # path parameters
    pytest.param("/api/..;/admin", R.PATH_PARAMETER, R.PATH_PARAMETER, id="dotdot-param"),
    pytest.param("/api/.;x/admin", R.PATH_PARAMETER, R.PATH_PARAMETER, id="dot-param"),
    pytest.param("/api/%2e%2e;x/admin", R.PATH_PARAMETER, R.PATH_PARAMETER, id="pct-dotdot-param"),
    pytest.param("/admin;jsessionid=1", R.PATH_PARAMETER, "/admin;jsessionid=1", id="param"),
    pytest.param("/cars;color=red/x", R.PATH_PARAMETER, "/cars;color=red/x", id="matrix-param"),
    pytest.param("/a%3Bb", "/a%3Bb", "/a%3Bb", id="encoded-semicolon-is-data"),
    # empty segments
    pytest.param("//admin", "/admin", "//admin", id="leading-double-slash"),
    pytest.param("/api//..//admin", "/admin", "/api//admin", id="double-slash-dotdot"),
    pytest.param("/a///b/", "/a/b/", "/a///b/", id="triple-slash"),
    # percent-encoding case and unreserved characters (RFC 3986 §6.2.2.1, §6.2.2.2)
    pytest.param("/%7euser/%41%2d", "/~user/A-", "/~user/A-", id="unreserved"),
    pytest.param("/a%c3%a9%3f", "/a%C3%A9%3F", "/a%C3%A9%3F", id="hex-upper"),
    # not origin-form (RFC 9112 §3.2): asterisk-form, authority-form, relative
    pytest.param("*", R.INVALID_TARGET, R.INVALID_TARGET, id="asterisk-form"),
    pytest.param("example.com:443", R.INVALID_TARGET, R.INVALID_TARGET, id="authority-form"),
    pytest.param("a/b", R.INVALID_TARGET, R.INVALID_TARGET, id="relative"),
    pytest.param("/a#b", R.FRAGMENT_IN_TARGET, R.FRAGMENT_IN_TARGET, id="fragment"),
]


@pytest.mark.parametrize(("raw", "strict", "lenient"), CATEGORY)
def test_the_request_target_category(raw, strict, lenient):
    for rules, expected in ((STRICT, strict), (LENIENT, lenient)):
        if isinstance(expected, R):
            with pytest.raises(InvalidPath) as err:
                canonical_path(raw, rules)
            assert err.value.reason == expected.value, rules
        else:
            assert canonical_path(raw, rules) == expected, rules
            assert canonical_path(expected, rules) == expected  # idempotent


@pytest.mark.parametrize(("raw", "expected"), [
    ("/files/a%2Fb", "/files/a/b"),
    ("/files/a%5cb", "/files/a/b"),  # a backslash is a separator to the servers that decode it
    ("/api/..%2fadmin", "/admin"),  # unescaped first: the dot segment is then removed like any other
    ("/api/%2e%2e%5cadmin", "/admin"),
    ("/a%2F%2Fb", "/a/b"),  # and merged
])
def test_unescaped_slashes_are_separators_before_anything_sees_the_path(raw, expected):
    rules = PathRules("unescape", True, "reject")
    assert canonical_path(raw, rules) == expected
    assert canonical_path(expected, rules) == expected


def test_a_listeners_config_is_a_set_of_rules():
    from gatewatch.config import ListenerConfig

    lst = ListenerConfig(name="l", address="127.0.0.1:0")
    assert PathRules(lst.escaped_slashes, lst.merge_slashes, lst.path_parameters) == STRICT
    assert canonical_path("/a//b/../c", lst) == "/a/c"


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


@pytest.mark.parametrize(("raw", "plain"), [
    ("/", True), ("/a", True), ("/a/", True), ("/a/b.c/d-e_f~g", True), ("/a/..b", False), ("/@:!$&'()*+,=", True),
    ("", False), ("a", False), ("//", False), ("/a//b", False), ("/a//", False), ("/.", False),
    ("/a/.", False), ("/a/..", False), ("/.well-known", False), ("/a%2e", False), ("/a;p", False), ("/a b", False),
    ("/a\n", False), ("/é", False), ("/a?b", False), ("/a#b", False), ("/\x00", False), ("/\u0101", False),
])
def test_the_plain_path_check(raw, plain):
    assert bool(paths._PLAIN.fullmatch(raw)) is plain  # the regex the one-pass check replaces
    assert paths.plain_path(raw) is plain


@given(st.text(alphabet="/.a%2e;_~:@-9 \n?#é\x7f", max_size=12))
def test_the_plain_path_check_agrees_with_the_regex(raw):
    """Compiled, canonical_path trusts `plain_path` and returns such a path untouched: it must never call a path
    plain that the regex (and so the full canonicalisation) would not."""
    assert paths.plain_path(raw) == bool(paths._PLAIN.fullmatch(raw))
