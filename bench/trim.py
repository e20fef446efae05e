"""How long BRIDGE_TRIM_ACKED holds Redis: the trim script on acked backlogs of N entries.

The script (``SignalStream.trim_acked``) runs inside Redis and blocks it while it runs; each call
removes at most ``--chunk`` entries (whole nodes), and a pass calls it until nothing is left.
Reports the longest single call (what other clients may wait) and the whole pass. Runs on a
private redis-server::

    .venv/bin/python -m bench.trim --entries 45000,500000 --groups 1,4
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

import redis.asyncio as aioredis

from bridge.devkit.embedded import redis_server
from bridge.streams.group import SignalStream

_BODY = b'{"instrument":"XAUUSD","side":"buy","entry_price":2000.5}' + b" " * 180


async def _one(
    url: str, entries: int, groups: int, repeat: int, chunk: int
) -> list[tuple[float, float]]:
    """Fill, read and ack ``entries`` in ``groups`` groups, then time one pass; ``repeat`` times.

    Returns (longest call ms, whole pass ms) per run.
    """
    client: Any = aioredis.Redis.from_url(url)  # redis-py's reply types are loose
    timings: list[tuple[float, float]] = []
    try:
        for run in range(repeat):
            key = f"bench:trim:{entries}:{groups}:{run}"
            for start in range(0, entries, 10_000):
                async with client.pipeline(transaction=False) as pipe:
                    for _ in range(min(10_000, entries - start)):
                        pipe.xadd(key, {"signal": _BODY})
                    await pipe.execute()
            for g in range(groups):
                await client.xgroup_create(key, f"g{g}", id="0")
                # Read everything, then ack it: XACK of a range via the ids read.
                while True:
                    reply = await client.xreadgroup(f"g{g}", "c", {key: ">"}, count=10_000)
                    if not reply:
                        break
                    ids = [entry_id for entry_id, _ in reply[0][1]]
                    await client.xack(key, f"g{g}", *ids)
            stream = SignalStream(client, stream=key, group="g0", consumer="c", dlq_stream="x")
            calls: list[float] = []
            trimmed = 0
            while True:
                began = time.perf_counter()
                result = await stream.trim_acked(chunk)
                calls.append((time.perf_counter() - began) * 1000)
                trimmed += result.trimmed
                if not result.trimmed:
                    break
            assert trimmed == entries, (trimmed, entries)
            timings.append((max(calls), sum(calls)))
            await client.delete(key)
    finally:
        await client.aclose()
    return timings


def main() -> None:
    """Print one table row per (entries, groups): medians of the longest call and of the pass."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--entries", default="45000,500000")
    parser.add_argument("--chunk", type=int, default=10_000)
    parser.add_argument("--groups", default="1,4")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    print("| acked entries trimmed | groups | longest call ms | whole pass ms | calls |")
    print("| --- | --- | --- | --- | --- |")
    with redis_server() as (url, _):
        for entries in (int(n) for n in args.entries.split(",")):
            for groups in (int(n) for n in args.groups.split(",")):
                timings = asyncio.run(_one(url, entries, groups, args.repeat, args.chunk))
                longest = statistics.median(t[0] for t in timings)
                whole = statistics.median(t[1] for t in timings)
                calls = -(-entries // args.chunk) + 1
                print(f"| {entries:,} | {groups} | {longest:.1f} | {whole:.1f} | ~{calls} |")


if __name__ == "__main__":
    main()
