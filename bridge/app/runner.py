"""One replica of the service, in either ordering mode: the composition root of ``run``.

:func:`run` builds telemetry, Redis, the streams, the HMAC client, the group monitors, the
operator loops, the probes and the signal handlers once, on one ``AsyncExitStack``, and hands the
shards to an ownership strategy: :class:`~bridge.ownership.strategy.AllShards` for
``BRIDGE_ORDERING=parallel``, the :class:`~bridge.ownership.coordinator.Coordinator` for
``strict``. The strategy reports each shard's worker to :class:`ShardWorkers`, which the probes,
the circuit gauges and the SIGTERM line ask. SIGTERM / SIGINT only ask the strategy to stop; the
workers drain within ``BRIDGE_SHUTDOWN_GRACE_SECONDS`` and one line reports the drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal as os_signal
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack
from typing import Any, Final

from bridge import __version__
from bridge.app.health import GroupMonitor, HealthServer
from bridge.app.progress import DrainReport, ProgressSummary
from bridge.config.loader import BridgeConfig
from bridge.core.secrets import redact_url
from bridge.delivery.fence import ShardFence
from bridge.delivery.outages import OutageLog
from bridge.delivery.worker import Worker, WorkerStats
from bridge.edge.client import HmacClient
from bridge.errors import StreamError
from bridge.ownership.coordinator import Coordinator, CoordinatorSettings
from bridge.ownership.leases import LeaseStore, members_key
from bridge.ownership.strategy import AllShards, Ownership
from bridge.streams.connection import connect, probe_database
from bridge.streams.consumers import ConsumerHygiene
from bridge.streams.group import SignalStream, signal_streams
from bridge.streams.retention import Retention
from bridge.streams.settings import StreamConfig, redis_db
from bridge.telemetry.logs import log_fields
from bridge.telemetry.setup import TelemetryHandle, setup_telemetry

__all__ = ["ShardWorkers", "coordinator_settings", "run"]

log = logging.getLogger("bridge")
_ownership_log = logging.getLogger("bridge.ownership")

_STOP_SIGNALS: Final = (os_signal.SIGTERM, os_signal.SIGINT)


def coordinator_settings(config: StreamConfig) -> CoordinatorSettings:
    """Take the values strict ordering's coordinator needs from the stream settings."""
    return CoordinatorSettings(
        member=config.consumer,
        start_id=config.start_id,
        lease_ttl_ms=config.lease_ttl_ms,
        lease_renew_ms=config.lease_renew_ms,
        heartbeat_ttl_ms=config.heartbeat_ttl_ms,
        shutdown_grace_s=config.shutdown_grace_s,
    )


class ShardWorkers:
    """The worker of each shard that counts for this replica now (a ShardListener).

    A strategy adds a worker when it starts on a shard and removes it when the shard is handed
    over or released; probes, circuit gauges and the SIGTERM line read it at the moment they ask.
    """

    def __init__(self) -> None:
        self._by_shard: dict[str, Worker] = {}

    def on_acquired(self, shard: str, worker: Worker) -> None:
        """Count ``worker`` as the one working on ``shard``."""
        self._by_shard[shard] = worker

    def on_revoked(self, shard: str) -> None:
        """Stop counting the shard's worker."""
        self._by_shard.pop(shard, None)

    def current(self) -> list[Worker]:
        """Return the workers that count now, in the order their shards were taken."""
        return list(self._by_shard.values())

    def in_flight(self) -> int:
        """Entries the counted workers hold right now."""
        return sum(worker.in_flight for worker in self._by_shard.values())

    def circuit_of(self, shard: str) -> Callable[[], bool]:
        """Return a check of the breaker of whichever worker counts for ``shard`` now."""

        def is_open() -> bool:
            """Tell whether the shard's current worker has its breaker open."""
            worker = self._by_shard.get(shard)
            return worker is not None and worker.breaker.is_open

        return is_open


def _on_stop_signals(handler: Callable[[os_signal.Signals], None]) -> None:
    """Call ``handler`` on SIGTERM and SIGINT; it only flips flags (the loop does the rest)."""
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, handler, sig)


async def run(config: BridgeConfig) -> None:
    """Run one replica until SIGTERM/SIGINT: telemetry, Redis, client, workers, probes."""
    log.info(
        "signal-bridge starting",
        extra=log_fields(
            version=__version__,
            streams=config.stream.stream_names(),
            group=config.stream.group,
            consumer=config.stream.consumer,
            redis=redact_url(config.stream.redis_url),
            server=config.outbound.server_url,
            producer_id=config.outbound.producer_id,
        ),
    )
    telemetry = setup_telemetry(
        config.telemetry.otel_env,
        instance_id=config.stream.consumer,
        prometheus=config.telemetry.health_port != 0,
    )
    try:
        async with AsyncExitStack() as stack:
            redis = await stack.enter_async_context(
                connect(
                    config.stream.redis_url,
                    cluster=config.stream.cluster,
                    block_ms=config.stream.block_ms,
                    password=config.stream.redis_password,
                )
            )
            # A database the server lacks is a settings error (exit 2); Redis being down at
            # start is not: the workers wait for it with backoff.
            with contextlib.suppress(StreamError):
                await probe_database(redis, redis_db(config.stream.redis_url))
            streams = signal_streams(config.stream, redis)
            if not config.outbound.enabled:
                await _idle(stack, config, streams, telemetry)
                return
            client = await stack.enter_async_context(
                HmacClient(config.outbound, metrics=telemetry.metrics, tracer=telemetry.tracer)
            )
            telemetry.metrics.observe_event_loop(asyncio.get_running_loop())
            await _deliver(
                stack, config, redis=redis, streams=streams, client=client, telemetry=telemetry
            )
    finally:
        telemetry.shutdown()
    log.info("signal-bridge stopped")


