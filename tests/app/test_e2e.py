"""End to end: ``signal-bridge run`` replicas as processes, a real Redis, the reference server.

The ingest server runs in a thread of the test process (so its records can be inspected); every
replica is a child process started by :class:`tests.procs.Replicas`, which kills and reaps them
whatever happens. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from bridge.core.signal import Signal, encode_canonical
from bridge.delivery.jobs import idempotency_key
from bridge.devkit.embedded import free_port, redis_server
from bridge.devkit.ingest import IngestApp, Receive, Scope, Send, serve_in_thread
from bridge.streams.connection import connect
from bridge.streams.entries import DLQ_PREFIX
from bridge.streams.producer import publish, publish_raw
from tests.procs import Replica, Replicas
from tests.support import KEY_ID, SECRET, bridge_env, eventually, make_signal

pytestmark = pytest.mark.redis

GROUP: Final = "g"  # the group bridge_env configures
# A stalled request is released after this long at most, so a broken test cannot hang the server.
STALL_LIMIT_S: Final = 20.0
EXIT_TIMEOUT_S: Final = 15.0


@dataclass
class ThrottledIngest(IngestApp):
    """The reference server, a little slower per request, able to hold one producer's requests.

    Once ``stall_after`` signals are stored, requests from ``stall_producer`` wait (without an
    answer) until ``release()``: the replica that sent them holds its entries, pending.
    """

    delay_s: float = 0.0
    stall_producer: str | None = None
    stall_after: int = 0
    stalled_now: int = 0
    stalled_total: int = 0
    released: bool = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Delay, maybe stall, then serve the request as the reference server does."""
        if scope["type"] == "http":
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            if self._stalls(scope):
                await self._stall()
        await super().__call__(scope, receive, send)

    def _stalls(self, scope: Scope) -> bool:
        if self.stall_producer is None or self.released or len(self.received) < self.stall_after:
            return False
        headers: dict[bytes, bytes] = dict(scope["headers"])
        producer = headers.get(b"x-producer-id", b"").decode("latin-1")
        return producer == self.stall_producer

    async def _stall(self) -> None:
        self.stalled_now += 1
        self.stalled_total += 1
        deadline = time.monotonic() + STALL_LIMIT_S
        try:
            # release() comes from the test's thread: a flag polled here, not an asyncio.Event.
            while not self.released and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        finally:
            self.stalled_now -= 1

    def release(self) -> None:
        """Let stalled requests through and stall no more."""
        self.released = True

    def describe(self) -> str:
        """Counters for assertion messages."""
        return (
            f"server: {len(self.received)} stored, {self.requests_total} requests, "
            f"refusals {self.refusals}, stalled {self.stalled_total}"
        )


# --- helpers -------------------------------------------------------------------------------


def _ingest(**options: Any) -> ThrottledIngest:
    return ThrottledIngest(secrets={KEY_ID: SECRET.encode()}, **options)


def _signal(run: str, i: int) -> Signal:
    """Signal ``i`` of a run: 40 instruments, a signal_id unique to the run."""
    return make_signal(i, instrument=f"SYM{i % 40:02d}", signal_id=f"{run}-{i}")


async def _publish_signals(
    redis: aioredis.Redis, stream: str, run: str, numbers: range
) -> dict[str, str]:
    """Publish signals ``numbers``; return entry id -> expected idempotency key."""
    expected: dict[str, str] = {}
    for i in numbers:
        item = _signal(run, i)
        entry_id = await publish(redis, item, stream=stream)
        expected[entry_id] = idempotency_key(stream, entry_id, item.signal_id)
    return expected


async def _publish_bad(redis: aioredis.Redis, stream: str, which: int) -> str:
    """Publish one undeliverable entry: undecodable JSON, an invalid signal, or no signal."""
    if which % 3 == 0:
        fields: dict[str, str | bytes] = {"signal": b'{"instrument": "XAUUSD", "side": '}
    elif which % 3 == 1:
        raw = msgspec.json.decode(encode_canonical(make_signal(which)))
        raw["risk_percent"] = 0
        fields = {"signal": msgspec.json.encode(raw)}
    else:
        fields = {"note": b"an entry without a signal field"}
    return await publish_raw(redis, fields, stream=stream)


async def _group(redis: aioredis.Redis, stream: str) -> dict[str, Any] | None:
    """XINFO GROUPS for our group, or None while the stream or the group is missing."""
    try:
        groups = await redis.xinfo_groups(stream)
    except ResponseError:
        return None
    for group in groups:
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == GROUP:
            return dict(group)
    return None


async def _consumers(redis: aioredis.Redis, stream: str) -> dict[str, int]:
    """Consumer name -> entries it holds (empty while the group is missing)."""
    try:
        consumers = await redis.xinfo_consumers(stream, GROUP)
    except ResponseError:
        return {}
    return {c["name"].decode(): int(c["pending"]) for c in consumers}


