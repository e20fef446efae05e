"""Bridge replicas as child processes: start, signal, wait with a bound, and always reap.

Each replica is ``python -m bridge run`` with its settings in the environment and its stdout and
stderr in files, so a failing assertion can show what the replica said. ``Replicas`` is a context
manager: on exit it SIGKILLs and reaps every child still running, so no test leaks a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final

__all__ = ["Replica", "Replicas"]

ROOT: Final = Path(__file__).resolve().parent.parent
# Settings a developer's shell might carry; a replica gets only the ones the test gives it.
_SETTING_PREFIXES: Final = (
    "HMAC_PRODUCER_",
    "OUTBOUND_",
    "BRIDGE_",
    "PRODUCER_ID",
    "INGEST_",
    "OTEL_",
    # The proxy variables the bridge honours: loopback tests connect directly.
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)
_REAP_TIMEOUT_S: Final = 10.0
_OUTPUT_TAIL: Final = 6000


class Replica:
    """One ``signal-bridge run`` child process and the files holding its output."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], log_dir: Path) -> None:
        self.name = name
        self.proc = proc
        self.stdout_path = log_dir / f"{name}.stdout"
        self.stderr_path = log_dir / f"{name}.stderr"

    @property
    def alive(self) -> bool:
        """Tell whether the process is still running."""
        return self.proc.poll() is None

    def stdout(self) -> str:
        """Everything the replica wrote to stdout so far (its log lines)."""
        return _read(self.stdout_path)

    def output(self) -> str:
        """The tail of stdout and stderr, for assertion messages."""
        code = self.proc.poll()
        state = "running" if code is None else f"exit code {code}"
        return (
            f"--- {self.name} ({state}) stdout ---\n{_read(self.stdout_path)[-_OUTPUT_TAIL:]}\n"
            f"--- {self.name} stderr ---\n{_read(self.stderr_path)[-_OUTPUT_TAIL:]}"
        )

    def send(self, sig: signal.Signals) -> None:
        """Send a signal, unless the process has already exited."""
        if self.alive:
            self.proc.send_signal(sig)

    async def wait(self, timeout_s: float) -> int:
        """Wait (without blocking the event loop) for the exit code; fail after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (code := self.proc.poll()) is None:
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{self.name} did not exit within {timeout_s}s\n{self.output()}"
                )
            await asyncio.sleep(0.02)
        return code

    def reap(self) -> None:
        """SIGKILL the process if it still runs, and collect it."""
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=_REAP_TIMEOUT_S)


class Replicas:
    """Starts replicas whose output goes to ``log_dir``; on exit kills and reaps all of them."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[Replica] = []

    def start(
        self, name: str, env: Mapping[str, str], command: Sequence[str] = ("run",)
    ) -> Replica:
        """Start ``python -m bridge run`` (or another command) with ``env`` over a clean environ."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
        stdout_path = self.log_dir / f"{name}.stdout"
        stderr_path = self.log_dir / f"{name}.stderr"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = subprocess.Popen(  # noqa: S603 - our own module; the tests choose the command
                [sys.executable, "-m", "bridge", *command],
                env={**base, **env},
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        replica = Replica(name, proc, self.log_dir)
        self.started.append(replica)
        return replica

    def output(self) -> str:
        """What every replica said, for assertion messages."""
        return "\n".join(replica.output() for replica in self.started)

    def close(self) -> None:
        """Kill and reap every replica still running."""
        for replica in self.started:
            replica.reap()

    def __enter__(self) -> Replicas:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return ""
