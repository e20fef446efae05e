"""Dead letters of one worker: the letter and the entry's ack in one write, never split.

The write runs in its own task, shielded, so a cancel (the end of the grace period) cannot
split it, and it is retried while Redis is away; only when stopping does it give up after a
few tries, and then the entry stays pending for a replica. A dead letter is logged and counted
only once the script says it is in the stream. In strict ordering no dead letter is written once
the fence has closed, and the script itself checks the shard's lease first: a fenced replica's
dead letter is a no-op, the entry stays pending for the shard's owner.

A dead-letter stream that Redis refuses to write (the key holds another type, the ACL user may
not write it, an error inside the script) is a fault of the whole stream, not of the entry: the
entry stays pending and gives back its in-flight slot at once (so valid signals keep flowing),
its letter is kept in memory for when it comes back (after ``BRIDGE_CLAIM_IDLE_MS``, by the
claim scan), and :class:`LetterHealth` logs one ERROR per outage, one INFO when a letter is
written again, and tells ``/readyz`` and the metrics.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Final

from opentelemetry import trace

from bridge.delivery.jobs import Job
from bridge.delivery.observer import DeliveryObserver
from bridge.delivery.receipting import letter_receipt
from bridge.delivery.redis_link import RedisLink
from bridge.errors import StreamError
from bridge.streams.connection import PASSING_CODES
from bridge.streams.entries import DeadLetter
from bridge.streams.group import SignalStream
from bridge.streams.receipt_writer import ReceiptWriter
from bridge.telemetry.logs import log_fields

__all__ = ["DeadLetters", "LetterHealth", "unwritable"]

log = logging.getLogger("bridge.worker")

_TRIES_WHEN_STOPPING = 3
# Redis errors of an outage (retried in place, as every Redis call is), not of the letter's key.
_OUTAGE_CODES: Final = PASSING_CODES | {"CLUSTERDOWN", "NOGROUP", "MOVED", "ASK"}
# Letters decided but not written while the dead-letter stream refuses writes, by entry id; an
# entry that comes back gets the same letter (a rejected signal is not posted again). Bounded:
# past it the oldest are forgotten, and such an entry is judged again when it comes back.
_MAX_DEFERRED: Final = 1000


def unwritable(exc: StreamError) -> bool:
    """Tell whether Redis refused the dead-letter script itself rather than being away.

    A wrong key type, a missing permission or an error inside the script: retrying the same
    write cannot pass until an operator acts.
    """
    return exc.code is not None and exc.code not in _OUTAGE_CODES


class LetterHealth:
    """Whether dead letters can be written to one stream's dead-letter stream, and the log."""

    def __init__(self, stream: str, dlq_stream: str) -> None:
        self.ok = True
        self.error = ""  # why dead letters cannot be written, while they cannot
        self._stream = stream
        self._dlq_stream = dlq_stream

    def failed(self, exc: StreamError, entry_id: str) -> None:
        """Log the first refusal of an outage as an ERROR; quiet until a letter is written."""
        if self.ok:
            log.error(
                "dead letters cannot be written: entries to dead-letter stay pending and are "
                "tried again later; valid signals keep flowing",
                extra=log_fields(
                    stream=self._stream,
                    dlq_stream=self._dlq_stream,
                    entry_id=entry_id,
                    error=str(exc),
                    redis_error=exc.code,
                ),
            )
        self.ok = False
        self.error = str(exc)

    def written(self) -> None:
        """Note a written letter: say once that dead letters can be written again."""
        if not self.ok:
            log.info(
                "dead letters can be written again",
                extra=log_fields(stream=self._stream, dlq_stream=self._dlq_stream),
            )
        self.ok = True
        self.error = ""


