"""What the log says while the ingest server is down: once at the start, a count per interval.

One :class:`OutageLog` per process, shared by every worker (they all post to the same server):
an outage (the server unreachable, refusing every signal alike, or failing often enough to
open a breaker) gets one ERROR naming the cause (and one more if it turns into a systemic
refusal with another cause), then one WARNING per interval counting the failed attempts, then
one INFO when a signal goes through again. An isolated failed attempt
(the breaker closed, the server reachable) is a WARNING, at most one per interval with the
number of failures since the last one: a flaky server cannot flood the log either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Final

from bridge.core.outcome import Action, TransportFailure
from bridge.edge.results import Failed
from bridge.telemetry.logs import log_fields

__all__ = ["DEFAULT_SUMMARY_INTERVAL_S", "OutageLog"]

log = logging.getLogger("bridge.worker")

DEFAULT_SUMMARY_INTERVAL_S: Final = 60.0
_UNREACHABLE: Final = frozenset({TransportFailure.CONNECT, TransportFailure.CONNECT_TIMEOUT})


def _headline(failed: Failed) -> str:
    """Word the ERROR for the failure that starts an outage, naming its cause."""
    verdict = failed.verdict
    paused = "delivery paused (no ack, no dead letter)"
    if verdict.action is Action.SYSTEMIC:
        return (
            f"ingest server refuses every signal alike: {paused}, probing until it answers; "
            f"likely cause: {verdict.cause}"
        )
    if failed.failure in _UNREACHABLE:
        return (
            f"ingest server unreachable: {paused}, retrying until it answers; cause: "
            f"{failed.cause}; check OUTBOUND_SERVER_URL, that the server runs and the network"
        )
    what = f"HTTP {failed.status}" if failed.status else str(failed.cause)
    return (
        f"ingest server failing: the circuit breaker opened, {paused}, probing until it "
        f"answers; cause: {what}"
    )


class OutageLog:
    """Logs an ingest-server outage once, counts it per interval, and says when it is over."""

    def __init__(
        self,
        *,
        interval_s: float = DEFAULT_SUMMARY_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.interval_s = interval_s if interval_s > 0 else DEFAULT_SUMMARY_INTERVAL_S
        self.clock = clock
        self.in_outage = False
        self._started = 0.0
        self._cause = ""
        self._failed = 0  # failed attempts in this outage
        self._since_line = 0  # failed attempts not yet in a line
        self._last_line: float | None = None

    def failed(self, failed: Failed, *, breaker_open: bool, fields: Mapping[str, object]) -> None:
        """Log (or only count) one failed attempt that will be retried."""
        now = self.clock()
        self._since_line += 1
        if self.in_outage and self._changes_cause(failed):
            # The outage turned into a refusal with a new cause (500s, then 401s): say it once.
            self._failed += 1
            headline = _headline(failed)
            self._cause = headline.rsplit("cause: ", 1)[-1]
            log.error(headline, extra=log_fields(**fields))
            return
        if self.in_outage:
            self._failed += 1
            if self._last_line is None or now - self._last_line >= self.interval_s:
                log.warning(
                    "ingest server still failing: delivery paused",
                    extra=log_fields(
                        failed_attempts=self._since_line,
                        interval_s=round(now - (self._last_line or self._started), 1),
                        outage_s=round(now - self._started, 1),
                        cause=self._cause,
                        http_code=failed.status,
                        error=str(failed.cause),
                    ),
                )
                self._since_line, self._last_line = 0, now
            return
        starts = (
            breaker_open
            or failed.verdict.action is Action.SYSTEMIC
            or failed.failure in _UNREACHABLE
        )
        if starts:
            self.in_outage = True
            self._started = self._last_line = now
            self._failed = 1
            self._since_line = 0
            headline = _headline(failed)
            self._cause = headline.rsplit("cause: ", 1)[-1]
            log.error(headline, extra=log_fields(**fields))
            return
        if self._last_line is None or now - self._last_line >= self.interval_s:
            log.warning(
                "delivery failed, will retry",
                extra=log_fields(**fields, failed_attempts=self._since_line),
            )
            self._since_line, self._last_line = 0, now

    def _changes_cause(self, failed: Failed) -> bool:
        """Tell whether a systemic answer names a cause this outage has not said yet."""
        return failed.verdict.action is Action.SYSTEMIC and failed.verdict.cause not in self._cause

    def recovered(self) -> None:
        """End the outage (a signal went through, the breaker closed) with one INFO line."""
        if not self.in_outage:
            return
        self.in_outage = False
        now = self.clock()
        log.info(
            "ingest server is back: delivery resumed",
            extra=log_fields(
                failed_attempts=self._failed,
                outage_s=round(now - self._started, 1),
                cause=self._cause,
            ),
        )
        self._since_line, self._last_line = 0, None
