"""The asyncio task gauge that the soak reads to see whether a replica leaks tasks."""

from __future__ import annotations

import asyncio

from tests.fixtures_ingest import MetricsCapture, metric_points


def _tasks(capture: MetricsCapture) -> float:
    [point] = metric_points(capture.reader, "signals_asyncio_tasks")
    return float(point.value)


async def test_task_gauge_follows_the_tasks_of_the_event_loop(
    metrics_capture: MetricsCapture,
) -> None:
    """Five more tasks read as five more; once they end the gauge is back where it was."""
    metrics_capture.metrics.observe_event_loop(asyncio.get_running_loop())
    before = _tasks(metrics_capture)
    sleepers = [asyncio.create_task(asyncio.sleep(30)) for _ in range(5)]
    assert _tasks(metrics_capture) == before + 5
    for task in sleepers:
        task.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)
    assert _tasks(metrics_capture) == before
