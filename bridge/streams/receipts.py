"""Receipts: one entry per settled signal in ``<stream>:receipts``, written with its ack.

The worker's ack and dead-letter scripts write a receipt and the XACK together (receipt first,
an ack that did not take deletes it again), so a receipt exists exactly when its entry left the
pending list. This module names the stream, builds a receipt's fields, parses them back into a
:class:`Receipt`, and reads them for producers: :func:`receipts` follows the stream,
:func:`wait_for` blocks until given entries have theirs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Iterable, Mapping
from typing import Any, Final, Literal

import msgspec

from bridge.errors import ReceiptTimeoutError
from bridge.streams.connection import guard
from bridge.streams.entries import as_text

__all__ = [
    "OUTCOMES",
    "Receipt",
    "ReceiptPolicy",
    "latest_receipt_id",
    "parse_receipt",
    "receipt_fields",
    "receipts",
    "receipts_key_error",
    "receipts_stream",
    "wait_for",
]

Outcome = Literal["accepted", "duplicate", "dead_lettered", "expired"]
OUTCOMES: Final[tuple[str, ...]] = ("accepted", "duplicate", "dead_lettered", "expired")
_READ_COUNT: Final = 500
_ERROR_MAX: Final = 512


def receipts_stream(stream: str) -> str:
    """Return the receipts stream of ``stream``: ``<stream>:receipts``, same {hash tag}, slot."""
    return f"{stream}:receipts"


class ReceiptPolicy(msgspec.Struct, frozen=True):
    """Where one stream's receipts go and how long they are kept (MAXLEN ~, MINID ~ by age)."""

    stream: str
    maxlen: int = 100_000
    max_age_ms: int = 0  # 0: no age limit


