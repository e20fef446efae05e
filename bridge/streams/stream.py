"""Redis Streams I/O, and nothing else: group, read, claim, ack, dead-letter, publish, status.

This is the only module that talks to Redis. Every redis-py error is translated here into
:class:`~bridge.errors.StreamError`, so the consumer loop can back off and reconnect. Entries
are kept as raw bytes; decoding a signal is the codec's job.
"""

from __future__ import annotations

import contextlib
import socket
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Final

import msgspec
import redis.asyncio as aioredis
import redis.exceptions
from opentelemetry import propagate

from bridge.core.signal import Signal, encode_canonical
from bridge.errors import ConfigError, StreamError

__all__ = [
    "DLQ_PREFIX",
    "MAX_AGE_WAIVED_FIELD",
    "READ_MARGIN_S",
    "REDIS_ERROR_MEANINGS",
    "SIGNAL_FIELD",
    "DeadLetter",
    "Entry",
    "GroupStatus",
    "Pending",
    "SignalStream",
    "TrimResult",
    "connect",
    "publish",
    "publish_raw",
    "read_timeout_s",
    "shard_for",
    "translate",
]

SIGNAL_FIELD: Final = b"signal"
# "<stream>/<entry id>" of the entry's first delivery, set when a dead letter is replayed.
ORIGIN_FIELD: Final = b"origin"
# KEYS: stream, dead-letter stream. ARGV: group, entry id, field, value, field, value ...
_DEAD_LETTER_LUA: Final = """
local kind = redis.call('TYPE', KEYS[2])['ok']
if kind ~= 'none' and kind ~= 'stream' then
  return redis.error_reply('WRONGTYPE dead-letter key ' .. KEYS[2] .. ' is a ' .. kind)
end
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return 0
end
redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
return 1
"""
DLQ_PREFIX: Final = "dlq_"
# Set by `dlq replay --allow-expired`: the worker posts the entry whatever its age. Its value
# says when and by whom the operator waived the limit.
MAX_AGE_WAIVED_FIELD: Final = b"replay_max_age_waived"
# KEYS: stream. ARGV: most entries to remove. Finds the lowest id any consumer group of the
# stream still needs and trims below it, in one script so no group can move back in between.
# Per group: its oldest pending entry, else the entry after its last-delivered id; a group at
# 0-0 needs everything. No group: no trim. Ids are compared as (length, text) pairs of their
# decimal parts, exact for 64 bits. The trim is approximate (whole radix-tree nodes, never an
# entry at or above MINID) with a LIMIT, so one call blocks Redis for a bounded time.
# Returns {entries trimmed, the MINID used or ''}.
_TRIM_ACKED_LUA: Final = """
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return ms, seq
end
local function less(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  if #aseq ~= #bseq then return #aseq < #bseq end
  return aseq < bseq
end
local function after(id)
  local ms, seq = parse(id)
  local n = tonumber(seq)
  if #seq > 15 or n == nil then
    return id
  end
  return ms .. '-' .. string.format('%d', n + 1)
end
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {0, ''}
end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  return {0, ''}
end
local floor = nil
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do
    info[group[i]] = group[i + 1]
  end
  if info['last-delivered-id'] == '0-0' then
    return {0, ''}
  end
  local need
  if tonumber(info['pending']) > 0 then
    need = redis.call('XPENDING', KEYS[1], info['name'])[2]
  else
    need = after(info['last-delivered-id'])
  end
  if floor == nil or less(need, floor) then
    floor = need
  end
end
return {redis.call('XTRIM', KEYS[1], 'MINID', '~', floor, 'LIMIT', ARGV[1]), floor}
"""


class Entry(msgspec.Struct, frozen=True):
    """One stream entry: its id and raw fields; ``deliveries`` as Redis counted them."""

    id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1

    def field(self, name: str) -> str | None:
        """Return a field decoded as UTF-8 (replacing bad bytes), or None."""
        raw = self.fields.get(name.encode())
        return None if raw is None else raw.decode("utf-8", "replace")


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """Why an entry could not be delivered; written beside its original fields."""

    reason: str
    error: str
    http_code: int | None = None
    attempts: int = 0
    consumer: str = ""


class Pending(msgspec.Struct, frozen=True):
    """One pending entry as XPENDING lists it: id, owner, ms idle, deliveries so far."""

    id: str
    consumer: str
    idle_ms: int
    deliveries: int


