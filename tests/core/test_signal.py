import json
import math
import sys
import unicodedata
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Final, Literal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.signal import (
    DEFAULT_MAX_BODY_SIZE,
    Signal,
    decode_signal,
    encode_canonical,
)
from bridge.core.timestamps import format_timestamp
from bridge.errors import BodyTooLargeError, InvalidSignalError, Outcome
from tests.fixtures_ingest import make_signal

EXPECTED_BODY: Final = (
    b'{"comment":"breakout","entry_price":2000.5,"instrument":"XAUUSD","risk_percent":1.5,'
    b'"side":"buy","signal_id":"sig_abc123","stop_loss":1990.25,"strategy_name":"gold-breakout",'
    b'"take_profit":2010.0,"timestamp":"2025-10-25T14:30:45.123456Z"}'
)
_REMOVE: Final = object()


def _json(**overrides: Any) -> bytes:
    """Return the canonical JSON of the default signal with some fields replaced or removed."""
    data: dict[str, Any] = json.loads(EXPECTED_BODY)
    for key, value in overrides.items():
        if value is _REMOVE:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data).encode()


# --- construction and validation --------------------------------------------------------------


def test_valid_signal_is_normalised() -> None:
    """Text is kept as written, int prices become floats and the timestamp is converted to UTC."""
    signal = make_signal(
        instrument="XAUUSD",
        strategy_name="gold",
        signal_id="id-1",
        entry_price=2000,
        take_profit=2010,
        stop_loss=1990,
        risk_percent=2,
        timestamp=datetime(2025, 10, 25, 16, 30, tzinfo=timezone(timedelta(hours=2))),
    )
    assert (signal.instrument, signal.strategy_name, signal.signal_id) == ("XAUUSD", "gold", "id-1")
    assert [type(v) for v in (signal.entry_price, signal.take_profit, signal.stop_loss)] == [
        float
    ] * 3
    assert type(signal.risk_percent) is float
    assert signal.timestamp == datetime(2025, 10, 25, 14, 30, tzinfo=UTC)
    assert signal.timestamp.utcoffset() == timedelta(0)


def test_optional_fields_default_to_none() -> None:
    """take_profit, stop_loss, comment and signal_id are optional."""
    signal = Signal(
        instrument="EURUSD",
        side="sell",
        entry_price=1.08,
        risk_percent=1,
        strategy_name="s",
        timestamp=datetime(2025, 1, 1, tzinfo=UTC),
    )
    assert (signal.take_profit, signal.stop_loss, signal.comment, signal.signal_id) == (
        None,
        None,
        None,
        None,
    )


