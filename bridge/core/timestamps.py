"""RFC 3339 timestamps: the one parser and the one formatter of the service; pure, no I/O.

The parser is a regex gate for the grammar the ingest contract allows (ASCII digits, ``T``,
optional fraction, ``Z`` or ``+hh:mm``; either letter in any case) followed by
``datetime.fromisoformat``, which checks the fields. Fractions past microseconds are truncated,
never rounded; a leap second (``:60``) is refused with that reason. ``loose=True`` is the
operator's grammar (``--since``, ``--timestamp``): anything ``fromisoformat`` reads, as long as
it names a zone.

The formatter writes UTC with six fractional digits and ``Z``; the text of a whole second is
cached, because consecutive requests and log lines share it.
"""

from __future__ import annotations

import functools
import math
import re
import time
from datetime import UTC, datetime
from typing import Final, Literal, TypeVar, overload

__all__ = [
    "RFC3339",
    "TimestampError",
    "format_datetime",
    "format_epoch",
    "format_epoch_truncated",
    "format_timestamp",
    "parse_timestamp",
]

# RFC 3339 date-time: full-date "T" partial-time time-offset, ASCII digits, any fraction length.
RFC3339: Final = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:([0-9]{2})"
    r"(?:\.([0-9]+))?(?:[Zz]|[+-]([0-9]{2}):([0-9]{2}))"
)
_LEAP_SECOND: Final = "60"
_MAX_OFFSET_HOURS: Final = 23
_MAX_OFFSET_MINUTES: Final = 59
_EXAMPLE: Final = "2025-10-25T14:30:45.123456Z"

_D = TypeVar("_D", bound=datetime)

Reason = Literal["grammar", "zone", "leap_second", "offset", "date"]


class TimestampError(ValueError):
    """Why a text is not a timestamp; ``reason`` lets each caller word it for its audience."""

    def __init__(self, message: str, *, reason: Reason) -> None:
        super().__init__(message)
        self.reason: Reason = reason


@overload
def parse_timestamp(
    text: str, *, loose: bool = ..., max_fraction_digits: int | None = ...
) -> datetime: ...


@overload
def parse_timestamp(
    text: str, *, cls: type[_D], loose: bool = ..., max_fraction_digits: int | None = ...
) -> _D: ...


def parse_timestamp(
    text: str,
    *,
    cls: type[datetime] = datetime,
    loose: bool = False,
    max_fraction_digits: int | None = None,
) -> datetime:
    """Parse ``text`` into an aware ``cls`` in the offset written; TimestampError if it is not one.

    ``max_fraction_digits`` refuses longer fractions as a grammar error (X-Timestamp allows 9);
    ``loose`` swaps the RFC 3339 gate for ``fromisoformat``'s own grammar (a zone still needed).
    """
    if loose:
        return _parse_loose(text, cls)
    match = RFC3339.fullmatch(text)
    if match is None:
        raise TimestampError(
            f"timestamp {text!r} is not RFC 3339 with a time zone (e.g. {_EXAMPLE})",
            reason="grammar",
        )
    if max_fraction_digits is not None and len(match.group(2) or "") > max_fraction_digits:
        raise TimestampError(
            f"timestamp {text!r} has more than {max_fraction_digits} fractional digits",
            reason="grammar",
        )
    # fromisoformat reads upper case only
    iso = text.upper() if text[10] == "t" or text[-1] == "z" else text
    try:
        value = cls.fromisoformat(iso)
    except ValueError as exc:
        raise _field_error(text, match, exc) from None
    if match.group(3) is not None and _bad_offset(match):  # fromisoformat reads +05:60 as +06:00
        raise TimestampError(f"timestamp {text!r} has an invalid offset", reason="offset")
    return value


def _bad_offset(match: re.Match[str]) -> bool:
    """Tell whether a gated text's numeric offset is past 23:59."""
    off_h, off_m = match.group(3), match.group(4)
    return off_h is not None and (
        int(off_h) > _MAX_OFFSET_HOURS or int(off_m) > _MAX_OFFSET_MINUTES
    )


def _field_error(text: str, match: re.Match[str], exc: ValueError) -> TimestampError:
    """Name the field that ``fromisoformat`` refused in a text the gate let through."""
    if match.group(1) == _LEAP_SECOND:
        return TimestampError(
            f"timestamp {text!r} is a leap second (:60), which UTC timestamps here cannot "
            "represent; refused rather than moved to another second",
            reason="leap_second",
        )
    if _bad_offset(match):
        return TimestampError(f"timestamp {text!r} has an invalid offset", reason="offset")
    return TimestampError(f"timestamp {text!r}: {exc}", reason="date")


def _parse_loose(text: str, cls: type[_D]) -> _D:
    """Read any ISO 8601 form ``fromisoformat`` knows; refuse a time without a zone."""
    try:
        value = cls.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise TimestampError(
            f"timestamp {text!r} is not an ISO 8601 time", reason="grammar"
        ) from None
    if value.tzinfo is None:
        raise TimestampError(f"timestamp {text!r} names no time zone", reason="zone")
    return value


@functools.lru_cache(maxsize=8)
def _utc_second(seconds: int) -> str:
    """Format one whole UTC second; consecutive requests and log lines share it."""
    t = time.gmtime(seconds)  # strftime's %Y is not zero-padded before the year 1000
    date = f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}"
    return f"{date}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"


def format_timestamp(at: datetime | float, *, truncate_micros: bool = False) -> str:
    """Format an aware datetime or epoch seconds as RFC 3339 UTC, six fractional digits, ``Z``.

    Epoch seconds give ``datetime.fromtimestamp(at, UTC)``'s text (microseconds rounded half to
    even) at a fraction of its cost; ``truncate_micros`` cuts them instead, as logging does.
    """
    if isinstance(at, datetime):
        return format_datetime(at)
    if truncate_micros:
        return format_epoch_truncated(at)
    return format_epoch(at)


# The three forms below are format_timestamp's branches, called directly where the type is
# known: each runs once or more per delivery (X-Timestamp, the canonical body, the log line).


def format_datetime(at: datetime) -> str:
    """Format an aware datetime as RFC 3339 UTC, six fractional digits, ``Z``."""
    utc = at if at.tzinfo is UTC else at.astimezone(UTC)
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def format_epoch_truncated(at: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with the microseconds cut, as logging does."""
    seconds = int(at)
    return f"{_utc_second(seconds)}.{int((at - seconds) * 1_000_000):06d}Z"


def format_epoch(at: float) -> str:
    """Format epoch seconds like ``datetime.fromtimestamp(at, UTC)`` (microseconds rounded)."""
    fraction, whole = math.modf(at)
    micros = round(fraction * 1e6)
    if micros < 0:  # before 1970: modf keeps the sign
        whole, micros = whole - 1, micros + 1_000_000
    if micros >= 1_000_000:
        whole, micros = whole + 1, micros - 1_000_000
    return f"{_utc_second(int(whole))}.{micros:06d}Z"
