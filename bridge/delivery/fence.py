"""A strict-mode worker's fence: may it still post, and the lease its writes are made under.

The coordinator builds one per lease acquisition. Called, it answers whether this replica may
still post and read for the shard (on its own monotonic clock, see ``bridge.ownership.assign``);
``stamp`` travels with every POST as ``X-Signal-Lease`` so the server can refuse a stale owner;
``lease_key`` / ``lease_value`` let the ack and dead-letter scripts check in Redis, in the same
script as their write, that the lease is still this replica's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bridge.core.fencing import LeaseStamp

__all__ = ["ShardFence"]


@dataclass(frozen=True, slots=True)
class ShardFence:
    """One held shard lease as its worker sees it; calling it tells whether it still holds."""

    valid: Callable[[], bool]
    stamp: LeaseStamp
    lease_key: str
    lease_value: str
    # Told the token the server holds when it refused this lease as stale (the coordinator
    # raises the shard's fencing counter past it).
    refused: Callable[[int], None] = lambda token: None

    def __call__(self) -> bool:
        """Tell whether this replica may still post and read for the shard."""
        return self.valid()
