"""Strict ordering: assignment and fencing as pure logic, leases and takeover against real Redis.

The pure parts (who gets which shard, when a holder must stop posting) run on an injected clock.
The lease tests use the private redis-server; the coordinator tests run real Workers against the
reference ingest server on loopback and count what the server stored, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Final, cast

import pytest
import redis.asyncio as aioredis
from redis.crc import key_slot

from bridge.app.health import HealthServer
from bridge.app.runner import ShardWorkers, coordinator_settings
from bridge.config.loader import BridgeConfig
from bridge.core.signal import Signal
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.errors import ConfigError, StreamError
from bridge.ownership.assign import Lease, assign, fence_margin_s
from bridge.ownership.coordinator import Coordinator, _Owned
from bridge.ownership.leases import LeaseStore, hash_tagged, members_key, take_pending
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from bridge.streams.settings import StreamConfig
from tests.fixtures_ingest import Server
from tests.support import FAST, bridge_config, eventually, make_signal

SHARDS8: Final = [f"signals:{{{i}}}" for i in range(8)]
# Short lease timings keep the Redis tests fast: renew every 100 ms, TTL 600 ms.
FAST_LEASES: Final = {
    "BRIDGE_LEASE_TTL_MS": "600",
    "BRIDGE_LEASE_RENEW_MS": "100",
    "BRIDGE_HEARTBEAT_TTL_MS": "600",
}


def _owners(assignment: dict[str, list[str]]) -> dict[str, str]:
    return {shard: member for member, shards in assignment.items() for shard in shards}


def _lease_store(redis: aioredis.Redis, stream_name: str) -> LeaseStore:
    """The lease store of group ``g`` on ``stream_name``, as the tests below share it."""
    return LeaseStore(redis, group="g", members_key=f"{{{stream_name}}}:m")


def _consumer(redis: aioredis.Redis, stream_name: str, name: str) -> SignalStream:
    """Consumer ``name`` of group ``g`` on ``stream_name`` (dead letters to ``d``)."""
    return SignalStream(redis, stream=stream_name, group="g", consumer=name, dlq_stream="d")


# --- assignment (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize("members", [1, 2, 3, 4, 5, 8, 11])
@pytest.mark.parametrize("count", [1, 3, 8, 16])
def test_assign_gives_every_shard_to_one_member_and_balances(members: int, count: int) -> None:
    """Each shard has exactly one owner; each member gets floor or ceil of shards / members."""
    shards = [f"s:{{{i}}}" for i in range(count)]
    names = [f"replica-{i}" for i in range(members)]
    result = assign(shards, names)
    assert sorted(s for owned in result.values() for s in owned) == sorted(shards)
    sizes = [len(owned) for owned in result.values()]
    assert max(sizes) - min(sizes) <= 1
    assert set(result) == set(names)


def test_assign_is_the_same_in_every_replica_whatever_the_order_it_sees() -> None:
    """Replicas list the members in any order (and with repeats): they compute the same map."""
    names = ["c", "a", "b"]
    assert assign(SHARDS8, names) == assign(SHARDS8, ["b", "c", "a", "a"])
    assert [s for owned in assign(SHARDS8, names).values() for s in owned] != []


def test_assign_with_no_live_member_assigns_nothing() -> None:
    """An empty member list (heartbeat failed) gives an empty map, not an error."""
    assert assign(SHARDS8, []) == {}


def test_a_join_or_a_leave_moves_few_shards() -> None:
    """Rebalancing is sticky: a third replica joining 8 shards moves at most half of them."""
    before = _owners(assign(SHARDS8, ["r0", "r1"]))
    after = _owners(assign(SHARDS8, ["r0", "r1", "r2"]))
    moved = [s for s in SHARDS8 if before[s] != after[s]]
    assert 2 <= len(moved) <= 4
    assert sum(1 for s in SHARDS8 if after[s] == "r2") >= 2
    # A leave: the survivors keep what they had and share the leaver's shards.
    back = _owners(assign(SHARDS8, ["r0", "r1"]))
    kept = [s for s in SHARDS8 if after[s] != "r2" and back[s] == after[s]]
    assert len(kept) >= 4


# --- fencing (pure, injected clock) --------------------------------------------------------


def test_a_holder_stops_posting_a_quarter_ttl_before_its_lease_can_expire() -> None:
    """The fence deadline is the last renewal's start + TTL - TTL/4, on the local clock."""
    lease = Lease("s", 7, "7 r1 abc", renewed_at=100.0, ttl_s=10.0)
    assert fence_margin_s(10_000) == 2.5
    assert lease.deadline == 107.5
    assert lease.valid(107.49)
    assert not lease.valid(107.5)
    lease.renewed_at = 105.0  # a renewal that started at 105 succeeded
    assert lease.valid(112.0)
    lease.lost = True  # Redis said someone else holds it now
    assert not lease.valid(105.0)


