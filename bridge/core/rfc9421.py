"""The HTTP Message Signatures profile (RFC 9421) with ``Content-Digest`` (RFC 9530).

Each POST carries ``Content-Digest: sha-256=:<base64>:`` and one signature per key, labelled
``sig1``, ``sig2`` (the next Ed25519 key during a rotation)::

    Signature-Input: sig1=("@method" "@target-uri" "content-type" "content-digest"
        "x-idempotency-key" "x-producer-id" "x-signal-lease");created=1761402645;
        keyid="k-2026-11";alg="hmac-sha256";tag="signal-bridge"
    Signature: sig1=:<base64 signature of the signature base>:

``x-signal-lease`` is covered when the POST carries a lease. ``alg`` is ``hmac-sha256`` (keyed
with the bridge's HMAC secret, ``keyid`` = ``HMAC_PRODUCER_KEY_ID`` or ``default``) or
``ed25519`` (``keyid`` = the public key's fingerprint). Stock verifiers (``http-message-signatures``
on PyPI and npm) accept it; :func:`verify_rfc9421` is the reference verifier. Pure, no I/O.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from bridge.core.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
    public_key_fingerprint,
    verify_ed25519,
)
from bridge.core.fencing import LeaseStamp
from bridge.core.signing import DEFAULT_TOLERANCE_S
from bridge.core.verification import Verification
from bridge.errors import SigningError

__all__ = [
    "COVERED",
    "DEFAULT_HMAC_KEY_ID",
    "TAG",
    "Rfc9421Signer",
    "content_digest",
    "verify_rfc9421",
]

TAG: Final = "signal-bridge"
DEFAULT_HMAC_KEY_ID: Final = "default"
CONTENT_TYPE: Final = "application/json"
# What every signature covers, in this order; x-signal-lease follows when there is a lease.
COVERED: Final = (
    "@method",
    "@target-uri",
    "content-type",
    "content-digest",
    "x-idempotency-key",
    "x-producer-id",
)
_LEASE: Final = "x-signal-lease"
_PARAMS: Final = frozenset({"created", "keyid", "alg", "tag", "expires", "nonce"})
_MAX_SIGNATURES: Final = 4
_KEY_NAME: Final = r"[a-z*][a-z0-9_\-.*]{0,63}"
_STRING: Final = r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\["\\]){0,256}"'
_INPUT_MEMBER: Final = re.compile(
    rf"({_KEY_NAME})=\(((?:\s*{_STRING})*)\s*\)((?:;{_KEY_NAME}=(?:-?[0-9]{{1,15}}|{_STRING}))*)"
)
_SIGNATURE_MEMBER: Final = re.compile(rf"({_KEY_NAME})=:([A-Za-z0-9+/=]{{0,1024}}):")
_COMPONENT: Final = re.compile(_STRING)
_PARAM: Final = re.compile(rf";({_KEY_NAME})=(-?[0-9]{{1,15}}|{_STRING})")
_ESCAPE: Final = re.compile(r"\\(.)")
_DIGEST: Final = re.compile(r"\s*sha-256=:([A-Za-z0-9+/=]{44}):\s*")


def _sf_string(value: str) -> str:
    """Write ``value`` as an RFC 8941 string: printable ASCII, quotes and backslashes escaped."""
    if not (value.isascii() and value.isprintable()):
        raise SigningError("a signature parameter must be printable ASCII")
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(text: str) -> str:
    """Read an RFC 8941 string's content (its quotes dropped, escapes resolved)."""
    inner = text[1:-1]
    return _ESCAPE.sub(r"\1", inner) if "\\" in inner else inner


def content_digest(body: bytes) -> str:
    """Return the RFC 9530 ``Content-Digest`` value of ``body``: ``sha-256=:<base64>:``."""
    return f"sha-256=:{base64.b64encode(hashlib.sha256(body).digest()).decode('ascii')}:"


