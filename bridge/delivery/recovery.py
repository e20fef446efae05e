"""Pending recovery of one worker: nothing pending is forgotten, nothing is posted twice here.

Four ways back to entries already pending in the group, all without counting a delivery
(XPENDING + XRANGE) except the claim: own entries left by an earlier run (at start), own
entries whose read reply was lost (after any Redis error), entries idle on other consumers
(the claim loop, every tenth of BRIDGE_CLAIM_IDLE_MS), and a blocked lane's next entries (the
refetch, in id order, once its head is done). Entries held or acked here are never taken again.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final

from bridge.delivery.jobs import Job, instrument_of
from bridge.delivery.lanes import Lane, format_id, next_id
from bridge.delivery.redis_link import RedisLink, pending_pages
from bridge.delivery.window import Window
from bridge.errors import StreamError
from bridge.streams.entries import Entry, Pending, StreamId, parse_id
from bridge.streams.group import SignalStream
from bridge.telemetry.logs import log_fields

__all__ = ["Recovery"]

log = logging.getLogger("bridge.worker")

# Own pending entries examined per XPENDING page when a lane, a re-read or the claim scan looks.
_SCAN_PAGE: Final = 200


@dataclass(slots=True)
class _Scan:
    """Where a lane's scan of own pending entries has got to, and what it found."""

    cursor: StreamId
    found: list[Job] = field(default_factory=list)
    exhausted: bool = False


