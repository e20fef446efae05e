"""``signal-bridge status`` in strict ordering: each shard's lease holder and fencing token."""

from __future__ import annotations

import json

import pytest
import redis.asyncio as aioredis

from bridge.ownership.leases import LeaseStore
from tests.ops.test_cli import cli

pytestmark = pytest.mark.redis


async def test_status_shows_each_shards_lease_holder_and_token(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A held shard names its consumer, process and token; a free one says free; JSON too."""
    held, free = f"{stream_name}:{{0}}", f"{stream_name}:{{1}}"
    store = LeaseStore(redis, group="signal-bridge", members_key=f"{{{held}}}:m")
    token, _ = await store.acquire(held, "replica-a 5f2c", 60_000)
    assert token == 1
    assert (await store.acquire(held, "replica-b 0000", 60_000))[0] == 0  # held: not taken
    env = {"BRIDGE_REDIS_URL": redis_url, "BRIDGE_STREAMS": f"{held},{free}"}
    text = cli("status", env=env)
    assert text.returncode == 0, text.stderr
    assert "lease         replica-a (process 5f2c), fencing token 1, expires in" in text.stdout
    assert "lease         free (no replica holds this shard)" in text.stdout
    rows = json.loads(cli("status", "--json", env=env).stdout)
    assert rows[0]["lease"]["consumer"] == "replica-a"
    assert rows[0]["lease"]["fencing_token"] == 1
    assert 0 < rows[0]["lease"]["expires_in_ms"] <= 60_000
    assert rows[1]["lease"] is None


async def test_status_in_parallel_mode_shows_no_lease(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Parallel ordering has no leases: no lease line; JSON keeps its one shape, lease null."""
    env = {
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_STREAM": stream_name,
        "BRIDGE_ORDERING": "parallel",
    }
    text = cli("status", env=env)
    assert text.returncode == 0, text.stderr
    assert "lease" not in text.stdout
    rows = json.loads(cli("status", "--json", env=env).stdout)
    assert [(row["stream"], row["lease"]) for row in rows] == [(stream_name, None)]


async def test_status_json_has_one_shape_and_shows_a_missing_group_as_missing(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """One stream or two, JSON is a list of objects with the same keys; no group says so."""
    env = {"BRIDGE_REDIS_URL": redis_url, "BRIDGE_STREAM": stream_name}
    await redis.xadd(stream_name, {"signal": b"{}"})
    one = json.loads(cli("status", "--json", env=env).stdout)
    two_env = {"BRIDGE_REDIS_URL": redis_url, "BRIDGE_STREAMS": f"{stream_name},{stream_name}:b"}
    two = json.loads(cli("status", "--json", env=two_env).stdout)
    assert isinstance(one, list)
    assert isinstance(two, list)
    assert [len(one), len(two)] == [1, 2]
    assert {frozenset(row) for row in one + two} == {frozenset(one[0])}
    assert one[0]["group_exists"] is False
    assert one[0]["lag"] is None
    text = cli("status", env=env).stdout
    assert "group         signal-bridge MISSING (run creates it at BRIDGE_START_ID=$)" in text
    assert "lag           - (no group)" in text
    assert "unknown" not in text
