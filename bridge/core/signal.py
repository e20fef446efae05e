"""The trade signal, its validation, and its canonical JSON encoding.

The canonical body is what gets hashed and signed: keys sorted, no whitespace, UTF-8, floats as
JSON numbers in msgspec's shortest round-trip form, absent optionals as ``null``, and the
timestamp as RFC 3339 UTC with microseconds and ``Z``. The same signal always gives the same
bytes; ``tests/core/vectors`` pins them.

A producer's data is never altered: a string is used exactly as written or refused (an
``InvalidSignalError`` naming the field and why), never trimmed. ``signal_id``, ``instrument``
and ``strategy_name`` refuse edge whitespace, control characters and invisible ones (Unicode
format and separator characters: categories Cf, Zl, Zp, which hold the bidi controls, zero-width
characters and the BOM); ``comment`` is free text (tabs and newlines allowed, other control
characters refused). :class:`SignalRules` adds the bridge's own checks: no timestamp far in the
future, and optionally an instrument alphabet. Lengths count Unicode code points.
Timestamps with more than 6 fractional digits are truncated (never rounded) to microseconds; a
leap second (``:60``) is refused with that reason.
"""

from __future__ import annotations

import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import msgspec

from bridge.core.timestamps import (
    TimestampError,
    format_datetime,
    format_timestamp,
    parse_timestamp,
)
from bridge.errors import BodyTooLargeError, InvalidSignalError

__all__ = [
    "DEFAULT_MAX_BODY_SIZE",
    "Signal",
    "SignalRules",
    "decode_signal",
    "encode_canonical",
    "guess_signal_id",
    "parse_signal_timestamp",
]

DEFAULT_MAX_BODY_SIZE: Final = 65536
MAX_INSTRUMENT_LEN: Final = 32
MAX_COMMENT_LEN: Final = 256
MAX_STRATEGY_LEN: Final = 128
MAX_SIGNAL_ID_LEN: Final = 128


# Code points: \x00-\x1f, \x7f-\x9f are Unicode's control characters (category Cc).
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f-\x9f]")
# Free text (comment) keeps tab, line feed and carriage return.
_CONTROL_IN_TEXT: Final = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def _plain_text(limit: int) -> re.Pattern[str]:
    """Match printable ASCII of 1 to ``limit`` characters whose first and last are not spaces.

    Text it matches passes every check of :func:`_exact_text`: the usual identifier is accepted
    by this one call, anything else goes through the checks that name what is wrong.
    """
    return re.compile(rf"[!-~](?:[ -~]{{0,{limit - 2}}}[!-~])?")


_PLAIN_INSTRUMENT: Final = _plain_text(MAX_INSTRUMENT_LEN)
_PLAIN_STRATEGY: Final = _plain_text(MAX_STRATEGY_LEN)
_PLAIN_SIGNAL_ID: Final = _plain_text(MAX_SIGNAL_ID_LEN)
# A comment without a refused control character, within its length: the whole check in a call.
_PLAIN_COMMENT: Final = re.compile(
    rf"[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]{{0,{MAX_COMMENT_LEN}}}"
)


class _UtcTimestamp(datetime):
    """A UTC datetime that encodes with microseconds always present (msgspec drops zeros)."""

    __slots__ = ()


if TYPE_CHECKING:
    _Timestamp = datetime
else:  # msgspec reads the annotation at run time and decodes it through _dec_hook
    _Timestamp = _UtcTimestamp


def parse_signal_timestamp(text: object) -> datetime:
    """Parse a signal's RFC 3339 timestamp into the canonical UTC datetime.

    Fractions past microseconds are truncated, never rounded (``...:25.9999995Z`` stays in
    second 25); a leap second (``:60``) is refused with that reason. Any refusal is an
    ``InvalidSignalError`` naming the field.
    """
    if not isinstance(text, str):
        raise InvalidSignalError(
            f"timestamp must be an RFC 3339 string, got {text!r}", field="timestamp"
        )
    try:
        value = parse_timestamp(text, cls=_UtcTimestamp)
    except TimestampError as exc:
        raise InvalidSignalError(str(exc), field="timestamp") from None
    if value.tzinfo is UTC:  # Z, the producers' usual form: no conversion
        return value
    try:
        return _to_utc(value)
    except OverflowError:
        raise InvalidSignalError("timestamp is out of range in UTC", field="timestamp") from None


