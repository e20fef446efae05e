"""The runner's view of the shards: which workers count, their breakers, what they hold.

``ShardWorkers`` is what the probes, the circuit gauges and the SIGTERM line ask; these tests
drive it the way a strategy does, with stand-in workers, and check ``signal_streams`` builds one
stream per configured shard with its own dead-letter stream.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from bridge.app.runner import ShardWorkers, coordinator_settings
from bridge.delivery.worker import Worker
from bridge.streams.group import signal_streams
from bridge.streams.settings import StreamConfig


@dataclass
class _Breaker:
    is_open: bool = False


@dataclass
class _FakeWorker:
    """Just what ShardWorkers reads from a worker."""

    in_flight: int = 0
    breaker: _Breaker = field(default_factory=_Breaker)


def _worker(in_flight: int = 0) -> tuple[Worker, _FakeWorker]:
    fake = _FakeWorker(in_flight)
    return cast("Worker", fake), fake


def test_shard_workers_follow_acquired_and_revoked_shards() -> None:
    """Acquired shards count, in the order taken; a revoked one stops counting; a re-take goes last."""  # noqa: E501
    workers = ShardWorkers()
    a, _ = _worker(2)
    b, _ = _worker(3)
    workers.on_acquired("s:{0}", a)
    workers.on_acquired("s:{1}", b)
    assert workers.current() == [a, b]
    assert workers.in_flight() == 5
    workers.on_revoked("s:{0}")
    workers.on_revoked("s:{0}")  # told twice: still harmless
    assert workers.current() == [b]
    assert workers.in_flight() == 3
    again, _ = _worker()
    workers.on_acquired("s:{0}", again)
    assert workers.current() == [b, again]


def test_a_shard_circuit_reads_whichever_worker_holds_it_now() -> None:
    """The gauge's check follows the shard across workers and is closed while nobody holds it."""
    workers = ShardWorkers()
    is_open = workers.circuit_of("s:{0}")
    assert not is_open()
    first, first_fake = _worker()
    workers.on_acquired("s:{0}", first)
    first_fake.breaker.is_open = True
    assert is_open()
    workers.on_revoked("s:{0}")
    assert not is_open()
    second, _ = _worker()
    workers.on_acquired("s:{0}", second)
    assert not is_open()


async def test_signal_streams_build_one_stream_per_shard_with_its_dead_letters() -> None:
    """Each configured shard gets the group, the consumer and its own dead-letter stream."""
    config = StreamConfig(streams=["s:{0}", "s:{1}"], group="g", consumer="c1")
    client = aioredis.Redis(host="127.0.0.1", port=1)  # never connects: nothing is sent
    streams = signal_streams(config, client)
    await client.aclose()
    assert [s.stream for s in streams] == ["s:{0}", "s:{1}"]
    assert {(s.group, s.consumer) for s in streams} == {("g", "c1")}
    assert [s.dlq_stream for s in streams] == [config.dlq_for("s:{0}"), config.dlq_for("s:{1}")]


def test_coordinator_settings_take_the_lease_timings_and_the_replica_name() -> None:
    """The coordinator gets BRIDGE_CONSUMER as its member name and the lease timings as set."""
    config = StreamConfig(consumer="r7", lease_ttl_ms=9000, lease_renew_ms=1500, start_id="0")
    settings = coordinator_settings(config)
    assert settings.member == "r7"
    assert (settings.lease_ttl_ms, settings.lease_renew_ms) == (9000, 1500)
    assert settings.heartbeat_ttl_ms == config.heartbeat_ttl_ms
    assert settings.start_id == "0"
    assert settings.shutdown_grace_s == config.shutdown_grace_s
