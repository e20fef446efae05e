"""The ``signal-bridge`` command: run, check, publish, status, dlq, demo, ingest-server.

This is the composition root: it loads the config, builds every resource as an async context
manager on one ``AsyncExitStack``, and wires SIGTERM/SIGINT to ``Worker.stop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import secrets
import signal as os_signal
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AsyncExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg_attrs

from bridge import __version__
from bridge.app.health import GroupMonitor, HealthServer
from bridge.app.progress import DrainReport, ProgressSummary
from bridge.config.loader import (
    BridgeConfig,
    load_config,
    load_ingest_secrets,
    otel_environment,
    redact_url,
    redis_db,
)
from bridge.core.signal import Signal, decode_signal
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.errors import BridgeError, ConfigError, InvalidSignalError, StreamError, UsageError
from bridge.ops.dlq import parse_since, run_dlq_command
from bridge.ownership.coordinator import run_strict
from bridge.streams.connection import connect, probe_database
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from bridge.streams.retention import Retention
from bridge.telemetry.logs import configure_logging, log_fields
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.setup import setup_telemetry

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


def _install_stop(workers: Sequence[Worker], report: DrainReport | None = None) -> None:
    """SIGTERM / SIGINT only flip the workers' stop flags (and say so in one line)."""
    loop = asyncio.get_running_loop()

    def stop(sig: os_signal.Signals) -> None:
        if report is not None and not any(w.stopping for w in workers):
            report.stopping(sig.name, sum(w.in_flight for w in workers))
        for worker in workers:
            worker.stop()

    for sig in (os_signal.SIGTERM, os_signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop, sig)


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


def _start_operator_loops(
    config: BridgeConfig,
    stack: AsyncExitStack,
    *,
    stream: SignalStream,
    worker: Worker,
    monitor: GroupMonitor,
    metrics: Metrics,
) -> None:
    """Start one stream's retention and progress-summary loops, cancelled with the stack."""
    loops: list[tuple[str, Coroutine[Any, Any, None]]] = []
    if config.stream.trim_acked:
        retention = Retention(stream, metrics, config.stream.trim_interval_s)
        loops.append((f"retention {stream.stream}", retention.run()))
    if config.telemetry.summary_interval_s:
        summary = ProgressSummary(
            stream.stream, worker.stats, lambda: monitor.status, config.telemetry.summary_interval_s
        )
        loops.append((f"summary {stream.stream}", summary.run()))
    for name, coro in loops:
        task = asyncio.create_task(coro, name=name)
        stack.callback(task.cancel)


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
                connect(
                    config.stream.redis_url,
                    cluster=config.stream.cluster,
                    block_ms=config.stream.block_ms,
                )
            )
            # A database the server lacks is a settings error (exit 2); Redis being down at
            # start is not: the workers wait for it with backoff.
            with contextlib.suppress(StreamError):
                await probe_database(redis, redis_db(config.stream.redis_url))
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
            telemetry.metrics.observe_event_loop(asyncio.get_running_loop())
            if config.stream.ordering == "strict":
                await run_strict(config, redis, client, telemetry)
                log.info("signal-bridge stopped")
                return
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
                _start_operator_loops(
                    config,
                    stack,
                    stream=stream,
                    worker=worker,
                    monitor=monitor,
                    metrics=telemetry.metrics,
                )
            drain = DrainReport(config.stream.shutdown_grace_s)
            await _serve_health(stack, config, workers, telemetry.prometheus_text)
            _install_stop(workers, drain)
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
                drain.finished([w.stats for w in workers], sum(w.in_flight for w in workers))
    finally:
        telemetry.shutdown()
    log.info("signal-bridge stopped")


# --- publish ---------------------------------------------------------------------------------

# Signal field -> the publish option that sets it, so an error names what the user typed.
_FLAG_OF_FIELD: Final = {
    "instrument": "--instrument",
    "side": "--side",
    "entry_price": "--entry-price",
    "take_profit": "--take-profit",
    "stop_loss": "--stop-loss",
    "risk_percent": "--risk-percent",
    "comment": "--comment",
    "strategy_name": "--strategy",
    "signal_id": "--signal-id",
    "timestamp": "--timestamp",
}


