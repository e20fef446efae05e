"""The ``signal-bridge`` operator commands, run as a user would run them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge.streams.group import SignalStream
from bridge.streams.producer import publish, publish_raw
from tests.support import make_signal

pytestmark = pytest.mark.redis

ROOT = Path(__file__).resolve().parents[2]


def cli(
    *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bridge ARGS`` with only the given settings; capture its output."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "HMAC_", "OUTBOUND_", "OTEL_", "INGEST_"))
    }
    return subprocess.run(  # noqa: S603 - our own module with fixed arguments
        [sys.executable, "-m", "bridge", *args],
        env={**base, **(env or {})},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _env(redis_url: str, stream: str) -> dict[str, str]:
    return {
        "BRIDGE_REDIS_URL": redis_url,
        "BRIDGE_STREAM": stream,
        "BRIDGE_DLQ_STREAM": f"{stream}:dlq",
    }


@pytest.mark.slow
def test_demo_delivers_and_explains_every_sample() -> None:
    """`signal-bridge demo` exits 0 and reports deliveries, a duplicate and each dead letter."""
    result = cli("demo", "--signals", "8")
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.count("delivered as srv_") == 8
    assert "duplicate: the server already had it" in out
    assert "dead-lettered: expired" in out
    assert out.count("dead-lettered: invalid") == 2
    assert "delivered 8, duplicates 1, dead-lettered 3" in out


@pytest.mark.slow
def test_demo_runs_on_fakeredis_without_redis_server(tmp_path: Path) -> None:
    """With no redis-server on PATH the demo falls back to fakeredis (with Lua) and still works."""
    empty_path = tmp_path / "bin"
    empty_path.mkdir()
    result = cli("demo", "--signals", "4", env={"PATH": str(empty_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert out.startswith("redis: fakeredis at redis://127.0.0.1:")
    assert out.count("delivered as srv_") == 4
    assert "dead-lettered: expired" in out
    assert out.count("dead-lettered: invalid") == 2
    assert "unknown command" not in result.stdout + result.stderr


async def test_publish_from_flags_file_and_samples(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """`publish` writes canonical signals from flags, a JSON file, JSON lines and --sample."""
    env = _env(redis_url, stream_name)
    flags = cli(
        "publish",
        "--instrument",
        "XAUUSD",
        "--side",
        "buy",
        "--entry-price",
        "2000",
        "--take-profit",
        "2010",
        "--stop-loss",
        "1990",
        "--risk-percent",
        "1",
        "--signal-id",
        "flag-1",
        "--timestamp",
        "2026-11-28T10:00:00Z",
        env=env,
    )
    assert flags.returncode == 0, flags.stderr
    listed = tmp_path / "signals.json"
    listed.write_text(
        json.dumps(
            [
                {
                    "instrument": "EURUSD",
                    "side": "sell",
                    "entry_price": 1.1,
                    "risk_percent": 2,
                    "strategy_name": "s",
                    "timestamp": "2026-11-28T10:00:00+01:00",
                },
            ]
        )
    )
    assert cli("publish", "--file", str(listed), env=env).returncode == 0
    lines = tmp_path / "signals.jsonl"
    lines.write_text(
        '{"instrument":"BTCUSD","side":"buy","entry_price":5,"risk_percent":1,"strategy_name":"s","timestamp":"2026-11-28T10:00:00Z"}\n'
        '{"instrument":"US500","side":"sell","entry_price":5,"risk_percent":1,"strategy_name":"s","timestamp":"2026-11-28T10:00:00Z"}\n'
    )
    assert cli("publish", "--file", str(lines), env=env).returncode == 0
    assert cli("publish", "--sample", "3", env=env).returncode == 0
    entries: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(stream_name)  # type: ignore[assignment]
    assert len(entries) == 7
    first = json.loads(entries[0][1][b"signal"])
    assert first["signal_id"] == "flag-1"
    assert first["timestamp"] == "2026-11-28T10:00:00.000000Z"
    second = json.loads(entries[1][1][b"signal"])
    assert second["timestamp"] == "2026-11-28T09:00:00.000000Z"


def test_publish_refuses_an_invalid_signal_with_a_clear_message(
    redis_url: str, stream_name: str
) -> None:
    """A buy whose take-profit is below entry exits 2 naming the option; nothing is written."""
    result = cli(
        "publish",
        "--instrument",
        "XAUUSD",
        "--side",
        "buy",
        "--entry-price",
        "2000",
        "--take-profit",
        "1990",
        "--risk-percent",
        "1",
        env=_env(redis_url, stream_name),
    )
    assert result.returncode == 2
    assert "--take-profit: take_profit must be above entry_price" in result.stderr


def test_run_refuses_bad_settings_naming_the_variable(redis_url: str) -> None:
    """A too-short secret stops `run` with exit 2 and the variable's name, not the value."""
    result = cli(
        "run",
        env={
            "BRIDGE_REDIS_URL": redis_url,
            "OUTBOUND_SERVER_URL": "https://x.example",
            "HMAC_PRODUCER_SECRET": "short-pw",
        },
    )
    assert result.returncode == 2
    assert "HMAC_PRODUCER_SECRET" in result.stderr
    assert "short-pw" not in result.stderr


async def test_status_and_dlq_commands(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """`status` shows lag, pending and dead letters; dlq list, replay and purge work on them."""
    env = _env(redis_url, stream_name)
    stream = SignalStream(
        redis,
        stream=stream_name,
        group="signal-bridge",
        consumer="ops",
        dlq_stream=f"{stream_name}:dlq",
    )
    await stream.ensure_group("0")
    await publish(redis, make_signal(1, now=datetime.now(UTC)), stream=stream_name)
    await publish_raw(redis, {"signal": b"{broken"}, stream=stream_name)
    entries = await stream.read(10, None)
    from bridge.streams.entries import DeadLetter  # noqa: PLC0415 - built by hand for this test

    await stream.dead_letter(entries[1], DeadLetter(reason="invalid", error="broken JSON"))

    text = cli("status", env=env)
    assert text.returncode == 0, text.stderr
    assert f"stream        {stream_name} (2 entries)" in text.stdout
    assert "pending       1" in text.stdout
    assert "dead letters  1" in text.stdout
    assert "consumer ops: 1 pending" in text.stdout
    [status] = json.loads(cli("status", "--json", env=env).stdout)
    assert (status["lag"], status["pending"], status["dead_letters"]) == (0, 1, 1)
    assert status["oldest_pending_age_ms"] >= 0

    listing = cli("dlq", "list", "--reason", "invalid", env=env)
    assert "invalid" in listing.stdout
    assert "broken JSON" in listing.stdout
    rows = json.loads(cli("dlq", "list", "--json", env=env).stdout)
    assert [row["dlq_reason"] for row in rows] == ["invalid"]
    assert cli("dlq", "replay", env=env).returncode == 2
    replay = cli("dlq", "replay", "--all", env=env)
    assert replay.returncode == 0
    assert "->" in replay.stdout
    assert await redis.xlen(f"{stream_name}:dlq") == 0
    assert await redis.xlen(stream_name) == 3
    await stream.dead_letter(entries[0], DeadLetter(reason="rejected", error="no"))
    purge = cli("dlq", "purge", "--yes", env=env)
    assert "purged 1" in purge.stdout
    assert await redis.xlen(f"{stream_name}:dlq") == 0


def test_version_and_help() -> None:
    """--version prints the package version; a missing command is a usage error."""
    assert cli("--version").stdout.startswith("signal-bridge ")
    assert cli().returncode == 2
