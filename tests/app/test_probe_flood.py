"""Health probes cannot hurt delivery: 500 concurrent /readyz during a drain (issue 21).

A strict-mode replica runs as a child process with a short lease, draining a backlog into the
reference ingest server on 127.0.0.1, while rounds of 500 concurrent /readyz requests hit its
health port. What counts is what the server stored and what Redis holds for the shard's lease.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Final

import pytest
import redis.asyncio as aioredis

from bridge.app.health import HealthServer
from bridge.devkit.embedded import free_port
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.ownership.leases import hash_tagged
from bridge.streams.producer import publish
from tests.fixtures_ingest import Server
from tests.procs import Replicas
from tests.support import (
    KEY_ID,
    SECRET,
    bridge_config,
    bridge_env,
    eventually,
    make_signal,
    running,
)

pytestmark = pytest.mark.redis

SIGNALS: Final = 1500
PROBES: Final = 500
ROUNDS: Final = 6


async def _probe(port: int) -> int:
    """One raw GET /readyz on its own connection; the status code, or 0 without an answer."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (OSError, TimeoutError):
        return 0
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: probe\r\n\r\n")
        await writer.drain()
        status_line = await asyncio.wait_for(reader.readline(), 10)
        return int(status_line.split(b" ")[1]) if status_line else 0
    except (OSError, TimeoutError, ValueError, IndexError):
        return 0
    finally:
        writer.close()


async def test_500_concurrent_readyz_during_a_drain_cost_no_lease_and_no_delivery(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """Every signal is stored once, the shard's lease is never lost (fencing token stays 1)."""
    app = IngestApp(secrets={KEY_ID: SECRET.encode()})
    run = uuid.uuid4().hex[:8]
    health_port = free_port()
    for i in range(SIGNALS):
        await publish(redis, make_signal(i, signal_id=f"{run}-{i}"), stream=stream_name)
    answers: list[int] = []
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        env = bridge_env(
            url,
            redis_url,
            stream_name,
            BRIDGE_ORDERING="strict",
            BRIDGE_LEASE_TTL_MS="1200",
            BRIDGE_LEASE_RENEW_MS="400",
            BRIDGE_HEARTBEAT_TTL_MS="1200",
            BRIDGE_HEALTH_PORT=str(health_port),
            BRIDGE_HEALTH_HOST="127.0.0.1",
            BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
            BRIDGE_LOG_LEVEL="WARNING",
        )
        replica = replicas.start("c1", env)
        deadline = time.monotonic() + 60
        while not app.received:  # the drain has begun
            assert replica.alive, replicas.output()
            assert time.monotonic() < deadline, replicas.output()
            await asyncio.sleep(0.02)
        for _ in range(ROUNDS):
            answers += await asyncio.gather(*(_probe(health_port) for _ in range(PROBES)))
            if len(app.received) >= SIGNALS:
                break
        while len(app.received) < SIGNALS:
            assert replica.alive, replicas.output()
            assert time.monotonic() < deadline, replicas.output()
            await asyncio.sleep(0.05)
        token = await redis.get(f"{hash_tagged(stream_name)}:fence:g")
        stdout = replica.stdout()
    assert len(app.keys()) == SIGNALS == len(app.received)
    assert token == b"1", "the shard's lease was lost and taken again during the flood"
    assert "lease" not in stdout, stdout[-3000:]
    assert (await redis.xpending(stream_name, "g"))["pending"] == 0
    assert all(code in (200, 503) for code in answers), sorted(set(answers))
    assert answers.count(200) > 0


async def _get(port: int, path: str) -> bytes:
    """One raw GET on its own connection; the whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"GET {path} HTTP/1.1\r\nHost: probe\r\n\r\n".encode())
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


async def test_a_connection_past_the_limit_is_answered_busy_at_once() -> None:
    """With the one slot held by a silent client, the next probe gets 503 busy; then 200 again."""
    async with HealthServer(
        list, host="127.0.0.1", port=0, max_connections=1, delivery_enabled=False
    ) as health:
        _, silent = await asyncio.open_connection("127.0.0.1", health.port)
        await asyncio.sleep(0.1)  # the server has accepted it and waits for its request
        busy = await _get(health.port, "/healthz")
        assert busy.startswith(b"HTTP/1.1 503 ")
        assert busy.endswith(b'{"status":"busy"}')
        silent.close()
        deadline = time.monotonic() + 5
        while not (await _get(health.port, "/healthz")).startswith(b"HTTP/1.1 200 "):
            assert time.monotonic() < deadline, "the slot was not given back"
            await asyncio.sleep(0.05)


async def test_metrics_are_rendered_at_most_once_per_interval() -> None:
    """Two scrapes within the cache interval render the Prometheus text once."""
    renders: list[int] = []

    def render() -> bytes:
        renders.append(1)
        return b"signals_up 1\n"

    async with HealthServer(
        list, host="127.0.0.1", port=0, metrics_text=render, delivery_enabled=False
    ) as health:
        first = await _get(health.port, "/metrics")
        second = await _get(health.port, "/metrics")
    assert first.endswith(b"signals_up 1\n")
    assert second.endswith(b"signals_up 1\n")
    assert len(renders) == 1


async def test_readyz_requests_send_no_command_to_redis(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """300 /readyz answers over a second or two cost only the 0.5 s refresh's PINGs and XINFOs."""
    config = bridge_config(server.url, redis_url, stream_name)
    async with running(redis, config) as worker:
        await eventually(worker.ready, what="worker ready")
        async with HealthServer(lambda: [worker], host="127.0.0.1", port=0) as health:
            await redis.config_resetstat()
            started = time.monotonic()
            codes = []
            for _ in range(300):  # over more than a second: the refresh runs a few times
                codes.append(await _probe(health.port))
                await asyncio.sleep(0.004)
            elapsed_s = time.monotonic() - started
            stats = await redis.info("commandstats")
    assert codes == [200] * 300
    refreshes = int(elapsed_s / 0.5) + 2
    for command in ("cmdstat_ping", "cmdstat_xinfo|groups"):
        calls = int(stats.get(command, {}).get("calls", 0))
        assert 1 <= calls <= refreshes, (command, calls, elapsed_s)