def _to_utc(value: datetime) -> _UtcTimestamp:
    """Normalise an aware datetime to the canonical UTC subclass."""
    utc = value.astimezone(UTC)
    return _UtcTimestamp(
        utc.year,
        utc.month,
        utc.day,
        utc.hour,
        utc.minute,
        utc.second,
        utc.microsecond,
        tzinfo=UTC,
    )


def _as_float(name: str, value: object) -> float:
    """Coerce an int to float (so encoding is canonical); reject bools and non-numbers."""
    if type(value) is float:
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidSignalError(f"{name} must be a number, got {value!r}", field=name)
    try:
        return float(value)
    except OverflowError:
        raise InvalidSignalError(f"{name} is out of range", field=name) from None


def _finite_positive(name: str, value: object) -> float:
    """Reject NaN, infinities and non-positive prices with a message naming the field."""
    number = _as_float(name, value)
    if not math.isfinite(number) or number <= 0:
        raise InvalidSignalError(f"{name} must be a finite number > 0, got {value!r}", field=name)
    return number


_INF: Final = math.inf

# The tail of ``<stream>/<entry id>``, the key source of an entry without a signal_id.
_ENTRY_REFERENCE: Final = re.compile(r"/[0-9]+-[0-9]+\Z")


def _exact_text(name: str, value: object, limit: int) -> str:
    """Check an identifier as written: non-empty, no edge whitespace or control characters.

    Never trimmed or rewritten: the producer's bytes are what the server receives and what the
    idempotency key is derived from. ``limit`` counts Unicode code points.
    """
    if not isinstance(value, str):
        raise InvalidSignalError(f"{name} must be a string, got {value!r}", field=name)
    if not value:
        raise InvalidSignalError(f"{name} must be non-empty", field=name)
    if value != value.strip():
        raise InvalidSignalError(
            f"{name} {value!r} has leading or trailing whitespace; it is used exactly as "
            "written, never trimmed",
            field=name,
        )
    _no_control(name, value, _CONTROL)
    if not value.isascii():  # the usual identifier is ASCII: no call for it
        _no_invisible(name, value)
    if len(value) > limit:
        _max_code_points(name, value, limit)
    return value


# Unicode categories that draw nothing (or reorder what follows): format characters (Cf: bidi
# controls such as U+202E, zero-width space and joiners, the BOM) and line/paragraph separators.
_INVISIBLE_CATEGORIES: Final = frozenset(("Cf", "Zl", "Zp"))


def _no_invisible(name: str, value: str) -> None:
    """Refuse an invisible or reordering character, naming its code point, name and position."""
    if value.isascii():  # the usual identifier: no such character is ASCII
        return
    for position, char in enumerate(value):
        if unicodedata.category(char) in _INVISIBLE_CATEGORIES:
            raise InvalidSignalError(
                f"{name} contains the invisible character U+{ord(char):04X} "
                f"({unicodedata.name(char, 'unnamed')}) at position {position}",
                field=name,
            )


def _no_control(name: str, value: str, pattern: re.Pattern[str]) -> None:
    """Refuse a control character, naming its code point and position."""
    found = pattern.search(value)
    if found is not None:
        raise InvalidSignalError(
            f"{name} contains the control character U+{ord(found.group()):04X} at position "
            f"{found.start()}",
            field=name,
        )


def _max_code_points(name: str, value: str, limit: int) -> None:
    """Refuse text longer than ``limit`` Unicode code points (not bytes, not UTF-16 units)."""
    if len(value) > limit:
        raise InvalidSignalError(
            f"{name} must be at most {limit} Unicode code points, got {len(value)}", field=name
        )


def _check_comment(comment: object) -> None:
    """Refuse a comment that is not text, holds a control character or is too long."""
    if not isinstance(comment, str):
        raise InvalidSignalError(f"comment must be a string, got {comment!r}", field="comment")
    _no_control("comment", comment, _CONTROL_IN_TEXT)
    _max_code_points("comment", comment, MAX_COMMENT_LEN)


def _canonical_timestamp(timestamp: object) -> _UtcTimestamp:
    """Return an aware datetime as the canonical UTC class; refuse anything else."""
    if not isinstance(timestamp, datetime):
        raise InvalidSignalError("timestamp must be a datetime", field="timestamp")
    if timestamp.tzinfo is None or timestamp.utcoffset() is None:
        raise InvalidSignalError("timestamp must be timezone-aware", field="timestamp")
    try:
        return _to_utc(timestamp)
    except OverflowError:
        raise InvalidSignalError("timestamp is out of range in UTC", field="timestamp") from None


