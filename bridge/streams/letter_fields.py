"""The fields of one dead letter: a bounded copy of the entry, then the ``dlq_`` fields.

An entry can hold thousands of fields or megabytes of value; its dead letter copies at most
:data:`MAX_COPIED_FIELDS` of them and ``BRIDGE_DEAD_LETTER_MAX_BYTES`` of names and values, the
fields the bridge reads first (``signal``, trace context, replay marks), then the others in the
entry's order. A cut letter says so: ``dlq_cut`` (what was dropped or shortened) and the
original ``dlq_original_fields`` / ``dlq_original_bytes``. Pure, no I/O.
"""

from __future__ import annotations

import time
from typing import Final

from bridge.streams.entries import (
    DLQ_PREFIX,
    MAX_AGE_WAIVED_FIELD,
    ORIGIN_FIELD,
    SIGNAL_FIELD,
    DeadLetter,
    Entry,
)

__all__ = ["MAX_COPIED_FIELDS", "MAX_ERROR_BYTES", "letter_fields"]

# Fields of the entry copied into its letter; far below what one Lua call can unpack (~8,000).
MAX_COPIED_FIELDS: Final = 100
# The letter's own error text (the server's part is already cut to 2 KiB).
MAX_ERROR_BYTES: Final = 4096
_FIRST: Final = (SIGNAL_FIELD, b"traceparent", b"tracestate", ORIGIN_FIELD, MAX_AGE_WAIVED_FIELD)


def _cut(value: bytes, keep: int) -> bytes:
    """Keep the first ``keep`` bytes of ``value``, not splitting a UTF-8 character of text."""
    head = value[:keep]
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return head  # not text: bytes as they were
    return head.decode("utf-8", "ignore").encode("utf-8")


def _as_bytes(value: bytes | str) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def letter_fields(
    entry: Entry,
    letter: DeadLetter,
    *,
    max_bytes: int,
    group: str,
    consumer: str,
    stream: str,
    now_ms: int | None = None,
) -> list[tuple[bytes | str, bytes | str | int]]:
    """Return the letter's (field, value) pairs: the bounded copy, then the ``dlq_`` fields."""
    fields = entry.fields
    order: list[bytes] = [name for name in _FIRST if name in fields]
    order += [name for name in fields if name not in _FIRST]
    original_bytes = sum(len(_as_bytes(n)) + len(_as_bytes(v)) for n, v in fields.items())
    copied: list[tuple[bytes | str, bytes | str | int]] = []
    budget = max_bytes
    shortened: list[str] = []
    dropped = 0
    for name in order:
        raw_name, value = _as_bytes(name), _as_bytes(fields[name])
        if raw_name.startswith(DLQ_PREFIX.encode()):
            dropped += 1  # a letter's own fields are written below, never copied
            continue
        if len(copied) >= MAX_COPIED_FIELDS or len(raw_name) >= budget:
            dropped += 1
            continue
        if len(raw_name) + len(value) > budget:
            value = _cut(value, budget - len(raw_name))
            shortened.append(raw_name[:64].decode("utf-8", "replace"))
        copied.append((name, value))
        budget -= len(raw_name) + len(value)
    error = _as_bytes(letter.error)
    if len(error) > MAX_ERROR_BYTES:
        note = f"... [cut: {len(error)} bytes in all]".encode()
        error = _cut(error, MAX_ERROR_BYTES - len(note)) + note
    copied += [
        (f"{DLQ_PREFIX}reason", letter.reason),
        (f"{DLQ_PREFIX}error", error),
        (f"{DLQ_PREFIX}http_code", "" if letter.http_code is None else letter.http_code),
        (f"{DLQ_PREFIX}attempts", letter.attempts),
        (f"{DLQ_PREFIX}deliveries", entry.deliveries),
        (f"{DLQ_PREFIX}consumer", letter.consumer or consumer),
        (f"{DLQ_PREFIX}group", group),
        (f"{DLQ_PREFIX}source_stream", stream),
        (f"{DLQ_PREFIX}source_id", entry.id),
        (f"{DLQ_PREFIX}time_ms", int(time.time() * 1000) if now_ms is None else now_ms),
    ]
    if dropped or shortened:
        what = []
        if dropped:
            what.append(f"{dropped} of {len(fields)} fields left out")
        if shortened:
            what.append("shortened: " + ", ".join(shortened))
        copied += [
            (
                f"{DLQ_PREFIX}cut",
                f"copied at most {MAX_COPIED_FIELDS} fields and {max_bytes} bytes "
                f"(BRIDGE_DEAD_LETTER_MAX_BYTES): {'; '.join(what)}",
            ),
            (f"{DLQ_PREFIX}original_fields", len(fields)),
            (f"{DLQ_PREFIX}original_bytes", original_bytes),
        ]
    return copied
