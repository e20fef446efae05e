"""Strict ordering with real processes: replicas killed, frozen and joining over eight shards.

Replicas are ``signal-bridge run`` child processes (tests/procs.py) with short lease timings; the
reference ingest server runs in a thread of the test with random latency and random 503s. What
counts is what the server stored: every signal once, and each instrument in publish order.
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
import uuid
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import pytest
import redis.asyncio as aioredis

from bridge.delivery.jobs import idempotency_key
from bridge.devkit.ingest import IngestApp, Receive, Scope, Send, serve_in_thread
from bridge.ownership.leases import LeaseStore, members_key
from bridge.streams.producer import publish
from tests.procs import Replicas
from tests.support import KEY_ID, SECRET, bridge_env, eventually, make_signal

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SHARDS: Final = 8
INSTRUMENTS: Final = 24
SIGNALS: Final = 900
PUBLISH_RATE_HZ: Final = 75.0
LEASE_TTL_MS: Final = 1200
LEASES: Final = {
    "BRIDGE_LEASE_TTL_MS": str(LEASE_TTL_MS),
    "BRIDGE_LEASE_RENEW_MS": "200",
    "BRIDGE_HEARTBEAT_TTL_MS": str(LEASE_TTL_MS),
}
EXIT_TIMEOUT_S: Final = 15.0


@dataclass
class JitteryIngest(IngestApp):
    """The reference server with 0-8 ms of random latency and a 10% chance of a 503."""

    rng: random.Random = field(default_factory=lambda: random.Random(9))  # noqa: S311 - test noise
    answered_503: int = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Wait a random moment, then serve (or refuse) the request."""
        if scope["type"] == "http":
            await asyncio.sleep(self.rng.uniform(0, 0.008))
        await super().__call__(scope, receive, send)

    def refuse_sometimes(self, headers: Mapping[str, str]) -> int | None:
        """The fault hook: 503 one request in ten."""
        del headers
        if self.rng.random() < 0.1:
            self.answered_503 += 1
            return 503
        return None


def _env(url: str, redis_url: str, shards: list[str], name: str) -> dict[str, str]:
    return bridge_env(
        url,
        redis_url,
        shards[0],
        BRIDGE_STREAMS=",".join(shards),
        BRIDGE_CONSUMER=name,
        # One deployment, one producer id: the server scopes idempotency keys by it, so a
        # signal redelivered by another replica after a takeover is a duplicate, not a trade.
        PRODUCER_ID="producer-strict",
        BRIDGE_ORDERING="strict",
        BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
        BRIDGE_SHUTDOWN_GRACE_SECONDS="3",
        BRIDGE_LOG_LEVEL="INFO",
        **LEASES,
    )


async def _holders(store: LeaseStore, shards: list[str]) -> dict[str, str | None]:
    """Shard -> consumer name holding its lease (None when free)."""
    out: dict[str, str | None] = {}
    for shard in shards:
        value = await store.holder(shard)
        out[shard] = value.split(" ")[1] if value else None
    return out


def _inversions(app: IngestApp) -> list[str]:
    """Signals the server stored after a later signal of the same instrument, described."""
    last: dict[str, tuple[int, str, float]] = {}
    found: list[str] = []
    for record in app.received:
        seq = int((record.signal.signal_id or "x-0").rsplit("-", 1)[1])
        before = last.get(record.signal.instrument)
        if before is not None and seq < before[0]:
            found.append(
                f"{record.signal.instrument}: #{seq} by {record.producer_id} at "
                f"{record.received_at:.3f} after #{before[0]} by {before[1]} at {before[2]:.3f}"
            )
        if before is None or seq > before[0]:
            last[record.signal.instrument] = (seq, record.producer_id, record.received_at)
    return found