class Signal(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One trade signal from the strategy engine; immutable, validated on construction."""

    instrument: str
    side: Literal["buy", "sell"]
    entry_price: float
    take_profit: float | None = None
    stop_loss: float | None = None
    risk_percent: float
    comment: str | None = None
    strategy_name: str
    timestamp: _Timestamp
    signal_id: str | None = None

    def __post_init__(self) -> None:
        """Check the domain rules that types alone cannot express; numbers become floats."""
        # Runs once per entry read: each check has a fast form for the usual signal (one regex
        # per identifier, no call for a finite float), and the full checks name what is wrong.
        set_ = msgspec.structs.force_setattr
        instrument = self.instrument
        if type(instrument) is not str or _PLAIN_INSTRUMENT.fullmatch(instrument) is None:
            _exact_text("instrument", instrument, MAX_INSTRUMENT_LEN)
        strategy = self.strategy_name
        if type(strategy) is not str or _PLAIN_STRATEGY.fullmatch(strategy) is None:
            _exact_text("strategy_name", strategy, MAX_STRATEGY_LEN)
        if self.side not in ("buy", "sell"):
            raise InvalidSignalError(
                f"side must be 'buy' or 'sell', got {self.side!r}", field="side"
            )
        self._check_prices()
        if type(self.risk_percent) is not float:
            set_(self, "risk_percent", _as_float("risk_percent", self.risk_percent))
        if not 0 < self.risk_percent <= 100:  # NaN and the infinities fail too
            raise InvalidSignalError(
                f"risk_percent must be > 0 and <= 100, got {self.risk_percent!r}",
                field="risk_percent",
            )
        comment = self.comment
        if comment is not None and (
            type(comment) is not str or _PLAIN_COMMENT.fullmatch(comment) is None
        ):
            _check_comment(comment)
        signal_id = self.signal_id
        if signal_id is not None:
            if type(signal_id) is not str or _PLAIN_SIGNAL_ID.fullmatch(signal_id) is None:
                _exact_text("signal_id", signal_id, MAX_SIGNAL_ID_LEN)
            if "/" in signal_id and _ENTRY_REFERENCE.search(signal_id):
                raise InvalidSignalError(
                    f"signal_id {signal_id!r} ends like a stream entry reference "
                    "('/<ms>-<seq>'), which names the idempotency key of an entry without a "
                    "signal_id",
                    field="signal_id",
                )
        timestamp = self.timestamp
        # What the decoder makes (aware, UTC, the canonical class) needs nothing more.
        if type(timestamp) is not _UtcTimestamp or timestamp.tzinfo is not UTC:
            set_(self, "timestamp", _canonical_timestamp(timestamp))

    def _check_prices(self) -> None:
        """Make each price a finite float > 0, then check the sides."""
        set_ = msgspec.structs.force_setattr
        # A float already finite and > 0 (NaN fails both comparisons) is what _finite_positive
        # would return unchanged: it skips the calls, once per field and delivery.
        entry = self.entry_price
        if not (type(entry) is float and 0.0 < entry < _INF):
            set_(self, "entry_price", _finite_positive("entry_price", entry))
        take_profit = self.take_profit
        if take_profit is not None and not (
            type(take_profit) is float and 0.0 < take_profit < _INF
        ):
            set_(self, "take_profit", _finite_positive("take_profit", take_profit))
        stop_loss = self.stop_loss
        if stop_loss is not None and not (type(stop_loss) is float and 0.0 < stop_loss < _INF):
            set_(self, "stop_loss", _finite_positive("stop_loss", stop_loss))
        self._check_sides()

    def _check_sides(self) -> None:
        """Buy: stop_loss < entry < take_profit; sell: the reverse."""
        entry, tp, sl = self.entry_price, self.take_profit, self.stop_loss
        if self.side == "buy":
            if tp is not None and not tp > entry:
                raise InvalidSignalError(
                    "take_profit must be above entry_price for a buy", field="take_profit"
                )
            if sl is not None and not sl < entry:
                raise InvalidSignalError(
                    "stop_loss must be below entry_price for a buy", field="stop_loss"
                )
        else:
            if tp is not None and not tp < entry:
                raise InvalidSignalError(
                    "take_profit must be below entry_price for a sell", field="take_profit"
                )
            if sl is not None and not sl > entry:
                raise InvalidSignalError(
                    "stop_loss must be above entry_price for a sell", field="stop_loss"
                )


def _enc_hook(obj: Any) -> Any:  # noqa: ANN401 - msgspec's hook contract takes and returns Any
    """Encode the canonical timestamp; anything else is a programming error."""
    if type(obj) is _UtcTimestamp:
        return format_datetime(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(kind: type, obj: Any) -> Any:  # noqa: ANN401 - msgspec's hook contract
    """Decode the timestamp with our own RFC 3339 parser (truncates, refuses :60)."""
    if kind is _UtcTimestamp:
        return parse_signal_timestamp(obj)
    raise NotImplementedError(f"cannot decode {kind.__name__}")


_ENCODER: Final = msgspec.json.Encoder(order="sorted", enc_hook=_enc_hook)
_DECODER: Final = msgspec.json.Decoder(Signal, dec_hook=_dec_hook)


def encode_canonical(signal: Signal, *, max_body_size: int = DEFAULT_MAX_BODY_SIZE) -> bytes:
    """Encode ``signal`` as canonical JSON bytes; refuse bodies over ``max_body_size``."""
    body = _ENCODER.encode(signal)
    if len(body) > max_body_size:
        raise BodyTooLargeError(
            f"canonical body is {len(body)} bytes, over the limit of {max_body_size}",
            size=len(body),
            limit=max_body_size,
        )
    return body


def decode_signal(data: bytes | str) -> Signal:
    """Decode and validate JSON into a Signal; any failure is an InvalidSignalError."""
    try:
        return _DECODER.decode(data)
    except msgspec.ValidationError as exc:
        field = getattr(exc.__cause__, "field", None)
        raise InvalidSignalError(f"invalid signal: {exc}", field=field) from exc
    except msgspec.DecodeError as exc:
        raise InvalidSignalError(f"signal is not valid JSON: {exc}") from exc
    except UnicodeDecodeError as exc:  # msgspec's error for bad UTF-8 inside a string (fuzzing)
        raise InvalidSignalError(f"signal is not valid UTF-8: {exc}") from exc


_LOOSE_DECODER: Final = msgspec.json.Decoder()


def guess_signal_id(raw: bytes | None) -> str | None:
    """Best effort: the ``signal_id`` of a signal that failed validation, for logs only.

    An invalid signal's id still lets an operator find it; anything unusable gives None.
    """
    if not raw:
        return None
    try:
        data = _LOOSE_DECODER.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):  # any bytes come here
        return None
    value = data.get("signal_id") if isinstance(data, dict) else None
    if isinstance(value, str) and value and len(value) <= MAX_SIGNAL_ID_LEN and value.isprintable():
        return value
    return None


@dataclass(frozen=True, slots=True)
class SignalRules:
    """The bridge's checks beyond a signal's own validity, decided when an entry is read.

    A timestamp more than ``max_clock_ahead_s`` ahead of the bridge's clock would never expire
    (its age stays negative), so it is refused naming the offset; ``instrument_pattern`` (a
    regular expression the whole instrument must match) pins instruments to a desk's alphabet,
    which also refuses look-alike letters from other scripts.
    """

    max_clock_ahead_s: float = 60.0
    instrument_pattern: re.Pattern[str] | None = None

    def check(self, signal: Signal, now: float, *, signal_at: float | None = None) -> None:
        """Raise :class:`InvalidSignalError` when ``signal`` breaks a rule at time ``now``.

        ``signal_at`` is the signal's timestamp in epoch seconds, when the caller has it already.
        """
        if signal_at is None:
            signal_at = signal.timestamp.timestamp()
        ahead_s = signal_at - now
        if ahead_s > self.max_clock_ahead_s:
            raise InvalidSignalError(
                f"timestamp {format_timestamp(signal.timestamp)} is {ahead_s:.1f}s ahead of the "
                f"bridge's clock, limit {self.max_clock_ahead_s:g}s "
                "(BRIDGE_MAX_CLOCK_AHEAD_SECONDS)",
                field="timestamp",
            )
        pattern = self.instrument_pattern
        if pattern is not None and pattern.fullmatch(signal.instrument) is None:
            raise InvalidSignalError(
                f"instrument {signal.instrument!r} does not match BRIDGE_INSTRUMENT_PATTERN "
                f"{pattern.pattern!r}",
                field="instrument",
            )