class Rfc9421Signer:
    """Signs each attempt as RFC 9421 ``Signature-Input`` / ``Signature`` + ``Content-Digest``.

    With ``ed25519_keys`` each key signs (``sig1``, ``sig2``), otherwise the HMAC ``secret``
    does under ``hmac_key_id``. ``target_uri`` is the ingest URL the server is asked for.
    """

    __slots__ = ("_hmac", "_keys", "_producer_id", "_static_lines", "target_uri")

    def __init__(
        self,
        target_uri: str,
        producer_id: str,
        *,
        secret: bytes | None = None,
        hmac_key_id: str = DEFAULT_HMAC_KEY_ID,
        ed25519_keys: Sequence[Ed25519PrivateKey] = (),
    ) -> None:
        if not ed25519_keys and not secret:
            raise SigningError("an HMAC secret or an Ed25519 key is needed")
        self.target_uri = target_uri
        self._producer_id = producer_id
        self._keys: tuple[tuple[str, str, Ed25519PrivateKey | None], ...]
        if ed25519_keys:
            self._keys = tuple(
                (_sf_string(public_key_fingerprint(key)), "ed25519", key) for key in ed25519_keys
            )
            self._hmac: hmac.HMAC | None = None
        else:
            self._keys = ((_sf_string(hmac_key_id), "hmac-sha256", None),)
            self._hmac = hmac.new(secret or b"", digestmod=hashlib.sha256)
        self._static_lines = (
            f'"@method": POST\n"@target-uri": {target_uri}\n"content-type": {CONTENT_TYPE}\n'
        )
        _sf_string(producer_id)

    def __repr__(self) -> str:
        algs = ",".join(alg for _, alg, _ in self._keys)
        return f"Rfc9421Signer(target_uri={self.target_uri!r}, alg={algs!r})"

    def signature_headers(
        self,
        body: bytes,
        timestamp: str,
        at: float,
        idempotency_key: str,
        lease: LeaseStamp | None,
    ) -> dict[str, str]:
        """Return ``Content-Digest``, ``Signature-Input`` and ``Signature`` for one attempt."""
        digest = content_digest(body)
        lines = (
            f"{self._static_lines}"
            f'"content-digest": {digest}\n'
            f'"x-idempotency-key": {idempotency_key}\n'
            f'"x-producer-id": {self._producer_id}\n'
        )
        covered = '"@method" "@target-uri" "content-type" "content-digest" "x-idempotency-key" '
        covered += '"x-producer-id"'
        if lease is not None:
            lines += f'"{_LEASE}": {lease.header_value()}\n'
            covered += f' "{_LEASE}"'
        created = int(at)
        inputs: list[str] = []
        signatures: list[str] = []
        for n, (keyid, alg, key) in enumerate(self._keys, start=1):
            params = f'({covered});created={created};keyid={keyid};alg="{alg}";tag="{TAG}"'
            base = f'{lines}"@signature-params": {params}'.encode()
            if key is not None:
                raw = key.sign(base)
            else:
                assert self._hmac is not None  # noqa: S101 - set with the HMAC key
                mac = self._hmac.copy()
                mac.update(base)
                raw = mac.digest()
            inputs.append(f"sig{n}={params}")
            signatures.append(f"sig{n}=:{base64.b64encode(raw).decode('ascii')}:")
        return {
            "Content-Digest": digest,
            "Signature-Input": ", ".join(inputs),
            "Signature": ", ".join(signatures),
        }


@dataclass(frozen=True, slots=True)
class _Input:
    """One parsed ``Signature-Input`` member."""

    label: str
    covered: tuple[str, ...]
    raw_covered: str
    raw_params: str
    params: dict[str, int | str]


def _parse_members(value: str, pattern: re.Pattern[str]) -> list[re.Match[str]] | None:
    """Split a dictionary field of our subset into its members; None when malformed."""
    found: list[re.Match[str]] = []
    pos = 0
    text = value.strip()
    while pos < len(text):
        match = pattern.match(text, pos)
        if match is None or len(found) >= _MAX_SIGNATURES:
            return None
        found.append(match)
        pos = match.end()
        rest = re.match(r"\s*,\s*", text[pos:])
        if rest is None:
            break
        pos += rest.end()
    return found if found and pos == len(text) else None


def _parse_inputs(value: str) -> list[_Input] | None:
    members = _parse_members(value, _INPUT_MEMBER)
    if members is None:
        return None
    parsed: list[_Input] = []
    for match in members:
        covered = tuple(_unquote(c) for c in _COMPONENT.findall(match.group(2)))
        params: dict[str, int | str] = {}
        for name, raw in _PARAM.findall(match.group(3)):
            if name in params:
                return None
            params[name] = _unquote(raw) if raw.startswith('"') else int(raw)
        parsed.append(_Input(match.group(1), covered, match.group(2), match.group(3), params))
    return parsed


