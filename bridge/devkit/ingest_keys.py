"""The reference ingest server's keys (key id -> secret), read from its environment.

Only the ``ingest-server`` command reads these; the bridge itself has one secret, in its
outbound settings.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from bridge.core.ed25519 import Ed25519PublicKey, parse_public_key, public_key_fingerprint
from bridge.core.secrets import read_secret_file
from bridge.edge.settings import MIN_SECRET_BYTES
from bridge.errors import ConfigError

__all__ = ["load_ingest_public_keys", "load_ingest_secrets"]


def load_ingest_secrets(env: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Load the reference server's key id -> secret map.

    From ``INGEST_SECRETS`` (``id=secret,id2=secret2``), ``INGEST_SECRET_FILE`` (key id
    ``default``), or else ``HMAC_PRODUCER_SECRET`` / ``_FILE`` under ``HMAC_PRODUCER_KEY_ID``.
    """
    environ = os.environ if env is None else env
    secrets: dict[str, bytes] = {}
    for item in filter(
        None, (part.strip() for part in environ.get("INGEST_SECRETS", "").split(","))
    ):
        key_id, sep, secret = item.partition("=")
        if not sep or not key_id or not secret:
            raise ConfigError(
                "INGEST_SECRETS must be key_id=secret[,key_id=secret...]",
                variable="INGEST_SECRETS",
            )
        secrets[key_id] = secret.encode()
    if environ.get("INGEST_SECRET_FILE"):
        secrets["default"] = read_secret_file(
            "INGEST_SECRET_FILE", environ["INGEST_SECRET_FILE"]
        ).get()
    if not secrets:
        key_id = environ.get("HMAC_PRODUCER_KEY_ID") or "default"
        if environ.get("HMAC_PRODUCER_SECRET"):
            secrets[key_id] = environ["HMAC_PRODUCER_SECRET"].encode()
        elif environ.get("HMAC_PRODUCER_SECRET_FILE"):
            secrets[key_id] = read_secret_file(
                "HMAC_PRODUCER_SECRET_FILE", environ["HMAC_PRODUCER_SECRET_FILE"]
            ).get()
    if not secrets:
        raise ConfigError(
            "the ingest server needs INGEST_SECRETS, INGEST_SECRET_FILE or HMAC_PRODUCER_SECRET",
            variable="INGEST_SECRETS",
        )
    for name, value in secrets.items():
        if len(value) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"ingest secret {name!r} must be at least {MIN_SECRET_BYTES} bytes",
                variable="INGEST_SECRETS",
            )
    return secrets


def load_ingest_public_keys(env: Mapping[str, str] | None = None) -> dict[str, Ed25519PublicKey]:
    """Load the Ed25519 public keys, by key id (fingerprint), from ``INGEST_ED25519_PUBLIC_KEYS``.

    The value lists base64 public keys (what ``signal-bridge keys`` and ``check`` print),
    comma-separated; none is fine (the HMAC secrets still verify).
    """
    environ = os.environ if env is None else env
    keys: dict[str, Ed25519PublicKey] = {}
    for item in filter(
        None, (part.strip() for part in environ.get("INGEST_ED25519_PUBLIC_KEYS", "").split(","))
    ):
        key = parse_public_key(item)
        if key is None:
            raise ConfigError(
                "INGEST_ED25519_PUBLIC_KEYS must list base64 Ed25519 public keys (32 bytes each)",
                variable="INGEST_ED25519_PUBLIC_KEYS",
            )
        keys[public_key_fingerprint(key)] = key
    return keys
