"""HMAC-SHA256 request signing and verification; pure, synchronous, no I/O.

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
imports :func:`verify_request`; ``tests/core/vectors/signing.json`` (v1) and
``signing_v2.json`` hold known answers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final, Protocol

import msgspec

from bridge.core.fencing import LEASE_HEADER, LeaseStamp
from bridge.core.timestamps import TimestampError, parse_timestamp
from bridge.errors import SigningError

if TYPE_CHECKING:
    from bridge.core.ed25519 import Ed25519PublicKey

__all__ = [
    "DEFAULT_TOLERANCE_S",
    "INGEST_PATH",
    "SIGNATURE_VERSION_HEADER",
    "RequestSigner",
    "Signer",
    "SignerV2",
    "Verification",
    "body_sha256",
    "build_signature",
    "canonical_request",
    "canonical_request_v2",
    "verify_request",
    "verify_signature",
]

INGEST_PATH: Final = "/api/v1/signals/ingest"
DEFAULT_TOLERANCE_S: Final = 300.0
SIGNATURE_VERSION_HEADER: Final = "X-Signature-Version"
_V2: Final = 2

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
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)
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
        mac.update(
            f"{self._prefix}{timestamp}\nPRODUCER_ID:{self.producer_id}\n"
            f"BODY_SHA256:{body_sha256(body)}".encode()
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
        mac.update(
            f"{self._prefix}{timestamp}\nPRODUCER_ID:{self.producer_id}\n"
            f"BODY_SHA256:{body_sha256(body)}\n"
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
    _sent_at(timestamp)
    message = canonical_request(body, timestamp, producer_id, method=method, path=path)
    return base64.b64encode(hmac.digest(secret, message, hashlib.sha256)).decode("ascii")


def _decode_signature(signature: str) -> bytes | None:
    """Strictly decode a base64 signature; None for anything malformed or not canonical.

    The last of 44 characters carries two unused bits, so four spellings decode to the same
    32 bytes; only the one that re-encodes to itself is accepted, so a captured signature
    cannot be resent as "another" one.
    """
    try:
        raw = base64.b64decode(signature.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != hashlib.sha256().digest_size:
        return None
    return raw if base64.b64encode(raw).decode("ascii") == signature else None


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
    """What :func:`verify_request` concluded; ``reason`` and ``check`` are for the server's log.

    ``check`` names the check that failed: ``headers`` (missing or malformed), ``version`` (a
    signature version the server does not take), ``window`` (timestamp outside the replay
    window), ``key`` (unknown key id), ``producer`` (a key not bound to this producer) or
    ``signature``; empty when ``ok``. Neither goes back to the caller: :attr:`answer` is the
    whole 401 body a server should send, so a forger learns nothing about which check failed.
    """

    ok: bool
    reason: str
    producer_id: str | None = None
    key_id: str | None = None
    timestamp: datetime | None = None
    check: str = ""
    version: int | None = None
    signature: bytes | None = None

    @property
    def answer(self) -> str:
        """The refusal an unauthenticated caller may read: ``invalid request`` or ``signature``."""
        return "invalid request" if self.check == "headers" else "invalid signature"


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


def verify_request(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, bytes],
    *,
    now: datetime | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    method: str = "POST",
    path: str = INGEST_PATH,
    producers: Mapping[str, Collection[str]] | None = None,
    required_version: int | None = None,
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    target_uri: str | None = None,
) -> Verification:
    """Verify a signed ingest request the way the server must, before parsing any JSON.

    The scheme is picked by the headers present: ``webhook-signature`` is Standard Webhooks
    (:mod:`bridge.core.webhooks`), ``Signature-Input`` is RFC 9421 (:mod:`bridge.core.rfc9421`,
    against ``target_uri``, by default ``https://<Host><path>``), else ``X-Signature`` v1
    (without ``X-Signature-Version``) or v2 (with ``X-Signature-Version: 2``);
    ``required_version`` refuses the other of v1 and v2 (the two profiles sign the key too).
    ``secrets`` maps key id to secret, ``public_keys`` key id to Ed25519 public key. With an
    ``X-Key-Id`` header only that key is tried; without one every key is tried. ``producers``
    binds a key id to the producer ids it may sign for (a key id absent from it may sign for
    any). The timestamp must lie within ``tolerance_s`` of ``now`` (past or future) so a
    captured request cannot be replayed later. Every refusal returns ``ok=False`` with a reason
    for the server's log; nothing raises on hostile input.
    """
    lowered = {k.lower(): v for k, v in headers.items()}
    # Which scheme signed the request, by the headers it carries: one branch per scheme.
    if "webhook-signature" in lowered or "signature-input" in lowered:
        verdict = _verify_profile(
            lowered,
            body,
            secrets,
            public_keys,
            now=now,
            tolerance_s=tolerance_s,
            method=method,
            target_uri=target_uri or f"https://{lowered.get('host', '')}{path}",
        )
        return _bound(verdict, producers)
    version_header = _header(headers, lowered, SIGNATURE_VERSION_HEADER)
    if version_header is None or version_header == "1":
        version = 1
    elif version_header == "2":
        version = 2
    else:
        return Verification(ok=False, reason="unknown X-Signature-Version", check="headers")
    if required_version is not None and version != required_version:
        return Verification(
            ok=False,
            reason=f"signature version {version} refused: version {required_version} required",
            check="version",
            version=version,
        )
    signed = _HmacRequest.read(headers, lowered, body, version)
    if isinstance(signed, Verification):
        return signed
    return _bound(signed.verify(secrets, now, tolerance_s, method=method, path=path), producers)


def _bound(verdict: Verification, producers: Mapping[str, Collection[str]] | None) -> Verification:
    """Refuse an accepted request whose key id is bound to other producer ids than its own."""
    bound = None if producers is None or verdict.key_id is None else producers.get(verdict.key_id)
    if verdict.ok and bound is not None and verdict.producer_id not in bound:
        return Verification(
            ok=False,
            reason="key id not bound to this producer id",
            producer_id=verdict.producer_id,
            key_id=verdict.key_id,
            check="producer",
            version=verdict.version,
        )
    return verdict


@dataclass(frozen=True, slots=True)
class _HmacRequest:
    """The headers an ``X-Signature`` request (version 1 or 2) is verified from, all present."""

    version: int
    body: bytes
    producer_id: str
    timestamp: str
    signature: str
    key_id: str | None
    idempotency_key: str
    lease: LeaseStamp | None

    @classmethod
    def read(
        cls, headers: Mapping[str, str], lowered: Mapping[str, str], body: bytes, version: int
    ) -> _HmacRequest | Verification:
        """Collect the signed headers; a Verification (check ``headers``) when one is missing."""
        producer_id = _header(headers, lowered, "X-Producer-Id")
        lease_header = _header(headers, lowered, LEASE_HEADER)
        lease = None if lease_header is None else LeaseStamp.parse(lease_header)
        required = ["X-Producer-Id", "X-Timestamp", "X-Signature"]
        if version == _V2:
            required.append("X-Idempotency-Key")
        values = {name: _header(headers, lowered, name) for name in required}
        problem = next((f"missing header {name}" for name, v in values.items() if not v), None)
        if problem is None and not body:
            problem = "empty body"
        # v2: a lease header that does not parse is refused, never read as "no lease".
        if problem is None and version == _V2 and lease_header is not None and lease is None:
            problem = f"malformed {LEASE_HEADER}"
        if problem is not None:
            return Verification(
                ok=False, reason=problem, producer_id=producer_id, check="headers", version=version
            )
        return cls(
            version=version,
            body=body,
            producer_id=values["X-Producer-Id"] or "",
            timestamp=values["X-Timestamp"] or "",
            signature=values["X-Signature"] or "",
            key_id=_header(headers, lowered, "X-Key-Id"),
            idempotency_key=values.get("X-Idempotency-Key") or "",
            lease=lease,
        )

    def refused(self, reason: str, check: str, sent_at: datetime | None = None) -> Verification:
        """Return a refusal naming this request's producer and version."""
        return Verification(
            ok=False,
            reason=reason,
            producer_id=self.producer_id,
            timestamp=sent_at,
            check=check,
            version=self.version,
        )

    def canonical(self, method: str, path: str) -> bytes:
        """Return the canonical request of this request's version."""
        if self.version == 1:
            return canonical_request(
                self.body, self.timestamp, self.producer_id, method=method, path=path
            )
        return canonical_request_v2(
            self.body,
            self.timestamp,
            self.producer_id,
            self.idempotency_key,
            self.lease,
            method=method,
            path=path,
        )

    def verify(
        self,
        secrets: Mapping[str, bytes],
        now: datetime | None,
        tolerance_s: float,
        *,
        method: str,
        path: str,
    ) -> Verification:
        """Check the timestamp's window, then the signature against the candidate keys."""
        try:
            sent_at = _sent_at(self.timestamp)
        except SigningError:
            return self.refused("malformed X-Timestamp", "headers")
        current = now if now is not None else datetime.now(UTC)
        skew_s = (current - sent_at).total_seconds()
        if abs(skew_s) > tolerance_s:
            direction = "old" if skew_s > 0 else "in the future"
            return self.refused(
                f"timestamp {abs(skew_s):.0f}s {direction}, outside {tolerance_s:.0f}s window",
                "window",
                sent_at,
            )
        provided = _decode_signature(self.signature)
        if provided is None:
            return self.refused("malformed X-Signature", "signature", sent_at)
        candidates: Iterable[tuple[str, bytes]]
        if self.key_id is not None:
            if self.key_id not in secrets:
                return self.refused("unknown X-Key-Id", "key", sent_at)
            candidates = ((self.key_id, secrets[self.key_id]),)
        else:
            candidates = secrets.items()
        message = self.canonical(method, path)
        for candidate_id, secret in candidates:
            expected = hmac.digest(secret, message, hashlib.sha256)
            if hmac.compare_digest(expected, provided):
                return Verification(
                    ok=True,
                    reason="ok",
                    producer_id=self.producer_id,
                    key_id=candidate_id,
                    timestamp=sent_at,
                    version=self.version,
                    signature=provided,
                )
        return self.refused("signature mismatch", "signature", sent_at)