async def _idle(
    stack: AsyncExitStack,
    config: BridgeConfig,
    streams: list[SignalStream],
    telemetry: TelemetryHandle,
) -> None:
    """Delivery switched off: keep the probes up until SIGTERM/SIGINT, deliver nothing."""
    log.error(
        "HMAC_PRODUCER_ENABLED is false: signal-bridge will NOT deliver anything; "
        "entries stay in the stream until it is enabled"
    )
    # The probes stay up (a liveness failure would restart the pod in a loop); /readyz says
    # why this replica takes no traffic.
    await _serve_health(stack, config, ShardWorkers(), streams[0], telemetry, enabled=False)
    stopped = asyncio.Event()
    _on_stop_signals(lambda sig: stopped.set())
    await stopped.wait()


async def _deliver(
    stack: AsyncExitStack,
    config: BridgeConfig,
    *,
    redis: Any,  # noqa: ANN401 - a redis-py client (single node or cluster)
    streams: list[SignalStream],
    client: HmacClient,
    telemetry: TelemetryHandle,
) -> None:
    """Hand the shards to the ordering mode's strategy; monitors, probes and drain around it."""
    cfg = config.stream
    workers = ShardWorkers()
    # One count per shard across its successive workers, for the progress and drain lines.
    stats = {stream.stream: WorkerStats() for stream in streams}
    # One outage log for every shard: they all post to the same server, so an outage is said once.
    outages = OutageLog(interval_s=config.telemetry.summary_interval_s)

    def make_worker(stream: SignalStream, fence: ShardFence | None) -> Worker:
        """Build the Worker of one shard (fenced by its lease in strict mode)."""
        worker = Worker(
            stream,
            client,
            cfg,
            metrics=telemetry.metrics,
            tracer=telemetry.tracer,
            fence=fence,
            outages=outages,
        )
        worker.stats = stats[stream.stream]
        return worker

    strategy: Ownership
    if cfg.ordering == "strict":
        strategy = Coordinator(
            LeaseStore(
                redis, group=cfg.group, members_key=members_key(cfg.stream_names(), cfg.group)
            ),
            streams,
            coordinator_settings(cfg),
            make_worker,
            listener=workers,
            metrics=telemetry.metrics,
        )
        _ownership_log.info(
            "strict ordering: shards are balanced over the live replicas through leases",
            extra=log_fields(
                shards=len(streams),
                lease_ttl_ms=cfg.lease_ttl_ms,
                lease_renew_ms=cfg.lease_renew_ms,
                heartbeat_ttl_ms=cfg.heartbeat_ttl_ms,
            ),
        )
    else:
        strategy = AllShards(streams, make_worker, workers, shutdown_grace_s=cfg.shutdown_grace_s)
    for stream in streams:
        _start_stream_loops(
            stack, config, stream, workers=workers, stats=stats[stream.stream], telemetry=telemetry
        )
    await _serve_health(stack, config, workers, streams[0], telemetry)
    drain = DrainReport(cfg.shutdown_grace_s)

    def stop(sig: os_signal.Signals) -> None:
        """Say so once, then ask the strategy to drain every shard."""
        if not strategy.stopping:
            drain.stopping(sig.name, workers.in_flight())
        strategy.stop()

    _on_stop_signals(stop)
    try:
        await strategy.run()
    finally:
        drain.finished(list(stats.values()), strategy.left_pending)


def _start_stream_loops(
    stack: AsyncExitStack,
    config: BridgeConfig,
    stream: SignalStream,
    *,
    workers: ShardWorkers,
    stats: WorkerStats,
    telemetry: TelemetryHandle,
) -> None:
    """Start one stream's group monitor, retention, consumer hygiene and progress loops.

    Each is a task cancelled with the stack.
    """
    monitor = GroupMonitor(
        stream,
        telemetry.metrics,
        workers.circuit_of(stream.stream),
        config.telemetry.status_interval_s,
    )
    loops: list[tuple[str, Coroutine[Any, Any, None]]] = [
        (f"group-monitor {stream.stream}", monitor.run())
    ]
    if config.stream.trim_acked:  # safe from every replica: trims below what all acked
        retention = Retention(stream, telemetry.metrics, config.stream.trim_interval_s)
        loops.append((f"retention {stream.stream}", retention.run()))
    if config.stream.consumer_expire_s:  # never this replica's own; a script re-checks each
        hygiene = ConsumerHygiene(stream, telemetry.metrics, config.stream.consumer_expire_s)
        loops.append((f"consumer-hygiene {stream.stream}", hygiene.run()))
    if config.telemetry.summary_interval_s:
        summary = ProgressSummary(
            stream.stream, stats, lambda: monitor.status, config.telemetry.summary_interval_s
        )
        loops.append((f"summary {stream.stream}", summary.run()))
    for name, coro in loops:
        task = asyncio.create_task(coro, name=name)
        stack.callback(task.cancel)


async def _serve_health(
    stack: AsyncExitStack,
    config: BridgeConfig,
    workers: ShardWorkers,
    first: SignalStream,
    telemetry: TelemetryHandle,
    *,
    enabled: bool = True,
) -> None:
    """Start the probe endpoints on the exit stack, unless BRIDGE_HEALTH_PORT is 0."""
    if config.telemetry.health_port:
        await stack.enter_async_context(
            HealthServer(
                workers.current,
                host=config.telemetry.health_host,
                port=config.telemetry.health_port,
                metrics_text=telemetry.prometheus_text,
                delivery_enabled=enabled,
                ping=first.ping,
            )
        )
