"""`publish` says what it did and refuses or flags the inputs that would go wrong silently."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge.ops.cli import main

_PREFIXES = ("BRIDGE_", "HMAC_", "OUTBOUND_", "OTEL_", "INGEST_", "PRODUCER_ID")
_FLAGS = ["--instrument", "XAUUSD", "--side", "buy", "--entry-price", "2000", "--risk-percent", "1"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No settings from the developer's shell; the root logger restored after main() set it."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def test_sample_with_file_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--sample and --file together: exit 2 naming both, nothing published."""
    signals = tmp_path / "signals.json"
    signals.write_text("[]")
    assert main(["publish", "--sample", "3", "--file", str(signals)]) == 2
    err = capsys.readouterr().err
    assert "give --sample N or --file, not both" in err
    assert err.count("\n") == 1


@pytest.mark.redis
async def test_publish_warns_on_a_stale_timestamp_and_ends_with_a_summary(
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A timestamp past the maximum age is published with a warning; the summary comes last."""
    monkeypatch.setenv("BRIDGE_REDIS_URL", redis_url)
    monkeypatch.setenv("BRIDGE_STREAM", stream_name)
    old = (datetime.now(UTC) - timedelta(hours=1)).isoformat()
    code = await _in_thread(["publish", *_FLAGS, "--timestamp", old, "--signal-id", "late-1"])
    assert code == 0
    out, err = capsys.readouterr()
    assert len(re.findall(r"^\d+-\d+$", out, flags=re.M)) == 1, "one entry id on stdout"
    assert "warning: signal late-1 has timestamp" in err
    assert "past BRIDGE_SIGNAL_MAX_AGE_SECONDS (300 s)" in err
    assert "dead-letter it as expired" in err
    assert err.rstrip().splitlines()[-1] == f"published 1 signal to {stream_name}"
    assert await redis.xlen(stream_name) == 1


@pytest.mark.redis
async def test_sample_summary_counts_signals_and_shards(
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--sample 5 over 8 shards: five ids, no warning, 'published 5 signals to N shards (of 8)'."""
    shards = [f"{stream_name}:{{{i}}}" for i in range(8)]
    monkeypatch.setenv("BRIDGE_REDIS_URL", redis_url)
    monkeypatch.setenv("BRIDGE_STREAMS", ",".join(shards))
    assert await _in_thread(["publish", "--sample", "5"]) == 0
    out, err = capsys.readouterr()
    # (A second main() in one process also logs OpenTelemetry's provider-override lines.)
    assert len(re.findall(r"^\d+-\d+$", out, flags=re.M)) == 5
    used = [s for s in shards if await redis.xlen(s)]
    assert err.strip().splitlines()[-1] == f"published 5 signals to {len(used)} shards (of 8)"
    assert json.dumps(err).count("warning") == 0


async def _in_thread(argv: list[str]) -> int:
    """Run main() off the event loop (it runs its own with asyncio.run)."""
    import asyncio  # noqa: PLC0415 - only here

    return await asyncio.to_thread(main, argv)
