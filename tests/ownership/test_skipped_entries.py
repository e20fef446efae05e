"""Strict mode (the default) warns about, and counts, the entries a new '$' group skips.

The shard takeover creates the group before the worker; it, not the worker, must report the
entries already in the stream, as parallel mode does. Real Redis, the reference server.
"""

from __future__ import annotations

import asyncio
import logging
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
from tests.fixtures_ingest import MetricsCapture, Server
from tests.support import FAST, bridge_config, eventually, make_signal


@pytest.mark.redis
async def test_strict_mode_warns_and_counts_the_entries_a_new_group_skips(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    metrics_capture: MetricsCapture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Six entries before the first start at '$': one WARNING with skipped=6, the counter at 6."""
    shard = f"skip:{{{uuid.uuid4().hex[:8]}}}"
    for i in range(6):
        await publish(redis, make_signal(i), stream=shard)
    config = bridge_config(
        server.url,
        redis_url,
        shard,
        BRIDGE_ORDERING="strict",
        BRIDGE_START_ID="$",
        BRIDGE_CONSUMER="r1",
        BRIDGE_LEASE_TTL_MS="600",
        BRIDGE_LEASE_RENEW_MS="100",
        BRIDGE_HEARTBEAT_TTL_MS="600",
    )
    cfg = config.stream
    stream = SignalStream(
        redis, stream=shard, group=cfg.group, consumer=cfg.consumer, dlq_stream=f"{shard}:dlq"
    )
    caplog.set_level(logging.WARNING, logger="bridge")
    async with HmacClient(config.outbound) as client:
        coordinator = Coordinator(
            LeaseStore(redis, group=cfg.group, members_key=members_key([shard], cfg.group)),
            [stream],
            coordinator_settings(cfg),
            lambda s, fence: Worker(s, client, cfg, backoff=FAST, fence=fence),
            metrics=metrics_capture.metrics,
        )
        task = asyncio.create_task(coordinator.run())
        try:
            await eventually(lambda: shard in coordinator.owned, timeout_s=5, what="shard owned")
        finally:
            coordinator.stop()
            await asyncio.wait_for(task, 20)
    warnings = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert warnings[0].__dict__["fields"]["skipped"] == 6
    points = metrics_capture.counter("signals_skipped_total")
    assert [(p.attributes, p.value) for p in points] == [({"stream": shard}, 6)]
    assert server.app.received == []