class Receipt(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one stream entry, as the bridge wrote it in the script that acked it.

    ``outcome`` is ``accepted`` (2xx; ``server_signal_id`` from the body when given),
    ``duplicate`` (the server already had the idempotency key), ``dead_lettered`` or
    ``expired`` (``reason`` says why; the entry is in the dead-letter stream). ``replay_of``
    names the first delivery (``<stream>/<entry id>``) when the entry is a replayed dead letter.
    Times are RFC 3339 UTC; ``latency_ms`` runs from the entry id's time to the ack.
    """

    id: str
    signal_id: str
    entry_id: str
    stream: str
    idempotency_key: str
    outcome: Outcome
    reason: str | None = None
    error: str | None = None
    http_status: int | None = None
    server_signal_id: str | None = None
    attempts: int = 0
    first_attempt_at: str | None = None
    acked_at: str = ""
    latency_ms: int = 0
    trace_id: str | None = None
    consumer: str = ""
    replay_of: str | None = None

    @property
    def ok(self) -> bool:
        """True for ``accepted`` and ``duplicate``: the server has the signal."""
        return self.outcome in ("accepted", "duplicate")


_second: list[Any] = [-1, ""]  # the last whole second formatted, and its text (one per second)


def _utc(ts: float) -> str:
    """Format epoch seconds as RFC 3339 UTC with milliseconds."""
    whole = int(ts)
    if whole != _second[0]:
        _second[:] = [whole, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))]
    return f"{_second[1]}.{int((ts - whole) * 1000):03d}Z"


def receipt_fields(
    *,
    entry_id: str,
    stream: str,
    outcome: str,
    signal_id: str = "",
    idempotency_key: str = "",
    reason: str | None = None,
    error: str | None = None,
    http_status: int | None = None,
    server_signal_id: str | None = None,
    attempts: int = 0,
    first_attempt_at: float | None = None,
    trace_id: str | None = None,
    consumer: str = "",
    replay_of: str | None = None,
    now: float | None = None,
) -> list[str]:
    """Return a receipt as a flat ``[name, value, ...]`` list for the ack's script."""
    acked = time.time() if now is None else now
    ms = entry_id.partition("-")[0]
    latency = max(0, int(acked * 1000) - int(ms)) if ms.isdigit() else 0
    out = [
        "signal_id", signal_id,
        "entry_id", entry_id,
        "stream", stream,
        "idempotency_key", idempotency_key,
        "outcome", outcome,
        "attempts", str(attempts),
        "acked_at", _utc(acked),
        "latency_ms", str(latency),
        "consumer", consumer,
    ]  # fmt: skip
    optional = (
        ("reason", reason),
        ("error", error[:_ERROR_MAX] if error else None),
        ("http_status", None if http_status is None else str(http_status)),
        ("server_signal_id", server_signal_id),
        ("first_attempt_at", None if first_attempt_at is None else _utc(first_attempt_at)),
        ("trace_id", trace_id),
        ("replay_of", replay_of),
    )
    for name, value in optional:
        if value:
            out += (name, value)
    return out


def parse_receipt(receipt_id: str | bytes, fields: Mapping[Any, Any]) -> Receipt:
    """Build a Receipt from one entry of the receipts stream (bytes or text fields)."""
    data = {as_text(k): as_text(v) for k, v in fields.items()}
    outcome = data.get("outcome", "")
    return Receipt(
        id=as_text(receipt_id),
        signal_id=data.get("signal_id", ""),
        entry_id=data.get("entry_id", ""),
        stream=data.get("stream", ""),
        idempotency_key=data.get("idempotency_key", ""),
        outcome=outcome if outcome in OUTCOMES else "dead_lettered",  # type: ignore[arg-type]
        reason=data.get("reason"),
        error=data.get("error"),
        http_status=_int(data.get("http_status")),
        server_signal_id=data.get("server_signal_id"),
        attempts=_int(data.get("attempts")) or 0,
        first_attempt_at=data.get("first_attempt_at"),
        acked_at=data.get("acked_at", ""),
        latency_ms=_int(data.get("latency_ms")) or 0,
        trace_id=data.get("trace_id"),
        consumer=data.get("consumer", ""),
        replay_of=data.get("replay_of"),
    )


def _int(text: str | None) -> int | None:
    return int(text) if text is not None and text.lstrip("-").isdigit() else None


async def receipts_key_error(redis: Any, stream: str) -> str | None:  # noqa: ANN401 - client
    """Say why the receipts stream of ``stream`` cannot be written (another type), else None."""
    key = receipts_stream(stream)
    kind = as_text(await guard(redis.type(key), "TYPE"))
    if kind in ("none", "stream"):
        return None
    return f"{key} holds a {kind}, not a stream: receipts (BRIDGE_RECEIPTS) cannot be written"


async def latest_receipt_id(redis: Any, stream: str) -> str:  # noqa: ANN401 - redis-py client
    """Return the id of the newest receipt of ``stream`` (``0-0`` when there is none).

    Taken before an XADD, it is where a producer waiting for its receipt starts reading.
    """
    last = await guard(redis.xrevrange(receipts_stream(stream), count=1), "XREVRANGE")
    return as_text(last[0][0]) if last else "0-0"


async def receipts(
    redis: Any,  # noqa: ANN401 - a redis-py client (single node or cluster)
    stream: str,
    *,
    since: str = "0-0",
    follow: bool = True,
    block_ms: int = 1000,
) -> AsyncGenerator[Receipt, None]:
    """Iterate the receipts of ``stream`` written after the receipt id ``since``, oldest first.

    ``since="$"`` starts with the next receipt written. With ``follow`` (the default) it waits
    for new receipts forever (XREAD BLOCK); without, it stops at the newest one.
    """
    key = receipts_stream(stream)
    cursor = await latest_receipt_id(redis, stream) if since == "$" else since
    while True:
        reply = await guard(
            redis.xread({key: cursor}, count=_READ_COUNT, block=block_ms if follow else None),
            "XREAD",
        )
        entries = _entries_of(reply)
        for receipt_id, fields in entries:
            cursor = as_text(receipt_id)
            yield parse_receipt(receipt_id, fields)
        if not entries and not follow:
            return


async def wait_for(
    redis: Any,  # noqa: ANN401 - a redis-py client (single node or cluster)
    stream: str,
    entry_ids: Iterable[str],
    *,
    since: str,
    timeout_s: float,
) -> dict[str, Receipt]:
    """Wait for the receipts of ``entry_ids`` written after ``since``; keyed by entry id.

    ReceiptTimeoutError (naming the entries still waited for) once ``timeout_s`` has passed.
    """
    waiting = set(entry_ids)
    found: dict[str, Receipt] = {}
    deadline = time.monotonic() + timeout_s
    key = receipts_stream(stream)
    cursor = since
    while waiting:
        left_ms = int((deadline - time.monotonic()) * 1000)
        # Past the deadline one last read without blocking (BLOCK 0 would wait forever).
        block = min(left_ms, 1000) if left_ms > 0 else None
        entries = _entries_of(
            await guard(redis.xread({key: cursor}, count=_READ_COUNT, block=block), "XREAD")
        )
        for receipt_id, fields in entries:
            cursor = as_text(receipt_id)
            receipt = parse_receipt(receipt_id, fields)
            if receipt.entry_id in waiting:
                waiting.discard(receipt.entry_id)
                found[receipt.entry_id] = receipt
        if waiting and left_ms <= 0:
            missing = sorted(waiting)
            raise ReceiptTimeoutError(
                f"no receipt within {timeout_s:g}s for {len(missing)} entr"
                f"{'y' if len(missing) == 1 else 'ies'} of {stream!r} (still pending, or "
                "BRIDGE_RECEIPTS is off)",
                stream=stream,
                entry_ids=missing,
            )
    return found


def _entries_of(reply: Any) -> list[tuple[Any, Any]]:  # noqa: ANN401 - XREAD's reply shapes
    """Return the entries of one XREAD reply (RESP2 list or RESP3 dict, one stream)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return [e for value in reply.values() for e in (value[0] if value else [])]
    return [e for _, batch in reply for e in batch]