async def _drained(redis: aioredis.Redis, stream: str) -> bool:
    """Every entry read by the group (lag 0) and acked or dead-lettered (XPENDING 0)."""
    group = await _group(redis, stream)
    if group is None or group.get("lag") != 0:
        return False
    summary = await redis.xpending(stream, GROUP)
    return int(summary["pending"]) == 0


async def _dead_letters(redis: aioredis.Redis, stream: str) -> list[tuple[str, str]]:
    """(source entry id, reason) of every entry of the dead-letter stream, sorted."""
    letters: list[tuple[bytes, dict[bytes, bytes]]] = await redis.xrange(f"{stream}:dlq")  # type: ignore[assignment]
    source, reason = f"{DLQ_PREFIX}source_id".encode(), f"{DLQ_PREFIX}reason".encode()
    return sorted((fields[source].decode(), fields[reason].decode()) for _, fields in letters)


def _replica_env(url: str, redis_url: str, stream: str, name: str, **extra: str) -> dict[str, str]:
    return bridge_env(
        url,
        redis_url,
        stream,
        BRIDGE_CONSUMER=name,
        PRODUCER_ID=f"producer-{name}",
        BRIDGE_LOG_LEVEL="WARNING",
        BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
        # These tests are about replicas sharing one stream's group (test_strict_e2e.py covers
        # shard leases); an explicit BRIDGE_ORDERING in ``extra`` wins.
        **{"BRIDGE_ORDERING": "parallel", **extra},
    )


def _require_redis_server() -> None:
    """Skip (fail under CI) when the redis-server binary is missing."""
    if shutil.which("redis-server") is None:
        message = "needs the redis-server binary (apt-get install redis-server)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def _details(app: ThrottledIngest, replicas: Replicas) -> Callable[[], str]:
    """What the server and the replicas say, read when a wait fails."""
    return lambda: f"{app.describe()}\n{replicas.output()}"


async def _until(
    check: Callable[[], Awaitable[bool]] | Callable[[], bool],
    *,
    what: str,
    details: Callable[[], str],
    timeout_s: float,
    interval_s: float = 0.02,
    watch: Sequence[Replica] = (),
) -> None:
    """``eventually``, failing at once if a ``watch`` replica exits; ``details()`` on failure."""

    async def probe() -> bool:
        for replica in watch:
            if not replica.alive:
                raise AssertionError(f"{replica.name} exited while waiting for {what}")
        result = check()
        return bool(await result if asyncio.iscoroutine(result) else result)

    try:
        await eventually(probe, timeout_s=timeout_s, interval_s=interval_s, what=what)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{details()}") from None


async def _stop(replica: Replica, replicas: Replicas) -> None:
    """SIGTERM a replica and check it exits 0 within the bound."""
    replica.send(signal.SIGTERM)
    code = await replica.wait(EXIT_TIMEOUT_S)
    assert code == 0, f"{replica.name} exited with {code} after SIGTERM\n{replicas.output()}"


# --- tests ---------------------------------------------------------------------------------


