"""The ``signal-bridge`` command: run, check, publish, status, top, dlq, keys, demo, ingest-server.

It parses the command line, loads the settings, runs the chosen command and maps errors to exit
codes. ``run`` is the service (:func:`bridge.app.runner.run`); each other command lives in its
own module beside this one.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import sys
from collections.abc import Callable, Sequence
from typing import Final

from bridge import __version__
from bridge.app.heap import settle_heap
from bridge.app.runner import run
from bridge.config.loader import BridgeConfig, load_config
from bridge.errors import BridgeError, ConfigError, UsageError
from bridge.ops.dlq import parse_since, run_dlq_command
from bridge.ops.ingest_server import run_ingest_server
from bridge.ops.keys import run_keys
from bridge.ops.publish import run_publish
from bridge.ops.receipts import OUTCOMES, run_receipts_tail
from bridge.ops.status import run_status
from bridge.streams.connection import connect
from bridge.streams.group import signal_streams
from bridge.telemetry.logs import configure_logging

__all__ = ["main"]


async def _receipts(config: BridgeConfig, args: argparse.Namespace) -> int:
    """Run ``receipts tail`` over every configured stream."""
    async with connect(
        config.stream.redis_url,
        cluster=config.stream.cluster,
        password=config.stream.redis_password,
    ) as redis:
        return await run_receipts_tail(redis, config.stream.stream_names(), args)


async def _dlq(config: BridgeConfig, args: argparse.Namespace) -> int:
    """Run one ``dlq`` sub-command over every configured stream."""
    async with connect(
        config.stream.redis_url,
        cluster=config.stream.cluster,
        password=config.stream.redis_password,
    ) as redis:
        return await run_dlq_command(signal_streams(config.stream, redis), args)


# --- argument parsing ----------------------------------------------------------------------

EXIT_OK: Final = 0
EXIT_FAILURE: Final = 1
EXIT_USAGE: Final = 2
EXIT_INTERRUPTED: Final = 130

_EPILOG: Final = """exit codes:
  0    success
  1    runtime failure (Redis or the ingest server unreachable, a check failed, ...)
  2    usage or settings error (a bad option, value, input file or setting)
  3    publish --wait: a receipt did not come within --timeout
  130  interrupted (Ctrl-C)
"""

_REQUIRED_DELIVERY: Final = """required settings (environment or --config file):
  OUTBOUND_SERVER_URL          the ingest server's origin, https (http for loopback only);
                               the bridge appends /api/v1/signals/ingest
  HMAC_PRODUCER_SECRET         the HMAC key (16+ bytes), or HMAC_PRODUCER_SECRET_FILE;
                               not needed with HMAC_PRODUCER_ENABLED=false
