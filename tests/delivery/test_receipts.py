"""Receipts written with the ack: one per settled entry, none for a pending one (real Redis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

from bridge.delivery.jobs import idempotency_key
from bridge.ops.check import CheckFailedError, run_check
from bridge.streams.deadletters import DeadLetterStore
from bridge.streams.entries import DeadLetter, as_text
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish, publish_raw
from bridge.streams.receipt_writer import ReceiptWriter
from bridge.streams.receipts import (
    Receipt,
    ReceiptPolicy,
    receipt_fields,
    receipts,
    receipts_stream,
)
from tests.fixtures_ingest import Server
from tests.support import bridge_config, drained, eventually, fast_breaker, make_signal, running

pytestmark = pytest.mark.redis


async def _all_receipts(redis: aioredis.Redis, stream: str) -> list[Receipt]:
    return [r async for r in receipts(redis, stream, follow=False)]


async def _by_entry(redis: aioredis.Redis, stream: str) -> dict[str, list[Receipt]]:
    out: dict[str, list[Receipt]] = {}
    for receipt in await _all_receipts(redis, stream):
        out.setdefault(receipt.entry_id, []).append(receipt)
    return out


async def _only_pending(redis: aioredis.Redis, stream: str, entry_id: str) -> bool:
    groups = await redis.xinfo_groups(stream)
    if not groups or groups[0]["lag"] != 0:
        return False
    pending = await redis.xpending_range(stream, "g", min="-", max="+", count=10)
    return [as_text(bytes(p["message_id"])) for p in pending] == [entry_id]  # type: ignore[arg-type]


async def test_a_mixed_run_gives_each_settled_entry_exactly_one_receipt(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Each settled entry of a mixed run has exactly one receipt, with its outcome; none pending."""
    poison = await publish(redis, make_signal(9, signal_id="poison"), stream=stream_name)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xreadgroup("g", "dead", {stream_name: ">"}, count=1)
    for _ in range(3):
        await redis.xclaim(stream_name, "g", "dead", 0, [poison])
    accepted = await publish(redis, make_signal(1, signal_id="ok"), stream=stream_name)
    duplicate = await publish(redis, make_signal(2, signal_id="dup"), stream=stream_name)
    invalid = await publish_raw(redis, {"signal": b"{nope"}, stream=stream_name)
    old = datetime.now(UTC) - timedelta(minutes=10)
    expired = await publish(redis, make_signal(3, now=old, signal_id="old"), stream=stream_name)
    rejected = await publish(redis, make_signal(4, signal_id="refuse"), stream=stream_name)
    stuck = await publish(redis, make_signal(5, signal_id="stuck"), stream=stream_name)
    dup_key = idempotency_key(stream_name, duplicate, "dup")
    refuse_key = idempotency_key(stream_name, rejected, "refuse")
    stuck_key = idempotency_key(stream_name, stuck, "stuck")
    statuses = {dup_key: 409, refuse_key: 422, stuck_key: 503}
    server.app.fault = lambda h: statuses.get(h.get("x-idempotency-key", ""))
    config = bridge_config(
        server.url,
        redis_url,
        stream_name,
        BRIDGE_RECEIPTS="true",
        BRIDGE_CLAIM_IDLE_MS="100",
        BRIDGE_MAX_DELIVERIES="3",
    )
    # The stuck entry's 503s must not open the breaker before the others are settled.
    async with running(redis, config, breaker=fast_breaker(threshold=1_000_000)):
        await eventually(lambda: _only_pending(redis, stream_name, stuck), what="settled")
        await eventually(lambda: _count_is(redis, stream_name, 6), what="six receipts", timeout_s=5)
        by_entry = await _by_entry(redis, stream_name)
    outcomes = {entry: [(r.outcome, r.reason) for r in rs] for entry, rs in by_entry.items()}
    assert outcomes == {
        poison: [("dead_lettered", "max_deliveries")],
        accepted: [("accepted", None)],
        duplicate: [("duplicate", None)],
        invalid: [("dead_lettered", "invalid")],
        expired: [("expired", "expired")],
        rejected: [("dead_lettered", "rejected")],
    }
    ok = by_entry[accepted][0]
    assert ok.signal_id == "ok"
    assert ok.http_status == 201
    assert ok.server_signal_id
    assert ok.idempotency_key == idempotency_key(stream_name, accepted, "ok")
    assert ok.stream == stream_name
    assert ok.consumer == "c1"
    assert ok.attempts == 1
    assert ok.first_attempt_at
    assert ok.acked_at
    assert ok.latency_ms >= 0
    assert by_entry[duplicate][0].http_status == 409
    assert by_entry[rejected][0].http_status == 422

    # The rejected one replayed once the server takes it: one new receipt, naming the replay.
    server.app.fault = None
    stream = SignalStream(
        redis, stream=stream_name, group="g", consumer="ops", dlq_stream=f"{stream_name}:dlq"
    )
    store = DeadLetterStore.of(stream)
    ids = [e.id for e in await store.letters(reason="rejected")]
    [(_, replayed)] = await store.replay(ids)
    async with running(redis, config):
        await eventually(lambda: drained(redis, stream_name), what="replay and stuck delivered")
        await eventually(lambda: _count_is(redis, stream_name, 8), what="eight receipts")
    by_entry = await _by_entry(redis, stream_name)
    [again] = by_entry[replayed]
    assert again.outcome == "accepted"
    assert again.replay_of == f"{stream_name}/{rejected}"
    assert again.idempotency_key == refuse_key
    assert [r.outcome for r in by_entry[stuck]] == ["accepted"]
    assert sum(len(rs) for rs in by_entry.values()) == 8


