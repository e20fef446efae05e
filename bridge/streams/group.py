"""One stream, one consumer group, one consumer: the operations the worker needs.

:class:`SignalStream` reads new entries and its own pending ones, lists and claims pending
entries, acks, keeps entries it retries from being claimed, dead-letters (one Lua script that
writes the letter before the ack, so a failure leaves the entry pending), reports status and
trims what every group has read. Entries stay raw bytes; decoding a signal is the codec's job.
Errors arrive as :class:`~bridge.errors.StreamError`.
:func:`report_new_group` warns at start when a group created at ``$`` skips entries already in
the stream, and says how many and how to take them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions

from bridge.errors import StreamError
from bridge.streams.connection import PASSING_CODES, error_code, guard, translate
from bridge.streams.entries import (
    ConsumerStatus,
    DeadLetter,
    Entry,
    GroupStatus,
    Pending,
    TrimResult,
    as_text,
    parse_id,
    split_entries,
)
from bridge.streams.letter_fields import letter_fields
from bridge.streams.scripts import load
from bridge.streams.settings import DEAD_LETTER_MAX_BYTES, StreamConfig
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics

__all__ = ["SignalStream", "report_new_group", "signal_streams"]

log = logging.getLogger("bridge.feedback")

_DEAD_LETTER_LUA: Final = load("dead_letter")
_ACK_LEASED_LUA: Final = load("ack_leased")
_TRIM_ACKED_LUA: Final = load("trim_acked")
# New entries a producer may add between XGROUP CREATE and the count of skipped ones.
_NEWER_SCAN_LIMIT: Final = 10_000


class SignalStream:
    """One stream, one consumer group, one consumer: the operations the bridge needs."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        stream: str,
        group: str,
        consumer: str,
        dlq_stream: str,
        dead_letter_max_bytes: int = DEAD_LETTER_MAX_BYTES,
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dlq_stream = dlq_stream
        self.dead_letter_max_bytes = dead_letter_max_bytes
        self._dead_letter_script = redis.register_script(_DEAD_LETTER_LUA)
        self._ack_leased_script = redis.register_script(_ACK_LEASED_LUA)
        self._trim_script = redis.register_script(_TRIM_ACKED_LUA)

    def __repr__(self) -> str:
        return (
            f"SignalStream(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    async def ping(self) -> None:
        """Check that Redis answers."""
        await guard(self.redis.ping(), "PING")

    async def ensure_group(self, start_id: str = "$") -> bool:
        """Create the group (and the stream) if missing; True when it was created."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            # Out of memory, Redis refuses XGROUP CREATE before it looks for the group; an
            # existing group can still be consumed (XREADGROUP, XACK need no new memory).
            if error_code(exc) == "OOM" and await self.group_exists():
                return False
            raise translate(exc, "XGROUP CREATE") from exc
        except (redis.exceptions.RedisError, OSError) as exc:
            raise translate(exc, "XGROUP CREATE") from exc
        return True

    async def group_exists(self) -> bool:
        """Tell whether the consumer group exists on the stream."""
        try:
            groups = await self.redis.xinfo_groups(self.stream)
        except redis.exceptions.ResponseError as exc:
            if error_code(exc) in PASSING_CODES:
                raise translate(exc, "XINFO GROUPS") from exc
            return False  # ERR no such key: no stream, so no group
        except (redis.exceptions.RedisError, OSError) as exc:
            raise translate(exc, "XINFO GROUPS") from exc
        return any(as_text(g["name"]) == self.group for g in groups)

    async def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP up to ``count`` new entries (``>``), blocking up to ``block_ms``."""
        if count < 1:
            return []
        reply = await guard(
            self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            ),
            "XREADGROUP",
        )
        if not reply:
            return []
        return split_entries(reply[0][1])[0]

    async def read_own_pending(self, after: str, count: int) -> tuple[list[Entry], list[str]]:
        """XREADGROUP this consumer's own pending entries with ids above ``after``.

        Used at start-up to re-deliver what a previous run of the same consumer left behind.
        Returns (entries with delivery counts, ids of pending entries deleted from the stream).
        """
        reply = await guard(
            self.redis.xreadgroup(self.group, self.consumer, {self.stream: after}, count=count),
            "XREADGROUP",
        )
        if not reply or not reply[0][1]:
            return [], []
        live, gone = split_entries(reply[0][1])
        if live:
            live = await self.with_deliveries(live)
        return live, gone

    async def pending(
        self,
        start: str,
        end: str,
        count: int,
        *,
        own: bool = True,
        min_idle_ms: int | None = None,
    ) -> list[Pending]:
        """XPENDING the group's pending entries in [start, end] (``(id`` excludes), id order.

        ``own`` lists only this consumer's; ``min_idle_ms`` only entries idle at least that
        long. Nothing changes in Redis: no delivery is counted, no idle time reset.
        """
        reply = await guard(
            self.redis.xpending_range(
                self.stream,
                self.group,
                min=start,
                max=end,
                count=count,
                consumername=self.consumer if own else None,
                idle=min_idle_ms,
            ),
            "XPENDING",
        )
        return [
            Pending(
                as_text(item["message_id"]),
                as_text(item["consumer"]),
                int(item["time_since_delivered"]),
                int(item["times_delivered"]),
            )
            for item in reply
        ]

    async def fetch(self, pending: Sequence[Pending]) -> tuple[list[Entry], list[str]]:
        """Fetch pending entries by id (XRANGE id id, pipelined), without counting a delivery.

        Unlike XREADGROUP from an id, this leaves the delivery counters alone, so entries that
        wait in Redis and are fetched several times do not drift toward BRIDGE_MAX_DELIVERIES.
        Returns (entries in the given order, ids deleted from the stream meanwhile).
        """
        if not pending:
            return [], []
        pipe = self.redis.pipeline(transaction=False)
        for item in pending:
            pipe.xrange(self.stream, item.id, item.id, count=1)
        replies = await guard(pipe.execute(), "XRANGE")
        live: list[Entry] = []
        gone: list[str] = []
        for item, reply in zip(pending, replies, strict=True):
            if reply and reply[0][1]:
                live.append(Entry(item.id, reply[0][1], item.deliveries))
            else:
                gone.append(item.id)
        return live, gone

    async def claim(
        self, pending: Sequence[Pending], min_idle_ms: int
    ) -> tuple[list[Entry], list[str]]:
        """XCLAIM entries of other consumers that are still idle at least ``min_idle_ms``.

        Redis skips an entry whose owner touched or acked it meanwhile, and drops from the
        pending list one deleted from the stream. Returns (claimed entries with delivery counts,
        ids deleted from the stream).
        """
        if not pending:
            return [], []
        reply = await guard(
            self.redis.xclaim(
                self.stream, self.group, self.consumer, min_idle_ms, [p.id for p in pending]
            ),
            "XCLAIM",
        )
        live, gone = split_entries(reply)
        claimed = {e.id for e in live}
        missing = [p.id for p in pending if p.id not in claimed]
        if missing:
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in missing:
                pipe.xrange(self.stream, entry_id, entry_id, count=1)
            exists = await guard(pipe.execute(), "XRANGE")
            gone += [i for i, found in zip(missing, exists, strict=True) if not found]
        if live:
            live = await self.with_deliveries(live)
        return live, gone

    async def with_deliveries(self, entries: Sequence[Entry]) -> list[Entry]:
        """Attach each entry's delivery count from XPENDING (one range query per batch)."""
        reply = await guard(
            self.redis.xpending_range(
                self.stream,
                self.group,
                min=entries[0].id,
                max=entries[-1].id,
                count=max(len(entries) * 4, 100),
                consumername=self.consumer,
            ),
            "XPENDING",
        )
        counts = {as_text(item["message_id"]): int(item["times_delivered"]) for item in reply}
        return [Entry(e.id, e.fields, counts.get(e.id, e.deliveries)) for e in entries]

    async def ack(self, ids: Sequence[str]) -> int:
        """XACK entries; returns how many were still pending."""
        if not ids:
            return 0
        ack = self.redis.xack(self.stream, self.group, *_as_bytes(ids))
        return int(await guard(ack, "XACK"))

    async def ack_leased(self, ids: Sequence[str], lease: tuple[str, str]) -> int | None:
        """XACK entries while the shard's lease ``(key, value)`` is ours; None when it is not.

        One script: the lease check and the XACK cannot be split by a pause (strict ordering).
        """
        if not ids:
            return 0
        key, value = lease
        reply = await guard(
            self._ack_leased_script(
                keys=[self.stream, key], args=[self.group, value, *_as_bytes(ids)]
            ),
            "XACK script (lease checked)",
        )
        return None if int(reply) < 0 else int(reply)

    async def touch(self, ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer is still working on.

        XCLAIM with JUSTID to ourselves does not count a delivery; it keeps other replicas'
        XAUTOCLAIM from taking an entry we are retrying.
        """
        if ids:
            await guard(
                self.redis.xclaim(
                    self.stream, self.group, self.consumer, 0, list(ids), justid=True
                ),
                "XCLAIM",
            )

    async def dead_letter(
        self, entry: Entry, letter: DeadLetter, lease: tuple[str, str] | None = None
    ) -> bool | None:
        """Move a pending entry to the dead-letter stream: its letter written, then its XACK.

        One Lua script, not MULTI: MULTI/EXEC does not roll back a command that fails at run
        time. The script checks first (the key's type, that the entry is still pending) and
        writes nothing until they pass; then the letter, then the ack, and a letter whose ack
        did not take is deleted again. So every failure leaves the entry pending with no letter.
        The letter is a bounded copy (:func:`~bridge.streams.letter_fields.letter_fields`).
        Returns True when the letter is in the stream, False when the entry was no longer
        pending (acked by someone else: nothing written). StreamError when nothing was done.
        ``lease`` (strict ordering: the shard's lease key and value): the script first checks the
        lease is still ours and writes nothing when it is not; then this returns None (fenced).
        """
        pairs = letter_fields(
            entry,
            letter,
            max_bytes=self.dead_letter_max_bytes,
            group=self.group,
            consumer=self.consumer,
            stream=self.stream,
        )
        args: list[Any] = [self.group, entry.id, len(pairs)]
        for name, value in pairs:
            args += (name, value)
        keys = [self.stream, self.dlq_stream]
        if lease is not None:
            keys.append(lease[0])
            args.append(lease[1])
        written = await guard(
            self._dead_letter_script(keys=keys, args=args), "dead letter (XADD + XACK script)"
        )
        return None if int(written) < 0 else int(written) == 1

    async def own_pending(self) -> int:
        """How many entries this consumer holds."""
        reply = await guard(
            self.redis.xpending_range(
                self.stream, self.group, min="-", max="+", count=1, consumername=self.consumer
            ),
            "XPENDING",
        )
        return len(reply)

    async def remove_consumer_if_idle(self) -> bool:
        """XGROUP DELCONSUMER, but only when this consumer holds no pending entries."""
        if await self.own_pending():
            return False
        await guard(
            self.redis.xgroup_delconsumer(self.stream, self.group, self.consumer),
            "XGROUP DELCONSUMER",
        )
        return True

    async def status(self) -> GroupStatus:
        """Stream length, group lag and pending, per-consumer pending, oldest age, DLQ size."""
        length = int(await guard(self.redis.xlen(self.stream), "XLEN"))
        lag: int | None = None
        pending = 0
        consumers: list[ConsumerStatus] = []
        oldest: int | None = None
        exists = await self.group_exists()
        if exists:
            groups = await guard(self.redis.xinfo_groups(self.stream), "XINFO GROUPS")
            for group in groups:
                if as_text(group["name"]) == self.group:
                    raw_lag = group.get("lag")
                    lag = None if raw_lag is None else int(raw_lag)
                    pending = int(group["pending"])
            raw_consumers = await guard(
                self.redis.xinfo_consumers(self.stream, self.group), "XINFO CONSUMERS"
            )
            consumers = [
                ConsumerStatus(as_text(c["name"]), int(c["pending"]), int(c["idle"]))
                for c in raw_consumers
            ]
            if pending:
                first = await guard(
                    self.redis.xpending_range(self.stream, self.group, "-", "+", 1),
                    "XPENDING",
                )
                if first:
                    first_id = as_text(first[0]["message_id"])
                    oldest = max(0, int(time.time() * 1000) - parse_id(first_id)[0])
        kind = as_text(await guard(self.redis.type(self.dlq_stream), "TYPE"))
        dead_letter_error = None
        if kind not in ("none", "stream"):
            dead_letter_error = (
                f"{self.dlq_stream} holds a {kind}, not a stream: dead letters cannot be written"
            )
        dead = (
            0 if dead_letter_error else int(await guard(self.redis.xlen(self.dlq_stream), "XLEN"))
        )
        dead_oldest: int | None = None
        if dead:
            first_letter = await guard(self.redis.xrange(self.dlq_stream, count=1), "XRANGE")
            if first_letter:
                dead_oldest = max(
                    0, int(time.time() * 1000) - parse_id(as_text(first_letter[0][0]))[0]
                )
        return GroupStatus(
            stream=self.stream,
            group=self.group,
            length=length,
            lag=lag,
            pending=pending,
            oldest_pending_age_ms=oldest,
            consumers=consumers,
            dead_letters=dead,
            dead_letter_oldest_age_ms=dead_oldest,
            dead_letter_error=dead_letter_error,
            group_exists=exists,
        )

    async def trim_acked(self, limit: int = 10_000) -> TrimResult:
        """XTRIM MINID ~ below the lowest id any group of the stream still needs (one script).

        Works on Redis 7 (8.2's XTRIM ... ACKED does this natively). Another group, lagging or
        idle, keeps everything it has not read: nothing unread or pending is ever trimmed. At
        most ``limit`` entries go per call, in whole nodes, so entries just below the floor
        may stay until their node is wholly below it.
        """
        reply = await guard(
            self._trim_script(keys=[self.stream], args=[limit]), "XTRIM MINID (script)"
        )
        min_id = as_text(reply[1])
        return TrimResult(int(reply[0]), min_id or None)

    async def skipped_by_new_group(self) -> int:
        """Count entries at or below the group's last-delivered id: what a new ``$`` group skips."""
        groups = await guard(self.redis.xinfo_groups(self.stream), "XINFO GROUPS")
        last = next(
            (as_text(g["last-delivered-id"]) for g in groups if as_text(g["name"]) == self.group),
            "0-0",
        )
        if last == "0-0":
            return 0
        length = int(await guard(self.redis.xlen(self.stream), "XLEN"))
        newer = await guard(
            self.redis.xrange(self.stream, min=f"({last}", count=_NEWER_SCAN_LIMIT), "XRANGE"
        )
        return max(0, length - len(newer))


def _as_bytes(ids: Sequence[str]) -> list[bytes]:
    """Encode entry ids for an XACK: the same bytes on the wire, fewer calls per id.

    redis-py's encoder passes bytes at its first check but tests a str five times first.
    """
    return [entry_id.encode() for entry_id in ids]


async def report_new_group(
    stream: SignalStream, start_id: str, metrics: Metrics | None = None
) -> int:
    """After creating the group: WARN when it starts at ``$`` past existing entries.

    Both ordering modes call it where they create the group (the worker in ``parallel``, the
    shard takeover in ``strict``); the count also goes to ``signals_skipped_total``. Returns
    how many entries it skips (0 when it starts at ``0`` or an explicit id, or when Redis
    cannot say).
    """
    if start_id != "$":
        return 0
    try:
        skipped = await stream.skipped_by_new_group()
    except StreamError:
        return 0
    if skipped:
        if metrics is not None:
            metrics.skipped_total.add(skipped, {"stream": stream.stream})
        log.warning(
            "new consumer group starts at '$': entries already in the stream are skipped "
            "(not delivered); to deliver them, XGROUP SETID <stream> <group> 0 before they "
            "expire, or start with BRIDGE_START_ID=0",
            extra=log_fields(stream=stream.stream, group=stream.group, skipped=skipped),
        )
    return skipped


def signal_streams(
    config: StreamConfig,
    redis: Any,  # noqa: ANN401 - a redis-py client (single node or cluster)
) -> list[SignalStream]:
    """One SignalStream per configured stream (BRIDGE_STREAMS, else BRIDGE_STREAM)."""
    return [
        SignalStream(
            redis,
            stream=name,
            group=config.group,
            consumer=config.consumer,
            dlq_stream=config.dlq_for(name),
            dead_letter_max_bytes=config.dead_letter_max_bytes,
        )
        for name in config.stream_names()
    ]
