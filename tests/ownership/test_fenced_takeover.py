"""A stale owner's writes after a takeover, end to end: the server's fence and the Redis fence.

Two replicas in strict mode (one shard, a 600 ms lease), the reference ingest server counting
what it stores. Replica r1 reaches the server through a delay proxy and Redis through a fault
proxy: its POSTs are held on the wire past the takeover, then it is cut from Redis. Replica r2
takes the shard over. With the server's fence on, r1's late POSTs are refused (stale lease):
no inversion, no signal both stored and dead-lettered. With it off, they land: the residual
risk the README describes. A replica that wakes after the heal writes no ack, no dead letter,
and entries a dead owner's late read took are moved to the owner within a renewal.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Final, cast

import pytest
import redis.asyncio as aioredis

from bridge.app.runner import coordinator_settings
from bridge.config.loader import BridgeConfig
from bridge.core.fencing import LeaseStamp
from bridge.core.signal import decode_signal, encode_canonical
from bridge.delivery.fence import ShardFence
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.devkit.fences import Fences
from bridge.edge.client import HmacClient
from bridge.ownership.coordinator import Coordinator
from bridge.ownership.leases import LeaseStore, members_key
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from tests.delay_proxy import delay_proxy
from tests.fault_proxy import fault_proxy
from tests.fixtures_ingest import Server
from tests.support import FAST, bridge_config, eventually, make_signal

pytestmark = pytest.mark.redis

INSTRUMENTS: Final = ["XAUUSD", "EURUSD", "BTCUSD", "US500"]


def _config(
    server_url: str, redis_url: str, shard: str, consumer: str, **extra: str
) -> BridgeConfig:
    settings = {
        "BRIDGE_LEASE_TTL_MS": "600",
        "BRIDGE_LEASE_RENEW_MS": "100",
        "BRIDGE_HEARTBEAT_TTL_MS": "600",
        "BRIDGE_SHUTDOWN_GRACE_SECONDS": "1",
        "BRIDGE_BREAKER_THRESHOLD": "1000",
        "BRIDGE_BACKOFF_BASE_MS": "20",
        "BRIDGE_BACKOFF_CAP_MS": "50",
        **extra,
    }
    first = shard.split(",", 1)[0]  # ``shard`` may list several, comma-separated
    return bridge_config(
        server_url, redis_url, first, BRIDGE_STREAMS=shard, BRIDGE_CONSUMER=consumer, **settings
    )


@contextlib.asynccontextmanager
async def _replica(
    redis_url: str, config: BridgeConfig, *, socket_timeout_s: float = 1.0
) -> AsyncIterator[Coordinator]:
    """One strict-mode replica with its own Redis connection (through ``redis_url``)."""
    cfg = config.stream
    redis = aioredis.Redis.from_url(
        redis_url, socket_timeout=socket_timeout_s, socket_connect_timeout=socket_timeout_s
    )
    streams = [
        SignalStream(redis, stream=n, group=cfg.group, consumer=cfg.consumer, dlq_stream=f"{n}:dlq")
        for n in cfg.stream_names()
    ]
    async with HmacClient(config.outbound) as client:

        def make_worker(stream: SignalStream, fence: ShardFence | None) -> Worker:
            return Worker(stream, client, cfg, backoff=FAST, redis_backoff=FAST, fence=fence)

        store = LeaseStore(
            redis, group=cfg.group, members_key=members_key(cfg.stream_names(), cfg.group)
        )
        coordinator = Coordinator(store, streams, coordinator_settings(cfg), make_worker)
        task = asyncio.create_task(coordinator.run())
        try:
            yield coordinator
        finally:
            coordinator.stop()
            await asyncio.wait_for(task, 30)
            await redis.aclose()


def _lease_token(headers: Mapping[str, str]) -> int:
    stamp = LeaseStamp.parse(headers.get("x-signal-lease", ""))
    return 0 if stamp is None else stamp.token


def _inversions(server: Server, published: dict[str, list[str]]) -> int:
    """Count stored signals that landed after a later signal of the same instrument."""
    position = {sid: i for ids in published.values() for i, sid in enumerate(ids)}
    count = 0
    latest: dict[str, int] = {}
    for received in server.app.received:
        sid = received.signal.signal_id or ""
        if sid not in position:
            continue
        instrument = received.signal.instrument
        if position[sid] < latest.get(instrument, -1):
            count += 1
        latest[instrument] = max(latest.get(instrument, -1), position[sid])
    return count


async def _dead_lettered(redis: aioredis.Redis, dlq: str) -> set[str]:
    """Signal ids in the dead-letter stream (the entry keeps its original ``signal`` field)."""
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], await redis.xrange(dlq))
    return {decode_signal(fields[b"signal"]).signal_id or "" for _, fields in entries}


@pytest.mark.parametrize("fencing", [True, False], ids=["fencing-on", "fencing-off"])
async def test_a_post_delayed_past_the_takeover_is_refused_only_by_a_fencing_server(
    server: Server, redis: aioredis.Redis, redis_url: str, fencing: bool
) -> None:
    """Fencing on: 0 inversions, 0 signals stored and dead-lettered; off: both happen."""
    shard = f"t:{uuid.uuid4().hex[:8]}:{{0}}"
    run = uuid.uuid4().hex[:6]
    server.app.fences = Fences(enabled=fencing)
    published: dict[str, list[str]] = {name: [] for name in INSTRUMENTS}
    before_cut: set[str] = set()
    r1_token: list[int] = []

    def fault(headers: Mapping[str, str]) -> int | None:
        # The new owner's re-sends of what r1 had (or might have had) fail until they expire,
        # so only r1's delayed copies can store them: the hole the fence has to close.
        token = _lease_token(headers)
        if r1_token and token > r1_token[0] and headers.get("x-idempotency-key") in before_cut:
            return 503
        return None

    server.app.fault = fault
    extra = {"BRIDGE_SIGNAL_MAX_AGE_SECONDS": "1"}
    async with fault_proxy(redis_url) as cut, delay_proxy(server.url) as wire:
        r1_config = _config(wire.url(), cut.url, shard, "r1", **extra)
        r2_config = _config(server.url, redis_url, shard, "r2", **extra)
        async with _replica(cut.url, r1_config) as r1:
            await eventually(lambda: shard in r1.owned, timeout_s=5, what="r1 owns the shard")
            r1_token.append(r1.owned[shard].lease.token)
            started = time.monotonic()
            i = 0

            async def publish_next() -> None:
                nonlocal i
                instrument = INSTRUMENTS[i % len(INSTRUMENTS)]
                signal_id = f"{run}-{i}"
                await publish(
                    redis,
                    make_signal(i, instrument=instrument, signal_id=signal_id),
                    stream=shard,
                )
                published[instrument].append(signal_id)
                i += 1

            while time.monotonic() - started < 0.4:
                await publish_next()
                await asyncio.sleep(0.04)
            wire.delay_s = 2.5  # r1's POSTs from now on land 2.5 s late
            for _ in range(len(INSTRUMENTS) * 2):
                await publish_next()
                await asyncio.sleep(0.04)
            before_cut.update(
                idempotency_key("", "", sid) for ids in published.values() for sid in ids
            )
            cut.blackhole()  # r1 is cut from Redis: r2 takes the shard once the lease expires
            cut_at = time.monotonic()
            async with _replica(redis_url, r2_config) as r2:
                while time.monotonic() - cut_at < 3.2:  # past r1's late POSTs (bounded)
                    await publish_next()
                    await asyncio.sleep(0.04)
                assert shard in r2.owned
                after_cut = {
                    sid
                    for ids in published.values()
                    for sid in ids
                    if idempotency_key("", "", sid) not in before_cut
                }
                await eventually(
                    lambda: after_cut <= {r.signal.signal_id for r in server.app.received},
                    timeout_s=10,
                    what="every signal published after the cut stored",
                )
                cut.heal()
                await asyncio.sleep(0.5)
    stored = {r.signal.signal_id for r in server.app.received}
    both = stored & await _dead_lettered(redis, f"{shard}:dlq")
    inversions = _inversions(server, published)
    assert wire.delayed_chunks > 0
    if fencing:
        assert server.app.refusals.get("stale lease", 0) >= 1  # r1's late copies, refused
        assert inversions == 0
        assert both == set()
    else:
        # The residual risk without a fencing server: r1's late copies land after r2 moved on.
        assert inversions > 0
        assert both


async def test_a_fenced_replica_that_wakes_after_the_heal_writes_no_ack_and_no_dead_letter(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """r1's XACK and dead letter, stuck while it was cut off, are no-ops once r2 owns the shard."""
    shard = f"t:{uuid.uuid4().hex[:8]}:{{0}}"
    run = uuid.uuid4().hex[:6]
    accepted, rejected = f"{run}-a", f"{run}-r"
    keys = {idempotency_key("", "", accepted), idempotency_key("", "", rejected)}
    r1_token: list[int] = []

    def fault(headers: Mapping[str, str]) -> int | None:
        token = _lease_token(headers)
        key = headers.get("x-idempotency-key")
        if r1_token and token > r1_token[0] and key in keys:
            return 503  # the new owner's re-sends keep both entries pending on it
        if key == idempotency_key("", "", rejected):
            return 422  # r1 must dead-letter this one
        return None

    server.app.fault = fault
    async with fault_proxy(redis_url) as cut, delay_proxy(server.url) as wire:
        r1_config = _config(wire.url(), cut.url, shard, "r1", BRIDGE_SIGNAL_MAX_AGE_SECONDS="0")
        r2_config = _config(server.url, redis_url, shard, "r2", BRIDGE_SIGNAL_MAX_AGE_SECONDS="0")
        async with _replica(cut.url, r1_config) as r1:
            await eventually(lambda: shard in r1.owned, timeout_s=5, what="r1 owns the shard")
            r1_token.append(r1.owned[shard].lease.token)
            wire.delay_s = 0.25  # the answers come back after r1 is cut from Redis
            for n, signal_id in enumerate((accepted, rejected)):
                item = make_signal(n, instrument=f"I{n}", signal_id=signal_id)
                await publish(redis, item, stream=shard)
            await eventually(lambda: wire.delayed_chunks >= 2, timeout_s=5, what="both posted")
            cut.blackhole()
            await eventually(
                lambda: server.app.requests_total >= 2, timeout_s=5, what="r1's posts answered"
            )
            async with _replica(redis_url, r2_config) as r2:
                await eventually(lambda: shard in r2.owned, timeout_s=5, what="r2 takes over")
                await eventually(
                    lambda: server.app.refusals.get("fault injected", 0) >= 4,
                    timeout_s=5,
                    what="r2 re-sending both",
                )
                cut.heal()  # r1's stuck XACK and dead letter go out now, on new connections
                await eventually(lambda: r1.owned == {}, timeout_s=10, what="r1 let go")
                await asyncio.sleep(0.3)
                pending = await redis.xpending_range(shard, "g", "-", "+", 10)
                assert len(pending) == 2  # neither acked by r1
                assert await redis.xlen(f"{shard}:dlq") == 0  # no dead letter from r1
    assert [r.signal.signal_id for r in server.app.received] == [accepted]


