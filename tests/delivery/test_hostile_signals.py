"""Signals from the future and invisible characters are dead-lettered `invalid`, with the reason.

Run through a real worker against a private Redis and the reference server on loopback.
"""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from bridge.streams.producer import publish, publish_raw
from tests.fixtures_ingest import Server
from tests.support import bridge_config, eventually, make_signal, running

pytestmark = pytest.mark.redis


def _raw_signal(instrument: str, timestamp: str, signal_id: str) -> bytes:
    """A signal's JSON as a producer in another language might write it."""
    return (
        f'{{"instrument":"{instrument}","side":"buy","entry_price":1.5,"risk_percent":1,'
        f'"strategy_name":"s","timestamp":"{timestamp}","signal_id":"{signal_id}"}}'
    ).encode()


async def _drained(redis: aioredis.Redis, stream: str) -> bool:
    """The group has read and settled every entry."""
    groups = await redis.xinfo_groups(stream)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


async def _letters(redis: aioredis.Redis, stream: str) -> dict[str, dict[bytes, bytes]]:
    """The dead letters by the signal_id in their raw JSON."""
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream}:dlq")  # type: ignore[assignment]
    out = {}
    for _, fields in entries:
        for sid in ("from-2100", "rtl"):
            if f'"{sid}"'.encode() in fields[b"signal"]:
                out[sid] = fields
    return out


async def test_future_dated_and_invisible_character_signals_are_dead_lettered_invalid(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A 2100-dated signal and an RTL-override instrument are dead-lettered `invalid`, with why."""
    await publish_raw(
        redis,
        {"signal": _raw_signal("XAUUSD", "2100-01-01T00:00:00Z", "from-2100")},
        stream=stream_name,
    )
    await publish_raw(
        redis,
        {"signal": _raw_signal("XAU\\u202eDSU", "2026-01-01T00:00:00Z", "rtl")},
        stream=stream_name,
    )
    good = await publish(redis, make_signal(1, signal_id="good-1"), stream=stream_name)
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_SIGNAL_MAX_AGE_SECONDS="0")
    async with running(redis, config):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    letters = await _letters(redis, stream_name)
    assert letters["from-2100"][b"dlq_reason"] == b"invalid"
    future_error = letters["from-2100"][b"dlq_error"].decode()
    assert "timestamp 2100-01-01T00:00:00.000000Z is " in future_error
    assert (
        "s ahead of the bridge's clock, limit 60s (BRIDGE_MAX_CLOCK_AHEAD_SECONDS)" in future_error
    )
    assert letters["rtl"][b"dlq_reason"] == b"invalid"
    assert letters["rtl"][b"dlq_error"] == (
        b"invalid signal: instrument contains the invisible character U+202E "
        b"(RIGHT-TO-LEFT OVERRIDE) at position 3"
    )
    assert [r.signal.signal_id for r in server.app.received] == ["good-1"], good


async def test_instrument_pattern_and_zero_width_space_are_refused_by_name(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """BRIDGE_INSTRUMENT_PATTERN dead-letters an off-alphabet instrument; U+200B is named too."""
    await publish_raw(
        redis,
        {"signal": _raw_signal("xauusd", "2026-01-01T00:00:00Z", "off-pattern")},
        stream=stream_name,
    )
    await publish_raw(
        redis,
        {"signal": _raw_signal("EURUSD", "2026-01-01T00:00:00Z", "zw\\u200bsp")},
        stream=stream_name,
    )
    await publish(
        redis, make_signal(2, instrument="EURUSD", signal_id="good-2"), stream=stream_name
    )
    config = bridge_config(
        server.url,
        redis_url,
        stream_name,
        BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
        BRIDGE_INSTRUMENT_PATTERN="[A-Z]{6}",
    )
    async with running(redis, config):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream_name}:dlq")  # type: ignore[assignment]
    errors = sorted(fields[b"dlq_error"].decode() for _, fields in entries)
    assert errors == [
        "instrument 'xauusd' does not match BRIDGE_INSTRUMENT_PATTERN '[A-Z]{6}'",
        "invalid signal: signal_id contains the invisible character U+200B (ZERO WIDTH SPACE) "
        "at position 2",
    ]
    assert [r.signal.signal_id for r in server.app.received] == ["good-2"]
