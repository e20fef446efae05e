"""Scale-out: sharded streams (BRIDGE_STREAMS) on a real three-node Redis Cluster.

``bridge.publish`` picks a shard (``signals:{0}`` ... ``signals:{7}``) by instrument, so one
instrument's signals stay in one stream; the ``{hash tag}`` keeps each shard and its dead-letter
stream in one cluster slot, so the dead letter + XACK MULTI is legal. The cluster runs as three
``redis-server`` children on 127.0.0.1 for the module; the replicas are ``signal-bridge run``
children with ``BRIDGE_REDIS_CLUSTER=true``; the ingest server runs in this process.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

import pytest
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from bridge.config.loader import load_config
from bridge.core.signal import Signal
from bridge.delivery.jobs import idempotency_key
from bridge.devkit.ingest import IngestApp, Receive, Scope, Send, serve_in_thread
from bridge.ownership.leases import LeaseStore
from bridge.streams.connection import connect
from bridge.streams.entries import DLQ_PREFIX
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish, publish_raw, shard_for
from bridge.streams.receipts import receipts, receipts_stream
from tests.cluster_support import RedisProcess, redis_cluster
from tests.procs import Replica, Replicas
from tests.support import KEY_ID, SECRET, bridge_env, eventually, make_signal, running

SHARD_COUNT: Final = 8
# Fresh clients in the concurrent-first-use test (without initialize() ~40% of them fail).
ROUNDS: Final = 12
GROUP: Final = "g"  # the group bridge_env configures
INSTRUMENTS: Final = tuple(f"SYM{i:02d}" for i in range(16))
PER_INSTRUMENT: Final = 6
EXIT_TIMEOUT_S: Final = 15.0
# In the order test replica-1's first deliveries are held this long (a slow replica).
STALL_S: Final = 1.0
# Strict mode with short leases, so the second replica gets its half of the shards quickly.
STRICT: Final = {
    "BRIDGE_ORDERING": "strict",
    "BRIDGE_LEASE_TTL_MS": "2000",
    "BRIDGE_LEASE_RENEW_MS": "400",
    "BRIDGE_HEARTBEAT_TTL_MS": "2000",
}


def _shards(prefix: str) -> list[str]:
    return [f"{prefix}:{{{i}}}" for i in range(SHARD_COUNT)]


async def _xrange(client: RedisCluster, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """XRANGE of a whole stream as (id, fields) bytes pairs."""
    return cast("list[tuple[bytes, dict[bytes, bytes]]]", await client.xrange(key))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[RedisProcess]]:
    """A three-master Redis Cluster on loopback, in state ok, for this module."""
    with redis_cluster(tmp_path_factory.mktemp("cluster"), nodes=3) as nodes:
        yield nodes


@pytest.fixture
def cluster_url(cluster: list[RedisProcess]) -> str:
    """A URL of one node; the cluster client discovers the others."""
    return f"redis://127.0.0.1:{cluster[0].port}"


@pytest.fixture
async def cluster_client(cluster_url: str) -> AsyncIterator[RedisCluster]:
    """redis-py's asyncio cluster client, opened by ``streams.connection.connect(cluster=True)``."""
    async with connect(cluster_url, cluster=True) as client:
        cluster_client = cast("object", client)
        assert isinstance(cluster_client, RedisCluster), "connect(cluster=True) is a RedisCluster"
        await cluster_client.initialize()
        yield cluster_client


def test_each_shard_and_its_dead_letter_stream_share_one_slot() -> None:
    """With BRIDGE_STREAMS each shard's DLQ is ``<shard>:dlq``: same hash tag, same slot."""
    shards = _shards("signals")
    config = load_config(
        env={"BRIDGE_STREAMS": ",".join(shards), "BRIDGE_REDIS_CLUSTER": "true"},
        delivery=False,
    ).stream
    assert config.cluster is True
    assert config.stream_names() == shards
    for shard in shards:
        assert config.dlq_for(shard) == f"{shard}:dlq"
        assert key_slot(config.dlq_for(shard).encode()) == key_slot(shard.encode())
    assert len({key_slot(s.encode()) for s in shards}) == SHARD_COUNT


