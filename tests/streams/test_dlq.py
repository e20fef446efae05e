"""The dead-letter tools as an operator runs them: list, show, replay (filters, dry run, age)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from bridge.delivery.jobs import idempotency_key
from bridge.streams.deadletters import DeadLetterStore
from bridge.streams.entries import DLQ_PREFIX, DeadLetter
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish, publish_raw
from tests.fixtures_ingest import Server
from tests.ops.test_cli import cli
from tests.support import bridge_config, eventually, make_signal, running

pytestmark = pytest.mark.redis


def _env(redis_url: str, stream: str) -> dict[str, str]:
    return {
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_STREAM": stream,
        "BRIDGE_DLQ_STREAM": f"{stream}:dlq",
        "BRIDGE_GROUP": "g",
    }


async def _letters(
    redis: aioredis.Redis, stream_name: str, reasons: list[str]
) -> tuple[SignalStream, list[str]]:
    """Publish one entry per reason (the last undecodable) and dead-letter each; return ids."""
    stream = SignalStream(
        redis, stream=stream_name, group="g", consumer="ops", dlq_stream=f"{stream_name}:dlq"
    )
    await stream.ensure_group("0")
    for i in range(len(reasons) - 1):
        await publish(redis, make_signal(i), stream=stream_name)
    await publish_raw(
        redis, {"signal": b'{"signal_id": "bad-1", "side": "up"}'}, stream=stream_name
    )
    entries = await stream.read(len(reasons), None)
    for entry, reason in zip(entries, reasons, strict=True):
        await stream.dead_letter(entry, DeadLetter(reason=reason, error=f"because {reason}"))
    return stream, [e.id async for e in DeadLetterStore.of(stream).scan()]


async def test_filters_cover_the_whole_dead_letter_stream(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """--reason finds letters past the first --count entries and across pages; --since filters."""
    reasons = ["expired"] * 7 + ["rejected", "invalid"]
    stream, ids = await _letters(redis, stream_name, reasons)
    env = _env(redis_url, stream_name)

    # The one "rejected" letter sits after seven others: --count 1 still finds it.
    listing = await asyncio.to_thread(
        cli, "dlq", "list", "--reason", "rejected", "--count", "1", "--json", env=env
    )
    assert [row["id"] for row in json.loads(listing.stdout)] == [ids[7]]
    paged = [e.id async for e in DeadLetterStore.of(stream).scan(reason="expired", page=2)]
    assert paged == ids[:7]
    assert [e.id async for e in DeadLetterStore.of(stream).scan(limit=3, page=2)] == ids[:3]
    recent = await asyncio.to_thread(cli, "dlq", "list", "--since", "10m", "--json", env=env)
    assert len(json.loads(recent.stdout)) == 9
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    later = await asyncio.to_thread(cli, "dlq", "list", "--since", future, "--json", env=env)
    assert json.loads(later.stdout) == []
    status = await stream.status()
    assert status.dead_letters == 9
    assert status.dead_letter_oldest_age_ms is not None
    assert 0 <= status.dead_letter_oldest_age_ms < 60_000
    bad = await asyncio.to_thread(cli, "dlq", "list", "--since", "yesterday", env=env)
    assert bad.returncode == 2
    assert "duration like 90s" in bad.stderr


async def test_show_prints_fields_signal_and_error(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """`dlq show` gives every field, the decoded signal or why it does not decode, the error."""
    _, ids = await _letters(redis, stream_name, ["rejected", "invalid"])
    env = _env(redis_url, stream_name)

    good = await asyncio.to_thread(cli, "dlq", "show", ids[0], env=env)
    assert good.returncode == 0, good.stderr
    assert f"dead letter {ids[0]} in {stream_name}:dlq" in good.stdout
    for field in ("signal", "dlq_reason: rejected", "dlq_source_id", "dlq_time_ms", "dlq_group: g"):
        assert f"  {field}" in good.stdout
    assert '"instrument": "XAUUSD"' in good.stdout
    assert "error: because rejected" in good.stdout
    broken = json.loads(
        (await asyncio.to_thread(cli, "dlq", "show", ids[1], "--json", env=env)).stdout
    )
    assert broken["signal"] is None
    assert broken["signal_error"].startswith("invalid signal")
    assert broken["error"] == "because invalid"
    assert broken["fields"]["dlq_reason"] == "invalid"

    missing = await asyncio.to_thread(cli, "dlq", "show", "1-1", env=env)
    assert missing.returncode == 1
    assert "no dead letter 1-1" in missing.stderr
    assert (await asyncio.to_thread(cli, "dlq", "show", "nonsense", env=env)).returncode == 1


async def test_replay_dry_run_filters_and_unknown_ids(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A dry run changes nothing; --reason replays only that reason; unknown ids replay nothing."""
    _, ids = await _letters(redis, stream_name, ["expired", "rejected", "expired", "invalid"])
    env = _env(redis_url, stream_name)
    length = await redis.xlen(stream_name)

    dry = await asyncio.to_thread(cli, "dlq", "replay", "--reason", "expired", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would replay") == 2
    assert "2 dead letters would be replayed; nothing changed" in dry.stdout
    assert await redis.xlen(f"{stream_name}:dlq") == 4
    assert await redis.xlen(stream_name) == length

    unknown = await asyncio.to_thread(cli, "dlq", "replay", ids[1], "99-0", env=env)
    assert unknown.returncode == 1
    assert "no dead letter 99-0" in unknown.stderr
    assert await redis.xlen(f"{stream_name}:dlq") == 4  # not even the known id was replayed
    both = await asyncio.to_thread(cli, "dlq", "replay", ids[1], "--reason", "x", env=env)
    assert both.returncode == 2

    done = await asyncio.to_thread(cli, "dlq", "replay", "--reason", "expired", env=env)
    assert done.returncode == 0, done.stderr
    assert [line.split(" -> ")[0] for line in done.stdout.splitlines()] == [ids[0], ids[2]]
    left = [
        e.id
        async for e in DeadLetterStore(
            redis, stream=stream_name, dlq_stream=f"{stream_name}:dlq"
        ).scan()
    ]
    assert left == [ids[1], ids[3]]
    assert await redis.xlen(stream_name) == length + 2


async def test_expired_letter_replays_only_when_waived(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A plain replay of an expired letter expires again; --allow-expired posts it, same key."""
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_SIGNAL_MAX_AGE_SECONDS="60")
    stale = make_signal(3, now=datetime.now(UTC) - timedelta(minutes=5), signal_id=None)
    first_id = await publish(redis, stale, stream=stream_name)
    env = _env(redis_url, stream_name)
    dlq = f"{stream_name}:dlq"

    async def letters() -> list[dict[bytes, bytes]]:
        return [fields for _, fields in await redis.xrange(dlq)]  # type: ignore[misc,union-attr]

    async with running(redis, config):
        await eventually(lambda: _count(redis, dlq, 1), what="first dead letter")
        plain = await asyncio.to_thread(cli, "dlq", "replay", "--all", env=env)
        assert plain.returncode == 0, plain.stderr
        await eventually(lambda: _count(redis, dlq, 1), what="second dead letter")
        (again,) = await letters()
        assert again[f"{DLQ_PREFIX}reason".encode()] == b"expired"
        assert server.app.received == []

        waived = await asyncio.to_thread(cli, "dlq", "replay", "--all", "--allow-expired", env=env)
        assert waived.returncode == 0, waived.stderr
        assert "maximum age waived" in waived.stdout
        await eventually(lambda: len(server.app.received) == 1, what="the waived delivery")

    (received,) = server.app.received
    assert received.signal.timestamp == stale.timestamp
    assert received.idempotency_key == idempotency_key(stream_name, first_id, None)
    assert await redis.xlen(dlq) == 0


async def _count(redis: aioredis.Redis, key: str, expected: int) -> bool:
    return bool(await redis.xlen(key) == expected)
