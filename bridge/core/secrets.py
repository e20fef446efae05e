"""Secrets and credentials in text: the Secret wrapper, URL redaction, secret files, fingerprints.

A secret never shows itself (repr, str, pickling); URLs lose their passwords and any query
parameter named like a credential before they are shown; a secret file loses exactly one trailing
newline; both sides of a signed exchange log the same fingerprint so operators can compare keys
without seeing them. A secret file readable by
group or others is read all the same, with one WARNING (as ssh and kubectl warn): the key may
have been seen by another account.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Final

from bridge.errors import ConfigError

__all__ = [
    "Secret",
    "key_fingerprint",
    "read_key_file",
    "read_secret_file",
    "redact_text",
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


# Query and fragment parameters whose value is a credential: the name contains one of these.
_SECRET_PARAM: Final = re.compile(
    r"pass|pwd|token|secret|key|auth|sig|credential|session|cookie", re.IGNORECASE
)
_USERINFO: Final = re.compile(r"\A([A-Za-z][A-Za-z0-9+.-]*:)?//([^/]*)@")
_PARAM: Final = re.compile(r"([?&;#]([^=&;#]*)=)([^&;#]*)")


def redact_url(url: str) -> str:
    """Replace a URL's credentials with ``***``, wherever a URL is shown.

    The password, a lone user token, and query or fragment parameters named like a credential
    (``password``, ``token``, ``api_key``, ``secret``, ``auth``...). It works on the text, so a
    URL that does not parse is redacted too; a ``#``, ``?`` or ``@`` inside an unencoded
    password is still taken as part of it (everything up to the last ``@`` before a ``/``).
    """

    def userinfo(found: re.Match[str]) -> str:
        user, colon, _password = found.group(2).partition(":")
        shown = f"{user}:***" if colon else "***"
        return f"{found.group(1) or ''}//{shown}@"

    def param(found: re.Match[str]) -> str:
        if _SECRET_PARAM.search(found.group(2)) and found.group(3):
            return f"{found.group(1)}***"
        return found.group(0)

    return _PARAM.sub(param, _USERINFO.sub(userinfo, url, count=1))


_USERINFO_IN_TEXT: Final = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)([^\s/@]*)@")
_PARAM_IN_TEXT: Final = re.compile(r"([?&;#]([^=&;#\s]*)=)([^&;#\s\"']*)")


def redact_text(text: str) -> str:
    """Redact every URL inside free text (a library's log message) as :func:`redact_url` does.

    Userinfo up to an ``@`` (no spaces or ``/`` in it) and credential-named parameters after
    ``?``, ``&``, ``;`` or ``#``; text without ``@`` or ``=`` is returned as is.
    """
    if "@" not in text and "=" not in text:
        return text

    def userinfo(found: re.Match[str]) -> str:
        user, colon, _password = found.group(2).partition(":")
        return f"{found.group(1)}{user}:***@" if colon else f"{found.group(1)}***@"

    def param(found: re.Match[str]) -> str:
        if _SECRET_PARAM.search(found.group(2)) and found.group(3):
            return f"{found.group(1)}***"
        return found.group(0)

    return _PARAM_IN_TEXT.sub(param, _USERINFO_IN_TEXT.sub(userinfo, text))


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


def read_key_file(variable: str, path: str) -> bytes:
    """Return the raw bytes of the key or secret file ``path``, never shown anywhere.

    ConfigError naming ``variable`` when it is unreadable; a file that group or others may read
    is used, with a WARNING (:func:`warn_if_exposed`).
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
    return raw


def read_secret_file(variable: str, path: str) -> Secret:
    """Read the secret file ``path`` (one trailing newline dropped); see :func:`read_key_file`."""
    return Secret(secret_file_bytes(read_key_file(variable, path)))