@pytest.mark.redis
async def test_publish_keeps_each_instrument_on_one_shard(
    cluster_client: RedisCluster,
) -> None:
    """Every instrument's signals land, in publish order, on the one shard shard_for names."""
    shards = _shards(f"route-{uuid.uuid4().hex[:8]}")
    nodes = {getattr(cluster_client.get_node_from_key(s), "port", None) for s in shards}
    assert len(nodes) == 3, "the eight shards spread over all three masters"
    redis: aioredis.Redis = cluster_client  # type: ignore[assignment]
    published: dict[str, list[str]] = defaultdict(list)
    for n in range(40):
        item = make_signal(n, instrument=INSTRUMENTS[n % 10], signal_id=f"route-{n}")
        entry_id = await publish(redis, item, stream=shards)
        published[item.instrument].append(entry_id)
    seen: dict[str, set[str]] = defaultdict(set)
    for shard in shards:
        entries = await _xrange(cluster_client, shard)
        order: dict[str, list[str]] = defaultdict(list)
        for raw_id, fields in entries:
            instrument = json.loads(fields[b"signal"])["instrument"]
            seen[instrument].add(shard)
            order[instrument].append(raw_id.decode())
        for instrument, ids in order.items():
            assert ids == published[instrument], f"{instrument} out of order on {shard}"
    assert dict(seen) == {i: {shard_for(i, shards)} for i in published}, "one shard per instrument"
    for shard in shards:
        await cluster_client.delete(shard)


@pytest.mark.redis
async def test_pending_fetch_and_claim_work_on_a_cluster(cluster_client: RedisCluster) -> None:
    """The lanes' and the claim scan's commands (XPENDING, pipelined XRANGE, XCLAIM) on a shard."""
    [shard] = _shards(f"claim-{uuid.uuid4().hex[:8]}")[:1]
    redis = cast("aioredis.Redis", cluster_client)
    ids = [await publish_raw(redis, {"signal": f"s{i}"}, stream=shard) for i in range(3)]
    await cluster_client.xgroup_create(shard, GROUP, id="0")
    await cluster_client.xreadgroup(GROUP, "dead", {shard: ">"}, count=3)
    await cluster_client.xdel(shard, ids[1])
    stream = SignalStream(
        redis, stream=shard, group=GROUP, consumer="c1", dlq_stream=f"{shard}:dlq"
    )
    idle = await stream.pending("-", "+", 10, own=False, min_idle_ms=0)
    assert [(p.id, p.consumer) for p in idle] == [(i, "dead") for i in ids]
    claimed, gone = await stream.claim(idle, 0)
    assert ([e.id for e in claimed], gone) == ([ids[0], ids[2]], [ids[1]])
    assert [e.deliveries for e in claimed] == [2, 2]
    mine = await stream.pending("-", "+", 10)
    fetched, gone = await stream.fetch(mine)
    assert ([e.id for e in fetched], gone) == ([ids[0], ids[2]], [])
    assert fetched[1].field("signal") == "s2"
    await cluster_client.delete(shard)


@pytest.mark.redis
async def test_cluster_client_survives_concurrent_first_use(cluster_url: str) -> None:
    """Eight workers' first commands on one fresh cluster client all succeed (run_bridge's case)."""
    failures: list[str] = []
    for attempt in range(ROUNDS):
        shards = _shards(f"first-use-{uuid.uuid4().hex[:8]}")
        async with connect(cluster_url, cluster=True) as redis:
            streams = [
                SignalStream(redis, stream=s, group=GROUP, consumer="c1", dlq_stream=f"{s}:dlq")
                for s in shards
            ]

            async def first_commands(stream: SignalStream) -> None:
                await stream.ensure_group("0")
                for _ in range(3):
                    await stream.read(10, None)

            results = await asyncio.gather(
                *(first_commands(s) for s in streams), return_exceptions=True
            )
            failures.extend(
                f"round {attempt}: {type(r).__name__}: {r}"
                for r in results
                if isinstance(r, BaseException)
            )
            for shard in shards:
                await redis.delete(shard)
    assert failures == [], (
        "a fresh RedisCluster client failed when several workers sent their first commands "
        f"at once (a replica dies at start-up this way): {failures}"
    )


