"""The circuit breaker: stop hammering a failing server, and resume the moment it is back.

Closed, every lane posts freely; a run of ``failure_threshold`` consecutive transient failures,
or one systemic answer (401, a redirect, a wrong URL, TLS), opens it. Open, at most one attempt
at a time is let through as a *probe*, at most every ``probe_interval_s``, or after the
server's Retry-After (capped at ``retry_after_cap_s``) when it gave one. The first answer that
is not a failure closes it, and every lane waiting in :meth:`Breaker.admit` or sleeping in
:meth:`Breaker.wait` is woken at once by an event, not by polling, so no lane keeps sleeping
on a backoff the server's return made moot. :meth:`Breaker.stop` (SIGTERM) wakes every waiter:
from then on nobody waits for a probe or a backoff, :meth:`Breaker.admit` answers None instead.

The decisions (:meth:`Breaker.try_admit`, :meth:`Breaker.failure`, :meth:`Breaker.success`)
are synchronous and read an injected clock, so they are tested without sockets or sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections.abc import Callable
from typing import Final

__all__ = [
    "DEFAULT_FAILURE_THRESHOLD",
    "DEFAULT_PROBE_INTERVAL_S",
    "DEFAULT_RETRY_AFTER_CAP_S",
    "Admission",
    "Breaker",
    "BreakerState",
]

DEFAULT_FAILURE_THRESHOLD: Final = 5
DEFAULT_PROBE_INTERVAL_S: Final = 1.0
DEFAULT_RETRY_AFTER_CAP_S: Final = 60.0


class BreakerState(enum.StrEnum):
    """Closed: normal. Open: the server is failing; probe, do not read new entries."""

    CLOSED = "closed"
    OPEN = "open"


class Admission(enum.Enum):
    """What :meth:`Breaker.admit` lets a lane do next."""

    POST = "post"  # the breaker is closed: post freely
    PROBE = "probe"  # the breaker is open and this lane holds the one probe


class Breaker:
    """Counts consecutive failures, opens, lets one probe through at a time, closes on success."""

    def __init__(
        self,
        failure_threshold: int = DEFAULT_FAILURE_THRESHOLD,
        *,
        probe_interval_s: float = DEFAULT_PROBE_INTERVAL_S,
        retry_after_cap_s: float = DEFAULT_RETRY_AFTER_CAP_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.probe_interval_s = probe_interval_s
        self.retry_after_cap_s = retry_after_cap_s
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.reason = ""
        self.on_change: Callable[[BreakerState, str], None] | None = None
        self._clock = clock
        self._probing = False
        self._next_probe_at = 0.0
        self._stopped = False
        self._changed = asyncio.Event()

    @property
    def is_open(self) -> bool:
        """Tell whether reading should pause."""
        return self.state is BreakerState.OPEN

    @property
    def next_probe_in_s(self) -> float:
        """Seconds until the next probe may start (0 when closed or due)."""
        if not self.is_open:
            return 0.0
        return max(0.0, self._next_probe_at - self._clock())

    def success(self) -> None:
        """Record an answer that is not a failure; closes an open breaker and wakes every lane."""
        self.consecutive_failures = 0
        if self.state is not BreakerState.CLOSED:  # closed already (every delivery): no call
            self._set(BreakerState.CLOSED, "")

    def failure(
        self, reason: str, *, systemic: bool = False, retry_after_s: float | None = None
    ) -> None:
        """Record a failure; open at the threshold (at once when ``systemic``).

        While open, every failure schedules the next probe: after ``retry_after_s`` when the
        server asked for it (capped), else after the probe interval.
        """
        self.consecutive_failures += 1
        if self.is_open or systemic or self.consecutive_failures >= self.failure_threshold:
            wait_s = (
                self.probe_interval_s
                if retry_after_s is None
                else min(max(0.0, retry_after_s), self.retry_after_cap_s)
            )
            self._next_probe_at = self._clock() + wait_s
            self._set(BreakerState.OPEN, reason)
            self.reason = reason  # while open: the latest failure's reason (/readyz shows it)
            self._notify()

    def try_admit(self) -> Admission | None:
        """Decide now: POST when closed, PROBE when open and a probe is due, else None.

        Once stopped, an open breaker admits nothing, not even a due probe.
        """
        if not self.is_open:
            return Admission.POST
        if self._stopped:
            return None
        if not self._probing and self._clock() >= self._next_probe_at:
            self._probing = True
            return Admission.PROBE
        return None

    def probe_done(self) -> None:
        """Give back the probe after its outcome was recorded (success or failure)."""
        self._probing = False
        self._notify()

    async def admit(self) -> Admission | None:
        """Wait until this lane may post (closed) or probe (open, due); None: stopped while open."""
        while True:
            admission = self.try_admit()
            if admission is not None or self._stopped:
                return admission
            timeout = None if self._probing else max(0.0, self._next_probe_at - self._clock())
            await self._wait_change(timeout)

    async def wait(self, seconds: float) -> None:
        """Sleep up to ``seconds``; wake early when the breaker opens, closes or stops."""
        if seconds <= 0 or self._stopped:
            await asyncio.sleep(0)
            return
        await self._wait_change(seconds)

    def stop(self) -> None:
        """Wake every waiter; from now on nothing waits for a probe or a backoff (SIGTERM)."""
        self._stopped = True
        self._notify()

    async def _wait_change(self, timeout: float | None) -> None:
        """Sleep until the next state change (or ``timeout``); the event is never polled."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)

    def _notify(self) -> None:
        """Wake everyone waiting on the current generation; later waiters get a fresh event."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _set(self, state: BreakerState, reason: str) -> None:
        """Change state, wake every lane on closing, and tell ``on_change``."""
        if state is not self.state:
            self.state = state
            self.reason = reason
            if state is BreakerState.CLOSED:
                self._notify()
            if self.on_change is not None:
                self.on_change(state, reason)
