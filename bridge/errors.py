"""The one exception tree of signal-bridge, split by what the caller does next.

::

    BridgeError
    +-- ConfigError            (also ValueError)   bad settings: refuse to start
    +-- UsageError             (also ValueError)   a bad command-line value or input file
    +-- SigningError           (also ValueError)   bad input to build_signature
    +-- InvalidSignalError     (also ValueError)   cannot decode / validate: dead-letter
    |   +-- BodyTooLargeError                      canonical body over max_body_size
    +-- StreamError                                Redis unreachable or refused: reconnect
    +-- ReceiptTimeoutError    (also TimeoutError)  publish(wait=...): no receipt in time
    +-- DeliveryError                              the POST did not land; see ``outcome``
        +-- AlreadyReceivedError                   409: the server has this key (ack)
        +-- StaleLeaseError                        409 stale-lease: another replica owns the
        |                                          shard (no ack, no dead letter: fenced)
        +-- RejectedError                          400/413/422 and other 4xx: dead-letter
        +-- SystemicError                          3xx/404/405/407/421/426: breaker, alert
        |   +-- AuthError                          401/403 or TLS refused: breaker, alert
        +-- TransientDeliveryError                 408/425/429/5xx, network: retry
            +-- DeliveryTimeoutError (also TimeoutError)
            +-- ResponseTooLargeError              a non-2xx answer past a read limit

A 2xx answer past a read limit is not an error: the server has the signal, so the client returns
its ``Delivered`` value with ``oversized`` set (the caller acks; the client logs a WARNING).

Every error carries its context as keyword-only attributes; none of them ever holds a secret.
"""

from __future__ import annotations

import enum

__all__ = [
    "AlreadyReceivedError",
    "AuthError",
    "BodyTooLargeError",
    "BridgeError",
    "ConfigError",
    "DeliveryError",
    "DeliveryTimeoutError",
    "InvalidSignalError",
    "Outcome",
    "ReceiptTimeoutError",
    "RejectedError",
    "ResponseTooLargeError",
    "SigningError",
    "StaleLeaseError",
    "StreamError",
    "SystemicError",
    "TransientDeliveryError",
    "UsageError",
]


class Outcome(enum.StrEnum):
    """How one delivery attempt ended, as the consumer's ack/retry/dead-letter policy sees it."""

    SUCCESS = "success"
    DUPLICATE = "duplicate"
    PERMANENT = "permanent"
    AUTH = "auth"
    SYSTEMIC = "systemic"
    TRANSIENT = "transient"
    INVALID = "invalid"
    FENCED = "fenced"


class BridgeError(Exception):
    """Root of every error signal-bridge raises on purpose."""


class ConfigError(BridgeError, ValueError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable


class UsageError(BridgeError, ValueError):
    """A command-line value or an input file is wrong; the message names the option or file."""


class SigningError(BridgeError, ValueError):
    """The inputs to a signature are unusable (empty secret or body, bad timestamp)."""


class InvalidSignalError(BridgeError, ValueError):
    """A signal cannot be decoded or fails validation; it must be dead-lettered, not posted."""

    outcome = Outcome.INVALID
    reason = "invalid"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class BodyTooLargeError(InvalidSignalError):
    """The canonical body is larger than max_body_size; nothing is sent."""

    reason = "too_large"

    def __init__(self, message: str, *, size: int, limit: int) -> None:
        super().__init__(message)
        self.size = size
        self.limit = limit


class StreamError(BridgeError):
    """Redis refused or dropped an operation; the consumer reconnects and goes on.

    ``missing_group`` is set when Redis answered NOGROUP (the group or the stream is gone, e.g.
    after a restart without persistence): the consumer recreates the group. ``code`` is Redis's
    error prefix (``OOM``, ``READONLY``, ``LOADING``, ``BUSY`` ...) when Redis answered with an
    error, ``None`` when the connection failed; ``meaning`` says in words what it means.
    """

    def __init__(
        self,
        message: str,
        *,
        missing_group: bool = False,
        code: str | None = None,
        meaning: str = "",
    ) -> None:
        super().__init__(message)
        self.missing_group = missing_group
        self.code = code
        self.meaning = meaning


class ReceiptTimeoutError(BridgeError, TimeoutError):
    """No receipt arrived in time for a published signal (``publish(..., wait=...)``).

    The signal is in the stream and may still be delivered: its entry is still pending, or the
    bridge (``BRIDGE_RECEIPTS``) is not writing receipts. ``entry_ids`` lists those still waited
    for, ``stream`` the stream they were added to.
    """

    def __init__(self, message: str, *, stream: str, entry_ids: list[str]) -> None:
        super().__init__(message)
        self.stream = stream
        self.entry_ids = entry_ids


class DeliveryError(BridgeError):
    """A POST to the ingest server did not deliver the signal.

    ``outcome`` tells the consumer what to do; ``http_code`` and ``details`` are the server's
    answer (``None`` when there was none); ``retry_after_s`` is the parsed Retry-After header.
    """

    outcome: Outcome = Outcome.TRANSIENT

    def __init__(
        self,
        message: str,
        *,
        http_code: int | None = None,
        details: object = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.http_code = http_code
        self.details = details
        self.retry_after_s = retry_after_s


class AlreadyReceivedError(DeliveryError):
    """409: the server already holds this idempotency key, so the signal is delivered."""

    outcome = Outcome.DUPLICATE


class StaleLeaseError(DeliveryError):
    """The server refused the POST's shard lease: it accepted a higher token for the shard.

    Another replica owns the shard now; the entry stays pending for it (no ack, no dead
    letter). ``current_token`` is the highest token the server has accepted (0 when unsaid).
    """

    outcome = Outcome.FENCED

    def __init__(
        self,
        message: str,
        *,
        http_code: int | None = None,
        details: object = None,
        current_token: int = 0,
    ) -> None:
        super().__init__(message, http_code=http_code, details=details)
        self.current_token = current_token


class RejectedError(DeliveryError):
    """The server refused this signal for good (400, 413, 422 and the other 4xx)."""

    outcome = Outcome.PERMANENT


class SystemicError(DeliveryError):
    """An answer that would hit every signal alike (wrong URL, redirect, proxy, credentials).

    Nothing is acked or dead-lettered: the breaker opens and probes until the server answers.
    ``cause`` names the likely cause in plain words.
    """

    outcome = Outcome.SYSTEMIC

    def __init__(
        self,
        message: str,
        *,
        http_code: int | None = None,
        details: object = None,
        retry_after_s: float | None = None,
        cause: str = "",
    ) -> None:
        super().__init__(message, http_code=http_code, details=details, retry_after_s=retry_after_s)
        self.cause = cause


class AuthError(SystemicError):
    """401, 403 or a TLS failure: wrong secret or key, skewed clock, untrusted certificate."""

    outcome = Outcome.AUTH


class TransientDeliveryError(DeliveryError):
    """408, 425, 429, 5xx, a dropped connection or bad response JSON: try again later."""

    outcome = Outcome.TRANSIENT


class DeliveryTimeoutError(TransientDeliveryError, TimeoutError):
    """The server did not answer within the timeout."""


class ResponseTooLargeError(TransientDeliveryError):
    """A non-2xx answer went past a read limit (head, header lines or body); retried.

    ``limit`` says which limit and its size; the rest of the answer was never read.
    """

    def __init__(self, message: str, *, http_code: int | None = None, limit: str) -> None:
        super().__init__(message, http_code=http_code)
        self.limit = limit
