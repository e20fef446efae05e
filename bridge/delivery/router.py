"""Routing of one worker: each entry read, claimed or adopted goes to its instrument's lane.

An entry is decoded once into a job; a poison (delivered too often) or invalid one is
dead-lettered at once, never posted; a valid one joins its lane, which starts a task when it
was idle, or stays parked in Redis while the lane is blocked. Also here: what this worker holds
or has acked (never to be posted again), and the highest id routed so far.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from bridge.delivery.jobs import Job
from bridge.delivery.lanes import Lane, Lanes, Offer
from bridge.delivery.window import Window
from bridge.errors import InvalidSignalError
from bridge.streams.entries import DeadLetter, Entry, StreamId, parse_id

__all__ = ["Router"]


class Router:
    """Routes jobs to lanes and keeps the tasks it starts (lanes, immediate dead letters)."""

    def __init__(
        self,
        window: Window,
        lanes: Lanes[Job],
        *,
        max_deliveries: int,
        prepare: Callable[[Entry], Job],
        unacked: Callable[[], Iterable[str]],
        run_lane: Callable[[str], Coroutine[Any, Any, None]],
        dead_letter_now: Callable[[Job, DeadLetter], Coroutine[Any, Any, None]],
        deferred: Mapping[str, DeadLetter],
    ) -> None:
        self.tasks: set[asyncio.Task[None]] = set()
        self.seen_high: StreamId = (0, 0)  # highest id routed so far (read, claimed, adopted)
        self.abandoned: set[str] = set()  # instruments whose lane stopped with entries left
        self.released: set[str] = set()  # let go after a lane's unexpected error: not touched
        self._window = window
        self._lanes = lanes
        self._max_deliveries = max_deliveries
        self._prepare = prepare
        self._unacked = unacked
        self._run_lane = run_lane
        self._dead_letter_now = dead_letter_now
        # Letters decided earlier whose write was refused, by entry id (read only; usually empty).
        self._deferred = deferred

    def busy(self) -> set[str]:
        """Ids this worker holds or has delivered and not yet acked: never to be posted again."""
        return {*self._window.held, *self._unacked()}

    def dispatch(self, entries: Sequence[Entry]) -> None:
        """Route entries just read or claimed (in id order, so the last is the highest)."""
        if entries:
            self.seen_high = max(self.seen_high, parse_id(entries[-1].id))
        held = self._window.held
        for entry in entries:
            if entry.id not in held:  # a claim and a re-read may both return an entry
                self.route(self._prepare(entry))

    def adopt(self, entries: Iterable[Entry]) -> int:
        """Route own pending entries found unheld; those a blocked lane will fetch stay in Redis.

        Returns how many were routed.
        """
        busy = self.busy()
        adopted = 0
        for entry in entries:
            self.seen_high = max(self.seen_high, parse_id(entry.id))
            if entry.id in busy:
                continue
            job = self._prepare(entry)
            if job.signal is not None and self._lanes.waits_in_redis(
                job.signal.instrument, entry.id
            ):
                continue
            self.route(job)
            adopted += 1
        return adopted

    def route(self, job: Job) -> None:
        """Hold a prepared entry on its lane (starting the lane), or leave it parked in Redis."""
        if self.released:  # usually empty: no call then
            self.released.discard(job.entry.id)
        signal = job.signal
        # dead_letter_at_once's cases read in place first: a usual entry makes no call for them.
        if (
            signal is None or self._deferred or job.entry.deliveries > self._max_deliveries
        ) and self.dead_letter_at_once(job):
            return
        if signal is None:
            return
        if signal.instrument in self.abandoned:
            return  # an earlier entry of it was left pending (stopping, fenced): this one too
        offer = self._lanes.offer(signal.instrument, job)
        if offer is Offer.PARKED:
            return
        self._window.hold(job)
        if offer is Offer.START:
            self.spawn(self._run_lane(signal.instrument))

    def take_back(self, lane: Lane[Job], jobs: list[Job]) -> None:
        """Queue entries a lane brought back from Redis (poison ones are dead-lettered)."""
        for job in jobs:
            if not self.dead_letter_at_once(job):
                self._window.hold(job)
                lane.queue.append(job)

    def dead_letter_at_once(self, job: Job) -> bool:
        """Dead-letter a poison (delivered too often) or invalid entry without posting it.

        An entry whose letter was decided before (the dead-letter stream refused the write)
        gets that letter again: a signal the server rejected is not posted a second time.
        """
        entry = job.entry
        earlier = self._deferred.get(entry.id)
        if earlier is not None:
            letter = earlier
        elif entry.deliveries > self._max_deliveries:
            letter = DeadLetter(
                reason="max_deliveries",
                error=f"delivered {entry.deliveries} times, limit {self._max_deliveries}",
            )
        elif job.signal is None:
            error = job.error or InvalidSignalError("entry could not be decoded")
            letter = DeadLetter(reason=error.reason, error=str(error))
        else:
            return False
        self._window.hold(job)
        self.spawn(self._dead_letter_now(job, letter))
        return True

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Start a lane's (or a dead letter's) task; the drain waits for it."""
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
