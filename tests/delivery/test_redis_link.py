"""The Redis retry primitive, the XPENDING pager and the in-flight window, without Redis."""

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Final

import pytest

from bridge.delivery.backoff import Backoff
from bridge.delivery.jobs import Job
from bridge.delivery.redis_link import RedisLink, pending_pages
from bridge.delivery.window import Window
from bridge.errors import StreamError
from bridge.streams.entries import Entry, Pending

# Bound every wait in these tests: a primitive that hangs fails the test instead.
BOUND_S: Final = 2.0
NO_WAIT: Final = Backoff(0.0, 0.0)


def _link(stopped: asyncio.Event, errors: list[int], backoff: Backoff = NO_WAIT) -> RedisLink:
    """A link whose on_error callback counts the errors it was told about."""
    return RedisLink("s", backoff, stopped, on_error=lambda: errors.append(1))


def _failing(times: int, code: str | None = None) -> Callable[[], Awaitable[str]]:
    """An operation that raises StreamError ``times`` times, then answers "ok"."""
    calls = [0]

    async def operation() -> str:
        calls[0] += 1
        if calls[0] <= times:
            raise StreamError("down", code=code)
        return "ok"

    return operation


def _lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "bridge.worker"]


async def test_call_retries_until_redis_answers_and_logs_the_outage_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Three failures: one ERROR line, three re-read requests, then the answer."""
    caplog.set_level(logging.INFO)
    errors: list[int] = []
    link = _link(asyncio.Event(), errors)
    assert await asyncio.wait_for(link.call(_failing(3)), BOUND_S) == "ok"
    assert _lines(caplog) == ["redis unavailable, retrying"]
    assert len(errors) == 3
    assert (link.ok, link.error) == (False, "down")
    link.recovered()
    link.recovered()
    assert _lines(caplog) == ["redis unavailable, retrying", "redis is back"]
    assert (link.ok, link.error) == (True, "")


async def test_a_new_kind_of_refusal_is_logged_again(caplog: pytest.LogCaptureFixture) -> None:
    """The outage log names each change of Redis's error code, and stays quiet otherwise."""
    link = _link(asyncio.Event(), [])
    link.failed(StreamError("oom", code="OOM"))
    link.failed(StreamError("oom", code="OOM"))
    link.failed(StreamError("loading", code="LOADING"))
    assert _lines(caplog) == [
        "redis refused a command (OOM), retrying",
        "redis refused a command (LOADING), retrying",
    ]


async def test_call_gives_up_when_told_and_raises_the_last_error() -> None:
    """give_up(tries) ends the retrying with the StreamError of the last try."""
    link = _link(asyncio.Event(), [])
    with pytest.raises(StreamError):
        await asyncio.wait_for(link.call(_failing(9), give_up=lambda tries: tries >= 2), BOUND_S)


async def test_stop_wakes_a_call_waiting_out_its_backoff() -> None:
    """A worker stopping while Redis is away ends the wait at once, not after the backoff."""
    stopped = asyncio.Event()
    link = _link(stopped, [], Backoff(60.0, 60.0, rand=lambda: 1.0))
    waiting = asyncio.create_task(link.call(_failing(99)))
    await asyncio.sleep(0.05)
    stopped.set()
    with pytest.raises(StreamError):
        await asyncio.wait_for(waiting, BOUND_S)


async def test_no_command_is_sent_after_stop_ends_the_wait() -> None:
    """Stop during the backoff raises the last error without one more try at Redis."""
    stopped = asyncio.Event()
    link = _link(stopped, [], Backoff(60.0, 60.0, rand=lambda: 1.0))
    tries: list[bool] = []

    async def operation() -> str:
        tries.append(stopped.is_set())
        raise StreamError("down")

    waiting = asyncio.create_task(link.call(operation))
    await asyncio.sleep(0.05)
    stopped.set()
    with pytest.raises(StreamError):
        await asyncio.wait_for(waiting, BOUND_S)
    assert tries == [False]


async def test_pending_pages_walks_every_page_and_stops_at_a_short_one() -> None:
    """Each page starts after the last id of the one before; a short page ends the walk."""
    ids = [f"{n}-0" for n in range(1, 8)]
    cursors: list[str] = []

    async def read_page(cursor: str, count: int) -> list[Pending]:
        cursors.append(cursor)
        after = 0 if cursor == "-" else ids.index(cursor.removeprefix("(")) + 1
        return [Pending(i, "c", 0, 1) for i in ids[after : after + count]]

    pages = [[p.id for p in page] async for page in pending_pages(read_page, 3)]
    assert pages == [ids[:3], ids[3:6], ids[6:]]
    assert cursors == ["-", "(3-0", "(6-0"]


async def test_pending_pages_asks_the_size_before_each_page_and_stops_at_zero() -> None:
    """A size callable of 0 (no room, stopping) ends the walk before asking Redis."""
    sizes = iter([2, 0])
    calls: list[int] = []

    async def read_page(cursor: str, count: int) -> list[Pending]:
        calls.append(count)
        return [Pending(f"{n}-0", "c", 0, 1) for n in range(count)]

    pages = [page async for page in pending_pages(read_page, lambda: next(sizes))]
    assert len(pages) == 1
    assert calls == [2]


async def test_the_window_wakes_a_waiter_once_a_whole_batch_fits() -> None:
    """Held entries and reservations fill the window; a release makes room and wakes the read."""
    window = Window(max_in_flight=2, batch_size=2)
    jobs = [Job(Entry(f"{n}-0", {})) for n in range(3)]
    for job in jobs:
        window.hold(job)
    assert window.free() == 1
    waiter = asyncio.create_task(window.wait_for_room())
    await asyncio.sleep(0)
    assert not waiter.done()
    window.release(jobs[0])
    assert await asyncio.wait_for(waiter, BOUND_S) is True
    with window.reserved(2):
        assert window.free() == 0
    assert window.free() == 2
    window.stop()
    assert await window.wait_for_room() is False
