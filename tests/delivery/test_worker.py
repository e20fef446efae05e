"""The consumer loop against a real Redis and the reference ingest server on loopback."""

from __future__ import annotations

import asyncio
import itertools
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge.config.loader import BridgeConfig
from bridge.core.signal import Signal
from bridge.delivery.breaker import Breaker
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.streams.deadletters import DeadLetterStore
from bridge.streams.entries import DLQ_PREFIX
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish, publish_raw
from tests.fixtures_ingest import Server
from tests.support import bridge_config, eventually, fast_breaker, make_signal, running

pytestmark = pytest.mark.redis


def _config(server: Server, redis_url: str, stream: str, **extra: str) -> BridgeConfig:
    return bridge_config(server.url, redis_url, stream, **extra)


async def _publish_many(redis: aioredis.Redis, stream: str, count: int) -> list[tuple[str, Signal]]:
    out = []
    for i in range(count):
        signal = make_signal(i)
        out.append((await publish(redis, signal, stream=stream), signal))
    return out


async def _drained(redis: aioredis.Redis, stream: str) -> bool:
    groups = await redis.xinfo_groups(stream)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


async def _dlq(redis: aioredis.Redis, stream: str) -> list[dict[bytes, bytes]]:
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream}:dlq")  # type: ignore[assignment]
    return [fields for _, fields in entries]


def _keys(stream: str, published: list[tuple[str, Signal]]) -> set[str]:
    return {idempotency_key(stream, eid, s.signal_id) for eid, s in published}


