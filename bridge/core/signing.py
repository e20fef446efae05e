"""HMAC-SHA256 request signing and verification; pure, synchronous, no I/O.

The canonical request is five lines joined with newlines, with no trailing newline::

    METHOD:POST
    ENDPOINT:/api/v1/signals/ingest
    TIMESTAMP:2025-10-25T14:30:45.123456Z
    PRODUCER_ID:mt5-trader-1
    BODY_SHA256:<base64(sha256(body))>

and the signature is ``base64(HMAC-SHA256(secret, canonical_request))``. The key id
(``X-Key-Id``) travels outside the canonical request: it only picks the secret. The server side
imports :func:`verify_request`; ``tests/core/vectors/signing.json`` holds known answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from bridge.core.fencing import LeaseStamp
from bridge.core.timestamps import TimestampError, parse_timestamp
from bridge.errors import SigningError

if TYPE_CHECKING:
    from bridge.core.ed25519 import Ed25519PublicKey

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "INGEST_PATH",
    "RequestSigner",
    "Signer",
    "Verification",
    "body_sha256",
    "build_signature",
    "canonical_request",
    "verify_request",
    "verify_signature",
]

INGEST_PATH: Final = "/api/v1/signals/ingest"
DEFAULT_TOLERANCE_S: Final = 300.0

# X-Timestamp's fraction: nanoseconds at most (datetime keeps microseconds, the rest is cut).
_MAX_FRACTION_DIGITS: Final = 9


def _sent_at(timestamp: str) -> datetime:
    """Parse X-Timestamp into an aware datetime; SigningError when it is not RFC 3339."""
    try:
        return parse_timestamp(timestamp, max_fraction_digits=_MAX_FRACTION_DIGITS)
    except TimestampError as exc:
        if exc.reason == "grammar":
            raise SigningError(f"timestamp is not RFC 3339: {timestamp[:64]!r}") from None
        raise SigningError(f"timestamp is not a valid date: {timestamp[:64]!r}") from exc


def body_sha256(body: bytes) -> str:
    """Return base64(sha256(body)), the body's line in the canonical request."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def canonical_request(
    body: bytes, timestamp: str, producer_id: str, *, method: str = "POST", path: str = INGEST_PATH
) -> bytes:
    """Build the canonical request bytes that the signature covers."""
    return (
        f"METHOD:{method}\nENDPOINT:{path}\nTIMESTAMP:{timestamp}\n"
        f"PRODUCER_ID:{producer_id}\nBODY_SHA256:{body_sha256(body)}"
    ).encode()


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