# --- two replicas on the cluster -------------------------------------------------------------


async def _shard_readers(client: RedisCluster, shard: str) -> set[str]:
    """Consumers of group ``g`` on ``shard`` (empty while the group does not exist)."""
    try:
        consumers = await client.xinfo_consumers(shard, GROUP)
    except aioredis.ResponseError:
        return set()
    return {c["name"].decode() for c in consumers}


async def _all_reading(client: RedisCluster, shards: Sequence[str], names: set[str]) -> bool:
    for shard in shards:
        if not names <= await _shard_readers(client, shard):
            return False
    return True


async def _leases_split(client: RedisCluster, shards: Sequence[str], names: Sequence[str]) -> bool:
    """Every shard's lease is held, and each replica holds at least two of them."""
    store = LeaseStore(client, group=GROUP, members_key="unused")  # type: ignore[arg-type]
    holders = [await store.holder(shard) for shard in shards]
    owners = Counter(value.split(" ")[1] for value in holders if value)
    return sum(owners.values()) == len(shards) and all(owners[n] >= 2 for n in names)


async def _drained(client: RedisCluster, shards: Sequence[str]) -> bool:
    for shard in shards:
        groups = await client.xinfo_groups(shard)
        group = next((g for g in groups if g["name"] == GROUP.encode()), None)
        if group is None or group["pending"] != 0 or group["lag"] != 0:
            return False
    return True


def _delivered_by(replica: Replica) -> list[str]:
    """signal_ids the replica logged as delivered."""
    found: list[str] = []
    for line in replica.stdout().splitlines():
        if '"signal delivered"' in line:
            found.append(json.loads(line)["signal_id"])
    return found


def _crashed(replica: Replica) -> bool:
    """Tell whether the replica printed a traceback (it is dying, maybe still draining)."""
    return "Traceback (most recent call last)" in replica.stderr_path.read_text(
        encoding="utf-8", errors="replace"
    )


def _order_violations(received: Sequence[Signal]) -> list[str]:
    """Instruments whose signals reached the server out of their publish order."""
    sequence: dict[str, list[int]] = defaultdict(list)
    for item in received:
        sequence[item.instrument].append(int(str(item.signal_id).rsplit("-", 1)[1]))
    return [f"{i}: {seq}" for i, seq in sorted(sequence.items()) if seq != sorted(seq)]


@dataclass
class StallingIngest(IngestApp):
    """The reference server, able to hold one producer's requests for a while.

    The first request from ``stall_producer`` starts a window of ``stall_s`` seconds; requests
    from that producer wait until the window ends, then are served normally. It models one
    slow replica (a GC pause, a congested link), which must not reorder an instrument.
    """

    stall_producer: str | None = None
    stall_s: float = 0.0
    stalled: int = 0
    _stall_until: float | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hold the stalled producer's requests inside the window, then serve as usual."""
        if scope["type"] == "http" and self.stall_producer is not None:
            headers: dict[bytes, bytes] = dict(scope["headers"])
            if headers.get(b"x-producer-id", b"").decode("latin-1") == self.stall_producer:
                now = time.monotonic()
                if self._stall_until is None:
                    self._stall_until = now + self.stall_s
                if now < self._stall_until:
                    self.stalled += 1
                    await asyncio.sleep(self._stall_until - now)
        await super().__call__(scope, receive, send)


@dataclass
class ClusterRun:
    """What two replicas did with one burst of signals on the sharded streams."""

    app: StallingIngest
    shards: list[str]
    expected: dict[str, str]  # idempotency key -> signal_id
    per_replica: dict[str, list[str]]  # replica -> signal_ids it logged as delivered
    bad_shard: str
    bad_id: str
    output: str


