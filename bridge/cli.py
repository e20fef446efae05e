"""The ``signal-bridge`` command: run, publish, status, dlq, demo, ingest-server.

This is the composition root: it loads the config, builds every resource as an async context
manager on one ``AsyncExitStack``, and wires SIGTERM/SIGINT to ``Worker.stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal as os_signal
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from bridge import __version__
from bridge.client import HmacClient
from bridge.config import BridgeConfig, load_config, load_ingest_secrets, redact_url
from bridge.errors import BridgeError, ConfigError, InvalidSignalError
from bridge.health import GroupMonitor, HealthServer
from bridge.signal import Signal, decode_signal
from bridge.stream import DLQ_PREFIX, SignalStream, connect, publish
from bridge.telemetry import configure_logging, log_fields, setup_telemetry
from bridge.worker import Worker

__all__ = ["main"]

log = logging.getLogger("bridge")


def _streams_of(config: BridgeConfig, redis: Any) -> list[SignalStream]:  # noqa: ANN401 - a redis-py client
    """One SignalStream per configured stream (BRIDGE_STREAMS, else BRIDGE_STREAM)."""
    cfg = config.stream
    return [
        SignalStream(
            redis,
            stream=name,
            group=cfg.group,
            consumer=cfg.consumer,
            dlq_stream=cfg.dlq_for(name),
        )
        for name in cfg.stream_names()
    ]


def _install_stop(workers: Sequence[Worker]) -> None:
    """SIGTERM / SIGINT only flip the workers' stop flags."""
    loop = asyncio.get_running_loop()

    def stop() -> None:
        for worker in workers:
            worker.stop()

    for sig in (os_signal.SIGTERM, os_signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop)


