"""Retention (BRIDGE_TRIM_ACKED) on a real redis-server: only what every group is done with goes."""

from __future__ import annotations

from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge.retention import Retention
from bridge.stream import SignalStream
from tests.fixtures_ingest import MetricsCapture

pytestmark = pytest.mark.redis


async def _fill(redis: Any, stream: str, count: int) -> list[str]:
    return [(await redis.xadd(stream, {"signal": f"s{i}"})).decode() for i in range(count)]


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
    ids = await _fill(redis, stream_name, 10)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xgroup_create(stream_name, "other", id="0")
    # Our group read and acked all ten; the other group read six and acked the first four.
    await redis.xack(stream_name, "g", *await _read(redis, "g", stream_name))
    await _read(redis, "other", stream_name, 6)
    await redis.xack(stream_name, "other", *ids[:4])
    retention = Retention(_ours(redis, stream_name), metrics_capture.metrics)

    result = await retention.trim_once()

    assert result.trimmed == 4
    assert result.min_id == ids[4]
    assert await _ids(redis, stream_name) == ids[4:]  # pending 5 and 6, unread 7..10 all kept
    points = metrics_capture.counter("signals_trimmed_total")
    assert [(dict(p.attributes or {}), p.value) for p in points] == [({"stream": stream_name}, 4)]
    # The other group catches up; its entries stay readable and its lag stays known.
    assert await _read(redis, "other", stream_name) == ids[6:]
    await redis.xack(stream_name, "other", *ids[4:])
    again = await retention.trim_once()
    assert again.trimmed == 6
    assert await redis.xlen(stream_name) == 0
    info: list[dict[str, Any]] = await redis.xinfo_groups(stream_name)
    groups = {g["name"].decode(): g for g in info}
    assert groups["other"]["lag"] == 0
    assert groups["g"]["lag"] == 0


async def test_group_that_read_nothing_keeps_everything(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """A group at 0-0 (created at 0, never read) blocks every trim; no group, no trim either."""
    await _fill(redis, stream_name, 5)
    ours = _ours(redis, stream_name)
    assert (await ours.trim_acked()).trimmed == 0  # no group at all
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xgroup_create(stream_name, "idle", id="0")
    await redis.xack(stream_name, "g", *await _read(redis, "g", stream_name))

    result = await ours.trim_acked()

    assert result == type(result)(0, None)
    assert await redis.xlen(stream_name) == 5


async def test_new_group_at_dollar_needs_only_new_entries(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """A group created at ``$`` never reads older entries, so they are trimmed; newer ones stay."""
    old = await _fill(redis, stream_name, 3)
    await redis.xgroup_create(stream_name, "g", id="$")
    new = await _fill(redis, stream_name, 2)

    result = await _ours(redis, stream_name).trim_acked()

    assert result.trimmed == len(old)
    assert await _ids(redis, stream_name) == new
