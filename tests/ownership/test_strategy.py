"""Ownership strategies without Redis: what they tell their listener, and how they stop.

Fake workers stand in for the real ones: the strategies only start, stop and count them, so
these tests check the hand-offs to the runner (acquired, revoked, left pending) in milliseconds.
"""

from __future__ import annotations

import ast
import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, cast

import pytest

from bridge.delivery.worker import Worker
from bridge.ownership.assign import Lease
from bridge.ownership.coordinator import Coordinator, CoordinatorSettings, _Owned
from bridge.ownership.leases import LeaseStore
from bridge.ownership.strategy import AllShards
from bridge.streams.group import SignalStream

OWNERSHIP: Final = Path(__file__).resolve().parents[2] / "bridge" / "ownership"
SETTINGS: Final = CoordinatorSettings(
    member="r1",
    start_id="0",
    lease_ttl_ms=1000,
    lease_renew_ms=200,
    heartbeat_ttl_ms=1000,
    shutdown_grace_s=1.0,
)


@dataclass
class _Stream:
    """Just the stream name a strategy reads."""

    stream: str


@dataclass
class _FakeWorker:
    """A worker that runs until stopped (or fails at once when told to), holding ``in_flight``."""

    stream: _Stream
    in_flight: int = 0
    fail: bool = False
    stopping: bool = False
    _stopped: asyncio.Event = field(default_factory=asyncio.Event)

    def stop(self) -> None:
        self.stopping = True
        self._stopped.set()

    async def run(self) -> None:
        if self.fail:
            raise RuntimeError("worker failed")
        await self._stopped.wait()


@dataclass
class _Listener:
    """Records what a strategy tells the runner, in order."""

    events: list[tuple[str, str]] = field(default_factory=list)

    def on_acquired(self, shard: str, worker: Worker) -> None:
        del worker
        self.events.append(("acquired", shard))

    def on_revoked(self, shard: str) -> None:
        self.events.append(("revoked", shard))


class _ReleasingLeases:
    """A LeaseStore stand-in whose releases succeed."""

    async def release(self, shard: str, value: str) -> bool:
        del shard, value
        return True


def _all_shards(
    names: list[str], listener: _Listener, *, failing: str | None = None
) -> tuple[AllShards, list[_FakeWorker]]:
    """AllShards over fake workers, one per name; ``failing`` names one whose run() raises."""
    made: list[_FakeWorker] = []

    def factory(stream: SignalStream, fence: object) -> Worker:
        assert fence is None  # parallel mode fences nothing
        worker = _FakeWorker(cast("_Stream", stream), fail=stream.stream == failing)
        made.append(worker)
        return cast("Worker", worker)

    streams = [cast("SignalStream", _Stream(name)) for name in names]
    return AllShards(streams, factory, listener, shutdown_grace_s=1.0), made


def test_all_shards_announces_every_worker_before_it_runs() -> None:
    """Parallel mode: each shard's worker counts from the start, so probes see it at once."""
    listener = _Listener()
    strategy, workers = _all_shards(["a", "b"], listener)
    assert listener.events == [("acquired", "a"), ("acquired", "b")]
    assert len(workers) == 2
    assert not strategy.stopping


async def test_all_shards_stop_drains_every_worker_and_counts_what_is_left() -> None:
    """stop() stops every worker; run() returns; left_pending sums what they still hold."""
    listener = _Listener()
    strategy, workers = _all_shards(["a", "b"], listener)
    workers[1].in_flight = 3
    task = asyncio.create_task(strategy.run())
    await asyncio.sleep(0)
    strategy.stop()
    await asyncio.wait_for(task, 5)
    assert strategy.stopping
    assert all(worker.stopping for worker in workers)
    assert strategy.left_pending == 3
    assert ("revoked", "a") not in listener.events  # parallel mode never hands a shard over


async def test_all_shards_stops_the_siblings_of_a_failed_worker() -> None:
    """One worker failing stops the others and the failure reaches the runner."""
    strategy, workers = _all_shards(["a", "b"], _Listener(), failing="a")
    with pytest.raises(RuntimeError, match="worker failed"):
        await asyncio.wait_for(strategy.run(), 5)
    assert workers[1].stopping


def _held(coordinator: Coordinator, shard: str) -> tuple[_Owned, _FakeWorker]:
    """Make ``coordinator`` hold ``shard`` with a fake worker that is already done."""
    worker = _FakeWorker(_Stream(shard))
    task: asyncio.Task[None] = asyncio.create_task(asyncio.sleep(0))
    lease = Lease(shard, 1, f"1 r1 {shard}", renewed_at=0.0, ttl_s=1.0)
    owned = _Owned(lease, cast("Worker", worker), task, acquired_at=0.0)
    coordinator.owned[shard] = owned
    return owned, worker


async def test_a_rebalanced_shard_stops_counting_at_once_a_shutdown_one_after_its_release() -> None:
    """Rebalance: revoked before the drain (so /readyz stays up); SIGTERM: after the release."""
    listener = _Listener()
    coordinator = Coordinator(
        cast("LeaseStore", _ReleasingLeases()),
        [],
        SETTINGS,
        lambda stream, fence: cast("Worker", None),
        listener=listener,
    )
    moved, moved_worker = _held(coordinator, "s:{0}")
    coordinator._release_later(moved, why="rebalance")
    assert listener.events == [("revoked", "s:{0}")]  # before the drain has even started
    assert moved_worker.stopping
    await asyncio.gather(*coordinator._releases)
    assert listener.events == [("revoked", "s:{0}")]  # told once, not again on release

    kept, _ = _held(coordinator, "s:{1}")
    coordinator.stop()
    coordinator._release_later(kept, why="shutdown")
    assert listener.events == [("revoked", "s:{0}")]  # a draining shard still counts
    await asyncio.gather(*coordinator._releases)
    assert listener.events == [("revoked", "s:{0}"), ("revoked", "s:{1}")]
    assert coordinator.owned == {}


def test_ownership_imports_neither_the_app_nor_the_settings() -> None:
    """ownership/ sits below config/, app/ and ops/: the runner passes it values and callables."""
    above = ("bridge.app", "bridge.config", "bridge.ops", "bridge.devkit")
    for path in sorted(OWNERSHIP.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module is not None:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            wrong = [name for name in names if name.startswith(above)]
            assert not wrong, f"{path.name} imports {wrong}"
