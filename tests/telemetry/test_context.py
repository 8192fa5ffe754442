"""W3C trace context in and out, the listener's trust setting, and deterministic ratio sampling."""

from __future__ import annotations

import random

import pytest

from gatewatch.telemetry.context import (MAX_BAGGAGE, MAX_TRACESTATE, cap_baggage, cap_tracestate, format_traceparent,
                                         hex64, hex128, parse_traceparent, ratio_sampled, start_trace)

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"
VALID = f"00-{TRACE}-{SPAN}-01"
PARSED = (int(TRACE, 16), int(SPAN, 16), True)


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param(VALID, PARSED, id="sampled"),
    pytest.param(f"00-{TRACE}-{SPAN}-00", (int(TRACE, 16), int(SPAN, 16), False), id="not-sampled"),
    pytest.param(f"00-{TRACE}-{SPAN}-03", PARSED, id="other-flag-bits-ignored"),
    pytest.param(f"00-{TRACE}-{SPAN}-02", (int(TRACE, 16), int(SPAN, 16), False), id="only-bit-0-samples"),
    pytest.param(f"  {VALID} ", PARSED, id="surrounding-whitespace"),
    pytest.param(f"01-{TRACE}-{SPAN}-01", PARSED, id="future-version"),
    pytest.param(f"01-{TRACE}-{SPAN}-01-what-the-future-holds", PARSED, id="future-version-extra-fields"),
    pytest.param(f"cc-{TRACE}-{SPAN}-01-x", PARSED, id="future-version-cc"),
    pytest.param(f"00-{'0' * 31}1-{'0' * 15}1-01", (1, 1, True), id="smallest-ids"),
    pytest.param(None, None, id="none"),
    pytest.param("", None, id="empty"),
    pytest.param(VALID.upper(), None, id="all-upper-case"),
    pytest.param(f"00-{TRACE.upper()}-{SPAN}-01", None, id="upper-case-trace-id"),
    pytest.param(f"00-{TRACE}-{SPAN.upper()}-01", None, id="upper-case-span-id"),
    pytest.param(f"00-{TRACE}-{SPAN}-0A", None, id="upper-case-flags"),
    pytest.param(f"00-{'0' * 32}-{SPAN}-01", None, id="zero-trace-id"),
    pytest.param(f"00-{TRACE}-{'0' * 16}-01", None, id="zero-span-id"),
    pytest.param(f"ff-{TRACE}-{SPAN}-01", None, id="version-ff"),
    pytest.param(f"00-{TRACE}-{SPAN}-01-extra", None, id="version-00-extra-field"),
    pytest.param(f"00-{TRACE}-{SPAN}-01-", None, id="version-00-trailing-dash"),
    pytest.param(f"01-{TRACE}-{SPAN}-01extra", None, id="future-version-no-dash-before-extra"),
    pytest.param(f"0-{TRACE}-{SPAN}-01", None, id="short-version"),
    pytest.param(f"000-{TRACE}-{SPAN}-01", None, id="long-version"),
    pytest.param(f"00-{TRACE[:-1]}-{SPAN}-01", None, id="short-trace-id"),
    pytest.param(f"00-{TRACE}0-{SPAN}-01", None, id="long-trace-id"),
    pytest.param(f"00-{TRACE}-{SPAN[:-1]}-01", None, id="short-span-id"),
    pytest.param(f"00-{TRACE}-{SPAN}0-01", None, id="long-span-id"),
    pytest.param(f"00-{TRACE}-{SPAN}-1", None, id="short-flags"),
    pytest.param(f"00-{TRACE}-{SPAN}-011", None, id="long-flags"),
    pytest.param(f"00-{TRACE[:-1]}g-{SPAN}-01", None, id="non-hex"),
    pytest.param(f"00_{TRACE}_{SPAN}_01", None, id="wrong-separator"),
    pytest.param(f"00-{TRACE}-{SPAN}", None, id="missing-flags"),
])
def test_parse_traceparent(value, expected):
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(("trace_id", "span_id", "sampled", "expected"), [
    (int(TRACE, 16), int(SPAN, 16), True, VALID),
    (int(TRACE, 16), int(SPAN, 16), False, f"00-{TRACE}-{SPAN}-00"),
    (1, 1, True, f"00-{'0' * 31}1-{'0' * 15}1-01"),  # zero-padded to full width
    ((1 << 128) - 1, (1 << 64) - 1, False, f"00-{'f' * 32}-{'f' * 16}-00"),
])
def test_format_traceparent(trace_id, span_id, sampled, expected):
    assert format_traceparent(trace_id, span_id, sampled) == expected
    assert parse_traceparent(expected) == (trace_id, span_id, sampled)


