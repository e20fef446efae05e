"""Dead letters of one worker: the letter and the entry's ack in one write, never split.

The write runs in its own task, shielded, so a cancel (the end of the grace period) cannot
split it, and it is retried while Redis is away; only when stopping does it give up after a
few tries, and then the entry stays pending for a replica. In strict ordering no dead letter is
written once the fence has closed, and the script itself checks the shard's lease first: a
fenced replica's dead letter is a no-op, the entry stays pending for the shard's owner.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from opentelemetry import trace

from bridge.delivery.jobs import Job
from bridge.delivery.observer import DeliveryObserver
from bridge.delivery.redis_link import RedisLink
from bridge.errors import StreamError
from bridge.streams.entries import DeadLetter
from bridge.streams.group import SignalStream
from bridge.telemetry.logs import log_fields

__all__ = ["DeadLetters"]

log = logging.getLogger("bridge.worker")

_TRIES_WHEN_STOPPING = 3


class DeadLetters:
    """Writes dead letters (letter + XACK in one script) and tracks the writes in flight."""

    def __init__(
        self,
        stream: SignalStream,
        link: RedisLink,
        observer: DeliveryObserver,
        *,
        release: Callable[[Job], None],
        stopping: Callable[[], bool],
        lease: tuple[str, str] | None = None,
        fence_closed: Callable[[], bool] = lambda: False,
        fenced: Callable[[], None] = lambda: None,
    ) -> None:
        self._stream = stream
        self._link = link
        self._observer = observer
        self._release = release
        self._stopping = stopping
        self._writes: set[asyncio.Task[Any]] = set()
        self._lease = lease  # strict ordering: (lease key, lease value) the script checks
        self._fence_closed = fence_closed
        self._fenced = fenced

    async def write_now(self, job: Job, letter: DeadLetter) -> None:
        """Dead-letter an entry that is never posted (invalid, poison), in its own span."""
        with self._observer.span(job) as span:
            await self.write(job, letter, span)

    async def write(self, job: Job, letter: DeadLetter, span: trace.Span) -> None:
        """Write the dead letter + XACK atomically; retried while Redis is away, never split."""
        task = asyncio.create_task(self._write(job, letter))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        self._observer.on_dead_letter(span, letter)
        await asyncio.shield(task)

    async def drain(self) -> None:
        """Wait for every write in flight (they are shielded from the lanes' cancellation)."""
        if self._writes:
            await asyncio.gather(*set(self._writes), return_exceptions=True)

    async def _write(self, job: Job, letter: DeadLetter) -> None:
        if self._fence_closed():
            self._not_written(job)
            return
        try:
            written = await self._link.call(
                lambda: self._stream.dead_letter(job.entry, letter, self._lease),
                give_up=lambda tries: self._stopping() and tries >= _TRIES_WHEN_STOPPING,
                wake_on_stop=False,
            )
        except StreamError:
            log.error(
                "could not write a dead letter before exit; the entry stays pending",
                extra=log_fields(entry_id=job.entry.id, reason=letter.reason),
            )
            self._release(job)
            return
        if not written:
            self._not_written(job)
            return
        self._release(job)
        self._observer.on_dead_lettered(job, letter)

    def _not_written(self, job: Job) -> None:
        """Fenced: no dead letter, no ack; the entry stays pending for the shard's owner."""
        log.info(
            "dead letter not written: the shard's lease is no longer ours",
            extra=log_fields(entry_id=job.entry.id),
        )
        self._release(job)
        self._fenced()
