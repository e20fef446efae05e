"""A producer's data is never altered: strings exact or refused, numbers the same doubles.

Hostile cases from issue 10 (a trimmed signal_id that lost a trade, rounded fractions, a
silent leap second) plus property tests over what a producer in any language may write.
"""

import json
import unicodedata
import uuid
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.signal import decode_signal, encode_canonical, parse_signal_timestamp
from bridge.delivery.jobs import idempotency_key
from bridge.errors import InvalidSignalError
from bridge.streams.producer import publish_raw
from tests.fixtures_ingest import Server
from tests.support import bridge_config, eventually, running

BASE: Final[dict[str, Any]] = {
    "instrument": "XAUUSD",
    "side": "buy",
    "entry_price": 2000.5,
    "risk_percent": 1.5,
    "strategy_name": "gold-breakout",
    "timestamp": "2025-10-25T14:30:45.123456Z",
    "signal_id": "order-77",
}


def _wire(**overrides: Any) -> bytes:
    """The producer's JSON: BASE with some fields replaced."""
    return json.dumps({**BASE, **overrides}, ensure_ascii=False).encode()


def _refused(field: str, **overrides: Any) -> InvalidSignalError:
    """Decode a producer entry that must be refused; return the error (naming ``field``)."""
    with pytest.raises(InvalidSignalError) as info:
        decode_signal(_wire(**overrides))
    assert info.value.field == field
    assert info.value.reason == "invalid"
    return info.value


# --- strings: exact or refused ----------------------------------------------------------------


@pytest.mark.parametrize("value", ["order-77 ", " order-77", "order-77\t", "\u00a0order-77"])
def test_signal_id_with_edge_whitespace_is_refused_never_trimmed(value: str) -> None:
    """'order-77 ' is refused (it used to be trimmed into another signal's key)."""
    error = _refused("signal_id", signal_id=value)
    assert "leading or trailing whitespace" in str(error)
    assert "never trimmed" in str(error)


@pytest.mark.parametrize("field", ["signal_id", "instrument", "strategy_name"])
@pytest.mark.parametrize("char", ["\x00", "\n", "\x1b", "\x7f", "\x85"])
def test_identifiers_with_control_characters_are_refused(field: str, char: str) -> None:
    """A control character inside an identifier is refused, naming its code point."""
    error = _refused(field, **{field: f"ab{char}cd"})
    assert f"U+{ord(char):04X} at position 2" in str(error)


@pytest.mark.parametrize("field", ["signal_id", "instrument", "strategy_name"])
def test_identifiers_with_edge_whitespace_are_refused(field: str) -> None:
    """Instrument and strategy name follow the same rule as signal_id."""
    _refused(field, **{field: f" {BASE[field]}"})


def test_comment_is_free_text_kept_exactly() -> None:
    """A comment keeps edge spaces, tabs and newlines exactly; other controls are refused."""
    comment = "  two lines\n\tindented  "
    body = encode_canonical(decode_signal(_wire(comment=comment)))
    assert json.loads(body)["comment"] == comment
    assert "U+0007" in str(_refused("comment", comment="bell\x07"))


def test_identifiers_are_sent_byte_for_byte() -> None:
    """Non-ASCII identifiers (NFC and NFD forms alike) reach the body unchanged, not normalised."""
    nfd = unicodedata.normalize("NFD", "ordre-é")
    signal = decode_signal(_wire(signal_id=nfd, instrument="ÖL/€", strategy_name="戦略"))
    sent = json.loads(encode_canonical(signal))
    assert (sent["signal_id"], sent["instrument"], sent["strategy_name"]) == (nfd, "ÖL/€", "戦略")
    assert idempotency_key("s", "1-0", nfd) != idempotency_key("s", "1-0", "ordre-é")


def test_lengths_count_code_points_not_utf16_units() -> None:
    """256 emoji fit the comment (512 UTF-16 units); 257 do not. 128 emoji fit a signal_id."""
    emoji = "\U0001f680"
    decode_signal(_wire(comment=emoji * 256, signal_id=emoji * 128))
    assert "256 Unicode code points" in str(_refused("comment", comment=emoji * 257))
    assert "128 Unicode code points" in str(_refused("signal_id", signal_id=emoji * 129))


# --- timestamps -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "sent"),
    [
        ("2025-10-25T14:30:25.9999995Z", "2025-10-25T14:30:25.999999Z"),
        ("2025-10-25T14:30:25.999999999999Z", "2025-10-25T14:30:25.999999Z"),
        ("2025-10-25T14:30:25.1234567+02:00", "2025-10-25T12:30:25.123456Z"),
        ("2025-10-25T14:30:25Z", "2025-10-25T14:30:25.000000Z"),
        ("2025-10-25t14:30:25.5z", "2025-10-25T14:30:25.500000Z"),
    ],
)
def test_fractions_past_microseconds_are_truncated_not_rounded(written: str, sent: str) -> None:
    """...:25.9999995Z stays in second 25 (it used to become :26.000000Z)."""
    body = encode_canonical(decode_signal(_wire(timestamp=written)))
    assert json.loads(body)["timestamp"] == sent


def test_leap_second_is_refused_with_that_reason() -> None:
    """A :60 timestamp is dead-letter material and the error says it is a leap second."""
    error = _refused("timestamp", timestamp="2016-12-31T23:59:60Z")
    assert "leap second (:60)" in str(error)