def test_signal_is_immutable() -> None:
    """A Signal cannot be changed after validation."""
    signal = make_signal()
    with pytest.raises(AttributeError):
        signal.instrument = "EURUSD"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"instrument": ""}, "instrument"),
        ({"instrument": "   "}, "instrument"),
        ({"instrument": "X" * 33}, "instrument"),
        ({"instrument": 5}, "instrument"),
        ({"side": "hold"}, "side"),
        ({"side": "BUY"}, "side"),
        ({"entry_price": 0}, "entry_price"),
        ({"entry_price": -1.0}, "entry_price"),
        ({"entry_price": math.nan}, "entry_price"),
        ({"entry_price": math.inf}, "entry_price"),
        ({"entry_price": True}, "entry_price"),
        ({"entry_price": "2000"}, "entry_price"),
        ({"take_profit": math.inf}, "take_profit"),
        ({"take_profit": -5.0}, "take_profit"),
        ({"stop_loss": math.nan}, "stop_loss"),
        ({"stop_loss": 0.0}, "stop_loss"),
        ({"take_profit": 1999.0}, "take_profit"),
        ({"take_profit": 2000.5}, "take_profit"),
        ({"stop_loss": 2001.0}, "stop_loss"),
        ({"stop_loss": 2000.5}, "stop_loss"),
        ({"side": "sell", "take_profit": 2010.0, "stop_loss": 2010.5}, "take_profit"),
        ({"side": "sell", "take_profit": 1990.0, "stop_loss": 1990.5}, "stop_loss"),
        ({"side": "sell", "take_profit": 1990.0, "stop_loss": 2000.5}, "stop_loss"),
        ({"risk_percent": 0}, "risk_percent"),
        ({"risk_percent": -1}, "risk_percent"),
        ({"risk_percent": 100.0001}, "risk_percent"),
        ({"risk_percent": math.nan}, "risk_percent"),
        ({"risk_percent": False}, "risk_percent"),
        ({"comment": "c" * 257}, "comment"),
        ({"comment": 7}, "comment"),
        ({"strategy_name": ""}, "strategy_name"),
        ({"strategy_name": "s" * 129}, "strategy_name"),
        ({"signal_id": "  "}, "signal_id"),
        ({"timestamp": datetime(2025, 10, 25, 14, 30)}, "timestamp"),
        ({"timestamp": "2025-10-25T14:30:00Z"}, "timestamp"),
        ({"timestamp": date(2025, 10, 25)}, "timestamp"),
    ],
)
def test_invalid_signal_names_the_field(overrides: dict[str, Any], field: str) -> None:
    """Each rule violation raises InvalidSignalError whose message and .field name the field."""
    with pytest.raises(InvalidSignalError) as info:
        make_signal(**overrides)
    assert info.value.field == field
    assert field in str(info.value)
    assert info.value.outcome is Outcome.INVALID
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "overrides",
    [
        {"instrument": "X" * 32},
        {"comment": "c" * 256},
        {"comment": ""},
        {"strategy_name": "s" * 128},
        {"risk_percent": 100},
        {"risk_percent": 1e-9},
        {"take_profit": None, "stop_loss": None},
        {"side": "sell", "take_profit": 1990.0, "stop_loss": 2010.0},
        {"side": "sell", "take_profit": None, "stop_loss": None},
        {"entry_price": sys.float_info.min, "take_profit": 1.0, "stop_loss": None},
    ],
)
def test_boundary_values_are_accepted(overrides: dict[str, Any]) -> None:
    """Values exactly at the limits (32-char instrument, 256-char comment, 100 %) are valid."""
    signal = make_signal(**overrides)
    assert decode_signal(encode_canonical(signal)) == signal


def test_unicode_limits_count_characters_not_bytes() -> None:
    """A 32-character instrument of 4-byte characters is within the 32-character limit."""
    signal = make_signal(instrument="\N{ROCKET}" * 32, comment="\N{EURO SIGN}" * 256)
    assert len(signal.instrument) == 32


# --- decoding ---------------------------------------------------------------------------------


def test_decode_accepts_the_canonical_body() -> None:
    """decode_signal turns the canonical body back into the equal Signal."""
    assert decode_signal(EXPECTED_BODY) == make_signal()
    assert decode_signal(EXPECTED_BODY.decode()) == make_signal()


def test_decode_accepts_integers_and_offsets_and_missing_optionals() -> None:
    """Ints for prices, a +02:00 timestamp and absent optionals decode to the normalised signal."""
    body = (
        b'{"instrument":"XAUUSD","side":"buy","entry_price":2000,"risk_percent":1,'
        b'"strategy_name":"s","timestamp":"2025-10-25T16:30:45+02:00"}'
    )
    signal = decode_signal(body)
    assert signal.instrument == "XAUUSD"
    assert signal.entry_price == 2000.0
    assert signal.take_profit is None
    assert signal.timestamp == datetime(2025, 10, 25, 14, 30, 45, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (_json(leverage=100), "leverage"),
        (_json(side="hold"), "side"),
        (_json(entry_price="2000.5"), "entry_price"),
        (_json(entry_price=True), "entry_price"),
        (_json(entry_price=-1), "entry_price"),
        (_json(risk_percent=150), "risk_percent"),
        (_json(take_profit=1.0), "take_profit"),
        (_json(stop_loss=3000.0), "stop_loss"),
        (_json(instrument=""), "instrument"),
        (_json(comment="x" * 257), "comment"),
        (_json(timestamp="2025-10-25T14:30:45"), "timestamp"),
        (_json(timestamp="not a time"), "timestamp"),
        (_json(strategy_name=_REMOVE), "strategy_name"),
        (_json(instrument=None), "instrument"),
        (b'{"entry_price": 1e400}', "entry_price"),
    ],
    ids=[
        "unknown-field",
        "bad-side",
        "price-as-string",
        "price-as-bool",
        "negative-price",
        "risk-over-100",
        "tp-below-buy",
        "sl-above-buy",
        "empty-instrument",
        "long-comment",
        "naive-timestamp",
        "garbage-timestamp",
        "missing-required",
        "null-required",
        "overflowing-number",
    ],
)
def test_decode_rejects_bad_input_naming_the_field(body: bytes, named: str) -> None:
    """Unknown fields and bad values raise InvalidSignalError whose message names the field."""
    with pytest.raises(InvalidSignalError, match=named):
        decode_signal(body)


