"""``signal-bridge top`` against a running bridge: in tmux like an operator, and ``--once``.

The bridge is one ``signal-bridge run`` replica in strict ordering (tests/ops/dash_rig.py). In
tmux the view must refresh while signals flow, and quit on ``q`` (exit 0) and on Ctrl-C (130);
``--once`` must print one uncoloured view within 80 columns for a script.
"""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import pytest

from bridge.ops.top import Reading, ReplicaReading, render
from bridge.ownership.leases import LeaseHolder
from bridge.streams.entries import GroupStatus
from tests.ops.dash_rig import STALE_FENCE, Rig, running_bridge
from tests.support import eventually

ROOT: Final = Path(__file__).resolve().parents[2]
_ANSI: Final = re.compile(r"\x1b\[")


def _top_env(rig: Rig) -> dict[str, str]:
    """The operator's environment: Redis and the streams, nothing of the delivery side."""
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL")}
    return keep | {k: v for k, v in rig.env.items() if k.startswith("BRIDGE_")}


def _command(rig: Rig, *extra: str) -> list[str]:
    """``python -m bridge top`` reading the rig's replica's /metrics."""
    return [sys.executable, "-m", "bridge", "top", "--metrics", rig.metrics_url, *extra]


@pytest.fixture
def tmux() -> str:
    """The tmux binary, or skip (locally) / fail (under CI) saying what is missing."""
    found = shutil.which("tmux")
    if found is None:
        message = "no tmux: apt-get install tmux (scripts/test.sh does in CI)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


class Pane:
    """One detached 80x24 tmux session on a private socket, running one shell command."""

    def __init__(self, tmux: str, socket: Path, name: str) -> None:
        self.tmux, self.socket, self.name = tmux, socket, name
        self.exit_file = socket.parent / f"{name}.exit"

    def _tmux(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(  # noqa: S603 - tmux, with arguments of our own
            [self.tmux, "-S", str(self.socket), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=10,
        )

    def start(self, command: list[str], env: Mapping[str, str]) -> None:
        """Start ``command`` in the pane; its exit code lands in ``exit_file``."""
        line = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in env.items()), *command])
        shell = f"{line}; echo $? > {shlex.quote(str(self.exit_file))}"
        started = self._tmux(
            "new-session", "-d", "-s", self.name, "-x", "80", "-y", "24", "-c", str(ROOT), shell
        )
        assert started.returncode == 0, started.stderr

    def screen(self) -> str:
        """What the pane shows now."""
        return self._tmux("capture-pane", "-p", "-t", self.name).stdout

    def keys(self, *keys: str) -> None:
        """Type ``keys`` into the pane (tmux key names, e.g. ``C-c``)."""
        self._tmux("send-keys", "-t", self.name, *keys)

    def exit_code(self) -> int | None:
        """The command's exit code once it has exited, else None."""
        try:
            return int(self.exit_file.read_text(encoding="utf-8"))
        except (FileNotFoundError, ValueError):
            return None

    def kill_server(self) -> None:
        """Stop the private tmux server and every session on it."""
        self._tmux("kill-server")


def _owner_line(screen: str, shard: str) -> str:
    """The line of ``shard`` on the screen, or an empty string."""
    return next((line for line in screen.splitlines() if line.startswith(shard)), "")


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)  # ~20 s alone: a replica and two views start on a loaded runner
async def test_top_in_tmux_refreshes_while_signals_flow_and_quits_on_q_and_ctrl_c(
    redis_url: str, tmp_path: Path, tmux: str
) -> None:
    """In an 80-column tmux pane top shows owners and tokens, follows the traffic, and quits."""
    async with running_bridge(redis_url, tmp_path) as rig:
        pane = Pane(tmux, tmp_path / "tmux.sock", "top")
        try:
            pane.start(_command(rig), _top_env(rig))

            def owned() -> bool:
                screen = pane.screen()
                return (
                    all(re.search(r"\s0\s+\d+ dash-1$", _owner_line(screen, s)) for s in rig.shards)
                    and re.search(r"^127\.0\.0\.1:\d+ .* 2 +0 closed$", screen, re.M) is not None
                )

            await eventually(owned, timeout_s=20, interval_s=0.2, what=f"owners\n{pane.screen()}")
            await rig.traffic()
            # Both shards dead-lettered one entry each; the view shows it within a refresh or two.
            await eventually(
                lambda: all(
                    re.search(r"\s1\s+\d+ dash-1$", _owner_line(pane.screen(), s))
                    for s in rig.shards
                ),
                timeout_s=10,
                interval_s=0.2,
                what=f"dead letters on screen\n{pane.screen()}",
            )
            assert "q quits" in pane.screen()
            pane.keys("q")
            await eventually(
                lambda: pane.exit_code() is not None, timeout_s=10, what="top quits on q"
            )
            assert pane.exit_code() == 0

            interrupted = Pane(tmux, tmp_path / "tmux.sock", "top2")
            interrupted.start(_command(rig), _top_env(rig))
            await eventually(
                lambda: "dash-1" in interrupted.screen(), timeout_s=20, what="second view"
            )
            interrupted.keys("C-c")
            await eventually(
                lambda: interrupted.exit_code() is not None, timeout_s=10, what="Ctrl-C quits"
            )
            assert interrupted.exit_code() == 130
        finally:
            pane.kill_server()


