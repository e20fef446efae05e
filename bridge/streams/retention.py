"""Retention that loses nothing: trim the source stream below what every group still needs.

With ``BRIDGE_TRIM_ACKED=true`` each replica runs one :class:`Retention` per stream. Every
``BRIDGE_TRIM_INTERVAL_SECONDS`` it asks Redis (one script, see
:meth:`bridge.streams.group.SignalStream.trim_acked`) for the lowest id that any consumer
group of the stream, ours or another, still needs, and XTRIMs MINID there. Replicas trimming at
once is harmless: the same floor, or a higher one, is computed each time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from bridge.errors import StreamError
from bridge.streams.entries import TrimResult
from bridge.streams.group import SignalStream
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics

__all__ = ["Retention"]

log = logging.getLogger("bridge.retention")

# Entries removed per script call (Redis is blocked while it runs: under 10 ms per call here,
# see bench/README.md) and calls per pass (a pass trims at most 100 x 10,000 = 1 M entries).
TRIM_CHUNK: Final = 10_000
MAX_CALLS_PER_PASS: Final = 100


class Retention:
    """Trims one stream at an interval; errors are logged once per outage and retried."""

    def __init__(
        self,
        stream: SignalStream,
        metrics: Metrics,
        interval_s: float = 10.0,
        *,
        chunk: int = TRIM_CHUNK,
    ) -> None:
        self.stream = stream
        self.metrics = metrics
        self.interval_s = interval_s
        self.chunk = chunk
        self.trimmed = 0
        self._failing = False

    async def trim_once(self) -> TrimResult:
        """Run one pass now: trim in bounded chunks (Redis serves others between them), count."""
        total = 0
        result = TrimResult(0, None)
        for _ in range(MAX_CALLS_PER_PASS):
            result = await self.stream.trim_acked(self.chunk)
            total += result.trimmed
            if not result.trimmed:  # a call may stop short of the limit at a node boundary
                break
            await asyncio.sleep(0)
        if total:
            self.trimmed += total
            self.metrics.trimmed_total.add(total, {"stream": self.stream.stream})
            log.debug(
                "trimmed acknowledged entries",
                extra=log_fields(stream=self.stream.stream, trimmed=total, min_id=result.min_id),
            )
        return TrimResult(total, result.min_id)

    async def run(self) -> None:
        """Trim every ``interval_s`` until cancelled."""
        log.info(
            "retention on: trimming entries every consumer group has read and acked",
            extra=log_fields(stream=self.stream.stream, interval_s=self.interval_s),
        )
        while True:
            try:
                await self.trim_once()
                self._failing = False
            except StreamError as exc:
                if not self._failing:
                    log.warning(
                        "could not trim the stream; retrying",
                        extra=log_fields(stream=self.stream.stream, error=str(exc)),
                    )
                self._failing = True
            await asyncio.sleep(self.interval_s)