def test_a_paused_process_wakes_up_fenced() -> None:
    """SIGSTOP past the lease: after the wake-up the clock says stop before any renewal."""
    now = [0.0]
    lease = Lease("s", 1, "1 r1 abc", renewed_at=now[0], ttl_s=1.0)

    def fence() -> bool:
        return lease.valid(now[0])  # the same callable a Worker gets

    assert fence()
    now[0] += 3.0  # the process was stopped for 3 s
    assert not fence()


class _FakeLeases:
    """A LeaseStore stand-in whose renewals fail like an unreachable Redis."""

    def __init__(self) -> None:
        self.calls = 0

    async def renew(self, shard: str, value: str, ttl_ms: int) -> bool:
        del shard, value, ttl_ms
        self.calls += 1
        raise StreamError("redis unavailable during lease renew script: ConnectionError")


class _FakeWorker:
    """Just what the coordinator calls on a worker."""

    def __init__(self) -> None:
        self.stops = 0

    def stop(self) -> None:
        self.stops += 1


async def test_a_holder_that_cannot_renew_fences_itself_at_the_deadline_not_before() -> None:
    """Renewals failing: the lease stays usable until its fence deadline, then is dropped."""
    now = [50.0]
    config = StreamConfig(consumer="r1", streams=["s:{0}"], lease_ttl_ms=1000, lease_renew_ms=200)
    leases = _FakeLeases()
    coordinator = Coordinator(
        cast("LeaseStore", leases),
        [],
        coordinator_settings(config),
        lambda s, f: cast("Worker", None),
        clock=lambda: now[0],
    )
    lease = Lease("s:{0}", 3, "3 r1 x", renewed_at=50.0, ttl_s=1.0)
    worker = _FakeWorker()
    task: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(0))
    coordinator.owned["s:{0}"] = _Owned(lease, cast("Worker", worker), task, acquired_at=50.0)
    now[0] = 50.5
    await coordinator._renew_all()
    assert leases.calls == 1
    assert lease.valid(now[0])
    assert worker.stops == 0
    now[0] = 50.76  # past 50 + 1.0 - 0.25
    await coordinator._renew_all()
    assert lease.lost
    assert worker.stops == 1
    await task


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"BRIDGE_ORDERING": "sometimes"}, "BRIDGE_ORDERING"),
        ({"BRIDGE_LEASE_TTL_MS": "1000", "BRIDGE_LEASE_RENEW_MS": "500"}, "BRIDGE_LEASE_RENEW_MS"),
        ({"BRIDGE_LEASE_TTL_MS": "100", "BRIDGE_LEASE_RENEW_MS": "10"}, "BRIDGE_LEASE_TTL_MS"),
        ({"BRIDGE_LEASE_RENEW_MS": "0"}, "BRIDGE_LEASE_RENEW_MS"),
        ({"BRIDGE_HEARTBEAT_TTL_MS": "3000"}, "BRIDGE_HEARTBEAT_TTL_MS"),
    ],
)
def test_lease_settings_are_validated(env: dict[str, str], variable: str) -> None:
    """Unknown modes and renewals not well inside the TTL stop the start, naming the variable."""
    with pytest.raises(ConfigError) as info:
        bridge_config("http://127.0.0.1:1", "redis://127.0.0.1:1/0", "s", **env)
    assert info.value.variable == variable