def _signals_from_args(args: argparse.Namespace) -> list[Signal]:
    """Build signals from --sample, --file (object, list or JSON lines) or from the flags.

    Every mistake is a UsageError naming the option, the file or the item that is wrong.
    """
    if args.sample is not None:
        return _samples(args.sample)
    if args.file:
        return _signals_from_file(args.file)
    return [_signal_from_flags(args)]


def _samples(count: int) -> list[Signal]:
    """``count`` sample signals stamped now, with signal_ids unique to this run."""
    from bridge.devkit.demo import sample_signal  # noqa: PLC0415 - demo data only

    if count < 1:
        raise UsageError(f"--sample must be at least 1, got {count}")
    now = datetime.now(UTC)
    prefix = f"sample-{secrets.token_hex(4)}"
    return [sample_signal(i, now, id_prefix=prefix) for i in range(count)]


def _signals_from_file(name: str) -> list[Signal]:
    """Decode a JSON object, a JSON list or JSON lines from ``name`` (``-``: stdin)."""
    where = "stdin" if name == "-" else f"--file {name}"
    try:
        text = Path(name).read_bytes() if name != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise UsageError(f"{where}: cannot read: {exc.strerror or exc}") from None
    stripped = text.strip()
    if not stripped:
        raise UsageError(f"{where}: no signals (the input is empty)")
    try:
        whole = msgspec.json.decode(stripped)  # one object (perhaps pretty-printed) or a list
    except msgspec.DecodeError as exc:
        if stripped.startswith(b"["):
            raise UsageError(f"{where}: not valid JSON: {exc}") from None
        whole = None  # JSON lines, one signal per line
    if isinstance(whole, list):
        raw = [msgspec.json.encode(item) for item in whole]
        label = "item"
    elif whole is not None:
        raw, label = [stripped], "signal"
    else:
        raw = [line for line in stripped.splitlines() if line.strip()]
        label = "line"
    if not raw:
        raise UsageError(f"{where}: no signals (the list is empty)")
    signals = []
    for number, item in enumerate(raw, 1):
        try:
            signals.append(decode_signal(item))
        except InvalidSignalError as exc:
            position = f" {label} {number}" if len(raw) > 1 else ""
            raise UsageError(f"{where}{position}: {exc}") from None
    return signals


