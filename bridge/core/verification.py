"""Verifying a signed ingest request, every scheme, the way a server must; pure, no I/O.

:func:`verify_request` tells the scheme by its headers (Standard Webhooks, RFC 9421, or the
canonical request v1 / v2 of :mod:`bridge.core.signing`), checks the window, the key and the
producer binding, and returns a :class:`Verification` whose reason is for the server's log only.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Final

import msgspec

from bridge.core.fencing import LEASE_HEADER, LeaseStamp
from bridge.core.signing import (
    DEFAULT_TOLERANCE_S,
    INGEST_PATH,
    SIGNATURE_VERSION_HEADER,
    canonical_request,
    canonical_request_v2,
    parse_sent_at,
)
from bridge.errors import SigningError

if TYPE_CHECKING:
    from bridge.core.ed25519 import Ed25519PublicKey

__all__ = ["Verification", "verify_request", "verify_signature"]

_V2: Final = 2


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
        parse_sent_at(timestamp)
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
            sent_at = parse_sent_at(self.timestamp)
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
