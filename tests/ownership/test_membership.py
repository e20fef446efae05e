"""Membership follows the leases: a replica whose Redis is too slow to keep leases is passed over.

The heartbeat script against the private redis-server, and two coordinators, one of them behind
a delay proxy to Redis (its commands arrive late, none lost).
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
import redis.asyncio as aioredis

from bridge.ownership.leases import LeaseStore
from tests.delay_proxy import delay_proxy
from tests.fixtures_ingest import Server
from tests.ownership.test_fenced_takeover import _config, _replica
from tests.support import eventually

pytestmark = pytest.mark.redis


async def test_a_member_that_is_not_assignable_is_passed_over_unless_nobody_is(
    redis: aioredis.Redis, stream_name: str
) -> None:
    """Standby members stay live but get no shards while an assignable member is live."""
    store = LeaseStore(redis, group="g", members_key=f"{{{stream_name}}}:replicas:g")
    assert await store.heartbeat("r1", 300, assignable=False) == ["r1"]  # alone: assigned
    assert await store.heartbeat("r2", 5000) == ["r2"]
    assert await store.heartbeat("r1", 300) == ["r2"]  # a later "assignable" lifts no mark
    await asyncio.sleep(0.35)  # r1's mark (and its liveness) expired
    assert await store.heartbeat("r1", 5000) == ["r1", "r2"]
    assert await store.heartbeat("r2", 5000, assignable=False) == ["r1"]
    await store.leave("r2")
    assert await redis.zrange(store.standby_key, 0, -1) == []


async def test_a_replica_whose_redis_commands_arrive_late_is_passed_over_without_flapping(
    server: Server, redis: aioredis.Redis, redis_url: str
) -> None:
    """r1's commands 2 s late with a 1.5 s lease: r2 holds both shards and keeps them."""
    base = f"t:{uuid.uuid4().hex[:8]}"
    shards = f"{base}:{{0}},{base}:{{1}}"
    async with delay_proxy(redis_url) as slow:
        leases = {
            "BRIDGE_LEASE_TTL_MS": "1500",
            "BRIDGE_LEASE_RENEW_MS": "300",
            "BRIDGE_HEARTBEAT_TTL_MS": "1500",
        }
        r1_config = _config(server.url, slow.url("redis"), shards, "r1", **leases)
        r2_config = _config(server.url, redis_url, shards, "r2", **leases)
        async with (
            _replica(slow.url("redis"), r1_config, socket_timeout_s=10.0) as r1,
            _replica(redis_url, r2_config) as r2,
        ):
            await eventually(
                lambda: len(r1.owned) == 1 and len(r2.owned) == 1, timeout_s=10, what="1 + 1"
            )
            slow.delay_s = 2.0
            await eventually(lambda: len(r2.owned) == 2, timeout_s=10, what="r2 holds both")
            assert not r1.assignable
            standby = r2.leases.standby_key

            async def said_standby() -> bool:
                return await redis.zscore(standby, "r1") is not None

            await eventually(said_standby, timeout_s=8, what="r1's late heartbeat: standby")
            held_since = time.monotonic()
            while time.monotonic() - held_since < 2.0:  # the delay goes on: no shard moves back
                assert len(r2.owned) == 2
                await asyncio.sleep(0.05)
            slow.delay_s = 0.0
            await eventually(
                lambda: len(r1.owned) == 1 and len(r2.owned) == 1,
                timeout_s=10,
                what="back to 1 + 1",
            )