class TrimResult(msgspec.Struct, frozen=True):
    """What one retention pass did: entries removed and the MINID used (None: nothing to do)."""

    trimmed: int
    min_id: str | None


class ConsumerStatus(msgspec.Struct, frozen=True):
    """One consumer of the group: name, entries it holds, ms since it last acted."""

    name: str
    pending: int
    idle_ms: int


class GroupStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``signal-bridge status`` shows."""

    stream: str
    group: str
    length: int
    lag: int | None
    pending: int
    oldest_pending_age_ms: int | None
    consumers: list[ConsumerStatus]
    dead_letters: int
    dead_letter_oldest_age_ms: int | None = None


# What Redis's error prefixes mean to an operator, and why retrying can pass. Every one of them
# refuses the whole command (nothing half-done), so retrying it never duplicates an entry.
REDIS_ERROR_MEANINGS: Final = {
    "OOM": "Redis is out of memory (maxmemory reached, policy noeviction): it refuses writes "
    "that need memory until memory is freed or maxmemory raised",
    "READONLY": "connected to a read-only replica (after a failover the old primary is a "
    "replica now): point BRIDGE_REDIS_URL at the primary",
    "LOADING": "Redis is loading its dataset into memory after a restart: it answers when done",
    "BUSY": "Redis is busy running a long Lua script or function and answers nothing else "
    "until it ends (SCRIPT KILL or FUNCTION KILL stops it)",
    "MASTERDOWN": "this replica lost its link to the primary and serves no stale data",
    "TRYAGAIN": "a cluster slot is migrating: the command can pass a moment later",
    "CLUSTERDOWN": "the Redis Cluster is down (slots not covered)",
    "NOGROUP": "the consumer group or the stream is missing (Redis restarted without data?)",
    "NOPERM": "the Redis ACL user lacks a permission the bridge needs",
}
# Refusals of a moment: the command was not run and will pass once Redis recovers.
_PASSING_CODES: Final = frozenset({"OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"})
_CODES_BY_CLASS: Final = (
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
)


def _error_code(exc: redis.exceptions.RedisError) -> str | None:
    """Redis's error prefix of a reply error (``OOM``, ``BUSY`` ...), None for other failures."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, str) and status:
        return status
    for cls, code in _CODES_BY_CLASS:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, redis.exceptions.ResponseError):
        first = str(exc).split(" ", 1)[0]
        if first.isalpha() and first.isupper():
            return first
    return None


def translate(exc: BaseException, what: str) -> StreamError:
    """Turn a redis-py or socket error into a StreamError that names the error and its meaning."""
    code = _error_code(exc) if isinstance(exc, redis.exceptions.RedisError) else None
    meaning = REDIS_ERROR_MEANINGS.get(code or "", "")
    text = str(exc)
    if code is not None and not text.startswith(code):
        text = f"{code} {text}"
    suffix = f" ({meaning})" if meaning else ""
    if code is not None and isinstance(exc, redis.exceptions.ResponseError):
        message = f"redis refused {what}: {text}{suffix}"
    else:
        message = f"redis unavailable during {what}: {type(exc).__name__}: {text}{suffix}"
    return StreamError(message, missing_group=code == "NOGROUP", code=code, meaning=meaning)


async def _guard(awaitable: Awaitable[Any], what: str) -> Any:  # noqa: ANN401 - redis-py replies are loosely typed; callers convert
    """Await a Redis call, translating its errors into StreamError."""
    try:
        return await awaitable
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise translate(exc, what) from exc


async def probe_database(client: aioredis.Redis, db: int) -> None:
    """PING once at start; a database the server does not have is a ConfigError.

    redis-py SELECTs the URL's database on every new connection, so ``/99`` on a server with 16
    databases would otherwise fail every command, looking like "redis unavailable" forever.
    Any other failure is a StreamError (the caller decides whether to wait for Redis).
    """
    try:
        await client.ping()
    except redis.exceptions.ResponseError as exc:
        if "DB index is out of range" in str(exc):
            raise ConfigError(
                f"BRIDGE_REDIS_URL selects database {db}, which this Redis server does not have "
                "(it has 16, 0-15, unless redis.conf raises `databases`)",
                variable="BRIDGE_REDIS_URL",
            ) from None
        raise StreamError(f"redis refused PING: {exc}") from exc
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise StreamError(f"redis unavailable during PING: {type(exc).__name__}: {exc}") from exc


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _id_ms(entry_id: bytes | str) -> int:
    """Return the millisecond part of a stream entry id."""
    return int(_text(entry_id).partition("-")[0])


