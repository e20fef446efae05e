"""Ordered reference bridge: the aiohttp reference doing the bridge's job, in order per instrument.

The same reader (XREADGROUP COUNT 100, bounded), the same signing, POST, retries and batched
multi-id XACK as ``bench/ref_aiohttp.py``, but each instrument has one POST in flight at a time:
entries are decoded as they are read and appended to their instrument's lane; one task per busy
lane delivers its entries one after the other and ends when the lane is empty. Entries held in
lanes are bounded (``2 * batch``), so a one-instrument backlog does not pile up in memory.
Connections: one keep-alive pool (limit ``--concurrency``), as in the unordered reference.

Run: ``.venv/bin/python -m bench.ref_aiohttp_ordered --help``. Prints one JSON line of stats.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
import time
from collections import deque
from typing import Any

import aiohttp
import msgspec

from bench.common import SIGNAL_FIELD, BridgeStats, canonical_json, parse_bridge_args
from bench.ref_aiohttp import DRAIN_TIMEOUT_S, AiohttpBridge, loop_factory

__all__ = ["OrderedAiohttpBridge", "main"]

# (entry id, decoded body, signal_id) waiting in an instrument's lane.
Job = tuple[bytes, bytes, str | None]


class OrderedAiohttpBridge(AiohttpBridge):
    """The aiohttp reference with one POST in flight per instrument."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401
        super().__init__(*args, **kwargs)
        self.stats = BridgeStats(bridge="aiohttp-ordered")
        self.lanes: dict[str, deque[Job]] = {}
        self.room = asyncio.Semaphore(2 * self.cfg.batch)
        self.lane_tasks: set[asyncio.Task[None]] = set()
        self.idle = asyncio.Event()
        self.idle.set()

    async def lane(self, session: aiohttp.ClientSession, instrument: str) -> None:
        """Deliver one instrument's entries in order until its lane is empty."""
        jobs = self.lanes[instrument]
        stats = self.stats
        try:
            while jobs:
                raw_id, body, signal_id = jobs[0]
                if await self.deliver(session, raw_id.decode(), body, signal_id):
                    self.acks.append(raw_id)
                    stats.count += 1
                    stats.mark()
                else:
                    stats.failed += 1
                jobs.popleft()
                self.outstanding -= 1
                self.room.release()
                if len(self.acks) >= self.cfg.batch or self.outstanding == 0:
                    await self.flush_acks()
                if self.cfg.count and stats.count >= self.cfg.count:
                    self.stop.set()
        finally:
            del self.lanes[instrument]
            if not self.lanes:
                self.idle.set()

    def admit(
        self, session: aiohttp.ClientSession, raw_id: bytes, fields: dict[bytes, bytes]
    ) -> None:
        """Decode one entry and append it to its instrument's lane (starting the lane's task)."""
        try:
            signal = self.decoder.decode(fields[SIGNAL_FIELD])
            body = canonical_json(signal)
        except (KeyError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            print(
                f"ref_aiohttp_ordered: dropping invalid entry {raw_id!r}: {exc!r}", file=sys.stderr
            )
            self.stats.invalid += 1
            self.acks.append(raw_id)
            self.outstanding -= 1
            self.room.release()
            return
        jobs = self.lanes.get(signal.instrument)
        if jobs is not None:
            jobs.append((raw_id, body, signal.signal_id))
            return
        self.lanes[signal.instrument] = deque([(raw_id, body, signal.signal_id)])
        self.idle.clear()
        task = asyncio.create_task(self.lane(session, signal.instrument))
        self.lane_tasks.add(task)
        task.add_done_callback(self.lane_tasks.discard)

    async def read_into_lanes(self, session: aiohttp.ClientSession) -> None:
        """Fetch batches with XREADGROUP into the lanes until stopped, idle or at the count."""
        cfg = self.cfg
        read = 0
        last_seen = time.monotonic()
        while not self.stop.is_set():
            want = cfg.batch if not cfg.count else min(cfg.batch, cfg.count - read)
            if want <= 0:
                return
            reply: Any = await self.redis.xreadgroup(
                cfg.group, cfg.consumer, {cfg.stream: ">"}, count=want, block=200
            )
            if not reply:
                await self.flush_acks()
                idle = time.monotonic() - last_seen >= cfg.idle_exit
                if cfg.idle_exit and self.stats.count and self.outstanding == 0 and idle:
                    return
                continue
            last_seen = time.monotonic()
            for raw_id, fields in reply[0][1]:
                await self.room.acquire()
                read += 1
                self.outstanding += 1
                self.admit(session, raw_id, fields)

    async def run(self) -> BridgeStats:
        """Run until SIGTERM/SIGINT, the count target or the idle timeout; then drain and ack."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        await self.ensure_group()
        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await self.read_into_lanes(session)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), DRAIN_TIMEOUT_S)
            for task in list(self.lane_tasks):
                task.cancel()
            await asyncio.gather(*self.lane_tasks, return_exceptions=True)
        await self.flush_acks()
        await self.redis.aclose()
        return self.stats


def main(argv: list[str] | None = None) -> None:
    """Run the ordered aiohttp bridge and print its stats as JSON."""
    cfg = parse_bridge_args(
        "Ordered reference bridge (aiohttp, one in flight per instrument).", argv
    )
    factory = loop_factory(cfg.loop)
    bridge = OrderedAiohttpBridge(cfg)
    bridge.stats.extra["loop"] = "asyncio" if factory is None else "uvloop"
    with asyncio.Runner(loop_factory=factory) as runner:
        stats = runner.run(bridge.run())
    print(stats.report(), flush=True)


if __name__ == "__main__":
    main()
