"""Who works on which shard, and until when: rendezvous assignment and the fenced lease.

Both are pure: :func:`assign` is a function of the sorted live member list and the shard list,
so every replica computes the same map; :class:`Lease` decides on the holder's own monotonic
clock whether it may still post, so a process that was paused (SIGSTOP, a long GC, a VM freeze)
wakes up unable to send.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Lease", "assign", "fence_margin_s"]


def assign(shards: Sequence[str], members: Sequence[str]) -> dict[str, list[str]]:
    """Map each live member to its shards: balanced (floor or ceil of shards / members), sticky.

    Deterministic from the sorted member list, so every replica computes the same map. Quotas:
    the first ``len(shards) % len(members)`` members (sorted) may take one shard more. Each shard,
    in configured order, goes to the member ranking highest for it (rendezvous hashing on
    crc32) that still has room, so a join or a leave moves few shards.
    """
    live = sorted(set(members))
    result: dict[str, list[str]] = {member: [] for member in live}
    if not live:
        return result
    base, extra = divmod(len(shards), len(live))
    quota = {member: base + (1 if i < extra else 0) for i, member in enumerate(live)}
    for shard in shards:
        ranked = sorted(live, key=lambda m: (-_score(shard, m), m))
        for member in ranked:
            if len(result[member]) < quota[member]:
                result[member].append(shard)
                break
    return result


def _score(shard: str, member: str) -> int:
    """Rendezvous weight of ``member`` for ``shard``; the same in every process."""
    return zlib.crc32(f"{shard}\x00{member}".encode())


def fence_margin_s(ttl_ms: int) -> float:
    """How long before the lease's TTL its holder stops posting: a quarter of the TTL.

    With renewals at most every third of the TTL, two renewals may fail before the fence trips,
    and a POST started just before it has a quarter of the TTL to land before another replica
    can hold the lease.
    """
    return ttl_ms / 4000


@dataclass(slots=True)
class Lease:
    """One held shard lease and its fence deadline on this process's monotonic clock."""

    shard: str
    token: int
    value: str
    renewed_at: float  # monotonic time at which the last successful renewal (or SET) started
    ttl_s: float
    lost: bool = False

    @property
    def deadline(self) -> float:
        """Monotonic time after which this process must not post for the shard."""
        return self.renewed_at + self.ttl_s - fence_margin_s(int(self.ttl_s * 1000))

    def valid(self, now: float) -> bool:
        """Tell whether the holder may still post at monotonic time ``now``."""
        return not self.lost and now < self.deadline