def test_strict_is_the_default_with_safe_lease_timings() -> None:
    """A trading desk gets strict order without setting anything; renewals at a fifth of the TTL."""
    cfg = StreamConfig(consumer="c")
    assert cfg.ordering == "strict"
    assert cfg.lease_renew_ms * 5 == cfg.lease_ttl_ms
    parallel = bridge_config("http://127.0.0.1:1", "redis://x:1/0", "s", BRIDGE_ORDERING="parallel")
    assert parallel.stream.ordering == "parallel"


def test_lease_and_member_keys_carry_the_shard_hash_tag() -> None:
    """On Redis Cluster a shard's lease and fencing counter hash to the shard's slot."""
    store = LeaseStore.__new__(LeaseStore)
    store.group = "g"
    for shard in ("signals:{3}", "plain"):
        assert key_slot(store.lease_key(shard).encode()) == key_slot(hash_tagged(shard).encode())
        assert key_slot(store.fence_key(shard).encode()) == key_slot(
            store.lease_key(shard).encode()
        )
    assert key_slot(store.lease_key("signals:{3}").encode()) == key_slot(b"signals:{3}")
    assert hash_tagged("plain") == "{plain}"
    cfg = StreamConfig(consumer="c", streams=["signals:{0}", "signals:{1}"], group="g")
    assert members_key(cfg.stream_names(), cfg.group) == "signals:{0}:replicas:g"


# --- leases against a real Redis -----------------------------------------------------------


