"""The small things an operator notices first: plain demo output, no nulls, a verdict last."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from bridge.streams.producer import publish
from tests.fixtures_ingest import Server
from tests.ops.test_dlq_purge import _cli
from tests.streams.test_dlq import _env, _letters
from tests.support import bridge_config, drained, eventually, make_signal, running

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.redis
async def test_a_duplicate_line_carries_no_null_server_signal_id(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same signal_id twice: the second line says 'already on the server', without nulls."""
    caplog.set_level(logging.INFO, logger="bridge.worker")
    for _ in range(2):
        await publish(redis, make_signal(1, signal_id="twice-1"), stream=stream_name)
    async with running(redis, bridge_config(server.url, redis_url, stream_name)):
        await eventually(lambda: drained(redis, stream_name), timeout_s=15, what="drained")
    [delivered] = [r for r in caplog.records if r.getMessage() == "signal delivered"]
    [duplicate] = [r for r in caplog.records if r.getMessage() == "signal already on the server"]
    assert delivered.__dict__["fields"]["server_signal_id"].startswith("srv_")
    fields = duplicate.__dict__["fields"]
    assert "server_signal_id" not in fields
    assert "duration_ms" not in fields
    assert fields["http_code"] == 409


def test_the_demo_introduces_its_error_lines_and_ends_with_a_plain_summary() -> None:
    """A line explains the ERRORs before they come; the last line has no Python dict in it."""
    result = subprocess.run(
        [sys.executable, "-m", "bridge", "demo", "--signals", "4"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    intro = next(i for i, line in enumerate(lines) if "some bad on purpose" in line)
    first_error = next(i for i, line in enumerate(lines) if re.match(r"\S+Z ERROR ", line))
    assert intro < first_error
    assert re.fullmatch(
        r"delivered 4, duplicates 1, dead-lettered 3 \(1 expired, 2 invalid\)", lines[-1]
    ), lines[-1]


@pytest.mark.redis
async def test_dlq_show_gives_the_time_written_readably(
    redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """dlq_time_ms is followed by its RFC 3339 time in the text output."""
    _, ids = await _letters(redis, stream_name, ["rejected", "invalid"])
    shown = await _cli("dlq", "show", ids[0], env=_env(redis_url, stream_name))
    line = next(row for row in shown.stdout.splitlines() if "dlq_time_ms" in row)
    assert re.search(r"dlq_time_ms: \d+ \(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\)$", line), line


def test_the_test_script_prints_its_verdict_after_the_coverage_table() -> None:
    """scripts/test.sh: the PASSED / FAILED line comes after `coverage report`, then exit."""
    text = (ROOT / "scripts" / "test.sh").read_text()
    report = text.index(".venv/bin/coverage report")
    assert report < text.index('echo "test.sh: PASSED') < text.rindex('exit "$status"')
    assert report < text.index('echo "test.sh: FAILED')