@pytest.mark.parametrize("seed", range(20))
def test_traceparent_round_trip(seed):
    rng = random.Random(seed)
    ids = (rng.getrandbits(128) or 1, rng.getrandbits(64) or 1, rng.random() < 0.5)
    assert parse_traceparent(format_traceparent(*ids)) == ids


def test_ids_match_the_reference_formatting_at_every_digit():
    """Compiled, the ids are written digit by digit into a C array (telemetry.context): every nibble position and
    value, the 64-bit boundary and both ends of the range must come out as `to_bytes().hex()` writes them."""
    rng = random.Random(7)
    values = [1, (1 << 64) - 1, 1 << 64, (1 << 128) - 1, *(d << (4 * i) for i in range(32) for d in (1, 9, 10, 15)),
              *(rng.getrandbits(128) for _ in range(2000))]
    for v in values:
        span = v & ((1 << 64) - 1) or 1
        assert hex128(v) == v.to_bytes(16, "big").hex()
        assert hex64(v & ((1 << 64) - 1)) == f"{v & ((1 << 64) - 1):016x}"
        assert format_traceparent(v, span, v & 1 == 1) == (
            f"00-{v.to_bytes(16, 'big').hex()}-{span.to_bytes(8, 'big').hex()}-{'01' if v & 1 else '00'}")


# --- start_trace ---------------------------------------------------------------------------------------------------

INVALID = f"00-{'0' * 32}-{SPAN}-01"
UNSAMPLED = f"00-{TRACE}-{SPAN}-00"


@pytest.mark.parametrize(("traceparent", "trust", "treatment", "continued", "link"), [
    (VALID, "continue", "continued", True, None),
    (VALID, "link", "linked", False, (int(TRACE, 16), int(SPAN, 16))),
    (VALID, "ignore", "ignored", False, None),
    (INVALID, "continue", "invalid", False, None),
    (INVALID, "link", "invalid", False, None),
    (INVALID, "ignore", "invalid", False, None),
    ("garbage", "continue", "invalid", False, None),
    (None, "continue", "new_root", False, None),
    (None, "link", "new_root", False, None),
    (None, "ignore", "new_root", False, None),
    ("", "continue", "new_root", False, None),
])
def test_start_trace_treatment(traceparent, trust, treatment, continued, link):
    ctx = start_trace(traceparent, "vendor=1", "k=v", trust, 1.0, random.Random(5))
    assert ctx.treatment == treatment
    assert ctx.link == link
    assert ctx.span_id != 0
    if continued:
        assert (ctx.trace_id, ctx.parent_span_id) == (int(TRACE, 16), int(SPAN, 16))
        assert (ctx.tracestate, ctx.baggage) == ("vendor=1", "k=v")
    else:
        assert ctx.trace_id not in (0, int(TRACE, 16))  # a new root trace
        assert ctx.parent_span_id is None
        assert (ctx.tracestate, ctx.baggage) == (None, None)  # an untrusted context brings no state along


def test_start_trace_is_deterministic_for_a_seed():
    a = start_trace(None, None, None, "continue", 1.0, random.Random(9))
    b = start_trace(None, None, None, "continue", 1.0, random.Random(9))
    c = start_trace(None, None, None, "continue", 1.0, random.Random(10))
    assert (a.trace_id, a.span_id) == (b.trace_id, b.span_id)
    assert (a.trace_id, a.span_id) != (c.trace_id, c.span_id)


@pytest.mark.parametrize(("traceparent", "trust", "ratio", "sampled"), [
    (VALID, "continue", 0.0, True),  # a continued trace follows its parent's decision, not the ratio
    (UNSAMPLED, "continue", 1.0, False),
    (UNSAMPLED, "link", 1.0, True),  # a new root is sampled by the ratio
    (VALID, "link", 0.0, False),
    (VALID, "ignore", 0.0, False),
    (None, "continue", 1.0, True),
    (None, "continue", 0.0, False),
])
def test_start_trace_sampling(traceparent, trust, ratio, sampled):
    assert start_trace(traceparent, None, None, trust, ratio, random.Random(1)).sampled is sampled


