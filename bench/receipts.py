"""What receipts cost Redis: memory per 100,000 receipts, and the ack script's time per burst.

Fills a stream with ``--entries`` pending entries, then acks them in bursts of ``--burst``
exactly as the worker does with ``BRIDGE_RECEIPTS=true`` (one ``ack_receipts`` script call per
burst, realistic receipt fields), and once more with the plain XACK for comparison. Reports the
receipts stream's ``MEMORY USAGE`` and the growth of ``used_memory``, scaled to 100,000 receipts,
and the median script call. Runs on a private redis-server::

    .venv/bin/python -m bench.receipts --entries 100000 --burst 100
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from typing import Any

import redis.asyncio as aioredis

from bridge.devkit.embedded import redis_server
from bridge.streams.group import SignalStream
from bridge.streams.receipt_writer import ReceiptWriter
from bridge.streams.receipts import ReceiptPolicy, receipt_fields, receipts_stream

_BODY = b'{"instrument":"XAUUSD","side":"buy","entry_price":2000.5}' + b" " * 180


async def _fill(client: Any, key: str, entries: int) -> list[str]:  # noqa: ANN401 - redis-py
    """XADD ``entries`` entries, read them into group ``g``; return their ids."""
    for start in range(0, entries, 10_000):
        async with client.pipeline(transaction=False) as pipe:
            for _ in range(start, min(entries, start + 10_000)):
                pipe.xadd(key, {"signal": _BODY})
            await pipe.execute()
    await client.xgroup_create(key, "g", id="0")
    ids: list[str] = []
    while len(ids) < entries:
        reply = await client.xreadgroup("g", "c1", {key: ">"}, count=10_000)
        if not reply:
            break
        ids += [i.decode() for i, _ in reply[0][1]]
    return ids


def _receipt(entry_id: str, stream: str, n: int) -> list[str]:
    """Build a receipt as the worker writes one for an accepted signal."""
    return receipt_fields(
        entry_id=entry_id,
        stream=stream,
        outcome="accepted",
        signal_id=f"strategy-7-{n:09d}",
        idempotency_key=str(uuid.uuid4()),
        http_status=201,
        server_signal_id=f"srv_{uuid.uuid4().hex[:16]}",
        attempts=1,
        first_attempt_at=time.time(),
        trace_id=uuid.uuid4().hex,
        consumer="bridge-7f9c-1",
    )


async def _run(url: str, entries: int, burst: int) -> dict[str, float]:
    client: Any = aioredis.Redis.from_url(url)
    try:
        key = f"bench:receipts:{uuid.uuid4().hex[:6]}"
        ids = await _fill(client, key, entries)
        stream = SignalStream(client, stream=key, group="g", consumer="c1", dlq_stream=f"{key}:d")
        writer = ReceiptWriter(
            stream, ReceiptPolicy(receipts_stream(key), maxlen=max(entries * 2, 100_000))
        )
        items = [(entry_id, _receipt(entry_id, key, n)) for n, entry_id in enumerate(ids)]
        before = int((await client.info("memory"))["used_memory"])
        calls: list[float] = []
        for start in range(0, len(items), burst):
            began = time.perf_counter()
            await writer.ack(items[start : start + burst])
            calls.append((time.perf_counter() - began) * 1000)
        after = int((await client.info("memory"))["used_memory"])
        usage = int(await client.memory_usage(receipts_stream(key), samples=0))
        written = int(await client.xlen(receipts_stream(key)))

        plain_key = f"{key}:plain"
        plain_ids = await _fill(client, plain_key, entries)
        plain_stream = SignalStream(
            client, stream=plain_key, group="g", consumer="c1", dlq_stream=f"{plain_key}:d"
        )
        plain: list[float] = []
        for start in range(0, len(plain_ids), burst):
            began = time.perf_counter()
            await plain_stream.ack(plain_ids[start : start + burst])
            plain.append((time.perf_counter() - began) * 1000)
        scale = 100_000 / max(written, 1)
        return {
            "receipts": written,
            "memory_usage_mb_per_100k": usage * scale / 1e6,
            "used_memory_growth_mb_per_100k": (after - before) * scale / 1e6,
            "bytes_per_receipt": usage / max(written, 1),
            "script_call_ms_median": statistics.median(calls),
            "plain_xack_ms_median": statistics.median(plain),
        }
    finally:
        await client.aclose()


def main(argv: list[str] | None = None) -> None:
    """Run the measurement on a private redis-server and print one Markdown table row."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument(
        "--burst", type=int, default=100, help="entries per ack (BRIDGE_BATCH_SIZE)"
    )
    args = parser.parse_args(argv)
    with redis_server() as (url, _):
        result = asyncio.run(_run(url, args.entries, args.burst))
    print(
        "| receipts | MEMORY USAGE per 100k | used_memory growth per 100k | bytes/receipt "
        "| ack+receipts script per burst (median) | plain XACK per burst (median) |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    print(
        f"| {result['receipts']:,.0f} | {result['memory_usage_mb_per_100k']:.1f} MB "
        f"| {result['used_memory_growth_mb_per_100k']:.1f} MB | {result['bytes_per_receipt']:.0f} "
        f"| {result['script_call_ms_median']:.2f} ms | {result['plain_xack_ms_median']:.2f} ms |"
    )


if __name__ == "__main__":
    main()
