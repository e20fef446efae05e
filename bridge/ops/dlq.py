r"""The operator's dead-letter tools: ``signal-bridge dlq list | show | replay | purge``.

Every command reads the WHOLE dead-letter stream of each configured stream (page by page), so
filters (``--reason``, ``--since``) never stop at the first N entries. ``replay`` re-publishes to
the source stream through :meth:`bridge.streams.deadletters.DeadLetterStore.replay`;
``--allow-expired`` waives the maximum age of the replayed entries, explicitly and logged.
Exit codes: 0 done, 1 an id in no dead-letter stream, 2 a usage error. Text output shows a
dead letter's bytes escaped wherever they are not printable (an ESC byte reads ``\x1b``, a
newline ``\n``, U+202E ``\u202e``), so a hostile entry cannot drive the operator's terminal.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from bridge.core.signal import decode_signal, encode_canonical, guess_signal_id
from bridge.core.timestamps import TimestampError, parse_timestamp
from bridge.errors import InvalidSignalError
from bridge.streams.deadletters import DeadLetterStore
from bridge.streams.entries import DLQ_PREFIX, SIGNAL_FIELD, Entry
from bridge.streams.group import SignalStream
from bridge.telemetry.logs import log_fields

__all__ = ["parse_since", "run_dlq_command", "shown"]

log = logging.getLogger("bridge.dlq")


async def run_dlq_command(streams: Sequence[SignalStream], args: argparse.Namespace) -> int:
    """Run the chosen ``dlq`` sub-command over every stream's dead letters; return the exit code."""
    stores = [DeadLetterStore.of(stream) for stream in streams]
    if args.dlq_command == "list":
        return await _dlq_list(stores, args)
    if args.dlq_command == "show":
        return await _dlq_show(stores, args)
    if args.dlq_command == "replay":
        return await _dlq_replay(stores, args)
    for store in stores:
        purged = await store.purge()
        print(f"purged {purged} dead letters from {store.dlq_stream}")
    return 0


