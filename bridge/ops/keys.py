"""``signal-bridge keys``: make an Ed25519 key pair for the standard-webhooks and rfc9421 schemes.

The private key goes to a new file readable by its owner only (0600, PKCS#8 PEM, what
``OUTBOUND_ED25519_KEY_FILE`` reads); the public key (base64 of its 32 bytes) to ``<file>.pub``
and to stdout with its fingerprint, for the server team's ``INGEST_ED25519_PUBLIC_KEYS`` or
their verifier. An existing file is never overwritten.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from bridge.core.ed25519 import (
    generate_private_key,
    private_key_pem,
    public_key_b64,
    public_key_fingerprint,
)
from bridge.errors import UsageError

__all__ = ["run_keys"]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` with ``mode`` and write ``data``; UsageError when it exists or fails."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise UsageError(f"{path} exists; not overwriting a key") from None
    except OSError as exc:
        raise UsageError(f"cannot create {path}: {exc.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


def run_keys(private_key_file: str, out: Callable[[str], None] = print) -> int:
    """Generate a pair into ``private_key_file`` (0600) and ``<file>.pub``; print the public key."""
    private_path = Path(private_key_file)
    public_path = private_path.with_name(private_path.name + ".pub")
    if public_path.exists():
        raise UsageError(f"{public_path} exists; not overwriting a key")
    key = generate_private_key()
    public = public_key_b64(key)
    _write_new(private_path, private_key_pem(key), 0o600)
    _write_new(public_path, (public + "\n").encode("ascii"), 0o644)
    out(f"private key  {private_path} (0600): set OUTBOUND_ED25519_KEY_FILE={private_path}")
    out(f"public key   {public} (fingerprint {public_key_fingerprint(key)}), also in {public_path}")
    out(f"server       INGEST_ED25519_PUBLIC_KEYS={public}")
    return 0
