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

__all__ = ["parse_since", "plural", "run_dlq_command", "shown"]

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
    return await _dlq_purge(stores, args)


def plural(count: int, word: str) -> str:
    """``1 dead letter``, ``2 dead letters``: a count with its noun."""
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _letter_time(entry: Entry) -> str:
    """When the letter was written, as RFC 3339 UTC (from dlq_time_ms, else the id)."""
    raw = entry.field(f"{DLQ_PREFIX}time_ms") or entry.id.split("-", 1)[0]
    try:
        return _ms_time(int(raw))
    except (ValueError, OverflowError, OSError):
        return "?"


def _confirmed(count: int, where: str) -> bool:
    """Ask on the terminal whether to delete ``count`` dead letters; False when not a terminal."""
    if not sys.stdin.isatty():
        return False
    answer = input(f"delete {plural(count, 'dead letter')} from {where}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


async def _dlq_purge(stores: Sequence[DeadLetterStore], args: argparse.Namespace) -> int:
    """Delete the matching dead letters (all by default), printing each one it deleted.

    Needs ``--yes`` or a "y" on the terminal; ``--dry-run`` lists them and deletes nothing.
    Only the letters listed are deleted (XDEL by id): one written meanwhile stays.
    """
    chosen: list[tuple[DeadLetterStore, Entry]] = []
    for store in stores:
        async for entry in store.scan(
            reason=args.reason, since_ms=args.since, before_ms=args.before
        ):
            chosen.append((store, entry))
    where = ", ".join(store.dlq_stream for store in stores)
    if not chosen:
        print(f"no dead letters to purge in {where}{_filters(args)}")
        return 0
    if args.dry_run:
        for store, entry in chosen:
            print(f"would delete {_described(store, entry)}")
        print(f"dry run: {plural(len(chosen), 'dead letter')} would be deleted; nothing changed")
        return 0
    if not args.yes and not _confirmed(len(chosen), where):
        print(
            f"signal-bridge dlq purge: not deleting {plural(len(chosen), 'dead letter')} "
            f"without confirmation: add --yes (or answer y on a terminal); --dry-run lists them",
            file=sys.stderr,
        )
        return 2
    total = 0
    for store in stores:
        mine = [entry for owner, entry in chosen if owner is store]
        if not mine:
            continue
        deleted = await store.delete([entry.id for entry in mine])
        total += deleted
        for entry in mine:
            print(f"deleted {_described(store, entry)}")
        log.warning(
            "dead letters purged",
            extra=log_fields(dlq_stream=store.dlq_stream, deleted=deleted, by=_waiver_note()),
        )
    print(f"purged {plural(total, 'dead letter')} from {where}")
    return 0


def _described(store: DeadLetterStore, entry: Entry) -> str:
    """One dead letter in one line: id, time, reason, source entry (escaped for a terminal)."""
    return shown(
        f"{entry.id} {_letter_time(entry)} {entry.field(f'{DLQ_PREFIX}reason') or '?'} "
        f"(source {entry.field(f'{DLQ_PREFIX}source_stream') or store.stream}/"
        f"{entry.field(f'{DLQ_PREFIX}source_id') or '?'})"
    )


def _filters(args: argparse.Namespace) -> str:
    """Describe the filters given, for the 'nothing found' lines (empty without filters)."""
    parts = []
    if getattr(args, "reason", None) is not None:
        parts.append(f"reason {args.reason}")
    if getattr(args, "since", None) is not None:
        parts.append(f"since {_ms_time(args.since)}")
    if getattr(args, "before", None) is not None:
        parts.append(f"before {_ms_time(args.before)}")
    return f" matching {', '.join(parts)}" if parts else ""


def _ms_time(millis: int) -> str:
    """Unix milliseconds as RFC 3339 UTC to the millisecond (``2026-12-07T03:29:37.123Z``)."""
    when = datetime.fromtimestamp(millis / 1000, UTC)
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


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


_NUMBER_FIELDS: Final = frozenset(
    f"{DLQ_PREFIX}{name}"
    for name in (
        "http_code",
        "attempts",
        "deliveries",
        "time_ms",
        "original_fields",
        "original_bytes",
    )
)


def _json_row(entry: Entry) -> dict[str, object]:
    """Give a dead letter for ``--json``: its fields, counts and times as numbers, the time."""
    row: dict[str, object] = dict(_letter_row(entry))
    for name in _NUMBER_FIELDS:
        value = row.get(name)
        if isinstance(value, str):
            row[name] = int(value) if value.lstrip("-").isdigit() else None
    row[f"{DLQ_PREFIX}time"] = _letter_time(entry)
    return row


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
    """Print the dead letters matching the filters, as a table or JSON (numbers as numbers)."""
    selected = await _selected(stores, args)
    if args.json:
        print(msgspec.json.encode([_json_row(entry) for _, entry in selected]).decode())
        return 0
    if not selected:
        where = ", ".join(store.dlq_stream for store in stores)
        print(f"no dead letters in {where}{_filters(args)}")
        return 0
    for _, entry in selected:
        row = _letter_row(entry)
        print(
            f"{row['id']}  {_letter_time(entry)}  {shown(row.get(DLQ_PREFIX + 'reason', '?')):<15} "
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
            "fields": _json_row(entry),
            "signal": signal,
            "signal_error": problem,
            "error": row.get(f"{DLQ_PREFIX}error"),
        }
        print(msgspec.json.encode(payload).decode())
        return 0
    print(f"dead letter {entry.id} in {store.dlq_stream}")
    for name, value in row.items():
        if name == f"{DLQ_PREFIX}time_ms":
            print(f"  {name}: {shown(value)} ({_letter_time(entry)})")
        elif name != "id":
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
        if entry.field(f"{DLQ_PREFIX}reason") == "expired" and waiver is None:
            print(
                f"note: {shown(entry.id)} was dead-lettered as expired: replayed without "
                "--allow-expired it is older still, so it expires again (its timestamp is "
                "kept); add --allow-expired to post it anyway",
                file=sys.stderr,
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
        print(f"dry run: {plural(len(chosen), 'dead letter')} would be replayed; nothing changed")
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
