"""Wake-ups on the delivery path: room in the window, and the ack loop, each set only when due.

The window wakes whoever waits for room (a whole batch, or one entry) and no one else; the ack
loop is woken by the first id of a burst and still flushes every id buffered after it.
"""

from __future__ import annotations

import asyncio
from typing import Final

from bridge.delivery.acks import Acks
from bridge.delivery.backoff import Backoff
from bridge.delivery.jobs import Job
from bridge.delivery.redis_link import RedisLink
from bridge.delivery.window import Window
from bridge.streams.entries import Entry
from bridge.telemetry.metrics import Metrics

BOUND_S: Final = 2.0


def _jobs(count: int) -> list[Job]:
    return [Job(Entry(f"{n}-0", {})) for n in range(count)]


async def test_a_lane_waiting_for_one_entry_is_woken_by_one_release() -> None:
    """A lane bringing entries back waits for one slot; the first release wakes it."""
    window = Window(max_in_flight=1, batch_size=2)
    jobs = _jobs(3)
    for job in jobs:
        window.hold(job)
    lane = asyncio.create_task(window.wait_for_room(whole_batch=False))
    read = asyncio.create_task(window.wait_for_room())
    await asyncio.sleep(0)
    assert not lane.done()
    assert not read.done()
    window.release(jobs[0])
    assert await asyncio.wait_for(lane, BOUND_S) is True
    await asyncio.sleep(0)
    assert not read.done()  # one slot is not a batch
    window.release(jobs[1])
    assert await asyncio.wait_for(read, BOUND_S) is True


async def test_releases_with_nobody_waiting_still_leave_room_for_a_later_waiter() -> None:
    """Room made while nobody waited is seen by the next waiter at once (it checks first)."""
    window = Window(max_in_flight=1, batch_size=1)
    jobs = _jobs(2)
    for job in jobs:
        window.hold(job)
    blocked = asyncio.create_task(window.wait_for_room())
    await asyncio.sleep(0)
    window.release(jobs[0])  # wakes the batch waiter
    assert await asyncio.wait_for(blocked, BOUND_S) is True
    window.release(jobs[1])  # nobody waits: nothing to wake
    assert await asyncio.wait_for(window.wait_for_room(), BOUND_S) is True
    assert await asyncio.wait_for(window.wait_for_room(whole_batch=False), BOUND_S) is True


async def test_a_cancelled_waiter_is_no_longer_counted() -> None:
    """A waiter cancelled while waiting leaves the window as if it had never waited."""
    window = Window(max_in_flight=1, batch_size=1)
    jobs = _jobs(2)
    for job in jobs:
        window.hold(job)
    waiter = asyncio.create_task(window.wait_for_room())
    await asyncio.sleep(0)
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    window.release(jobs[0])
    again = asyncio.create_task(window.wait_for_room())
    assert await asyncio.wait_for(again, BOUND_S) is True


class _Stream:
    """The one call the plain ack loop makes: XACK, recorded."""

    stream = "signals"

    def __init__(self) -> None:
        self.acked: list[list[str]] = []
        self.flushed = asyncio.Event()

    async def ack(self, ids: list[str]) -> int:
        self.acked.append(list(ids))
        self.flushed.set()
        return len(ids)


async def test_the_ack_loop_flushes_a_burst_and_wakes_again_for_the_next() -> None:
    """Ids added while the loop gathers a burst go in its XACK; a later id wakes it again."""
    stream = _Stream()
    link = RedisLink("signals", Backoff(0.01, 0.01), asyncio.Event(), on_error=lambda: None)
    acks = Acks(stream, link, Metrics(), batch_size=100)  # type: ignore[arg-type] # a fake stream
    loop = asyncio.create_task(acks.loop())
    try:
        for n in range(5):
            acks.add(f"{n}-0")
        await asyncio.wait_for(stream.flushed.wait(), BOUND_S)
        stream.flushed.clear()
        assert stream.acked == [[f"{n}-0" for n in range(5)]]
        acks.add("9-0")
        await asyncio.wait_for(stream.flushed.wait(), BOUND_S)
        assert stream.acked[1] == ["9-0"]
        assert not acks.pending
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
