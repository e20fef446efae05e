"""Consumer hygiene on a real redis-server: only idle consumers holding nothing are removed."""

from __future__ import annotations

import asyncio
import logging
import shlex
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
import redis.asyncio as aioredis

from bridge.devkit.embedded import redis_server
from bridge.streams.connection import connect
from bridge.streams.consumers import ConsumerHygiene, sweep_interval_s
from bridge.streams.entries import ConsumerStatus
from bridge.streams.group import SignalStream
from tests.fixtures_ingest import MetricsCapture

pytestmark = pytest.mark.redis

DEPLOYMENT: Final = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
EXPIRE_S: Final = 0.2
# Long enough past EXPIRE_S for Redis' idle times (ms since the consumer last acted) to pass it.
PAST_EXPIRY_S: Final = 0.3


def _stream(redis: aioredis.Redis, stream: str, consumer: str = "me") -> SignalStream:
    return SignalStream(
        redis, stream=stream, group="g", consumer=consumer, dlq_stream=f"{stream}:dlq"
    )


async def _consumers(redis: Any, stream: str) -> dict[str, int]:
    """Consumer name -> entries it holds."""
    return {c["name"].decode(): int(c["pending"]) for c in await redis.xinfo_consumers(stream, "g")}


async def _hand_to(redis: Any, stream: str, consumer: str) -> str:
    """XADD one entry and read it as ``consumer``, which then holds it; return its id."""
    entry_id = (await redis.xadd(stream, {"signal": b"{}"})).decode()
    reply = await redis.xreadgroup("g", consumer, {stream: ">"}, count=1)
    assert reply[0][1][0][0].decode() == entry_id
    return str(entry_id)


