"""Builders shared by the consumer tests: signals, configs, and waiting with a bound."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, Final

import redis.asyncio as aioredis
from opentelemetry import trace

from bridge.config.loader import BridgeConfig, load_config
from bridge.core.signal import Signal
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Breaker
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.streams.group import SignalStream
from bridge.telemetry.metrics import Metrics

SECRET: Final = "test-secret-0123456789abcdef"
KEY_ID: Final = "k1"
INSTRUMENTS: Final = ("XAUUSD", "EURUSD", "BTCUSD", "US500", "GBPJPY")
# Backoff for tests: retries after a millisecond or so, so retry tests run in milliseconds.
FAST: Final = Backoff(0.001, 0.01)
# Probe interval of the breaker in tests: an open breaker probes every few milliseconds.
FAST_PROBE_S: Final = 0.005


def fast_breaker(threshold: int = 5) -> Breaker:
    """A breaker that probes every few milliseconds, so outage tests run quickly."""
    return Breaker(threshold, probe_interval_s=FAST_PROBE_S)


def make_signal(i: int = 0, *, now: datetime | None = None, **overrides: Any) -> Signal:
    """A valid signal; ``i`` varies the instrument, side and signal_id."""
    instrument = INSTRUMENTS[i % len(INSTRUMENTS)]
    buy = i % 2 == 0
    fields: dict[str, Any] = {
        "instrument": instrument,
        "side": "buy" if buy else "sell",
        "entry_price": 100.0 + i % 7,
        "take_profit": (110.0 if buy else 90.0) + i % 7,
        "stop_loss": (95.0 if buy else 105.0) + i % 7,
        "risk_percent": 1.0,
        "comment": f"n={i}",
        "strategy_name": "test-strategy",
        "timestamp": now or datetime.now(UTC),
        "signal_id": f"sig-{i}",
    }
    fields.update(overrides)
    return Signal(**fields)


def bridge_env(server_url: str, redis_url: str, stream: str, **extra: str) -> dict[str, str]:
    """The environment of a bridge replica pointed at test services."""
    env = {
        "HMAC_PRODUCER_SECRET": SECRET,
        "HMAC_PRODUCER_KEY_ID": KEY_ID,
        "PRODUCER_ID": "test-producer",
        "OUTBOUND_SERVER_URL": server_url,
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_STREAM": stream,
        "BRIDGE_DLQ_STREAM": f"{stream}:dlq",
        "BRIDGE_GROUP": "g",
        "BRIDGE_CONSUMER": "c1",
        "BRIDGE_START_ID": "0",
        "BRIDGE_BLOCK_MS": "50",
        "BRIDGE_HEALTH_PORT": "0",
    }
    env.update(extra)
    return env


def bridge_config(server_url: str, redis_url: str, stream: str, **extra: str) -> BridgeConfig:
    """A validated config for an in-process Worker."""
    return load_config(env=bridge_env(server_url, redis_url, stream, **extra))


async def eventually(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    timeout_s: float = 20.0,
    interval_s: float = 0.02,
    what: str = "condition",
) -> None:
    """Poll ``check`` until true; fail the test with ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        await asyncio.sleep(interval_s)


@asynccontextmanager
async def running(
    redis: aioredis.Redis,
    config: BridgeConfig,
    *,
    consumer: str | None = None,
    breaker: Breaker | None = None,
    metrics: Metrics | None = None,
    tracer: trace.Tracer | None = None,
    backoff: Backoff = FAST,
    redis_backoff: Backoff | None = None,
) -> AsyncIterator[Worker]:
    """Run a Worker in the background for the body of the block, then stop it (bounded)."""
    cfg = config.stream
    stream = SignalStream(
        redis,
        stream=cfg.stream,
        group=cfg.group,
        consumer=consumer or cfg.consumer,
        dlq_stream=cfg.dlq_stream,
    )
    async with HmacClient(config.outbound, metrics=metrics, tracer=tracer) as client:
        worker = Worker(
            stream,
            client,
            cfg,
            metrics=metrics,
            tracer=tracer,
            backoff=backoff,
            breaker=breaker if breaker is not None else fast_breaker(),
            redis_backoff=redis_backoff,
        )
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)


async def drained(redis: aioredis.Redis, stream: str) -> bool:
    """Everything read by the (only) group and acked or dead-lettered: lag 0, pending 0."""
    groups = await redis.xinfo_groups(stream)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


def order_by_instrument(signals: Iterable[Signal]) -> dict[str, list[str | None]]:
    """The signal_ids of each instrument in the order given (compare sent with received)."""
    order: dict[str, list[str | None]] = {}
    for signal in signals:
        order.setdefault(signal.instrument, []).append(signal.signal_id)
    return order