class DeadLetters:
    """Writes dead letters (letter + XACK in one script) and tracks the writes in flight."""

    def __init__(
        self,
        stream: SignalStream,
        link: RedisLink,
        observer: DeliveryObserver,
        *,
        release: Callable[[Job], None],
        let_go: Callable[[Job], None],
        stopping: Callable[[], bool],
        fence_closed: Callable[[], bool] = lambda: False,
        lease: tuple[str, str] | None = None,
        fenced: Callable[[], None] = lambda: None,
        receipts: ReceiptWriter | None = None,
    ) -> None:
        self.receipts = receipts  # BRIDGE_RECEIPTS: the letter's script writes its receipt too
        self.health = LetterHealth(stream.stream, stream.dlq_stream)
        self._stream = stream
        self._link = link
        self._observer = observer
        self._release = release  # a settled job (its letter written, or no longer pending)
        self._let_go = let_go  # a job left pending in Redis and not kept fresh
        self._stopping = stopping
        self._fence_closed = fence_closed
        self._writes: set[asyncio.Task[Any]] = set()
        self._deferred: OrderedDict[str, DeadLetter] = OrderedDict()
        self._lease = lease  # strict ordering: (lease key, lease value) the script checks
        self._fenced = fenced

    @property
    def deferred(self) -> Mapping[str, DeadLetter]:
        """The letters decided for entries whose write the dead-letter stream refused, by id."""
        return self._deferred

    async def write_now(self, job: Job, letter: DeadLetter) -> None:
        """Dead-letter an entry that is never posted (invalid, poison), in its own span."""
        with self._observer.span(job) as span:
            await self.write(job, letter, span)

    async def write(self, job: Job, letter: DeadLetter, span: trace.Span) -> None:
        """Write the dead letter, then the XACK (one script); retried while Redis is away."""
        task = asyncio.create_task(self._write(job, letter))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        if await asyncio.shield(task):
            self._observer.on_dead_letter(span, letter)
        else:
            self._observer.on_abandoned(span)

    async def drain(self) -> None:
        """Wait for every write in flight (they are shielded from the lanes' cancellation)."""
        if self._writes:
            await asyncio.gather(*set(self._writes), return_exceptions=True)

    async def _write_once(self, job: Job, letter: DeadLetter) -> bool | StreamError | None:
        """One try: True written, False no longer pending, None fenced, the error if refused."""
        try:
            if self.receipts is not None:
                name, consumer = self._stream.stream, self._stream.consumer
                receipt = letter_receipt(job, letter, stream=name, consumer=consumer)
                return await self.receipts.dead_letter(job.entry, letter, receipt, self._lease)
            return await self._stream.dead_letter(job.entry, letter, self._lease)
        except StreamError as exc:
            if unwritable(exc):
                return exc
            raise

    async def _write(self, job: Job, letter: DeadLetter) -> bool:
        """Write and report; True when the letter is in the stream."""
        if self._fence_closed():
            self._not_written(job)
            return False
        try:
            result = await self._link.call(
                lambda: self._write_once(job, letter),
                give_up=lambda tries: self._stopping() and tries >= _TRIES_WHEN_STOPPING,
                wake_on_stop=False,
            )
        except StreamError:
            log.error(
                "could not write a dead letter before exit; the entry stays pending",
                extra=log_fields(entry_id=job.entry.id, reason=letter.reason),
            )
            self._release(job)
            return False
        if result is None:
            self._not_written(job)
            return False
        if isinstance(result, StreamError):
            self.health.failed(result, job.entry.id)
            self._defer(job.entry.id, letter)
            # Its idle time starts again, so the claim scan brings it back once per
            # BRIDGE_CLAIM_IDLE_MS, not at every pass (a fetch by id does not reset it).
            if not self._fence_closed():  # never pull an entry from the shard's next owner
                with contextlib.suppress(StreamError):
                    await self._stream.touch([job.entry.id])
            self._let_go(job)
            return False
        self._deferred.pop(job.entry.id, None)
        self._release(job)
        if not result:
            log.warning(
                "entry was no longer pending (acked elsewhere): no dead letter written",
                extra=log_fields(entry_id=job.entry.id, reason=letter.reason),
            )
            return False
        self.health.written()
        self._observer.on_dead_lettered(job, letter)
        return True

    def _not_written(self, job: Job) -> None:
        """Fenced: no dead letter, no ack; the entry stays pending for the shard's owner."""
        log.info(
            "dead letter not written: the shard's lease is no longer ours",
            extra=log_fields(entry_id=job.entry.id),
        )
        self._let_go(job)
        self._fenced()

    def _defer(self, entry_id: str, letter: DeadLetter) -> None:
        """Keep the letter for when the entry comes back (oldest forgotten past the bound)."""
        self._deferred[entry_id] = letter
        self._deferred.move_to_end(entry_id)
        while len(self._deferred) > _MAX_DEFERRED:
            self._deferred.popitem(last=False)
