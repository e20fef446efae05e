"""Ed25519 keys for the signature schemes whose server holds only a public key.

A private key file holds either a PKCS#8 PEM key (``openssl genpkey -algorithm ed25519``,
``signal-bridge keys``) or the raw 32-byte seed; it is read like the HMAC secret file (one
trailing newline dropped) and never shown. A public key travels as the base64 of its 32 raw
bytes; its fingerprint (first 8 hex digits of SHA-256 of those bytes) is its key id in
``Signature-Input`` and the name both teams compare. The primitives are ``cryptography``'s.
"""

from __future__ import annotations

import base64
import binascii
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from bridge.core.secrets import key_fingerprint, read_key_file, secret_file_bytes
from bridge.errors import ConfigError

__all__ = [
    "KEY_BYTES",
    "Ed25519PrivateKey",
    "Ed25519PublicKey",
    "generate_private_key",
    "parse_private_key",
    "parse_public_key",
    "private_key_pem",
    "public_key_b64",
    "public_key_fingerprint",
    "read_private_key",
    "verify_ed25519",
]

KEY_BYTES: Final = 32
SIGNATURE_BYTES: Final = 64


def parse_private_key(raw: bytes) -> Ed25519PrivateKey | None:
    """Read a PKCS#8 PEM Ed25519 private key or a raw 32-byte seed; None for anything else."""
    if len(raw) == KEY_BYTES and not raw.startswith(b"-----"):
        return Ed25519PrivateKey.from_private_bytes(raw)
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, Ed25519PrivateKey) else None


def read_private_key(variable: str, path: str) -> Ed25519PrivateKey:
    """Read the private key file ``path``; ConfigError naming ``variable`` (never the key)."""
    raw = read_key_file(variable, path)  # readable by group or others: used, with a WARNING
    key = parse_private_key(secret_file_bytes(raw)) or parse_private_key(raw)
    if key is None:
        raise ConfigError(
            f"{variable}: {path} is not an Ed25519 private key (an unencrypted PKCS#8 PEM key, "
            "or its raw 32 bytes)",
            variable=variable,
        )
    return key


def parse_public_key(text: str) -> Ed25519PublicKey | None:
    """Read a public key written as base64 of its 32 raw bytes; None for anything else."""
    try:
        raw = base64.b64decode(text.strip().encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    if len(raw) != KEY_BYTES:
        return None
    return Ed25519PublicKey.from_public_bytes(raw)


def _public_raw(key: Ed25519PrivateKey | Ed25519PublicKey) -> bytes:
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def public_key_b64(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Return the public key as base64 of its 32 raw bytes (what a server configures)."""
    return base64.b64encode(_public_raw(key)).decode("ascii")


def public_key_fingerprint(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """Return the first 8 hex digits of SHA-256 of the raw public key: its key id."""
    return key_fingerprint(_public_raw(key))


def generate_private_key() -> Ed25519PrivateKey:
    """Make a new private key from the operating system's random source."""
    return Ed25519PrivateKey.generate()


def private_key_pem(key: Ed25519PrivateKey) -> bytes:
    """Return the private key as unencrypted PKCS#8 PEM (what ``openssl genpkey`` writes)."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def verify_ed25519(key: Ed25519PublicKey, signature: bytes, message: bytes) -> bool:
    """Return whether ``signature`` is ``key``'s signature of ``message``; never raises."""
    if len(signature) != SIGNATURE_BYTES:
        return False
    try:
        key.verify(signature, message)
    except InvalidSignature:
        return False
    return True
