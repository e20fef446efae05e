"""HMAC-SHA256 request signing: the canonical requests and their signers; pure, no I/O.

Version 1's canonical request is five lines joined with newlines, with no trailing newline::

    METHOD:POST
    ENDPOINT:/api/v1/signals/ingest
    TIMESTAMP:2025-10-25T14:30:45.123456Z
    PRODUCER_ID:mt5-trader-1
    BODY_SHA256:<base64(sha256(body))>

Version 2 (sent with ``X-Signature-Version: 2``) adds three lines, always present, empty when
there is no lease, so a relay can change neither the idempotency key nor the lease::

    IDEMPOTENCY_KEY:<X-Idempotency-Key>
    LEASE_SHARD:<shard of X-Signal-Lease, or empty>
    LEASE_TOKEN:<token of X-Signal-Lease, or empty>

The signature is ``base64(HMAC-SHA256(secret, canonical_request))`` in both. The key id
(``X-Key-Id``) travels outside the canonical request: it only picks the secret. The server side
imports :func:`bridge.core.verification.verify_request`; ``tests/core/vectors/signing.json`` (v1)
and ``signing_v2.json`` hold known answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from datetime import datetime
from typing import Final, Protocol

from bridge.core.fencing import LeaseStamp
from bridge.core.timestamps import TimestampError, parse_timestamp
from bridge.errors import SigningError

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "INGEST_PATH",
    "SIGNATURE_VERSION_HEADER",
    "RequestSigner",
    "Signer",
    "SignerV2",
    "body_sha256",
    "build_signature",
    "canonical_request",
    "canonical_request_v2",
    "parse_sent_at",
]

INGEST_PATH: Final = "/api/v1/signals/ingest"
DEFAULT_TOLERANCE_S: Final = 300.0
SIGNATURE_VERSION_HEADER: Final = "X-Signature-Version"

# X-Timestamp's fraction: nanoseconds at most (datetime keeps microseconds, the rest is cut).
_MAX_FRACTION_DIGITS: Final = 9


def parse_sent_at(timestamp: str) -> datetime:
    """Parse X-Timestamp into an aware datetime; SigningError when it is not RFC 3339."""
    try:
        return parse_timestamp(timestamp, max_fraction_digits=_MAX_FRACTION_DIGITS)
    except TimestampError as exc:
        if exc.reason == "grammar":
            raise SigningError(f"timestamp is not RFC 3339: {timestamp[:64]!r}") from None
        raise SigningError(f"timestamp is not a valid date: {timestamp[:64]!r}") from exc


def body_sha256(body: bytes) -> str:
    """Return base64(sha256(body)), the body's line in the canonical request."""
    # base64.b64encode without its Python layer: this runs once per delivery.
    return binascii.b2a_base64(hashlib.sha256(body).digest(), newline=False).decode("ascii")


def canonical_request(
    body: bytes, timestamp: str, producer_id: str, *, method: str = "POST", path: str = INGEST_PATH
) -> bytes:
    """Build the canonical request bytes that the signature covers."""
    return (
        f"METHOD:{method}\nENDPOINT:{path}\nTIMESTAMP:{timestamp}\n"
        f"PRODUCER_ID:{producer_id}\nBODY_SHA256:{body_sha256(body)}"
    ).encode()


def _lease_lines(lease: LeaseStamp | None) -> str:
    """Return v2's two lease lines (leading newline included), empty fields without a lease."""
    if lease is None:
        return "\nLEASE_SHARD:\nLEASE_TOKEN:"
    return f"\nLEASE_SHARD:{lease.shard}\nLEASE_TOKEN:{lease.token}"


def canonical_request_v2(
    body: bytes,
    timestamp: str,
    producer_id: str,
    idempotency_key: str,
    lease: LeaseStamp | None,
    *,
    method: str = "POST",
    path: str = INGEST_PATH,
) -> bytes:
    """Build version 2's canonical request: v1's five lines, the idempotency key, the lease."""
    return (
        f"METHOD:{method}\nENDPOINT:{path}\nTIMESTAMP:{timestamp}\n"
        f"PRODUCER_ID:{producer_id}\nBODY_SHA256:{body_sha256(body)}\n"
        f"IDEMPOTENCY_KEY:{idempotency_key}{_lease_lines(lease)}"
    ).encode()


class _Mac(Protocol):
    """An HMAC in progress: ``hmac.HMAC`` or the OpenSSL object it wraps."""

    def copy(self) -> _Mac:
        """Return a copy that can go on on its own."""
        ...

    def update(self, msg: bytes, /) -> None:
        """Feed ``msg``."""
        ...

    def digest(self) -> bytes:
        """Return the MAC of what was fed."""
        ...


