"""Secrets and credentials in text: the Secret wrapper, URL redaction, secret files, fingerprints.

A secret never shows itself (repr, str, pickling); URLs lose their passwords before they are
logged; a secret file loses exactly one trailing newline; both sides of a signed exchange log the
same fingerprint so operators can compare keys without seeing them. A secret file readable by
group or others is read all the same, with one WARNING (as ssh and kubectl warn): the key may
have been seen by another account.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from pathlib import Path
from typing import Any
from urllib.parse import SplitResult, urlsplit, urlunsplit

from bridge.errors import ConfigError

__all__ = [
    "Secret",
    "key_fingerprint",
    "read_secret_file",
    "redact_url",
    "secret_file_bytes",
    "warn_if_exposed",
]

log = logging.getLogger("bridge.config")


class Secret:
    """A secret value that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def get(self) -> bytes:
        """Return the secret bytes; call only where they are used, never to log."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:  # noqa: ANN401 - pickling protocol
        raise TypeError("Secret cannot be pickled")


def key_fingerprint(secret: bytes) -> str:
    """Return the first 8 hex digits of SHA-256 of the key: logged to compare, never the key."""
    return hashlib.sha256(secret).hexdigest()[:8]


def redact_url(url: str) -> str:
    """Replace the password (and a lone user token) in a URL with ``***``."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    userinfo = f"{user}:***" if parts.password is not None else "***"
    return urlunsplit(SplitResult(parts.scheme, f"{userinfo}@{host}", *parts[2:]))


def secret_file_bytes(raw: bytes) -> bytes:
    r"""Apply the one rule for secret files: exactly one trailing ``\n`` or ``\r\n`` is dropped.

    That is what ``echo secret > file``, ``kubectl create secret --from-file`` of such a file
    and most editors leave; every other byte is part of the key.
    """
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


def warn_if_exposed(variable: str, path: str, mode: int) -> bool:
    """Log a WARNING when a secret file's ``mode`` lets group or others read it; say whether."""
    if not mode & (stat.S_IRGRP | stat.S_IROTH):
        return False
    log.warning(
        f"{variable}: secret file {path} is readable by group or others (mode "
        f"{stat.S_IMODE(mode):04o}); make it 0400 or 0600, owned by the user the bridge runs as",
        extra={"fields": {"variable": variable, "path": path, "mode": f"{stat.S_IMODE(mode):04o}"}},
    )
    return True


def read_secret_file(variable: str, path: str) -> Secret:
    """Read the secret file ``path``; ConfigError naming ``variable`` when it is unreadable.

    A file that group or others may read is used, with a WARNING (:func:`warn_if_exposed`).
    """
    try:
        with Path(path).open("rb") as file:
            mode = os.fstat(file.fileno()).st_mode
            raw = file.read()
    except OSError as exc:
        raise ConfigError(
            f"{variable}: cannot read {path}: {exc.strerror}", variable=variable
        ) from None
    warn_if_exposed(variable, path, mode)
    return Secret(secret_file_bytes(raw))
