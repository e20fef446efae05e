"""The collector's settings for ``signal-bridge run``: start-up frozen, cycles still collected."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from types import SimpleNamespace
from typing import Any

import pytest

from bridge.ops import cli

# Run in a child: the settings are process-wide and must not leak into the test session.
_CHILD = textwrap.dedent(
    """
    import gc
    from bridge.app.heap import settle_heap

    before = gc.get_threshold()
    settle_heap()
    after = gc.get_threshold()
    assert gc.get_freeze_count() > 1000, gc.get_freeze_count()
    assert after == before, (before, after)  # a larger young generation stalled deliveries

    collected = []
    gc.callbacks.append(lambda phase, info: phase == "stop" and collected.append(info["collected"]))
    for _ in range(30_000):  # garbage cycles, dropped at once: only the collector frees them
        a, b = [], []
        a.append(b)
        b.append(a)
    assert sum(collected) > 0, "no cycle was collected without an explicit gc.collect()"
    print("ok", gc.get_freeze_count(), sum(collected))
    """
)


def test_settle_heap_freezes_start_up_and_still_collects_cycles() -> None:
    """After settle_heap, start-up objects are frozen and dropped cycles are still freed."""
    done = subprocess.run(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok ")


def test_run_settles_the_heap_after_start_up_before_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``signal-bridge run`` settles the heap once logging is set up, before the loop runs."""
    calls: list[str] = []
    telemetry = SimpleNamespace(log_level="INFO", log_format="json")
    monkeypatch.setattr(cli, "load_config", lambda path: SimpleNamespace(telemetry=telemetry))
    monkeypatch.setattr(cli, "configure_logging", lambda *a: calls.append("logging"))
    monkeypatch.setattr(cli, "settle_heap", lambda: calls.append("heap"))

    async def fake_run(config: Any) -> None:
        calls.append("run")

    monkeypatch.setattr(cli, "run", fake_run)
    assert cli.main(["run"]) == cli.EXIT_OK
    assert calls == ["logging", "heap", "run"]
