"""Make a private CA and a server certificate for the compose network's "ingest" host.

Runs once in the compose "certs" service, as root, with no network (the image's own Python and
its `cryptography`: nothing to download). The CA certificate goes to argv[1] (mounted read-only
into the bridges, which trust only it: OUTBOUND_CA_BUNDLE); the server certificate and its
private key go to argv[2], mounted only into the ingest server. The key is 0600 and owned by the
image's user 10001, the one user that needs it; the CA's own key is never written.
"""

from __future__ import annotations

import datetime
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVICE_UID = 10001
DAYS = 825


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` created with ``mode`` (never wider, whatever the umask)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def make(ca_dir: Path, tls_dir: Path) -> None:
    """Write ca.pem to ``ca_dir`` and ingest.pem + ingest-key.pem to ``tls_dir``."""
    now = datetime.datetime.now(datetime.UTC)
    until = now + datetime.timedelta(days=DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(_name("signal-bridge compose CA"))
        .issuer_name(_name("signal-bridge compose CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("ingest"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(until)
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("ingest"), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _write(tls_dir / "ingest-key.pem", key_pem, 0o600)
    _write(tls_dir / "ingest.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
    _write(ca_dir / "ca.pem", ca.public_bytes(serialization.Encoding.PEM), 0o644)


def main(argv: list[str]) -> int:
    """Make the files unless both exist; then (every start) set their owners and modes."""
    ca_dir = Path(argv[1] if len(argv) > 1 else "/ca")
    tls_dir = Path(argv[2] if len(argv) > 2 else "/ingest-tls")
    if not (tls_dir / "ingest.pem").is_file() or not (ca_dir / "ca.pem").is_file():
        make(ca_dir, tls_dir)
    # Applied on every start, so a volume made by an older version is fixed too.
    for path in (ca_dir / "ca.pem", tls_dir / "ingest.pem"):
        os.chown(path, 0, 0)
        path.chmod(0o644)
    os.chown(tls_dir / "ingest-key.pem", SERVICE_UID, SERVICE_UID)
    (tls_dir / "ingest-key.pem").chmod(0o600)
    for stray in (ca_dir / "ca-key.pem", ca_dir / "ingest-key.pem"):
        stray.unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
