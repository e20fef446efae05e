"""What one POST came to, as a value: ``Delivered | Duplicate | Rejected | Failed | Fenced``.

:class:`~bridge.edge.client.HmacClient` returns one of these for every answer and every
transport failure, judged by the outcome table (:mod:`bridge.core.outcome`); the consumer
matches on them in one place. Each value that is not :class:`Delivered` carries ``cause``: the
:class:`~bridge.errors.DeliveryError` that names it in logs and dead letters, and that the
raising API (``post_signal``) raises. Also here: the helpers that read an answer (Retry-After,
error bodies cut for logs).
"""

from __future__ import annotations

import email.utils
import time
from datetime import UTC, datetime
from typing import Final

import msgspec

from bridge.core.outcome import DEFAULT_TABLE, Action, OutcomeTable, TransportFailure, Verdict
from bridge.errors import (
    AlreadyReceivedError,
    AuthError,
    DeliveryError,
    InvalidSignalError,
    RejectedError,
    StaleLeaseError,
    SystemicError,
    TransientDeliveryError,
)
from bridge.telemetry.bounds import cut_text

__all__ = [
    "MAX_DETAIL_BYTES",
    "Attempt",
    "Delivered",
    "Duplicate",
    "Failed",
    "Fenced",
    "IngestResponse",
    "Rejected",
    "classify_status",
    "cut_detail",
    "error_class",
    "parse_retry_after",
    "refusal",
    "server_details",
    "stale_lease",
]

# Error bodies in logs, spans and dead letters: at most this many bytes of UTF-8.
MAX_DETAIL_BYTES: Final = 2048


class IngestResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The server's answer to an accepted signal."""

    signal_id: str
    status: str
    server_timestamp: datetime
    message: str | None = None
    errors: list[str] | None = None


class Delivered(msgspec.Struct, frozen=True):
    """A status the table acks: the server's answer, its status code and how long it took.

    ``response`` is None and ``warning`` says why when the server acknowledged the signal with
    a body that is not the documented IngestResponse (empty, not JSON, odd types), or with an
    answer past a read limit: then ``oversized`` names the limit and the body was never read.
    """

    response: IngestResponse | None
    http_code: int
    duration_s: float
    warning: str | None = None
    oversized: str | None = None


class Duplicate(msgspec.Struct, frozen=True, kw_only=True):
    """The server already holds this idempotency key: the signal is delivered."""

    status: int
    cause: AlreadyReceivedError


class Rejected(msgspec.Struct, frozen=True, kw_only=True):
    """The server refused this signal for good, or it was never sendable: dead-letter it."""

    status: int | None
    cause: RejectedError | InvalidSignalError


class Failed(msgspec.Struct, frozen=True, kw_only=True):
    """No delivery this time: retry later (transient) or hold behind the breaker (systemic)."""

    verdict: Verdict
    status: int | None
    retry_after_s: float | None
    cause: DeliveryError
    failure: TransportFailure | None = None  # how the POST failed when there was no answer


class Fenced(msgspec.Struct, frozen=True, kw_only=True):
    """The server refused the POST's shard lease (stale-lease): another replica owns the shard.

    No ack, no dead letter: the entry stays pending for the shard's owner.
    """

    status: int
    cause: StaleLeaseError


Attempt = Delivered | Duplicate | Rejected | Failed | Fenced

_ERROR_OF: Final[dict[Action, type[DeliveryError]]] = {
    Action.ACK_DUPLICATE: AlreadyReceivedError,
    Action.SYSTEMIC: SystemicError,
    Action.DEAD_LETTER: RejectedError,
    Action.TRANSIENT: TransientDeliveryError,
}
_AUTH_CODES: Final = frozenset({401, 403})
_ANY_DECODER: Final = msgspec.json.Decoder()
_MAX_LOCATION_CHARS: Final = 256


def error_class(code: int, verdict: Verdict) -> type[DeliveryError] | None:
    """Return the error class that names an answer; None when the table acks it."""
    if verdict.action is Action.ACK:
        return None
    if verdict.action is Action.SYSTEMIC and code in _AUTH_CODES:
        return AuthError
    return _ERROR_OF[verdict.action]


def refusal(
    code: int,
    verdict: Verdict,
    details: object,
    *,
    retry_after_s: float | None,
    location: str | None,
    cause: str,
) -> Duplicate | Rejected | Failed:
    """Turn an answer the table does not ack into its value; ``cause`` names a systemic one."""
    named = error_class(code, verdict)
    if named is AlreadyReceivedError:
        duplicate = AlreadyReceivedError(
            "the server already has this idempotency key",
            http_code=code,
            details=details,
            retry_after_s=retry_after_s,
        )
        return Duplicate(status=code, cause=duplicate)
    if named is RejectedError:
        rejected = RejectedError(
            f"ingest server answered {code}",
            http_code=code,
            details=details,
            retry_after_s=retry_after_s,
        )
        return Rejected(status=code, cause=rejected)
    error: DeliveryError
    if named is not None and issubclass(named, SystemicError):
        verdict = Verdict(verdict.action, cause)
        moved = f" (Location: {location[:_MAX_LOCATION_CHARS]!r})" if location else ""
        error = named(
            f"ingest server answered {code}{moved}: likely cause: {cause}",
            http_code=code,
            details=details,
            retry_after_s=retry_after_s,
            cause=cause,
        )
    else:
        error = TransientDeliveryError(
            f"ingest server answered {code}",
            http_code=code,
            details=details,
            retry_after_s=retry_after_s,
        )
    return Failed(verdict=verdict, status=code, retry_after_s=retry_after_s, cause=error)


def stale_lease(code: int, details: object, current_token: int) -> Fenced:
    """Build the value of a stale-lease refusal (the server's highest token: ``current_token``)."""
    error = StaleLeaseError(
        f"ingest server answered {code}: stale lease, the server holds token {current_token}",
        http_code=code,
        details=details,
        current_token=current_token,
    )
    return Fenced(status=code, cause=error)


def classify_status(code: int, table: OutcomeTable | None = None) -> type[DeliveryError] | None:
    """Map an HTTP status to the error class it raises; None when the table acks it."""
    verdict = (table or DEFAULT_TABLE).for_status(code)
    return error_class(code, verdict)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse Retry-After (seconds or an HTTP date) into seconds from now; None if absent/bad."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def cut_detail(content: bytes | str, limit: int = MAX_DETAIL_BYTES) -> str:
    """Return ``content`` as text of at most ``limit`` UTF-8 bytes, noting the original size.

    The one place error bodies are cut for logs, spans and dead letters: a cut text ends with
    ``... [cut: N bytes in all]`` and never splits a UTF-8 character (:func:`cut_text`).
    """
    return cut_text(content, limit)


def server_details(content: bytes) -> object:
    """Return the server's error body: small JSON decoded, anything else as cut text."""
    if len(content) <= MAX_DETAIL_BYTES:
        try:
            return _ANY_DECODER.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass  # bad UTF-8 in a string, nesting past the recursion limit (found by fuzzing)
    return cut_detail(content)