@pytest.mark.redis
async def test_a_lease_has_one_holder_and_a_new_token_per_acquisition(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """SET NX semantics; only the holder renews or releases; each acquisition INCRs the token."""
    store = _lease_store(redis, stream_name)
    token, value = await store.acquire(stream_name, "r1 a", 5000)
    assert token >= 1
    assert value == f"{token} r1 a"
    assert await store.acquire(stream_name, "r2 b", 5000) == (0, value)
    assert not await store.renew(stream_name, f"{token} r2 b", 5000)
    assert not await store.release(stream_name, f"{token} r2 b")
    assert await store.holder(stream_name) == value
    assert await store.renew(stream_name, value, 5000)
    assert await store.release(stream_name, value)
    assert await store.holder(stream_name) is None
    token2, value2 = await store.acquire(stream_name, "r2 b", 5000)
    assert token2 == token + 1
    assert not await store.renew(stream_name, value, 5000)  # the old holder cannot renew
    assert await store.holder(stream_name) == value2


@pytest.mark.redis
async def test_an_unrenewed_lease_expires_and_another_replica_takes_it(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """The TTL frees a lease whose holder died; the next holder gets a higher token."""
    store = _lease_store(redis, stream_name)
    token, value = await store.acquire(stream_name, "dead x", 150)
    assert await store.holder(stream_name) == value

    async def free() -> bool:
        return await store.holder(stream_name) is None

    await eventually(free, timeout_s=2.0, what="lease expiry")
    token2, _ = await store.acquire(stream_name, "alive y", 5000)
    assert token2 == token + 1
    assert not await store.renew(stream_name, value, 5000)


@pytest.mark.redis
async def test_heartbeats_list_live_replicas_and_forget_silent_ones(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """Members are live while they heartbeat; a silent one drops out; a leave is instant."""
    store = LeaseStore(redis, group="g", members_key=f"{{{stream_name}}}:replicas:g")
    assert await store.heartbeat("r2", 150) == ["r2"]
    assert await store.heartbeat("r1", 5000) == ["r1", "r2"]
    await asyncio.sleep(0.25)
    assert await store.heartbeat("r3", 5000) == ["r1", "r3"]
    await store.leave("r1")
    assert await store.heartbeat("r3", 5000) == ["r3"]


@pytest.mark.redis
async def test_take_pending_moves_every_pending_entry_without_counting_a_delivery(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """A new owner gets the old owner's pending entries, delivery counts untouched."""
    old = _consumer(redis, stream_name, "old")
    new = _consumer(redis, stream_name, "new")
    store = _lease_store(redis, stream_name)
    await old.ensure_group("0")
    for i in range(7):
        await publish(redis, make_signal(i), stream=stream_name)
    assert len(await old.read(7, None)) == 7
    _, value = await store.acquire(stream_name, "new x", 5000)
    moved = await take_pending(new, store.lease_key(stream_name), value, count=3)  # 3 rounds
    assert moved == (7, [])
    pending = await redis.xpending_range(stream_name, "g", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"new"}
    assert {p["times_delivered"] for p in pending} == {1}


@pytest.mark.redis
async def test_take_pending_moves_nothing_without_the_lease(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """A process that lost the lease mid-takeover (paused) cannot take the new owner's entries."""
    owner = _consumer(redis, stream_name, "owner")
    zombie = _consumer(redis, stream_name, "zombie")
    store = _lease_store(redis, stream_name)
    await owner.ensure_group("0")
    for i in range(3):
        await publish(redis, make_signal(i), stream=stream_name)
    assert len(await owner.read(3, None)) == 3
    _, zombie_value = await store.acquire(stream_name, "zombie z", 5000)
    assert await store.release(stream_name, zombie_value)  # as if it expired while paused
    await store.acquire(stream_name, "owner o", 5000)
    assert await take_pending(zombie, store.lease_key(stream_name), zombie_value) is None
    pending = await redis.xpending_range(stream_name, "g", "-", "+", 10)
    assert {p["consumer"] for p in pending} == {b"owner"}


# --- the coordinator: real Workers, real Redis, the reference server ------------------------


def _strict_config(
    server: Server, redis_url: str, shards: list[str], consumer: str
) -> BridgeConfig:
    return bridge_config(
        server.url,
        redis_url,
        shards[0],
        BRIDGE_STREAMS=",".join(shards),
        BRIDGE_CONSUMER=consumer,
        BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
        BRIDGE_SHUTDOWN_GRACE_SECONDS="2",
        **FAST_LEASES,
    )


@contextlib.asynccontextmanager
async def _coordinating(
    redis: aioredis.Redis,
    config: BridgeConfig,
    *,
    clock: Callable[[], float] = time.monotonic,
    listener: ShardWorkers | None = None,
) -> AsyncIterator[Coordinator]:
    """Run a Coordinator (one replica in strict mode) for the block; stop it, bounded."""
    cfg = config.stream
    streams = [
        SignalStream(redis, stream=n, group=cfg.group, consumer=cfg.consumer, dlq_stream=f"{n}:dlq")
        for n in cfg.stream_names()
    ]
    async with HmacClient(config.outbound) as client:

        def make_worker(stream: SignalStream, fence: Callable[[], bool] | None) -> Worker:
            return Worker(stream, client, cfg, backoff=FAST, fence=fence)

        store = LeaseStore(
            redis, group=cfg.group, members_key=members_key(cfg.stream_names(), cfg.group)
        )
        coordinator = Coordinator(
            store, streams, coordinator_settings(cfg), make_worker, listener=listener, clock=clock
        )
        task = asyncio.create_task(coordinator.run())
        try:
            yield coordinator
        finally:
            coordinator.stop()
            await asyncio.wait_for(task, 20)


def _shards(prefix: str, count: int) -> list[str]:
    return [f"{prefix}:{{{i}}}" for i in range(count)]


def _order_ok(server: Server, instruments: dict[str, list[str]]) -> bool:
    """Per instrument, the server stored these signal ids in publish order (a prefix of them)."""
    for name, ids in instruments.items():
        wanted = set(ids)
        got = [
            r.signal.signal_id
            for r in server.app.received
            if r.signal.instrument == name and r.signal.signal_id in wanted
        ]
        if got != ids[: len(got)]:
            return False
    return True


async def _publish_run(
    redis: aioredis.Redis, shards: list[str], count: int, run: str
) -> tuple[set[str], dict[str, list[str]]]:
    """Publish ``count`` signals over 10 instruments to the shards; (keys, ids by instrument)."""
    keys: set[str] = set()
    by_instrument: dict[str, list[str]] = {}
    for i in range(count):
        item: Signal = make_signal(i, instrument=f"SYM{i % 10}", signal_id=f"{run}-{i}")
        await publish(redis, item, stream=shards)
        keys.add(idempotency_key("", "", item.signal_id))
        by_instrument.setdefault(item.instrument, []).append(item.signal_id or "")
    return keys, by_instrument


@pytest.mark.redis
async def test_two_replicas_split_the_shards_and_a_leaver_hands_its_shards_over(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """Two coordinators hold 2 + 2 shards; one stops: the other takes all 4 and keeps order."""
    shards = _shards(f"t:{uuid.uuid4().hex[:8]}", 4)
    run = uuid.uuid4().hex[:6]
    keys, order = await _publish_run(redis, shards, 40, run)
    async with _coordinating(redis, _strict_config(server, redis_url, shards, "ra")) as ra:
        async with _coordinating(redis, _strict_config(server, redis_url, shards, "rb")) as rb:
            await eventually(
                lambda: len(ra.owned) == 2 and len(rb.owned) == 2, timeout_s=5, what="2 + 2"
            )
            assert set(ra.owned).isdisjoint(rb.owned)
            await eventually(lambda: server.app.keys() == keys, timeout_s=10, what="first 40")
            tokens_before = {s: o.lease.token for s, o in rb.owned.items()}
        # rb stopped: it drained, released its leases and left; ra takes its shards at once.
        handed = time.monotonic()
        await eventually(lambda: len(ra.owned) == 4, timeout_s=3, what="ra owns all 4")
        took = time.monotonic() - handed
        assert took < 1.5, f"hand-over took {took:.2f}s"
        for shard, token in tokens_before.items():
            assert ra.owned[shard].lease.token > token
        more, order2 = await _publish_run(redis, shards, 40, run + "b")
        await eventually(lambda: server.app.keys() == keys | more, timeout_s=10, what="80 stored")
    assert len(server.app.received) == 80  # none accepted twice
    assert _order_ok(server, order)
    assert _order_ok(server, order2)


@pytest.mark.redis
async def test_a_new_owner_waits_for_the_old_lease_then_delivers_its_pending_first_in_order(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """Entries pending on a dead owner go first, in id order, and only after its lease expired."""
    shards = _shards(f"t:{uuid.uuid4().hex[:8]}", 1)
    config = _strict_config(server, redis_url, shards, "heir")
    dead = SignalStream(redis, stream=shards[0], group="g", consumer="dead", dlq_stream="d")
    await dead.ensure_group("0")
    run = uuid.uuid4().hex[:6]
    ids = [f"{run}-{i}" for i in range(10)]
    for i, signal_id in enumerate(ids[:5]):
        await publish(
            redis, make_signal(i, instrument="XAUUSD", signal_id=signal_id), stream=shards
        )
    assert len(await dead.read(5, None)) == 5  # the dead owner had read these, never acked
    store = LeaseStore(redis, group="g", members_key=members_key(config.stream.stream_names(), "g"))
    dead_token, _ = await store.acquire(shards[0], "dead 0", 700)
    expires = time.time() + 0.7
    for i, signal_id in enumerate(ids[5:], start=5):
        await publish(
            redis, make_signal(i, instrument="XAUUSD", signal_id=signal_id), stream=shards
        )
    async with _coordinating(redis, config) as heir:
        await eventually(lambda: len(server.app.received) == 10, timeout_s=10, what="10 stored")
        assert heir.owned[shards[0]].lease.token == dead_token + 1
    assert [r.signal.signal_id for r in server.app.received] == ids
    assert server.app.received[0].received_at >= expires - 0.05  # never while the lease held


@pytest.mark.redis
async def test_a_holder_whose_lease_is_taken_stops_posting_at_once(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """Another holder's value in the lease: the replica fences, posts nothing, re-acquires later."""
    shards = _shards(f"t:{uuid.uuid4().hex[:8]}", 1)
    config = _strict_config(server, redis_url, shards, "r1")
    store = LeaseStore(redis, group="g", members_key=members_key(config.stream.stream_names(), "g"))
    async with _coordinating(redis, config) as r1:
        await eventually(lambda: shards[0] in r1.owned, timeout_s=5, what="r1 owns the shard")
        first = r1.owned[shards[0]]
        await redis.set(store.lease_key(shards[0]), "999 intruder x", px=800)
        await eventually(lambda: first.lease.lost, timeout_s=2, what="lease lost")
        await eventually(first.task.done, timeout_s=5, what="worker stopped")
        run = uuid.uuid4().hex[:6]
        keys, _ = await _publish_run(redis, shards, 5, run)
        await asyncio.sleep(0.3)
        assert server.app.received == []  # fenced: nothing posted while another holds it
        await eventually(lambda: server.app.keys() == keys, timeout_s=5, what="after expiry")
        assert r1.owned[shards[0]].lease.token > first.lease.token


@pytest.mark.redis
async def test_a_fenced_worker_neither_posts_nor_reads(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Fence closed: the worker posts nothing, reads nothing new, and leaves its entries pending."""
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_SIGNAL_MAX_AGE_SECONDS="0")
    stream = _consumer(redis, stream_name, "c1")
    await stream.ensure_group("0")
    for i in range(6):
        await publish(redis, make_signal(i), stream=stream_name)
    assert len(await stream.read(6, None)) == 6  # pending on c1 from an earlier run
    for i in range(6, 9):
        await publish(redis, make_signal(i), stream=stream_name)
    async with HmacClient(config.outbound) as client:
        worker = Worker(stream, client, config.stream, backoff=FAST, fence=lambda: False)
        await asyncio.wait_for(worker.run(), 10)  # it stops by itself
    assert worker.fenced
    assert server.app.requests_total == 0
    summary = await redis.xpending(stream_name, "g")
    assert summary["pending"] == 6  # still pending, for the shard's next owner
    groups = await redis.xinfo_groups(stream_name)
    assert groups[0]["lag"] == 3  # the new entries were not read


@pytest.mark.redis
async def test_readyz_follows_the_shards_a_replica_holds(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """Strict mode's probes: ready with no shard (a standby) and with shards; not while stopping."""
    shards = _shards(f"t:{uuid.uuid4().hex[:8]}", 2)
    config = _strict_config(server, redis_url, shards, "r1")
    pinger = SignalStream(redis, stream=shards[0], group="g", consumer="r1", dlq_stream="d")
    standby = HealthServer(list, host="127.0.0.1", port=0, ping=pinger.ping)
    ready, checks = await standby.readiness()
    assert ready, checks
    held = ShardWorkers()
    async with _coordinating(redis, config, listener=held) as r1:
        health = HealthServer(held.current, host="127.0.0.1", port=0, ping=pinger.ping)
        await eventually(lambda: len(held.current()) == 2, timeout_s=5, what="two shard workers")
        await eventually(lambda: all(w.group_ready for w in held.current()), timeout_s=5, what="up")
        ready, checks = await health.readiness()
        assert ready, checks
        r1.stop()
        ready, checks = await health.readiness()
        assert not ready
        assert checks["stopping"] is True


@pytest.mark.redis
async def test_a_replica_adopts_its_own_lease_after_dropping_it_on_a_redis_hiccup(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """Dropped locally but still ours in Redis: the lease is taken back with the same token."""
    shards = _shards(f"t:{uuid.uuid4().hex[:8]}", 1)
    config = _strict_config(server, redis_url, shards, "r1")
    async with _coordinating(redis, config) as r1:
        await eventually(lambda: shards[0] in r1.owned, timeout_s=5, what="r1 owns the shard")
        first = r1.owned[shards[0]]
        r1._lose(first, "a renewal timed out")  # as after a Redis hiccup past the fence
        await eventually(
            lambda: shards[0] in r1.owned and r1.owned[shards[0]] is not first,
            timeout_s=5,
            what="the shard held again",
        )
        assert r1.owned[shards[0]].lease.token == first.lease.token
        keys, _ = await _publish_run(redis, shards, 5, uuid.uuid4().hex[:6])
        await eventually(lambda: server.app.keys() == keys, timeout_s=5, what="delivered")