def _strict_b64(text: str) -> bytes | None:
    """Decode base64 only in its one canonical spelling; None otherwise."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    return raw if base64.b64encode(raw).decode("ascii") == text else None


def _refuse(reason: str, check: str, producer_id: str | None) -> Verification:
    return Verification(ok=False, reason=reason, producer_id=producer_id, check=check)


def verify_rfc9421(  # noqa: PLR0912 - one refusal per check, in order
    headers: Mapping[str, str],
    body: bytes,
    secrets: Mapping[str, bytes],
    public_keys: Mapping[str, Ed25519PublicKey] | None = None,
    *,
    target_uri: str,
    method: str = "POST",
    now: datetime | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
) -> Verification:
    """Verify a request signed in this profile; one ``signal-bridge`` signature must hold.

    ``headers`` must be keyed in lower case; ``target_uri`` is the URL the request reached, as
    the server reconstructs it (scheme, ``Host``, path). A signature counts only when it covers
    every component of :data:`COVERED` (and ``x-signal-lease`` when that header is present),
    its ``created`` lies inside the window, its ``keyid`` names a key of its ``alg`` and the
    body matches ``Content-Digest``.
    """
    producer_id = headers.get("x-producer-id")
    signature_input = headers.get("signature-input")
    signature = headers.get("signature")
    digest = headers.get("content-digest")
    if not signature_input or not signature or not digest or not body:
        return _refuse("missing signature header", "headers", producer_id)
    inputs = _parse_inputs(signature_input)
    members = _parse_members(signature, _SIGNATURE_MEMBER)
    if inputs is None or members is None:
        return _refuse("malformed Signature-Input or Signature", "headers", producer_id)
    signatures = {m.group(1): m.group(2) for m in members}
    match = _DIGEST.fullmatch(digest)
    if match is None or _strict_b64(match.group(1)) != hashlib.sha256(body).digest():
        return _refuse("Content-Digest does not match the body", "signature", producer_id)
    required = set(COVERED) | ({_LEASE} if _LEASE in headers else set())
    current = now if now is not None else datetime.now(UTC)
    refusal = _refuse("no signal-bridge signature", "headers", producer_id)
    for item in inputs:
        params = item.params
        if params.get("tag") != TAG or item.label not in signatures:
            continue
        if len(set(item.covered)) != len(item.covered) or not required <= set(item.covered):
            refusal = _refuse("signature does not cover the request", "headers", producer_id)
            continue
        created = params.get("created")
        if not isinstance(created, int) or not set(params) <= _PARAMS:
            refusal = _refuse("malformed signature parameters", "headers", producer_id)
            continue
        sent_at = datetime.fromtimestamp(max(0, min(created, 2**33)), UTC)
        skew_s = (current - sent_at).total_seconds()
        if abs(skew_s) > tolerance_s:
            direction = "old" if skew_s > 0 else "in the future"
            reason = f"created {abs(skew_s):.0f}s {direction}, outside {tolerance_s:.0f}s window"
            refusal = _refuse(reason, "window", producer_id)
            continue
        lines = []
        for name in item.covered:
            value = _component(name, headers, method, target_uri)
            if value is None:
                break
            lines.append(f'"{name}": {value}\n')
        else:
            base = "".join(lines) + f'"@signature-params": ({item.raw_covered}){item.raw_params}'
            provided = _strict_b64(signatures[item.label])
            key_id = params.get("keyid")
            verdict = _check_key(
                params.get("alg"),
                key_id,
                provided,
                base.encode(),
                secrets=secrets,
                public_keys=public_keys or {},
            )
            if verdict is None:
                refusal = _refuse("unknown keyid", "key", producer_id)
                continue
            if verdict:
                return Verification(
                    ok=True,
                    reason="ok",
                    producer_id=producer_id,
                    key_id=str(key_id),
                    timestamp=sent_at,
                )
            refusal = _refuse("signature mismatch", "signature", producer_id)
            continue
        refusal = _refuse("a covered component is missing", "headers", producer_id)
    return refusal


def _component(name: str, headers: Mapping[str, str], method: str, target_uri: str) -> str | None:
    """Resolve one covered component; None when the request does not have it."""
    if name == "@method":
        return method
    if name == "@target-uri":
        return target_uri
    if name.startswith("@") or name != name.lower():
        return None
    value = headers.get(name)
    if value is None or "\n" in value or "\r" in value:
        return None
    return value.strip()


def _check_key(
    alg: int | str | None,
    key_id: int | str | None,
    provided: bytes | None,
    base: bytes,
    *,
    secrets: Mapping[str, bytes],
    public_keys: Mapping[str, Ed25519PublicKey],
) -> bool | None:
    """Verify ``provided`` with the key ``key_id`` names for ``alg``; None for an unknown key."""
    if not isinstance(key_id, str):
        return None
    if alg == "hmac-sha256" and key_id in secrets:
        expected = hmac.digest(secrets[key_id], base, hashlib.sha256)
        return provided is not None and hmac.compare_digest(expected, provided)
    if alg == "ed25519" and key_id in public_keys:
        return provided is not None and verify_ed25519(public_keys[key_id], provided, base)
    return None
