"""`dlq purge` deletes nothing unconfirmed, filters like `list`, and prints what it deleted.

Also `dlq list` on an empty result, its validated `--count`, its JSON numbers and readable
times, and the hint when an expired letter is replayed without `--allow-expired`. Real Redis,
the real command in a subprocess with no terminal on stdin.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge.streams.deadletters import DeadLetterStore
from tests.streams.test_dlq import _env, _letters

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bridge ARGS`` with stdin from /dev/null (no terminal to confirm on)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "HMAC_"))}
    return subprocess.run(  # noqa: S603 - our own module with fixed arguments
        [sys.executable, "-m", "bridge", *args],
        env={**base, **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


async def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(_run, *args, env=env)


async def test_purge_without_yes_refuses_and_deletes_nothing(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """No --yes and no terminal: exit 2, a line saying how, every dead letter still there."""
    await _letters(redis, stream_name, ["rejected", "expired", "invalid"])
    result = await _cli("dlq", "purge", env=_env(redis_url, stream_name))
    assert result.returncode == 2
    assert "not deleting 3 dead letters without confirmation: add --yes" in result.stderr
    assert await redis.xlen(f"{stream_name}:dlq") == 3


async def test_purge_dry_run_and_filters_delete_only_what_they_print(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """--dry-run changes nothing; --reason with --yes deletes those letters and names each."""
    stream, ids = await _letters(redis, stream_name, ["expired", "rejected", "expired", "invalid"])
    env = _env(redis_url, stream_name)
    dry = await _cli("dlq", "purge", "--reason", "expired", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    assert dry.stdout.count("would delete ") == 2
    assert "dry run: 2 dead letters would be deleted; nothing changed" in dry.stdout
    assert await redis.xlen(f"{stream_name}:dlq") == 4

    done = await _cli("dlq", "purge", "--reason", "expired", "--yes", env=env)
    assert done.returncode == 0, done.stderr
    deleted = [line.split()[1] for line in done.stdout.splitlines() if line.startswith("deleted")]
    assert deleted == [ids[0], ids[2]]
    assert f"purged 2 dead letters from {stream_name}:dlq" in done.stdout
    left = [e.id async for e in DeadLetterStore.of(stream).scan()]
    assert left == [ids[1], ids[3]]

    one = await _cli("dlq", "purge", "--reason", "invalid", "--yes", env=env)
    assert f"purged 1 dead letter from {stream_name}:dlq" in one.stdout


async def test_purge_since_and_before_select_by_the_time_written(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """--before an hour ago matches nothing; --since 10m matches all: the time filters work."""
    await _letters(redis, stream_name, ["rejected", "invalid"])
    env = _env(redis_url, stream_name)
    old = await _cli("dlq", "purge", "--before", "1h", "--yes", env=env)
    assert old.returncode == 0, old.stderr
    assert f"no dead letters to purge in {stream_name}:dlq matching before " in old.stdout
    assert await redis.xlen(f"{stream_name}:dlq") == 2
    later = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    recent = await _cli("dlq", "purge", "--since", "10m", "--before", later, "--yes", env=env)
    assert "purged 2 dead letters" in recent.stdout
    assert await redis.xlen(f"{stream_name}:dlq") == 0


async def test_list_says_when_empty_and_validates_count(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """An empty listing says so; --count 0 or -1 is a usage error naming the option."""
    env = _env(redis_url, stream_name)
    empty = await _cli("dlq", "list", env=env)
    assert empty.returncode == 0
    assert empty.stdout.strip() == f"no dead letters in {stream_name}:dlq"
    for bad in ("0", "-1"):
        refused = await _cli("dlq", "list", "--count", bad, env=env)
        assert refused.returncode == 2
        assert "--count" in refused.stderr
        assert "must be above 0" in refused.stderr


async def test_list_json_has_numbers_and_text_has_a_readable_time(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """JSON counts and times are numbers plus an RFC 3339 dlq_time; text shows that time."""
    await _letters(redis, stream_name, ["rejected", "invalid"])
    env = _env(redis_url, stream_name)
    rows = json.loads((await _cli("dlq", "list", "--json", env=env)).stdout)
    for row in rows:
        assert isinstance(row["dlq_attempts"], int)
        assert isinstance(row["dlq_time_ms"], int)
        assert row["dlq_http_code"] is None
        written = datetime.fromisoformat(row["dlq_time"])
        assert abs((datetime.now(UTC) - written).total_seconds()) < 120
    text = (await _cli("dlq", "list", env=env)).stdout
    assert rows[0]["dlq_time"] in text


async def test_replaying_an_expired_letter_hints_at_allow_expired(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Replaying an 'expired' letter without --allow-expired says it will expire again."""
    await _letters(redis, stream_name, ["expired", "invalid"])
    dry = await _cli(
        "dlq", "replay", "--reason", "expired", "--dry-run", env=_env(redis_url, stream_name)
    )
    assert "it expires again" in dry.stderr
    assert "--allow-expired" in dry.stderr
