"""What a settled entry's receipt says (``BRIDGE_RECEIPTS=true``): built from its job and end.

The worker hands these fields to the ack buffer (accepted, duplicate) or to the dead-letter write
(dead_lettered, expired); the scripts in ``streams/lua/`` write them with the XACK.
"""

from __future__ import annotations

import msgspec
from opentelemetry import trace

from bridge.delivery.jobs import Job
from bridge.edge.results import Delivered, Duplicate
from bridge.streams.entries import ORIGIN_FIELD, DeadLetter
from bridge.streams.receipts import receipt_fields

__all__ = ["acked_receipt", "gone_receipt", "letter_receipt"]


def _trace_id() -> str | None:
    """Return the current span's trace id (the entry's CONSUMER span), or None outside a trace."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else None


def _replay_of(job: Job) -> str | None:
    origin = job.entry.fields.get(ORIGIN_FIELD)
    return origin.decode("utf-8", "replace") if origin else None


def acked_receipt(
    job: Job, outcome: Delivered | Duplicate, *, stream: str, consumer: str
) -> list[str]:
    """Build a delivered entry's receipt: ``accepted`` (with the server's id) or ``duplicate``."""
    if isinstance(outcome, Delivered):
        name, status = "accepted", outcome.http_code
        server_id = outcome.response.signal_id if outcome.response is not None else None
    else:
        name, status, server_id = "duplicate", outcome.status, None
    return receipt_fields(
        entry_id=job.entry.id,
        stream=stream,
        outcome=name,
        signal_id=(job.signal.signal_id or "") if job.signal is not None else "",
        idempotency_key=job.key,
        http_status=status,
        server_signal_id=server_id,
        attempts=job.attempts,
        first_attempt_at=job.first_attempt_at or None,
        trace_id=_trace_id(),
        consumer=consumer,
        replay_of=_replay_of(job),
    )


def letter_receipt(job: Job, letter: DeadLetter, *, stream: str, consumer: str) -> list[str]:
    """Build the receipt of a dead-lettered entry: ``expired``, else ``dead_lettered``, with why."""
    signal_id = (job.signal.signal_id or "") if job.signal is not None else ""
    if not signal_id:
        raw = job.entry.field("signal") or ""
        signal_id = _signal_id_of(raw)
    return receipt_fields(
        entry_id=job.entry.id,
        stream=stream,
        outcome="expired" if letter.reason == "expired" else "dead_lettered",
        signal_id=_clean(signal_id),
        idempotency_key=job.key,
        reason=_clean(letter.reason),
        error=_clean(letter.error),
        http_status=letter.http_code,
        attempts=letter.attempts,
        first_attempt_at=job.first_attempt_at or None,
        trace_id=_trace_id(),
        consumer=consumer,
        replay_of=_replay_of(job),
    )


def gone_receipt(entry_id: str, *, stream: str, consumer: str) -> list[str]:
    """Build the receipt of a pending entry deleted from the stream before delivery (acked away)."""
    return receipt_fields(
        entry_id=entry_id,
        stream=stream,
        outcome="dead_lettered",
        reason="deleted",
        error="the entry was deleted from the stream before delivery",
        consumer=consumer,
    )


def _clean(text: str) -> str:
    """Text from an entry or an error, made encodable (a lone surrogate becomes ``?``)."""
    return text.encode("utf-8", "replace").decode("utf-8")


def _signal_id_of(raw: str) -> str:
    """Best effort: the ``signal_id`` of an entry that did not decode as a Signal ('' if none)."""
    try:
        data = msgspec.json.decode(raw.encode()[:65536])
    except msgspec.DecodeError:
        return ""
    value = data.get("signal_id") if isinstance(data, dict) else None
    return value[:128] if isinstance(value, str) else ""
