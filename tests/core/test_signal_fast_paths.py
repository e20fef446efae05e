"""The Signal's fast checks accept only what its full checks accept, and decide the same way.

``Signal.__post_init__`` accepts the usual identifier, comment and timestamp with one cheap test
each and sends everything else through the checks that name what is wrong; these tests pin that
the shortcut never lets through what the full checks refuse.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core import signal as signal_module
from bridge.core.signal import (
    MAX_COMMENT_LEN,
    MAX_INSTRUMENT_LEN,
    MAX_SIGNAL_ID_LEN,
    MAX_STRATEGY_LEN,
    SignalRules,
)
from bridge.delivery.jobs import prepare_job
from bridge.errors import InvalidSignalError
from bridge.streams.entries import SIGNAL_FIELD, Entry
from tests.support import make_signal

_PATTERNS = [
    (signal_module._PLAIN_INSTRUMENT, MAX_INSTRUMENT_LEN),
    (signal_module._PLAIN_STRATEGY, MAX_STRATEGY_LEN),
    (signal_module._PLAIN_SIGNAL_ID, MAX_SIGNAL_ID_LEN),
]
# Mostly ASCII with edge cases: spaces, controls, DEL, C1 controls, invisible characters.
_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(min_codepoint=0x20, max_codepoint=0x7E),
        st.sampled_from(" \t\n\r\x0b\x0c\x1c\x1f\x7f\x85\x9f\xa0\u200b\u202e\u2028\ufeffé"),
    ),
    max_size=300,
)


def _full_check_accepts(value: str, limit: int) -> bool:
    """Tell whether the full identifier check accepts ``value``."""
    try:
        signal_module._exact_text("field", value, limit)
    except InvalidSignalError:
        return False
    return True


@given(_TEXT)
def test_the_fast_identifier_check_accepts_only_what_the_full_check_accepts(value: str) -> None:
    """A fast match implies the full check passes; plain printable ASCII always matches."""
    for pattern, limit in _PATTERNS:
        fast = pattern.fullmatch(value) is not None
        full = _full_check_accepts(value, limit)
        assert not fast or full
        if full and value.isascii() and value.isprintable():
            assert fast


@given(_TEXT)
def test_the_fast_comment_check_accepts_only_what_the_full_check_accepts(value: str) -> None:
    """A comment passes the fast check exactly when the full check accepts it."""
    fast = signal_module._PLAIN_COMMENT.fullmatch(value) is not None
    try:
        signal_module._check_comment(value)
    except InvalidSignalError:
        full = False
    else:
        full = True
    assert fast == full


def test_the_limits_of_the_fast_identifier_checks_are_the_fields_limits() -> None:
    """One code point past a field's limit is refused with the limit's message."""
    assert re.fullmatch(signal_module._PLAIN_INSTRUMENT, "A" * MAX_INSTRUMENT_LEN)
    with pytest.raises(InvalidSignalError, match="at most 32 Unicode code points, got 33"):
        make_signal(instrument="A" * (MAX_INSTRUMENT_LEN + 1))
    with pytest.raises(InvalidSignalError, match="at most 256 Unicode code points, got 257"):
        make_signal(comment="c" * (MAX_COMMENT_LEN + 1))
    assert make_signal(comment="").comment == ""
    assert make_signal(comment="two\tlines\r\n").comment == "two\tlines\r\n"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"instrument": " XAUUSD"}, "leading or trailing whitespace"),
        ({"strategy_name": ""}, "strategy_name must be non-empty"),
        ({"signal_id": "a\x7fb"}, "control character U+007F at position 1"),
        ({"signal_id": "a\u202eb"}, "invisible character U+202E"),
        ({"signal_id": "x/1-2"}, "ends like a stream entry reference"),
        ({"comment": "bell\x07"}, "comment contains the control character U+0007"),
        ({"comment": 5}, "comment must be a string, got 5"),
        ({"risk_percent": float("inf")}, "risk_percent must be > 0 and <= 100, got inf"),
        ({"risk_percent": float("nan")}, "risk_percent must be > 0 and <= 100, got nan"),
        ({"timestamp": datetime(2026, 1, 1)}, "timestamp must be timezone-aware"),
        ({"timestamp": "2026-01-01T00:00:00Z"}, "timestamp must be a datetime"),
    ],
)
def test_what_the_fast_checks_let_past_is_refused_as_before(
    overrides: dict[str, Any], message: str
) -> None:
    """Text the fast checks do not accept gets the full checks' message."""
    with pytest.raises(InvalidSignalError, match=re.escape(message)):
        make_signal(**overrides)


def test_a_non_canonical_timestamp_is_still_made_canonical() -> None:
    """A datetime in another zone, or of the plain class, becomes the canonical UTC class."""
    east = timezone(timedelta(hours=2))
    signal = make_signal(timestamp=datetime(2026, 1, 1, 2, 0, tzinfo=east))
    assert signal.timestamp == datetime(2026, 1, 1, tzinfo=UTC)
    assert signal.timestamp.tzinfo is UTC
    assert type(signal.timestamp) is signal_module._UtcTimestamp
    assert type(make_signal(timestamp=datetime.now(UTC)).timestamp) is signal_module._UtcTimestamp


def test_a_job_keeps_its_signals_epoch_and_the_rules_use_it() -> None:
    """prepare_job computes the signal's epoch once; the clock-ahead rule reads the same value."""
    signal = make_signal()
    raw = signal_module.encode_canonical(signal)
    job = prepare_job(Entry("1-0", {SIGNAL_FIELD: raw}), stream="s", max_body_size=65536)
    assert job.signal is not None
    assert job.signal_at == job.signal.timestamp.timestamp()
    rules = SignalRules(max_clock_ahead_s=1.0)
    rules.check(job.signal, job.signal_at, signal_at=job.signal_at)
    with pytest.raises(InvalidSignalError, match=r"is 9\.0s ahead of the bridge's clock"):
        rules.check(job.signal, job.signal_at - 9.0, signal_at=job.signal_at)
    with pytest.raises(InvalidSignalError, match=r"is 9\.0s ahead of the bridge's clock"):
        rules.check(job.signal, job.signal_at - 9.0)
