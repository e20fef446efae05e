"""Settings are used exactly as written, wherever they come from; secret files have one rule."""

import hashlib
import logging
from pathlib import Path
from typing import Final

import pytest

from bridge.config.loader import load_config
from bridge.core.secrets import key_fingerprint, secret_file_bytes
from bridge.devkit.ingest import IngestApp
from bridge.devkit.ingest_keys import load_ingest_secrets
from bridge.edge.client import HmacClient
from bridge.errors import ConfigError
from tests.fixtures_ingest import outbound_env

KEY: Final = b"file-secret-0123456789abcdef"
URL: Final = "http://127.0.0.1:9"


def _env(**extra: str) -> dict[str, str]:
    """A valid environment with some variables set."""
    return outbound_env(URL, extra)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PRODUCER_ID", " padded "),
        ("PRODUCER_ID", "padded\t"),
        ("HMAC_PRODUCER_KEY_ID", " k1"),
        ("BRIDGE_STREAM", "signals "),
        ("OUTBOUND_SERVER_URL", f" {URL}"),
    ],
)
def test_padded_text_in_the_environment_is_refused_naming_it(variable: str, value: str) -> None:
    """Environment values are no longer trimmed: edge whitespace stops the start."""
    with pytest.raises(ConfigError, match="leading or trailing whitespace") as info:
        load_config(env=_env(**{variable: value}))
    assert info.value.variable == variable


@pytest.mark.parametrize(
    ("section", "key", "variable"),
    [
        ("outbound", "producer_id", "PRODUCER_ID"),
        ("outbound", "key_id", "HMAC_PRODUCER_KEY_ID"),
        ("stream", "group", "BRIDGE_GROUP"),
    ],
)
def test_padded_text_in_the_file_is_refused_the_same_way(
    tmp_path: Path, section: str, key: str, variable: str
) -> None:
    """A padded producer_id in bridge.toml is refused (it used to be signed and 401ed forever)."""
    path = tmp_path / "bridge.toml"
    path.write_text(f'[{section}]\n{key} = " padded "\n')
    env = _env()
    env.pop(variable, None)
    with pytest.raises(ConfigError, match=variable) as info:
        load_config(path, env=env)
    assert info.value.variable == variable


def test_blank_variables_still_mean_unset_and_clean_values_load() -> None:
    """An empty optional variable is unset; exact values load unchanged.

    (Names such as BRIDGE_STREAM are the exception: set but empty is refused.)
    """
    config = load_config(env=_env(PRODUCER_ID="mt5 desk 1", OUTBOUND_CA_BUNDLE=""))
    assert config.outbound.producer_id == "mt5 desk 1"
    assert config.outbound.ca_bundle is None


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        (KEY, KEY),
        (KEY + b"\n", KEY),
        (KEY + b"\r\n", KEY),
        (KEY + b"\n\n", KEY + b"\n"),
        (KEY + b" \n", KEY + b" "),
        (KEY + b"\r", KEY + b"\r"),
    ],
    ids=["bare", "lf", "crlf", "two-lf", "space-lf", "lone-cr"],
)
def test_secret_files_lose_exactly_one_trailing_newline(
    tmp_path: Path, raw: bytes, key: bytes
) -> None:
    """One trailing LF or CRLF is dropped; every other byte, whitespace included, is the key."""
    assert secret_file_bytes(raw) == key
    path = tmp_path / "secret"
    path.write_bytes(raw)
    env = _env(HMAC_PRODUCER_SECRET_FILE=str(path))
    del env["HMAC_PRODUCER_SECRET"]
    assert load_config(env=env).outbound.secret_bytes() == key
    assert load_ingest_secrets({"INGEST_SECRET_FILE": str(path)}) == {"default": key}


async def test_both_sides_log_the_same_key_fingerprint(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The bridge and the reference server log sha256(key)[:8] for a shared file, never the key."""
    caplog.set_level(logging.INFO)
    path = tmp_path / "secret"
    path.write_bytes(KEY + b"\n")
    env = _env(HMAC_PRODUCER_SECRET_FILE=str(path), HMAC_PRODUCER_KEY_ID="k1")
    del env["HMAC_PRODUCER_SECRET"]
    async with HmacClient(load_config(env=env).outbound):
        pass
    IngestApp(secrets=load_ingest_secrets({"INGEST_SECRETS": "", "INGEST_SECRET_FILE": str(path)}))
    expected = hashlib.sha256(KEY).hexdigest()[:8]
    assert key_fingerprint(KEY) == expected
    lines = {r.getMessage(): r for r in caplog.records if "key loaded" in r.getMessage()}
    fingerprints = {
        message: record.__dict__["fields"]["key_fingerprint"] for message, record in lines.items()
    }
    assert fingerprints == {"signing key loaded": expected, "ingest key loaded": expected}
    assert all(r.levelno == logging.INFO for r in lines.values())
    assert KEY.decode() not in caplog.text


@pytest.mark.parametrize(
    ("variable", "value", "words"),
    [
        ("BRIDGE_PROBE_INTERVAL_MS", "0", "positive"),
        ("BRIDGE_BACKOFF_BASE_MS", "-1", "positive"),
        ("BRIDGE_BREAKER_THRESHOLD", "0", "positive"),
        ("BRIDGE_RETRY_AFTER_CAP_SECONDS", "0", "positive"),
        ("BRIDGE_BACKOFF_CAP_MS", "100", "at least BRIDGE_BACKOFF_BASE_MS"),
    ],
)
def test_recovery_settings_are_validated(variable: str, value: str, words: str) -> None:
    """Probe interval, backoff and breaker settings are checked at load, naming the variable."""
    with pytest.raises(ConfigError, match=words) as info:
        load_config(env=_env(**{variable: value}))
    assert info.value.variable == variable


def test_recovery_settings_load() -> None:
    """The recovery settings reach the stream config."""
    stream = load_config(
        env=_env(
            BRIDGE_PROBE_INTERVAL_MS="250",
            BRIDGE_BACKOFF_BASE_MS="100",
            BRIDGE_BACKOFF_CAP_MS="5000",
            BRIDGE_BREAKER_THRESHOLD="3",
            BRIDGE_RETRY_AFTER_CAP_SECONDS="20",
        )
    ).stream
    assert (
        stream.probe_interval_ms,
        stream.backoff_base_ms,
        stream.backoff_cap_ms,
        stream.breaker_threshold,
        stream.retry_after_cap_s,
    ) == (250, 100, 5000, 3, 20.0)