class Recovery:
    """Finds pending entries this worker should deliver and hands them to its router."""

    def __init__(
        self,
        stream: SignalStream,
        window: Window,
        link: RedisLink,
        *,
        batch_size: int,
        claim_idle_ms: int,
        busy: Callable[[], set[str]],
        gone: Callable[[list[str]], None],
        dispatch: Callable[[Sequence[Entry]], None],
        adopt: Callable[[Iterable[Entry]], int],
        prepare: Callable[[Entry], Job],
        take_back: Callable[[Lane[Job], list[Job]], None],
        seen_high: Callable[[], StreamId],
        stopping: Callable[[], bool],
        may_claim: Callable[[], bool],
        fence_closed: Callable[[], bool],
    ) -> None:
        self.reread = False  # a Redis error happened: re-read own pending before new entries
        self._stream = stream
        self._window = window
        self._link = link
        self._batch_size = batch_size
        self._claim_idle_ms = claim_idle_ms
        self._busy = busy  # ids held or acked here: never to be posted again
        self._gone = gone  # ids deleted from the stream while pending: acked away
        self._dispatch = dispatch
        self._adopt = adopt
        self._prepare = prepare
        self._take_back = take_back
        self._seen_high = seen_high
        self._stopping = stopping
        self._may_claim = may_claim  # not stopping, breaker closed, group there
        self._fence_closed = fence_closed

    async def resume_own_pending(self) -> None:
        """Re-deliver what this consumer name left pending in an earlier run."""
        after = "0"
        while await self._window.wait_for_room():
            try:
                entries, gone = await self._stream.read_own_pending(after, self._batch_size)
            except StreamError as exc:
                await self._link.after(exc, 1)
                continue
            self._gone(gone)
            if not entries:
                if not gone:
                    return
                after = gone[-1]
                continue
            log.info(
                "resuming own pending entries",
                extra=log_fields(count=len(entries), consumer=self._stream.consumer),
            )
            after = max(entries[-1].id, gone[-1] if gone else "0", key=parse_id)
            self._dispatch(entries)

    async def reread_own_pending(self) -> None:
        """Deliver own pending entries nobody here holds, in id order, before reading new ones.

        A read or claim whose reply was lost (timeout, reset) left entries pending on this
        consumer that it never saw. XPENDING + XRANGE find them without counting a delivery;
        those a blocked lane will bring back, and those delivered and waiting for their XACK,
        are left alone. Raises StreamError (the flag stays set: it is tried again).
        """
        self.reread = False
        adopted = 0
        pages = pending_pages(self._own_pending_to_end, _SCAN_PAGE)
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    adopted += self._adopt(await self._fetch_unheld(page))
        except StreamError:
            self.reread = True
            raise
        if adopted:
            log.warning(
                "after a Redis error: delivering own pending entries whose read reply was lost",
                extra=log_fields(count=adopted, consumer=self._stream.consumer),
            )

    async def claim_loop(self) -> bool:
        """Claim entries idle on other consumers soon after they pass BRIDGE_CLAIM_IDLE_MS.

        A pass over the group's idle pending entries starts every tenth of the idle time, so a
        dead consumer's entries are taken within 1.1x of it. This consumer's own entries are
        never claimed (see :meth:`_claim_page`). Returns True when it stopped because the
        fence closed (a claim then could take entries from the shard's next owner).
        """
        interval = max(0.05, self._claim_idle_ms / 10_000)
        failures = 0
        while not self._stopping():
            await self._link.pause(interval)
            try:
                fenced = await self._claim_pass()
                failures = 0
            except StreamError as exc:
                failures += 1
                await self._link.after(exc, failures)
                continue
            if fenced:
                return True
        return False

    async def _claim_pass(self) -> bool:
        """Walk the idle pending entries page by page while room lasts; True when fenced."""
        reserved = 0
        fenced = False

        def page_size() -> int:
            nonlocal reserved, fenced
            room = self._window.free()
            if not self._may_claim() or room < 1:
                return 0
            if self._fence_closed():
                fenced = True
                return 0
            reserved = min(room, _SCAN_PAGE)
            self._window.reserve(reserved)  # the read loop sees the slots as taken
            return reserved

        pages = pending_pages(self._idle_pending, page_size)
        try:
            async with contextlib.aclosing(pages):
                async for page in pages:
                    await self._claim_page(page)
                    self._window.unreserve(reserved)
                    reserved = 0
        finally:
            if reserved:
                self._window.unreserve(reserved)
        return fenced

    async def _claim_page(self, page: list[Pending]) -> None:
        """Claim one page of idle entries.

        Other consumers' entries are XCLAIMed (only while still idle: a live owner that touched
        one keeps it). Own entries idle after an outage longer than the idle time are not
        claimed: the held ones are being worked on and the touch loop freshens them; the rest
        (a lost reply's, or let go after an error) are adopted, each delivered once.
        """
        consumer = self._stream.consumer
        mine = [p for p in page if p.consumer == consumer]
        theirs = [p for p in page if p.consumer != consumer]
        if mine:
            adopted = self._adopt(await self._fetch_unheld(mine))
            if adopted:
                log.info(
                    "own pending entries went idle unheld: delivering them",
                    extra=log_fields(count=adopted, consumer=consumer),
                )
        if theirs:
            entries, gone = await self._stream.claim(theirs, self._claim_idle_ms)
            self._gone(gone)
            if entries:
                log.warning(
                    "reclaimed idle entries from another consumer",
                    extra=log_fields(
                        count=len(entries),
                        consumer=consumer,
                        previous_consumers=sorted({p.consumer for p in theirs}),
                    ),
                )
                self._dispatch(entries)

    async def refetch(self, lane: Lane[Job]) -> None:
        """Bring a lane's next entries back from Redis, in id order, within the read window.

        Scans this consumer's pending entries from where the lane's parked entries start, up to
        the highest id routed so far, and keeps those of the lane's instrument. XPENDING +
        XRANGE count no delivery, so waiting never pushes an entry toward max deliveries. Only
        the instrument of other entries is decoded.
        """
        if not await self._window.wait_for_room(whole_batch=False):
            return
        want = max(1, min(self._batch_size, self._window.free()))
        scan = _Scan(lane.begin_scan() or (0, 0))
        failure: StreamError | None = None
        with self._window.reserved(want):  # other lanes and the read loop see the slots taken
            try:
                await self._scan(lane.instrument, scan, want)
            except StreamError as exc:
                failure = exc
            finally:
                lane.end_scan(scan.cursor, exhausted=scan.exhausted, taken=len(scan.found))
                self._take_back(lane, scan.found)
        if failure is not None:
            await self._link.after(failure, 1)

    async def _scan(self, instrument: str, scan: _Scan, want: int) -> None:
        """Look through own pending entries, page by page, for the instrument's next ones."""
        pages = pending_pages(self._own_pending_seen, _SCAN_PAGE, format_id(scan.cursor))
        async with contextlib.aclosing(pages):
            async for page in pages:
                by_id = {entry.id: entry for entry in await self._fetch_unheld(page)}
                for item in page:
                    scan.cursor = next_id(item.id)
                    entry = by_id.get(item.id)
                    if entry is None or instrument_of(entry) != instrument:
                        continue
                    job = self._prepare(entry)
                    if job.signal is not None:
                        scan.found.append(job)
                        if len(scan.found) >= want:
                            return
                scan.exhausted = len(page) < _SCAN_PAGE

    async def _fetch_unheld(self, page: Sequence[Pending]) -> list[Entry]:
        """Fetch the entries of a page that nobody here holds; ack away those deleted."""
        busy = self._busy()
        entries, gone = await self._stream.fetch([p for p in page if p.id not in busy])
        self._gone(gone)
        return entries

    async def _own_pending_to_end(self, cursor: str, count: int) -> list[Pending]:
        return await self._stream.pending(cursor, "+", count)

    async def _own_pending_seen(self, cursor: str, count: int) -> list[Pending]:
        return await self._stream.pending(cursor, format_id(self._seen_high()), count)

    async def _idle_pending(self, cursor: str, count: int) -> list[Pending]:
        return await self._stream.pending(
            cursor, "+", count, own=False, min_idle_ms=self._claim_idle_ms
        )
