"""What the bridge tells its operator while it runs: progress and the drain.

* :class:`ProgressSummary` logs one INFO line every ``BRIDGE_SUMMARY_INTERVAL_SECONDS`` while
  work flows (delivered, duplicates, dead letters by reason, retries, lag, oldest pending age),
  and stays quiet while idle, so a draining backlog shows progress without a line per signal.
* :class:`DrainReport` logs the line on SIGTERM and the line when the drain has ended.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from bridge.streams.entries import GroupStatus
from bridge.telemetry.logs import log_fields

__all__ = ["Counts", "DrainReport", "ProgressSummary"]

log = logging.getLogger("bridge.feedback")


class Counts(Protocol):
    """The counters a worker keeps since start (``bridge.delivery.worker.WorkerStats``)."""

    delivered: int
    duplicates: int
    dead_lettered: dict[str, int]
    retries: int


def _snapshot(counts: Counts) -> tuple[int, int, dict[str, int], int]:
    return counts.delivered, counts.duplicates, dict(counts.dead_lettered), counts.retries


class ProgressSummary:
    """Logs what one stream's worker did in the last interval, while it does anything."""

    def __init__(
        self,
        stream: str,
        counts: Counts,
        status: Callable[[], GroupStatus | None],
        interval_s: float = 10.0,
    ) -> None:
        self.stream = stream
        self.counts = counts
        self.status = status
        self.interval_s = interval_s
        self._last = _snapshot(counts)

    def emit(self) -> bool:
        """Log the summary of the interval just ended; False (and no line) when idle."""
        now = _snapshot(self.counts)
        delivered, duplicates, dead, retries = (
            now[0] - self._last[0],
            now[1] - self._last[1],
            {
                k: v - self._last[2].get(k, 0)
                for k, v in now[2].items()
                if v != self._last[2].get(k)
            },
            now[3] - self._last[3],
        )
        self._last = now
        if not (delivered or duplicates or dead or retries):
            return False
        status = self.status()
        age_ms = status.oldest_pending_age_ms if status is not None else None
        log.info(
            "progress",
            extra=log_fields(
                stream=self.stream,
                interval_s=self.interval_s,
                delivered=delivered,
                duplicates=duplicates,
                dead_lettered=dead,
                retries=retries,
                lag=status.lag if status is not None else None,
                pending=status.pending if status is not None else None,
                oldest_pending_age_s=None if age_ms is None else round(age_ms / 1000, 3),
                delivered_total=now[0],
            ),
        )
        return True

    async def run(self) -> None:
        """Emit every ``interval_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.interval_s)
            self.emit()


class DrainReport:
    """The SIGTERM line and the drain-finished line, with how long the drain took."""

    def __init__(self, grace_s: float) -> None:
        self.grace_s = grace_s
        self._since: float | None = None

    def stopping(self, signal_name: str, in_flight: int) -> None:
        """Log that a stop signal arrived and what happens next."""
        if self._since is None:
            self._since = time.monotonic()
        log.info(
            f"{signal_name} received: stopped reading, finishing in-flight deliveries",
            extra=log_fields(signal=signal_name, in_flight=in_flight, grace_s=self.grace_s),
        )

    def finished(self, counts: Sequence[Counts], left_pending: int) -> None:
        """Log the end of the drain: totals, and what stays pending for another replica."""
        elapsed = None if self._since is None else round(time.monotonic() - self._since, 3)
        dead: dict[str, int] = {}
        for c in counts:
            for reason, n in c.dead_lettered.items():
                dead[reason] = dead.get(reason, 0) + n
        log.info(
            "drain finished",
            extra=log_fields(
                drain_s=elapsed,
                delivered_total=sum(c.delivered for c in counts),
                duplicates_total=sum(c.duplicates for c in counts),
                dead_lettered_total=_sorted(dead),
                left_pending=left_pending,
            ),
        )


def _sorted(values: Mapping[str, int]) -> dict[str, int]:
    return dict(sorted(values.items()))
