"""Shard leases with fencing tokens, the replicas' heartbeats, and a new owner's takeover.

Each strict-ordering shard has one lease key and one fencing counter per group, both built on the
stream's hash tag so one Lua script can touch them on Redis Cluster.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Final

import msgspec
import redis.asyncio as aioredis

from bridge.streams.connection import guard
from bridge.streams.entries import as_text
from bridge.streams.group import SignalStream
from bridge.streams.scripts import load

__all__ = [
    "LeaseHolder",
    "LeaseStore",
    "claim_strays",
    "hash_tagged",
    "members_key",
    "take_pending",
]

_ACQUIRE_LUA: Final = load("lease_acquire")
_RENEW_LUA: Final = load("lease_renew")
_RELEASE_LUA: Final = load("lease_release")
_HEARTBEAT_LUA: Final = load("heartbeat")
_FENCE_RAISE_LUA: Final = load("fence_raise")
_TAKE_LUA: Final = load("take_pending")
_STRAYS_LUA: Final = load("claim_strays")
# Entries moved per periodic claim of strays (a late XREADGROUP hands out one batch at most).
_STRAYS_PER_CALL: Final = 1000


class LeaseHolder(msgspec.Struct, frozen=True, kw_only=True):
    """Who holds a shard's lease right now, as ``status`` shows it."""

    consumer: str
    instance: str
    fencing_token: int
    expires_in_ms: int


def hash_tagged(name: str) -> str:
    """``name`` itself when it has a Redis Cluster ``{hash tag}``, else ``{name}``.

    Keys built on it (``<base>:lease:<group>``) hash with the stream's tag, so a shard's lease and
    fencing counter share one slot (one script) on Redis Cluster.
    """
    start = name.find("{")
    if start != -1:
        end = name.find("}", start + 1)
        if end > start + 1:
            return name
    return f"{{{name}}}"


def members_key(shards: Sequence[str], group: str) -> str:
    """Return the key of the sorted set of live replicas (carries the first shard's tag)."""
    return f"{hash_tagged(shards[0])}:replicas:{group}"


