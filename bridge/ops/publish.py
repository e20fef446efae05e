"""``signal-bridge publish``: build signals from flags, a file or samples, and XADD them.

Every mistake in the input is a :class:`~bridge.errors.UsageError` naming the option, the file or
the item that is wrong. Each XADD runs inside a PRODUCER span, so a sampled trace starts here.
With ``--wait`` it then reads each signal's receipt (from the receipts stream's last id taken
before the XADDs) and prints one line per signal: exit 0 when all were accepted or duplicates,
1 when any was dead-lettered or expired, 3 when a receipt did not come within ``--timeout``.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import secrets
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg_attrs

from bridge.config.loader import BridgeConfig
from bridge.core.signal import Signal, decode_signal
from bridge.core.timestamps import TimestampError, parse_timestamp
from bridge.errors import InvalidSignalError, ReceiptTimeoutError, UsageError
from bridge.ops.receipts import EXIT_NO_RECEIPT, receipt_line
from bridge.streams.connection import connect
from bridge.streams.producer import publish, shard_for
from bridge.streams.receipts import Receipt, latest_receipt_id, receipts, wait_for
from bridge.telemetry.setup import setup_telemetry

__all__ = ["run_publish", "sample_signal"]

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
    if args.sample is not None and args.file:
        raise UsageError("give --sample N or --file, not both (--sample would ignore the file)")
    if args.sample is not None:
        return _samples(args.sample)
    if args.file:
        return _signals_from_file(args.file)
    return [_signal_from_flags(args)]


_INSTRUMENTS: Final = (("XAUUSD", 2000.0), ("EURUSD", 1.08), ("BTCUSD", 65000.0), ("US500", 5200.0))


def sample_signal(i: int, now: datetime, *, id_prefix: str = "demo") -> Signal:
    """Build a plausible signal: instruments, sides and prices vary with ``i``.

    Its signal_id is ``<id_prefix>-<i>``; ``publish --sample`` passes a prefix unique per run, so a
    second run is new signals rather than duplicates the server refuses with 409.
    """
    instrument, price = _INSTRUMENTS[i % len(_INSTRUMENTS)]
    buy = i % 2 == 0
    return Signal(
        instrument=instrument,
        side="buy" if buy else "sell",
        entry_price=price,
        take_profit=round(price * (1.01 if buy else 0.99), 5),
        stop_loss=round(price * (0.995 if buy else 1.005), 5),
        risk_percent=1.0,
        strategy_name="demo-breakout",
        timestamp=now,
        signal_id=f"{id_prefix}-{i}",
    )


def _samples(count: int) -> list[Signal]:
    """``count`` sample signals stamped now, with signal_ids unique to this run."""
    if count < 1:
        raise UsageError(f"--sample must be at least 1, got {count}")
    now = datetime.now(UTC)
    prefix = f"sample-{secrets.token_hex(4)}"
    return [sample_signal(i, now, id_prefix=prefix) for i in range(count)]


def _signals_from_file(name: str) -> list[Signal]:
    """Decode a JSON object, a JSON list or JSON lines from ``name`` (``-``: stdin).

    Every refusal is one line naming the file and, where there is one, the line: bad UTF-8,
    malformed JSON, nesting too deep for the decoder, an invalid signal.
    """
    where = "stdin" if name == "-" else f"--file {name}"
    stripped = _read_input(name, where)
    try:
        whole = msgspec.json.decode(stripped)  # one object (perhaps pretty-printed) or a list
    except msgspec.DecodeError as exc:
        if stripped.startswith(b"["):
            raise UsageError(
                f"{where}{_line_of_error(stripped, exc)}: not valid JSON: {exc}"
            ) from None
        whole = None  # JSON lines, one signal per line
    except RecursionError:
        raise UsageError(_too_deep(where, stripped)) from None
    numbered: list[tuple[int, bytes]]
    if isinstance(whole, list):
        numbered = [(i, msgspec.json.encode(item)) for i, item in enumerate(whole, 1)]
        label = "item"
    elif whole is not None:
        numbered, label = [(1, stripped)], "signal"
    else:
        numbered = [(i, line) for i, line in enumerate(stripped.splitlines(), 1) if line.strip()]
        label = "line"
    if not numbered:
        raise UsageError(f"{where}: no signals (the list is empty)")
    signals = []
    for number, item in numbered:
        position = f" {label} {number}" if len(numbered) > 1 else ""
        try:
            signals.append(decode_signal(item))
        except InvalidSignalError as exc:
            raise UsageError(f"{where}{position}: {exc}") from None
        except RecursionError:
            raise UsageError(f"{where}{position}: JSON nested too deeply to decode") from None
    return signals


def _read_input(name: str, where: str) -> bytes:
    """Read the input, stripped: refused when unreadable, empty or not UTF-8 (naming the line)."""
    try:
        text = Path(name).read_bytes() if name != "-" else sys.stdin.buffer.read()
    except OSError as exc:
        raise UsageError(f"{where}: cannot read: {exc.strerror or exc}") from None
    stripped = text.strip()
    if not stripped:
        raise UsageError(f"{where}: no signals (the input is empty)")
    try:
        stripped.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(
            f"{where} line {_line_at(stripped, exc.start)}: not UTF-8 (byte "
            f"0x{stripped[exc.start]:02x})"
        ) from None
    return stripped


# Where a file too deeply nested for the decoder is named: the line that passes this depth.
_DEEP: Final = 512


def _line_at(text: bytes, offset: int) -> int:
    """Return the 1-based line holding byte ``offset`` of ``text``."""
    return text.count(b"\n", 0, offset) + 1


def _line_of_error(text: bytes, exc: msgspec.DecodeError) -> str:
    """Return `` line N`` for a decode error that names its byte offset, else nothing."""
    found = re.search(r"\(byte (\d+)\)", str(exc))
    return f" line {_line_at(text, int(found.group(1)))}" if found else ""


def _too_deep(where: str, text: bytes) -> str:
    """Say that ``text`` nests too deeply, naming the line where it passes ``_DEEP`` levels."""
    depth, in_string, escaped = 0, False, False
    for offset, byte in enumerate(text):
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # closing quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in b"[{":
            depth += 1
            if depth > _DEEP:
                return (
                    f"{where} line {_line_at(text, offset)}: JSON nested deeper than {_DEEP} "
                    "levels, too deep to decode"
                )
        elif byte in b"]}":
            depth -= 1
    return f"{where}: JSON nested too deeply to decode"


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
            timestamp = parse_timestamp(args.timestamp, loose=True)
        except TimestampError as exc:
            if exc.reason == "zone":
                message = f"--timestamp: {args.timestamp!r} needs a UTC offset or Z"
                raise UsageError(message) from None
            raise UsageError(
                f"--timestamp: {args.timestamp!r} is not an RFC 3339 time "
                "(e.g. 2026-11-28T10:00:00Z)"
            ) from None
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


def _warn_stale(signals: Sequence[Signal], max_age_s: float) -> None:
    """Warn on stderr about each signal already older than the bridge's maximum age."""
    if max_age_s <= 0:
        return
    now = datetime.now(UTC)
    for item in signals:
        age_s = (now - item.timestamp).total_seconds()
        if age_s > max_age_s:
            print(
                f"warning: signal {item.signal_id or item.instrument} has timestamp "
                f"{item.timestamp.isoformat()}, {age_s:.0f} s old: past "
                f"BRIDGE_SIGNAL_MAX_AGE_SECONDS ({max_age_s:g} s), so the bridge will "
                "dead-letter it as expired instead of posting it",
                file=sys.stderr,
            )


