"""A secret file readable by group or others is used, with one WARNING naming it and its mode."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trustme

from bridge.config.loader import load_config
from bridge.devkit.ingest_keys import load_ingest_secrets
from bridge.edge.tls import check_tls_files

SECRET = b"file-secret-0123456789abcdef-xyz\n"


def _secret_file(tmp_path: Path, mode: int) -> Path:
    """Write the HMAC secret to a file with ``mode``."""
    path = tmp_path / "hmac_secret"
    path.write_bytes(SECRET)
    path.chmod(mode)
    return path


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The WARNING lines logged so far."""
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_group_or_world_readable_secret_file_warns_with_its_mode(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    """HMAC_PRODUCER_SECRET_FILE readable by group or others: loaded, and one WARNING says so."""
    path = _secret_file(tmp_path, mode)
    caplog.set_level(logging.WARNING)
    config = load_config(
        env={
            "HMAC_PRODUCER_SECRET_FILE": str(path),
            "OUTBOUND_SERVER_URL": "https://api.example.com",
        }
    )
    assert config.outbound.secret is not None
    assert config.outbound.secret.get() == SECRET.rstrip(b"\n")
    assert _warnings(caplog) == [
        f"HMAC_PRODUCER_SECRET_FILE: secret file {path} is readable by group or others (mode "
        f"{mode:04o}); make it 0400 or 0600, owned by the user the bridge runs as"
    ]


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_owner_only_secret_file_is_read_quietly(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, mode: int
) -> None:
    """A 0600 or 0400 secret file gives no warning (the ingest server's file too)."""
    path = _secret_file(tmp_path, mode)
    caplog.set_level(logging.WARNING)
    secrets = load_ingest_secrets({"INGEST_SECRET_FILE": str(path)})
    assert secrets == {"default": SECRET.rstrip(b"\n")}
    assert _warnings(caplog) == []


def test_world_readable_client_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """OUTBOUND_CLIENT_KEY at 0644 is used, with a WARNING naming the variable."""
    leaf = trustme.CA().issue_cert("client.example")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    caplog.set_level(logging.WARNING)
    key.chmod(0o600)
    check_tls_files(None, str(cert), str(key))
    assert _warnings(caplog) == []
    key.chmod(0o644)
    check_tls_files(None, str(cert), str(key))
    [warning] = _warnings(caplog)
    assert warning.startswith(f"OUTBOUND_CLIENT_KEY: secret file {key} is readable by group")


def test_group_readable_ed25519_key_warns(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """OUTBOUND_ED25519_KEY_FILE at 0640 is used, with a WARNING; at 0600 quietly."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415
        Ed25519PrivateKey,
    )

    from bridge.core.ed25519 import read_private_key  # noqa: PLC0415

    path = tmp_path / "ed25519.key"
    path.write_bytes(Ed25519PrivateKey.generate().private_bytes_raw())
    caplog.set_level(logging.WARNING)
    path.chmod(0o600)
    read_private_key("OUTBOUND_ED25519_KEY_FILE", str(path))
    assert _warnings(caplog) == []
    path.chmod(0o640)
    read_private_key("OUTBOUND_ED25519_KEY_FILE", str(path))
    [warning] = _warnings(caplog)
    assert warning.startswith(f"OUTBOUND_ED25519_KEY_FILE: secret file {path} is readable")
    assert "(mode 0640)" in warning