@pytest.mark.redis
@pytest.mark.slow
@pytest.mark.timeout(120)
async def test_top_once_prints_one_plain_view_within_80_columns(
    redis_url: str, tmp_path: Path
) -> None:
    """--once into a pipe: no colour codes, 80 columns, owners, tokens, replicas and a dead one."""
    async with running_bridge(redis_url, tmp_path) as rig:
        await rig.traffic()
        started = time.monotonic()
        proc = await asyncio.create_subprocess_exec(
            *_command(rig, "--once"),
            "--metrics",
            "http://127.0.0.1:9/metrics",
            env=_top_env(rig),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert time.monotonic() - started < 30
    text = out.decode()
    assert not _ANSI.search(text)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    tokens = []
    for shard in rig.shards:
        found = re.search(r"\s0\s+0\s+-\s+1\s+(\d+) dash-1$", _owner_line(text, shard))
        assert found, text
        tokens.append(int(found[1]))
    # The second shard was fenced at STALE_FENCE: the replica took it again above that token.
    assert tokens[1] > STALE_FENCE > tokens[0], text
    assert re.search(r"^127\.0\.0\.1:\d+ .* 2 +0 closed$", text, re.M), text
    assert re.search(r"^127\.0\.0\.1:9 +unreachable", text, re.M), text


def test_render_cuts_long_names_to_80_columns_and_colours_only_when_asked() -> None:
    """Long stream and consumer names are cut; colour marks a free shard only when on."""
    long = "orders-" + "x" * 60 + ":{0}"
    status = GroupStatus(
        stream=long,
        group="g",
        length=5,
        lag=2000,
        pending=1,
        oldest_pending_age_ms=90_000,
        consumers=[],
        dead_letters=3,
    )
    reading = Reading(
        at=1.0,
        statuses=[status],
        leases={
            long: LeaseHolder(
                consumer="pod-" + "y" * 80, instance="ab12", fencing_token=7, expires_in_ms=900
            )
        },
        replicas=[ReplicaReading("replica-" + "z" * 40 + ":8081", open_circuits=("s",))],
        strict=True,
        group="g",
    )
    plain = render(reading, None, colour=False, live=True)
    assert all(len(line) <= 80 for line in plain), plain
    assert not any(_ANSI.search(line) for line in plain)
    assert any("OPEN on 1" in line for line in plain)
    assert any(line.startswith("orders-xxx") and " 7 pod-yyy" in line for line in plain)
    free = Reading(at=1.0, statuses=[status], leases={long: None}, strict=True, group="g")
    coloured = render(free, None, colour=True, live=False)
    assert any("\x1b[31;1mFREE" in line for line in coloured)
    assert "q quits" not in coloured[0]


async def test_top_once_without_redis_says_so_and_exits_1(refused_url: str) -> None:
    """--once with Redis refusing connections: one line naming Redis, exit 1, no traceback."""
    port = refused_url.rsplit(":", 1)[1]
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
    env |= {"BRIDGE_REDIS_URL": f"redis://127.0.0.1:{port}/0", "BRIDGE_STREAM": "s"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "bridge",
        "top",
        "--once",
        env=env,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode() + err.decode()
    assert proc.returncode == 1, text
    assert "Traceback" not in text
    assert re.search(r"^(Redis: |signal-bridge: ).*(redis|Redis|connect)", text, re.M), text
