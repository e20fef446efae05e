"""Isolation: an instrument in retry holds back only its own signals (real Redis, real server)."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import pytest
import redis.asyncio as aioredis

from bridge.config.loader import BridgeConfig
from bridge.core.signal import Signal
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Breaker
from bridge.delivery.jobs import idempotency_key
from bridge.streams.producer import publish
from tests.fixtures_ingest import MetricsCapture, Server, metric_points
from tests.support import (
    INSTRUMENTS,
    bridge_config,
    drained,
    eventually,
    make_signal,
    order_by_instrument,
    running,
)

pytestmark = pytest.mark.redis

BAD = INSTRUMENTS[0]
OTHERS = INSTRUMENTS[1:]
# The breaker is the outcome handling's business (a run of failures opens it for everyone);
# these tests look at the lanes alone, so it never opens here.
NO_BREAKER = 10_000


def _bad(count: int) -> list[Signal]:
    """``count`` signals of the BAD instrument (make_signal picks INSTRUMENTS[i % 5])."""
    return [make_signal(5 * i, signal_id=f"bad-{i}") for i in range(count)]


def _fail_bad_until(server: Server, stream: str, bad: list[Signal]) -> list[float]:
    """Answer 503 to every BAD signal until the returned cell holds a past time."""
    keys = {idempotency_key(stream, "", s.signal_id) for s in bad}
    heal_at = [math.inf]

    def fault(headers: Any) -> int | None:
        failing = headers.get("x-idempotency-key") in keys and time.time() < heal_at[0]
        return 503 if failing else None

    server.app.fault = fault
    return heal_at


async def _publish_all(redis: aioredis.Redis, stream: str, signals: list[Signal]) -> None:
    for signal in signals:
        await publish(redis, signal, stream=stream)


def _config(server: Server, redis_url: str, stream: str, **extra: str) -> BridgeConfig:
    return bridge_config(server.url, redis_url, stream, **extra)


async def test_one_instrument_in_retry_does_not_delay_the_others(  # noqa: PLR0917 - pytest fixtures
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    metrics_capture: MetricsCapture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """60 signals of one instrument answered 503 for ~3 s: the others reach the server within 2 s of publishing; the stuck one is named by a WARNING and a gauge, then follows in order."""  # noqa: E501
    caplog.set_level(logging.WARNING, logger="bridge.worker")
    bad = _bad(60)
    heal_at = _fail_bad_until(server, stream_name, bad)
    await _publish_all(redis, stream_name, bad)  # a backlog ahead of everybody
    config = _config(server, redis_url, stream_name, BRIDGE_LANE_STALL_WARN_SECONDS="1")
    others: list[Signal] = []
    async with running(
        redis,
        config,
        breaker=Breaker(failure_threshold=NO_BREAKER),
        metrics=metrics_capture.metrics,
        backoff=Backoff(0.02, 0.1),
    ):
        for burst in range(25):  # ~2.5 s of steady traffic on the other instruments
            batch = [
                make_signal(k + 5 * burst, signal_id=f"ok-{burst}-{k}")
                for k in range(1, len(INSTRUMENTS))
            ]
            await _publish_all(redis, stream_name, batch)
            others += batch
            await asyncio.sleep(0.1)
        await eventually(
            lambda: len(server.app.received) == len(others), timeout_s=10, what="the others"
        )
        blocked = metric_points(metrics_capture.reader, "signals_lane_blocked_seconds")
        assert [p.attributes["instrument"] for p in blocked] == [BAD]
        assert blocked[0].value >= 1.0
        heal_at[0] = time.time()
        await eventually(lambda: drained(redis, stream_name), what="stream drained")
    received = server.app.received
    lateness = [
        r.received_at - r.signal.timestamp.timestamp()
        for r in received
        if r.signal.instrument != BAD
    ]
    # The BAD instrument is refused for >= 2.5 s (until healed after the others arrived): a
    # bound below that proves the others never waited for it, with room for a loaded machine.
    assert max(lateness) < 2.0, f"others waited up to {max(lateness):.2f}s"
    assert len(received) == len(bad) + len(others)
    assert len(server.app.keys()) == len(received)
    assert order_by_instrument([r.signal for r in received]) == order_by_instrument(bad + others)
    stalls = [r for r in caplog.records if r.getMessage().startswith("instrument blocked")]
    assert [r.fields["instrument"] for r in stalls] == [BAD]  # type: ignore[attr-defined]


async def test_memory_stays_bounded_whatever_one_instruments_backlog(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """150 signals wait behind a 503 with MAX_IN_FLIGHT 4 and BATCH 5: at most 9 entries in memory, the rest pending in Redis with no extra delivery counted; the others flow; all in order after."""  # noqa: E501
    bad = _bad(150)
    heal_at = _fail_bad_until(server, stream_name, bad)
    others = [make_signal(i, signal_id=f"ok-{i}") for i in range(200) if i % 5][:40]
    await _publish_all(redis, stream_name, bad + others)
    config = _config(
        server, redis_url, stream_name, BRIDGE_MAX_IN_FLIGHT="4", BRIDGE_BATCH_SIZE="5"
    )
    peak = 0
    async with running(
        redis,
        config,
        breaker=Breaker(failure_threshold=NO_BREAKER),
        backoff=Backoff(0.02, 0.1),
    ) as worker:
        deadline = time.monotonic() + 20
        while len(server.app.received) < len(others) and time.monotonic() < deadline:
            peak = max(peak, worker.in_flight)
            await asyncio.sleep(0.002)
        assert len(server.app.received) == len(others)
        assert 1 <= peak <= 4 + 5
        pending: list[dict[str, Any]] = []

        async def only_the_backlog_pending() -> bool:
            pending[:] = await redis.xpending_range(stream_name, "g", "-", "+", 400)
            return len(pending) == len(bad)  # the others' acks are flushed

        await eventually(only_the_backlog_pending, what="the others acked")
        assert {p["times_delivered"] for p in pending} == {1}
        heal_at[0] = time.time()
        await eventually(lambda: drained(redis, stream_name), what="stream drained")
    received = [r.signal for r in server.app.received]
    assert len(received) == len(bad) + len(others)
    assert order_by_instrument(received) == order_by_instrument(bad + others)


async def test_entries_waiting_in_redis_stay_with_their_replica(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A blocked lane's entries wait in Redis, yet a second replica with a short claim idle time never takes them: the first keeps them fresh."""  # noqa: E501
    bad = _bad(20)
    heal_at = _fail_bad_until(server, stream_name, bad)
    await _publish_all(redis, stream_name, bad)
    config = _config(server, redis_url, stream_name, BRIDGE_CLAIM_IDLE_MS="400")
    no_breaker = Breaker(failure_threshold=NO_BREAKER)
    async with running(redis, config, consumer="a", breaker=no_breaker, backoff=Backoff(0.05, 0.1)):
        await eventually(
            lambda: server.app.refusals.get("fault injected", 0) >= 2, what="a retrying"
        )
        async with running(redis, config, consumer="b", breaker=Breaker(NO_BREAKER)) as b:
            for _ in range(8):  # ~5 claim idle times
                await asyncio.sleep(0.25)
                pending = await redis.xpending_range(stream_name, "g", "-", "+", 50)
                assert {p["consumer"] for p in pending} == {b"a"}
                assert len(pending) == len(bad)
            heal_at[0] = time.time()
            await eventually(lambda: drained(redis, stream_name), what="stream drained")
            assert b.stats.delivered == 0
    assert [r.signal.signal_id for r in server.app.received] == [s.signal_id for s in bad]