async def _wait_for_signal() -> None:
    """Block until SIGTERM or SIGINT (used while delivery is disabled)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (os_signal.SIGTERM, os_signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve_health(
    stack: AsyncExitStack,
    config: BridgeConfig,
    workers: Sequence[Worker],
    metrics_text: Callable[[], bytes],
    *,
    enabled: bool = True,
) -> None:
    """Start the probe endpoints on the exit stack, unless BRIDGE_HEALTH_PORT is 0."""
    if config.telemetry.health_port:
        await stack.enter_async_context(
            HealthServer(
                workers,
                host=config.telemetry.health_host,
                port=config.telemetry.health_port,
                metrics_text=metrics_text,
                delivery_enabled=enabled,
            )
        )


async def run_bridge(config: BridgeConfig) -> None:
    """Run one replica until SIGTERM/SIGINT: telemetry, Redis, client, worker, probes."""
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
                connect(config.stream.redis_url, cluster=config.stream.cluster)
            )
            streams = _streams_of(config, redis)
            if not config.outbound.enabled:
                log.error(
                    "HMAC_PRODUCER_ENABLED is false: signal-bridge will NOT deliver anything; "
                    "entries stay in the stream until it is enabled"
                )
                # The probes stay up (a liveness failure would restart the pod in a loop);
                # /readyz says why this replica takes no traffic.
                await _serve_health(stack, config, [], telemetry.prometheus_text, enabled=False)
                await _wait_for_signal()
                return
            client = await stack.enter_async_context(
                HmacClient(config.outbound, metrics=telemetry.metrics, tracer=telemetry.tracer)
            )
            workers = [
                Worker(
                    stream,
                    client,
                    config.stream,
                    metrics=telemetry.metrics,
                    tracer=telemetry.tracer,
                )
                for stream in streams
            ]
            for stream, worker in zip(streams, workers, strict=True):
                monitor = GroupMonitor(
                    stream, telemetry.metrics, worker, config.telemetry.status_interval_s
                )
                task = asyncio.create_task(monitor.run(), name=f"group-monitor {stream.stream}")
                stack.callback(task.cancel)
            await _serve_health(stack, config, workers, telemetry.prometheus_text)
            _install_stop(workers)
            tasks = [
                asyncio.create_task(w.run(), name=f"worker {w.stream.stream}") for w in workers
            ]
            try:
                await asyncio.gather(*tasks)
            finally:
                # One worker failing must not leave its siblings running on closed clients.
                for worker in workers:
                    worker.stop()
                await asyncio.wait(tasks, timeout=config.stream.shutdown_grace_s + 5)
    finally:
        telemetry.shutdown()
    log.info("signal-bridge stopped")


# --- publish ---------------------------------------------------------------------------------


def _signals_from_args(args: argparse.Namespace) -> list[Signal]:
    """Build signals from --sample, --file (object, list or JSON lines) or from the flags."""
    if args.sample:
        from bridge.demo import sample_signal  # noqa: PLC0415 - demo data only

        now = datetime.now(UTC)
        return [sample_signal(i, now) for i in range(args.sample)]
    if args.file:
        text = Path(args.file).read_bytes() if args.file != "-" else sys.stdin.buffer.read()
        stripped = text.strip()
        if stripped.startswith(b"["):
            return [decode_signal(msgspec.json.encode(item)) for item in msgspec.json.decode(text)]
        return [decode_signal(line) for line in stripped.splitlines() if line.strip()]
    if not (args.instrument and args.side and args.entry_price and args.risk_percent):
        raise InvalidSignalError(
            "publish needs --file, or --instrument, --side, --entry-price and --risk-percent"
        )
    timestamp = (
        datetime.fromisoformat(args.timestamp.replace("Z", "+00:00"))
        if args.timestamp
        else datetime.now(UTC)
    )
    return [
        Signal(
            instrument=args.instrument,
            side=args.side,
            entry_price=args.entry_price,
            take_profit=args.take_profit,
            stop_loss=args.stop_loss,
            risk_percent=args.risk_percent,
            comment=args.comment,
            strategy_name=args.strategy,
            timestamp=timestamp,
            signal_id=args.signal_id,
        )
    ]


async def _publish(config: BridgeConfig, args: argparse.Namespace) -> int:
    signals = _signals_from_args(args)
    async with connect(config.stream.redis_url, cluster=config.stream.cluster) as redis:
        for item in signals:
            entry_id = await publish(redis, item, stream=config.stream.stream_names())
            print(entry_id)
    return 0


# --- status and dlq ----------------------------------------------------------------------------


async def _status(config: BridgeConfig, args: argparse.Namespace) -> int:
    async with connect(config.stream.redis_url, cluster=config.stream.cluster) as redis:
        statuses = [await stream.status() for stream in _streams_of(config, redis)]
    if args.json:
        payload = statuses[0] if len(statuses) == 1 else statuses
        print(msgspec.json.encode(payload).decode())
        return 0
    for status in statuses:
        age = status.oldest_pending_age_ms
        print(f"stream        {status.stream} ({status.length} entries)")
        print(f"group         {status.group}")
        print(f"lag           {'unknown' if status.lag is None else status.lag}")
        print(f"pending       {status.pending}")
        print(f"oldest        {'-' if age is None else f'{age / 1000:.1f}s'}")
        print(f"dead letters  {status.dead_letters} in {config.stream.dlq_for(status.stream)}")
        for consumer in status.consumers:
            print(
                f"  consumer {consumer.name}: {consumer.pending} pending, "
                f"idle {consumer.idle_ms} ms"
            )
    return 0


async def _dlq(config: BridgeConfig, args: argparse.Namespace) -> int:
    async with connect(config.stream.redis_url, cluster=config.stream.cluster) as redis:
        code = 0
        for stream in _streams_of(config, redis):
            code = max(code, await _dlq_one(stream, args))
        return code


async def _dlq_one(stream: SignalStream, args: argparse.Namespace) -> int:
    """Run one dlq sub-command on one stream's dead letters."""
    if args.dlq_command == "list":
        letters = await stream.dead_letters(reason=args.reason, count=args.count)
        rows = [
            {
                "id": e.id,
                **{k.decode(): v.decode("utf-8", "replace") for k, v in e.fields.items()},
            }
            for e in letters
        ]
        if args.json:
            print(msgspec.json.encode(rows).decode())
        for row in [] if args.json else rows:
            print(
                f"{row['id']}  {row.get(DLQ_PREFIX + 'reason', '?'):<15} "
                f"source={row.get(DLQ_PREFIX + 'source_id', '?')}  "
                f"{row.get(DLQ_PREFIX + 'error', '')[:120]}"
            )
        return 0
    if args.dlq_command == "replay":
        if args.all:
            ids = [e.id for e in await stream.dead_letters(reason=args.reason, count=100000)]
        else:
            ids = list(args.ids)
        if not ids:
            print("nothing to replay (give IDs or --all)", file=sys.stderr)
            return 2
        for dlq_id, new_id in await stream.replay(ids):
            print(f"{dlq_id} -> {new_id}")
        return 0
    purged = await stream.purge_dead_letters()
    print(f"purged {purged} dead letters from {stream.dlq_stream}")
    return 0


