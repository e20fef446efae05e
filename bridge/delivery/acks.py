"""Acks and touches of one worker: one XACK per burst, and owned entries kept fresh.

Delivered entries are acked in bursts (an ack a few ms later only matters after a crash, and
then the server drops the redelivery as a duplicate); a failed XACK keeps its ids and is
retried. With receipts (``BRIDGE_RECEIPTS``) each burst's XACK and its receipts go in one
script call (:class:`~bridge.streams.receipt_writer.ReceiptWriter`); without, the plain XACK. In
strict ordering each XACK runs in a script that first checks the shard's lease is still this
replica's (and is not sent at all once the fence has closed): a fenced replica acks nothing (and
writes no receipt), the entries stay pending and the new owner settles them. The touch loop
resets the idle time of every entry this consumer owns, so no replica reclaims them: those held
in memory, and those a blocked lane keeps waiting in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any, Final

from bridge.delivery.lanes import format_id
from bridge.delivery.receipting import gone_receipt
from bridge.delivery.redis_link import RedisLink, pending_pages
from bridge.errors import StreamError
from bridge.streams.entries import StreamId
from bridge.streams.group import SignalStream
from bridge.streams.receipt_writer import ReceiptWriter
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics

__all__ = ["Acks", "Toucher"]

log = logging.getLogger("bridge.worker")

_ACK_COALESCE_S: Final = 0.005
_TOUCH_CHUNK: Final = 500
_ACK_CHUNK: Final = 1000  # ids per lease-checked XACK script (Lua's unpack has a limit)


class Acks:
    """The ack buffer of one worker and the loop that flushes it."""

    def __init__(
        self,
        stream: SignalStream,
        link: RedisLink,
        metrics: Metrics,
        *,
        batch_size: int,
        receipts: ReceiptWriter | None = None,
        lease: tuple[str, str] | None = None,
        fence_closed: Callable[[], bool] = lambda: False,
        fenced: Callable[[], None] = lambda: None,
    ) -> None:
        self.pending: list[str] = []
        self.receipts = receipts
        self._receipt_of: dict[str, list[str]] = {}  # entry id -> its receipt, until acked
        self.dropped = 0  # acks not sent because the shard's lease is no longer ours
        self._lease = lease  # strict ordering: (lease key, lease value) every XACK checks
        self._fence_closed = fence_closed
        self._fenced = fenced
        self.flushing: list[str] = []  # ids of the XACK in flight
        self._stream = stream
        self._link = link
        self._metrics = metrics
        self._batch_size = batch_size
        self._wakeup = asyncio.Event()

    def add(self, entry_id: str, receipt: list[str] | None = None) -> None:
        """Buffer the ack of one settled entry (with its receipt when receipts are on)."""
        pending = self.pending
        if receipt is not None:
            self._receipt_of[entry_id] = receipt
        if not pending:
            # The first id of a burst wakes the loop; the event stays set (or the loop is
            # already past its wait) until the loop takes every buffered id at once.
            self._wakeup.set()
        pending.append(entry_id)

    def unsent(self) -> Iterable[str]:
        """Ids acked here but not yet confirmed by Redis: never to be posted again."""
        return (*self.pending, *self.flushing)

    def gone(self, ids: list[str]) -> None:
        """Ack ids of entries deleted from the stream while pending (nothing to deliver).

        Their signals are gone (XDEL, or a MAXLEN trim that outran delivery): say so loudly and
        count them, since nobody can replay them.
        """
        if ids:
            log.error(
                "pending entries were deleted from the stream before delivery; acking them away",
                extra=log_fields(count=len(ids), entry_ids=ids[:20], stream=self._stream.stream),
            )
            self._metrics.dead_lettered_total.add(len(ids), {"reason": "deleted"})
            if self.receipts is not None:
                stream, consumer = self._stream.stream, self._stream.consumer
                for entry_id in ids:
                    self._receipt_of[entry_id] = gone_receipt(
                        entry_id, stream=stream, consumer=consumer
                    )
            self.pending.extend(ids)
            self._wakeup.set()

    async def loop(self) -> None:
        """Flush buffered acks in one XACK per burst; keep them on failure and retry."""
        attempt = 0
        while True:
            await self._wakeup.wait()
            if len(self.pending) < self._batch_size:
                await asyncio.sleep(_ACK_COALESCE_S)  # gather a burst into one XACK
            self._wakeup.clear()
            if not self.pending:
                continue
            ids, self.pending = self.pending, []
            self.flushing = ids
            flush = asyncio.ensure_future(self._ack(ids))
            try:
                await asyncio.shield(flush)
                attempt = 0
                self.flushing = []
            except asyncio.CancelledError:
                # stop() cancelled the loop mid-XACK: give the ids back to final_flush (XACK
                # is idempotent) and collect the orphaned attempt's outcome.
                self.pending = ids + self.pending
                self.flushing = []
                flush.add_done_callback(_collect)
                raise
            except StreamError as exc:
                self.pending = ids + self.pending
                self.flushing = []
                attempt += 1
                await self._link.after(exc, attempt, wake_on_stop=False)
                self._wakeup.set()

    async def final_flush(self) -> None:
        """Flush buffered acks once more (shielded, a few tries)."""
        if not self.pending:
            return
        ids, self.pending = self.pending, []
        try:
            await self._link.call(
                lambda: asyncio.shield(self._ack(ids)),
                give_up=lambda tries: tries >= 3,
                wake_on_stop=False,
            )
        except StreamError:
            self.pending = ids + self.pending
            log.error(
                "could not ack delivered entries before exit; they will be redelivered "
                "and the server will drop them as duplicates",
                extra=log_fields(count=len(self.pending)),
            )

    async def _ack(self, ids: list[str]) -> None:
        """XACK ``ids`` (with their receipts when on); in strict ordering only while leased.

        A fenced replica drops them: nothing is written, the shard's owner settles the entries.
        """
        if self._lease is None and self.receipts is None:
            await self._stream.ack(ids)
            return
        if not self._fence_closed() and await self._ack_chunks(ids):
            return
        # Fenced: the entries stay pending; the shard's owner re-sends them (409) and acks.
        self.dropped += len(ids)
        log.info(
            "acks not sent: the shard's lease is no longer ours; the new owner settles them",
            extra=log_fields(count=len(ids), stream=self._stream.stream),
        )
        self._fenced()

    async def _ack_chunks(self, ids: list[str]) -> bool:
        """Ack ``ids`` chunk by chunk through a script; False as soon as the lease is not ours."""
        receipt_of = self._receipt_of
        stream, consumer = self._stream.stream, self._stream.consumer
        for start in range(0, len(ids), _ACK_CHUNK):
            chunk = ids[start : start + _ACK_CHUNK]
            if self.receipts is None:
                assert self._lease is not None  # noqa: S101 - _ack sends the plain XACK otherwise
                done = await self._stream.ack_leased(chunk, self._lease)
            else:
                items = [
                    (i, receipt_of.get(i) or gone_receipt(i, stream=stream, consumer=consumer))
                    for i in chunk
                ]
                done = await self.receipts.ack(items, self._lease)
            if done is None:
                return False
            for entry_id in chunk:
                receipt_of.pop(entry_id, None)
        return True


class Toucher:
    """Keeps the idle time of owned entries fresh so no replica reclaims them."""

    def __init__(
        self,
        stream: SignalStream,
        link: RedisLink,
        *,
        claim_idle_ms: int,
        held: Callable[[], Iterable[str]],
        lowest_parked: Callable[[], StreamId | None],
        released: set[str],
        fence_closed: Callable[[], bool],
    ) -> None:
        self._stream = stream
        self._link = link
        self._interval = max(0.05, claim_idle_ms / 3000)
        self._held = held
        self._lowest_parked = lowest_parked
        self._released = released  # let go after a lane's unexpected error: not touched
        self._fence_closed = fence_closed

    async def loop(self) -> None:
        """Touch owned entries every third of BRIDGE_CLAIM_IDLE_MS until fenced."""
        while True:
            await asyncio.sleep(self._interval)
            if self._fence_closed():
                return  # a fenced worker must not pull entries back from the shard's new owner
            try:
                await self.touch_once()
            except StreamError as exc:
                self._link.failed(exc)

    async def touch_once(self) -> None:
        """Touch held entries, and the pending entries blocked lanes keep waiting in Redis.

        Waiting entries are not in memory: every own pending entry from the lowest parked id on
        is touched (XPENDING pages), except those let go after an error.
        """
        ids = list(self._held())
        for start in range(0, len(ids), _TOUCH_CHUNK):
            await self._stream.touch(ids[start : start + _TOUCH_CHUNK])
        low = self._lowest_parked()
        if low is None:
            self._released.clear()  # only kept out of the parked range's touches
            return
        held = set(ids)
        pages = pending_pages(self._own_pending, _TOUCH_CHUNK, format_id(low))
        async with contextlib.aclosing(pages):
            async for page in pages:
                await self._stream.touch(
                    [p.id for p in page if p.id not in held and p.id not in self._released]
                )

    async def _own_pending(self, cursor: str, count: int) -> list[Any]:
        return await self._stream.pending(cursor, "+", count)


def _collect(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished background task's exception so asyncio does not report it."""
    if not task.cancelled():
        task.exception()
