"""Retention (BRIDGE_TRIM_ACKED) on a real redis-server: only what every group is done with goes."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge.streams.group import SignalStream
from bridge.streams.retention import Retention
from tests.fixtures_ingest import MetricsCapture

pytestmark = pytest.mark.redis

# Redis trims whole radix-tree nodes (up to 100 small entries each): enough entries that a
# wrong floor would show, and room for one partly needed node to stay.
ENTRIES = 1000
NODE = 100


async def _fill(redis: Any, stream: str, count: int) -> list[str]:
    async with redis.pipeline(transaction=False) as pipe:
        for i in range(count):
            pipe.xadd(stream, {"signal": f"s{i}"})
        return [entry_id.decode() for entry_id in await pipe.execute()]


async def _ids(redis: Any, stream: str) -> list[str]:
    return [entry_id.decode() for entry_id, _ in await redis.xrange(stream)]


async def _read(redis: Any, group: str, stream: str, count: int | None = None) -> list[str]:
    """XREADGROUP new entries for ``group`` (consumer c1); return their ids."""
    reply = await redis.xreadgroup(group, "c1", {stream: ">"}, count=count)
    return [entry_id.decode() for entry_id, _ in reply[0][1]] if reply else []


def _ours(redis: aioredis.Redis, stream: str) -> SignalStream:
    return SignalStream(redis, stream=stream, group="g", consumer="c1", dlq_stream=f"{stream}:dlq")


async def test_lagging_group_keeps_what_it_has_not_read(
    redis: aioredis.Redis, stream_name: str, metrics_capture: MetricsCapture
) -> None:
    """With a second group behind ours, only entries both have read and acked are trimmed."""
    ids = await _fill(redis, stream_name, ENTRIES)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xgroup_create(stream_name, "other", id="0")
    # Our group read and acked everything; the other group read 600 and acked the first 400.
    await redis.xack(stream_name, "g", *await _read(redis, "g", stream_name))
    await _read(redis, "other", stream_name, 600)
    await redis.xack(stream_name, "other", *ids[:400])
    retention = Retention(_ours(redis, stream_name), metrics_capture.metrics, chunk=NODE * 2)

    result = await retention.trim_once()

    assert result.min_id == ids[400]  # the other group's oldest pending entry
    assert 400 - NODE <= result.trimmed <= 400
    assert await _ids(redis, stream_name) == ids[result.trimmed :]  # pending and unread all kept
    points = metrics_capture.counter("signals_trimmed_total")
    assert [(dict(p.attributes or {}), p.value) for p in points] == [
        ({"stream": stream_name}, result.trimmed)
    ]
    # The other group catches up: every entry it had not read is still there, its lag known.
    assert await _read(redis, "other", stream_name) == ids[600:]
    await redis.xack(stream_name, "other", *ids[400:])
    again = await retention.trim_once()  # several chunks of at most 200 in one pass
    assert again.trimmed == ENTRIES - result.trimmed
    assert await redis.xlen(stream_name) == 0
    info: list[dict[str, Any]] = await redis.xinfo_groups(stream_name)
    assert [(g["name"], g["lag"]) for g in info] == [(b"g", 0), (b"other", 0)]


async def test_group_that_read_nothing_keeps_everything(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """A group at 0-0 (created at 0, never read) blocks every trim; no group, no trim either."""
    await _fill(redis, stream_name, ENTRIES)
    ours = _ours(redis, stream_name)
    assert (await ours.trim_acked()).trimmed == 0  # no group at all
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xgroup_create(stream_name, "idle", id="0")
    await redis.xack(stream_name, "g", *await _read(redis, "g", stream_name))

    result = await ours.trim_acked()

    assert result == type(result)(0, None)
    assert await redis.xlen(stream_name) == ENTRIES


async def test_new_group_at_dollar_needs_only_new_entries(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """A group created at ``$`` never reads older entries, so they go; newer ones stay."""
    old = await _fill(redis, stream_name, ENTRIES)
    await redis.xgroup_create(stream_name, "g", id="$")
    new = await _fill(redis, stream_name, 5)

    result = await _ours(redis, stream_name).trim_acked()

    assert ENTRIES - NODE <= result.trimmed <= ENTRIES
    assert await _ids(redis, stream_name) == (old + new)[result.trimmed :]