@pytest.mark.parametrize(
    "written",
    [
        "2025-10-25T14:30:25",
        "2025-10-25 14:30:25Z",
        "2025-13-25T14:30:25Z",
        "2025-10-25T14:30:25+24:00",
        "2025-10-25T14:30:25.Z",
        "\uff12\uff10\uff12\uff15-10-25T14:30:25Z",  # full-width digits
        "2025-10-25",
    ],
)
def test_malformed_timestamps_are_refused(written: str) -> None:
    """Timestamps without a zone, with bad fields or non-ASCII digits are refused."""
    _refused("timestamp", timestamp=written)


def test_parse_timestamp_refuses_non_strings() -> None:
    """A number where the timestamp belongs is refused, naming the field."""
    with pytest.raises(InvalidSignalError) as info:
        parse_signal_timestamp(1700000000)
    assert info.value.field == "timestamp"


# --- properties -------------------------------------------------------------------------------

_ident = st.text(
    st.characters(exclude_categories=["Cc", "Cs", "Cf", "Zl", "Zp"]), min_size=1, max_size=128
).filter(lambda s: s == s.strip())
_decimal_text = st.decimals(
    min_value=Decimal("1e-30"), max_value=Decimal("1e30"), allow_nan=False, allow_infinity=False
).map(str)


def _accepted_signal_id(signal_id: str) -> bool:
    """Tell whether the validator lets ``signal_id`` through (as the worker would see it)."""
    try:
        decode_signal(_wire(signal_id=signal_id))
    except InvalidSignalError:
        return False
    return True


_entry_id = st.tuples(st.integers(0, 2**48), st.integers(0, 2**20)).map(lambda t: f"{t[0]}-{t[1]}")
_source = st.tuples(_entry_id, st.one_of(st.none(), _ident.filter(_accepted_signal_id)))


@given(_source, _source)
def test_different_entries_never_share_an_idempotency_key(
    first: tuple[str, str | None], second: tuple[str, str | None]
) -> None:
    """Two accepted producer entries that differ (signal_id, or stream/entry) get two keys."""
    stream = "signals"
    (entry_a, id_a), (entry_b, id_b) = first, second
    same_entry = id_a == id_b if id_a is not None else (id_b is None and entry_a == entry_b)
    key_a = idempotency_key(stream, entry_a, id_a)
    key_b = idempotency_key(stream, entry_b, id_b)
    assert (key_a == key_b) == same_entry


@given(st.from_regex(r"[A-Za-z0-9:{}_.-]{1,20}", fullmatch=True), _entry_id)
def test_a_signal_id_spelled_like_an_entry_is_refused(stream: str, entry_id: str) -> None:
    """A signal_id '<stream>/<entry id>' would take that entry's key: it is refused, named."""
    error = _refused("signal_id", signal_id=f"{stream}/{entry_id}")
    assert "entry reference" in str(error)


_number_text = _decimal_text | st.floats(1e-300, 1e300).map(repr) | st.integers(1, 2**80).map(str)


@given(_number_text, st.floats(0.001, 100.0).map(repr))
def test_every_number_reaches_the_server_as_the_same_double(entry: str, risk: str) -> None:
    """Each number the producer writes parses, at the server, to the double its text denotes."""
    producer = (
        f'{{"instrument":"X","side":"buy","entry_price":{entry},"risk_percent":{risk},'
        f'"strategy_name":"s","timestamp":"2025-10-25T14:30:45Z"}}'
    )
    received = json.loads(encode_canonical(decode_signal(producer)))
    assert received["entry_price"] == float(entry)
    assert received["risk_percent"] == float(risk)


@given(_ident, _ident, _ident, st.text(max_size=256).filter(lambda s: "\x00" not in s))
def test_every_string_reaches_the_server_identical(
    signal_id: str, instrument: str, strategy: str, comment: str
) -> None:
    """Any valid identifier or comment arrives at the server exactly as the producer wrote it."""
    comment = "".join(c for c in comment if c in "\t\n\r" or unicodedata.category(c) != "Cc")
    instrument = instrument[:32].strip() or "X"
    wire = _wire(
        signal_id=signal_id, instrument=instrument, strategy_name=strategy, comment=comment
    )
    received = json.loads(encode_canonical(decode_signal(wire)))
    assert received["signal_id"] == signal_id
    assert received["instrument"] == instrument
    assert received["strategy_name"] == strategy
    assert received["comment"] == comment
    assert idempotency_key("s", "1-0", signal_id) == str(uuid.uuid5(uuid.NAMESPACE_URL, signal_id))


# --- end to end: the lost gold trade ----------------------------------------------------------


@pytest.mark.redis
async def test_padded_signal_id_is_dead_lettered_not_acked_as_duplicate(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """'order-77' (gold buy) is delivered; 'order-77 ' (EURUSD sell) is dead-lettered as invalid."""
    now = datetime.now(UTC).isoformat()
    gold = _wire(signal_id="order-77", timestamp=now)
    eurusd = _wire(
        signal_id="order-77 ",
        instrument="EURUSD",
        side="sell",
        entry_price=1.08,
        risk_percent=1,
        timestamp=now,
    )
    await publish_raw(redis, {"signal": gold}, stream=stream_name)
    await publish_raw(redis, {"signal": eurusd}, stream=stream_name)
    config = bridge_config(server.url, redis_url, stream_name)
    async with running(redis, config) as worker:
        await eventually(
            lambda: worker.stats.delivered == 1 and sum(worker.stats.dead_lettered.values()) == 1,
            what="one delivered, one dead-lettered",
        )
    assert [r.signal.signal_id for r in server.app.received] == ["order-77"]
    letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream_name}:dlq")  # type: ignore[assignment]
    [(_, letter)] = letters
    assert letter[b"dlq_reason"] == b"invalid"
    assert b"signal_id" in letter[b"dlq_error"]
    assert b"never trimmed" in letter[b"dlq_error"]
    assert worker.stats.duplicates == 0
