"""Redis fixtures: a private redis-server per session, or REDIS_URL when set.

A real Redis is what the consumer-group tests need (pending entries, claims, acks). The session
starts its own ``redis-server`` on a free loopback port when the binary exists (never 6379);
``REDIS_URL`` points the suite at another server instead. With neither, the Redis tests are
skipped with a message saying what is missing, except under CI, where that is an error.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis

from bridge.devkit.embedded import redis_server
from bridge.streams.group import SignalStream


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """URL of a real Redis for this test session."""
    if os.environ.get("REDIS_URL"):
        yield os.environ["REDIS_URL"]
        return
    if shutil.which("redis-server") is None:
        message = (
            "no real Redis: install redis-server (apt-get install redis-server) "
            "or set REDIS_URL=redis://host:port/db"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with redis_server() as (url, _):
        yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    """A redis-py asyncio client on the session's Redis."""
    client = aioredis.Redis.from_url(redis_url, decode_responses=False)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def stream_name() -> str:
    """A stream name no other test uses, so tests share one server safely."""
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def signal_stream(redis: aioredis.Redis, stream_name: str) -> SignalStream:
    """A SignalStream for consumer ``c1`` of group ``g`` on a fresh stream."""
    return SignalStream(
        redis, stream=stream_name, group="g", consumer="c1", dlq_stream=f"{stream_name}:dlq"
    )
