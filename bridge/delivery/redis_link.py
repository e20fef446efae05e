"""Redis as one worker sees it: up or down, the outage log, one retry primitive, pending pages.

Every Redis call of the worker that must eventually succeed goes through :meth:`RedisLink.call`
(or, in a loop that rechecks its own conditions between tries, :meth:`RedisLink.after`): the
first failure of an outage is logged, and each change of its kind; then quiet until Redis is
back. Waits end at once when the worker stops, unless a caller must keep its pace (a dead
letter or an ack that may still land). :func:`pending_pages` walks XPENDING one page at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import TypeVar

from bridge.delivery.backoff import Backoff
from bridge.errors import StreamError
from bridge.streams.entries import Pending
from bridge.telemetry.logs import log_fields

__all__ = ["RedisLink", "pending_pages"]

log = logging.getLogger("bridge.worker")

T = TypeVar("T")


class RedisLink:
    """Tracks whether Redis answers one worker's stream, logs its outages, retries calls."""

    def __init__(
        self,
        stream: str,
        backoff: Backoff,
        stopped: asyncio.Event,
        *,
        on_error: Callable[[], None],
    ) -> None:
        self.ok = False
        self.error = ""  # the last Redis error, while Redis is away (for /readyz)
        self.lost_at: float | None = None  # monotonic time the connection last failed (down)
        self._stream = stream
        self._backoff = backoff
        self._stopped = stopped
        self._on_error = on_error  # any error may have eaten a reply: the worker re-reads
        self._logged = False
        self._code: str | None = None

    def failed(self, exc: StreamError) -> None:
        """Log the first failure of an outage, and each change of its kind; quiet until back.

        The line names Redis's error code (OOM, READONLY, LOADING, BUSY ...) and its meaning.
        """
        if not self._logged or exc.code != self._code:
            log.error(
                "redis unavailable, retrying"
                if exc.code is None
                else f"redis refused a command ({exc.code}), retrying",
                extra=log_fields(
                    error=str(exc),
                    stream=self._stream,
                    redis_error=exc.code,
                    meaning=exc.meaning or None,
                ),
            )
            self._logged = True
            self._code = exc.code
        self.ok = False
        self.error = str(exc)
        self.lost_at = time.monotonic() if exc.code is None else None
        self._on_error()

    def recovered(self) -> None:
        """Say "redis is back" once after a logged outage; Redis answers again."""
        if self._logged:
            log.info("redis is back", extra=log_fields(stream=self._stream))
            self._logged = False
        self.ok = True
        self.error = ""
        self.lost_at = None

    def started(self) -> None:
        """Redis answered at start-up: up, and a start-up outage is over without a line."""
        self.ok = True
        self._logged = False

    async def pause(self, seconds: float) -> None:
        """Sleep, but wake at once when the worker stops."""
        if seconds <= 0 or self._stopped.is_set():
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def after(self, exc: StreamError, attempt: int, *, wake_on_stop: bool = True) -> None:
        """Note a failure, then wait the backoff of retry number ``attempt``."""
        self.failed(exc)
        delay = self._backoff.delay(attempt)
        if wake_on_stop:
            await self.pause(delay)
        else:
            await asyncio.sleep(delay)

    async def call(
        self,
        operation: Callable[[], Awaitable[T]],
        *,
        give_up: Callable[[int], bool] | None = None,
        wake_on_stop: bool = True,
    ) -> T:
        """Run ``operation`` until it succeeds; raise its StreamError once ``give_up(tries)``.

        With ``wake_on_stop`` (the default) the worker's stop also ends the retrying: the last
        StreamError is raised instead of waiting for Redis.
        """
        attempt = 0
        while True:
            try:
                return await operation()
            except StreamError as exc:
                attempt += 1
                if (give_up is not None and give_up(attempt)) or (
                    wake_on_stop and self._stopped.is_set()
                ):
                    self.failed(exc)
                    raise
                await self.after(exc, attempt, wake_on_stop=wake_on_stop)
                if wake_on_stop and self._stopped.is_set():
                    raise  # stopped during the wait: no further command after stop


async def pending_pages(
    read_page: Callable[[str, int], Awaitable[list[Pending]]],
    size: int | Callable[[], int],
    start: str = "-",
) -> AsyncGenerator[list[Pending], None]:
    """Yield XPENDING pages from ``start`` on, in id order, until a page comes back short.

    ``read_page(cursor, count)`` reads one page; ``size`` is the page size, or a callable asked
    before each page (0 ends the walk).
    """
    cursor = start
    while True:
        count = size() if callable(size) else size
        if count < 1:
            return
        page = await read_page(cursor, count)
        yield page
        if len(page) < count:
            return
        cursor = f"({page[-1].id}"