def parse_since(text: str) -> int:
    """Parse ``--since``: a duration back from now (90s, 15m, 2h, 3d) or an RFC 3339 time."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    value = text.strip()
    if value[-1:] in units and value[:-1].replace(".", "", 1).isdigit():
        seconds = float(value[:-1]) * units[value[-1]]
        return int((datetime.now(UTC).timestamp() - seconds) * 1000)
    try:
        when = parse_timestamp(value, loose=True)
    except TimestampError as exc:
        if exc.reason == "zone":
            raise argparse.ArgumentTypeError(
                f"the time needs a time zone (Z or +hh:mm): {text!r}"
            ) from None
        raise argparse.ArgumentTypeError(
            f"expected a duration like 90s, 15m, 2h, 3d or an RFC 3339 time, got {text!r}"
        ) from None
    return int(when.timestamp() * 1000)


_ESCAPES: Final = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


def shown(text: str) -> str:
    r"""Escape what a terminal would act on or hide: controls, format and separator characters.

    Printable text is kept as is; others read as in Python (``\x1b``, ``\u202e``), with the
    backslash doubled so an escape in the data cannot pass for one made here.
    """
    if text.isprintable() and "\\" not in text:
        return text
    return "".join(_escape(char) for char in text)


def _escape(char: str) -> str:
    """Return one character as :func:`shown` prints it."""
    if char in _ESCAPES:
        return _ESCAPES[char]
    if char.isprintable():
        return char
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _letter_row(entry: Entry) -> dict[str, str]:
    """Flatten a dead letter into its id and every field, decoded as UTF-8."""
    return {
        "id": entry.id,
        **{k.decode(): v.decode("utf-8", "replace") for k, v in entry.fields.items()},
    }


async def _selected(
    stores: Sequence[DeadLetterStore], args: argparse.Namespace
) -> list[tuple[DeadLetterStore, Entry]]:
    """Find the dead letters matching --reason / --since (whole streams), at most --count."""
    limit = getattr(args, "count", None)
    found: list[tuple[DeadLetterStore, Entry]] = []
    for store in stores:
        remaining = None if limit is None else limit - len(found)
        if remaining is not None and remaining <= 0:
            break
        async for entry in store.scan(reason=args.reason, since_ms=args.since, limit=remaining):
            found.append((store, entry))
    return found


async def _dlq_list(stores: Sequence[DeadLetterStore], args: argparse.Namespace) -> int:
    """Print the dead letters matching the filters, as a table or JSON."""
    rows = [_letter_row(entry) for _, entry in await _selected(stores, args)]
    if args.json:
        print(msgspec.json.encode(rows).decode())
        return 0
    for row in rows:
        print(
            f"{row['id']}  {shown(row.get(DLQ_PREFIX + 'reason', '?')):<15} "
            f"source={shown(row.get(DLQ_PREFIX + 'source_id', '?'))}  "
            f"{shown(row.get(DLQ_PREFIX + 'error', '')[:120])}"
        )
    return 0


async def _find_letters(
    stores: Sequence[DeadLetterStore], ids: Sequence[str]
) -> tuple[list[tuple[DeadLetterStore, Entry]], list[str]]:
    """Look each id up in every dead-letter stream: (found, ids found nowhere)."""
    found: list[tuple[DeadLetterStore, Entry]] = []
    missing: list[str] = []
    for dlq_id in ids:
        for store in stores:
            entry = await store.get(dlq_id)
            if entry is not None:
                found.append((store, entry))
                break
        else:
            missing.append(dlq_id)
    return found, missing


def _report_missing(stores: Sequence[DeadLetterStore], missing: Sequence[str]) -> int:
    where = ", ".join(s.dlq_stream for s in stores)
    print(f"signal-bridge: no dead letter {', '.join(missing)} in {where}", file=sys.stderr)
    return 1


async def _dlq_show(stores: Sequence[DeadLetterStore], args: argparse.Namespace) -> int:
    """Print one dead letter: every field, the decoded signal (or why not), the error."""
    found, missing = await _find_letters(stores, [args.id])
    if missing:
        return _report_missing(stores, missing)
    store, entry = found[0]
    raw = entry.fields.get(SIGNAL_FIELD)
    signal: dict[str, Any] | None = None
    problem: str | None = None
    try:
        if raw is None:
            raise InvalidSignalError("the entry has no 'signal' field")  # noqa: TRY301 - one report path
        signal = msgspec.json.decode(encode_canonical(decode_signal(raw)))
    except InvalidSignalError as exc:
        problem = str(exc)
    row = _letter_row(entry)
    if args.json:
        payload = {
            "dlq_stream": store.dlq_stream,
            "fields": row,
            "signal": signal,
            "signal_error": problem,
            "error": row.get(f"{DLQ_PREFIX}error"),
        }
        print(msgspec.json.encode(payload).decode())
        return 0
    print(f"dead letter {entry.id} in {store.dlq_stream}")
    for name, value in row.items():
        if name != "id":
            print(f"  {shown(name)}: {shown(value)}")
    if signal is not None:
        pretty = msgspec.json.format(msgspec.json.encode(signal), indent=2).decode()
        print("signal (decoded):\n  " + pretty.replace("\n", "\n  "))
    else:
        print(f"signal: does not decode: {shown(problem or '')}")
    print(f"error: {shown(row.get(f'{DLQ_PREFIX}error', ''))}")
    return 0


async def _dlq_replay(stores: Sequence[DeadLetterStore], args: argparse.Namespace) -> int:
    """Replay chosen dead letters to their source stream (or say what would be replayed)."""
    filtered = args.all or args.reason is not None or args.since is not None
    if args.ids and filtered:
        print("signal-bridge: give IDs, or --all / --reason / --since, not both", file=sys.stderr)
        return 2
    if args.ids:
        chosen, missing = await _find_letters(stores, args.ids)
        if missing:
            return _report_missing(stores, missing)
    elif filtered:
        chosen = await _selected(stores, args)
    else:
        print("nothing to replay (give IDs, --all, --reason or --since)", file=sys.stderr)
        return 2
    waiver = _waiver_note() if args.allow_expired else None
    for store, entry in chosen:
        source = entry.field(f"{DLQ_PREFIX}source_stream") or store.stream
        what = shown(
            f"{entry.id} ({entry.field(f'{DLQ_PREFIX}reason') or '?'}, source "
            f"{source}/{entry.field(f'{DLQ_PREFIX}source_id') or '?'})"
        )
        if args.dry_run:
            print(f"would replay {what}")
            continue
        if waiver is not None:
            log.warning(
                "replaying a dead letter with its maximum age waived: the bridge will post it "
                "whatever its age, under its original timestamp and idempotency key",
                extra=log_fields(
                    dlq_id=entry.id,
                    reason=entry.field(f"{DLQ_PREFIX}reason"),
                    source_id=entry.field(f"{DLQ_PREFIX}source_id"),
                    signal_id=guess_signal_id(entry.fields.get(SIGNAL_FIELD)),
                    waived_by=waiver,
                ),
            )
        for dlq_id, new_id in await store.replay([entry.id], waive_max_age=waiver):
            print(f"{dlq_id} -> {new_id}")
    if args.dry_run:
        print(f"dry run: {len(chosen)} dead letters would be replayed; nothing changed")
    return 0


def _waiver_note() -> str:
    """Who waived a signal's maximum age, where and when, for the replayed entry and the logs."""
    import getpass  # noqa: PLC0415 - only this path needs it
    import socket  # noqa: PLC0415

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()} {datetime.now(UTC).isoformat(timespec='seconds')}"
