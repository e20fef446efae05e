"""The operator's dead-letter store: find, list, replay and purge what the worker gave up on.

The worker writes dead letters (:meth:`bridge.streams.group.SignalStream.dead_letter`);
``signal-bridge dlq`` reads them back through a :class:`DeadLetterStore` over the same Redis,
source stream and dead-letter stream. Every scan pages over the WHOLE dead-letter stream, so a
filter never stops at the first N entries.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import redis.asyncio as aioredis

from bridge.streams.connection import guard
from bridge.streams.entries import (
    DLQ_PREFIX,
    MAX_AGE_WAIVED_FIELD,
    ORIGIN_FIELD,
    Entry,
    as_text,
    is_entry_id,
    split_entries,
)
from bridge.streams.group import SignalStream

__all__ = ["DeadLetterStore"]


class DeadLetterStore:
    """The dead letters of one source stream, kept in its dead-letter stream."""

    def __init__(self, redis: aioredis.Redis, *, stream: str, dlq_stream: str) -> None:
        self.redis = redis
        self.stream = stream
        self.dlq_stream = dlq_stream

    @classmethod
    def of(cls, stream: SignalStream) -> DeadLetterStore:
        """Return the store of the dead letters a worker on ``stream`` writes."""
        return cls(stream.redis, stream=stream.stream, dlq_stream=stream.dlq_stream)

    def __repr__(self) -> str:
        return f"DeadLetterStore(stream={self.stream!r}, dlq_stream={self.dlq_stream!r})"

    async def get(self, dlq_id: str) -> Entry | None:
        """Return one dead letter by id, or None when the stream has no such entry."""
        if not is_entry_id(dlq_id):
            return None
        raw = await guard(self.redis.xrange(self.dlq_stream, dlq_id, dlq_id), "XRANGE")
        live, _ = split_entries(raw)
        return live[0] if live else None

    async def scan(
        self,
        *,
        reason: str | None = None,
        since_ms: int | None = None,
        before_ms: int | None = None,
        limit: int | None = None,
        page: int = 500,
    ) -> AsyncIterator[Entry]:
        """Yield dead letters oldest first over the WHOLE dead-letter stream, page by page.

        ``since_ms`` starts at letters written at or after that Unix time (a dead letter's id
        is its write time), ``before_ms`` stops before letters written at or after that time;
        ``reason`` keeps one reason; ``limit`` stops after that many matches.
        """
        start = f"{since_ms}-0" if since_ms is not None else "-"
        end = f"({before_ms}-0" if before_ms is not None else "+"
        found = 0
        while limit is None or found < limit:
            raw = await guard(
                self.redis.xrange(self.dlq_stream, min=start, max=end, count=page), "XRANGE"
            )
            live, _ = split_entries(raw)
            for entry in live:
                if reason is None or entry.field(f"{DLQ_PREFIX}reason") == reason:
                    yield entry
                    found += 1
                    if limit is not None and found >= limit:
                        return
            if len(raw) < page:
                return
            start = f"({as_text(raw[-1][0])}"

    async def letters(self, *, reason: str | None = None, count: int = 1000) -> list[Entry]:
        """List up to ``count`` dead letters, oldest first, optionally only one reason.

        The filter runs over the whole dead-letter stream, not only its first ``count`` entries.
        """
        return [e async for e in self.scan(reason=reason, limit=count)]

    async def replay(
        self, ids: Sequence[str], *, waive_max_age: str | None = None
    ) -> list[tuple[str, str]]:
        """Re-publish dead letters to their source stream; delete each only after its XADD.

        ``waive_max_age`` (a note saying who waived it and when) marks each replayed entry so
        the worker posts it whatever its age; without it any earlier waiver is dropped. Ids
        not in the dead-letter stream are skipped. Returns (dead-letter id, new entry id) pairs.
        """
        done: list[tuple[str, str]] = []
        for dlq_id in ids:
            entry = await self.get(dlq_id)
            if entry is None:
                continue
            source = entry.field(f"{DLQ_PREFIX}source_stream") or self.stream
            original = {
                k: v
                for k, v in entry.fields.items()
                if not k.startswith(DLQ_PREFIX.encode()) and k != MAX_AGE_WAIVED_FIELD
            }
            # Keep the first delivery's identity: the replay carries the same idempotency key,
            # so a dead letter whose first attempt did land is dropped by the server as a repeat.
            original.setdefault(
                ORIGIN_FIELD,
                f"{source}/{entry.field(f'{DLQ_PREFIX}source_id') or dlq_id}".encode(),
            )
            if waive_max_age is not None:
                original[MAX_AGE_WAIVED_FIELD] = waive_max_age.encode()
            new_id = await guard(self.redis.xadd(source, original), "XADD")  # type: ignore[arg-type]
            await guard(self.redis.xdel(self.dlq_stream, dlq_id), "XDEL")
            done.append((dlq_id, as_text(new_id)))
        return done

    async def delete(self, ids: Sequence[str], *, batch: int = 500) -> int:
        """XDEL these dead letters (and only these), in batches; returns how many were deleted."""
        deleted = 0
        for first in range(0, len(ids), batch):
            chunk = ids[first : first + batch]
            deleted += int(await guard(self.redis.xdel(self.dlq_stream, *chunk), "XDEL"))
        return deleted