def _summary(count: int, shards: set[str], streams: Sequence[str]) -> str:
    """Say how many signals went to how many shards (or which stream): the last line."""
    what = f"{count} signal" if count == 1 else f"{count} signals"
    if len(streams) == 1:
        return f"published {what} to {streams[0]}"
    used = f"{len(shards)} shard" if len(shards) == 1 else f"{len(shards)} shards"
    return f"published {what} to {used} (of {len(streams)})"


async def run_publish(config: BridgeConfig, args: argparse.Namespace) -> int:
    """Publish the signals the options describe, one entry id per line on stdout.

    Warnings (a timestamp past the maximum age) and the closing summary go to stderr, so the
    ids on stdout stay easy to read from a script.
    """
    signals = _signals_from_args(args)
    _warn_stale(signals, config.stream.signal_max_age_s)
    streams = config.stream.stream_names()
    shards: set[str] = set()
    telemetry = setup_telemetry(
        config.telemetry.otel_env, instance_id=config.stream.consumer, prometheus=False
    )
    try:
        async with connect(
            config.stream.redis_url,
            cluster=config.stream.cluster,
            password=config.stream.redis_password,
        ) as redis:
            if getattr(args, "wait", False):
                return await _publish_and_wait(redis, signals, streams, telemetry.tracer, args)
            for item in signals:
                with _producer_span(telemetry.tracer, streams):
                    entry_id = await publish(redis, item, stream=streams)
                shards.add(shard_for(item.instrument, streams))
                print(entry_id)
    finally:
        telemetry.shutdown()
    sys.stdout.flush()
    print(_summary(len(signals), shards, streams), file=sys.stderr)
    return 0