def _is_entry_id(value: str) -> bool:
    """Tell whether ``value`` is a full stream entry id (``<ms>-<seq>``)."""
    ms, sep, seq = value.partition("-")
    return bool(sep) and ms.isdigit() and seq.isdigit()


# New entries a producer may add between XGROUP CREATE and the count of skipped ones.
_NEWER_SCAN_LIMIT: Final = 10_000


def _entries(
    raw: Iterable[tuple[bytes, dict[bytes, bytes] | None]],
) -> tuple[list[Entry], list[str]]:
    """Split raw (id, fields) pairs into live entries and ids whose entry was deleted."""
    live: list[Entry] = []
    gone: list[str] = []
    for entry_id, fields in raw or ():
        if fields:
            live.append(Entry(_text(entry_id), fields))
        else:
            gone.append(_text(entry_id))
    return live, gone


# A half-open connection (a partition) must fail a command, not hang it for hours. Without a
# BLOCK time the read timeout stays above the longest XREADGROUP BLOCK the config allows (20 s).
_SOCKET_TIMEOUTS: Final = {"socket_connect_timeout": 5.0, "socket_timeout": 30.0}
# With the worker's BLOCK time known, a read may take BLOCK plus this much before Redis counts as
# gone: a silent Redis is noticed within about BLOCK + 4 s (5 s with the default 1 s BLOCK).
READ_MARGIN_S: Final = 4.0
# A peer that vanished (host down, cable out) is found by TCP keepalive within ~5 s of silence.
_KEEPALIVE_OPTIONS: Final = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}


def read_timeout_s(block_ms: int) -> float:
    """Return the socket read timeout for a worker that BLOCKs ``block_ms`` per read."""
    return block_ms / 1000 + READ_MARGIN_S


@asynccontextmanager
async def connect(
    url: str,
    *,
    cluster: bool = False,
    block_ms: int | None = None,
    **options: Any,  # noqa: ANN401 - redis-py's connection options
) -> AsyncIterator[aioredis.Redis]:
    """Open a redis-py asyncio client from a URL (redis://, rediss://, unix://); close on exit.

    ``cluster=True`` opens a Redis Cluster client from any node's URL; the commands used here
    are the same, each addressed to the node owning its stream's slot. ``block_ms`` (the
    workers' XREADGROUP BLOCK) sizes the read timeout: BLOCK + ``READ_MARGIN_S``.
    """
    timeouts: dict[str, Any] = dict(_SOCKET_TIMEOUTS)
    if block_ms is not None:
        timeouts["socket_timeout"] = read_timeout_s(block_ms)
    options = {**timeouts, **options}
    if cluster:
        from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415 - cluster users only

        cluster_client = RedisCluster.from_url(url, decode_responses=False, **options)
        try:
            # Initialise once, before several workers share the client: redis-py's lazy
            # initialisation races when many coroutines send their first command at once.
            # Unreachable at start: stay lazy, the workers retry with backoff.
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await cluster_client.initialize()
            yield cluster_client  # type: ignore[misc]
        finally:
            await cluster_client.aclose()
        return
    client = aioredis.Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=5,
        socket_keepalive=True,
        socket_keepalive_options=_KEEPALIVE_OPTIONS,
        **options,
    )
    try:
        yield client
    finally:
        await client.aclose()