async def test_entries_a_dead_owners_late_read_took_are_delivered_in_order_within_a_renewal(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """A late XREADGROUP by the old consumer after the takeover: the owner delivers them soon."""
    shard = f"t:{uuid.uuid4().hex[:8]}:{{0}}"
    run = uuid.uuid4().hex[:6]
    config = _config(server.url, redis_url, shard, "r2", BRIDGE_CLAIM_IDLE_MS="60000")
    ids = [f"{run}-{i}" for i in range(5)]
    async with _replica(redis_url, config) as r2:
        await eventually(lambda: shard in r2.owned, timeout_s=5, what="r2 owns the shard")
        warm = make_signal(9, instrument="EURUSD", signal_id=f"{run}-warm")
        await publish(redis, warm, stream=shard)
        await eventually(lambda: len(server.app.received) == 1, timeout_s=5, what="warmed up")
        # One transaction: the entries and the dead owner's read, so r2's blocked read gets none.
        async with redis.pipeline(transaction=True) as tx:
            for i, signal_id in enumerate(ids):
                item = make_signal(i, instrument="XAUUSD", signal_id=signal_id)
                tx.xadd(shard, {"signal": encode_canonical(item)})
            tx.xreadgroup("g", "r1", {shard: ">"}, count=len(ids))
            replies = await tx.execute()
        assert len(replies[-1][0][1]) == len(ids)  # pending on the dead consumer r1
        handed = time.monotonic()
        await eventually(lambda: len(server.app.received) == 6, timeout_s=5, what="all 5")
        took = time.monotonic() - handed
    assert [r.signal.signal_id for r in server.app.received[1:]] == ids
    assert took < 1.0, f"took {took:.2f}s with a 100 ms renew period"


async def test_after_redis_lost_the_fencing_counter_the_next_owner_posts_again(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """The server holds token 50 (Redis restarted empty): one refusal, then token 51 delivers."""
    shard = f"t:{uuid.uuid4().hex[:8]}:{{0}}"
    server.app.fences.highest[("test-producer", shard)] = 50
    run = uuid.uuid4().hex[:6]
    await publish(redis, make_signal(0, signal_id=f"{run}-0"), stream=shard)
    async with _replica(redis_url, _config(server.url, redis_url, shard, "r1")) as r1:
        await eventually(lambda: len(server.app.received) == 1, timeout_s=10, what="delivered")
        assert r1.owned[shard].lease.token == 51
    assert server.app.refusals["stale lease"] == 1
