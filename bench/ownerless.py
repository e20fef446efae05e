"""Worst ownerless time per shard while one replica's Redis commands arrive late (issue 20).

Three strict-ordering replicas in this process share 8 shards; replica r1 reaches Redis through
a delay proxy on loopback. After a calm start, every command r1 sends arrives ``--delay`` seconds
late (delayed, not lost) for ``--delay-for`` seconds, then on time again. Every 20 ms a sampler
asks each replica which shards it can work on (held, lease valid on its own clock, not being
released): a shard no replica can work on is ownerless, whether its lease key is absent or
held in Redis by a replica that has fenced itself.
It reports, per phase, the longest ownerless stretch of any shard, and the lease moves after the
delay ended (more than one move back per shard would be flapping).

    .venv/bin/python -m bench.ownerless                 # 3 s lease, 3 s delay for 20 s
    .venv/bin/python -m bench.ownerless --baseline      # the same without "not assignable"

``--baseline`` makes every replica always assignable (membership by heartbeats only, as before
issue 20), to show what the rule buys. Only 127.0.0.1; every loop is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Final

import redis.asyncio as aioredis

from bridge.app.runner import coordinator_settings
from bridge.config.loader import BridgeConfig, load_config
from bridge.delivery.fence import ShardFence
from bridge.delivery.worker import Worker
from bridge.devkit.embedded import redis_server
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.ownership.coordinator import Coordinator
from bridge.ownership.leases import LeaseStore, members_key
from bridge.streams.group import SignalStream
from tests.delay_proxy import delay_proxy

SECRET: Final = "bench-ownerless-secret"
SHARDS: Final = [f"bench:{{{i}}}" for i in range(8)]
_SAMPLE_S: Final = 0.02


def _config(server_url: str, redis_url: str, consumer: str, ttl_ms: int) -> BridgeConfig:
    return load_config(
        env={
            "HMAC_PRODUCER_SECRET": SECRET,
            "PRODUCER_ID": "bench",
            "OUTBOUND_SERVER_URL": server_url,
            "BRIDGE_REDIS_URL": redis_url,
            "BRIDGE_STREAMS": ",".join(SHARDS),
            "BRIDGE_GROUP": "g",
            "BRIDGE_CONSUMER": consumer,
            "BRIDGE_START_ID": "0",
            "BRIDGE_BLOCK_MS": str(ttl_ms // 6),
            "BRIDGE_LEASE_TTL_MS": str(ttl_ms),
            "BRIDGE_LEASE_RENEW_MS": str(ttl_ms // 3),
            "BRIDGE_HEARTBEAT_TTL_MS": str(ttl_ms),
            "BRIDGE_SHUTDOWN_GRACE_SECONDS": "1",
            "BRIDGE_HEALTH_PORT": "0",
        }
    )


@contextlib.asynccontextmanager
async def _replica(redis_url: str, config: BridgeConfig) -> AsyncIterator[Coordinator]:
    cfg = config.stream
    redis = aioredis.Redis.from_url(redis_url, socket_timeout=30, socket_connect_timeout=30)
    streams = [
        SignalStream(redis, stream=n, group=cfg.group, consumer=cfg.consumer, dlq_stream=f"{n}:d")
        for n in cfg.stream_names()
    ]
    async with HmacClient(config.outbound) as client:

        def make_worker(stream: SignalStream, fence: ShardFence | None) -> Worker:
            return Worker(stream, client, cfg, fence=fence)

        store = LeaseStore(redis, group="g", members_key=members_key(cfg.stream_names(), "g"))
        coordinator = Coordinator(store, streams, coordinator_settings(cfg), make_worker)
        task = asyncio.create_task(coordinator.run())
        try:
            yield coordinator
        finally:
            coordinator.stop()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(task, 30)
            await redis.aclose()


@dataclass
class _Sampler:
    """Samples every shard's lease holder; keeps ownerless stretches and holder changes."""

    replicas: list[Coordinator]
    phase: str = "calm"
    worst: dict[str, dict[str, float]] = field(default_factory=dict)  # phase -> shard -> s
    moves: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> shard -> count
    _since: dict[str, float] = field(default_factory=dict)
    _holder: dict[str, str | None] = field(default_factory=dict)

    async def run(self, until: float) -> None:
        while time.monotonic() < until:
            now = time.monotonic()
            for shard in SHARDS:
                self._note(shard, self._working_on(shard), now)
            await asyncio.sleep(_SAMPLE_S)
        for shard in SHARDS:
            self._note(shard, "end", time.monotonic())

    def _working_on(self, shard: str) -> str | None:
        """Return the replica that can work on ``shard`` now, or None."""
        for replica in self.replicas:
            owned = replica.owned.get(shard)
            if owned is not None and not owned.releasing and owned.lease.valid(replica.clock()):
                return replica.member
        return None

    def _note(self, shard: str, holder: str | None, now: float) -> None:
        if holder is None:
            self._since.setdefault(shard, now)
        elif shard in self._since:
            gap = now - self._since.pop(shard)
            row = self.worst.setdefault(self.phase, {})
            row[shard] = max(row.get(shard, 0.0), gap)
        previous = self._holder.get(shard, holder)
        if holder is not None and holder != "end" and previous not in (None, holder):
            moves = self.moves.setdefault(self.phase, {})
            moves[shard] = moves.get(shard, 0) + 1
        if holder is not None:
            self._holder[shard] = holder