@pytest.mark.slow
async def test_three_replicas_deliver_every_signal_once_despite_sigkill(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """Three replicas, one SIGKILLed, deliver 1,000 signals once; only bad ones dead-letter."""
    run = uuid.uuid4().hex[:8]
    app = _ingest(delay_s=0.002, stall_producer="producer-r0", stall_after=300)
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        details = _details(app, replicas)
        try:
            group = [
                replicas.start(
                    f"r{i}",
                    _replica_env(url, redis_url, stream_name, f"r{i}", BRIDGE_CLAIM_IDLE_MS="500"),
                )
                for i in range(3)
            ]
            r0, survivors = group[0], group[1:]

            async def joined() -> bool:
                return {"r0", "r1", "r2"} <= set(await _consumers(redis, stream_name))

            await _until(
                joined, what="3 replicas to join", details=details, timeout_s=30, watch=group
            )

            expected: dict[str, str] = {}
            bad: list[str] = []
            for part in range(4):
                numbers = range(part * 250, (part + 1) * 250)
                expected |= await _publish_signals(redis, stream_name, run, numbers)
                if part < 3:
                    bad.append(await _publish_bad(redis, stream_name, part))

            # r0 answers nothing from the 300th stored signal on: it holds entries mid-POST.
            await _until(
                lambda: app.stalled_now > 0,
                timeout_s=30,
                what="a request of r0 to stall",
                details=details,
                watch=group,
            )
            held = await _consumers(redis, stream_name)
            r0.send(signal.SIGKILL)
            assert await r0.wait(EXIT_TIMEOUT_S) == -signal.SIGKILL
            app.release()
            assert held.get("r0", 0) > 0, f"r0 held nothing when killed: {held}"

            await _until(
                lambda: _drained(redis, stream_name),
                timeout_s=60,
                interval_s=0.1,
                what="lag 0 and nothing pending",
                details=details,
                watch=survivors,
            )

            counts = Counter(r.idempotency_key for r in app.received)
            repeated = {k: n for k, n in counts.items() if n > 1}
            assert not repeated, f"keys stored more than once: {repeated}"
            assert app.keys() == set(expected.values()), (
                f"missing {len(set(expected.values()) - app.keys())}, "
                f"unexpected {len(app.keys() - set(expected.values()))}; {app.describe()}"
            )
            assert len(app.received) == 1000, app.describe()
            assert await _dead_letters(redis, stream_name) == sorted((b, "invalid") for b in bad)
            assert all(r.alive for r in survivors), replicas.output()
            assert any("reclaimed idle entries" in r.stdout() for r in survivors), (
                f"no survivor reported reclaiming r0's entries\n{replicas.output()}"
            )

            for replica in survivors:
                replica.send(signal.SIGTERM)
            for replica in survivors:
                code = await replica.wait(EXIT_TIMEOUT_S)
                assert code == 0, f"{replica.name} exited {code}\n{replicas.output()}"
            # Survivors held nothing, so they left the group; r0 never could.
            assert set(await _consumers(redis, stream_name)) == {"r0"}
        finally:
            app.release()


# Regression: the worker once read with COUNT 0 after XAUTOCLAIM had filled every slot, and
# redis-py's DataError (raised before the command is sent, so outside stream._guard) crashed it.
@pytest.mark.slow
async def test_a_replica_reclaims_a_full_window_from_a_dead_one(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """A replica takes over a dead replica's full window of pending entries without crashing."""
    run = uuid.uuid4().hex[:8]
    app = _ingest()
    expected = await _publish_signals(redis, stream_name, run, range(100))
    # A replica that read a full window (max_in_flight, 32) and died without acking any of it.
    await redis.xgroup_create(stream_name, GROUP, id="0")
    await redis.xreadgroup(GROUP, "dead", {stream_name: ">"}, count=32)
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        details = _details(app, replicas)
        replica = replicas.start(
            "c1",
            _replica_env(
                url,
                redis_url,
                stream_name,
                "c1",
                BRIDGE_CLAIM_IDLE_MS="200",
                BRIDGE_MAX_IN_FLIGHT="32",
            ),
        )
        await _until(
            lambda: _drained(redis, stream_name),
            what="all 100 acked",
            details=details,
            timeout_s=30,
            interval_s=0.1,
            watch=[replica],
        )
        assert app.keys() == set(expected.values()), app.describe()
        assert await _consumers(redis, stream_name) == {"dead": 0, "c1": 0}
        await _stop(replica, replicas)


@pytest.mark.slow
async def test_sigterm_drains_and_leaves_the_group(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """On SIGTERM a replica stops reading, acks what it finishes, leaves the group, exits 0."""
    run = uuid.uuid4().hex[:8]
    app = _ingest(delay_s=0.02)
    expected = await _publish_signals(redis, stream_name, run, range(200))
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        details = _details(app, replicas)
        replica = replicas.start(
            "c1", _replica_env(url, redis_url, stream_name, "c1", BRIDGE_MAX_IN_FLIGHT="32")
        )
        await _until(
            lambda: len(app.received) >= 20,
            timeout_s=30,
            what="20 deliveries",
            details=details,
            watch=[replica],
        )
        await _stop(replica, replicas)

        group = await _group(redis, stream_name)
        assert group is not None
        assert int(group["pending"]) == 0, f"left entries pending: {group}\n{replicas.output()}"
        assert "c1" not in await _consumers(redis, stream_name), "c1 did not leave the group"
        last = _id(group["last-delivered-id"])
        acked = {entry_id for entry_id in expected if _id(entry_id) <= last}
        # Everything it read was acked (nothing pending), and exactly that reached the server.
        assert app.keys() == {expected[entry_id] for entry_id in acked}, app.describe()
        assert len(app.received) == len(acked)
        assert len(acked) < len(expected), "the replica kept reading after SIGTERM"


@pytest.mark.slow
async def test_disabled_delivery_posts_nothing_and_says_so(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """HMAC_PRODUCER_ENABLED=false: says so loudly, posts nothing, probes stay up, exits 0.

    /healthz stays 200 and /metrics serves (a liveness probe must not restart the pod in a loop);
    /readyz is 503 "delivery disabled".
    """
    run = uuid.uuid4().hex[:8]
    app = _ingest()
    await _publish_signals(redis, stream_name, run, range(20))
    health_port = free_port()
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        details = _details(app, replicas)
        env = _replica_env(
            url,
            redis_url,
            stream_name,
            "c1",
            HMAC_PRODUCER_ENABLED="false",
            BRIDGE_HEALTH_PORT=str(health_port),
            BRIDGE_HEALTH_HOST="127.0.0.1",
        )
        del env["HMAC_PRODUCER_SECRET"], env["HMAC_PRODUCER_KEY_ID"]
        replica = replicas.start("c1", env)

        def warned() -> bool:
            return "HMAC_PRODUCER_ENABLED" in replica.stdout()

        await _until(warned, what="the warning", details=details, timeout_s=30, watch=[replica])
        await asyncio.sleep(1.0)
        assert replica.alive, replicas.output()
        assert app.requests_total == 0, app.describe()
        assert await redis.xlen(stream_name) == 20
        group = await _group(redis, stream_name)
        assert group is None or int(group["entries-read"] or 0) == 0, group
        lines = [
            msgspec.json.decode(line)
            for line in replica.stdout().splitlines()
            if "HMAC_PRODUCER_ENABLED" in line
        ]
        assert any(line["level"] in ("WARNING", "ERROR", "CRITICAL") for line in lines), lines
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{health_port}", timeout=5.0
        ) as http:
            healthz = await http.get("/healthz")
            readyz = await http.get("/readyz")
            scraped = await http.get("/metrics")
        assert healthz.status_code == 200, replicas.output()
        assert (readyz.status_code, readyz.json()["status"]) == (503, "delivery disabled")
        assert scraped.status_code == 200
        assert scraped.headers["content-type"].startswith("text/plain")
        await _stop(replica, replicas)


@pytest.mark.slow
async def test_redis_restart_mid_run_reconnects(stream_name: str, tmp_path: Path) -> None:
    """A replica outlives a Redis restart (data kept) and delivers every signal exactly once."""
    _require_redis_server()
    run = uuid.uuid4().hex[:8]
    port = free_port()
    data_dir = tmp_path / "redis"
    data_dir.mkdir()
    app = _ingest()
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        details = _details(app, replicas)
        with redis_server(port=port, appendonly=True, data_dir=data_dir) as (redis_url, _):
            async with connect(redis_url) as redis:
                replica = replicas.start("c1", _replica_env(url, redis_url, stream_name, "c1"))
                expected = await _publish_signals(redis, stream_name, run, range(100))
                await _until(
                    lambda: len(app.received) >= 100,
                    timeout_s=30,
                    what="the first 100",
                    details=details,
                    watch=[replica],
                )
        # redis-server got SIGTERM (it writes its AOF on the way out) and is gone.
        await asyncio.sleep(1.0)
        assert replica.alive, replicas.output()
        with redis_server(port=port, appendonly=True, data_dir=data_dir) as (redis_url, _):
            async with connect(redis_url) as redis:
                assert await redis.xlen(stream_name) == 100, "the AOF did not keep the stream"
                expected |= await _publish_signals(redis, stream_name, run, range(100, 200))
                await _until(
                    lambda: _drained(redis, stream_name),
                    timeout_s=45,
                    interval_s=0.1,
                    what="all 200 acked",
                    details=details,
                    watch=[replica],
                )
                assert app.keys() == set(expected.values()), app.describe()
                assert len(app.received) == 200, app.describe()
                assert replica.alive, replicas.output()
                assert "redis unavailable" in replica.stdout(), replicas.output()
                await _stop(replica, replicas)


# Regression: after a restart that lost the data, every XREADGROUP/XAUTOCLAIM failed with NOGROUP
# and the worker backed off forever as if Redis were down: alive, but never delivering again.
@pytest.mark.slow
async def test_redis_restart_without_persistence_recreates_the_group(
    stream_name: str, tmp_path: Path
) -> None:
    """After a Redis restart that lost the group, a replica recreates it and delivers new ones."""
    _require_redis_server()
    run = uuid.uuid4().hex[:8]
    port = free_port()
    app = _ingest()
    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:
        details = _details(app, replicas)
        with redis_server(port=port) as (redis_url, _):
            async with connect(redis_url) as redis:
                replica = replicas.start("c1", _replica_env(url, redis_url, stream_name, "c1"))
                expected = await _publish_signals(redis, stream_name, run, range(10))
                await _until(
                    lambda: len(app.received) >= 10,
                    what="the first 10",
                    details=details,
                    timeout_s=30,
                    watch=[replica],
                )
        await asyncio.sleep(1.0)
        with redis_server(port=port) as (redis_url, _):
            async with connect(redis_url) as redis:
                expected |= await _publish_signals(redis, stream_name, run, range(10, 20))
                await _until(
                    lambda: _drained(redis, stream_name),
                    what="the 10 signals published after the restart",
                    details=details,
                    timeout_s=15,
                    interval_s=0.1,
                    watch=[replica],
                )
                assert app.keys() == set(expected.values()), app.describe()
                await _stop(replica, replicas)


def _id(entry_id: bytes | str) -> tuple[int, int]:
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)