def shard_for(instrument: str, streams: Sequence[str]) -> str:
    """Pick the stream of an instrument: stable across processes, so its order holds."""
    if len(streams) == 1:
        return streams[0]
    return streams[zlib.crc32(instrument.encode()) % len(streams)]


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
    ) -> None:
        self.redis = redis
        self.stream = stream
        self.group = group
        self.consumer = consumer
        self.dlq_stream = dlq_stream
        self._dead_letter_script = redis.register_script(_DEAD_LETTER_LUA)
        self._trim_script = redis.register_script(_TRIM_ACKED_LUA)

    def __repr__(self) -> str:
        return (
            f"SignalStream(stream={self.stream!r}, group={self.group!r}, "
            f"consumer={self.consumer!r})"
        )

    async def ping(self) -> None:
        """Check that Redis answers."""
        await _guard(self.redis.ping(), "PING")

    async def ensure_group(self, start_id: str = "$") -> bool:
        """Create the group (and the stream) if missing; True when it was created."""
        try:
            await self.redis.xgroup_create(self.stream, self.group, id=start_id, mkstream=True)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" in str(exc):
                return False
            # Out of memory, Redis refuses XGROUP CREATE before it looks for the group; an
            # existing group can still be consumed (XREADGROUP, XACK need no new memory).
            if _error_code(exc) == "OOM" and await self.group_exists():
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
            if _error_code(exc) in _PASSING_CODES:
                raise translate(exc, "XINFO GROUPS") from exc
            return False  # ERR no such key: no stream, so no group
        except (redis.exceptions.RedisError, OSError) as exc:
            raise translate(exc, "XINFO GROUPS") from exc
        return any(_text(g["name"]) == self.group for g in groups)

    async def read(self, count: int, block_ms: int | None) -> list[Entry]:
        """XREADGROUP up to ``count`` new entries (``>``), blocking up to ``block_ms``."""
        if count < 1:
            return []
        reply = await _guard(
            self.redis.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms
            ),
            "XREADGROUP",
        )
        if not reply:
            return []
        return _entries(reply[0][1])[0]

    async def read_own_pending(self, after: str, count: int) -> tuple[list[Entry], list[str]]:
        """XREADGROUP this consumer's own pending entries with ids above ``after``.

        Used at start-up to re-deliver what a previous run of the same consumer left behind.
        Returns (entries with delivery counts, ids of pending entries deleted from the stream).
        """
        reply = await _guard(
            self.redis.xreadgroup(self.group, self.consumer, {self.stream: after}, count=count),
            "XREADGROUP",
        )
        if not reply or not reply[0][1]:
            return [], []
        live, gone = _entries(reply[0][1])
        if live:
            live = await self.with_deliveries(live)
        return live, gone

    async def claim_idle(
        self, min_idle_ms: int, cursor: str, count: int
    ) -> tuple[str, list[Entry], list[str]]:
        """XAUTOCLAIM entries idle longer than ``min_idle_ms`` from dead or stuck consumers.

        Returns (next cursor, claimed entries with delivery counts, ids deleted meanwhile).
        """
        reply = await _guard(
            self.redis.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_ms, cursor, count=count
            ),
            "XAUTOCLAIM",
        )
        next_cursor = _text(reply[0])
        live, gone = _entries(reply[1])
        if len(reply) > 2:
            gone.extend(_text(i) for i in reply[2])
        if live:
            live = await self.with_deliveries(live)
        return next_cursor, live, gone

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
        reply = await _guard(
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
                _text(item["message_id"]),
                _text(item["consumer"]),
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
        replies = await _guard(pipe.execute(), "XRANGE")
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
        reply = await _guard(
            self.redis.xclaim(
                self.stream, self.group, self.consumer, min_idle_ms, [p.id for p in pending]
            ),
            "XCLAIM",
        )
        live, gone = _entries(reply)
        claimed = {e.id for e in live}
        missing = [p.id for p in pending if p.id not in claimed]
        if missing:
            pipe = self.redis.pipeline(transaction=False)
            for entry_id in missing:
                pipe.xrange(self.stream, entry_id, entry_id, count=1)
            exists = await _guard(pipe.execute(), "XRANGE")
            gone += [i for i, found in zip(missing, exists, strict=True) if not found]
        if live:
            live = await self.with_deliveries(live)
        return live, gone

    async def with_deliveries(self, entries: Sequence[Entry]) -> list[Entry]:
        """Attach each entry's delivery count from XPENDING (one range query per batch)."""
        reply = await _guard(
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
        counts = {_text(item["message_id"]): int(item["times_delivered"]) for item in reply}
        return [Entry(e.id, e.fields, counts.get(e.id, e.deliveries)) for e in entries]

    async def ack(self, ids: Sequence[str]) -> int:
        """XACK entries; returns how many were still pending."""
        if not ids:
            return 0
        return int(await _guard(self.redis.xack(self.stream, self.group, *ids), "XACK"))

    async def touch(self, ids: Sequence[str]) -> None:
        """Reset the idle time of entries this consumer is still working on.

        XCLAIM with JUSTID to ourselves does not count a delivery; it keeps other replicas'
        XAUTOCLAIM from taking an entry we are retrying.
        """
        if ids:
            await _guard(
                self.redis.xclaim(
                    self.stream, self.group, self.consumer, 0, list(ids), justid=True
                ),
                "XCLAIM",
            )

    async def dead_letter(self, entry: Entry, letter: DeadLetter) -> None:
        """Write the entry with its reason to the dead-letter stream and XACK it, atomically.

        One Lua script, not MULTI: MULTI/EXEC does not roll back a command that fails at run
        time, so a WRONGTYPE dead-letter key would ack without a dead letter, and a NOGROUP ack
        would write a dead letter on every retry. The script checks first, acks, then writes;
        an entry someone else already acked gets no second dead letter.
        """
        fields: dict[Any, Any] = dict(entry.fields)
        fields.update(
            {
                f"{DLQ_PREFIX}reason": letter.reason,
                f"{DLQ_PREFIX}error": letter.error[:4096],
                f"{DLQ_PREFIX}http_code": "" if letter.http_code is None else letter.http_code,
                f"{DLQ_PREFIX}attempts": letter.attempts,
                f"{DLQ_PREFIX}deliveries": entry.deliveries,
                f"{DLQ_PREFIX}consumer": letter.consumer or self.consumer,
                f"{DLQ_PREFIX}group": self.group,
                f"{DLQ_PREFIX}source_stream": self.stream,
                f"{DLQ_PREFIX}source_id": entry.id,
                f"{DLQ_PREFIX}time_ms": int(time.time() * 1000),
            }
        )
        args: list[Any] = [self.group, entry.id]
        for name, value in fields.items():
            args += (name, value)
        await _guard(
            self._dead_letter_script(keys=[self.stream, self.dlq_stream], args=args),
            "dead letter (XACK + XADD script)",
        )

    async def own_pending(self) -> int:
        """How many entries this consumer holds."""
        reply = await _guard(
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
        await _guard(
            self.redis.xgroup_delconsumer(self.stream, self.group, self.consumer),
            "XGROUP DELCONSUMER",
        )
        return True

    async def status(self) -> GroupStatus:
        """Stream length, group lag and pending, per-consumer pending, oldest age, DLQ size."""
        length = int(await _guard(self.redis.xlen(self.stream), "XLEN"))
        lag: int | None = None
        pending = 0
        consumers: list[ConsumerStatus] = []
        oldest: int | None = None
        if await self.group_exists():
            groups = await _guard(self.redis.xinfo_groups(self.stream), "XINFO GROUPS")
            for group in groups:
                if _text(group["name"]) == self.group:
                    raw_lag = group.get("lag")
                    lag = None if raw_lag is None else int(raw_lag)
                    pending = int(group["pending"])
            raw_consumers = await _guard(
                self.redis.xinfo_consumers(self.stream, self.group), "XINFO CONSUMERS"
            )
            consumers = [
                ConsumerStatus(_text(c["name"]), int(c["pending"]), int(c["idle"]))
                for c in raw_consumers
            ]
            if pending:
                first = await _guard(
                    self.redis.xpending_range(self.stream, self.group, "-", "+", 1),
                    "XPENDING",
                )
                if first:
                    first_id = _text(first[0]["message_id"])
                    oldest = max(0, int(time.time() * 1000) - int(first_id.split("-")[0]))
        dead = int(await _guard(self.redis.xlen(self.dlq_stream), "XLEN"))
        dead_oldest: int | None = None
        if dead:
            first_letter = await _guard(self.redis.xrange(self.dlq_stream, count=1), "XRANGE")
            if first_letter:
                dead_oldest = max(0, int(time.time() * 1000) - _id_ms(first_letter[0][0]))
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
        )

    async def trim_acked(self, limit: int = 10_000) -> TrimResult:
        """XTRIM MINID ~ below the lowest id any group of the stream still needs (one script).

        Works on Redis 7 (8.2's XTRIM ... ACKED does this natively). Another group, lagging or
        idle, keeps everything it has not read: nothing unread or pending is ever trimmed. At
        most ``limit`` entries go per call, in whole nodes, so entries just below the floor
        may stay until their node is wholly below it.
        """
        reply = await _guard(
            self._trim_script(keys=[self.stream], args=[limit]), "XTRIM MINID (script)"
        )
        min_id = _text(reply[1])
        return TrimResult(int(reply[0]), min_id or None)

    async def skipped_by_new_group(self) -> int:
        """Count entries at or below the group's last-delivered id: what a new ``$`` group skips."""
        groups = await _guard(self.redis.xinfo_groups(self.stream), "XINFO GROUPS")
        last = next(
            (_text(g["last-delivered-id"]) for g in groups if _text(g["name"]) == self.group),
            "0-0",
        )
        if last == "0-0":
            return 0
        length = int(await _guard(self.redis.xlen(self.stream), "XLEN"))
        newer = await _guard(
            self.redis.xrange(self.stream, min=f"({last}", count=_NEWER_SCAN_LIMIT), "XRANGE"
        )
        return max(0, length - len(newer))

    async def dead_letter_entry(self, dlq_id: str) -> Entry | None:
        """Return one dead letter by id, or None when the stream has no such entry."""
        if not _is_entry_id(dlq_id):
            return None
        raw = await _guard(self.redis.xrange(self.dlq_stream, dlq_id, dlq_id), "XRANGE")
        live, _ = _entries(raw)
        return live[0] if live else None

    async def scan_dead_letters(
        self,
        *,
        reason: str | None = None,
        since_ms: int | None = None,
        limit: int | None = None,
        page: int = 500,
    ) -> AsyncIterator[Entry]:
        """Yield dead letters oldest first over the WHOLE dead-letter stream, page by page.

        ``since_ms`` starts at letters written at or after that Unix time (a dead letter's id
        is its write time); ``reason`` keeps one reason; ``limit`` stops after that many matches.
        """
        start = f"{since_ms}-0" if since_ms is not None else "-"
        found = 0
        while limit is None or found < limit:
            raw = await _guard(self.redis.xrange(self.dlq_stream, min=start, count=page), "XRANGE")
            live, _ = _entries(raw)
            for entry in live:
                if reason is None or entry.field(f"{DLQ_PREFIX}reason") == reason:
                    yield entry
                    found += 1
                    if limit is not None and found >= limit:
                        return
            if len(raw) < page:
                return
            start = f"({_text(raw[-1][0])}"

    async def dead_letters(self, *, reason: str | None = None, count: int = 1000) -> list[Entry]:
        """List up to ``count`` dead letters, oldest first, optionally only one reason.

        The filter runs over the whole dead-letter stream, not only its first ``count`` entries.
        """
        return [e async for e in self.scan_dead_letters(reason=reason, limit=count)]

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
            entry = await self.dead_letter_entry(dlq_id)
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
            new_id = await _guard(self.redis.xadd(source, original), "XADD")  # type: ignore[arg-type]
            await _guard(self.redis.xdel(self.dlq_stream, dlq_id), "XDEL")
            done.append((dlq_id, _text(new_id)))
        return done

    async def purge_dead_letters(self) -> int:
        """Delete the whole dead-letter stream; returns how many entries it held."""
        count = int(await _guard(self.redis.xlen(self.dlq_stream), "XLEN"))
        await _guard(self.redis.delete(self.dlq_stream), "DEL")
        return count


async def publish(
    redis: aioredis.Redis,
    signal: Signal,
    *,
    stream: str | Sequence[str] = "signals",
    maxlen: int | None = None,
    extra: Mapping[str, str] | None = None,
) -> str:
    """XADD a signal the way the strategy engine should: canonical JSON plus trace context.

    The current OpenTelemetry context goes into ``traceparent``/``tracestate`` fields so the
    bridge's consumer span continues the producer's trace. ``stream`` may be a list of shards
    (``signals:{0}`` ... ``signals:{7}``): the instrument picks one, always the same, so the
    per-instrument order holds. Returns the new entry id.
    """
    if not isinstance(stream, str):
        stream = shard_for(signal.instrument, stream)
    fields: dict[str, str | bytes] = {"signal": encode_canonical(signal)}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    fields.update({k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")})
    if extra:
        fields.update(extra)
    entry_id = await _guard(
        redis.xadd(stream, fields, maxlen=maxlen, approximate=True),  # type: ignore[arg-type]
        "XADD",
    )
    return _text(entry_id)


async def publish_raw(
    redis: aioredis.Redis, fields: Mapping[str, str | bytes], *, stream: str = "signals"
) -> str:
    """XADD arbitrary fields, unvalidated: for replaying, demos and tests of bad input."""
    entry_id = await _guard(redis.xadd(stream, dict(fields)), "XADD")  # type: ignore[arg-type]
    return _text(entry_id)