async def _run_two_replicas(
    client: RedisCluster,
    cluster_url: str,
    log_dir: Path,
    *,
    stall_first_s: float = 0.0,
    strict: bool = False,
) -> ClusterRun:
    """Start two cluster replicas on eight shards, publish while both read, drain, stop them.

    Every instrument gets PER_INSTRUMENT signals, published round by round; one invalid entry
    goes to shard 3 half-way. ``stall_first_s`` holds replica-1's first deliveries that long.
    ``strict`` runs BRIDGE_ORDERING=strict (shard leases, one owner per shard), else parallel.
    Returns once the server has every signal, every shard is drained and both replicas have
    exited 0 after SIGTERM.
    """
    run = uuid.uuid4().hex[:8]
    shards = _shards(f"signals-{run}")
    redis: aioredis.Redis = client  # type: ignore[assignment]
    names = ("replica-1", "replica-2")
    app = StallingIngest(
        secrets={KEY_ID: SECRET.encode()},
        stall_producer=f"producer-{names[0]}" if stall_first_s else None,
        stall_s=stall_first_s,
    )
    bad_shard = shards[3]
    bad_id = ""
    expected: dict[str, str] = {}
    with serve_in_thread(app) as server_url, Replicas(log_dir) as replicas:
        started = [
            replicas.start(
                name,
                bridge_env(
                    server_url,
                    cluster_url,
                    "signals",
                    BRIDGE_STREAMS=",".join(shards),
                    BRIDGE_REDIS_CLUSTER="true",
                    BRIDGE_CONSUMER=name,
                    PRODUCER_ID=f"producer-{name}",
                    **(STRICT if strict else {"BRIDGE_ORDERING": "parallel"}),
                ),
            )
            for name in names
        ]

        def all_alive() -> bool:
            return all(r.alive and not _crashed(r) for r in started)

        async def reading_or_dead() -> bool:
            if not all_alive():
                return True
            if strict:
                return await _leases_split(client, shards, names)
            return await _all_reading(client, shards, set(names))

        try:
            await eventually(reading_or_dead, timeout_s=20, what="both replicas reading all shards")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{replicas.output()}") from None
        assert all_alive(), f"a replica died at start-up\n{replicas.output()}"

        for n in range(PER_INSTRUMENT):
            for instrument in INSTRUMENTS:
                item = make_signal(n, instrument=instrument, signal_id=f"{run}-{instrument}-{n}")
                entry_id = await publish(redis, item, stream=shards)
                key = idempotency_key(shard_for(instrument, shards), entry_id, item.signal_id)
                expected[key] = str(item.signal_id)
            if n == PER_INSTRUMENT // 2:
                bad_id = await publish_raw(redis, {"signal": b"{not json"}, stream=bad_shard)

        await eventually(
            lambda: len(app.received) >= len(expected) or not all_alive(),
            timeout_s=30,
            what=f"{len(expected)} signals at the server",
        )
        assert all_alive(), f"a replica died\n{replicas.output()}"
        await eventually(lambda: _drained(client, shards), timeout_s=15, what="shards drained")
        for replica in started:
            replica.send(signal.SIGTERM)
        for replica in started:
            assert await replica.wait(EXIT_TIMEOUT_S) == 0, replica.output()
        per_replica = {r.name: _delivered_by(r) for r in started}
        output = replicas.output()
    return ClusterRun(app, shards, expected, per_replica, bad_shard, bad_id, output)


async def _cleanup(client: RedisCluster, shards: Sequence[str]) -> None:
    for shard in shards:
        await client.delete(shard, f"{shard}:dlq")