@pytest.mark.timeout(300)  # ~30 s alone; process start-up is slow on a loaded 2-core runner
async def test_strict_replicas_keep_order_through_kill_freeze_and_join(
    redis: aioredis.Redis, redis_url: str, tmp_path: Path
) -> None:
    """3 replicas, 8 shards, 503s: SIGKILL one, SIGSTOP one past its lease, add one: in order."""
    run = uuid.uuid4().hex[:8]
    shards = [f"strict:{run}:{{{i}}}" for i in range(SHARDS)]
    store = LeaseStore(redis, group="g", members_key=members_key(shards, "g"))
    app = JitteryIngest(secrets={KEY_ID: SECRET.encode()})
    app.fault = app.refuse_sometimes
    expected: set[str] = set()
    report: dict[str, float] = {}

    async def publisher() -> None:
        started = time.monotonic()
        for i in range(SIGNALS):
            item = make_signal(i, instrument=f"SYM{i % INSTRUMENTS:02d}", signal_id=f"{run}-{i}")
            expected.add(idempotency_key("", "", item.signal_id))
            await publish(redis, item, stream=shards)
            delay = started + (i + 1) / PUBLISH_RATE_HZ - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)

    with serve_in_thread(app) as url, Replicas(tmp_path) as replicas:

        def details() -> str:
            return (
                f"server: {len(app.received)} stored of {len(expected)}, 503s {app.answered_503}, "
                f"refusals {app.refusals}\n{replicas.output()}"
            )

        async def spread(names: set[str]) -> bool:
            holders = await _holders(store, shards)
            counts = Counter(holders.values())
            return set(counts) == names and all(counts[n] >= 2 for n in names)

        async def until(check: object, what: str, timeout_s: float) -> float:
            started = time.monotonic()
            try:
                await eventually(check, timeout_s=timeout_s, what=what)  # type: ignore[arg-type]
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{details()}") from None
            return time.monotonic() - started

        r0, r1, r2 = (
            replicas.start(n, _env(url, redis_url, shards, n)) for n in ("r0", "r1", "r2")
        )
        await until(lambda: spread({"r0", "r1", "r2"}), "8 shards over 3 replicas", 60)
        publishing = asyncio.create_task(publisher())
        try:
            await asyncio.sleep(2.0)
            # SIGKILL r0: its shards wait for the lease TTL, then the survivors take them over.
            lost = {s for s, h in (await _holders(store, shards)).items() if h == "r0"}
            r0.send(signal.SIGKILL)
            report["sigkill_takeover_s"] = await until(
                lambda: _taken(store, lost, {"r1", "r2"}), "r0's shards taken over", 10
            )
            # SIGSTOP r1 past its lease: r2 takes everything; r1 wakes up fenced and rejoins.
            frozen = {s for s, h in (await _holders(store, shards)).items() if h == "r1"}
            r1.send(signal.SIGSTOP)
            report["sigstop_takeover_s"] = await until(
                lambda: _taken(store, frozen, {"r2"}), "r1's shards taken while it is frozen", 10
            )
            await asyncio.sleep(0.5)
            r1.send(signal.SIGCONT)
            # A new replica joins: shards spread over r1, r2 and r3.
            r3 = replicas.start("r3", _env(url, redis_url, shards, "r3"))
            report["join_rebalance_s"] = await until(
                lambda: spread({"r1", "r2", "r3"}), "8 shards over r1, r2, r3", 60
            )
            await asyncio.wait_for(publishing, 30)
        finally:
            publishing.cancel()
        await until(lambda: app.keys() == expected, "every signal stored", 30)
        keys = Counter(r.idempotency_key for r in app.received)
        assert len(app.received) == SIGNALS, f"accepted twice: {keys.most_common(3)}"
        inversions = _inversions(app)
        assert inversions == [], f"{inversions}\n{details()}"
        assert app.answered_503 > 0
        for replica in (r1, r2, r3):
            assert replica.alive, details()
        report["takeovers_with_pending"] = sum(
            r.stdout().count('"shard taken over"') for r in (r1, r2, r3)
        )
        for replica in (r1, r2, r3):
            replica.send(signal.SIGTERM)
        for replica in (r1, r2, r3):
            assert await replica.wait(EXIT_TIMEOUT_S) == 0, details()
        assert await _holders(store, shards) == dict.fromkeys(shards)  # all released
    print(  # the takeover times, for the closing note (pytest -s shows them)
        "strict e2e: "
        + ", ".join(f"{k}={v:.2f}" for k, v in report.items())
        + f", lease_ttl_s={LEASE_TTL_MS / 1000}, 503s={app.answered_503}"
    )
    assert report["sigkill_takeover_s"] < LEASE_TTL_MS / 1000 + 3


async def _taken(store: LeaseStore, shards: set[str], by: set[str]) -> bool:
    """Every one of ``shards`` is leased by one of ``by``."""
    holders = await _holders(store, sorted(shards))
    return all(holders[s] in by for s in shards)