def _signal_from_flags(args: argparse.Namespace) -> Signal:
    """One signal from --instrument, --side, --entry-price, --risk-percent and the other flags."""
    missing = [
        flag
        for flag, value in (
            ("--instrument", args.instrument),
            ("--side", args.side),
            ("--entry-price", args.entry_price),
            ("--risk-percent", args.risk_percent),
        )
        if value is None
    ]
    if missing:
        raise UsageError(f"publish needs {', '.join(missing)} (or --file FILE, or --sample N)")
    if args.timestamp:
        try:
            timestamp = datetime.fromisoformat(args.timestamp.replace("Z", "+00:00"))
        except ValueError:
            raise UsageError(
                f"--timestamp: {args.timestamp!r} is not an RFC 3339 time "
                "(e.g. 2026-11-28T10:00:00Z)"
            ) from None
        if timestamp.tzinfo is None:
            raise UsageError(f"--timestamp: {args.timestamp!r} needs a UTC offset or Z")
    else:
        timestamp = datetime.now(UTC)
    try:
        return Signal(
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
    except InvalidSignalError as exc:
        flag = _FLAG_OF_FIELD.get(exc.field or "", "publish")
        raise UsageError(f"{flag}: {exc}") from None


async def _publish(config: BridgeConfig, args: argparse.Namespace) -> int:
    signals = _signals_from_args(args)
    telemetry = setup_telemetry(
        config.telemetry.otel_env, instance_id=config.stream.consumer, prometheus=False
    )
    try:
        async with connect(config.stream.redis_url, cluster=config.stream.cluster) as redis:
            for item in signals:
                with _producer_span(telemetry.tracer, config.stream.stream_names()):
                    entry_id = await publish(redis, item, stream=config.stream.stream_names())
                print(entry_id)
    finally:
        telemetry.shutdown()
    return 0


@contextlib.contextmanager
def _producer_span(tracer: trace.Tracer, streams: Sequence[str]) -> Iterator[None]:
    """Make a PRODUCER span current so ``publish`` stores its traceparent in the entry.

    Only a sampled span (an exporter is configured) is made current: an unsampled traceparent
    would stop the bridge and the server from recording their part of the trace.
    """
    name = f"publish {streams[0]}" if len(streams) == 1 else "publish"
    with tracer.start_as_current_span(
        name,
        kind=trace.SpanKind.PRODUCER,
        attributes={
            msg_attrs.MESSAGING_SYSTEM: "redis",
            msg_attrs.MESSAGING_OPERATION_TYPE: "send",
        },
    ) as span:
        if span.get_span_context().trace_flags.sampled:
            yield
            return
    yield


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
        return await run_dlq_command(_streams_of(config, redis), args)


# --- ingest server -------------------------------------------------------------------------


def _ingest_server(args: argparse.Namespace) -> int:
    """Run the reference ingest server in the foreground, with JSON logs and OpenTelemetry."""
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    from bridge.devkit.ingest import IngestApp  # noqa: PLC0415 - server side only

    configure_logging("INFO", "json")
    secrets = load_ingest_secrets()
    telemetry = setup_telemetry(
        otel_environment(),
        instance_id=f"{args.host}:{args.port}",
        prometheus=False,
        service_name="signal-bridge-ingest",
    )
    app = IngestApp(secrets=secrets, tolerance_s=args.tolerance)
    log.info(
        "ingest server starting",
        extra=log_fields(
            version=__version__,
            host=args.host,
            port=args.port,
            tls=bool(args.ssl_certfile),
            key_ids=sorted(secrets),
            tolerance_s=args.tolerance,
        ),
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found: make
    # that a no-op, so telemetry is flushed and the exit code is 0 rather than death by signal.
    stopped_by: list[str] = []
    previous = os_signal.signal(
        os_signal.SIGTERM, lambda sig, frame: stopped_by.append(os_signal.Signals(sig).name)
    )
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            log_config=None,  # keep our one-JSON-object-per-line handler
            access_log=False,
            date_header=False,  # the app sends Date from its own clock
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    finally:
        os_signal.signal(os_signal.SIGTERM, previous)
        telemetry.shutdown()
    log.info(
        "ingest server stopped", extra=log_fields(signal=stopped_by[0] if stopped_by else None)
    )
    return 0


# --- argument parsing ----------------------------------------------------------------------

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_EPILOG: Final = """exit codes:
  0    success
  1    runtime failure (Redis or the ingest server unreachable, a check failed, ...)
  2    usage or settings error (a bad option, value, input file or setting)
  130  interrupted (Ctrl-C)
"""

# Options every command accepts before or after its name (``--config f run`` or ``run --config
# f``). SUPPRESS keeps a sub-command from overwriting a value given before its name.
_COMMON: Final = argparse.ArgumentParser(add_help=False)
_COMMON.add_argument(
    "--config",
    default=argparse.SUPPRESS,
    metavar="FILE",
    help="TOML config file (default: $BRIDGE_CONFIG)",
)


def _command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help_text: str | None = None,
) -> argparse.ArgumentParser:
    """Add one (sub-)command that takes the common options; every command goes through here."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name, help=help_text, parents=[_COMMON], description=help_text
    )
    return parser


def _add_publish(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the publish command and its signal flags."""
    pub = _command(sub, "publish", "XADD signals the way a producer should")
    pub.add_argument("--file", help="JSON object, JSON list or JSON lines; - for stdin")
    pub.add_argument(
        "--sample", type=int, metavar="N", help="publish N sample signals (now, ids new per run)"
    )
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


def _add_dlq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the dlq commands; a new one is one more ``_command(dlq_sub, ...)`` line here."""
    dlq = _command(sub, "dlq", "inspect, replay or purge the dead-letter stream")
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = _command(dlq_sub, "list", "dead letters, oldest first")
    dlq_list.add_argument("--reason", help="only this reason (over the whole stream)")
    dlq_list.add_argument(
        "--since", type=parse_since, help="dead-lettered since: 15m, 2h, or a time"
    )
    dlq_list.add_argument("--count", type=int, default=1000, help="at most N matches")
    dlq_list.add_argument("--json", action="store_true")
    show = _command(dlq_sub, "show", "one dead letter: every field, the signal, the error")
    show.add_argument("id")
    show.add_argument("--json", action="store_true")
    replay = _command(dlq_sub, "replay", "re-publish to the source stream, then remove")
    replay.add_argument("ids", nargs="*")
    replay.add_argument("--all", action="store_true", help="every dead letter (with filters)")
    replay.add_argument("--reason", help="only this reason")
    replay.add_argument("--since", type=parse_since, help="dead-lettered since: 15m, 2h, a time")
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    replay.add_argument(
        "--allow-expired",
        action="store_true",
        help="post even if older than BRIDGE_SIGNAL_MAX_AGE_SECONDS (logged; keeps timestamp)",
    )
    _command(dlq_sub, "purge", "delete the dead-letter stream")


def _add_ingest_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the reference ingest server command."""
    ingest = _command(sub, "ingest-server", "run the reference ingest server")
    ingest.add_argument("--host", default="127.0.0.1")
    ingest.add_argument("--port", type=int, default=8000)
    ingest.add_argument("--tolerance", type=float, default=300.0)
    ingest.add_argument("--ssl-certfile", help="serve HTTPS with this certificate (PEM)")
    ingest.add_argument("--ssl-keyfile", help="the certificate's private key (PEM)")


def _parser() -> argparse.ArgumentParser:
    """Build the command line: common options, then one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="signal-bridge",
        description="Deliver trade signals from a Redis Stream to the ingest API, HMAC-signed.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"signal-bridge {__version__}")
    # Its own --config (default None): _COMMON's action is shared with every sub-command, so
    # changing its default here would let each sub-command reset the value given before it.
    parser.add_argument(
        "--config", metavar="FILE", help="TOML config file (default: $BRIDGE_CONFIG)"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _command(sub, "run", "consume the stream and deliver (the service)")
    _command(
        sub,
        "check",
        "validate the settings, reach Redis and the ingest server, print the effective settings",
    )
    _add_publish(sub)
    status = _command(sub, "status", "stream length, lag, pending, dead letters")
    status.add_argument("--json", action="store_true")
    _add_dlq(sub)
    demo = _command(sub, "demo", "self-contained demo: embedded Redis and ingest server")
    demo.add_argument("--signals", type=int, default=20)
    _add_ingest_server(sub)
    return parser


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Pick uvloop when installed (its C transports cut the per-request I/O cost), else asyncio."""
    if os.environ.get("BRIDGE_EVENT_LOOP") == "asyncio":
        return None
    try:
        import uvloop  # noqa: PLC0415 - optional accelerator
    except ImportError:
        return None
    return uvloop.new_event_loop


def _dispatch(args: argparse.Namespace) -> int:
    """Run the chosen command; return its exit code (errors are raised, main maps them)."""
    if args.command == "demo":
        from bridge.devkit.demo import run_demo  # noqa: PLC0415 - demo-only dependencies

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
        return EXIT_OK
    if args.command == "check":
        from bridge.ops.check import run_check  # noqa: PLC0415 - only this command needs it

        return asyncio.run(run_check(load_config(env_path)))
    config = load_config(env_path, delivery=False)
    if args.command == "publish":
        return asyncio.run(_publish(config, args))
    if args.command == "status":
        return asyncio.run(_status(config, args))
    return asyncio.run(_dlq(config, args))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``signal-bridge`` and ``python -m bridge``; returns the exit code."""
    args = _parser().parse_args(argv)  # a usage error exits 2 with argparse's message
    if args.command != "run":
        configure_logging("WARNING", "text")
    try:
        code = _dispatch(args)
        sys.stdout.flush()  # a closed pipe shows up here, inside the handlers below
    except ConfigError as exc:
        print(f"signal-bridge: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"signal-bridge {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (``status | head``): no traceback. Point stdout at /dev/null so
        # the interpreter's final flush does not fail again (Python docs, "Note on SIGPIPE").
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_FAILURE
    except BridgeError as exc:
        print(f"signal-bridge: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    return code
