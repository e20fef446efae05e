"""A strict-mode worker under a lease the server no longer accepts, or Redis no longer holds.

Real Redis, the reference ingest server on loopback. The worker is built with a ShardFence, as
the coordinator builds it: its POSTs carry the lease, its acks and dead letters check it.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from bridge.core.fencing import LeaseStamp
from bridge.delivery.fence import ShardFence
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.ownership.leases import LeaseStore
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from tests.fixtures_ingest import MetricsCapture, Server
from tests.support import FAST, bridge_config, make_signal

pytestmark = pytest.mark.redis


async def _fence(redis: aioredis.Redis, stream_name: str, token: int) -> ShardFence:
    """Hold the shard's lease in Redis and return the fence a coordinator would build for it."""
    store = LeaseStore(redis, group="g", members_key=f"{{{stream_name}}}:m")
    value = f"{token} c1 test"
    await redis.set(store.lease_key(stream_name), value, px=60_000)
    return ShardFence(
        valid=lambda: True,
        stamp=LeaseStamp(stream_name, token),
        lease_key=store.lease_key(stream_name),
        lease_value=value,
    )


async def test_a_stale_lease_answer_drops_the_shard_leaves_the_entry_pending_and_counts(  # noqa: PLR0917 - pytest fixtures
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    metrics_capture: MetricsCapture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Server holds token 9, worker posts with 4: no ack, no dead letter, stopped, 1 WARNING."""
    config = bridge_config(server.url, redis_url, stream_name)
    server.app.fences.highest[("test-producer", stream_name)] = 9
    stream = SignalStream(redis, stream=stream_name, group="g", consumer="c1", dlq_stream="d")
    for i in range(3):
        await publish(redis, make_signal(i), stream=stream_name)
    fence = await _fence(redis, stream_name, 4)
    caplog.set_level(logging.WARNING, logger="bridge.worker")
    async with HmacClient(config.outbound) as client:
        worker = Worker(
            stream,
            client,
            config.stream,
            backoff=FAST,
            fence=fence,
            metrics=metrics_capture.metrics,
        )
        await asyncio.wait_for(worker.run(), 10)  # it stops by itself
    assert worker.fenced
    assert server.app.received == []
    assert server.app.refusals["stale lease"] >= 1
    summary = await redis.xpending(stream_name, "g")
    assert summary["pending"] >= 1  # left for the shard's owner
    assert await redis.xlen("d") == 0
    (point,) = metrics_capture.counter("signals_fenced_total")
    assert point.value >= 1
    assert dict(point.attributes or {}) == {"stream": stream_name}
    stale = [r for r in caplog.records if "refused this shard's lease as stale" in r.message]
    assert len(stale) == 1


async def test_acks_and_dead_letters_check_the_lease_in_redis(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """With another value in the lease key, the ack and dead-letter scripts write nothing."""
    from bridge.streams.entries import DeadLetter  # noqa: PLC0415 - built by hand for this test

    stream = SignalStream(redis, stream=stream_name, group="g", consumer="c1", dlq_stream="d")
    await stream.ensure_group("0")
    for i in range(2):
        await publish(redis, make_signal(i), stream=stream_name)
    entries = await stream.read(2, None)
    fence = await _fence(redis, stream_name, 3)
    ours = (fence.lease_key, fence.lease_value)
    theirs = (fence.lease_key, "4 c2 other")
    assert await stream.ack_leased([entries[0].id], theirs) is None
    letter = DeadLetter(reason="rejected", error="422")
    assert await stream.dead_letter(entries[1], letter, theirs) is None  # fenced
    assert (await redis.xpending(stream_name, "g"))["pending"] == 2
    assert await redis.xlen("d") == 0
    assert await stream.ack_leased([entries[0].id], ours) == 1
    assert await stream.dead_letter(entries[1], letter, ours) is True
    assert (await redis.xpending(stream_name, "g"))["pending"] == 0
    assert await redis.xlen("d") == 1


async def test_a_takeovers_first_attempt_expires_only_what_no_old_copy_can_still_land(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Past max age but inside the grace (2x the POST timeout): sent; past both: dead-lettered."""
    config = bridge_config(
        server.url,
        redis_url,
        stream_name,
        BRIDGE_SIGNAL_MAX_AGE_SECONDS="10",
        OUTBOUND_TIMEOUT_SECONDS="5",
    )
    now = datetime.now(UTC)
    within = make_signal(0, now=now - timedelta(seconds=15), signal_id="within-grace")
    beyond = make_signal(1, now=now - timedelta(seconds=25), signal_id="beyond-grace")
    dlq = f"{stream_name}:dlq"
    stream = SignalStream(redis, stream=stream_name, group="g", consumer="c1", dlq_stream=dlq)
    await stream.ensure_group("0")
    for signal in (within, beyond):
        await publish(redis, signal, stream=stream_name)
    await stream.read(2, None)  # pending for c1, as a takeover leaves the old owner's entries
    fence = await _fence(redis, stream_name, 1)
    async with HmacClient(config.outbound) as client:
        worker = Worker(stream, client, config.stream, backoff=FAST, fence=fence)
        task = asyncio.create_task(worker.run())
        try:
            for _ in range(200):  # bounded: 10 s
                if (await redis.xpending(stream_name, "g"))["pending"] == 0:
                    break
                await asyncio.sleep(0.05)
        finally:
            worker.stop()
            await asyncio.wait_for(task, 10)
    assert [r.signal.signal_id for r in server.app.received] == ["within-grace"]
    letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(dlq)  # type: ignore[assignment]
    assert [fields[b"dlq_reason"] for _, fields in letters] == [b"expired"]
    assert b"beyond-grace" in letters[0][1][b"signal"]
