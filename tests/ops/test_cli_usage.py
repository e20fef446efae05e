"""The command line's manners: options anywhere, exit codes, one-line errors, closed pipes."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis as sync_redis

import bridge.ops.cli
from bridge import __version__
from bridge.devkit.ingest import IngestApp
from bridge.ops.cli import main
from tests.edge.test_tls import Pki, pki, serve_tls
from tests.support import KEY_ID, SECRET, bridge_env

__all__ = ["pki"]  # the TLS module's certificate fixture, used here too

ROOT = Path(__file__).resolve().parents[2]
_SETTING_PREFIXES = ("BRIDGE_", "HMAC_", "OUTBOUND_", "OTEL_", "INGEST_", "PRODUCER_ID")


@pytest.fixture(autouse=True)
def clean_cli_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No settings from the developer's shell; the root logger restored after main() set it."""
    for name in list(os.environ):
        if name.startswith(_SETTING_PREFIXES):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        yield
    finally:
        for handler in list(root.handlers):
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


_FLAGS = ["--instrument", "XAUUSD", "--side", "buy", "--risk-percent", "1"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ([*_FLAGS, "--entry-price", "0"], "--entry-price: entry_price must be a finite number > 0"),
        ([*_FLAGS, "--entry-price", "2000", "--timestamp", "notatime"], "--timestamp: 'notatime'"),
        ([*_FLAGS, "--entry-price", "2000", "--timestamp", "2026-11-28T10:00"], "UTC offset"),
        ([*_FLAGS, "--entry-price", "2000", "--take-profit", "1990"], "--take-profit: "),
        ([*_FLAGS, "--entry-price", "2000", "--risk-percent", "250"], "--risk-percent: "),
        (["--instrument", "XAUUSD", "--side", "buy"], "needs --entry-price, --risk-percent"),
        (["--file", "/nonexistent/signals.json"], "--file /nonexistent/signals.json: cannot read"),
        (["--sample", "0"], "--sample must be at least 1"),
    ],
)
def test_each_publish_error_names_the_wrong_value(
    args: list[str], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad publish value exits 2 with one line naming the option, never a traceback."""
    assert main(["publish", *args]) == 2
    err = capsys.readouterr().err
    assert expected in err
    assert err.count("\n") == 1
    assert "Traceback" not in err


def test_publish_file_errors_name_the_file_and_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bad line in a JSON-lines file and an empty file are refused with exit 2, saying where."""
    good = (
        '{"instrument":"X","side":"buy","entry_price":5,"risk_percent":1,'
        '"strategy_name":"s","timestamp":"2026-11-28T10:00:00Z"}'
    )
    lines = tmp_path / "signals.jsonl"
    lines.write_text(f"{good}\n{good.replace('buy', 'hold')}\n")
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    assert main(["publish", "--file", str(lines)]) == 2
    assert f"--file {lines} line 2: " in capsys.readouterr().err
    assert main(["publish", "--file", str(empty)]) == 2
    assert "no signals (the input is empty)" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('[{"instrument": ')
    assert main(["publish", "--file", str(broken)]) == 2
    assert f"--file {broken}: not valid JSON" in capsys.readouterr().err
    pretty = tmp_path / "pretty.json"
    pretty.write_text(good.replace(",", ",\n  ").replace('"risk_percent":1', '"risk_percent":0'))
    assert main(["publish", "--file", str(pretty)]) == 2
    assert f"--file {pretty}: invalid signal: " in capsys.readouterr().err
    (tmp_path / "list.json").write_text("[]")
    assert main(["publish", "--file", str(tmp_path / "list.json")]) == 2
    assert "no signals (the list is empty)" in capsys.readouterr().err


def test_empty_stdin_is_an_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`publish --file -` with nothing on stdin exits 2 instead of publishing nothing."""
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"")))
    assert main(["publish", "--file", "-"]) == 2
    assert "stdin: no signals" in capsys.readouterr().err


def test_version_and_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """--version prints the package version and exits 0; an unknown option exits 2."""
    with pytest.raises(SystemExit) as version:
        main(["--version"])
    assert version.value.code == 0
    assert capsys.readouterr().out.strip() == f"signal-bridge {__version__}"
    with pytest.raises(SystemExit) as usage:
        main(["status", "--no-such-option"])
    assert usage.value.code == 2
    assert "exit codes:" in bridge.ops.cli._parser().format_help()


def test_interrupt_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C during a command ends with exit code 130 and no traceback."""

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(bridge.ops.cli, "_dispatch", interrupted)
    assert main(["status"]) == 130


@pytest.mark.redis
def test_config_option_before_or_after_the_command(
    redis_url: str, stream_name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--config f status` and `status --config f` both read the file; the later one wins."""
    config = tmp_path / "bridge.toml"
    config.write_text(f'[stream]\nredis_url = "{redis_url}"\nstream = "{stream_name}"\n')
    other = tmp_path / "other.toml"
    other.write_text(f'[stream]\nredis_url = "{redis_url}"\nstream = "{stream_name}:other"\n')
    assert main(["--config", str(config), "status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["stream"] == stream_name
    assert main(["status", "--json", "--config", str(config)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["stream"] == stream_name
    assert main(["--config", str(config), "status", "--json", "--config", str(other)]) == 0
    assert json.loads(capsys.readouterr().out)[0]["stream"] == f"{stream_name}:other"
    assert main(["dlq", "list", "--json", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "config file not found" in capsys.readouterr().err


@pytest.mark.redis
def test_sample_ids_are_new_on_every_run(
    redis_url: str, stream_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `publish --sample 3` runs write six distinct signal_ids (no 409s on the second run)."""
    monkeypatch.setenv("BRIDGE_REDIS_URL", redis_url)
    monkeypatch.setenv("BRIDGE_STREAM", stream_name)
    assert main(["publish", "--sample", "3"]) == 0
    assert main(["publish", "--sample", "3"]) == 0
    client = sync_redis.Redis.from_url(redis_url)
    try:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = client.xrange(stream_name)  # type: ignore[assignment]
    finally:
        client.close()
    ids = [json.loads(fields[b"signal"])["signal_id"] for _, fields in entries]
    assert len(ids) == 6
    assert len(set(ids)) == 6


@pytest.mark.redis
def test_closed_pipe_ends_quietly(redis_url: str, stream_name: str) -> None:
    """`status | head` with the reader gone: no BrokenPipe traceback, exit 1."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    env.update(BRIDGE_REDIS_URL=redis_url, BRIDGE_STREAM=stream_name)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before the command writes a byte
    try:
        result = subprocess.run(
            [sys.executable, "-m", "bridge", "status"],
            env=env,
            cwd=ROOT,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr, result.stderr
    assert "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 1


# --- signal-bridge check ------------------------------------------------------------------------


def _check_env(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, server_url: str, **extra: str
) -> None:
    """Settings for `check`: the test Redis, the given server, the test secret."""
    for name, value in bridge_env(server_url, redis_url, "check-stream", **extra).items():
        monkeypatch.setenv(name, value)


@pytest.mark.redis
def test_check_passes_over_tls_and_hides_the_secrets(
    redis_url: str,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """All parts reachable: exit 0, the secret's fingerprint, the settings with secrets hidden."""
    with serve_tls(
        IngestApp(secrets={KEY_ID: SECRET.encode()}), pki.server_cert, pki.server_key
    ) as url:
        _check_env(
            monkeypatch,
            redis_url,
            url,
            OUTBOUND_CA_BUNDLE=str(pki.ca),
            OTEL_EXPORTER_OTLP_HEADERS="api-key=otlp-token-123",
        )
        assert main(["check"]) == 0
    out, err = capsys.readouterr()
    fingerprint = hashlib.sha256(SECRET.encode()).hexdigest()[:8]
    assert f"fingerprint {fingerprint}" in out
    assert "ingest    ok: TLS to 127.0.0.1:" in out
    assert "certificate verified" in out
    assert "redis     ok: " in out
    assert "stream    check-stream: 0 entries; group g not created yet" in out
    assert "BRIDGE_STREAMS" in out
    assert "BRIDGE_REDIS_CLUSTER" in out
    assert "OTEL_EXPORTER_OTLP_HEADERS" in out
    assert SECRET not in out + err
    assert "otlp-token-123" not in out + err
    assert out.rstrip().endswith("check passed")


@pytest.mark.redis
def test_check_names_the_failing_part(
    redis_url: str,
    pki: Pki,
    refused_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Untrusted certificate or no server: exit 1 naming ingest; no Redis: exit 1 naming redis."""
    with serve_tls(
        IngestApp(secrets={KEY_ID: SECRET.encode()}), pki.server_cert, pki.server_key
    ) as url:
        _check_env(monkeypatch, redis_url, url, OUTBOUND_CA_BUNDLE=str(pki.other_ca))
        assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "check failed: ingest: " in err
    assert "not trusted" in err
    assert "OUTBOUND_CA_BUNDLE" in err

    _check_env(monkeypatch, redis_url, refused_url)
    assert main(["check"]) == 1
    assert "check failed: ingest: " in capsys.readouterr().err

    _check_env(monkeypatch, "redis://127.0.0.1:1/0", refused_url)
    assert main(["check"]) == 1
    assert "check failed: redis: " in capsys.readouterr().err

    _check_env(monkeypatch, redis_url.rsplit("/", 1)[0] + "/99", refused_url)
    assert main(["check"]) == 2
    assert "BRIDGE_REDIS_URL selects database 99" in capsys.readouterr().err

    _check_env(monkeypatch, redis_url, refused_url, BRIDGE_GROUP="")
    assert main(["check"]) == 2
    assert "BRIDGE_GROUP" in capsys.readouterr().err