async def test_delivers_every_entry_once_and_acks(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Every published signal reaches the server once, is acked, and nothing is dead-lettered."""
    published = await _publish_many(redis, stream_name, 60)
    async with running(redis, _config(server, redis_url, stream_name)) as worker:
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
        assert worker.stats.delivered == 60
    assert server.app.keys() == _keys(stream_name, published)
    assert len(server.app.received) == 60
    assert await _dlq(redis, stream_name) == []


async def test_new_entries_are_picked_up_while_idle(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """An entry published while the bridge waits in XREADGROUP BLOCK is delivered promptly."""
    config = _config(server, redis_url, stream_name, BRIDGE_START_ID="$", BRIDGE_BLOCK_MS="1000")
    async with running(redis, config) as worker:
        await eventually(lambda: worker.group_ready, what="group created")
        await asyncio.sleep(0.1)
        await publish(redis, make_signal(1), stream=stream_name)
        await eventually(lambda: len(server.app.received) == 1, timeout_s=0.5, what="delivery")


async def test_bad_entries_are_dead_lettered_with_reason_and_replayable(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Undecodable, invalid, stale and 422-rejected entries land in the DLQ, then replay."""
    await publish_raw(redis, {"signal": b"{nope"}, stream=stream_name)
    await publish_raw(redis, {"other": b"x"}, stream=stream_name)
    await publish_raw(
        redis,
        {
            "signal": b'{"instrument":"X","side":"up","entry_price":1,"risk_percent":1,'
            b'"strategy_name":"s","timestamp":"2026-01-01T00:00:00Z"}'
        },
        stream=stream_name,
    )
    old = datetime.now(UTC) - timedelta(minutes=10)
    await publish(redis, make_signal(1, now=old, signal_id="stale"), stream=stream_name)
    await publish(redis, make_signal(2, signal_id="refuse-me"), stream=stream_name)
    good = await publish(redis, make_signal(3), stream=stream_name)
    refuse_key = idempotency_key(stream_name, "", "refuse-me")
    server.app.fault = lambda h: 422 if h.get("x-idempotency-key") == refuse_key else None
    async with running(redis, _config(server, redis_url, stream_name)):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    letters = await _dlq(redis, stream_name)
    reasons = sorted(f[b"dlq_reason"].decode() for f in letters)
    assert reasons == ["expired", "invalid", "invalid", "invalid", "rejected"]
    rejected = next(f for f in letters if f[b"dlq_reason"] == b"rejected")
    assert rejected[b"dlq_http_code"] == b"422"
    assert rejected[b"dlq_source_stream"] == stream_name.encode()
    assert b"fault injected" in rejected[b"dlq_error"]
    assert rejected[b"signal"]
    invalid = [f for f in letters if f[b"dlq_reason"] == b"invalid"]
    assert any(b"side" in f[b"dlq_error"] for f in invalid)
    assert any(b"no 'signal' field" in f[b"dlq_error"] for f in invalid)
    assert len(server.app.received) == 1
    assert server.app.received[0].idempotency_key == idempotency_key(stream_name, good, "sig-3")

    # Replay the rejected one once the server would take it: it is delivered.
    server.app.fault = None
    stream = SignalStream(
        redis, stream=stream_name, group="g", consumer="ops", dlq_stream=f"{stream_name}:dlq"
    )
    ids = [e.id for e in await DeadLetterStore.of(stream).letters(reason="rejected")]
    replayed = await DeadLetterStore.of(stream).replay(ids)
    assert len(replayed) == 1
    assert len(await DeadLetterStore.of(stream).letters()) == 4
    async with running(redis, _config(server, redis_url, stream_name)):
        await eventually(lambda: len(server.app.received) == 2, what="replayed delivery")
    assert server.app.received[1].signal.signal_id == "refuse-me"


async def test_server_errors_are_retried_until_it_recovers(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """500s for a while: every signal still arrives exactly once and none is dead-lettered."""
    failures = itertools.count()
    server.app.fault = lambda h: 500 if next(failures) < 25 else None
    published = await _publish_many(redis, stream_name, 30)
    async with running(redis, _config(server, redis_url, stream_name)) as worker:
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
        assert worker.stats.retries >= 25
    assert server.app.keys() == _keys(stream_name, published)
    assert len(server.app.received) == 30
    assert await _dlq(redis, stream_name) == []


async def test_auth_failure_pauses_without_dead_lettering(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """401s open the breaker and keep entries pending; once fixed, everything is delivered."""
    server.app.fault = lambda h: 401
    published = await _publish_many(redis, stream_name, 10)
    breaker = fast_breaker()
    async with running(redis, _config(server, redis_url, stream_name), breaker=breaker) as worker:
        await eventually(lambda: breaker.is_open, what="breaker open")
        assert not worker.ready()
        await asyncio.sleep(0.2)
        assert await _dlq(redis, stream_name) == []
        groups = await redis.xinfo_groups(stream_name)
        assert groups[0]["pending"] > 0
        server.app.fault = None
        await eventually(lambda: _drained(redis, stream_name), what="drained after fix")
        assert not breaker.is_open
    assert server.app.keys() == _keys(stream_name, published)
    assert await _dlq(redis, stream_name) == []


async def test_per_instrument_order_holds_under_concurrency(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Random 503s on many lanes: each instrument's signals still arrive in stream order."""
    flaky = itertools.cycle([None, 503, None, None, 503, None, None])
    server.app.fault = lambda h: next(flaky)
    published = await _publish_many(redis, stream_name, 150)
    async with running(redis, _config(server, redis_url, stream_name)):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    order: dict[str, list[str]] = {}
    for received in server.app.received:
        order.setdefault(received.signal.instrument, []).append(received.signal.signal_id or "")
    expected: dict[str, list[str]] = {}
    for _, signal in published:
        expected.setdefault(signal.instrument, []).append(signal.signal_id or "")
    assert order == expected


async def test_own_pending_entries_are_resumed_on_start(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Entries a previous run of the same consumer read but never acked are delivered."""
    published = await _publish_many(redis, stream_name, 5)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xreadgroup("g", "c1", {stream_name: ">"}, count=5)
    async with running(redis, _config(server, redis_url, stream_name)):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    assert server.app.keys() == _keys(stream_name, published)


async def test_idle_entries_of_a_dead_consumer_are_reclaimed(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """XAUTOCLAIM takes over what a dead replica held once idle past the claim time."""
    published = await _publish_many(redis, stream_name, 8)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xreadgroup("g", "dead", {stream_name: ">"}, count=8)
    config = _config(server, redis_url, stream_name, BRIDGE_CLAIM_IDLE_MS="200")
    async with running(redis, config):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    assert server.app.keys() == _keys(stream_name, published)


async def test_a_live_replica_keeps_its_retrying_entry(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """While replica A retries an entry, replica B never claims it (A keeps it fresh)."""
    server.app.fault = lambda h: 503
    await publish(redis, make_signal(1), stream=stream_name)
    config = _config(server, redis_url, stream_name, BRIDGE_CLAIM_IDLE_MS="150")
    async with running(redis, config, consumer="a") as a:
        await eventually(lambda: a.stats.retries >= 2, what="a retrying")
        async with running(redis, config, consumer="b") as b:
            for _ in range(10):
                await asyncio.sleep(0.1)
                pending = await redis.xpending_range(stream_name, "g", "-", "+", 10)
                assert [p["consumer"] for p in pending] == [b"a"]
            server.app.fault = None
            await eventually(lambda: _drained(redis, stream_name), what="stream drained")
            assert b.stats.delivered == 0
        assert a.stats.delivered == 1


async def test_entries_deleted_while_pending_are_acked_away(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Pending entries deleted from the stream (XDEL/trim) do not stay pending forever."""
    published = await _publish_many(redis, stream_name, 4)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xreadgroup("g", "dead", {stream_name: ">"}, count=4)
    await redis.xdel(stream_name, published[0][0], published[1][0])
    config = _config(server, redis_url, stream_name, BRIDGE_CLAIM_IDLE_MS="100")
    async with running(redis, config):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    assert len(server.app.received) == 2


async def test_poison_entries_are_dead_lettered_after_max_deliveries(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """An entry delivered more than BRIDGE_MAX_DELIVERIES times is dead-lettered, not posted."""
    entry_id = await publish(redis, make_signal(1), stream=stream_name)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xreadgroup("g", "dead", {stream_name: ">"}, count=1)
    for _ in range(3):
        await redis.xclaim(stream_name, "g", "dead", 0, [entry_id])
    config = _config(
        server, redis_url, stream_name, BRIDGE_CLAIM_IDLE_MS="100", BRIDGE_MAX_DELIVERIES="3"
    )
    async with running(redis, config):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    letters = await _dlq(redis, stream_name)
    assert [f[b"dlq_reason"] for f in letters] == [b"max_deliveries"]
    assert letters[0][b"dlq_source_id"] == entry_id.encode()
    assert server.app.received == []


async def test_stop_finishes_in_flight_and_leaves_the_group(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """After stop() with nothing pending, the consumer is gone from the group."""
    await _publish_many(redis, stream_name, 20)
    async with running(redis, _config(server, redis_url, stream_name)):
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
    consumers = await redis.xinfo_consumers(stream_name, "g")
    assert consumers == []


async def test_stop_during_retries_keeps_the_entry_and_the_consumer(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A retrying entry at stop() stays pending, so the consumer is not deleted."""
    server.app.fault = lambda h: 503
    await publish(redis, make_signal(1), stream=stream_name)
    async with running(redis, _config(server, redis_url, stream_name)) as worker:
        await eventually(lambda: worker.stats.retries >= 1, what="retrying")
    consumers = await redis.xinfo_consumers(stream_name, "g")
    assert [(c["name"], c["pending"]) for c in consumers] == [(b"c1", 1)]


async def test_max_in_flight_bounds_posts_and_read_ahead(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """With a slow failing server, at most MAX_IN_FLIGHT posts run and memory stays bounded."""

    def slow_failure(headers: object) -> int:
        del headers
        time.sleep(0.01)  # blocks the server's loop: requests queue up on the bridge side
        return 503

    server.app.fault = slow_failure
    await _publish_many(redis, stream_name, 40)
    config = _config(
        server, redis_url, stream_name, BRIDGE_MAX_IN_FLIGHT="7", BRIDGE_BATCH_SIZE="5"
    )
    peak = 0
    async with running(redis, config, breaker=Breaker(failure_threshold=10_000)) as worker:
        for _ in range(200):
            peak = max(peak, worker.posting)
            if worker.stats.retries >= 30:
                break
            await asyncio.sleep(0.005)
        groups = await redis.xinfo_groups(stream_name)
        # Every lane is retrying its head: the rest waits in Redis (pending), not in memory.
        assert groups[0]["pending"] == 40
        assert 1 <= worker.in_flight <= 7 + 5
    assert 1 <= peak <= 7


def test_idempotency_key_is_deterministic() -> None:
    """The key depends on signal_id when present, else on stream and entry id."""
    assert idempotency_key("s", "1-0", "abc") == idempotency_key("other", "9-9", "abc")
    assert idempotency_key("s", "1-0", None) == idempotency_key("s", "1-0", None)
    assert idempotency_key("s", "1-0", None) != idempotency_key("s", "1-1", None)
    assert idempotency_key("s", "1-0", None) != idempotency_key("t", "1-0", None)


async def test_dead_letter_and_ack_are_atomic(
    redis: aioredis.Redis, signal_stream: SignalStream, stream_name: str
) -> None:
    """The dead letter appears and the entry leaves the PEL in the same MULTI/EXEC."""
    from bridge.streams.entries import DeadLetter  # noqa: PLC0415 - only this test builds one by hand

    await signal_stream.ensure_group("0")
    entry_id = await publish(redis, make_signal(1), stream=stream_name)
    [entry] = await signal_stream.read(10, None)
    assert entry.id == entry_id
    await signal_stream.dead_letter(entry, DeadLetter(reason="rejected", error="no", http_code=400))
    pending = await redis.xpending(stream_name, "g")
    assert pending["pending"] == 0
    [letter] = await DeadLetterStore.of(signal_stream).letters()
    assert letter.field(f"{DLQ_PREFIX}reason") == "rejected"
    assert letter.field(f"{DLQ_PREFIX}source_id") == entry_id
    assert letter.field(f"{DLQ_PREFIX}consumer") == "c1"


async def test_an_unexpected_error_pauses_and_retries_instead_of_stranding(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A bug in one delivery opens the breaker and is retried: the entry is delivered, once."""
    published = await _publish_many(redis, stream_name, 3)
    original = Worker._send
    calls = itertools.count()

    async def flaky_send(self: Worker, job: Any, signal: Signal) -> Any:
        if next(calls) == 0:
            raise RuntimeError("a bug")
        return await original(self, job, signal)

    monkeypatch.setattr(Worker, "_send", flaky_send)
    config = _config(server, redis_url, stream_name, BRIDGE_CLAIM_IDLE_MS="200")
    async with running(redis, config) as worker:
        await eventually(lambda: _drained(redis, stream_name), what="stream drained")
        assert worker.in_flight == 0
    assert server.app.keys() == _keys(stream_name, published)


async def test_a_dead_letter_never_acks_without_its_letter(
    redis: aioredis.Redis, signal_stream: SignalStream, stream_name: str
) -> None:
    """With the dead-letter key of the wrong type, the entry stays pending (nothing is lost)."""
    from bridge.errors import StreamError  # noqa: PLC0415 - only this test expects it
    from bridge.streams.entries import DeadLetter  # noqa: PLC0415 - built by hand for this test

    await signal_stream.ensure_group("0")
    await publish(redis, make_signal(1), stream=stream_name)
    [entry] = await signal_stream.read(10, None)
    await redis.set(f"{stream_name}:dlq", "not a stream")
    with pytest.raises(StreamError, match="WRONGTYPE"):
        await signal_stream.dead_letter(entry, DeadLetter(reason="rejected", error="no"))
    assert (await redis.xpending(stream_name, "g"))["pending"] == 1
    await redis.delete(f"{stream_name}:dlq")
    await signal_stream.dead_letter(entry, DeadLetter(reason="rejected", error="no"))
    await signal_stream.dead_letter(entry, DeadLetter(reason="rejected", error="again"))
    assert await redis.xlen(f"{stream_name}:dlq") == 1  # an acked entry gets no second letter


async def test_a_replayed_dead_letter_keeps_its_first_idempotency_key(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A replayed entry without signal_id is sent under its first key: the server sees a repeat."""
    entry_id = await publish(redis, make_signal(1, signal_id=None), stream=stream_name)
    first_key = idempotency_key(stream_name, entry_id, None)
    config = _config(server, redis_url, stream_name)
    async with running(redis, config):
        await eventually(lambda: _drained(redis, stream_name), what="first delivery")
    assert server.app.keys() == {first_key}
    # Pretend the first attempt's answer was lost and it ended in the DLQ: replay it.
    stream = SignalStream(
        redis, stream=stream_name, group="g", consumer="ops", dlq_stream=f"{stream_name}:dlq"
    )
    raw: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(
        stream_name, entry_id, entry_id
    )  # type: ignore[assignment]
    [(_, original)] = raw
    await publish_raw(
        redis,
        {
            "signal": original[b"signal"],
            "dlq_reason": "expired",
            "dlq_source_stream": stream_name,
            "dlq_source_id": entry_id,
        },
        stream=f"{stream_name}:dlq",
    )
    [letter] = await DeadLetterStore.of(stream).letters()
    [(_, new_id)] = await DeadLetterStore.of(stream).replay([letter.id])
    assert new_id != entry_id
    async with running(redis, config) as worker:
        await eventually(lambda: _drained(redis, stream_name), what="replay handled")
        assert worker.stats.duplicates == 1
    assert len(server.app.received) == 1
