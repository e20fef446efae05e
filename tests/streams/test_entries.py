"""The one stream-id grammar (bridge.streams.entries), pinned against what each caller did."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.streams.entries import is_entry_id, is_stream_id, parse_id

_U64 = st.integers(min_value=0, max_value=(1 << 64) - 1)
# Short texts near the grammar: digits, dashes and the characters a typo brings in.
_NEAR_IDS = st.text(alphabet="0123456789-x +_$", max_size=12)


def _old_lenient_parse(entry_id: str) -> tuple[int, int]:
    """How the worker and the lanes split an id before: no check of their own, int() decides."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _old_start_id_check(value: str) -> bool:
    """How the configuration judged BRIDGE_START_ID before ('$' and '0' aside)."""
    ms, _, seq = value.partition("-")
    return ms.isdigit() and (not seq or seq.isdigit())


def _old_dead_letter_id_check(value: str) -> bool:
    """How ``dlq show`` / ``dlq replay`` judged an id before asking Redis."""
    ms, sep, seq = value.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit()


@given(ms=_U64, seq=_U64)
def test_every_redis_id_parses_to_its_two_numbers(ms: int, seq: int) -> None:
    """A Redis id ``<ms>-<seq>`` (64-bit parts) parses as before; the ms part dates it."""
    entry_id = f"{ms}-{seq}"
    assert parse_id(entry_id) == (ms, seq) == _old_lenient_parse(entry_id)
    assert is_entry_id(entry_id)
    assert is_stream_id(entry_id)


@given(a=st.tuples(_U64, _U64), b=st.tuples(_U64, _U64))
def test_parsed_ids_compare_in_stream_order(a: tuple[int, int], b: tuple[int, int]) -> None:
    """Parsed ids order as the stream does (``9-0`` before ``10-0``), not as text."""
    assert (parse_id(f"{a[0]}-{a[1]}") < parse_id(f"{b[0]}-{b[1]}")) == (a < b)


def test_a_bare_ms_and_the_worker_sentinel_parse_with_sequence_zero() -> None:
    """``0`` (the worker's floor when no id was seen) and ``<ms>`` or ``<ms>-`` mean seq 0."""
    assert parse_id("0") == (0, 0)
    assert parse_id("1700000000000") == (1700000000000, 0)
    assert parse_id("5-") == (5, 0)


@given(value=_NEAR_IDS)
def test_start_id_check_accepts_and_rejects_what_it_did(value: str) -> None:
    """BRIDGE_START_ID: ``<ms>``, ``<ms>-`` and ``<ms>-<seq>`` pass; anything else fails."""
    assert is_stream_id(value) == _old_start_id_check(value)


@given(value=_NEAR_IDS)
def test_dead_letter_id_check_accepts_and_rejects_what_it_did(value: str) -> None:
    """``dlq show`` / ``replay`` ids need both parts: ``5-0`` passes, ``5`` and ``5-`` fail."""
    assert is_entry_id(value) == _old_dead_letter_id_check(value)


@given(value=_NEAR_IDS)
def test_parse_fails_exactly_where_the_checks_say_no(value: str) -> None:
    """parse_id raises ValueError on what is_stream_id rejects, and agrees with int() elsewhere."""
    if is_stream_id(value):
        assert parse_id(value) == _old_lenient_parse(value)
    else:
        with pytest.raises(ValueError, match="not a stream id"):
            parse_id(value)


@pytest.mark.parametrize(
    ("value", "stream_id", "entry_id"),
    [
        ("5-3", True, True),
        ("5", True, False),
        ("5-", True, False),
        ("$", False, False),
        ("", False, False),
        ("-3", False, False),
        ("5-x", False, False),
        ("5-3-1", False, False),
        (" 5-3", False, False),
    ],
)
def test_the_grammar_on_known_texts(value: str, stream_id: bool, entry_id: bool) -> None:
    """The texts operators type, judged by both checks."""
    assert is_stream_id(value) is stream_id
    assert is_entry_id(value) is entry_id