class RequestSigner(Protocol):
    """One signature scheme, as the client uses it: the headers that sign one attempt.

    ``timestamp`` is the attempt's ``X-Timestamp`` (RFC 3339) and ``at`` the same instant in
    Unix seconds; ``lease`` is the shard lease the POST is made under (strict ordering only).
    A scheme covers as much of these as its format allows; the client sends the rest as is.
    """

    def signature_headers(
        self,
        body: bytes,
        timestamp: str,
        at: float,
        idempotency_key: str,
        lease: LeaseStamp | None,
    ) -> dict[str, str]:
        """Return the headers that carry this attempt's signature."""
        ...


class _HmacSigner:
    """One secret for many requests: the HMAC key schedule is computed once, copied per request.

    Holds the secret inside an HMAC object only; ``repr`` shows the producer and path, never
    the key.
    """

    __slots__ = ("_hmac", "_prefix", "path", "producer_id")

    def __init__(
        self, secret: bytes, producer_id: str, *, method: str = "POST", path: str = INGEST_PATH
    ) -> None:
        if not secret:
            raise SigningError("secret must not be empty")
        if not producer_id:
            raise SigningError("producer_id must not be empty")
        mac = hmac.new(secret, digestmod=hashlib.sha256)
        # hmac.HMAC wraps OpenSSL's own HMAC object, which has the same copy, update and digest;
        # copying that object spares the wrapper's four Python calls per signature (~0.4 us).
        # A build without it (no OpenSSL, a later Python that renames it) keeps the wrapper.
        self._hmac: _Mac = getattr(mac, "_hmac", None) or mac
        self._prefix = f"METHOD:{method}\nENDPOINT:{path}\nTIMESTAMP:"
        self.producer_id = producer_id
        self.path = path

    def __repr__(self) -> str:
        return f"{type(self).__name__}(producer_id={self.producer_id!r}, path={self.path!r})"


class Signer(_HmacSigner):
    """Signs the seed's (v1) canonical request with one secret."""

    __slots__ = ()

    def sign(self, body: bytes, timestamp: str) -> str:
        """Return the base64 signature of ``body`` sent at ``timestamp`` (already RFC 3339)."""
        if not body:
            raise SigningError("body must not be empty")
        mac = self._hmac.copy()
        # body_sha256(body), inlined: one call fewer per signature.
        digest = binascii.b2a_base64(hashlib.sha256(body).digest(), newline=False).decode("ascii")
        mac.update(
            f"{self._prefix}{timestamp}\nPRODUCER_ID:{self.producer_id}\n"
            f"BODY_SHA256:{digest}".encode()
        )
        return binascii.b2a_base64(mac.digest(), newline=False).decode("ascii")

    def signature_headers(
        self,
        body: bytes,
        timestamp: str,
        at: float,
        idempotency_key: str,
        lease: LeaseStamp | None,
    ) -> dict[str, str]:
        """Return v1's one header, ``X-Signature``; v1 leaves the key and the lease unsigned."""
        return {"X-Signature": self.sign(body, timestamp)}


class SignerV2(_HmacSigner):
    """Signs version 2's canonical request (the key and the lease covered) with one secret."""

    __slots__ = ()

    def sign(
        self, body: bytes, timestamp: str, idempotency_key: str, lease: LeaseStamp | None
    ) -> str:
        """Return the base64 v2 signature of ``body`` sent at ``timestamp`` under this key."""
        if not body:
            raise SigningError("body must not be empty")
        mac = self._hmac.copy()
        digest = binascii.b2a_base64(hashlib.sha256(body).digest(), newline=False).decode("ascii")
        mac.update(
            f"{self._prefix}{timestamp}\nPRODUCER_ID:{self.producer_id}\n"
            f"BODY_SHA256:{digest}\n"
            f"IDEMPOTENCY_KEY:{idempotency_key}{_lease_lines(lease)}".encode()
        )
        return binascii.b2a_base64(mac.digest(), newline=False).decode("ascii")

    def signature_headers(
        self,
        body: bytes,
        timestamp: str,
        at: float,
        idempotency_key: str,
        lease: LeaseStamp | None,
    ) -> dict[str, str]:
        """Return ``X-Signature`` over the v2 lines and ``X-Signature-Version: 2``."""
        return {
            "X-Signature": self.sign(body, timestamp, idempotency_key, lease),
            SIGNATURE_VERSION_HEADER: "2",
        }


def build_signature(
    secret: bytes,
    body: bytes,
    timestamp: str,
    producer_id: str,
    *,
    method: str = "POST",
    path: str = INGEST_PATH,
) -> str:
    """Return base64(HMAC-SHA256(secret, canonical_request)).

    Raises SigningError (a ValueError) for an empty secret or body or a non-RFC 3339 timestamp.
    """
    if not secret:
        raise SigningError("secret must not be empty")
    if not body:
        raise SigningError("body must not be empty")
    parse_sent_at(timestamp)
    message = canonical_request(body, timestamp, producer_id, method=method, path=path)
    return base64.b64encode(hmac.digest(secret, message, hashlib.sha256)).decode("ascii")
