"""The shape of what the bridge keeps in Redis: entries, dead letters, status, stream ids.

Pure data, no I/O: the field names of a signal entry and of a dead letter, the Structs that the
consumer-group operations return, and the one parser of stream ids (``<ms>-<seq>``) that the
worker, the lanes, the dead-letter store and the configuration share.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

import msgspec

__all__ = [
    "DLQ_PREFIX",
    "MAX_AGE_WAIVED_FIELD",
    "ORIGIN_FIELD",
    "SIGNAL_FIELD",
    "ConsumerStatus",
    "DeadLetter",
    "Entry",
    "GroupStatus",
    "Pending",
    "StreamId",
    "TrimResult",
    "as_text",
    "is_entry_id",
    "is_stream_id",
    "parse_id",
    "split_entries",
]

SIGNAL_FIELD: Final = b"signal"
# "<stream>/<entry id>" of the entry's first delivery, set when a dead letter is replayed.
ORIGIN_FIELD: Final = b"origin"
DLQ_PREFIX: Final = "dlq_"
# Set by `dlq replay --allow-expired`: the worker posts the entry whatever its age. Its value
# says when and by whom the operator waived the limit.
MAX_AGE_WAIVED_FIELD: Final = b"replay_max_age_waived"

# A stream id as integers (milliseconds, sequence): tuples compare in stream order.
StreamId = tuple[int, int]


def parse_id(entry_id: str) -> StreamId:
    """Split ``<ms>-<seq>`` (or ``<ms>``, sequence 0) into integers; ValueError if not an id.

    The one grammar of stream ids here: digits, optionally a dash and more digits (an empty
    sequence, ``<ms>-``, counts as 0). Redis's own ids always parse.
    """
    ms, _, seq = entry_id.partition("-")
    if not (ms.isdigit() and (not seq or seq.isdigit())):
        raise ValueError(f"not a stream id: {entry_id!r}")
    return int(ms), int(seq or 0)


def is_stream_id(value: str) -> bool:
    """Tell whether ``value`` names a stream position: ``<ms>``, ``<ms>-`` or ``<ms>-<seq>``."""
    try:
        parse_id(value)
    except ValueError:
        return False
    return True


def is_entry_id(value: str) -> bool:
    """Tell whether ``value`` is a full entry id, ``<ms>-<seq>``: a sequence is required."""
    return bool(value.partition("-")[2]) and is_stream_id(value)


def as_text(value: bytes | str) -> str:
    """Return a Redis reply value as text (redis-py hands bytes without decode_responses)."""
    return value.decode() if isinstance(value, bytes) else value


class Entry(msgspec.Struct, frozen=True):
    """One stream entry: its id and raw fields; ``deliveries`` as Redis counted them."""

    id: str
    fields: dict[bytes, bytes]
    deliveries: int = 1

    def field(self, name: str) -> str | None:
        """Return a field decoded as UTF-8 (replacing bad bytes), or None."""
        raw = self.fields.get(name.encode())
        return None if raw is None else raw.decode("utf-8", "replace")


def split_entries(
    raw: Iterable[tuple[bytes, dict[bytes, bytes] | None]],
) -> tuple[list[Entry], list[str]]:
    """Split raw (id, fields) pairs into live entries and ids whose entry was deleted."""
    live: list[Entry] = []
    gone: list[str] = []
    for entry_id, fields in raw or ():
        # as_text, inlined: this runs once per entry read.
        text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
        if fields:
            live.append(Entry(text, fields))
        else:
            gone.append(text)
    return live, gone


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    """Why an entry could not be delivered; written beside its original fields."""

    reason: str
    error: str
    http_code: int | None = None
    attempts: int = 0
    consumer: str = ""


class Pending(msgspec.Struct, frozen=True):
    """One pending entry as XPENDING lists it: id, owner, ms idle, deliveries so far."""

    id: str
    consumer: str
    idle_ms: int
    deliveries: int


class TrimResult(msgspec.Struct, frozen=True):
    """What one retention pass did: entries removed and the MINID used (None: nothing to do)."""

    trimmed: int
    min_id: str | None


class ConsumerStatus(msgspec.Struct, frozen=True):
    """One consumer of the group: name, entries it holds, ms since it last acted."""

    name: str
    pending: int
    idle_ms: int


class GroupStatus(msgspec.Struct, frozen=True, kw_only=True):
    """What ``signal-bridge status`` shows."""

    stream: str
    group: str
    length: int
    lag: int | None
    pending: int
    oldest_pending_age_ms: int | None
    consumers: list[ConsumerStatus]
    dead_letters: int
    dead_letter_oldest_age_ms: int | None = None
    dead_letter_error: str | None = None  # the dead-letter key cannot take letters (its type)
    group_exists: bool = True  # False: the group is missing (lag, pending, consumers are empty)
