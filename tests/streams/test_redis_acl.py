"""The minimal Redis ACL in docs/deployment.md is enough: the bridge runs as it, ACL LOG empty.

A private ``redis-server`` gets docs/deployment.md's ``ACL SETUSER`` line as written (its password
replaced); bridge replicas run as child processes under that user, strict over two shards and
parallel on one stream, with retention on, through deliveries, an invalid entry's dead letter,
touches of held entries, claims, trims and a SIGTERM drain; once more with receipts on. A
command or key the ACL lacks shows in ``ACL LOG`` (and as NOPERM in the replica's log).
"""

from __future__ import annotations

import asyncio
import shlex
import shutil
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Final

import pytest
import redis.asyncio as aioredis

from bridge.devkit.embedded import redis_server
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.streams.connection import connect
from bridge.streams.producer import publish, publish_raw
from tests.procs import Replicas
from tests.support import KEY_ID, SECRET, bridge_env, make_signal

DEPLOYMENT: Final = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"
PASSWORD: Final = "acl-test-" + uuid.uuid4().hex
SIGNALS: Final = 60


def _acl_line() -> list[str]:
    """docs/deployment.md's ACL SETUSER line, split as redis-cli would, with the test's password."""
    [line] = [
        raw.strip()
        for raw in DEPLOYMENT.read_text(encoding="utf-8").splitlines()
        if raw.startswith("ACL SETUSER ")
    ]
    return [f">{PASSWORD}" if word == ">CHANGE-ME" else word for word in shlex.split(line)]


@pytest.fixture
def private_redis() -> Iterator[str]:
    """A redis-server of this test alone (the default user administers it)."""
    if shutil.which("redis-server") is None:
        pytest.skip("needs the redis-server binary (apt-get install redis-server)")
    with redis_server() as (url, _):
        yield url


@pytest.mark.parametrize(
    ("ordering", "streams", "receipts"),
    [
        ("strict", "signals:{0},signals:{1}", "false"),
        ("parallel", "", "false"),
        ("strict", "signals:{0},signals:{1}", "true"),
    ],
)
async def test_the_readme_acl_is_all_the_bridge_needs(
    private_redis: str, tmp_path: Path, ordering: str, streams: str, receipts: str
) -> None:
    """Delivery, dead letters, trims and the drain run as the documented user; ACL LOG empty."""
    names = streams.split(",") if streams else ["signals"]
    async with connect(private_redis) as admin:
        words = _acl_line()
        assert words[:3] == ["ACL", "SETUSER", "signal-bridge"], words
        await admin.execute_command(*words)  # type: ignore[no-untyped-call]
        await admin.acl_log_reset()
        port = admin.connection_pool.connection_kwargs["port"]
        user_url = f"redis://signal-bridge:{PASSWORD}@127.0.0.1:{port}/0"
        app = IngestApp(secrets={KEY_ID: SECRET.encode()})
        with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
            extra = {
                "BRIDGE_ORDERING": ordering,
                "BRIDGE_TRIM_ACKED": "true",
                "BRIDGE_TRIM_INTERVAL_SECONDS": "0.2",
                "BRIDGE_STATUS_INTERVAL_SECONDS": "0.2",
                "BRIDGE_CLAIM_IDLE_MS": "300",
                "BRIDGE_LEASE_TTL_MS": "1200",
                "BRIDGE_LEASE_RENEW_MS": "400",
                "BRIDGE_HEARTBEAT_TTL_MS": "1200",
                "BRIDGE_HEALTH_PORT": "0",
                "BRIDGE_SUMMARY_INTERVAL_SECONDS": "0.5",
                "BRIDGE_START_ID": "0",
                "BRIDGE_RECEIPTS": receipts,
            }
            if streams:
                extra["BRIDGE_STREAMS"] = streams
            env = bridge_env(url, user_url, "signals", **extra)
            replica = replicas.start("acl", env)
            run = uuid.uuid4().hex[:8]
            for i in range(SIGNALS):
                shard = names[i % len(names)]
                await publish(admin, make_signal(i, signal_id=f"{run}-{i}"), stream=shard)
            for shard in names:
                await publish_raw(admin, {"signal": b"{not json"}, stream=shard)
            deadline = time.monotonic() + 60
            while len(app.received) < SIGNALS or not await _all_dead_lettered(admin, names):
                assert replica.alive, replicas.output()
                assert time.monotonic() < deadline, replicas.output()
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.0)  # a few trims, status polls, touches and renewals more
            replica.send(signal.SIGTERM)
            assert await replica.wait(30) == 0, replicas.output()
            stdout = replica.stdout()
        log = await admin.acl_log()
    assert log == [], log
    assert "NOPERM" not in stdout, stdout[-3000:]
    assert len(app.keys()) == SIGNALS
    if receipts == "true":
        async with connect(private_redis) as admin:
            written = [await admin.xlen(f"{name}:receipts") for name in names]
        assert sum(written) == SIGNALS + len(names)  # every delivery and every dead letter


async def _all_dead_lettered(admin: aioredis.Redis, names: list[str]) -> bool:
    """Each shard's invalid entry is in its dead-letter stream."""
    lengths = [await admin.xlen(f"{name}:dlq") for name in names]
    return all(length == 1 for length in lengths)
