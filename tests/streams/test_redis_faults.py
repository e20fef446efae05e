"""Redis faults between the worker and a real redis-server: lost replies, silence, takeover.

A fault proxy (tests/fault_proxy.py) on loopback loses an XREADGROUP reply or blackholes the
link; the reference ingest server counts what arrived, in which order, and when.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any, Final

import pytest
import redis.asyncio as aioredis

from bridge.app.health import HealthServer
from bridge.core.signal import Signal
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Breaker
from bridge.delivery.jobs import idempotency_key
from bridge.streams.connection import connect, read_timeout_s
from bridge.streams.producer import publish
from tests.fault_proxy import fault_proxy
from tests.fixtures_ingest import Server
from tests.support import (
    bridge_config,
    drained,
    eventually,
    make_signal,
    order_by_instrument,
    running,
)

pytestmark = pytest.mark.redis

# The read timeout the tests give the worker's Redis client (the service derives it from
# BRIDGE_BLOCK_MS: BLOCK + 4 s); short, so a lost reply costs the tests about a second.
READ_TIMEOUT_S: Final = 1.0


async def test_a_silent_redis_is_noticed_within_about_five_seconds_by_default() -> None:
    """With the default 1 s BLOCK, a read that gets no answer fails after 5 s, not 30 s."""
    assert read_timeout_s(1000) <= 5.0
    assert read_timeout_s(20_000) > 20.0  # never shorter than the longest BLOCK allowed
    async with connect("redis://127.0.0.1:1/0", block_ms=1000) as client:  # never connects
        options = client.connection_pool.connection_kwargs
        assert options["socket_timeout"] == read_timeout_s(1000)
        assert options["socket_keepalive"] is True
        assert options["socket_keepalive_options"]


async def test_a_swallowed_read_reply_neither_delays_nor_reorders(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """The reply handing out a burst is lost: every signal still arrives once, in order, late by at most the reconnect time."""  # noqa: E501
    published: list[Signal] = []
    async with (
        fault_proxy(redis_url) as proxy,
        connect(proxy.url, block_ms=50, socket_timeout=READ_TIMEOUT_S) as proxied,
    ):
        config = bridge_config(server.url, proxy.url, stream_name)
        async with running(proxied, config):
            warm_up = [make_signal(i, signal_id=f"w-{i}") for i in range(5)]
            for signal in warm_up:
                await publish(redis, signal, stream=stream_name)
            published += warm_up
            await eventually(lambda: len(server.app.received) == 5, what="warm-up delivered")
            proxy.swallow_next_read()
            for i in range(40):
                signal = make_signal(i, signal_id=f"s-{i}")
                await publish(redis, signal, stream=stream_name)
                published.append(signal)
                await asyncio.sleep(0.02 if i % 10 else 0.2)
            await eventually(lambda: drained(redis, stream_name), what="stream drained")
    assert proxy.swallowed == 1
    received = server.app.received
    assert len(received) == len(published)
    assert len(server.app.keys()) == len(published)
    assert order_by_instrument([r.signal for r in received]) == order_by_instrument(published)
    late = max(r.received_at - r.signal.timestamp.timestamp() for r in received)
    assert late < READ_TIMEOUT_S + 1.0, f"a signal arrived {late:.2f}s after it was published"


async def test_a_blackholed_redis_is_noticed_logged_and_named_by_readyz(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis stops answering: within the read timeout the worker logs it and /readyz says why; after the heal it delivers again."""  # noqa: E501
    caplog.set_level(logging.ERROR, logger="bridge.worker")
    async with (
        fault_proxy(redis_url) as proxy,
        connect(proxy.url, block_ms=50, socket_timeout=READ_TIMEOUT_S) as proxied,
    ):
        config = bridge_config(server.url, proxy.url, stream_name)
        async with running(proxied, config) as worker:
            health = HealthServer(lambda: [worker], host="127.0.0.1", port=0)
            await eventually(worker.ready, what="worker ready")
            proxy.blackhole()
            started = time.monotonic()
            await eventually(lambda: not worker.redis_ok, timeout_s=10, what="outage noticed")
            noticed_s = time.monotonic() - started
            assert noticed_s < READ_TIMEOUT_S + 1.0
            assert any(r.getMessage() == "redis unavailable, retrying" for r in caplog.records)
            ready, checks = await health.readiness()
            assert not ready
            assert str(checks["redis"]).startswith("unreachable: no answer to PING"), checks
            assert "XREADGROUP" in str(checks["consumer"]) or "redis error" in str(
                checks["consumer"]
            ), checks
            proxy.heal()
            await eventually(lambda: worker.redis_ok, timeout_s=10, what="redis back")
            signal = make_signal(1, signal_id="after-heal")
            await publish(redis, signal, stream=stream_name)
            await eventually(lambda: len(server.app.received) == 1, what="delivery after heal")
            ready, checks = await health.readiness()
            assert ready, checks


