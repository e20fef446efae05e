"""``signal-bridge keys`` and what ``check`` prints of the Ed25519 keys."""

import stat
from pathlib import Path

import pytest

from bridge.config.loader import load_config
from bridge.core.ed25519 import parse_public_key, public_key_b64, public_key_fingerprint
from bridge.ops.check import run_check
from bridge.ops.cli import main
from tests.fixtures_ingest import Server, outbound_env


def test_keys_writes_a_private_file_only_its_owner_reads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The private key is 0600 PEM; the public key is in FILE.pub and on stdout, fingerprinted."""
    private = tmp_path / "bridge.pem"
    assert main(["keys", str(private)]) == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    public_text = (tmp_path / "bridge.pem.pub").read_text().strip()
    public = parse_public_key(public_text)
    assert public is not None
    printed = capsys.readouterr().out
    assert public_text in printed
    assert public_key_fingerprint(public) in printed
    assert "PRIVATE KEY" not in printed


def test_keys_never_overwrites_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A second run on the same file exits 2 and leaves the first key as it was."""
    private = tmp_path / "bridge.pem"
    assert main(["keys", str(private)]) == 0
    before = private.read_bytes()
    assert main(["keys", str(private)]) == 2
    assert "exists" in capsys.readouterr().err
    assert private.read_bytes() == before


@pytest.mark.redis
async def test_check_prints_each_public_key_and_never_the_private_one(
    tmp_path: Path, redis_url: str, server: Server, capsys: pytest.CaptureFixture[str]
) -> None:
    """`check` prints the scheme and each key's public half (base64, fingerprint), not the key."""
    current, upcoming = tmp_path / "current.pem", tmp_path / "next.pem"
    assert main(["keys", str(current)]) == 0
    assert main(["keys", str(upcoming)]) == 0
    capsys.readouterr()
    env = outbound_env(
        server.url,
        {
            "BRIDGE_REDIS_URL": redis_url,
            "OUTBOUND_SIGNATURE_SCHEME": "rfc9421",
            "OUTBOUND_ED25519_KEY_FILE": str(current),
            "OUTBOUND_ED25519_NEXT_KEY_FILE": str(upcoming),
        },
    )
    config = load_config(env=env)
    lines: list[str] = []
    assert await run_check(config, out=lines.append) == 0
    keys = config.outbound.ed25519_keys()
    assert "scheme    rfc9421" in lines
    for key in keys:
        fingerprint = public_key_fingerprint(key)
        assert f"ed25519   public key {public_key_b64(key)} (fingerprint {fingerprint})" in lines
    text = "\n".join(lines)
    for path in (current, upcoming):
        body = path.read_text().splitlines()[1]
        assert body not in text
