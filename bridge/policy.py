"""Retry timing and the circuit breaker: pure decisions, no I/O, injected randomness.

Backoff is exponential with full jitter (base 0.5 s, cap 30 s) and never shorter than the
server's Retry-After. The breaker opens after several consecutive transient failures (or at once
on an auth failure) and closes on the first success; while open, the consumer stops reading new
entries and lets one attempt at a time probe the server.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable
from typing import Final

__all__ = ["Backoff", "Breaker", "BreakerState"]

DEFAULT_BASE_S: Final = 0.5
DEFAULT_CAP_S: Final = 30.0
DEFAULT_FAILURE_THRESHOLD: Final = 5


class Backoff:
    """Full-jitter exponential backoff: sleep uniform(0, min(cap, base * 2**attempt))."""

    def __init__(
        self,
        base_s: float = DEFAULT_BASE_S,
        cap_s: float = DEFAULT_CAP_S,
        *,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self._rand = rand

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        ceiling = min(self.cap_s, self.base_s * float(1 << min(max(0, attempt - 1), 62)))
        delay = float(self._rand()) * ceiling
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.cap_s * 10))
        return delay


class BreakerState(enum.StrEnum):
    """Closed: normal. Open: the server is failing; probe, do not read new entries."""

    CLOSED = "closed"
    OPEN = "open"


class Breaker:
    """Counts consecutive transient failures; opens at the threshold, closes on success."""

    def __init__(self, failure_threshold: int = DEFAULT_FAILURE_THRESHOLD) -> None:
        self.failure_threshold = failure_threshold
        self.state = BreakerState.CLOSED
        self.consecutive_failures = 0
        self.reason = ""
        self.on_change: Callable[[BreakerState, str], None] | None = None

    @property
    def is_open(self) -> bool:
        """Tell whether reading should pause."""
        return self.state is BreakerState.OPEN

    def success(self) -> None:
        """Record a delivery the server answered; closes an open breaker."""
        self.consecutive_failures = 0
        self._set(BreakerState.CLOSED, "")

    def failure(self, reason: str, *, systemic: bool = False) -> None:
        """Record a transient failure; ``systemic`` (auth, TLS) opens at once."""
        self.consecutive_failures += 1
        if systemic or self.consecutive_failures >= self.failure_threshold:
            self._set(BreakerState.OPEN, reason)

    def _set(self, state: BreakerState, reason: str) -> None:
        if state is not self.state:
            self.state = state
            self.reason = reason
            if self.on_change is not None:
                self.on_change(state, reason)