async def test_idle_consumers_holding_nothing_go_the_rest_stay(
    redis: aioredis.Redis,
    stream_name: str,
    metrics_capture: MetricsCapture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Old empty consumers are removed, counted and logged; busy, fresh and own ones stay."""
    await redis.xgroup_create(stream_name, "g", id="$", mkstream=True)
    for name in ("old-pod-a", "old-pod-b", "me"):
        await redis.xgroup_createconsumer(stream_name, "g", name)
    await _hand_to(redis, stream_name, "old-pod-busy")
    await asyncio.sleep(PAST_EXPIRY_S)
    await redis.xgroup_createconsumer(stream_name, "g", "new-pod")
    hygiene = ConsumerHygiene(_stream(redis, stream_name), metrics_capture.metrics, EXPIRE_S)

    with caplog.at_level(logging.INFO, logger="bridge.consumers"):
        removed = await hygiene.sweep_once()

    assert sorted(removed) == ["old-pod-a", "old-pod-b"]
    assert await _consumers(redis, stream_name) == {"old-pod-busy": 1, "me": 0, "new-pod": 0}
    [point] = metrics_capture.counter("signals_consumers_removed_total")
    assert point.value == 2
    assert dict(point.attributes or {}) == {"stream": stream_name}
    lines = [r for r in caplog.records if r.getMessage() == "idle consumer removed from the group"]
    assert sorted(r.fields["consumer"] for r in lines) == ["old-pod-a", "old-pod-b"]  # type: ignore[attr-defined]
    assert all(r.levelno == logging.INFO for r in lines)


async def test_a_consumer_handed_an_entry_after_the_listing_is_kept(
    redis: aioredis.Redis, stream_name: str, metrics_capture: MetricsCapture
) -> None:
    """The race: an entry claimed by a listed consumer before the script runs stays its own."""
    await redis.xgroup_create(stream_name, "g", id="$", mkstream=True)
    await redis.xgroup_createconsumer(stream_name, "g", "old-pod")
    await asyncio.sleep(PAST_EXPIRY_S)
    hygiene = ConsumerHygiene(_stream(redis, stream_name), metrics_capture.metrics, EXPIRE_S)
    [listed] = await hygiene.candidates()
    assert listed.name == "old-pod"
    # Between XINFO CONSUMERS and the script: another replica's takeover moves an entry to it.
    entry_id = await _hand_to(redis, stream_name, "other")
    await redis.xclaim(stream_name, "g", "old-pod", 0, [entry_id], justid=True)
    await asyncio.sleep(PAST_EXPIRY_S)  # idle again past the expiry: only the entry keeps it

    assert await hygiene.remove(listed) is False

    assert (await _consumers(redis, stream_name))["old-pod"] == 1
    [pending] = await redis.xpending_range(stream_name, "g", "-", "+", 10)
    assert (pending["message_id"], pending["consumer"]) == (entry_id.encode(), b"old-pod")
    assert metrics_capture.counter("signals_consumers_removed_total") == []


async def test_a_consumer_that_acted_after_the_listing_is_kept(
    redis: aioredis.Redis, stream_name: str, metrics_capture: MetricsCapture
) -> None:
    """A listed consumer that read again before the script runs is no longer idle and stays."""
    await redis.xgroup_create(stream_name, "g", id="$", mkstream=True)
    await redis.xgroup_createconsumer(stream_name, "g", "slow-pod")
    await asyncio.sleep(PAST_EXPIRY_S)
    hygiene = ConsumerHygiene(_stream(redis, stream_name), metrics_capture.metrics, EXPIRE_S)
    [listed] = await hygiene.candidates()
    # It reads its own pending entries (none): XREADGROUP marks the consumer active.
    await redis.xreadgroup("g", "slow-pod", {stream_name: "0"}, count=1)

    assert await hygiene.remove(listed) is False
    assert "slow-pod" in await _consumers(redis, stream_name)


async def test_never_its_own_consumer(
    redis: aioredis.Redis, stream_name: str, metrics_capture: MetricsCapture
) -> None:
    """A replica idle past the expiry with nothing pending does not remove itself."""
    await redis.xgroup_create(stream_name, "g", id="$", mkstream=True)
    await redis.xgroup_createconsumer(stream_name, "g", "me")
    await asyncio.sleep(PAST_EXPIRY_S)
    hygiene = ConsumerHygiene(_stream(redis, stream_name), metrics_capture.metrics, EXPIRE_S)

    assert await hygiene.sweep_once() == []
    assert await hygiene.remove(ConsumerStatus("me", 0, 10_000)) is False
    assert "me" in await _consumers(redis, stream_name)


async def test_the_loop_removes_a_dead_pods_consumer_once_its_entries_are_claimed(
    redis: aioredis.Redis, stream_name: str, metrics_capture: MetricsCapture
) -> None:
    """A dead pod's consumer stays while it holds an entry and goes once a survivor claimed it."""
    await redis.xgroup_create(stream_name, "g", id="$", mkstream=True)
    entry_id = await _hand_to(redis, stream_name, "dead-pod")
    hygiene = ConsumerHygiene(
        _stream(redis, stream_name), metrics_capture.metrics, EXPIRE_S, interval_s=0.05
    )
    task = asyncio.create_task(hygiene.run())
    try:
        await asyncio.sleep(PAST_EXPIRY_S * 2)
        assert (await _consumers(redis, stream_name))["dead-pod"] == 1
        await redis.xclaim(stream_name, "g", "me", 0, [entry_id], justid=True)
        deadline = time.monotonic() + 10
        while "dead-pod" in await _consumers(redis, stream_name):
            assert time.monotonic() < deadline, await _consumers(redis, stream_name)
            await asyncio.sleep(0.05)
    finally:
        task.cancel()
    assert hygiene.removed == 1
    assert await _consumers(redis, stream_name) == {"me": 1}


async def test_no_group_yet_is_not_an_error(
    redis: aioredis.Redis, stream_name: str, metrics_capture: MetricsCapture
) -> None:
    """Before the group exists (a replica still starting) a sweep removes nothing and succeeds."""
    hygiene = ConsumerHygiene(_stream(redis, stream_name), metrics_capture.metrics, EXPIRE_S)
    assert await hygiene.sweep_once() == []


def test_the_sweep_interval_is_a_tenth_of_the_expiry_within_a_second_and_a_minute() -> None:
    """The default hour is swept every minute; short expiries every tenth, at least a second."""
    assert sweep_interval_s(3600) == 60
    assert sweep_interval_s(300) == 30
    assert sweep_interval_s(2) == 1


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A redis-server of this test alone (the default user administers it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server binary (apt-get install redis-server)")
    with redis_server() as (url, _):
        yield url


async def test_the_readme_acl_allows_the_sweep(
    private_redis: str, metrics_capture: MetricsCapture
) -> None:
    """As the documented minimal ACL user a sweep removes a stale consumer; ACL LOG stays empty."""
    password = "acl-" + uuid.uuid4().hex
    [line] = [
        raw.strip()
        for raw in DEPLOYMENT.read_text(encoding="utf-8").splitlines()
        if raw.startswith("ACL SETUSER ")
    ]
    words = [f">{password}" if w == ">CHANGE-ME" else w for w in shlex.split(line)]
    async with connect(private_redis) as admin:
        await admin.execute_command(*words)  # type: ignore[no-untyped-call]
        await admin.acl_log_reset()
        await admin.xgroup_create("signals:{0}", "g", id="$", mkstream=True)
        await admin.xgroup_createconsumer("signals:{0}", "g", "old-pod")
        await asyncio.sleep(PAST_EXPIRY_S)
        port = admin.connection_pool.connection_kwargs["port"]
        async with connect(f"redis://signal-bridge:{password}@127.0.0.1:{port}/0") as user:
            hygiene = ConsumerHygiene(
                _stream(user, "signals:{0}"), metrics_capture.metrics, EXPIRE_S
            )
            assert await hygiene.sweep_once() == ["old-pod"]
        assert await admin.acl_log() == []
