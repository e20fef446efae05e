"""Slots: the hot path's counting semaphore bounds holders, serves waiters in order, leaks none."""

from __future__ import annotations

import asyncio

import pytest

from bridge.edge.slots import Slots


async def _hold(slots: Slots, order: list[int], tag: int, release: asyncio.Event) -> None:
    await slots.take()
    order.append(tag)
    try:
        await release.wait()
    finally:
        slots.give()


async def test_no_more_holders_than_slots() -> None:
    """With two slots, a third taker waits until one is given back."""
    slots = Slots(2)
    assert slots.try_take()
    assert slots.try_take()
    assert not slots.try_take()
    third = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    assert not third.done()
    slots.give()
    await asyncio.wait_for(third, 1.0)
    assert slots.free == 0


async def test_waiters_are_served_first_come_first_served() -> None:
    """Waiters get slots in the order they asked, and a newcomer cannot jump the line."""
    slots = Slots(1)
    release = asyncio.Event()
    order: list[int] = []
    assert slots.try_take()
    tasks = [asyncio.create_task(_hold(slots, order, tag, release)) for tag in range(3)]
    await asyncio.sleep(0)
    slots.give()
    assert not slots.try_take()  # the slot went to the first waiter, not to the free count
    release.set()
    await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    assert order == [0, 1, 2]
    assert slots.free == 1


async def test_cancelled_waiter_leaves_no_slot_behind() -> None:
    """A waiter cancelled before its turn is skipped, and the next one gets the slot."""
    slots = Slots(1)
    assert slots.try_take()
    gone = asyncio.create_task(slots.take())
    after = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    gone.cancel()
    with pytest.raises(asyncio.CancelledError):
        await gone
    slots.give()
    await asyncio.wait_for(after, 1.0)
    slots.give()
    assert slots.free == 1


async def test_waiter_cancelled_after_the_handoff_passes_the_slot_on() -> None:
    """A waiter handed a slot but cancelled before it ran gives the slot back, not loses it."""
    slots = Slots(1)
    assert slots.try_take()
    waiter = asyncio.create_task(slots.take())
    await asyncio.sleep(0)
    slots.give()  # handed over; the waiter has not resumed yet
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert slots.free == 1
    assert slots.try_take()


def test_size_must_be_positive() -> None:
    """A pool of no slots is refused at once rather than deadlocking its first taker."""
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
