"""BRIDGE_LOG_FORMAT=auto (the default): a human line on a terminal, JSON anywhere else."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

from bridge.config.loader import load_config
from bridge.telemetry.logs import resolve_log_format

ROOT = Path(__file__).resolve().parents[2]


class _Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        """Answer as a terminal does."""
        return True


def test_auto_is_the_default_and_picks_by_the_stream() -> None:
    """The default is auto: text on a terminal, json on a pipe; an explicit format stays."""
    config = load_config(env={"HMAC_PRODUCER_ENABLED": "false"})
    assert config.telemetry.log_format == "auto"
    assert resolve_log_format("auto", _Terminal()) == "text"
    assert resolve_log_format("auto", io.StringIO()) == "json"
    assert resolve_log_format("json", _Terminal()) == "json"
    assert resolve_log_format("text", io.StringIO()) == "text"


def _first_log_line(*, terminal: bool) -> str:
    """Log one INFO line in a new process with format auto; its stdout a pty or a pipe."""
    code = (
        "import logging, sys; from bridge.telemetry.logs import configure_logging;"
        "configure_logging('INFO', 'auto'); logging.getLogger('bridge').info('hello');"
        "logging.shutdown()"
    )
    argv = [sys.executable, "-c", code]
    if not terminal:
        return subprocess.run(  # noqa: S603 - our own interpreter, fixed code
            argv, capture_output=True, text=True, timeout=30, check=True, cwd=ROOT
        ).stdout
    leader, follower = pty.openpty()
    try:
        subprocess.run(  # noqa: S603 - as above
            argv, stdout=follower, stderr=follower, timeout=30, check=True, cwd=ROOT
        )
        return os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)


def test_a_terminal_gets_text_lines_and_a_pipe_gets_json() -> None:
    """The same process writes a human line on a pty and a JSON object on a pipe."""
    on_tty = _first_log_line(terminal=True)
    on_pipe = _first_log_line(terminal=False)
    assert on_pipe.lstrip().startswith("{"), on_pipe
    assert '"message":"hello"' in on_pipe
    assert not on_tty.lstrip().startswith("{"), on_tty
    assert "INFO" in on_tty
    assert "hello" in on_tty
