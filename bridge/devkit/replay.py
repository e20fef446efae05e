"""The reference server's replay cache: signatures already accepted, kept for one window.

A signature is acceptable while its ``X-Timestamp`` lies within the tolerance of the server's
clock, so it is remembered until then (``sent_at + tolerance``) and forgotten after: memory
holds at most the signatures accepted in the last two windows (a signature may be sent up to
one tolerance ahead). It is keyed by the decoded signature bytes, never the header text, so no
spelling of the same bytes can pass as new. Several replicas must share one such cache (for
example a Redis ``SET key NX EX``), or a request replayed to another replica is accepted again.
"""

from __future__ import annotations

import heapq
import threading
from dataclasses import dataclass, field

__all__ = ["ReplayCache"]


@dataclass
class ReplayCache:
    """Accepted signatures by their bytes, each until its timestamp leaves the window."""

    _expiry: dict[bytes, float] = field(default_factory=dict, repr=False)
    _queue: list[tuple[float, bytes]] = field(default_factory=list, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __len__(self) -> int:
        with self._lock:
            return len(self._expiry)

    def first_use(self, signature: bytes, *, until: float, now: float) -> bool:
        """Remember ``signature`` until ``until``; False when it is already remembered.

        Entries whose time has passed are dropped first, so memory stays bounded by the
        signatures accepted in the last two windows.
        """
        with self._lock:
            while self._queue and self._queue[0][0] < now:
                expiry, old = heapq.heappop(self._queue)
                if self._expiry.get(old) == expiry:
                    del self._expiry[old]
            if signature in self._expiry:
                return False
            self._expiry[signature] = until
            heapq.heappush(self._queue, (until, signature))
            return True
