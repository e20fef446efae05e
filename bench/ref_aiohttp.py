"""Fast reference bridge: asyncio + redis.asyncio (hiredis) + ``aiohttp.ClientSession``.

One reader task pulls XREADGROUP batches (COUNT 100) into a bounded queue, so the next batch is
already fetched while the current one is being delivered; 32 worker tasks sign and POST over one
keep-alive connection pool (limit 32); acknowledgements are gathered and sent as one multi-id
XACK per batch (or sooner when the queue runs dry, so that a trickle is acked at once).

The event loop is uvloop when it is installed (``--loop auto``; ``--loop asyncio`` forces the
stdlib loop), as a competent engineer would run it when the project ships uvloop anyway.

Run: ``.venv/bin/python -m bench.ref_aiohttp --help`` (flags default to signal-bridge's env
vars). Prints one JSON line of stats on exit (count, seconds, cpu_seconds, peak_rss_mb).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import importlib.util
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import msgspec
import redis.asyncio as aioredis
import redis.exceptions
from yarl import URL

from bench.common import (
    INGEST_PATH,
    SIGNAL_FIELD,
    BridgeConfig,
    BridgeStats,
    Signal,
    canonical_json,
    parse_bridge_args,
    signed_headers,
)

USER_AGENT = "bench-ref-aiohttp/1.0"
MAX_ATTEMPTS = 3
DRAIN_TIMEOUT_S = 10.0

Entry = tuple[bytes, dict[bytes, bytes]]


class AiohttpBridge:
    """The reader, the worker pool and the ack batcher of the fast reference bridge."""

    def __init__(self, cfg: BridgeConfig) -> None:
        self.cfg = cfg
        self.stats = BridgeStats(bridge="aiohttp")
        self.stop = asyncio.Event()
        self.queue: asyncio.Queue[Entry] = asyncio.Queue(maxsize=2 * cfg.batch)
        self.acks: list[bytes] = []
        self.outstanding = 0
        self.url = URL(cfg.server_url + INGEST_PATH)
        self.decoder = msgspec.json.Decoder(Signal)
        self.redis: aioredis.Redis = aioredis.Redis.from_url(cfg.redis_url)

    async def ensure_group(self) -> None:
        """Create the consumer group (and stream) unless it already exists."""
        try:
            await self.redis.xgroup_create(
                self.cfg.stream, self.cfg.group, id=self.cfg.start_id, mkstream=True
            )
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    async def flush_acks(self) -> None:
        """Acknowledge every delivered entry gathered so far with one XACK."""
        if not self.acks:
            return
        ids, self.acks = self.acks, []
        await self.redis.xack(self.cfg.stream, self.cfg.group, *ids)

    async def deliver(
        self, session: aiohttp.ClientSession, entry_id: str, body: bytes, signal_id: str | None
    ) -> bool:
        """POST one signed signal, retrying transient failures; True when the server took it."""
        cfg = self.cfg
        for attempt in range(MAX_ATTEMPTS):
            headers = signed_headers(cfg, USER_AGENT, entry_id, body, signal_id)
            try:
                async with session.post(self.url, data=body, headers=headers) as response:
                    status = response.status
                    await response.read()
            except (aiohttp.ClientError, TimeoutError) as exc:
                print(f"ref_aiohttp: POST {entry_id} failed: {exc!r}", file=sys.stderr)
            else:
                if status in (200, 201):
                    return True
                print(f"ref_aiohttp: POST {entry_id} -> {status}", file=sys.stderr)
                if status < 500 and status not in (408, 429):
                    return False
            await asyncio.sleep(0.05 * (attempt + 1))
        return False

    async def worker(self, session: aiohttp.ClientSession) -> None:
        """Take entries off the queue, deliver them and queue their acks."""
        stats = self.stats
        while True:
            raw_id, fields = await self.queue.get()
            try:
                try:
                    signal = self.decoder.decode(fields[SIGNAL_FIELD])
                    body = canonical_json(signal)
                except (KeyError, msgspec.ValidationError, msgspec.DecodeError) as exc:
                    print(
                        f"ref_aiohttp: dropping invalid entry {raw_id!r}: {exc!r}", file=sys.stderr
                    )
                    stats.invalid += 1
                    self.acks.append(raw_id)
                else:
                    if await self.deliver(session, raw_id.decode(), body, signal.signal_id):
                        self.acks.append(raw_id)
                        stats.count += 1
                        stats.mark()
                    else:
                        stats.failed += 1
                if len(self.acks) >= self.cfg.batch or self.queue.empty():
                    await self.flush_acks()
                if self.cfg.count and stats.count >= self.cfg.count:
                    self.stop.set()
            finally:
                self.outstanding -= 1
                self.queue.task_done()

    async def reader(self) -> None:
        """Fetch batches with XREADGROUP and feed the queue until stopped or idle."""
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
                idle = time.monotonic() - last_seen
                quiet = self.outstanding == 0 and idle >= cfg.idle_exit
                if cfg.idle_exit and self.stats.count and quiet:
                    return
                continue
            last_seen = time.monotonic()
            for entry in reply[0][1]:
                read += 1
                self.outstanding += 1
                await self.queue.put(entry)

    async def run(self) -> BridgeStats:
        """Run until SIGTERM/SIGINT, the count target or the idle timeout; then drain and ack."""
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self.stop.set)
        await self.ensure_group()
        connector = aiohttp.TCPConnector(limit=self.cfg.concurrency, ttl_dns_cache=None)
        timeout = aiohttp.ClientTimeout(total=10.0)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            workers = [
                asyncio.create_task(self.worker(session)) for _ in range(self.cfg.concurrency)
            ]
            # The reader returns on stop (within one BLOCK period), idle timeout or count target;
            # it is not cancelled, so no entry it has read is lost between Redis and the queue.
            await self.reader()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.queue.join(), DRAIN_TIMEOUT_S)
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        await self.flush_acks()
        await self.redis.aclose()
        return self.stats


def loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """Return uvloop's loop factory for ``uvloop`` (or ``auto`` when installed), else None."""
    if choice == "asyncio" or (choice == "auto" and not importlib.util.find_spec("uvloop")):
        return None
    uvloop: Any = importlib.import_module("uvloop")
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def main(argv: list[str] | None = None) -> None:
    """Run the aiohttp bridge and print its stats as JSON."""
    cfg = parse_bridge_args("Fast reference bridge (asyncio + redis.asyncio + aiohttp).", argv)
    factory = loop_factory(cfg.loop)
    bridge = AiohttpBridge(cfg)
    bridge.stats.extra["loop"] = "asyncio" if factory is None else "uvloop"
    with asyncio.Runner(loop_factory=factory) as runner:
        stats = runner.run(bridge.run())
    print(stats.report(), flush=True)


if __name__ == "__main__":
    main()
