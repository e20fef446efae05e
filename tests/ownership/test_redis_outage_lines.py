"""Strict mode says a Redis outage plainly: `redis unavailable` (ERROR), then `redis is back`.

No lease jargon at WARNING or ERROR for a plain outage: the lease lines it causes are INFO.
Redis is reached through a loopback port that nobody serves at first, then a forwarding proxy
to the session's real redis-server.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import uuid

import pytest
import redis.asyncio as aioredis

from bridge.app.runner import coordinator_settings
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.ownership.coordinator import Coordinator
from bridge.ownership.leases import LeaseStore, members_key
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from tests.fault_proxy import FaultProxy
from tests.fixtures_ingest import Server
from tests.support import FAST, bridge_config, eventually, make_signal


@pytest.mark.redis
async def test_strict_mode_logs_redis_unavailable_then_redis_is_back_without_lease_jargon(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis away at start, back 1 s later: one ERROR, one INFO 'redis is back', then delivery."""
    caplog.set_level(logging.INFO, logger="bridge")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    shard = f"away:{{{uuid.uuid4().hex[:8]}}}"
    await publish(redis, make_signal(1), stream=shard)
    config = bridge_config(
        server.url,
        f"redis://127.0.0.1:{port}/0",
        shard,
        BRIDGE_ORDERING="strict",
        BRIDGE_CONSUMER="r1",
        BRIDGE_LEASE_TTL_MS="600",
        BRIDGE_LEASE_RENEW_MS="100",
        BRIDGE_HEARTBEAT_TTL_MS="600",
    )
    cfg = config.stream
    host, _, upstream = redis_url.split("://", 1)[1].split("/", 1)[0].rpartition(":")
    proxy = FaultProxy(host, int(upstream), port=port)
    client_redis = aioredis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    stream = SignalStream(
        client_redis, stream=shard, group=cfg.group, consumer="r1", dlq_stream=f"{shard}:dlq"
    )
    try:
        async with HmacClient(config.outbound) as client:
            coordinator = Coordinator(
                LeaseStore(
                    client_redis, group=cfg.group, members_key=members_key([shard], cfg.group)
                ),
                [stream],
                coordinator_settings(cfg),
                lambda s, fence: Worker(s, client, cfg, backoff=FAST, fence=fence),
            )
            task = asyncio.create_task(coordinator.run())
            try:
                await eventually(
                    lambda: any("redis unavailable" in r.getMessage() for r in caplog.records),
                    timeout_s=5,
                    what="redis unavailable",
                )
                await asyncio.sleep(0.5)  # several heartbeats fail meanwhile
                await proxy.start()
                await eventually(lambda: len(server.app.received) == 1, timeout_s=10, what="sent")
            finally:
                coordinator.stop()
                await asyncio.wait_for(task, 20)
    finally:
        await client_redis.aclose()
        await proxy.aclose()
    lines = [r for r in caplog.records if r.name.startswith("bridge")]
    loud = [r for r in lines if r.levelno >= logging.WARNING]
    assert [(r.levelname, r.getMessage()) for r in loud] == [
        ("ERROR", "redis unavailable, retrying")
    ]
    back = [r for r in lines if r.getMessage() == "redis is back"]
    assert [r.levelname for r in back] == ["INFO"]
    messages = [r.getMessage() for r in lines]
    assert messages.index("redis unavailable, retrying") < messages.index("redis is back")