class Signer:
    """Signs many requests with one secret: the HMAC key schedule is computed once.

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
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)
        self._prefix = f"METHOD:{method}\nENDPOINT:{path}\nTIMESTAMP:"
        self.producer_id = producer_id
        self.path = path

    def __repr__(self) -> str:
        return f"Signer(producer_id={self.producer_id!r}, path={self.path!r})"

    def sign(self, body: bytes, timestamp: str) -> str:
        """Return the base64 signature of ``body`` sent at ``timestamp`` (already RFC 3339)."""
        if not body:
            raise SigningError("body must not be empty")
        mac = self._hmac.copy()
        mac.update(
            f"{self._prefix}{timestamp}\nPRODUCER_ID:{self.producer_id}\n"
            f"BODY_SHA256:{body_sha256(body)}".encode()
        )
        return base64.b64encode(mac.digest()).decode("ascii")

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
    _sent_at(timestamp)
    message = canonical_request(body, timestamp, producer_id, method=method, path=path)
    return base64.b64encode(hmac.digest(secret, message, hashlib.sha256)).decode("ascii")


def _decode_signature(signature: str) -> bytes | None:
    """Strictly decode a base64 signature; None for anything malformed."""
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if len(raw) == hashlib.sha256().digest_size else None


def verify_signature(
    secret: bytes,
    body: bytes,
    timestamp: str,
    producer_id: str,
    provided_signature: str,
    *,
    method: str = "POST",
    path: str = INGEST_PATH,
) -> bool:
    """Recompute and compare in constant time; False (never an exception) for a bad signature.

    A malformed timestamp, empty body or undecodable signature are all just ``False``: they come
    from the attacker's side of the wire.
    """
    provided = (
        _decode_signature(provided_signature) if isinstance(provided_signature, str) else None
    )
    if provided is None or not secret or not body:
        return False
    try:
        _sent_at(timestamp)
    except SigningError:
        return False
    message = canonical_request(body, timestamp, producer_id, method=method, path=path)
    return hmac.compare_digest(hmac.digest(secret, message, hashlib.sha256), provided)


class Verification(msgspec.Struct, frozen=True, kw_only=True):
    """What :func:`verify_request` concluded; ``reason`` is safe to log and to return.

    ``check`` names the check that failed, for machines: ``headers`` (missing or malformed),
    ``window`` (timestamp outside the replay window), ``key`` (unknown key id) or
    ``signature``; empty when ``ok``.
    """

    ok: bool
    reason: str
    producer_id: str | None = None
    key_id: str | None = None
    timestamp: datetime | None = None
    check: str = ""


def _header(headers: Mapping[str, str], lowered: Mapping[str, str], name: str) -> str | None:
    """Look a header up case-insensitively."""
    value = headers.get(name)
    return value if value is not None else lowered.get(name.lower())


def _verify_profile(
    lowered: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, bytes],
    public_keys: Mapping[str, Ed25519PublicKey] | None,
    *,
    now: datetime | None,
    tolerance_s: float,
    method: str,
    target_uri: str,
) -> Verification:
    """Verify a Standard Webhooks or RFC 9421 request (``lowered``: headers in lower case)."""
    from bridge.core import rfc9421, webhooks  # noqa: PLC0415 - they import this module

    if "webhook-signature" in lowered:
        return webhooks.verify_webhook(
            lowered, body, secrets, public_keys, now=now, tolerance_s=tolerance_s
        )
    return rfc9421.verify_rfc9421(
        lowered,
        body,
        secrets,
        public_keys,
        target_uri=target_uri,
        method=method,
        now=now,
        tolerance_s=tolerance_s,
    )


def verify_request(  # noqa: PLR0912 - the scheme by its headers, then one refusal per check
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, bytes],
    *,
    now: datetime | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    method: str = "POST",
    path: str = INGEST_PATH,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    target_uri: str | None = None,
) -> Verification:
    """Verify a signed ingest request the way the server must, before parsing any JSON.

    ``secrets`` maps key id to secret. With an ``X-Key-Id`` header only that key is tried;
    without one every key is tried. The timestamp must lie within ``tolerance_s`` of ``now``
    (past or future) so a captured request cannot be replayed later. Every refusal returns
    ``ok=False`` with a short reason the server can log; nothing raises on hostile input.

    The scheme is told by its headers: ``webhook-signature`` is Standard Webhooks
    (:mod:`bridge.core.webhooks`), ``Signature-Input`` is RFC 9421 (:mod:`bridge.core.rfc9421`,
    against ``target_uri``, by default ``https://<Host><path>``); ``public_keys`` (key id ->
    Ed25519 public key) serve both.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    if "webhook-signature" in lowered or "signature-input" in lowered:
        return _verify_profile(
            lowered,
            body,
            secrets,
            public_keys,
            now=now,
            tolerance_s=tolerance_s,
            method=method,
            target_uri=target_uri or f"https://{lowered.get('host', '')}{path}",
        )
    producer_id = _header(headers, lowered, "X-Producer-Id")
    timestamp = _header(headers, lowered, "X-Timestamp")
    signature = _header(headers, lowered, "X-Signature")
    key_id = _header(headers, lowered, "X-Key-Id")
    if not producer_id:
        return Verification(ok=False, reason="missing header X-Producer-Id", check="headers")
    if not timestamp:
        return Verification(
            ok=False, reason="missing header X-Timestamp", producer_id=producer_id, check="headers"
        )
    if not signature:
        return Verification(
            ok=False, reason="missing header X-Signature", producer_id=producer_id, check="headers"
        )
    if not body:
        return Verification(ok=False, reason="empty body", producer_id=producer_id, check="headers")
    try:
        sent_at = _sent_at(timestamp)
    except SigningError:
        return Verification(
            ok=False, reason="malformed X-Timestamp", producer_id=producer_id, check="headers"
        )
    current = now if now is not None else datetime.now(UTC)
    skew_s = (current - sent_at).total_seconds()
    if abs(skew_s) > tolerance_s:
        direction = "old" if skew_s > 0 else "in the future"
        return Verification(
            ok=False,
            reason=f"timestamp {abs(skew_s):.0f}s {direction}, outside {tolerance_s:.0f}s window",
            producer_id=producer_id,
            timestamp=sent_at,
            check="window",
        )
    provided = _decode_signature(signature)
    if provided is None:
        return Verification(
            ok=False, reason="malformed X-Signature", producer_id=producer_id, check="signature"
        )
    candidates: Iterable[tuple[str, bytes]]
    if key_id is not None:
        if key_id not in secrets:
            return Verification(
                ok=False, reason="unknown X-Key-Id", producer_id=producer_id, check="key"
            )
        candidates = ((key_id, secrets[key_id]),)
    else:
        candidates = secrets.items()
    message = canonical_request(body, timestamp, producer_id, method=method, path=path)
    for candidate_id, secret in candidates:
        expected = hmac.digest(secret, message, hashlib.sha256)
        if hmac.compare_digest(expected, provided):
            return Verification(
                ok=True,
                reason="ok",
                producer_id=producer_id,
                key_id=candidate_id,
                timestamp=sent_at,
            )
    return Verification(
        ok=False, reason="signature mismatch", producer_id=producer_id, check="signature"
    )