async def test_own_entries_idle_after_an_ack_outage_are_not_reclaimed_or_posted_again(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """XACK fails for 1.5 s (claim idle 0.6 s) while one lane retries and another delivers: the consumer's own delivered-but-unacked entries go idle, yet nothing is taken "from another consumer" and nothing is posted twice."""  # noqa: E501
    caplog.set_level(logging.INFO, logger="bridge.worker")
    stuck = [make_signal(5 * i, signal_id=f"stuck-{i}") for i in range(10)]
    stuck_keys = {idempotency_key(stream_name, "", s.signal_id) for s in stuck}
    heal_at = [math.inf]

    def slow_and_flaky(headers: Any) -> int | None:
        time.sleep(0.02)  # one lane's deliveries run on through the outage
        failing = headers.get("x-idempotency-key") in stuck_keys and time.time() < heal_at[0]
        return 503 if failing else None

    server.app.fault = slow_and_flaky
    flowing = [make_signal(5 * i + 1, signal_id=f"flow-{i}") for i in range(60)]
    for signal in flowing + stuck:  # unacked entries below the parked ones (not touched)
        await publish(redis, signal, stream=stream_name)
    config = bridge_config(server.url, "redis://unused", stream_name, BRIDGE_CLAIM_IDLE_MS="600")

    async def own_entries_idle() -> bool:
        idle = await redis.xpending_range(
            stream_name, "g", "-", "+", 10, consumername="c1", idle=600
        )
        return bool(idle)

    async with (
        fault_proxy(redis_url) as proxy,
        connect(proxy.url, block_ms=50, socket_timeout=0.5) as proxied,
        running(
            proxied,
            config,
            breaker=Breaker(failure_threshold=10_000),
            backoff=Backoff(0.05, 0.2),
        ),
    ):
        await eventually(lambda: len(server.app.received) >= 3, what="deliveries under way")
        proxy.stall_commands(b"XACK")
        await eventually(own_entries_idle, timeout_s=5, what="own unacked entries idle")
        await asyncio.sleep(0.9)  # several claim scans (every 60 ms) see them
        proxy.heal()
        heal_at[0] = time.time()
        await eventually(lambda: drained(redis, stream_name), what="stream drained")
    messages = [r.getMessage() for r in caplog.records]
    assert not [m for m in messages if "from another consumer" in m]
    assert server.app.refusals.get("duplicate idempotency key", 0) == 0
    received = [r.signal for r in server.app.received]
    assert len(received) == len(stuck) + len(flowing)
    assert order_by_instrument(received) == order_by_instrument(flowing + stuck)


async def test_a_dead_consumers_entries_are_taken_within_1_1x_the_idle_time(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Entries read by a consumer that then died reach the server after 1.0x-1.1x BRIDGE_CLAIM_IDLE_MS (plus a POST)."""  # noqa: E501
    signals = [make_signal(i, signal_id=f"d-{i}") for i in range(5)]
    for signal in signals:
        await publish(redis, signal, stream=stream_name)
    await redis.xgroup_create(stream_name, "g", id="0")
    await redis.xreadgroup("g", "dead", {stream_name: ">"}, count=5)
    read_at = time.time()
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_CLAIM_IDLE_MS="1000")
    async with running(redis, config):
        await eventually(lambda: len(server.app.received) == 5, what="takeover")
    taken = [r.received_at - read_at for r in server.app.received]
    assert min(taken) >= 1.0 - 0.05  # read_at is taken a moment after Redis's delivery time
    assert max(taken) < 1.1 + 0.25, f"taken {max(taken):.2f}s after the read"
