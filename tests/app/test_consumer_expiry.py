"""A running replica removes the consumer names that old pods left in its groups (issue 24)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge.devkit.ingest import IngestApp, serve_in_thread
from tests.procs import Replicas
from tests.support import KEY_ID, SECRET, bridge_env, eventually

pytestmark = pytest.mark.redis


async def _consumers(redis: aioredis.Redis, stream: str) -> dict[str, int]:
    """Consumer name -> entries it holds."""
    return {c["name"].decode(): int(c["pending"]) for c in await redis.xinfo_consumers(stream, "g")}


async def test_a_replica_removes_old_pods_consumers_and_keeps_its_own_and_busy_ones(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """A running replica removes an old, empty consumer; one still holding an entry stays."""
    await redis.xgroup_create(stream_name, "g", id="$", mkstream=True)
    await redis.xgroup_createconsumer(stream_name, "g", "signal-bridge-old-pod")
    # A dead pod's consumer still holding an entry (a signal it read and never acked).
    await redis.xadd(stream_name, {"signal": b"{not json"})
    await redis.xreadgroup("g", "signal-bridge-dead-pod", {stream_name: ">"}, count=1)
    app = IngestApp(secrets={KEY_ID: SECRET.encode()})
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        env = bridge_env(
            url,
            redis_url,
            stream_name,
            BRIDGE_CONSUMER="signal-bridge-new-pod",
            BRIDGE_ORDERING="parallel",
            BRIDGE_CONSUMER_EXPIRE_SECONDS="1",
            # Long enough that the dead pod's entry is not claimed while the test looks.
            BRIDGE_CLAIM_IDLE_MS="600000",
        )
        replica = replicas.start("new-pod", env)
        await eventually(
            lambda: _gone(redis, stream_name, "signal-bridge-old-pod"),
            timeout_s=30,
            what="the old pod's consumer to be removed",
        )
        assert replica.alive, replicas.output()
        consumers = await _consumers(redis, stream_name)
        replica.send(signal.SIGTERM)
        assert await replica.wait(30) == 0, replicas.output()
        stdout = replica.stdout()
    assert consumers["signal-bridge-dead-pod"] == 1
    assert "signal-bridge-new-pod" in consumers
    lines = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    removed = [line for line in lines if line["message"] == "idle consumer removed from the group"]
    assert [(r["level"], r["consumer"]) for r in removed] == [("INFO", "signal-bridge-old-pod")]


async def _gone(redis: aioredis.Redis, stream: str, consumer: str) -> bool:
    return consumer not in await _consumers(redis, stream)
