"""Isolation benchmark: one instrument's backlog answered 503, queued ahead of other instruments.

Publishes ``--bad`` signals of XAUUSD (the reference server answers them 503 for ``--fault-s``
seconds) and then ``--others`` signals spread over four other instruments, starts one Worker with
default settings, and reports how many of the others reach the server within ``--window-s`` and
when 25/50/100% of them had arrived. Everything runs on loopback: a private ``redis-server`` on a
free port and the reference ingest server in a thread.

Run from the repo root: ``.venv/bin/python -m bench.isolation`` (``--help`` for the knobs). To
measure another tree (e.g. ``git archive main bridge bench | tar -x -C /tmp/base``), run the same
command with this venv's python from that tree's root: ``-m`` puts the current directory first.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Final

import redis.asyncio as aioredis

from bridge.config.loader import load_config
from bridge.core.signal import Signal
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.devkit.embedded import redis_server
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish

__all__ = ["main"]

SECRET: Final = b"bench-secret-0123456789abcdef"
STREAM: Final = "bench:isolation"
BAD: Final = "XAUUSD"
OTHERS: Final = ("EURUSD", "BTCUSD", "US500", "GBPJPY")


def _signal(instrument: str, signal_id: str) -> Signal:
    """Build a valid buy signal stamped now."""
    return Signal(
        instrument=instrument,
        side="buy",
        entry_price=100.0,
        take_profit=110.0,
        stop_loss=95.0,
        risk_percent=1.0,
        comment="bench",
        strategy_name="bench-isolation",
        timestamp=datetime.now(UTC),
        signal_id=signal_id,
    )


async def _run(args: argparse.Namespace, redis_url: str, app: IngestApp, server_url: str) -> str:
    """Publish, run one worker, and describe how the other instruments fared."""
    redis = aioredis.Redis.from_url(redis_url)
    bad = [_signal(BAD, f"bad-{i}") for i in range(args.bad)]
    keys = {idempotency_key(STREAM, "", s.signal_id) for s in bad}
    heal_at = time.time() + args.fault_s

    def fault(headers: Mapping[str, str]) -> int | None:
        return 503 if headers.get("x-idempotency-key") in keys and time.time() < heal_at else None

    app.fault = fault
    others = [_signal(OTHERS[i % len(OTHERS)], f"ok-{i}") for i in range(args.others)]
    for signal in bad + others:
        await publish(redis, signal, stream=STREAM)
    config = load_config(
        env={
            "HMAC_PRODUCER_SECRET": SECRET.decode(),
            "HMAC_PRODUCER_KEY_ID": "k1",
            "PRODUCER_ID": "bench",
            "OUTBOUND_SERVER_URL": server_url,
            "BRIDGE_REDIS_URL": redis_url,
            "BRIDGE_STREAM": STREAM,
            "BRIDGE_DLQ_STREAM": f"{STREAM}:dlq",
            "BRIDGE_GROUP": "g",
            "BRIDGE_CONSUMER": "bench-1",
            "BRIDGE_START_ID": "0",
            "BRIDGE_HEALTH_PORT": "0",
        }
    )
    stream = SignalStream(
        redis, stream=STREAM, group="g", consumer="bench-1", dlq_stream=f"{STREAM}:dlq"
    )
    marks: dict[int, float] = {}
    thresholds = [max(1, args.others * p // 100) for p in (25, 50, 100)]
    try:
        async with HmacClient(config.outbound) as client:
            worker = Worker(stream, client, config.stream)
            task = asyncio.create_task(worker.run())
            start = time.monotonic()
            count = 0
            while time.monotonic() - start < args.window_s and count < args.others:
                await asyncio.sleep(0.02)
                count = sum(1 for r in list(app.received) if r.signal.instrument != BAD)
                for mark in thresholds:
                    if count >= mark and mark not in marks:
                        marks[mark] = time.monotonic() - start
            worker.stop()
            await asyncio.wait_for(task, 60)
    finally:
        await redis.aclose()
    reached = ", ".join(f"{m}: {marks.get(m, math.nan):.2f} s" for m in thresholds)
    return (
        f"{args.bad} {BAD} signals answered 503 for {args.fault_s:g} s ahead of "
        f"{args.others} others: {count}/{args.others} others delivered within "
        f"{args.window_s:g} s; reached {reached}"
    )


def main(argv: list[str] | None = None) -> None:
    """Parse the knobs, start Redis and the reference server, run once, print one line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bad", type=int, default=60, help="signals of the failing instrument")
    parser.add_argument("--others", type=int, default=500, help="signals of other instruments")
    parser.add_argument("--fault-s", type=float, default=30.0, help="how long the 503s last")
    parser.add_argument("--window-s", type=float, default=20.0, help="how long to watch")
    args = parser.parse_args(argv)
    logging.disable(logging.CRITICAL)  # retries log a WARNING each; the result is one line
    app = IngestApp(secrets={"k1": SECRET})
    with redis_server() as (redis_url, _), serve_in_thread(app) as server_url:
        print(asyncio.run(_run(args, redis_url, app, server_url)))


if __name__ == "__main__":
    main()
