"""The Standard Webhooks profile: ``webhook-id``, ``webhook-timestamp``, ``webhook-signature``.

What Svix and many webhook receivers verify with stock libraries (``standardwebhooks`` on PyPI
and npm). The signed content is ``<webhook-id>.<webhook-timestamp>.<body>``; ``webhook-id`` is
the idempotency key, so a relay that rewrites it breaks the signature::

    webhook-signature: v1,<base64 HMAC-SHA256(secret, content)> v1a,<base64 Ed25519(content)>

A server configures its verifier with ``whsec_`` + base64 of the bridge's HMAC secret. ``v1a``
entries are there when Ed25519 keys are configured (both keys during a rotation). The format
covers neither ``X-Producer-Id`` nor ``X-Signal-Lease``. Pure, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Final

from bridge.core.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    verify_ed25519,
)
from bridge.core.fencing import LeaseStamp
from bridge.core.signing import DEFAULT_TOLERANCE_S
from bridge.core.verification import Verification
from bridge.errors import SigningError

__all__ = [
    "ID_HEADER",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "StandardWebhooksSigner",
    "signed_content",
    "verify_webhook",
    "whsec",
]

ID_HEADER: Final = "webhook-id"
TIMESTAMP_HEADER: Final = "webhook-timestamp"
SIGNATURE_HEADER: Final = "webhook-signature"
_MAX_ENTRIES: Final = 8
_MAX_TIMESTAMP_DIGITS: Final = 12


def signed_content(msg_id: str, timestamp_s: int, body: bytes) -> bytes:
    """Return the bytes both signatures cover: ``<id>.<unix seconds>.<body>``."""
    return f"{msg_id}.{timestamp_s}.".encode() + body


def whsec(secret: bytes) -> str:
    """Return the secret as a Standard Webhooks verifier takes it: ``whsec_`` + base64."""
    return "whsec_" + base64.b64encode(secret).decode("ascii")


class StandardWebhooksSigner:
    """Signs each attempt in the Standard Webhooks format; keys live inside, never shown.

    ``secret`` gives the ``v1`` (HMAC-SHA256) entry; each of ``ed25519_keys`` a ``v1a`` entry.
    """

    __slots__ = ("_ed25519", "_hmac")

    def __init__(self, secret: bytes, ed25519_keys: Sequence[Ed25519PrivateKey] = ()) -> None:
        if not secret:
            raise SigningError("secret must not be empty")
        self._hmac = hmac.new(secret, digestmod=hashlib.sha256)
        self._ed25519 = tuple(ed25519_keys)

    def __repr__(self) -> str:
        return f"StandardWebhooksSigner(ed25519_keys={len(self._ed25519)})"

    def signature_headers(
        self,
        body: bytes,
        timestamp: str,
        at: float,
        idempotency_key: str,
        lease: LeaseStamp | None,
    ) -> dict[str, str]:
        """Return the three ``webhook-*`` headers; the lease is not covered by this format."""
        seconds = int(at)
        content = signed_content(idempotency_key, seconds, body)
        mac = self._hmac.copy()
        mac.update(content)
        entries = [f"v1,{base64.b64encode(mac.digest()).decode('ascii')}"]
        entries.extend(
            f"v1a,{base64.b64encode(key.sign(content)).decode('ascii')}" for key in self._ed25519
        )
        return {
            ID_HEADER: idempotency_key,
            TIMESTAMP_HEADER: str(seconds),
            SIGNATURE_HEADER: " ".join(entries),
        }


def _strict_b64(text: str) -> bytes | None:
    """Decode base64 only in its one canonical spelling; None otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def verify_webhook(
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, bytes],
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    *,
    now: datetime | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> Verification:
    """Verify a Standard Webhooks request: one ``v1`` or ``v1a`` entry must match a known key.

    ``headers`` must be keyed in lower case; ``public_keys`` maps key id (the fingerprint, by
    convention) to public key. ``X-Idempotency-Key``, when sent, must equal the signed
    ``webhook-id``. ``key_id`` is the matching key's id. ``X-Producer-Id`` is reported as sent:
    this format does not sign it.
    """
    producer_id = headers.get("x-producer-id")
    msg_id = headers.get(ID_HEADER)
    raw_timestamp = headers.get(TIMESTAMP_HEADER)
    entries = headers.get(SIGNATURE_HEADER)
    if not msg_id or not raw_timestamp or not entries or not body:
        return Verification(
            ok=False, reason="missing webhook-* header", producer_id=producer_id, check="headers"
        )
    idempotency_key = headers.get("x-idempotency-key")
    if idempotency_key is not None and idempotency_key != msg_id:
        return Verification(
            ok=False,
            reason="X-Idempotency-Key differs from the signed webhook-id",
            producer_id=producer_id,
            check="headers",
        )
    if not (raw_timestamp.isascii() and raw_timestamp.isdigit()) or len(raw_timestamp) > (
        _MAX_TIMESTAMP_DIGITS
    ):
        return Verification(
            ok=False, reason="malformed webhook-timestamp", producer_id=producer_id, check="headers"
        )
    seconds = int(raw_timestamp)
    sent_at = datetime.fromtimestamp(seconds, UTC)
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
    content = signed_content(msg_id, seconds, body)
    matched = _match(entries.split(" ")[:_MAX_ENTRIES], content, secrets, public_keys or {})
    if matched is None:
        return Verification(
            ok=False, reason="signature mismatch", producer_id=producer_id, check="signature"
        )
    return Verification(
        ok=True, reason="ok", producer_id=producer_id, key_id=matched, timestamp=sent_at
    )


def _match(
    entries: Sequence[str],
    content: bytes,
    secrets: Mapping[str, bytes],
    public_keys: Mapping[str, Ed25519PublicKey],
) -> str | None:
    """Return the id of the key one entry was made with, or None."""
    for entry in entries:
        version, _, encoded = entry.partition(",")
        provided = _strict_b64(encoded)
        if provided is None:
            continue
        if version == "v1":
            for key_id, secret in secrets.items():
                expected = hmac.digest(secret, content, hashlib.sha256)
                if hmac.compare_digest(expected, provided):
                    return key_id
        elif version == "v1a":
            for key_id, key in public_keys.items():
                if verify_ed25519(key, provided, content):
                    return key_id
    return None
