"""Per-instrument scheduling: which entries wait in memory, which wait in Redis.

Each instrument with work has a *lane*: its entries are delivered one at a time in stream
order. While a lane's head is being retried the lane is *blocked*: its later entries leave
memory and wait in Redis (pending, owned by this consumer), so one stuck instrument neither
holds the read window nor grows the process, whatever its backlog. A blocked lane remembers
only where its waiting entries start (``parked_from``, an inclusive stream id); when the head
is done the worker scans its own pending entries from there and brings the instrument's next
entries back, in id order. This module is pure state, no I/O: the worker does the Redis work.
"""

from __future__ import annotations

import enum
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from bridge.streams.entries import StreamId, parse_id

__all__ = [
    "Lane",
    "Lanes",
    "Offer",
    "format_id",
    "next_id",
]

J = TypeVar("J")
_MAX_SEQ: Final = (1 << 64) - 1


def format_id(stream_id: StreamId) -> str:
    """Write a parsed id back as ``<ms>-<seq>``."""
    return f"{stream_id[0]}-{stream_id[1]}"


def next_id(entry_id: str) -> StreamId:
    """Return the smallest id after ``entry_id``: where a scan that has seen it goes on."""
    ms, seq = parse_id(entry_id)
    return (ms + 1, 0) if seq >= _MAX_SEQ else (ms, seq + 1)


class Offer(enum.Enum):
    """What the worker does with a new entry of an instrument."""

    START = "start"  # a new lane: hold the entry and start the lane's task
    QUEUED = "queued"  # hold it at the end of a running lane
    PARKED = "parked"  # leave it in Redis: the lane is blocked or has entries waiting there


@dataclass(slots=True)
class Lane(Generic[J]):
    """One instrument's entries: the ones in memory, and where the ones in Redis start."""

    instrument: str
    queue: deque[J] = field(default_factory=deque)
    parked_from: StreamId | None = None  # entries of this lane with id >= this wait in Redis
    parked: int = 0  # how many were parked and not yet brought back (for logs and gauges)
    blocked_since: float | None = None  # monotonic time the head's first retry began
    warned: bool = False
    scanning: bool = False
    _parked_during_scan: StreamId | None = None

    @property
    def has_parked(self) -> bool:
        """Tell whether entries of this lane wait in Redis."""
        return self.parked_from is not None

    def park(self, entry_id: str) -> None:
        """Record that an entry (and everything after it) waits in Redis."""
        sid = parse_id(entry_id)
        self.parked_from = sid if self.parked_from is None else min(self.parked_from, sid)
        if self.scanning:
            low = self._parked_during_scan
            self._parked_during_scan = sid if low is None else min(low, sid)
        self.parked += 1

    def begin_scan(self) -> StreamId | None:
        """Start bringing parked entries back; returns the first id to look at."""
        self.scanning = True
        self._parked_during_scan = None
        return self.parked_from

    def end_scan(self, continue_from: StreamId, *, exhausted: bool, taken: int) -> None:
        """Finish a scan: continue from ``continue_from``, or stop when nothing waits any more.

        An entry parked while the scan was running may sit below where the scan has reached
        (a reclaimed one): the next scan starts no later than it.
        """
        low = self._parked_during_scan
        self.scanning = False
        self._parked_during_scan = None
        self.parked = max(0, self.parked - taken)
        if exhausted and low is None:
            self.parked_from = None
            self.parked = 0
            return
        self.parked_from = continue_from if low is None else min(continue_from, low)

    def waits_in_redis(self, entry_id: str) -> bool:
        """Tell whether a pending entry of this instrument is one the lane will bring back."""
        return self.parked_from is not None and parse_id(entry_id) >= self.parked_from


class Lanes(Generic[J]):
    """Every lane of one worker, with the decisions that keep memory bounded."""

    def __init__(
        self,
        id_of: Callable[[J], str],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lanes: dict[str, Lane[J]] = {}
        self._id_of = id_of
        self._monotonic = monotonic

    def __len__(self) -> int:
        return len(self._lanes)

    def __iter__(self) -> Iterator[Lane[J]]:
        return iter(list(self._lanes.values()))

    def get(self, instrument: str) -> Lane[J] | None:
        """Return the lane of ``instrument``, or None when it has no work."""
        return self._lanes.get(instrument)

    def offer(self, instrument: str, job: J) -> Offer:
        """Place a new entry: start a lane, queue it in memory, or leave it parked in Redis."""
        lane = self._lanes.get(instrument)
        if lane is None:
            lane = Lane(instrument)
            lane.queue.append(job)
            self._lanes[instrument] = lane
            return Offer.START
        if lane.blocked_since is not None or lane.parked_from is not None:  # has_parked
            lane.park(self._id_of(job))
            return Offer.PARKED
        lane.queue.append(job)
        return Offer.QUEUED

    def block(self, lane: Lane[J]) -> list[J]:
        """Mark a lane blocked (its head is retrying); return the queued jobs to let go of.

        Everything behind the head goes back to Redis (still pending, owned by this consumer);
        only the head stays in memory.
        """
        if lane.blocked_since is None:
            lane.blocked_since = self._monotonic()
        evicted: list[J] = []
        while len(lane.queue) > 1:
            evicted.append(lane.queue.pop())
        evicted.reverse()
        if evicted:
            lane.park(self._id_of(evicted[0]))
            lane.parked += len(evicted) - 1
        return evicted

    def head_done(self, lane: Lane[J]) -> bool:
        """Drop the delivered head; True when the lane had been blocked longer than warned."""
        if lane.queue:
            lane.queue.popleft()
        was_warned = lane.warned
        lane.blocked_since = None
        lane.warned = False
        return was_warned

    def remove(self, lane: Lane[J]) -> None:
        """Forget a lane whose task ended."""
        if self._lanes.get(lane.instrument) is lane:
            del self._lanes[lane.instrument]

    def blocked_for(self) -> list[tuple[str, float]]:
        """(instrument, seconds blocked) of every blocked lane, for the gauge.

        A metric reader may call this from its own thread: it works on a snapshot.
        """
        now = self._monotonic()
        blocked = []
        for lane in tuple(self._lanes.values()):
            since = lane.blocked_since
            if since is not None:
                blocked.append((lane.instrument, now - since))
        return blocked

    def newly_stalled(self, threshold_s: float) -> list[Lane[J]]:
        """Lanes blocked longer than ``threshold_s`` not yet reported; each is reported once."""
        now = self._monotonic()
        stalled = []
        for lane in self._lanes.values():
            since = lane.blocked_since
            if since is not None and not lane.warned and now - since >= threshold_s:
                lane.warned = True
                stalled.append(lane)
        return stalled

    def waits_in_redis(self, instrument: str, entry_id: str) -> bool:
        """Tell whether a pending entry will be brought back by its (blocked) lane."""
        lane = self._lanes.get(instrument)
        return lane is not None and lane.waits_in_redis(entry_id)

    def lowest_parked(self) -> StreamId | None:
        """Return the lowest id any lane has waiting in Redis (where touching starts)."""
        starts = [lane.parked_from for lane in self._lanes.values() if lane.parked_from]
        return min(starts) if starts else None