@pytest.mark.parametrize("body", [b"", b"not json", b"[1, 2]", b"{", b"null", "\u00e9"])
def test_decode_rejects_non_objects(body: bytes | str) -> None:
    """Bodies that are not a JSON object are InvalidSignalError, not a decoder exception."""
    with pytest.raises(InvalidSignalError, match="signal"):
        decode_signal(body)


@pytest.mark.parametrize("timestamp", ["0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"])
def test_decode_rejects_out_of_range_timestamp_as_invalid_signal(timestamp: str) -> None:
    """A valid RFC 3339 timestamp whose UTC instant is out of range is an InvalidSignalError."""
    with pytest.raises(InvalidSignalError, match="timestamp"):
        decode_signal(_json(timestamp=timestamp))


# --- canonical encoding -----------------------------------------------------------------------


def test_canonical_body_exact_bytes() -> None:
    """The canonical body has sorted keys, no whitespace, floats as numbers, Z microseconds."""
    assert encode_canonical(make_signal()) == EXPECTED_BODY


def test_canonical_body_has_sorted_keys_and_null_optionals() -> None:
    """Every field is present in sorted order, and absent optionals are JSON null."""
    body = encode_canonical(make_signal(take_profit=None, stop_loss=None, comment=None))
    pairs: list[tuple[str, Any]] = json.loads(body, object_pairs_hook=list)
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys)
    assert set(keys) == set(Signal.__struct_fields__)
    assert dict(pairs)["take_profit"] is None
    assert b'"comment":null' in body
    assert b" " not in body


def test_canonical_body_is_raw_utf8() -> None:
    """Non-ASCII text is written as raw UTF-8 bytes, not as backslash-u escapes."""
    body = encode_canonical(make_signal(comment="Gold \N{UPWARDS ARROW} \N{EURO SIGN}5 \u65e5"))
    assert "\N{UPWARDS ARROW} \N{EURO SIGN}5 \u65e5".encode() in body
    assert b"\\u" not in body


def test_canonical_timestamp_is_utc_with_microseconds_and_z() -> None:
    """Whole-second and offset timestamps are written as UTC with .ffffff and Z."""
    plus_two = timezone(timedelta(hours=2))
    body = encode_canonical(make_signal(timestamp=datetime(2025, 6, 1, 10, 0, tzinfo=plus_two)))
    assert b'"timestamp":"2025-06-01T08:00:00.000000Z"' in body


def test_canonical_floats_are_json_numbers() -> None:
    """Prices are JSON numbers (never strings) that parse back to the same floats."""
    signal = make_signal(entry_price=1.08345, take_profit=1.1, stop_loss=1e-05, risk_percent=0.1)
    decoded = json.loads(encode_canonical(signal))
    assert (decoded["entry_price"], decoded["take_profit"], decoded["stop_loss"]) == (
        1.08345,
        1.1,
        1e-05,
    )
    assert decoded["risk_percent"] == 0.1


def test_same_signal_gives_same_bytes() -> None:
    """Equal signals, even built with different offsets for the same instant, encode equally."""
    utc = make_signal(timestamp=datetime(2025, 10, 25, 14, 30, tzinfo=UTC))
    minus_five = make_signal(
        timestamp=datetime(2025, 10, 25, 9, 30, tzinfo=timezone(-timedelta(hours=5)))
    )
    assert utc == minus_five
    assert encode_canonical(utc) == encode_canonical(minus_five) == encode_canonical(utc)


def test_format_timestamp_matches_the_canonical_form() -> None:
    """format_timestamp gives RFC 3339 UTC with microseconds and Z for any aware datetime."""
    ist = timezone(timedelta(hours=5, minutes=30))
    assert (
        format_timestamp(datetime(2025, 1, 1, 5, 30, tzinfo=ist)) == "2025-01-01T00:00:00.000000Z"
    )
    assert (
        format_timestamp(datetime(2025, 1, 1, 0, 0, 0, 7, tzinfo=UTC))
        == "2025-01-01T00:00:00.000007Z"
    )


