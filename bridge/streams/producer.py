"""The producer side: XADD a signal the way the strategy engine should, to the right shard.

:func:`publish` writes canonical JSON plus the producer's trace context (and, given ``wait``,
waits for the signal's receipt); :func:`shard_for` picks an instrument's stream among shards, the
same in every process, so its order holds.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from typing import overload

import redis.asyncio as aioredis
from opentelemetry import propagate

from bridge.core.signal import Signal, encode_canonical
from bridge.streams.connection import guard
from bridge.streams.entries import as_text
from bridge.streams.receipts import Receipt, latest_receipt_id, wait_for

__all__ = ["publish", "publish_raw", "shard_for"]


def shard_for(instrument: str, streams: Sequence[str]) -> str:
    """Pick the stream of an instrument: stable across processes, so its order holds."""
    if len(streams) == 1:
        return streams[0]
    return streams[zlib.crc32(instrument.encode()) % len(streams)]


@overload
async def publish(
    redis: aioredis.Redis,
    signal: Signal,
    *,
    stream: str | Sequence[str] = ...,
    maxlen: int | None = ...,
    extra: Mapping[str, str] | None = ...,
    wait: None = ...,
) -> str: ...


@overload
async def publish(
    redis: aioredis.Redis,
    signal: Signal,
    *,
    stream: str | Sequence[str] = ...,
    maxlen: int | None = ...,
    extra: Mapping[str, str] | None = ...,
    wait: float,
) -> Receipt: ...


async def publish(
    redis: aioredis.Redis,
    signal: Signal,
    *,
    stream: str | Sequence[str] = "signals",
    maxlen: int | None = None,
    extra: Mapping[str, str] | None = None,
    wait: float | None = None,
) -> str | Receipt:
    """XADD a signal the way the strategy engine should: canonical JSON plus trace context.

    The current OpenTelemetry context goes into ``traceparent``/``tracestate`` fields so the
    bridge's consumer span continues the producer's trace. ``stream`` may be a list of shards
    (``signals:{0}`` ... ``signals:{7}``): the instrument picks one, always the same, so the
    per-instrument order holds. Returns the new entry id; with ``wait`` (seconds; the bridge
    runs with ``BRIDGE_RECEIPTS=true``) it waits for the entry's receipt and returns that
    :class:`~bridge.streams.receipts.Receipt`, or raises
    :class:`~bridge.errors.ReceiptTimeoutError` once ``wait`` seconds have passed without one.
    """
    if not isinstance(stream, str):
        stream = shard_for(signal.instrument, stream)
    if wait is not None:
        since = await latest_receipt_id(redis, stream)
        entry_id = await publish(redis, signal, stream=stream, maxlen=maxlen, extra=extra)
        found = await wait_for(redis, stream, [entry_id], since=since, timeout_s=wait)
        return found[entry_id]
    fields: dict[str, str | bytes] = {"signal": encode_canonical(signal)}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    fields.update({k: v for k, v in carrier.items() if k in ("traceparent", "tracestate")})
    if extra:
        fields.update(extra)
    entry_id = await guard(
        redis.xadd(stream, fields, maxlen=maxlen, approximate=True),  # type: ignore[arg-type]
        "XADD",
    )
    return as_text(entry_id)


async def publish_raw(
    redis: aioredis.Redis, fields: Mapping[str, str | bytes], *, stream: str = "signals"
) -> str:
    """XADD arbitrary fields, unvalidated: for replaying, demos and tests of bad input."""
    entry_id = await guard(redis.xadd(stream, dict(fields)), "XADD")  # type: ignore[arg-type]
    return as_text(entry_id)
