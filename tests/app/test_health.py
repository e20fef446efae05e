"""The probe endpoints of an in-process bridge: /healthz, /readyz and the plain HTTP handling.

Each test runs a real ``Worker`` and ``HealthServer`` (port 0) in the test's event loop against
a real Redis and the reference ingest server on 127.0.0.1, and asks the probes over HTTP the way
a kubelet would. The Redis-outage tests start their own ``redis-server`` so they can stop it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bridge.app.health import HealthServer
from bridge.config.loader import BridgeConfig
from bridge.core.signal import Signal
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Breaker
from bridge.delivery.worker import Worker
from bridge.devkit.embedded import free_port, redis_server
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.streams.connection import connect
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from tests.support import KEY_ID, SECRET, bridge_config, eventually, fast_breaker, make_signal

pytestmark = pytest.mark.redis

FAST: Final = Backoff(0.001, 0.01)
# Reconnect quickly after an outage, so the tests do not wait out the default 5 s backoff cap.
QUICK_REDIS: Final = Backoff(0.01, 0.2)
WAIT_S: Final = 10.0


@dataclass
class Server:
    """The reference ingest server running in a thread, and its URL."""

    app: IngestApp
    url: str


@dataclass
class Probes:
    """A running worker and an HTTP client aimed at its health server."""

    worker: Worker
    http: httpx.AsyncClient
    task: asyncio.Task[None]

    async def get(self, path: str) -> tuple[int, dict[str, Any]]:
        """GET ``path``; return the status and the decoded JSON body."""
        response = await self.http.get(path)
        return response.status_code, msgspec.json.decode(response.content)

    async def status(self, path: str) -> int:
        """GET ``path`` and return only the status code."""
        return (await self.get(path))[0]


@pytest.fixture
def server() -> Iterator[Server]:
    """The reference ingest server on a free loopback port."""
    app = IngestApp(secrets={KEY_ID: SECRET.encode()})
    with serve_in_thread(app) as url:
        yield Server(app, url)


def _require_redis_server() -> None:
    """Skip (fail under CI) when the redis-server binary is missing."""
    if shutil.which("redis-server") is None:
        message = "needs the redis-server binary (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextlib.asynccontextmanager
async def probing(
    redis: aioredis.Redis,
    config: BridgeConfig,
    *,
    breaker: Breaker | None = None,
    redis_backoff: Backoff = QUICK_REDIS,
) -> AsyncIterator[Probes]:
    """Run a Worker and its HealthServer on 127.0.0.1:0 for the block; stop and close after."""
    cfg = config.stream
    stream = SignalStream(
        redis, stream=cfg.stream, group=cfg.group, consumer=cfg.consumer, dlq_stream=cfg.dlq_stream
    )
    async with HmacClient(config.outbound) as client:
        worker = Worker(
            stream,
            client,
            cfg,
            backoff=FAST,
            redis_backoff=redis_backoff,
            breaker=breaker if breaker is not None else fast_breaker(),
        )
        async with (
            HealthServer(lambda: [worker], host="127.0.0.1", port=0) as health,
            httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}", timeout=5.0) as http,
        ):
            task = asyncio.create_task(worker.run())
            try:
                yield Probes(worker, http, task)
            finally:
                worker.stop()
                await asyncio.wait_for(task, 30)


async def _readyz_becomes(probes: Probes, status: int) -> dict[str, Any]:
    """Poll /readyz (bounded) until it answers ``status``; return the body of that answer.

    Asserting on the answer that ended the wait, not on a second request, matters after a
    Redis restart: each stale pooled connection fails one command before it reconnects.
    """
    last: list[dict[str, Any]] = [{}]

    async def answered() -> bool:
        code, last[0] = await probes.get("/readyz")
        return code == status

    await eventually(answered, timeout_s=WAIT_S, what=f"/readyz {status}")
    return last[0]


async def _group_exists(url: str, stream: str, group: str) -> bool:
    """Ask Redis on a fresh connection whether the consumer group exists."""
    async with connect(url) as redis:
        try:
            groups = await redis.xinfo_groups(stream)
        except ResponseError:
            return False
    return any(g["name"] in (group, group.encode()) for g in groups)


async def _publish_fresh(url: str, signal: Signal, stream: str) -> None:
    """Publish on a new connection (pooled ones may be stale after a Redis restart)."""
    async with connect(url) as producer:
        await publish(producer, signal, stream=stream)


async def _stop_redis(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM a redis-server child (it writes its AOF) and wait for it to exit."""
    proc.terminate()
    await asyncio.to_thread(proc.wait, 10)