async def _count_is(redis: aioredis.Redis, stream: str, count: int) -> bool:
    return int(await redis.xlen(receipts_stream(stream))) >= count


async def test_receipts_off_writes_no_receipts_stream(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """With BRIDGE_RECEIPTS off (the default) delivery and dead letters write no receipt."""
    await publish(redis, make_signal(1), stream=stream_name)
    await publish_raw(redis, {"signal": b"{nope"}, stream=stream_name)
    async with running(redis, bridge_config(server.url, redis_url, stream_name)):
        await eventually(lambda: drained(redis, stream_name), what="drained")
    assert await redis.exists(receipts_stream(stream_name)) == 0


async def test_receipts_are_trimmed_to_maxlen(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """BRIDGE_RECEIPTS_MAXLEN bounds the receipts stream (MAXLEN ~, trimmed by the ack script)."""
    for i in range(400):
        await publish(redis, make_signal(i), stream=stream_name)
    config = bridge_config(
        server.url, redis_url, stream_name, BRIDGE_RECEIPTS="true", BRIDGE_RECEIPTS_MAXLEN="10"
    )
    async with running(redis, config):
        await eventually(lambda: drained(redis, stream_name), what="drained")
    assert 10 <= await redis.xlen(receipts_stream(stream_name)) < 400


async def test_check_names_a_receipts_key_of_the_wrong_type(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """`signal-bridge check` with receipts on fails on the stream part, naming the receipts key."""
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_RECEIPTS="true")
    lines: list[str] = []
    assert await run_check(config, lines.append) == 0
    await redis.hset(receipts_stream(stream_name), "a", "b")
    with pytest.raises(CheckFailedError) as failed:
        await run_check(config, lines.append)
    assert failed.value.part == "stream"
    assert f"{stream_name}:receipts holds a hash, not a stream" in str(failed.value)
    off = bridge_config(server.url, redis_url, stream_name)
    assert await run_check(off, lines.append) == 0


async def test_an_unwritable_receipts_stream_leaves_entries_pending_without_receipts(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """When the receipt cannot be written, the entry is not acked: no ack without its receipt."""
    await redis.hset(receipts_stream(stream_name), "a", "b")
    entry_id = await publish(redis, make_signal(1), stream=stream_name)
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_RECEIPTS="true")
    async with running(redis, config):
        await eventually(lambda: len(server.app.received) == 1, what="delivered")
        await eventually(lambda: _only_pending(redis, stream_name, entry_id), what="read")
        await redis.delete(receipts_stream(stream_name))
        await eventually(lambda: drained(redis, stream_name), what="acked once writable")
    [receipt] = await _all_receipts(redis, stream_name)
    assert receipt.entry_id == entry_id
    assert receipt.outcome == "accepted"


async def test_the_receipt_scripts_check_the_lease_and_write_nothing_when_fenced(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """Strict ordering: with another value in the lease key, no receipt, no letter, no ack."""
    stream = SignalStream(
        redis, stream=stream_name, group="g", consumer="c1", dlq_stream=f"{stream_name}:dlq"
    )
    writer = ReceiptWriter(stream, ReceiptPolicy(receipts_stream(stream_name)))
    await stream.ensure_group("0")
    for i in range(2):
        await publish(redis, make_signal(i), stream=stream_name)
    first, second = await stream.read(2, None)
    lease_key = f"{{{stream_name}}}:lease"
    await redis.set(lease_key, "3 c1 test", px=60_000)
    ours, theirs = (lease_key, "3 c1 test"), (lease_key, "4 c2 other")
    receipt = receipt_fields(entry_id=first.id, stream=stream_name, outcome="accepted")
    letter = DeadLetter(reason="rejected", error="422")
    refused = receipt_fields(entry_id=second.id, stream=stream_name, outcome="dead_lettered")
    assert await writer.ack([(first.id, receipt)], theirs) is None
    assert await writer.dead_letter(second, letter, refused, theirs) is None
    assert (await redis.xpending(stream_name, "g"))["pending"] == 2
    assert await redis.exists(receipts_stream(stream_name), f"{stream_name}:dlq") == 0
    assert await writer.ack([(first.id, receipt)], ours) == 1
    assert await writer.dead_letter(second, letter, refused, ours) is True
    assert (await redis.xpending(stream_name, "g"))["pending"] == 0
    assert [r.entry_id for r in await _all_receipts(redis, stream_name)] == [first.id, second.id]
    # Acked already: a second try writes no second receipt (at most one per entry id).
    assert await writer.ack([(first.id, receipt)], ours) == 0
    assert await writer.dead_letter(second, letter, refused, ours) is False
    assert await redis.xlen(receipts_stream(stream_name)) == 2