@pytest.mark.redis
@pytest.mark.slow
async def test_two_replicas_deliver_every_signal_once_and_dead_letter_per_shard(
    cluster_client: RedisCluster, cluster_url: str, tmp_path: Path
) -> None:
    """Two cluster replicas store every signal once, leave nothing pending, DLQ per shard."""
    result = await _run_two_replicas(cluster_client, cluster_url, tmp_path)
    app, output = result.app, result.output
    try:
        # Every signal once: all keys stored, nothing twice, not even a duplicate attempt.
        assert app.keys() == set(result.expected), output
        assert len(app.received) == len(result.expected)
        assert app.refusals == {}, output
        delivered = [sid for ids in result.per_replica.values() for sid in ids]
        assert sorted(delivered) == sorted(result.expected.values())
        counts = {name: len(ids) for name, ids in result.per_replica.items()}
        assert all(counts.values()), f"both replicas delivered: {counts}"

        # Nothing pending, nothing unread, on any shard.
        for shard in result.shards:
            summary = await cluster_client.xpending(shard, GROUP)
            assert summary["pending"] == 0, shard
            groups = await cluster_client.xinfo_groups(shard)
            assert [g["lag"] for g in groups if g["name"] == GROUP.encode()] == [0], shard

        # The invalid entry is in its own shard's DLQ (same slot as the shard: the MULTI ran).
        letters = await _xrange(cluster_client, f"{result.bad_shard}:dlq")
        assert len(letters) == 1, letters
        fields = letters[0][1]
        assert fields[f"{DLQ_PREFIX}reason".encode()] == b"invalid"
        assert fields[f"{DLQ_PREFIX}source_stream".encode()] == result.bad_shard.encode()
        assert fields[f"{DLQ_PREFIX}source_id".encode()] == result.bad_id.encode()
        assert fields[b"signal"] == b"{not json"
        for shard in result.shards:
            if shard != result.bad_shard:
                assert await cluster_client.xlen(f"{shard}:dlq") == 0, shard
    finally:
        await _cleanup(cluster_client, result.shards)


@pytest.mark.redis
@pytest.mark.slow
async def test_two_replicas_keep_per_instrument_order_at_the_server(
    cluster_client: RedisCluster, cluster_url: str, tmp_path: Path
) -> None:
    """Strict ordering on a cluster: leases split the shards; each instrument stays in order.

    The lease keys carry the shard's hash tag, so each lease script runs on the shard's node.
    Replicas that share a shard in parallel mode read its entries in parallel; strict mode gives
    each shard one owner at a time (README: "Order across replicas").
    """
    result = await _run_two_replicas(
        cluster_client, cluster_url, tmp_path, stall_first_s=STALL_S, strict=True
    )
    try:
        assert len(result.app.received) == len(result.expected)
        assert result.app.stalled > 0, "replica-1 delivered something (and was held)"
        violations = _order_violations([r.signal for r in result.app.received])
        split = sorted(
            instrument
            for instrument in INSTRUMENTS
            if len(
                {r.producer_id for r in result.app.received if r.signal.instrument == instrument}
            )
            > 1
        )
        assert violations == [], (
            f"per-instrument order broken at the server: {violations}; instruments whose "
            f"signals were delivered by both replicas: {split}"
        )
    finally:
        await _cleanup(cluster_client, result.shards)


@pytest.mark.redis
async def test_receipts_live_on_the_source_streams_slot_and_are_waited_for_on_a_cluster(
    cluster_client: RedisCluster, cluster_url: str
) -> None:
    """With BRIDGE_RECEIPTS each shard's receipts share its slot; publish(wait=) gets them."""
    run = uuid.uuid4().hex[:8]
    shards = [f"rcpt-{run}:{{{n}}}" for n in range(2)]
    client = cast("aioredis.Redis", cluster_client)
    app = IngestApp(secrets={KEY_ID: SECRET.encode()})
    with serve_in_thread(app) as url:
        for shard in shards:
            assert key_slot(receipts_stream(shard).encode()) == key_slot(shard.encode())
            bad = await publish_raw(client, {"signal": b"{not json"}, stream=shard)
            env = bridge_env(
                url, cluster_url, shard, BRIDGE_REDIS_CLUSTER="true", BRIDGE_RECEIPTS="true"
            )
            async with running(client, load_config(env=env)):
                receipt = await publish(
                    client, make_signal(1, signal_id=f"{run}-{shard}"), stream=shard, wait=20.0
                )
                await eventually(
                    lambda s=shard: _receipts_at_least(client, s, 2), what="both receipts"
                )
            assert receipt.outcome == "accepted"
            assert receipt.stream == shard
            written = [r async for r in receipts(client, shard, follow=False)]
            assert {(r.entry_id, r.outcome) for r in written} == {
                (bad, "dead_lettered"),
                (receipt.entry_id, "accepted"),
            }
    for shard in shards:
        await cluster_client.delete(shard, f"{shard}:dlq", receipts_stream(shard))


async def _receipts_at_least(client: aioredis.Redis, shard: str, count: int) -> bool:
    return int(await client.xlen(receipts_stream(shard))) >= count
