"""The reference ingest server's keys: the list variable, the key file, the producer fallback."""

from pathlib import Path
from typing import Final

import pytest

from bridge.devkit.ingest_keys import load_ingest_secrets
from bridge.errors import ConfigError

SECRET_TEXT: Final = "config-test-secret-0123456789"


def test_ingest_secrets_from_the_list_variable() -> None:
    """INGEST_SECRETS maps key ids to secrets; a secret may itself contain '=' (base64)."""
    env = {"INGEST_SECRETS": " k1=first-secret-0123456789 , k2=c2Vjb25kLXNlY3JldC0wMTIzNDU2Nzg5==,"}
    assert load_ingest_secrets(env) == {
        "k1": b"first-secret-0123456789",
        "k2": b"c2Vjb25kLXNlY3JldC0wMTIzNDU2Nzg5==",
    }


@pytest.mark.parametrize("value", ["no-equals-sign", "=secret-without-id-000", "k1="])
def test_malformed_ingest_secrets_name_the_variable(value: str) -> None:
    """Items without a key id or a secret are an error naming INGEST_SECRETS."""
    with pytest.raises(ConfigError, match="INGEST_SECRETS") as info:
        load_ingest_secrets({"INGEST_SECRETS": value})
    assert info.value.variable == "INGEST_SECRETS"
    assert "secret-without-id-000" not in str(info.value)


def test_ingest_secret_file_is_the_default_key(tmp_path: Path) -> None:
    """INGEST_SECRET_FILE adds its secret (without the newline) under the key id 'default'."""
    secret_file = tmp_path / "ingest-secret"
    secret_file.write_bytes(b"file-ingest-secret-0123456789\r\n")
    env = {"INGEST_SECRET_FILE": str(secret_file), "INGEST_SECRETS": "k1=listed-secret-0123456789"}
    assert load_ingest_secrets(env) == {
        "k1": b"listed-secret-0123456789",
        "default": b"file-ingest-secret-0123456789",
    }


def test_ingest_secrets_fall_back_to_the_producer_secret(tmp_path: Path) -> None:
    """Without INGEST_* the producer's secret (or secret file) is used under its key id."""
    assert load_ingest_secrets({"HMAC_PRODUCER_SECRET": SECRET_TEXT}) == {
        "default": SECRET_TEXT.encode()
    }
    assert load_ingest_secrets(
        {"HMAC_PRODUCER_SECRET": SECRET_TEXT, "HMAC_PRODUCER_KEY_ID": "2026-01"}
    ) == {"2026-01": SECRET_TEXT.encode()}
    secret_file = tmp_path / "secret"
    secret_file.write_bytes(b"producer-file-secret-0123\n")
    assert load_ingest_secrets({"HMAC_PRODUCER_SECRET_FILE": str(secret_file)}) == {
        "default": b"producer-file-secret-0123"
    }


def test_ingest_secrets_are_required_and_long_enough() -> None:
    """No secret at all, or one under 16 bytes, is an error naming INGEST_SECRETS only."""
    with pytest.raises(ConfigError, match="needs INGEST_SECRETS"):
        load_ingest_secrets({})
    with pytest.raises(ConfigError, match="'k1' must be at least 16 bytes") as info:
        load_ingest_secrets({"INGEST_SECRETS": "k1=tiny-secret"})
    assert "tiny-secret" not in str(info.value)
