"""An ingest-server outage is said once, as an ERROR naming its cause, then counted per interval.

Unit cases drive :class:`OutageLog` on an injected clock; the end-to-end cases run a real Worker
against the reference server refusing with 401, and against a loopback port nobody listens on.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

import pytest
import redis.asyncio as aioredis

from bridge.config.loader import BridgeConfig
from bridge.core.outcome import Action, TransportFailure, Verdict
from bridge.delivery.outages import OutageLog
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.edge.results import Failed
from bridge.errors import TransientDeliveryError
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from tests.fixtures_ingest import Server
from tests.support import FAST, bridge_config, drained, eventually, fast_breaker, make_signal

_REFUSED = Failed(
    verdict=Verdict(Action.TRANSIENT),
    status=None,
    retry_after_s=None,
    cause=TransientDeliveryError("cannot connect to the ingest server: connection refused"),
    failure=TransportFailure.CONNECT,
)
_BUSY = Failed(
    verdict=Verdict(Action.TRANSIENT),
    status=503,
    retry_after_s=None,
    cause=TransientDeliveryError("HTTP 503 from the ingest server"),
)


def _worker_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "bridge.worker"]


def _field(record: logging.LogRecord, name: str) -> object:
    fields: Mapping[str, object] = record.__dict__.get("fields", {})
    return fields.get(name)


def test_an_unreachable_server_gives_one_error_then_one_count_per_interval(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """100 refused attempts over 10 s, interval 3 s: 1 ERROR, 3 summaries counting the rest."""
    caplog.set_level(logging.INFO, logger="bridge.worker")
    now = [0.0]
    outages = OutageLog(interval_s=3.0, clock=lambda: now[0])
    for i in range(100):
        now[0] = i * 0.1
        outages.failed(_REFUSED, breaker_open=i >= 5, fields={"entry_id": f"{i}-0"})
    outages.recovered()
    lines = _worker_lines(caplog)
    errors = [r for r in lines if r.levelno == logging.ERROR]
    assert [r.getMessage().split(":")[0] for r in errors] == ["ingest server unreachable"]
    assert "connection refused" in errors[0].getMessage()
    summaries = [r for r in lines if r.levelno == logging.WARNING]
    assert [r.getMessage() for r in summaries] == [
        "ingest server still failing: delivery paused"
    ] * 3
    counted = [_field(r, "failed_attempts") for r in summaries]
    assert counted == [30, 30, 30]
    [back] = [r for r in lines if r.levelno == logging.INFO]
    assert back.getMessage() == "ingest server is back: delivery resumed"
    assert _field(back, "failed_attempts") == 100


def test_isolated_failures_warn_at_most_once_per_interval_with_a_count(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A flaky server (503s, breaker closed): one WARNING per interval, carrying the count."""
    caplog.set_level(logging.INFO, logger="bridge.worker")
    now = [0.0]
    outages = OutageLog(interval_s=5.0, clock=lambda: now[0])
    for i in range(20):
        now[0] = float(i)
        outages.failed(_BUSY, breaker_open=False, fields={"entry_id": f"{i}-0"})
    lines = _worker_lines(caplog)
    assert {r.levelno for r in lines} == {logging.WARNING}
    assert [r.getMessage() for r in lines] == ["delivery failed, will retry"] * 4
    assert [_field(r, "failed_attempts") for r in lines] == [1, 5, 5, 5]


def test_a_new_outage_after_recovery_gets_its_own_error(caplog: pytest.LogCaptureFixture) -> None:
    """Two outages separated by a delivery: two ERRORs, two INFO lines saying it is back."""
    caplog.set_level(logging.INFO, logger="bridge.worker")
    outages = OutageLog(interval_s=60.0, clock=lambda: 0.0)
    for _ in range(2):
        for _ in range(10):
            outages.failed(_REFUSED, breaker_open=True, fields={})
        outages.recovered()
    levels = [r.levelname for r in _worker_lines(caplog)]
    assert levels == ["ERROR", "INFO", "ERROR", "INFO"]


@asynccontextmanager
async def _worker(
    redis: aioredis.Redis, config: BridgeConfig, outages: OutageLog
) -> AsyncIterator[Worker]:
    cfg = config.stream
    stream = SignalStream(
        redis, stream=cfg.stream, group=cfg.group, consumer=cfg.consumer, dlq_stream=cfg.dlq_stream
    )
    async with HmacClient(config.outbound) as client:
        worker = Worker(stream, client, cfg, backoff=FAST, breaker=fast_breaker(), outages=outages)
        task = asyncio.create_task(worker.run())
        try:
            yield worker
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)


@pytest.mark.redis
async def test_a_refusing_server_logs_one_error_naming_401_then_summaries_then_back(
    server: Server, redis: aioredis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """401 for 1.2 s: one ERROR naming credentials, counted summaries, no per-attempt lines."""
    caplog.set_level(logging.DEBUG)
    stream_name = f"outage:{uuid.uuid4().hex[:8]}"
    until = time.monotonic() + 1.2
    server.app.fault = lambda headers: 401 if time.monotonic() < until else None
    for i in range(3):
        await publish(redis, make_signal(i), stream=stream_name)
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_SIGNAL_MAX_AGE_SECONDS="0")
    async with _worker(redis, config, OutageLog(interval_s=0.3)) as worker:
        await eventually(lambda: drained(redis, stream_name), timeout_s=15, what="drained")
    lines = _worker_lines(caplog)
    errors = [r for r in lines if r.levelno == logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "credentials or clock" in errors[0].getMessage()
    assert _field(errors[0], "http_code") == 401
    summaries = [r for r in lines if r.getMessage().startswith("ingest server still failing")]
    assert summaries, "the outage lasted several intervals"
    counted = sum(int(str(_field(r, "failed_attempts"))) for r in summaries)
    assert 1 <= counted < worker.stats.retries
    assert not [r for r in lines if r.getMessage() == "delivery failed, will retry"]
    assert not [
        r for r in caplog.records if r.name == "bridge.client" and r.levelno >= logging.WARNING
    ]
    [back] = [r for r in lines if r.getMessage() == "ingest server is back: delivery resumed"]
    assert _field(back, "failed_attempts") == worker.stats.retries
    assert len(server.app.received) == 3


@pytest.mark.redis
async def test_a_closed_port_logs_one_error_naming_the_connection(
    redis: aioredis.Redis, redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Nobody listens on the port: one ERROR 'unreachable' for many refused attempts."""
    caplog.set_level(logging.INFO)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stream_name = f"outage:{uuid.uuid4().hex[:8]}"
    await publish(redis, make_signal(1), stream=stream_name)
    config = bridge_config(f"http://127.0.0.1:{port}", redis_url, stream_name)
    async with _worker(redis, config, OutageLog(interval_s=60.0)) as worker:
        await eventually(lambda: worker.stats.retries >= 10, timeout_s=10, what="10 attempts")
    lines = _worker_lines(caplog)
    assert [r.levelname for r in lines if r.levelno >= logging.WARNING] == ["ERROR"]
    message = next(r.getMessage() for r in lines if r.levelno == logging.ERROR)
    assert message.startswith("ingest server unreachable"), message
    assert "cannot connect" in message
    others = [
        r for r in caplog.records if r.name.startswith("bridge.") and r.name != "bridge.worker"
    ]
    assert not [r for r in others if r.levelno >= logging.WARNING], "the client says nothing loud"