async def test_readyz_follows_redis_going_away_and_coming_back(
    server: Server, stream_name: str, tmp_path: Path
) -> None:
    """/readyz turns 503 naming Redis while it is down (/healthz stays 200) and 200 once it is back."""  # noqa: E501
    _require_redis_server()
    port = free_port()
    with contextlib.ExitStack() as servers:
        url, proc = servers.enter_context(
            redis_server(port=port, appendonly=True, data_dir=tmp_path)
        )
        config = bridge_config(server.url, url, stream_name)
        async with connect(url) as redis, probing(redis, config) as probes:
            body = await _readyz_becomes(probes, 200)
            assert (body["status"], body["redis"], body["group"]) == ("ready", "ok", "ok")
            await publish(redis, make_signal(1), stream=stream_name)
            await eventually(
                lambda: len(server.app.received) == 1, timeout_s=WAIT_S, what="delivery"
            )

            await _stop_redis(proc)
            body = await _readyz_becomes(probes, 503)
            assert body["status"] == "not ready"
            assert str(body["redis"]).startswith("unreachable"), body
            health_status, health = await probes.get("/healthz")
            assert (health_status, health["status"]) == (200, "ok")

            await asyncio.to_thread(
                servers.enter_context, redis_server(port=port, appendonly=True, data_dir=tmp_path)
            )
            body = await _readyz_becomes(probes, 200)
            assert (body["redis"], body["group"]) == ("ok", "ok")
            # Ready means it consumes again: a signal published after the restart is delivered.
            await _publish_fresh(url, make_signal(2), stream_name)
            await eventually(
                lambda: len(server.app.received) == 2,
                timeout_s=WAIT_S,
                what="delivery after restart",
            )
            assert await probes.status("/healthz") == 200


async def test_readyz_recovers_after_redis_comes_back_empty(
    server: Server, stream_name: str, tmp_path: Path
) -> None:
    """After Redis restarts without its data, the group is recreated, delivery resumes and /readyz is 200 again."""  # noqa: E501
    _require_redis_server()
    port = free_port()
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    with contextlib.ExitStack() as servers:
        url, proc = servers.enter_context(redis_server(port=port, data_dir=tmp_path / "before"))
        config = bridge_config(server.url, url, stream_name)
        async with connect(url) as redis, probing(redis, config) as probes:
            await _readyz_becomes(probes, 200)
            await _stop_redis(proc)
            await _readyz_becomes(probes, 503)
            await asyncio.to_thread(
                servers.enter_context, redis_server(port=port, data_dir=tmp_path / "after")
            )
            await _publish_fresh(url, make_signal(3), stream_name)
            await eventually(
                lambda: len(server.app.received) == 1,
                timeout_s=WAIT_S,
                what="delivery after Redis came back empty",
            )
            body = await _readyz_becomes(probes, 200)
            assert (body["redis"], body["group"]) == ("ok", "ok"), body
            assert await _group_exists(url, stream_name, config.stream.group)