every other setting has a default (README: Settings); `signal-bridge check` prints the
effective ones. Redis: BRIDGE_REDIS_URL (default redis://localhost:6379/0).
"""
_REDIS_ONLY: Final = """settings: only Redis is needed: BRIDGE_REDIS_URL (default redis://localhost:6379/0),
BRIDGE_STREAM / BRIDGE_STREAMS, BRIDGE_GROUP, BRIDGE_DLQ_STREAM (README: Settings).
"""
_INGEST_SECRETS: Final = """secrets (environment; 16 bytes or more each):
  INGEST_SECRETS               key_id=secret,... (key_id@producer:producer=secret binds a key)
  INGEST_SECRET_FILE           one secret in a file, under key id "default" (adds to the above)
  HMAC_PRODUCER_SECRET[_FILE]  when neither is set: the bridge's own secret, under
                               HMAC_PRODUCER_KEY_ID (default "default")
  INGEST_ED25519_PUBLIC_KEYS   Ed25519 public keys, for the Ed25519 signature profiles
exit codes: 0 stopped by SIGTERM/SIGINT, 2 a bad option, secret or a busy port.
"""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the epilog's layout; add "(default: X)" to each option that has a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if (
            "default" in text
            or default in (None, False, argparse.SUPPRESS)
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)"


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
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """Add one (sub-)command that takes the common options; every command goes through here."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help_text,
        parents=[_COMMON],
        description=help_text,
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )
    return parser


def _add_publish(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the publish command and its signal flags."""
    pub = _command(
        sub,
        "publish",
        "XADD signals the way a producer should: from the flags (one signal), --file or "
        "--sample; entry ids on stdout, a summary on stderr",
        _REDIS_ONLY,
    )
    pub.add_argument(
        "--file", help="JSON object, JSON list or JSON lines; - for stdin (not with --sample)"
    )
    pub.add_argument(
        "--sample",
        type=int,
        metavar="N",
        help="publish N sample signals (timestamp now, ids new per run; not with --file)",
    )
    pub.add_argument("--instrument", help="the symbol, e.g. XAUUSD (required with the flags)")
    pub.add_argument(
        "--side", choices=["buy", "sell"], help="buy or sell (required with the flags)"
    )
    pub.add_argument("--entry-price", type=float, help="entry price, > 0 (required with the flags)")
    pub.add_argument(
        "--take-profit",
        type=float,
        help="take-profit price, on the winning side of the entry (default: none)",
    )
    pub.add_argument(
        "--stop-loss",
        type=float,
        help="stop-loss price, on the losing side of the entry (default: none)",
    )
    pub.add_argument(
        "--risk-percent",
        type=float,
        help="percent of the account at risk, above 0 up to 100 (required with the flags)",
    )
    pub.add_argument("--strategy", default="manual", help="strategy_name of the signal")
    pub.add_argument("--comment", help="free text carried with the signal (default: none)")
    pub.add_argument(
        "--signal-id", help="the producer's id, the idempotency key's source (default: none)"
    )
    pub.add_argument(
        "--timestamp",
        help="RFC 3339 with a zone; older than BRIDGE_SIGNAL_MAX_AGE_SECONDS warns (default: now)",
    )
    pub.add_argument(
        "--wait",
        action="store_true",
        help="wait for each signal's receipt (BRIDGE_RECEIPTS on the bridge); exit 0 all "
        "accepted or duplicates, 1 any dead-lettered or expired, 3 no receipt in time",
    )
    pub.add_argument(
        "--timeout",
        type=_positive_float,
        default=30.0,
        metavar="SECONDS",
        help="with --wait: how long to wait for the receipts",
    )


def _add_receipts(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the receipts commands (BRIDGE_RECEIPTS): ``receipts tail``."""
    receipts = _command(sub, "receipts", "what became of each signal (BRIDGE_RECEIPTS)")
    receipts_sub = receipts.add_subparsers(dest="receipts_command", required=True)
    tail = _command(
        receipts_sub, "tail", "receipts, oldest first; --follow for new ones", _REDIS_ONLY
    )
    tail.add_argument("--follow", action="store_true", help="keep waiting for new receipts")
    tail.add_argument(
        "--outcome", choices=OUTCOMES, help="only this outcome (default: every outcome)"
    )
    tail.add_argument(
        "--since", default="0-0", metavar="ID", help="after this receipt id ($: only new ones)"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object a line")


def _add_dlq(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the dlq commands; a new one is one more ``_command(dlq_sub, ...)`` line here."""
    dlq = _command(sub, "dlq", "inspect, replay or purge the dead-letter stream", _REDIS_ONLY)
    dlq_sub = dlq.add_subparsers(dest="dlq_command", required=True)
    dlq_list = _command(dlq_sub, "list", "dead letters, oldest first")
    dlq_list.add_argument(
        "--reason", help="only this reason, over the whole stream (default: every reason)"
    )
    dlq_list.add_argument(
        "--since",
        type=parse_since,
        help="dead-lettered since: 15m, 2h, or an RFC 3339 time (default: any time)",
    )
    dlq_list.add_argument(
        "--count", type=_positive_int, default=1000, help="at most N matches (default: 1000)"
    )
    dlq_list.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    show = _command(dlq_sub, "show", "one dead letter: every field, the signal, the error")
    show.add_argument("id", help="the dead letter's id (from dlq list)")
    show.add_argument("--json", action="store_true", help="print JSON (default: text)")
    replay = _command(dlq_sub, "replay", "re-publish to the source stream, then remove")
    replay.add_argument("ids", nargs="*", help="dead-letter ids (or a filter below)")
    replay.add_argument("--all", action="store_true", help="every dead letter (with filters)")
    replay.add_argument("--reason", help="only this reason (default: every reason)")
    replay.add_argument(
        "--since", type=parse_since, help="dead-lettered since: 15m, 2h, a time (default: any)"
    )
    replay.add_argument("--dry-run", action="store_true", help="list what would be replayed")
    replay.add_argument(
        "--allow-expired",
        action="store_true",
        help="post even if older than BRIDGE_SIGNAL_MAX_AGE_SECONDS (logged; keeps timestamp)",
    )
    purge = _command(
        dlq_sub,
        "purge",
        "delete dead letters (all, or those matching the filters), printing each one deleted",
    )
    purge.add_argument(
        "--yes", action="store_true", help="delete without asking (default: ask on a terminal)"
    )
    purge.add_argument("--dry-run", action="store_true", help="list what would be deleted")
    purge.add_argument("--reason", help="only this reason (default: every reason)")
    purge.add_argument(
        "--since", type=parse_since, help="dead-lettered since: 15m, 2h, or a time (default: any)"
    )
    purge.add_argument(
        "--before",
        type=parse_since,
        help="dead-lettered before: 7d (ago), or a time (default: any)",
    )


def _positive_int(text: str) -> int:
    """Parse a command-line count that must be above zero."""
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


def _positive_float(text: str) -> float:
    """Parse a command-line duration (seconds) that must be above zero."""
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be above 0: {text}")
    return value


def _add_ingest_server(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the reference ingest server command."""
    ingest = _command(
        sub,
        "ingest-server",
        "run the reference ingest server (POST /api/v1/signals/ingest, GET /healthz)",
        _INGEST_SECRETS,
    )
    ingest.add_argument("--host", default="127.0.0.1", help="address to listen on")
    ingest.add_argument("--port", type=int, default=8000, help="port to listen on")
    ingest.add_argument(
        "--tolerance",
        type=float,
        default=300.0,
        metavar="S",
        help="accepted X-Timestamp distance from the server clock, seconds",
    )
    ingest.add_argument(
        "--ssl-certfile", help="serve HTTPS with this certificate, PEM (default: plain HTTP)"
    )
    ingest.add_argument(
        "--ssl-keyfile", help="the certificate's private key, PEM (default: in the certfile)"
    )
    limits = ingest.add_argument_group("limits against hostile peers (README: reference server)")
    limits.add_argument(
        "--max-header-bytes",
        type=_positive_int,
        default=16 * 1024,
        help="largest request head, bytes",
    )
    limits.add_argument(
        "--max-headers", type=_positive_int, default=64, help="most header lines per request"
    )
    limits.add_argument(
        "--header-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds to send the request head",
    )
    limits.add_argument(
        "--body-timeout",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds to send the body",
    )
    limits.add_argument(
        "--max-connections", type=_positive_int, default=256, help="open connections at most"
    )
    limits.add_argument(
        "--max-concurrent-requests",
        type=_positive_int,
        default=128,
        help="requests handled at once; more wait",
    )
    limits.add_argument(
        "--max-stored",
        type=_positive_int,
        default=100_000,
        help="idempotency keys (and signals) kept; the oldest are forgotten first",
    )


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
    _command(sub, "run", "consume the stream and deliver (the service)", _REQUIRED_DELIVERY)
    check = _command(
        sub,
        "check",
        "validate the settings, reach Redis and the ingest server, print the effective settings",
        _REQUIRED_DELIVERY,
    )
    check.add_argument(
        "--signed-probe",
        action="store_true",
        help="also send one signed request with X-Signal-Probe: 1, which the reference server "
        "verifies and answers without storing; a wrong secret, key id or clock fails here "
        "(a server that does not know the probe refuses it, and check says so) "
        "(default: off: nothing is sent)",
    )
    _add_publish(sub)
    status = _command(sub, "status", "stream length, lag, pending, dead letters", _REDIS_ONLY)
    status.add_argument(
        "--json", action="store_true", help="print a JSON list, one object per stream"
    )
    top = _command(
        sub, "top", "live view: rates, lag, pending, dead letters, shard owners", _REDIS_ONLY
    )
    top.add_argument("--once", action="store_true", help="print one view and exit (for scripts)")
    top.add_argument(
        "--metrics",
        action="append",
        metavar="URL",
        help="a replica's /metrics URL, for rates and breaker state (repeat for each replica)",
    )
    _add_dlq(sub)
    _add_receipts(sub)
    keys = _command(sub, "keys", "generate an Ed25519 key pair (private file 0600, <file>.pub)")
    keys.add_argument("private_key_file", metavar="FILE", help="where the private key goes")
    demo = _command(sub, "demo", "self-contained demo: embedded Redis and ingest server")
    demo.add_argument("--signals", type=_positive_int, default=20, help="sample signals to publish")
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
        return run_ingest_server(args)
    if args.command == "keys":
        return run_keys(args.private_key_file)
    # Only run needs the ingest settings; operator commands need just Redis.
    env_path = args.config
    if args.command == "run":
        config = load_config(env_path)
        configure_logging(config.telemetry.log_level, config.telemetry.log_format)
        settle_heap()  # start-up is done: its objects need no more collecting
        with asyncio.Runner(loop_factory=_loop_factory()) as event_loop:
            event_loop.run(run(config))
        return EXIT_OK
    if args.command == "check":
        from bridge.ops.check import run_check  # noqa: PLC0415 - only this command needs it

        return asyncio.run(run_check(load_config(env_path), signed_probe=args.signed_probe))
    config = load_config(env_path, delivery=False)
    if args.command == "publish":
        return asyncio.run(run_publish(config, args))
    if args.command == "status":
        return asyncio.run(run_status(config, args))
    if args.command == "receipts":
        return asyncio.run(_receipts(config, args))
    if args.command == "top":
        from bridge.ops.top import run_top  # noqa: PLC0415 - only this command needs it

        return asyncio.run(run_top(config, args))
    return asyncio.run(_dlq(config, args))


def _chosen(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """Return the (sub-)command parser the arguments chose, so its usage goes with its errors."""
    # argparse keeps its sub-parsers only in these private names (typeshed declares them).
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            name = getattr(args, action.dest, None)
            if name in action.choices:
                return _chosen(action.choices[name], args)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``signal-bridge`` and ``python -m bridge``; returns the exit code."""
    parser = _parser()
    # A usage error exits 2 with argparse's message, under the usage of the command it is in.
    args, extras = parser.parse_known_args(argv)
    if extras:
        _chosen(parser, args).error(f"unrecognized arguments: {' '.join(extras)}")
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