@pytest.mark.parametrize(("tracestate", "baggage", "kept"), [
    ("a" * MAX_TRACESTATE, "b" * MAX_BAGGAGE, ("a" * MAX_TRACESTATE, "b" * MAX_BAGGAGE)),
    ("a" * (MAX_TRACESTATE + 1), "b" * (MAX_BAGGAGE + 1), (None, None)),
    ("", "", (None, None)),
    (None, None, (None, None)),
])
def test_continued_trace_state_and_baggage_limits(tracestate, baggage, kept):
    ctx = start_trace(VALID, tracestate, baggage, "continue", 1.0, random.Random(0))
    assert (ctx.tracestate, ctx.baggage) == kept


def _entries(n: int, size: int) -> list[str]:
    return [f"k{i}=" + "v" * (size - len(f"k{i}=")) for i in range(n)]


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("a=1,b=2", ("a=1,b=2", False), id="within"),
    pytest.param(",".join(_entries(32, 10)), (",".join(_entries(32, 10)), False), id="32-members"),
    pytest.param(",".join(_entries(40, 10)), (",".join(_entries(32, 10)), True), id="over-32-members-cut-from-end"),
    pytest.param(",".join(_entries(30, 20)), (",".join(_entries(24, 20)), True), id="over-512-cut-from-end"),
    pytest.param("a=1,big=" + "x" * 520 + ",b=2", ("a=1,b=2", True), id="long-entry-removed-first"),
    pytest.param("a=1,big=" + "x" * 600, ("a=1", True), id="long-entry-last"),
    pytest.param("x" * 513, (None, True), id="one-oversized-entry"),
    pytest.param("a=1, ,b=2" + " " * 510, ("a=1, ,b=2" + " " * 510, False), id="nothing-to-cut-kept-as-sent"),
])
def test_tracestate_is_cut_by_whole_entries(value, expected):
    """W3C Trace Context §3.3.1.5: 32 members; a value over 512 characters loses entries over 128 characters
    first, then entries from the end."""
    assert cap_tracestate(value) == expected


@pytest.mark.parametrize(("value", "expected"), [
    pytest.param("k=v;p", ("k=v;p", False), id="within"),
    pytest.param("k=" + "v" * 8190, ("k=" + "v" * 8190, False), id="8192-bytes-one-member"),
    pytest.param(",".join(_entries(180, 5)), (",".join(_entries(180, 5)), False), id="180-members"),
    pytest.param(",".join(_entries(181, 5)), (",".join(_entries(180, 5)), True), id="181-members"),
    pytest.param(",".join(_entries(100, 99)), (",".join(_entries(81, 99)), True), id="over-8192-bytes"),
    pytest.param("k=" + "v" * 8191, (None, True), id="one-member-over-8192"),
])
def test_baggage_is_cut_by_whole_members(value, expected):
    assert cap_baggage(value) == expected


def test_only_a_continued_context_is_cut_and_recorded():
    big = ",".join(_entries(200, 5))
    assert start_trace(VALID, big, big, "continue", 1.0, random.Random(0)).cut == (
        "tracestate_truncated", "baggage_truncated")
    assert start_trace(VALID, "a=1", "k=v", "continue", 1.0, random.Random(0)).cut is None
    linked = start_trace(VALID, big, big, "link", 1.0, random.Random(0))
    assert (linked.tracestate, linked.baggage, linked.cut) == (None, None, None)


# --- ratio sampling ------------------------------------------------------------------------------------------------

LOW = 1 << 64


@pytest.mark.parametrize(("trace_id", "ratio", "sampled"), [
    (0, 0.0, False),
    (0, -1.0, False),
    ((1 << 128) - 1, 1.0, True),
    ((1 << 128) - 1, 2.0, True),
    (0, 1e-300, False),  # int(1e-300 * 2^64) == 0: nothing falls under it
    (1 << 62, 0.25, False),  # the bound itself is not under it
    ((1 << 62) - 1, 0.25, True),
    ((1 << 63) - 1, 0.5, True),
    (1 << 63, 0.5, False),
    ((123 << 64) | 5, 0.5, True),  # only the low 64 bits count
    ((123 << 64) | (LOW - 1), 0.5, False),
])
def test_ratio_sampled(trace_id, ratio, sampled):
    assert ratio_sampled(trace_id, ratio) is sampled


def test_ratio_sampled_is_deterministic_and_proportional():
    rng = random.Random(2024)
    ids = [rng.getrandbits(128) for _ in range(4000)]
    first = [ratio_sampled(t, 0.25) for t in ids]
    assert first == [ratio_sampled(t, 0.25) for t in ids]
    assert 900 < sum(first) < 1100
    # a higher ratio samples a superset: layers with different ratios never disagree the other way
    assert all(ratio_sampled(t, 0.5) for t, s in zip(ids, first) if s)