async def _measure(args: argparse.Namespace) -> dict[str, Any]:
    ttl_ms = args.ttl_ms
    app = IngestApp(secrets={"default": SECRET.encode()})
    with redis_server() as (redis_url, _), serve_in_thread(app) as server_url:
        sampler = _Sampler([])
        async with delay_proxy(redis_url) as slow:
            slow_url = slow.url("redis")
            async with contextlib.AsyncExitStack() as stack:
                sampler.replicas.append(
                    await stack.enter_async_context(
                        _replica(slow_url, _config(server_url, slow_url, "r1", ttl_ms))
                    )
                )
                for name in ("r2", "r3"):
                    sampler.replicas.append(
                        await stack.enter_async_context(
                            _replica(redis_url, _config(server_url, redis_url, name, ttl_ms))
                        )
                    )
                start = time.monotonic()
                calm_end = start + args.calm
                delay_end = calm_end + args.delay_for
                end = delay_end + args.after
                sampling = asyncio.create_task(sampler.run(end))
                await asyncio.sleep(max(0.0, calm_end - time.monotonic()))
                sampler.phase = "delayed"
                slow.delay_s = args.delay
                await asyncio.sleep(max(0.0, delay_end - time.monotonic()))
                sampler.phase = "after"
                slow.delay_s = 0.0
                await sampling
    worst = {
        phase: round(max(row.values(), default=0.0), 2) for phase, row in sampler.worst.items()
    }
    return {
        "baseline": args.baseline,
        "lease_ttl_s": ttl_ms / 1000,
        "delay_s": args.delay,
        "delay_for_s": args.delay_for,
        "worst_ownerless_s": worst,
        "worst_ownerless_per_shard_s": {
            phase: {s: round(v, 2) for s, v in sorted(row.items())}
            for phase, row in sampler.worst.items()
        },
        "lease_moves": {phase: sum(row.values()) for phase, row in sampler.moves.items()},
        "lease_moves_after_per_shard_max": max(sampler.moves.get("after", {}).values(), default=0),
    }


def main() -> None:
    """Run the measurement and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--ttl-ms", type=int, default=3000, help="lease TTL (renew = TTL/3)")
    parser.add_argument("--delay", type=float, default=3.0, help="r1's Redis delay, seconds")
    parser.add_argument("--delay-for", type=float, default=20.0, help="how long, seconds")
    parser.add_argument("--calm", type=float, default=5.0, help="seconds before the delay")
    parser.add_argument("--after", type=float, default=15.0, help="seconds after the delay")
    parser.add_argument("--baseline", action="store_true", help="replicas always assignable")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.baseline:
        Coordinator.assignable = property(lambda self: True)  # type: ignore[assignment,method-assign]
    print(json.dumps(asyncio.run(_measure(args)), indent=2))


if __name__ == "__main__":
    main()
