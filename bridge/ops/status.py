"""``signal-bridge status``: each stream's group at a glance, as text or JSON."""

from __future__ import annotations

import argparse

import msgspec

from bridge.config.loader import BridgeConfig
from bridge.streams.connection import connect
from bridge.streams.group import signal_streams

__all__ = ["run_status"]


async def run_status(config: BridgeConfig, args: argparse.Namespace) -> int:
    """Print each stream's length, lag, pending, oldest pending age and dead letters."""
    async with connect(
        config.stream.redis_url,
        cluster=config.stream.cluster,
        password=config.stream.redis_password,
    ) as redis:
        statuses = [await stream.status() for stream in signal_streams(config.stream, redis)]
    if args.json:
        payload = statuses[0] if len(statuses) == 1 else statuses
        print(msgspec.json.encode(payload).decode())
        return 0
    for status in statuses:
        age = status.oldest_pending_age_ms
        print(f"stream        {status.stream} ({status.length} entries)")
        print(f"group         {status.group}")
        print(f"lag           {'unknown' if status.lag is None else status.lag}")
        print(f"pending       {status.pending}")
        print(f"oldest        {'-' if age is None else f'{age / 1000:.1f}s'}")
        print(f"dead letters  {status.dead_letters} in {config.stream.dlq_for(status.stream)}")
        if status.dead_letter_error:
            print(f"PROBLEM       {status.dead_letter_error}")
        for consumer in status.consumers:
            print(
                f"  consumer {consumer.name}: {consumer.pending} pending, "
                f"idle {consumer.idle_ms} ms"
            )
    return 0
