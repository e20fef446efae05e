"""A counting semaphore for the delivery hot path: posting slots and pooled connections.

``asyncio.Semaphore`` costs about seven Python calls per acquire and release (``async with``,
``locked()`` and its generator, ``_wake_up_next``) even when a slot is free; every delivery
takes two. Here a free slot is taken by one plain method call and given back by another; a
waiter is woken first-come first-served and handed the slot directly, as asyncio's does.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque

__all__ = ["Slots"]


class Slots:
    """At most ``size`` holders at once; ``try_take()``, else ``await take()``; then ``give()``."""

    __slots__ = ("_free", "_waiters")

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("size must be at least 1")
        self._free = size
        self._waiters: deque[asyncio.Future[None]] = deque()

    def __repr__(self) -> str:
        return f"Slots(free={self._free}, waiting={len(self._waiters)})"

    @property
    def free(self) -> int:
        """Slots nobody holds (0 while anyone waits)."""
        return self._free

    def try_take(self) -> bool:
        """Take a slot when one is free and nobody waits before us; False otherwise."""
        if self._free and not self._waiters:
            self._free -= 1
            return True
        return False

    async def take(self) -> None:
        """Take a slot, waiting in line for one; a cancelled waiter leaves no slot behind."""
        if self.try_take():
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()  # handed a slot just as we were cancelled: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        """Give a slot back: to the first live waiter, else to the free count."""
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
