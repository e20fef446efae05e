"""The compose stack's hardening, checked without a Docker engine.

Keys readable only by the user that needs them (the one-shot scripts are run here for real, as
root, into temporary directories), Redis with a password from a secret that the bridges read
from a file, host ports on loopback only, and uv pinned in the image.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509

ROOT = Path(__file__).resolve().parents[2]
SERVICE_UID = 10001


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """The compose file's services (anchors and merge keys resolved by PyYAML)."""
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    found: dict[str, dict[str, Any]] = data["services"]
    return found


def _needs_root() -> None:
    """Skip unless running as root (the scripts chown to the image's user, as in compose)."""
    if os.geteuid() != 0:
        pytest.skip("the one-shot scripts chown files: run as root (as the compose services do)")


def _mode(path: Path) -> tuple[int, int]:
    """Return (permission bits, owner uid) of ``path``."""
    info = path.stat()
    return stat.S_IMODE(info.st_mode), info.st_uid


def test_make_certs_gives_the_key_to_the_ingest_user_alone(tmp_path: Path) -> None:
    """make-certs.py: the TLS key 0600 owned by 10001 beside its cert; the CA dir has no key."""
    _needs_root()
    ca_dir, tls_dir = tmp_path / "ca", tmp_path / "tls"
    ca_dir.mkdir()
    tls_dir.mkdir()
    script = ROOT / "config" / "make-certs.py"
    for _ in range(2):  # the second run (an existing volume) keeps the files and their modes
        result = subprocess.run(  # noqa: S603 - our own script
            [sys.executable, str(script), str(ca_dir), str(tls_dir)],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in ca_dir.iterdir()) == ["ca.pem"]
    assert sorted(p.name for p in tls_dir.iterdir()) == ["ingest-key.pem", "ingest.pem"]
    assert _mode(tls_dir / "ingest-key.pem") == (0o600, SERVICE_UID)
    assert _mode(tls_dir / "ingest.pem") == (0o644, 0)
    assert _mode(ca_dir / "ca.pem") == (0o644, 0)
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    cert = x509.load_pem_x509_certificate((tls_dir / "ingest.pem").read_bytes())
    cert.verify_directly_issued_by(ca)  # raises unless the CA signed it
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["ingest", "localhost"]


def test_install_secrets_copies_each_secret_0400_for_the_service_user(tmp_path: Path) -> None:
    """install-secrets.sh: hmac_secret and redis_password copied 0400, owned by 10001."""
    _needs_root()
    source, out = tmp_path / "run-secrets", tmp_path / "out"
    source.mkdir()
    out.mkdir()
    for name in ("hmac_secret", "redis_password"):
        (source / name).write_text(f"{name}-value")
        (source / name).chmod(0o644)
    script = ROOT / "config" / "install-secrets.sh"
    result = subprocess.run(  # noqa: S603 - our own script
        ["/bin/sh", str(script), str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("hmac_secret", "redis_password"):
        assert _mode(out / name) == (0o400, SERVICE_UID)
        assert (out / name).read_text() == f"{name}-value"
    (source / "redis_password").write_text("")
    empty = subprocess.run(  # noqa: S603 - our own script
        ["/bin/sh", str(script), str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert empty.returncode == 1
    assert "redis_password is missing or empty" in empty.stderr


def test_only_the_ingest_server_mounts_its_private_key(services: dict[str, dict[str, Any]]) -> None:
    """The ingest-tls volume is mounted by the ingest server (and the certs job) alone."""
    mounting = {
        name
        for name, svc in services.items()
        for mount in svc.get("volumes", [])
        if mount.split(":", 1)[0] == "ingest-tls"
    }
    assert mounting == {"ingest", "certs"}
    for name in ("bridge-1", "bridge-2"):
        assert "ca:/ca:ro" in services[name]["volumes"]
        assert services[name]["environment"]["OUTBOUND_CA_BUNDLE"] == "/ca/ca.pem"


def test_redis_requires_the_password_every_client_reads_from_a_file(
    services: dict[str, dict[str, Any]],
) -> None:
    """Redis takes its password from the secret; bridges and publisher read it from a file."""
    redis = services["redis"]
    assert redis["entrypoint"] == ["sh", "/redis-start.sh"]
    assert redis["secrets"] == ["redis_password"]
    assert "REDISCLI_AUTH" in " ".join(redis["healthcheck"]["test"])
    start = (ROOT / "config" / "redis-start.sh").read_text()
    assert "/run/secrets/redis_password" in start
    assert "--aclfile" in start
    assert "requirepass" not in start  # never on a command line
    for name in ("bridge-1", "bridge-2", "publisher"):
        env = services[name]["environment"]
        assert env["BRIDGE_REDIS_PASSWORD_FILE"] == "/run/secrets/redis_password", name
        assert "@" not in env["BRIDGE_REDIS_URL"], name
        assert "bridge-secrets:/run/secrets:ro" in services[name]["volumes"], name
        assert "secrets" not in services[name], f"{name} must not bind-mount host secrets"


def test_published_ports_listen_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    """Every published port is bound to 127.0.0.1 (Jaeger and Prometheus are not for the LAN)."""
    published = [str(port) for svc in services.values() for port in svc.get("ports", [])]
    assert published
    for port in published:
        assert port.startswith("127.0.0.1:"), port


def test_the_image_pins_uv() -> None:
    """The build installs an exact uv version, so a new uv release cannot change the image."""
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^RUN pip install uv==\d+\.\d+\.\d+$", text, flags=re.M), text
