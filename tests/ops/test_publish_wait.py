"""``signal-bridge publish --wait`` and ``receipts tail``, run as a user would, against a bridge."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta

import pytest
import redis.asyncio as aioredis

import bridge
from bridge.errors import ReceiptTimeoutError
from bridge.streams.producer import publish, publish_raw
from tests.fixtures_ingest import Server
from tests.ops.test_cli import cli
from tests.support import bridge_config, drained, eventually, make_signal, running

pytestmark = pytest.mark.redis


def _env(redis_url: str, stream: str) -> dict[str, str]:
    return {
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_STREAM": stream,
        "BRIDGE_DLQ_STREAM": f"{stream}:dlq",
    }


def _flags(signal_id: str, *extra: str) -> list[str]:
    return [
        "publish",
        "--instrument",
        "XAUUSD",
        "--side",
        "buy",
        "--entry-price",
        "2000",
        "--risk-percent",
        "1",
        "--signal-id",
        signal_id,
        *extra,
    ]


async def test_publish_wait_exit_codes_follow_the_outcome(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Exit 0 for accepted and duplicate, 1 for dead-lettered or expired, one line per signal."""
    env = _env(redis_url, stream_name)
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_RECEIPTS="true")
    async with running(redis, config):
        ok = await asyncio.to_thread(cli, *_flags("fine", "--wait", "--timeout", "20"), env=env)
        server.app.fault = lambda _: 409
        dup = await asyncio.to_thread(cli, *_flags("dup", "--wait", "--timeout", "20"), env=env)
        server.app.fault = lambda _: 422
        refused = await asyncio.to_thread(
            cli, *_flags("refused", "--wait", "--timeout", "20"), env=env
        )
        server.app.fault = None
        old = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
        expired = await asyncio.to_thread(
            cli, *_flags("old", "--timestamp", old, "--wait", "--timeout", "20"), env=env
        )
        samples = await asyncio.to_thread(
            cli, "publish", "--sample", "3", "--wait", "--timeout", "20", env=env
        )
    assert ok.returncode == 0, ok.stderr
    assert "accepted" in ok.stdout
    assert "server_signal_id=" in ok.stdout
    assert dup.returncode == 0, dup.stderr
    assert "duplicate" in dup.stdout
    assert refused.returncode == 1, refused.stderr
    assert "dead_lettered" in refused.stdout
    assert "reason=rejected" in refused.stdout
    assert expired.returncode == 1, expired.stderr
    assert "expired" in expired.stdout
    assert samples.returncode == 0, samples.stderr
    assert samples.stdout.count("accepted") == 3


async def test_publish_wait_times_out_with_exit_3(redis_url: str, stream_name: str) -> None:
    """With no bridge writing receipts, ``publish --wait --timeout`` exits 3 and says so."""
    result = await asyncio.to_thread(
        cli, *_flags("lonely", "--wait", "--timeout", "0.5"), env=_env(redis_url, stream_name)
    )
    assert result.returncode == 3, result.stdout + result.stderr
    assert "no receipt within 0.5s" in result.stdout
    assert "BRIDGE_RECEIPTS" in result.stderr


async def test_python_publish_wait_returns_the_receipt_or_raises_the_timeout(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """``bridge.publish(..., wait=)`` returns the frozen Receipt, or raises ReceiptTimeoutError."""
    with pytest.raises(ReceiptTimeoutError) as caught:
        await bridge.publish(redis, make_signal(1, signal_id="early"), stream=stream_name, wait=0.2)
    assert len(caught.value.entry_ids) == 1
    assert isinstance(caught.value, TimeoutError)
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_RECEIPTS="true")
    async with running(redis, config):
        receipt = await bridge.publish(
            redis, make_signal(2, signal_id="later"), stream=stream_name, wait=20.0
        )
        await eventually(lambda: drained(redis, stream_name), what="drained")
    assert isinstance(receipt, bridge.Receipt)
    assert receipt.outcome == "accepted"
    assert receipt.signal_id == "later"
    with pytest.raises(AttributeError):
        receipt.outcome = "expired"  # type: ignore[misc]
    followed = [r async for r in bridge.receipts(redis, stream_name, follow=False)]
    assert [r.signal_id for r in followed] == ["early", "later"]


async def test_receipts_tail_filters_and_escapes(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """``receipts tail --outcome`` keeps one outcome; text output escapes control characters."""
    await publish(redis, make_signal(1, signal_id="good"), stream=stream_name)
    await publish_raw(
        redis,
        {"signal": b'{"signal_id":"evil\\u001b[31m","instrument":"X"}'},
        stream=stream_name,
    )
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_RECEIPTS="true")
    async with running(redis, config):
        await eventually(lambda: drained(redis, stream_name), what="drained")
    env = _env(redis_url, stream_name)
    text = await asyncio.to_thread(cli, "receipts", "tail", "--outcome", "dead_lettered", env=env)
    assert text.returncode == 0, text.stderr
    [line] = text.stdout.splitlines()
    assert "\x1b" not in line
    assert "evil\\x1b[31m" in line
    assert "reason=invalid" in line
    as_json = await asyncio.to_thread(cli, "receipts", "tail", "--json", env=env)
    rows = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert sorted(r["outcome"] for r in rows) == ["accepted", "dead_lettered"]
