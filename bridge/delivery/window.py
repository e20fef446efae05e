"""The in-flight window of one worker: the entries it holds, and the slots promised to reads.

At most ``max_in_flight`` posts plus one batch of read-ahead are held in memory. A read or a
claim reserves its slots before it asks Redis, so two of them cannot overfill the window
together; whoever waits for room is woken by an event when what it needs fits, not by polling.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager

from bridge.delivery.jobs import Job

__all__ = ["Window"]


class Window:
    """Held entries by id, reserved slots, and the two room events (a batch, one entry)."""

    def __init__(self, max_in_flight: int, batch_size: int) -> None:
        self.held: dict[str, Job] = {}
        self._capacity = max_in_flight + batch_size
        self._batch = batch_size
        self._reserved = 0  # window slots promised to a read or claim in progress
        self._stopped = False
        self._room = asyncio.Event()  # set when a whole batch fits (the read loop waits)
        self._room.set()
        self._some_room = asyncio.Event()  # set when one entry fits (a lane bringing back)
        self._some_room.set()
        # Who waits on each event now: a release with nobody waiting sets nothing (no call).
        self._room_waiters = 0
        self._some_room_waiters = 0

    def __len__(self) -> int:
        return len(self.held)

    def free(self) -> int:
        """How many more entries may be held: the posting window plus one batch of read-ahead."""
        return max(0, self._capacity - len(self.held) - self._reserved)

    def stop(self) -> None:
        """Wake every waiter for good: once the worker stops, nothing waits for room."""
        self._stopped = True
        self._room.set()
        self._some_room.set()

    async def wait_for_room(self, *, whole_batch: bool = True) -> bool:
        """Wait until a whole batch (or one entry) fits; False once stopped.

        The read loop waits for a whole batch (few, large reads); a lane bringing its entries
        back from Redis takes what fits, so the read loop cannot starve it.
        """
        need, event = (self._batch, self._room) if whole_batch else (1, self._some_room)
        while not self._stopped and self.free() < need:
            event.clear()
            if whole_batch:
                self._room_waiters += 1
            else:
                self._some_room_waiters += 1
            try:
                await event.wait()
            finally:
                if whole_batch:
                    self._room_waiters -= 1
                else:
                    self._some_room_waiters -= 1
        return not self._stopped

    @contextmanager
    def reserved(self, count: int) -> Iterator[None]:
        """Hold ``count`` slots for a read or claim in progress; give them back after."""
        self.reserve(count)
        try:
            yield
        finally:
            self.unreserve(count)

    def reserve(self, count: int) -> None:
        """Promise ``count`` slots to a read or claim about to start (others see them taken)."""
        self._reserved += count

    def unreserve(self, count: int) -> None:
        """Give back slots promised to a read or claim that has finished."""
        self._reserved -= count
        self.changed()

    def changed(self) -> None:
        """Wake whoever waits for room, once what they need fits."""
        free = self._capacity - len(self.held) - self._reserved  # free(), without its calls
        if free >= self._batch and self._room_waiters:
            self._room.set()
        if free >= 1 and self._some_room_waiters:
            self._some_room.set()

    def hold(self, job: Job) -> None:
        """Keep a job in memory until it is settled or sent back to Redis."""
        self.held[job.entry.id] = job

    def release(self, job: Job) -> None:
        """Let go of a settled job (acked, dead-lettered, or released after an error)."""
        if not job.done:
            job.done = True
            self.held.pop(job.entry.id, None)
            if self._room_waiters or self._some_room_waiters:  # plain reads: once per delivery
                self.changed()

    def send_back(self, jobs: list[Job]) -> None:
        """Drop jobs that stay pending in Redis (a blocked lane's queue), owned by this consumer."""
        for job in jobs:
            self.held.pop(job.entry.id, None)
        self.changed()
