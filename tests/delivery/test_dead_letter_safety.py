"""Dead letters that cannot vanish, and a dead-letter stream Redis will not write (issue 21).

Each test runs a real ``Worker`` against the session's real Redis and the reference ingest
server on 127.0.0.1, and counts what reached the server, the dead-letter stream and the group's
pending list, not what the bridge believes.
"""

from __future__ import annotations

import logging
import uuid

import pytest
import redis.asyncio as aioredis

from bridge.app.health import HealthServer
from bridge.ops.check import CheckFailedError, run_check
from bridge.streams.connection import connect
from bridge.streams.entries import DLQ_PREFIX, DeadLetter
from bridge.streams.group import SignalStream
from bridge.streams.letter_fields import MAX_COPIED_FIELDS
from bridge.streams.producer import publish, publish_raw
from tests.fixtures_ingest import MetricsCapture, Server
from tests.support import bridge_config, eventually, make_signal, running

pytestmark = pytest.mark.redis


async def _pending(redis: aioredis.Redis, stream: str) -> int:
    return int((await redis.xpending(stream, "g"))["pending"])


def _lines(caplog: pytest.LogCaptureFixture, message: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage().startswith(message)]


async def test_an_entry_with_4100_fields_ends_in_the_dead_letter_stream_and_nowhere_else(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """4,100 fields (past what Lua can unpack): one letter, cut noted, not pending, counted once."""
    caplog.set_level(logging.INFO)
    fields = {f"f{i:04d}": f"v{i}" for i in range(4100)}
    entry_id = await publish_raw(redis, fields, stream=stream_name)
    config = bridge_config(server.url, redis_url, stream_name)
    async with running(redis, config) as worker:
        await eventually(lambda: worker.stats.dead_lettered == {"invalid": 1}, what="dead-lettered")
    assert await _pending(redis, stream_name) == 0
    letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream_name}:dlq")  # type: ignore[assignment]
    [(_, letter)] = letters
    assert letter[f"{DLQ_PREFIX}source_id".encode()] == entry_id.encode()
    assert letter[f"{DLQ_PREFIX}original_fields".encode()] == b"4100"
    assert b"4000 of 4100 fields left out" in letter[f"{DLQ_PREFIX}cut".encode()]
    copied = [k for k in letter if not k.startswith(DLQ_PREFIX.encode())]
    assert len(copied) == MAX_COPIED_FIELDS
    assert len(_lines(caplog, "signal dead-lettered")) == 1
    assert server.app.received == []


async def test_a_huge_field_is_copied_up_to_the_byte_limit_with_its_size(
    redis: aioredis.Redis, signal_stream: SignalStream, stream_name: str
) -> None:
    """A 4 MB field gives a letter of at most BRIDGE_DEAD_LETTER_MAX_BYTES, naming the cut."""
    await signal_stream.ensure_group("0")
    await publish_raw(redis, {"signal": b"x" * 4_000_000, "note": b"small"}, stream=stream_name)
    [entry] = await signal_stream.read(10, None)
    assert await signal_stream.dead_letter(entry, DeadLetter(reason="invalid", error="big"))
    letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream_name}:dlq")  # type: ignore[assignment]
    [(_, letter)] = letters
    assert len(letter[b"signal"]) < signal_stream.dead_letter_max_bytes
    assert b"note" not in letter  # the budget went to the signal, copied first
    assert letter[f"{DLQ_PREFIX}original_bytes".encode()] == str(4_000_000 + 6 + 4 + 5).encode()
    cut = letter[f"{DLQ_PREFIX}cut".encode()]
    assert b"1 of 2 fields left out" in cut
    assert b"shortened: signal" in cut


