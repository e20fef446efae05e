"""A running bridge for the operator's pictures: Redis, the reference server, one replica.

The replica is ``signal-bridge run`` in strict ordering over two shards (a child process,
tests/procs.py) against the reference ingest server in a thread of the test. The server answers
503 to one signal for its first seconds (a retry and a blocked lane) and 422 to another (a
dead letter); one raw entry that is not a signal is dead-lettered too. The server has already
accepted fencing token STALE_FENCE on the second shard, so the replica's first POSTs there are
fenced (a stale lease) until it takes the shard again above that token. ``traffic`` publishes all
of that and waits, bounded, until the group is drained.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import redis.asyncio as aioredis

from bridge.delivery.jobs import idempotency_key
from bridge.devkit.embedded import free_port
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.streams.producer import publish
from tests.procs import Replica, Replicas
from tests.support import KEY_ID, SECRET, bridge_env, eventually, make_signal

__all__ = ["BLOCKED_FOR_S", "STALE_FENCE", "Rig", "running_bridge"]

SHARDS: Final = 2
SIGNALS: Final = 30
BLOCKED_FOR_S: Final = 3.0
PRODUCER: Final = "producer-dash"
STALE_FENCE: Final = 1000


@dataclass
class Rig:
    """What a test needs of the running bridge: its shards, Redis, metrics URL and process."""

    shards: list[str]
    redis_url: str
    redis: aioredis.Redis
    metrics_port: int
    replica: Replica
    replicas: Replicas
    env: Mapping[str, str]

    @property
    def metrics_url(self) -> str:
        """The replica's /metrics address."""
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    async def drained(self) -> bool:
        """Tell whether every shard's group has read and settled everything (lag and pending 0)."""
        for shard in self.shards:
            groups = await self.redis.xinfo_groups(shard)
            if not groups or groups[0]["pending"] or groups[0].get("lag"):
                return False
        return True

    async def traffic(self) -> None:
        """Publish signals (one retried, one refused), one invalid entry; wait until drained."""
        for i in range(SIGNALS):
            item = make_signal(i, instrument=f"SYM{i % 6}", signal_id=f"dash-{i}")
            await publish(self.redis, item, stream=self.shards)
        await self.redis.xadd(self.shards[0], {b"signal": b"{not a signal"})
        await eventually(
            self.drained, timeout_s=30, interval_s=0.1, what=f"drained\n{self.replicas.output()}"
        )


class _Faults:
    """The server's faults: 503 to one signal for a few seconds, 422 to another, always."""

    def __init__(self) -> None:
        self.retried = idempotency_key("", "", "dash-1")
        self.refused = idempotency_key("", "", "dash-2")
        self.until = 0.0

    def __call__(self, headers: Mapping[str, str]) -> int | None:
        key = headers.get("x-idempotency-key")
        if key == self.retried:
            if not self.until:
                self.until = time.monotonic() + BLOCKED_FOR_S
            return 503 if time.monotonic() < self.until else None
        return 422 if key == self.refused else None


@contextlib.asynccontextmanager
async def running_bridge(redis_url: str, tmp_path: Path) -> AsyncIterator[Rig]:
    """Start the reference server and one strict-mode replica; yield once /metrics answers."""
    run = uuid.uuid4().hex[:8]
    shards = [f"dash:{run}:{{{i}}}" for i in range(SHARDS)]
    app = IngestApp(secrets={KEY_ID: SECRET.encode()})
    app.fault = _Faults()
    app.fences.highest[(PRODUCER, shards[1])] = STALE_FENCE
    port = free_port()
    redis = aioredis.Redis.from_url(redis_url)
    try:
        with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
            env = bridge_env(
                url,
                redis_url,
                shards[0],
                BRIDGE_STREAMS=",".join(shards),
                BRIDGE_CONSUMER="dash-1",
                PRODUCER_ID=PRODUCER,
                BRIDGE_ORDERING="strict",
                BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
                BRIDGE_STATUS_INTERVAL_SECONDS="0.5",
                BRIDGE_HEALTH_PORT=str(port),
                BRIDGE_LEASE_TTL_MS="2000",
                BRIDGE_LEASE_RENEW_MS="300",
                BRIDGE_HEARTBEAT_TTL_MS="2000",
            )
            replica = replicas.start("dash-1", env)
            rig = Rig(shards, redis_url, redis, port, replica, replicas, env)

            async def metrics_up() -> bool:
                assert replica.alive, replica.output()
                try:
                    async with httpx.AsyncClient() as http:
                        return (await http.get(rig.metrics_url)).status_code == 200
                except httpx.HTTPError:
                    return False

            await eventually(metrics_up, timeout_s=30, interval_s=0.1, what="/metrics")
            yield rig
    finally:
        await redis.aclose()
