"""How a replica decides which shards it works on, and how it tells the runner.

An :class:`Ownership` strategy runs the replica's workers from start to SIGTERM: :class:`AllShards`
(``BRIDGE_ORDERING=parallel``) works on every shard at once; the
:class:`~bridge.ownership.coordinator.Coordinator` (``strict``) works only on the shards whose lease
it holds. Either one builds workers through a :data:`WorkerFactory` and reports each shard it
starts and stops working on to a :class:`ShardListener`, so probes and gauges follow the
shards without holding the strategy's own lists.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Final, Protocol

from bridge.delivery.fence import ShardFence
from bridge.delivery.worker import Worker
from bridge.streams.group import SignalStream

__all__ = ["WORKER_EXIT_EXTRA_S", "AllShards", "Ownership", "ShardListener", "WorkerFactory"]

# How long past the shutdown grace a stopped worker may take to finish its own shutdown.
WORKER_EXIT_EXTRA_S: Final = 5.0

# Builds the Worker of one shard; the fence, when given (strict), says whether it may still post
# (False: stop) and carries the lease its POSTs, acks and dead letters are made under.
WorkerFactory = Callable[[SignalStream, ShardFence | None], Worker]


class ShardListener(Protocol):
    """Told when this replica starts and stops counting a shard's worker as its own."""

    def on_acquired(self, shard: str, worker: Worker) -> None:
        """Count ``worker`` as the one working on ``shard`` for this replica."""

    def on_revoked(self, shard: str) -> None:
        """Stop counting the shard's worker (it is being handed over, or was released)."""


class Ownership(Protocol):
    """Runs a replica's workers until stop(), then drains them."""

    @property
    def stopping(self) -> bool:
        """Tell whether the replica is shutting down."""

    @property
    def left_pending(self) -> int:
        """Entries still held by workers when the drain ended (pending for another replica)."""

    def stop(self) -> None:
        """Ask run() to drain and return; safe to call from a signal handler."""

    async def run(self) -> None:
        """Work on the shards until stop(), then drain."""


class AllShards:
    """Parallel ordering: one Worker per shard, all of them, for the whole life of the replica."""

    def __init__(
        self,
        streams: Sequence[SignalStream],
        worker_factory: WorkerFactory,
        listener: ShardListener,
        *,
        shutdown_grace_s: float,
    ) -> None:
        """Build every shard's worker now and announce it, so probes see them before run()."""
        self.workers = [worker_factory(stream, None) for stream in streams]
        self.shutdown_grace_s = shutdown_grace_s
        for worker in self.workers:
            listener.on_acquired(worker.stream.stream, worker)

    @property
    def stopping(self) -> bool:
        """Tell whether any worker was asked to stop."""
        return any(worker.stopping for worker in self.workers)

    @property
    def left_pending(self) -> int:
        """Entries the workers still hold."""
        return sum(worker.in_flight for worker in self.workers)

    def stop(self) -> None:
        """Stop every worker."""
        for worker in self.workers:
            worker.stop()

    async def run(self) -> None:
        """Run every worker; when one ends or fails, stop the others and wait, bounded."""
        tasks = [
            asyncio.create_task(worker.run(), name=f"worker {worker.stream.stream}")
            for worker in self.workers
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            # One worker failing must not leave its siblings running on closed clients.
            self.stop()
            await asyncio.wait(tasks, timeout=self.shutdown_grace_s + WORKER_EXIT_EXTRA_S)
