"""Redis refusing commands the way real deployments do: -OOM, -READONLY, -LOADING, -BUSY.

Each test runs its own ``redis-server`` (these faults change server-wide settings), drives a
real Worker against the reference ingest server, and counts at the server: every entry is
delivered exactly once (unique idempotency keys, no 409), nothing is dead-lettered that should
not be, and the outage is logged with Redis's error code and what it means.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from pathlib import Path
from typing import Final

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from bridge.core.signal import Signal
from bridge.delivery.backoff import Backoff
from bridge.delivery.jobs import idempotency_key
from bridge.devkit.embedded import free_port, redis_server
from bridge.errors import StreamError
from bridge.streams.entries import DLQ_PREFIX
from bridge.streams.producer import publish, publish_raw
from bridge.telemetry.logs import JsonFormatter
from tests.fixtures_ingest import Server
from tests.support import bridge_config, eventually, make_signal, running

pytestmark = pytest.mark.redis

# Reconnect quickly in tests; production backs off up to 5 s.
QUICK: Final = Backoff(0.01, 0.1)
COUNT: Final = 20


@pytest.fixture
def redis_binary() -> str:
    """The redis-server binary; skipped (failed under CI) when it is not installed."""
    binary = shutil.which("redis-server")
    if binary is None:
        message = "no redis-server binary: apt-get install redis-server"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return binary


@pytest.fixture
def private_url(redis_binary: str) -> Iterator[str]:
    """A redis-server of this test alone: the faults below change server-wide settings."""
    del redis_binary
    with redis_server() as (url, _):
        yield url


@contextlib.asynccontextmanager
async def _client(url: str, *, retries: int | None = None) -> AsyncIterator[aioredis.Redis]:
    """An asyncio client; ``retries=0`` turns redis-py's own reconnect retries off."""
    if retries is None:
        client = aioredis.Redis.from_url(url, decode_responses=False)
    else:
        client = aioredis.Redis.from_url(
            url, decode_responses=False, retry=Retry(NoBackoff(), retries)
        )
    try:
        yield client
    finally:
        await client.aclose()


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    formatter = JsonFormatter()
    return "\n".join(formatter.format(r) for r in caplog.records)


async def _publish(client: aioredis.Redis, stream: str, count: int) -> list[tuple[str, Signal]]:
    out = []
    for i in range(count):
        signal = make_signal(i, signal_id=f"fault-{uuid.uuid4().hex[:8]}-{i}")
        out.append((await publish(client, signal, stream=stream), signal))
    return out


async def _drained(client: aioredis.Redis, stream: str) -> bool:
    """True once the group has read and acked everything; False while Redis refuses."""
    try:
        groups = await client.xinfo_groups(stream)
    except redis.exceptions.RedisError:
        return False
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


def _assert_once(server: Server, stream: str, published: list[tuple[str, Signal]]) -> None:
    """Every entry reached the server exactly once: all keys there, none posted twice."""
    assert server.app.keys() == {idempotency_key(stream, e, s.signal_id) for e, s in published}
    assert len(server.app.received) == len(published)
    assert server.app.refusals.get("duplicate idempotency key", 0) == 0


def _on_first_post(server: Server, action: Callable[[], None]) -> threading.Event:
    """Run ``action`` in the server thread when the first POST arrives (then serve it)."""
    done = threading.Event()

    def fault(headers: Mapping[str, str]) -> int | None:
        del headers
        if not done.is_set():
            action()
            done.set()
        return None

    server.app.fault = fault
    return done


