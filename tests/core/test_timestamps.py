"""The one RFC 3339 parser and formatter: round trips, the gate's refusals, the loose grammar."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.timestamps import RFC3339, TimestampError, format_timestamp, parse_timestamp

# RFC 3339 section 5.6, written out from its ABNF independently of the module's gate.
_D2: Final = "[0-9][0-9]"
_ABNF: Final = re.compile(
    f"{_D2}{_D2}-{_D2}-{_D2}[Tt]{_D2}:{_D2}:{_D2}(\\.[0-9]+)?([Zz]|[+-]{_D2}:{_D2})"
)

_aware = st.datetimes(
    min_value=datetime(1, 1, 2),  # a day's margin: any offset stays in datetime's range
    max_value=datetime(9999, 12, 30),
    timezones=st.builds(
        timezone,
        st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1).map(
            lambda m: timedelta(minutes=m)
        ),
    ),
)


def _written(value: datetime, fraction: str, zulu: str) -> str:
    """Write ``value`` as RFC 3339 with the given fraction digits and, in UTC, ``zulu``."""
    text = (
        f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
        f"T{value.hour:02d}:{value.minute:02d}:{value.second:02d}"
    ) + (f".{fraction}" if fraction else "")
    if value.utcoffset() == timedelta(0) and zulu:
        return text + zulu
    offset = value.utcoffset()
    assert offset is not None
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    return f"{text}{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@given(_aware)
def test_generated_datetimes_round_trip(value: datetime) -> None:
    """Format -> parse gives the same instant back, and the text is UTC with micros and Z."""
    text = format_timestamp(value)
    assert text.endswith("Z")
    assert len(text.split(".")[1]) == len("123456Z")
    parsed = parse_timestamp(text)
    assert parsed == value
    assert parsed.tzinfo is UTC
    assert format_timestamp(parsed) == text


@given(_aware, st.sampled_from(["", "Z", "z"]), st.text("0123456789", max_size=12))
def test_any_rfc3339_spelling_parses_to_its_instant(value: datetime, zulu: str, extra: str) -> None:
    """Offsets, either case of Z, and any fraction length parse; digits past 6 are cut."""
    micros = f"{value.microsecond:06d}"
    text = _written(value, micros + extra, zulu)
    assert parse_timestamp(text) == value
    assert parse_timestamp(text.replace("T", "t")) == value
    short = _written(value.replace(microsecond=0), micros[:3], zulu)
    assert parse_timestamp(short).microsecond == int(micros[:3]) * 1000


_GOOD: Final = st.builds(
    _written, _aware, st.text("0123456789", max_size=9), st.sampled_from(["", "Z", "z"])
)
_NOISE: Final = st.sampled_from(
    [*"0123456789", *"-:.+TtZz ,_/", "\uff11", "\u0661", "\x00", "\u00e9", "\n"]
)


@st.composite
def _near_misses(draw: st.DrawFn) -> str:
    """A valid timestamp with one or two characters inserted, deleted or replaced."""
    text = draw(_GOOD)
    for _ in range(draw(st.integers(min_value=1, max_value=2))):
        at = draw(st.integers(min_value=0, max_value=len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "replace"]))
        if edit == "insert":
            text = text[:at] + draw(_NOISE) + text[at:]
        elif at < len(text):
            text = text[:at] + ("" if edit == "delete" else draw(_NOISE)) + text[at + 1 :]
    return text


@given(_near_misses())
def test_near_misses_are_refused_exactly_as_the_gate_says(text: str) -> None:
    """Outside the grammar is a "grammar" refusal; inside it only field values can be refused."""
    in_grammar = RFC3339.fullmatch(text) is not None
    assert in_grammar == (_ABNF.fullmatch(text) is not None)
    if in_grammar:
        assert _verdict(text) in {"parsed", "leap_second", "offset", "date"}
    else:
        assert _verdict(text) == "grammar"


def _verdict(text: str) -> str:
    """``parsed`` for an aware datetime, else the refusal's reason."""
    try:
        parsed = parse_timestamp(text)
    except TimestampError as exc:
        return exc.reason
    assert parsed.utcoffset() is not None
    return "parsed"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2016-12-31T23:59:60Z", "leap_second"),
        ("2025-10-25T14:30:45+24:00", "offset"),
        ("2025-10-25T14:30:45+05:60", "offset"),
        ("2025-13-25T14:30:25Z", "date"),
        ("2025-02-30T00:00:00Z", "date"),
        ("2025-10-25T14:30:25.Z", "grammar"),
        ("2025-10-25 14:30:25Z", "grammar"),
        ("2025-10-25T14:30:25", "grammar"),
    ],
)
def test_refusals_name_their_reason(text: str, reason: str) -> None:
    """Each refusal says why: grammar, leap second, offset, or an impossible date."""
    with pytest.raises(TimestampError) as info:
        parse_timestamp(text)
    assert info.value.reason == reason
    assert repr(text) in str(info.value)


def test_fraction_limit_is_a_grammar_refusal() -> None:
    """X-Timestamp allows nanoseconds: a tenth fractional digit is outside its grammar."""
    assert parse_timestamp("2025-10-25T14:30:45.123456789Z", max_fraction_digits=9)
    with pytest.raises(TimestampError) as info:
        parse_timestamp("2025-10-25T14:30:45.1234567890Z", max_fraction_digits=9)
    assert info.value.reason == "grammar"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-28T10:00Z", datetime(2026, 11, 28, 10, tzinfo=UTC)),
        ("2026-11-28 10:00:00+01:00", datetime(2026, 11, 28, 9, tzinfo=UTC)),
        ("20261128T100000Z", datetime(2026, 11, 28, 10, tzinfo=UTC)),
    ],
)
def test_loose_reads_what_operators_type(text: str, expected: datetime) -> None:
    """``loose`` (the CLI's --since and --timestamp) reads any ISO 8601 form with a zone."""
    assert parse_timestamp(text, loose=True) == expected
    with pytest.raises(TimestampError) as info:
        parse_timestamp(text)
    assert info.value.reason == "grammar"


@pytest.mark.parametrize(("text", "reason"), [("2026-11-28T10:00", "zone"), ("soon", "grammar")])
def test_loose_still_needs_a_zone(text: str, reason: str) -> None:
    """``loose`` refuses a time without a zone, and text that is no time at all."""
    with pytest.raises(TimestampError) as info:
        parse_timestamp(text, loose=True)
    assert info.value.reason == reason


def test_the_log_form_truncates_where_x_timestamp_rounds() -> None:
    """Epoch seconds round half to even for X-Timestamp and are cut for log lines."""
    at = 1_700_000_000.9999996
    assert format_timestamp(at) == "2023-11-14T22:13:21.000000Z"
    assert format_timestamp(at, truncate_micros=True) == "2023-11-14T22:13:20.999999Z"