# --- ingest server -------------------------------------------------------------------------


def _ingest_server(args: argparse.Namespace) -> int:
    """Run the reference ingest server in the foreground."""
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    from bridge.ingest import IngestApp  # noqa: PLC0415 - server side only

    app = IngestApp(secrets=load_ingest_secrets(), tolerance_s=args.tolerance)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        access_log=False,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    return 0


# --- argument parsing ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="signal-bridge",
        description="Deliver trade signals from a Redis Stream to the ingest API, HMAC-signed.",
    )
    parser.add_argument("--version", action="version", version=f"signal-bridge {__version__}")
    parser.add_argument("--config", help="TOML config file (default: $BRIDGE_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="consume the stream and deliver (the service)")
    pub = sub.add_parser("publish", help="XADD signals the way a producer should")
    pub.add_argument("--file", help="JSON object, JSON list or JSON lines; - for stdin")
    pub.add_argument("--sample", type=int, metavar="N", help="publish N sample signals (now)")
    pub.add_argument("--instrument")
    pub.add_argument("--side", choices=["buy", "sell"])
    pub.add_argument("--entry-price", type=float)
    pub.add_argument("--take-profit", type=float)
    pub.add_argument("--stop-loss", type=float)
    pub.add_argument("--risk-percent", type=float)
    pub.add_argument("--strategy", default="manual")
    pub.add_argument("--comment")
    pub.add_argument("--signal-id")
    pub.add_argument("--timestamp", help="RFC 3339 (default: now)")
    status = sub.add_parser("status", help="stream length, lag, pending, dead letters")
    status.add_argument("--json", action="store_true")
    dlq = sub.add_parser("dlq", help="inspect, replay or purge the dead-letter stream")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = dlq_sub.add_parser("list")
    dlq_list.add_argument("--reason")
    dlq_list.add_argument("--count", type=int, default=1000)
    dlq_list.add_argument("--json", action="store_true")
    replay = dlq_sub.add_parser("replay", help="re-publish to the source stream, then remove")
    replay.add_argument("ids", nargs="*")
    replay.add_argument("--all", action="store_true")
    replay.add_argument("--reason", help="with --all: only this reason")
    dlq_sub.add_parser("purge")
    demo = sub.add_parser("demo", help="self-contained demo: embedded Redis and ingest server")
    demo.add_argument("--signals", type=int, default=20)
    ingest = sub.add_parser("ingest-server", help="run the reference ingest server")
    ingest.add_argument("--host", default="127.0.0.1")
    ingest.add_argument("--port", type=int, default=8000)
    ingest.add_argument("--tolerance", type=float, default=300.0)
    ingest.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    ingest.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Pick uvloop when installed (its C transports cut the per-request I/O cost), else asyncio."""
    import os  # noqa: PLC0415 - a test switch

    if os.environ.get("BRIDGE_EVENT_LOOP") == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return None
    return uvloop.new_event_loop


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "demo":
        from bridge.demo import run_demo  # noqa: PLC0415 - demo-only dependencies

        return asyncio.run(run_demo(args.signals))
    if args.command == "ingest-server":
        return _ingest_server(args)
    # Only run needs the ingest settings; operator commands need just Redis.
    env_path = args.config
    if args.command == "run":
        config = load_config(env_path)
        configure_logging(config.telemetry.log_level, config.telemetry.log_format)
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(run_bridge(config))
        return 0
    config = load_config(env_path, delivery=False)
    if args.command == "publish":
        return asyncio.run(_publish(config, args))
    if args.command == "status":
        return asyncio.run(_status(config, args))
    return asyncio.run(_dlq(config, args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``signal-bridge`` and ``python -m bridge``."""
    args = _parser().parse_args(argv)
    if args.command != "run":
        configure_logging("WARNING", "text")
    try:
        return _dispatch(args)
    except ConfigError as exc:
        print(f"signal-bridge: configuration error: {exc}", file=sys.stderr)
        return 2
    except BridgeError as exc:
        print(f"signal-bridge: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
