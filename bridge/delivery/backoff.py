"""Retry timing: full-jitter exponential backoff for one entry's failures; pure, no I/O.

Backoff is exponential with full jitter (base 0.5 s, cap 30 s by default; settings
BRIDGE_BACKOFF_BASE_MS / BRIDGE_BACKOFF_CAP_MS). When the server sends Retry-After, that *sets*
the wait (capped by BRIDGE_RETRY_AFTER_CAP_SECONDS) instead of a random one. The circuit
breaker lives in :mod:`bridge.delivery.breaker`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Final

from bridge.delivery.breaker import DEFAULT_RETRY_AFTER_CAP_S

__all__ = ["Backoff"]

DEFAULT_BASE_S: Final = 0.5
DEFAULT_CAP_S: Final = 30.0


class Backoff:
    """Full-jitter exponential backoff: sleep uniform(0, min(cap, base * 2**attempt))."""

    def __init__(
        self,
        base_s: float = DEFAULT_BASE_S,
        cap_s: float = DEFAULT_CAP_S,
        *,
        retry_after_cap_s: float = DEFAULT_RETRY_AFTER_CAP_S,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self.base_s = base_s
        self.cap_s = cap_s
        self.retry_after_cap_s = retry_after_cap_s
        self._rand = rand

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry).

        A Retry-After from the server sets the wait exactly (capped); otherwise full jitter.
        """
        if retry_after_s is not None:
            return min(max(0.0, retry_after_s), self.retry_after_cap_s)
        ceiling = min(self.cap_s, self.base_s * float(1 << min(max(0, attempt - 1), 62)))
        return float(self._rand()) * ceiling