async def test_a_failure_inside_the_script_leaves_the_entry_pending_with_no_letter(
    server: Server,
    redis: aioredis.Redis,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
    metrics_capture: MetricsCapture,
) -> None:
    """XADD refused inside the script (ACL): the entry stays pending, nothing logged or counted."""
    caplog.set_level(logging.INFO)
    user, password = f"noxadd-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    await redis.acl_setuser(
        user,
        enabled=True,
        passwords=[f"+{password}"],
        keys=["*"],
        channels=["*"],
        commands=["+@all", "-xadd"],
    )
    try:
        await publish_raw(redis, {"signal": b"{not json"}, stream=stream_name)
        await publish(redis, make_signal(1), stream=stream_name)
        port = redis.connection_pool.connection_kwargs["port"]
        config = bridge_config(
            server.url, f"redis://{user}:{password}@127.0.0.1:{port}/0", stream_name
        )
        async with (
            connect(config.stream.redis_url) as limited,
            running(limited, config, metrics=metrics_capture.metrics) as worker,
        ):
            await eventually(lambda: len(server.app.received) == 1, what="valid signal delivered")
            await eventually(lambda: not worker.ready(), what="dead letters reported unwritable")
            assert "can't run this command" in worker.dead_letter_error
        assert await _pending(redis, stream_name) == 1
        assert await redis.exists(f"{stream_name}:dlq") == 0
        assert worker.stats.dead_lettered == {}
        assert _lines(caplog, "signal dead-lettered") == []
        assert len(_lines(caplog, "dead letters cannot be written")) == 1
        assert metrics_capture.counter("signals_dead_lettered_total") == []
        [writable] = metrics_capture.counter("signals_dead_letters_writable")
        assert writable.value == 0
    finally:
        await redis.acl_deluser(user)


async def test_an_unwritable_dead_letter_stream_lets_valid_signals_through(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A string at the DLQ key, 100 invalid entries ahead of 5 valid, batch 10: all 5 delivered."""
    caplog.set_level(logging.INFO)
    dlq = f"{stream_name}:dlq"
    await redis.set(dlq, "not a stream")
    for i in range(100):
        await publish_raw(redis, {"signal": f"{{broken {i}".encode()}, stream=stream_name)
    for i in range(5):
        await publish(redis, make_signal(i), stream=stream_name)
    config = bridge_config(
        server.url, redis_url, stream_name, BRIDGE_BATCH_SIZE="10", BRIDGE_CLAIM_IDLE_MS="500"
    )
    async with running(redis, config) as worker:
        await eventually(lambda: len(server.app.received) == 5, what="5 valid signals delivered")
        assert not worker.ready()
        assert "WRONGTYPE" in worker.dead_letter_error
        _, checks = HealthServer(lambda: [worker], host="127.0.0.1", port=0).answer()
        assert str(checks["dead_letters"]).startswith(f"cannot be written: {dlq}: "), checks

        async def only_invalid_pending() -> bool:  # the 5 acks go out in a burst just after
            return await _pending(redis, stream_name) == 100

        await eventually(only_invalid_pending, what="only the invalid entries pending")
        assert worker.in_flight < 100  # the invalid ones gave their slots back
        assert len(_lines(caplog, "dead letters cannot be written")) == 1
        assert _lines(caplog, "signal dead-lettered") == []

        await redis.delete(dlq)  # the operator fixes the key: the waiting letters are written
        await eventually(
            lambda: worker.stats.dead_lettered == {"invalid": 100},
            timeout_s=30,
            what="every waiting entry dead-lettered",
        )
        assert worker.ready()
    assert await _pending(redis, stream_name) == 0
    assert await redis.xlen(dlq) == 100
    assert len(_lines(caplog, "dead letters cannot be written")) == 1
    assert len(_lines(caplog, "dead letters can be written again")) == 1
    assert {r.signal.signal_id for r in server.app.received} == {f"sig-{i}" for i in range(5)}


async def test_check_names_a_dead_letter_key_of_the_wrong_type(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """`signal-bridge check` fails on the stream part, naming the dead-letter key and its type."""
    config = bridge_config(server.url, redis_url, stream_name)
    lines: list[str] = []
    assert await run_check(config, lines.append) == 0
    await redis.hset(f"{stream_name}:dlq", "a", "b")
    with pytest.raises(CheckFailedError) as failed:
        await run_check(config, lines.append)
    assert failed.value.part == "stream"
    assert f"{stream_name}:dlq holds a hash, not a stream" in str(failed.value)