async def test_oom_at_start_is_logged_retried_and_loses_nothing(
    server: Server, private_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Out of memory, Redis refuses XGROUP CREATE: logged as OOM, retried, then all delivered."""
    caplog.set_level(logging.INFO)
    stream = "faults:oom"
    async with _client(private_url) as client:
        published = await _publish(client, stream, COUNT)
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", 1)
        with pytest.raises(StreamError) as refused:
            await publish(client, make_signal(99), stream=stream)
        assert refused.value.code == "OOM"
        assert "out of memory" in refused.value.meaning
        config = bridge_config(server.url, private_url, stream)
        async with running(client, config, redis_backoff=QUICK) as worker:
            await eventually(
                lambda: "redis refused a command (OOM)" in _log_text(caplog), what="OOM logged"
            )
            assert "maxmemory reached" in _log_text(caplog)
            assert server.app.received == []
            assert not worker.ready()
            await client.config_set("maxmemory", 0)
            await eventually(lambda: _drained(client, stream), what="drained after OOM")
        assert await client.xlen(f"{stream}:dlq") == 0
    _assert_once(server, stream, published)


async def test_reading_acking_and_dead_letters_go_on_while_redis_is_out_of_memory(
    server: Server, private_url: str
) -> None:
    """OOM refuses only commands that grow memory: delivery, XACK and the DLQ script go on."""
    stream = "faults:oom-running"
    async with _client(private_url) as client:
        await client.xgroup_create(stream, "g", id="0", mkstream=True)
        published = await _publish(client, stream, COUNT)
        await publish_raw(client, {"signal": b"{not json"}, stream=stream)
        await client.config_set("maxmemory-policy", "noeviction")
        await client.config_set("maxmemory", 1)
        config = bridge_config(server.url, private_url, stream)
        async with running(client, config, redis_backoff=QUICK):
            await eventually(lambda: _drained(client, stream), what="drained while OOM")
        dead: list[tuple[bytes, dict[bytes, bytes]]] = await client.xrange(f"{stream}:dlq")  # type: ignore[assignment]
        await client.config_set("maxmemory", 0)
    assert [fields[f"{DLQ_PREFIX}reason".encode()] for _, fields in dead] == [b"invalid"]
    _assert_once(server, stream, published)


async def test_failover_to_read_only_replica_mid_flight_is_logged_and_loses_nothing(
    server: Server, private_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Redis turns replica while posts are in flight: acks refused READONLY, kept, then sent."""
    caplog.set_level(logging.INFO)
    stream = "faults:readonly"
    dead_primary = free_port()
    async with _client(private_url) as client:
        published = await _publish(client, stream, COUNT)
        sync = redis.Redis.from_url(private_url)

        def demote() -> None:
            sync.replicaof("127.0.0.1", dead_primary)

        demoted = _on_first_post(server, demote)
        config = bridge_config(server.url, private_url, stream)
        try:
            async with running(client, config, redis_backoff=QUICK) as worker:
                await eventually(
                    lambda: "redis refused a command (READONLY)" in _log_text(caplog),
                    what="READONLY logged",
                )
                assert demoted.is_set()
                assert "read-only replica" in _log_text(caplog)
                assert not worker.ready()
                still_pending = (await client.xpending(stream, "g"))["pending"]
                assert still_pending > 0  # delivered but not acked: kept, not dropped
                await client.replicaof("NO", "ONE")
                await eventually(lambda: _drained(client, stream), what="drained after promotion")
        finally:
            sync.replicaof("NO", "ONE")
            sync.close()
    _assert_once(server, stream, published)


async def test_busy_script_mid_flight_is_logged_and_loses_nothing(
    server: Server, private_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A long Lua script makes Redis answer -BUSY: logged, retried, and nothing lost or doubled."""
    caplog.set_level(logging.INFO)
    stream = "faults:busy"
    async with _client(private_url) as client:
        await client.config_set("busy-reply-threshold", 50)
        published = await _publish(client, stream, COUNT)
        busy_client = redis.Redis.from_url(private_url, socket_timeout=30)
        probe = redis.Redis.from_url(private_url, socket_timeout=5)
        script_ended = threading.Event()

        def busy_script() -> None:
            with contextlib.suppress(redis.exceptions.ResponseError):
                busy_client.eval("while true do end", 0)
            script_ended.set()

        def start_busy() -> None:
            threading.Thread(target=busy_script, name="busy-lua", daemon=True).start()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:  # until Redis answers BUSY to everyone else
                try:
                    probe.ping()
                except redis.exceptions.ResponseError as exc:
                    if str(exc).startswith("BUSY"):
                        return
                time.sleep(0.01)

        _on_first_post(server, start_busy)
        config = bridge_config(server.url, private_url, stream)
        try:
            async with running(client, config, redis_backoff=QUICK):
                await eventually(
                    lambda: "redis refused a command (BUSY)" in _log_text(caplog),
                    what="BUSY logged",
                )
                assert "Lua script" in _log_text(caplog)
                probe.script_kill()
                assert script_ended.wait(5)
                await eventually(lambda: _drained(client, stream), what="drained after BUSY")
        finally:
            with contextlib.suppress(redis.exceptions.ResponseError):
                probe.script_kill()
            script_ended.wait(5)
            busy_client.close()
            probe.close()
    _assert_once(server, stream, published)


async def test_loading_after_restart_is_logged_retried_and_loses_nothing(
    server: Server, redis_binary: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A restarted Redis answers -LOADING while it reads its RDB: logged, waited out, delivered."""
    del redis_binary
    caplog.set_level(logging.INFO)
    stream = "faults:loading"
    port = free_port()
    with redis_server(port, data_dir=tmp_path) as (url, _):
        async with _client(url) as client:
            published = await _publish(client, stream, COUNT)
            # Ballast keys, loaded slowly below, so the restart spends a second or two LOADING.
            await client.eval("for i = 1, 10000 do redis.call('SET', 'ballast:' .. i, i) end", 0)
            await client.save()
    slow_load = ("--key-load-delay", "100", "--loading-process-events-interval-bytes", "1024")
    with redis_server(port, data_dir=tmp_path, extra_args=slow_load) as (url, _):
        # redis-py's own reconnect retries off, so this test sees what the bridge does.
        async with _client(url, retries=0) as client:
            config = bridge_config(server.url, url, stream)
            async with running(client, config, redis_backoff=QUICK):
                await eventually(
                    lambda: "redis refused a command (LOADING)" in _log_text(caplog),
                    what="LOADING logged",
                )
                assert "loading its dataset" in _log_text(caplog)
                await eventually(lambda: _drained(client, stream), what="drained after LOADING")
    _assert_once(server, stream, published)