class LeaseStore:
    """Shard leases with fencing tokens and the replicas' heartbeats, one group of streams."""

    def __init__(self, redis: aioredis.Redis, *, group: str, members_key: str) -> None:
        self.redis = redis
        self.group = group
        self.members_key = members_key
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._heartbeat = redis.register_script(_HEARTBEAT_LUA)
        self._fence_raise = redis.register_script(_FENCE_RAISE_LUA)

    def lease_key(self, stream: str) -> str:
        """Return the lease key of one shard for this group (carries the shard's hash tag)."""
        return f"{hash_tagged(stream)}:lease:{self.group}"

    def fence_key(self, stream: str) -> str:
        """Return the key of the shard's fencing counter (INCRed per acquisition)."""
        return f"{hash_tagged(stream)}:fence:{self.group}"

    async def acquire(self, stream: str, owner: str, ttl_ms: int) -> tuple[int, str]:
        """SET NX PX the shard's lease; (token, value) when taken, (0, holder's value) if not."""
        reply = await guard(
            self._acquire(
                keys=[self.lease_key(stream), self.fence_key(stream)], args=[owner, ttl_ms]
            ),
            "lease acquire script",
        )
        return int(reply[0]), as_text(reply[1])

    async def renew(self, stream: str, value: str, ttl_ms: int) -> bool:
        """Extend the lease to ``ttl_ms`` from now if it still holds ``value``."""
        reply = await guard(
            self._renew(keys=[self.lease_key(stream)], args=[value, ttl_ms]),
            "lease renew script",
        )
        return bool(reply)

    async def raise_fence(self, stream: str, token: int) -> int:
        """Raise the shard's fencing counter to at least ``token``; return the counter."""
        reply = await guard(
            self._fence_raise(keys=[self.fence_key(stream)], args=[token]), "fence raise script"
        )
        return int(reply)

    async def release(self, stream: str, value: str) -> bool:
        """Delete the lease if it still holds ``value``; False when it was lost before."""
        reply = await guard(
            self._release(keys=[self.lease_key(stream)], args=[value]), "lease release script"
        )
        return bool(reply)

    async def holder(self, stream: str) -> str | None:
        """Return the lease value (``<token> <consumer> <instance>``); None when free."""
        value = await guard(self.redis.get(self.lease_key(stream)), "GET")
        return None if value is None else as_text(value)

    async def describe(self, stream: str) -> LeaseHolder | None:
        """Return the shard's lease holder, its fencing token and time left; None when free."""
        key = self.lease_key(stream)
        async with self.redis.pipeline(transaction=True) as tx:
            tx.get(key)
            tx.pttl(key)
            value, ttl = await guard(tx.execute(), "GET + PTTL")
        if value is None:
            return None
        token, _, owner = as_text(value).partition(" ")
        consumer, _, instance = owner.partition(" ")
        return LeaseHolder(
            consumer=consumer,
            instance=instance,
            fencing_token=int(token) if token.isdigit() else 0,
            expires_in_ms=max(int(ttl), 0),
        )

    @property
    def standby_key(self) -> str:
        """Return the key of the live replicas that said they are not assignable (same tag)."""
        return f"{self.members_key}:standby"

    async def heartbeat(self, member: str, ttl_ms: int, *, assignable: bool = True) -> list[str]:
        """Say ``member`` is live for ``ttl_ms``; return the members to assign shards to, sorted.

        Those are the live members that are assignable, or every live member when none is.
        ``assignable=False``: the member cannot keep leases now; it is passed over. The send
        time (this host's clock, taken now) lets Redis ignore a heartbeat overtaken by a later
        one of the same member.
        """
        sent_ms = time.time_ns() // 1_000_000
        reply = await guard(
            self._heartbeat(
                keys=[self.members_key, self.standby_key, f"{self.members_key}:sent"],
                args=[member, ttl_ms, 1 if assignable else 0, sent_ms],
            ),
            "heartbeat script",
        )
        return sorted(as_text(m) for m in reply)

    async def leave(self, member: str) -> None:
        """Remove ``member`` from the live replicas at once (a clean shutdown)."""
        await guard(self.redis.zrem(self.members_key, member), "ZREM")
        await guard(self.redis.zrem(self.standby_key, member), "ZREM")
        await guard(self.redis.hdel(f"{self.members_key}:sent", member), "HDEL")


async def take_pending(
    stream: SignalStream, lease_key: str, lease_value: str, count: int = 1000
) -> tuple[int, list[str]] | None:
    """Move every pending entry of the group to ``stream.consumer`` (XAUTOCLAIM idle 0, JUSTID).

    Used by a new shard owner, before its worker starts: the worker then re-reads them as its
    own pending, in id order. Each round runs only while ``lease_key`` holds ``lease_value``
    (checked in the same script; the lease key carries the stream's hash tag, so one slot).
    Returns (entries taken, ids of pending entries deleted from the stream, which Redis drops
    from the pending list), or None when the lease is no longer ours.
    """
    script = stream.redis.register_script(_TAKE_LUA)
    cursor, taken, deleted = "0-0", 0, list[str]()
    while True:
        reply = await guard(
            script(
                keys=[stream.stream, lease_key],
                args=[stream.group, stream.consumer, cursor, count, lease_value],
            ),
            "XAUTOCLAIM script",
        )
        if not reply or reply[0] is None:
            return None
        cursor = as_text(reply[0])
        taken += int(reply[1])
        deleted.extend(as_text(i) for i in reply[2])
        if cursor == "0-0":
            return taken, deleted


async def claim_strays(stream: SignalStream, lease_key: str, lease_value: str) -> int | None:
    """Move to ``stream.consumer`` the shard's entries pending for any other consumer.

    The owner runs it with each renewal: entries a dead owner's late XREADGROUP took after the
    takeover are moved here (idle 0, JUSTID) within one renew period, in the same script that
    checks the lease still holds ``lease_value``. Returns how many moved; None when the lease is
    no longer ours.
    """
    script = stream.redis.register_script(_STRAYS_LUA)
    reply = await guard(
        script(
            keys=[stream.stream, lease_key],
            args=[stream.group, stream.consumer, lease_value, _STRAYS_PER_CALL],
        ),
        "XCLAIM strays script",
    )
    moved = int(reply)
    return None if moved < 0 else moved
