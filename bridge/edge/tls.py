"""The TLS files of the HTTP edge, checked at start the way the client will load them.

A CA bundle, a client certificate and its key must be readable PEM, the key unencrypted and
matching the certificate; anything else is a ConfigError naming the variable, before any
connection is tried. A private key readable by group or others is used, with a WARNING.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from typing import Final

from bridge.core.secrets import warn_if_exposed
from bridge.errors import ConfigError

__all__ = ["check_tls_files"]

_PEM_CERT: Final = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY: Final = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _read_pem(variable: str, file: str, *, key: bool) -> bytes:
    """Read a PEM file; ConfigError when it is missing, unreadable or holds no PEM block."""
    if not Path(file).is_file():
        raise ConfigError(f"{variable}: no such file {file}", variable=variable)
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{variable}: cannot read {file}: {exc.strerror}", variable=variable
        ) from None
    if key:
        warn_if_exposed(variable, file, Path(file).stat().st_mode)
    if key and b"ENCRYPTED" in data:
        raise ConfigError(
            f"{variable}: {file} is an encrypted key; give an unencrypted one (mounted as a "
            "secret)",
            variable=variable,
        )
    found = _PEM_KEY.search(data) if key else _PEM_CERT in data
    if not found:
        kind = "private key" if key else "certificate"
        raise ConfigError(
            f"{variable}: {file} is not a PEM {kind} (no -----BEGIN ...{kind.upper()}----- block)",
            variable=variable,
        )
    return data


def check_tls_files(ca_bundle: str | None, client_cert: str | None, client_key: str | None) -> None:
    """Load the CA bundle and the client certificate and key as the client will, or refuse."""
    if ca_bundle is not None:
        _read_pem("OUTBOUND_CA_BUNDLE", ca_bundle, key=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system store: only these files
    if ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=ca_bundle)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"OUTBOUND_CA_BUNDLE: {ca_bundle} holds no usable certificate "
                f"({exc.reason or exc})",
                variable="OUTBOUND_CA_BUNDLE",
            ) from None
    if client_cert is None:
        return
    cert = _read_pem("OUTBOUND_CLIENT_CERT", client_cert, key=False)
    if client_key is not None:
        _read_pem("OUTBOUND_CLIENT_KEY", client_key, key=True)
    elif not _PEM_KEY.search(cert):
        raise ConfigError(
            f"OUTBOUND_CLIENT_CERT: {client_cert} holds no private key; set OUTBOUND_CLIENT_KEY",
            variable="OUTBOUND_CLIENT_CERT",
        )
    try:
        # password=b"": an encrypted key fails here instead of prompting on a terminal.
        context.load_cert_chain(client_cert, client_key, password=b"")
    except ssl.SSLError as exc:
        mismatch = "KEY_VALUES_MISMATCH" in str(exc)
        variable = "OUTBOUND_CLIENT_KEY" if mismatch or client_key else "OUTBOUND_CLIENT_CERT"
        what = (
            "does not match OUTBOUND_CLIENT_CERT"
            if mismatch
            else f"could not be loaded ({exc.reason or exc})"
        )
        file = client_key if variable == "OUTBOUND_CLIENT_KEY" else client_cert
        raise ConfigError(f"{variable}: {file} {what}", variable=variable) from None
