"""The command line explains itself: required settings, every option with its default, usage."""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.ops.cli import _parser, main

ROOT = Path(__file__).resolve().parents[2]


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """The parser and every sub-command parser below it."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield from _parsers(child)


@pytest.mark.parametrize("command", ["run", "check"])
def test_run_and_check_help_name_the_required_settings(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`run --help` and `check --help` name the two settings without a default."""
    with pytest.raises(SystemExit) as done:
        main([command, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert "required settings" in out
    assert "OUTBOUND_SERVER_URL" in out
    assert "HMAC_PRODUCER_SECRET_FILE" in out


def test_every_option_is_described_with_its_default() -> None:
    """Each option of each command has help; one with a default shows it in the help."""
    missing, no_default = [], []
    for parser in _parsers(_parser()):
        formatter = parser._get_formatter()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            name = f"{parser.prog} {action.option_strings[-1]}"
            if not action.help:
                missing.append(name)
                continue
            shown = (formatter._get_help_string(action) or "") % {"default": action.default}
            if action.default not in (None, False, argparse.SUPPRESS) and "default" not in shown:
                no_default.append(name)
    assert missing == []
    assert no_default == []


def test_ingest_server_help_says_where_the_secret_comes_from(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ingest-server --help` lists the secret variables and the exit codes."""
    with pytest.raises(SystemExit):
        main(["ingest-server", "--help"])
    out = capsys.readouterr().out
    for name in ("INGEST_SECRETS", "INGEST_SECRET_FILE", "HMAC_PRODUCER_SECRET"):
        assert name in out
    assert "busy port" in out


@pytest.mark.parametrize(
    ("argv", "usage"),
    [
        (["publish", "--bogus"], "usage: signal-bridge publish"),
        (["dlq", "purge", "--nope"], "usage: signal-bridge dlq purge"),
        (["status", "--count", "3"], "usage: signal-bridge status"),
    ],
)
def test_a_usage_error_prints_the_usage_of_its_command(
    argv: list[str], usage: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """An unknown option exits 2 under the usage of the command it was given to."""
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage), err
    assert "unrecognized arguments" in err


def test_ingest_server_on_a_busy_port_exits_2_before_saying_ready() -> None:
    """A port another process listens on: exit 2, one line naming it, no 'ready' line."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(  # noqa: S603 - our own module with fixed arguments
            [sys.executable, "-m", "bridge", "ingest-server", "--port", str(port)],
            env={"HMAC_PRODUCER_SECRET": "s" * 32, "PATH": "/usr/bin:/bin"},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 2, result.stderr
    assert f"127.0.0.1:{port} is already in use" in result.stderr
    assert "ready" not in result.stdout
