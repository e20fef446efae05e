"""A replica SIGKILLed between its POST and its ack leaves no receipt and no ack (real processes).

``signal-bridge run`` runs as a child process with receipts on; the reference ingest server
holds the response to its one POST (the app's fault hook blocks until released), the test kills
the replica with SIGKILL meanwhile, then lets the server store the signal. A second replica
claims the entry, re-sends it (the server answers 409) and writes exactly one receipt.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Mapping
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.streams.producer import publish
from bridge.streams.receipts import receipts, receipts_stream
from tests.procs import Replicas
from tests.support import KEY_ID, SECRET, bridge_env, drained, eventually, make_signal

pytestmark = [pytest.mark.redis, pytest.mark.slow]


async def test_sigkill_between_post_and_ack_leaves_no_receipt_and_the_retry_writes_one(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """Killed while the server holds its answer: entry pending, no receipt; the retry, one."""
    posted = threading.Event()
    release = threading.Event()
    holding = [True]

    def hold(_: Mapping[str, str]) -> int | None:
        if holding[0]:
            holding[0] = False
            posted.set()
            release.wait(30)  # the server holds its answer to the first POST
        return None

    app = IngestApp(secrets={KEY_ID: SECRET.encode()}, fault=hold)
    entry_id = await publish(redis, make_signal(1, signal_id="held"), stream=stream_name)
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:

        def env(consumer: str) -> dict[str, str]:
            return bridge_env(
                url,
                redis_url,
                stream_name,
                BRIDGE_CONSUMER=consumer,
                BRIDGE_RECEIPTS="true",
                BRIDGE_ORDERING="parallel",
                BRIDGE_CLAIM_IDLE_MS="300",
            )

        first = replicas.start("first", env("first"))
        try:
            await eventually(posted.is_set, timeout_s=30, what="the first POST at the server")
            first.send(signal.SIGKILL)
            assert await first.wait(10) == -signal.SIGKILL
        finally:
            release.set()
        await eventually(lambda: len(app.keys()) == 1, what="the held signal stored")
        await asyncio.sleep(0.5)  # long enough for an ack a live replica would have sent
        pending = await redis.xpending_range(stream_name, "g", min="-", max="+", count=10)
        assert [(p["message_id"], p["consumer"]) for p in pending] == [
            (entry_id.encode(), b"first")
        ]
        assert await redis.exists(receipts_stream(stream_name)) == 0

        second = replicas.start("second", env("second"))
        await eventually(lambda: drained(redis, stream_name), what="the retry acked")
        await eventually(
            lambda: _has_receipts(redis, stream_name), what="the retry's receipt", timeout_s=5
        )
        second.send(signal.SIGTERM)
        assert await second.wait(30) == 0, replicas.output()
    written = [r async for r in receipts(redis, stream_name, follow=False)]
    assert [(r.entry_id, r.outcome, r.consumer) for r in written] == [
        (entry_id, "duplicate", "second")
    ]
    assert len(app.received) == 1  # the server stored it once; the retry was answered 409


async def _has_receipts(redis: aioredis.Redis, stream: str) -> bool:
    return int(await redis.xlen(receipts_stream(stream))) > 0
