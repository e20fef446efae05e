"""The reference ingest server's keys (key id -> secret, and the producers each may sign for).

Only the ``ingest-server`` command reads these; the bridge itself has one secret, in its
outbound settings. ``INGEST_SECRETS`` items are ``key_id=secret`` or, bound to producer ids,
``key_id@producer[:producer...]=secret``: the binding sits before the first ``=``, where secret
text (base64 or not) never is, and ``@`` and ``:`` are not base64 characters.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from bridge.core.ed25519 import Ed25519PublicKey, parse_public_key, public_key_fingerprint
from bridge.core.secrets import read_secret_file
from bridge.edge.settings import MIN_SECRET_BYTES
from bridge.errors import ConfigError

__all__ = [
    "IngestKeys",
    "load_ingest_keys",
    "load_ingest_public_keys",
    "load_ingest_secrets",
    "load_required_version",
]

_SPELLING = "INGEST_SECRETS must be key_id[@producer[:producer...]]=secret[,...]"


@dataclass(frozen=True)
class IngestKeys:
    """Key id -> secret, and key id -> the producer ids it may sign for (absent: any)."""

    secrets: dict[str, bytes] = field(repr=False)
    producers: dict[str, frozenset[str]] = field(default_factory=dict)


def load_ingest_keys(env: Mapping[str, str] | None = None) -> IngestKeys:
    """Load the reference server's keys and their producer bindings.

    From ``INGEST_SECRETS`` (``id=secret,id2@producer-a:producer-b=secret2``),
    ``INGEST_SECRET_FILE`` (key id ``default``), or else ``HMAC_PRODUCER_SECRET`` / ``_FILE``
    under ``HMAC_PRODUCER_KEY_ID``; only ``INGEST_SECRETS`` can bind a key to producers.
    """
    environ = os.environ if env is None else env
    secrets: dict[str, bytes] = {}
    producers: dict[str, frozenset[str]] = {}
    for item in filter(
        None, (part.strip() for part in environ.get("INGEST_SECRETS", "").split(","))
    ):
        head, sep, secret = item.partition("=")
        key_id, at, bound = head.partition("@")
        names = bound.split(":") if at else []
        if not sep or not key_id or not secret or not all(map(_is_producer_id, names)):
            raise ConfigError(_SPELLING, variable="INGEST_SECRETS")
        secrets[key_id] = secret.encode()
        if at:
            producers[key_id] = frozenset(names)
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
    return IngestKeys(secrets=secrets, producers=producers)


def load_ingest_secrets(env: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Load the reference server's key id -> secret map (see :func:`load_ingest_keys`)."""
    return load_ingest_keys(env).secrets


def load_required_version(env: Mapping[str, str] | None = None) -> int | None:
    """Read ``INGEST_REQUIRE_SIGNATURE_VERSION``: 2 refuses v1 signatures; unset takes both."""
    raw = (os.environ if env is None else env).get("INGEST_REQUIRE_SIGNATURE_VERSION", "")
    if not raw:
        return None
    if raw != "2":
        raise ConfigError(
            f"INGEST_REQUIRE_SIGNATURE_VERSION must be 2 (or unset to accept 1 and 2), got {raw!r}",
            variable="INGEST_REQUIRE_SIGNATURE_VERSION",
        )
    return 2


def _is_producer_id(name: str) -> bool:
    """Whether ``name`` can be an X-Producer-Id (non-empty printable ASCII, no space)."""
    return bool(name) and name.isascii() and name.isprintable() and " " not in name


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