# --- body size --------------------------------------------------------------------------------


def test_body_over_limit_is_refused() -> None:
    """A body one byte over max_body_size raises BodyTooLargeError with size and limit."""
    size = len(EXPECTED_BODY)
    assert encode_canonical(make_signal(), max_body_size=size) == EXPECTED_BODY
    with pytest.raises(BodyTooLargeError, match=f"{size} bytes") as info:
        encode_canonical(make_signal(), max_body_size=size - 1)
    assert (info.value.size, info.value.limit) == (size, size - 1)
    assert info.value.reason == "too_large"
    assert isinstance(info.value, InvalidSignalError)


def test_default_body_limit_is_64_kib() -> None:
    """The default max_body_size is 65536 bytes."""
    assert DEFAULT_MAX_BODY_SIZE == 65536


# --- properties -------------------------------------------------------------------------------

_MAX_PRICE: Final = 1e300
_prices = st.floats(min_value=1e-300, max_value=_MAX_PRICE, allow_nan=False, allow_infinity=False)
# Identifiers as a producer in any language may write them: any code point but control
# characters, invisible (format and separator) characters and surrogates, no edge whitespace
# (those are refused, never trimmed).
_ident_chars = st.characters(exclude_categories=["Cc", "Cs", "Cf", "Zl", "Zp"])
_comment_chars = st.characters(exclude_categories=["Cs"]).filter(
    lambda c: c in "\t\n\r" or unicodedata.category(c) != "Cc"
)


def _idents(max_size: int) -> st.SearchStrategy[str]:
    """Valid identifiers of at most ``max_size`` code points."""
    return st.text(_ident_chars, min_size=1, max_size=max_size).filter(lambda s: s == s.strip())


_trimmed = _idents(32)
_offsets = st.timedeltas(min_value=-timedelta(hours=23, minutes=59), max_value=timedelta(hours=23))


@st.composite
def signals(draw: st.DrawFn) -> Signal:
    """Draw any valid Signal, with take-profit and stop-loss on the correct side of entry."""
    side: Literal["buy", "sell"] = draw(st.sampled_from(["buy", "sell"]))
    entry = draw(_prices)
    above = st.floats(min_value=entry, max_value=sys.float_info.max, exclude_min=True)
    below = st.floats(min_value=0.0, max_value=entry, exclude_min=True, exclude_max=True)
    tp, sl = (above, below) if side == "buy" else (below, above)
    naive = draw(st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2200, 1, 1)))
    return Signal(
        instrument=draw(_trimmed),
        side=side,
        entry_price=entry,
        take_profit=draw(st.none() | tp.filter(math.isfinite)),
        stop_loss=draw(st.none() | sl),
        risk_percent=draw(
            st.floats(min_value=0, max_value=100, exclude_min=True, allow_subnormal=False)
        ),
        comment=draw(st.none() | st.text(_comment_chars, max_size=256)),
        strategy_name=draw(_idents(128)),
        timestamp=naive.replace(tzinfo=timezone(draw(_offsets))),
        signal_id=draw(st.none() | _idents(128)),
    )


@given(signals())
def test_decode_of_encode_round_trips(signal: Signal) -> None:
    """decode(encode(s)) == s, and re-encoding the decoded signal gives the same bytes."""
    body = encode_canonical(signal)
    decoded = decode_signal(body)
    assert decoded == signal
    assert encode_canonical(decoded) == body


@given(signals())
def test_canonical_body_shape_holds_for_any_signal(signal: Signal) -> None:
    """For any signal the body is UTF-8 JSON with sorted keys and a Z-microsecond timestamp."""
    body = encode_canonical(signal)
    pairs: list[tuple[str, Any]] = json.loads(body.decode("utf-8"), object_pairs_hook=list)
    keys = [k for k, _ in pairs]
    assert keys == sorted(keys) == sorted(Signal.__struct_fields__)
    stamp = dict(pairs)["timestamp"]
    assert stamp == format_timestamp(signal.timestamp)
    assert datetime.fromisoformat(stamp) == signal.timestamp