async def test_readyz_is_not_ready_while_the_group_is_missing(
    server: Server, stream_name: str, tmp_path: Path
) -> None:
    """Right after Redis comes back empty, before the worker has recreated the group, /readyz is not 200."""  # noqa: E501
    _require_redis_server()
    port = free_port()
    (tmp_path / "before").mkdir()
    (tmp_path / "after").mkdir()
    # A fixed 2.5 s pause after each Redis error: the worker is still asleep (and has not
    # recreated the group) when the probe below runs, so the window is certain, not a race.
    asleep = Backoff(2.5, 2.5, rand=lambda: 1.0)
    with contextlib.ExitStack() as servers:
        url, proc = servers.enter_context(redis_server(port=port, data_dir=tmp_path / "before"))
        config = bridge_config(server.url, url, stream_name)
        async with (
            connect(url) as redis,
            probing(redis, config, redis_backoff=asleep) as probes,
        ):
            await _readyz_becomes(probes, 200)
            await _stop_redis(proc)
            await _readyz_becomes(probes, 503)
            await asyncio.to_thread(
                servers.enter_context, redis_server(port=port, data_dir=tmp_path / "after")
            )
            answer: list[tuple[int, dict[str, Any]]] = []

            async def redis_answers() -> bool:
                answer[:] = [await probes.get("/readyz")]
                return bool(answer[0][1]["redis"] == "ok")

            await eventually(redis_answers, timeout_s=2.0, what="Redis to answer PING")
            assert not await _group_exists(url, stream_name, config.stream.group)
            [(status, body)] = answer
            assert status == 503, (
                f"/readyz says {status} {body} while the consumer group is missing"
            )


async def test_readyz_is_503_while_the_breaker_is_open(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """A 401 opens the breaker and /readyz says 503 with circuit=open until delivery succeeds."""
    await publish(redis, make_signal(1), stream=stream_name)
    server.app.fault = lambda headers: 401
    breaker = fast_breaker()
    config = bridge_config(server.url, redis_url, stream_name)
    async with probing(redis, config, breaker=breaker) as probes:
        await eventually(lambda: breaker.is_open, timeout_s=WAIT_S, what="breaker open")
        status, body = await probes.get("/readyz")
        assert (status, body["redis"], body["status"]) == (503, "ok", "not ready"), body
        assert str(body["circuit"]).startswith("open"), body
        assert await probes.status("/healthz") == 200
        server.app.fault = None
        body = await _readyz_becomes(probes, 200)
        assert body["circuit"] == "closed"
        assert len(server.app.received) == 1


async def test_readyz_is_503_after_stop(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Once stop() is called the replica reports not ready (stopping) while staying alive."""
    config = bridge_config(server.url, redis_url, stream_name)
    async with probing(redis, config) as probes:
        await _readyz_becomes(probes, 200)
        probes.worker.stop()
        await asyncio.wait_for(probes.task, 30)
        status, body = await probes.get("/readyz")
        assert (status, body["stopping"], body["status"]) == (503, True, "not ready")
        assert await probes.status("/healthz") == 200


async def test_readyz_is_503_when_redis_is_unreachable_from_the_start(
    server: Server, stream_name: str
) -> None:
    """With Redis never reachable, /readyz is 503 (redis unreachable, group not created), /healthz 200."""  # noqa: E501
    url = f"redis://127.0.0.1:{free_port()}/0"
    config = bridge_config(server.url, url, stream_name)
    async with connect(url) as redis, probing(redis, config) as probes:
        status, body = await probes.get("/readyz")
        assert status == 503, body
        assert str(body["redis"]).startswith("unreachable"), body
        assert body["group"] == "not created yet"
        status, body = await probes.get("/healthz")
        assert (status, body) == (200, {"status": "ok", "in_flight": 0})


async def test_health_server_speaks_plain_http(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """/healthz reports in-flight entries; HEAD has no body; unknown paths 404; POST is 405."""
    config = bridge_config(server.url, redis_url, stream_name)
    async with probing(redis, config) as probes:
        await _readyz_becomes(probes, 200)
        response = await probes.http.get("/healthz")
        assert response.status_code == 200
        assert response.headers["content-type"] == "application/json"
        assert msgspec.json.decode(response.content) == {"status": "ok", "in_flight": 0}
        head = await probes.http.head("/readyz")
        assert (head.status_code, head.content) == (200, b"")
        assert (await probes.http.get("/readyz?verbose=1")).status_code == 200
        assert (await probes.http.get("/nope")).status_code == 404
        assert (await probes.http.post("/healthz", content=b"{}")).status_code == 405