async def _publish_and_wait(
    redis: Any,  # noqa: ANN401 - a redis-py client (single node or cluster)
    signals: Sequence[Signal],
    names: Sequence[str],
    tracer: trace.Tracer,
    args: argparse.Namespace,
) -> int:
    """Publish, then print each signal's receipt; the exit code says how they ended."""
    timeout_s: float = args.timeout
    deadline = time.monotonic() + timeout_s
    targets = {shard_for(item.instrument, names) for item in signals}
    since = {name: await latest_receipt_id(redis, name) for name in targets}
    published: list[tuple[str, str]] = []  # (stream, entry id), in publish order
    for item in signals:
        stream = shard_for(item.instrument, names)
        with _producer_span(tracer, names):
            published.append((stream, await publish(redis, item, stream=stream)))
    found: dict[tuple[str, str], Receipt] = {}
    missing: list[tuple[str, str]] = []
    for stream in sorted(targets):
        ids = [entry_id for name, entry_id in published if name == stream]
        left = max(0.0, deadline - time.monotonic())
        try:
            got = await wait_for(redis, stream, ids, since=since[stream], timeout_s=left)
        except ReceiptTimeoutError as exc:
            missing += [(stream, entry_id) for entry_id in exc.entry_ids]
            got = await _found_so_far(redis, stream, ids, since[stream])
        found.update({(stream, entry_id): receipt for entry_id, receipt in got.items()})
    for key in published:
        receipt = found.get(key)
        print(receipt_line(receipt) if receipt else f"{key[1]}  no receipt within {timeout_s:g}s")
    if missing:
        print(
            f"signal-bridge publish: {len(missing)} of {len(published)} signals had no receipt "
            f"within {timeout_s:g}s (still pending, or the bridge runs without BRIDGE_RECEIPTS)",
            file=sys.stderr,
        )
        return EXIT_NO_RECEIPT
    return 0 if all(r.ok for r in found.values()) else 1


async def _found_so_far(
    redis: Any,  # noqa: ANN401 - a redis-py client (single node or cluster)
    stream: str,
    ids: Sequence[str],
    since: str,
) -> dict[str, Receipt]:
    """Return the receipts of ``ids`` already written (after a timeout: print those that came)."""
    wanted = set(ids)
    out: dict[str, Receipt] = {}
    async for receipt in receipts(redis, stream, since=since, follow=False):
        if receipt.entry_id in wanted:
            out[receipt.entry_id] = receipt
    return out


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
