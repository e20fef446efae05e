"""A private Redis for the demo and the tests: a ``redis-server`` child on a free loopback port.

Falls back to fakeredis's TCP server when the binary is missing (demo only; fakeredis with its
Lua extra, ``fakeredis[lua]``, is a development dependency: the dead-letter script needs EVALSHA).
Nothing is persisted; port 6379 is never touched.
"""

from __future__ import annotations

import contextlib
import importlib.util
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Final

from bridge.errors import BridgeError

__all__ = ["embedded_redis", "free_port", "redis_server"]

_START_TIMEOUT_S: Final = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    """Ask the kernel for a free TCP port on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_for_port(host: str, port: int, proc: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise BridgeError(f"redis-server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.2):
            return
        time.sleep(0.02)
    raise BridgeError(f"redis did not start listening on {host}:{port}")


@contextlib.contextmanager
def redis_server(
    port: int | None = None,
    *,
    appendonly: bool = False,
    data_dir: Path | None = None,
    extra_args: Sequence[str] = (),
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Run ``redis-server`` on 127.0.0.1; yield (url, process). BridgeError without the binary.

    ``extra_args`` are more ``--option value`` pairs (fault tests: maxmemory, key-load-delay).
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise BridgeError("redis-server is not installed (apt-get install redis-server)")
    chosen = port or free_port()
    with contextlib.ExitStack() as stack:
        directory = data_dir or Path(stack.enter_context(tempfile.TemporaryDirectory()))
        proc = subprocess.Popen(  # noqa: S603 - fixed arguments, binary found on PATH
            [
                binary,
                "--port",
                str(chosen),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes" if appendonly else "no",
                "--dir",
                str(directory),
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
                *extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_for_port("127.0.0.1", chosen, proc)
            yield f"redis://127.0.0.1:{chosen}/0", proc
        finally:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)


@contextlib.contextmanager
def embedded_redis() -> Iterator[tuple[str, str]]:
    """Yield (url, kind): a redis-server child when installed, else fakeredis over TCP."""
    if shutil.which("redis-server"):
        with redis_server() as (url, _):
            yield url, "redis-server"
        return
    try:
        from fakeredis import TcpFakeServer  # noqa: PLC0415 - optional, demo fallback only

        if importlib.util.find_spec("lupa") is None:  # fakeredis runs EVALSHA only with lupa
            raise ImportError("lupa")  # noqa: TRY301 - one message for both missing pieces
    except ImportError:
        raise BridgeError(
            "the demo needs redis-server on PATH (apt-get install redis-server) or fakeredis "
            "with Lua (pip install 'fakeredis[lua]'; uv sync installs it)"
        ) from None
    port = free_port()
    server = TcpFakeServer(("127.0.0.1", port), server_type="redis")
    thread = threading.Thread(target=server.serve_forever, daemon=True, name="fakeredis")
    thread.start()
    try:
        _wait_for_port("127.0.0.1", port, None)
        yield f"redis://127.0.0.1:{port}/0", "fakeredis"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
