"""Private ``redis-server`` processes with extra arguments: TLS, ACL users, a three-node cluster.

``bridge.devkit.embedded.redis_server`` starts a plain server only; the transport-security and
scale-out tests need servers started with their own options. Every server listens on 127.0.0.1
only, on a port below 55000 whose cluster bus port (port + 10000) is free as well, writes its
log into the test's directory, and is terminated (then killed) and reaped when its context
exits. Every wait is bounded. Without the binaries the tests are skipped with a message
(failed under CI), like the other Redis tests.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

__all__ = [
    "RedisProcess",
    "cluster_info",
    "free_port_pair",
    "redis_cluster",
    "redis_process",
    "require_redis_binaries",
]

HOST: Final = "127.0.0.1"
BUS_OFFSET: Final = 10000
_PORT_LOW: Final = 20000
_PORT_HIGH: Final = 54999
_START_TIMEOUT_S: Final = 10.0
_STOP_TIMEOUT_S: Final = 5.0
_CLUSTER_TIMEOUT_S: Final = 30.0


def require_redis_binaries(*names: str) -> dict[str, str]:
    """Return the binaries' paths; skip without one (fail under CI), like fixtures_redis."""
    found: dict[str, str] = {}
    for name in names:
        path = shutil.which(name)
        if path is None:
            message = f"{name} is not installed (apt-get install redis-server)"
            if os.environ.get("CI"):
                pytest.fail(message)
            pytest.skip(message)
        found[name] = path
    return found


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port_pair(taken: Sequence[int] = ()) -> int:
    """A free port below 55000 on 127.0.0.1 whose cluster bus port (+10000) is free too."""
    rng = random.SystemRandom()
    for _ in range(200):
        port = rng.randint(_PORT_LOW, _PORT_HIGH - BUS_OFFSET)
        if port in taken or port + BUS_OFFSET in taken:
            continue
        if _bindable(port) and _bindable(port + BUS_OFFSET):
            return port
    raise AssertionError("no free port pair (port, port + 10000) below 55000 on 127.0.0.1")


@dataclass
class RedisProcess:
    """One running ``redis-server`` child: its listening port, process and log file."""

    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        """The server's log, for assertion messages."""
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-4000:]
        except FileNotFoundError:
            return ""


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log = log_path.read_text(encoding="utf-8", errors="replace")[-2000:]
            raise AssertionError(f"redis-server exited with code {proc.returncode}:\n{log}")
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, port), timeout=0.2),
        ):
            return
        time.sleep(0.02)
    raise AssertionError(f"redis-server did not listen on {HOST}:{port} within {_START_TIMEOUT_S}s")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=_STOP_TIMEOUT_S)


@contextlib.contextmanager
def redis_process(
    workdir: Path, name: str, args: Sequence[str], *, listen_port: int
) -> Iterator[RedisProcess]:
    """Run ``redis-server`` with ``args`` (after the common ones); wait for ``listen_port``.

    The common arguments bind 127.0.0.1, keep nothing on disk and log to ``<workdir>/<name>.log``;
    ``args`` chooses the ports (``--port``, ``--tls-port``) and everything else.
    """
    binary = require_redis_binaries("redis-server")["redis-server"]
    workdir.mkdir(parents=True, exist_ok=True)
    log_path = workdir / f"{name}.log"
    proc = subprocess.Popen(  # noqa: S603 - fixed arguments, binary found on PATH
        [
            binary,
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--daemonize",
            "no",
            "--loglevel",
            "notice",
            "--logfile",
            str(log_path),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_listening(listen_port, proc, log_path)
        yield RedisProcess(listen_port, proc, log_path)
    finally:
        _stop(proc)


def cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of one node, through redis-cli, as a dict."""
    cli = require_redis_binaries("redis-cli")["redis-cli"]
    result = subprocess.run(  # noqa: S603 - fixed arguments, binary found on PATH
        [cli, "-h", HOST, "-p", str(port), "cluster", "info"],
        capture_output=True,
        timeout=5,
        check=False,
    )
    info: dict[str, str] = {}
    for line in result.stdout.decode("utf-8", "replace").splitlines():
        key, sep, value = line.strip().partition(":")
        if sep:
            info[key] = value
    return info


def _cluster_ok(ports: Sequence[int]) -> bool:
    for port in ports:
        info = cluster_info(port)
        if info.get("cluster_state") != "ok" or info.get("cluster_known_nodes") != str(len(ports)):
            return False
    return True


@contextlib.contextmanager
def redis_cluster(workdir: Path, nodes: int = 3) -> Iterator[list[RedisProcess]]:
    """Run a Redis Cluster of ``nodes`` masters on 127.0.0.1 (no replicas); yield the nodes.

    Returns once ``CLUSTER INFO`` says ``cluster_state:ok`` on every node and each knows all
    the others, so a cluster client sees one consistent slot map.
    """
    cli = require_redis_binaries("redis-server", "redis-cli")["redis-cli"]
    with contextlib.ExitStack() as stack:
        started: list[RedisProcess] = []
        for index in range(nodes):
            port = free_port_pair([p.port for p in started])
            node_dir = workdir / f"node-{index}"
            started.append(
                stack.enter_context(
                    redis_process(
                        node_dir,
                        f"redis-{port}",
                        [
                            "--port",
                            str(port),
                            "--cluster-enabled",
                            "yes",
                            "--cluster-config-file",
                            str(node_dir / f"nodes-{port}.conf"),
                            "--cluster-node-timeout",
                            "5000",
                        ],
                        listen_port=port,
                    )
                )
            )
        create = subprocess.run(  # noqa: S603 - fixed arguments, binary found on PATH
            [
                cli,
                "--cluster",
                "create",
                *(f"{HOST}:{p.port}" for p in started),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            capture_output=True,
            timeout=_CLUSTER_TIMEOUT_S,
            check=False,
        )
        if create.returncode != 0:
            raise AssertionError(
                f"redis-cli --cluster create failed ({create.returncode}):\n"
                f"{create.stdout.decode(errors='replace')}\n{create.stderr.decode(errors='replace')}"
            )
        ports = [p.port for p in started]
        deadline = time.monotonic() + _CLUSTER_TIMEOUT_S
        while not _cluster_ok(ports):
            if time.monotonic() > deadline:
                states = {port: cluster_info(port) for port in ports}
                raise AssertionError(f"cluster not ok after {_CLUSTER_TIMEOUT_S}s: {states}")
            time.sleep(0.05)
        yield started
