"""``signal-bridge receipts tail`` and the receipt lines of ``publish --wait``.

``tail`` prints the receipts of every configured stream, oldest first (``--follow`` keeps
waiting for new ones, ``--outcome`` keeps one outcome, ``--json`` one JSON object a line). Text
output escapes what a terminal would act on, as ``dlq`` does: a receipt repeats a signal id and
an error from the entry, which a producer wrote.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from typing import Any, Final

import msgspec

from bridge.ops.dlq import shown
from bridge.streams.receipts import OUTCOMES, Receipt, receipts

__all__ = ["EXIT_NO_RECEIPT", "OUTCOMES", "receipt_line", "run_receipts_tail"]

# ``publish --wait``: no receipt within --timeout (0 all accepted or duplicates, 1 any not).
EXIT_NO_RECEIPT: Final = 3


def receipt_line(receipt: Receipt) -> str:
    """One receipt as a line: entry, outcome, signal and server ids, why, status, latency."""
    parts = [
        receipt.entry_id,
        f"{receipt.outcome:<13}",
        f"signal_id={shown(receipt.signal_id)}",
    ]
    if receipt.server_signal_id:
        parts.append(f"server_signal_id={shown(receipt.server_signal_id)}")
    if receipt.reason:
        parts.append(f"reason={shown(receipt.reason)}")
    if receipt.http_status is not None:
        parts.append(f"http={receipt.http_status}")
    if receipt.replay_of:
        parts.append(f"replay_of={shown(receipt.replay_of)}")
    parts.append(f"latency_ms={receipt.latency_ms}")
    if receipt.error:
        parts.append(f"error={shown(receipt.error[:120])}")
    return "  ".join(parts)


async def run_receipts_tail(redis: Any, streams: Sequence[str], args: argparse.Namespace) -> int:  # noqa: ANN401 - a redis-py client
    """Print the receipts of ``streams`` (following them with ``--follow``); exit 0."""
    outcome: str | None = args.outcome
    async with contextlib.AsyncExitStack() as stack:
        iterators = [
            await stack.enter_async_context(
                contextlib.aclosing(receipts(redis, name, since=args.since, follow=args.follow))
            )
            for name in streams
        ]
        async for receipt in _merged(iterators):
            if outcome is not None and receipt.outcome != outcome:
                continue
            if args.json:
                print(msgspec.json.encode(receipt).decode(), flush=True)
            else:
                print(receipt_line(receipt), flush=True)
    return 0


async def _merged(iterators: Sequence[AsyncGenerator[Receipt, None]]) -> AsyncIterator[Receipt]:
    """Yield from several receipt iterators: one after the other, or interleaved when following."""
    if len(iterators) == 1:
        async for receipt in iterators[0]:
            yield receipt
        return
    queue: asyncio.Queue[Receipt | None] = asyncio.Queue(maxsize=1000)

    async def pump(source: AsyncGenerator[Receipt, None]) -> None:
        try:
            async for receipt in source:
                await queue.put(receipt)
        finally:
            await queue.put(None)

    tasks = [asyncio.create_task(pump(source)) for source in iterators]
    try:
        live = len(tasks)
        while live:
            item = await queue.get()
            if item is None:
                live -= 1
                continue
            yield item
        for task in tasks:
            task.result()  # a Redis error in one stream is the command's error
    finally:
        for task in tasks:
            task.cancel()
