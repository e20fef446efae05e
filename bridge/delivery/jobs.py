"""From a stream entry to a job: the Signal, its canonical body, its idempotency key.

The first step of a signal's way through the bridge, once per entry read: decode and validate
the ``signal`` field, encode the canonical body, derive the idempotency key every replica
derives for it, and keep the producer's trace context. What fails here is dead-lettered as
invalid, never posted.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import Final

import msgspec
from opentelemetry import context as otel_context

from bridge.core.signal import Signal, SignalRules, decode_signal, encode_canonical
from bridge.errors import InvalidSignalError
from bridge.streams.entries import MAX_AGE_WAIVED_FIELD, ORIGIN_FIELD, SIGNAL_FIELD, Entry
from bridge.telemetry.logs import log_fields
from bridge.telemetry.propagation import extract_parent

__all__ = ["IDEMPOTENCY_NAMESPACE", "Job", "idempotency_key", "instrument_of", "prepare_job"]

log = logging.getLogger("bridge.jobs")

# uuid5 namespace of idempotency keys: every replica derives the same key for an entry.
IDEMPOTENCY_NAMESPACE: Final = uuid.NAMESPACE_URL
_NAMESPACE_BYTES: Final = IDEMPOTENCY_NAMESPACE.bytes
# uuid.UUID(..., version=5): variant bits 10 (RFC 4122), version nibble 5.
_UUID5_CLEAR: Final = ~((0xC000 << 48) | (0xF000 << 64))
_UUID5_SET: Final = (0x8000 << 48) | (5 << 76)


def idempotency_key(stream: str, entry_id: str, signal_id: str | None) -> str:
    """uuid5 of the producer's signal_id, else of ``<stream>/<entry id>``: same on every retry.

    The signal_id is used byte for byte (never trimmed). A signal_id that ends like an entry
    reference (``/<ms>-<seq>``) is refused at validation, so the two cases never share a key.
    """
    name = signal_id if signal_id is not None else f"{stream}/{entry_id}"
    # uuid.uuid5 (RFC 4122 section 4.3, SHA-1 by definition) written out: the same text for a
    # third of its cost.
    digest = hashlib.sha1(_NAMESPACE_BYTES + name.encode(), usedforsecurity=False).digest()
    value = int.from_bytes(digest[:16])
    text = f"{value & _UUID5_CLEAR | _UUID5_SET:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


@dataclass(slots=True)
class Job:
    """An entry the worker holds until it is acked or dead-lettered."""

    entry: Entry
    signal: Signal | None = None
    body: bytes = b""
    key: str = ""
    error: InvalidSignalError | None = None
    attempts: int = 0
    parent: otel_context.Context | None = None
    done: bool = False
    age_waived: bool = False  # replayed with `dlq replay --allow-expired`
    first_attempt_at: float = 0.0  # epoch seconds of this process's first POST of it
    signal_at: float = 0.0  # the signal's timestamp in epoch seconds, computed once per entry
    resend_first: bool = False  # strict: pending at takeover, its first attempt gets more age


class _Routing(msgspec.Struct):
    """The one field a blocked lane needs to find its own entries among all pending ones."""

    instrument: str


_ROUTING_DECODER: Final = msgspec.json.Decoder(_Routing)


def instrument_of(entry: Entry) -> str | None:
    """Read only the instrument of an entry's signal; None when there is none to read.

    Far cheaper than :func:`prepare_job` (no validation, no canonical encoding): a lane looking
    for its next entries decodes fully only those of its own instrument.
    """
    raw = entry.fields.get(SIGNAL_FIELD)
    if raw is None:
        return None
    try:
        return _ROUTING_DECODER.decode(raw).instrument
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None


def prepare_job(
    entry: Entry,
    *,
    stream: str,
    max_body_size: int,
    rules: SignalRules | None = None,
    now: float = 0.0,
) -> Job:
    """Decode and encode an entry once; remember the producer's trace context and its key.

    An entry that cannot be decoded, or breaks the bridge's ``rules`` at time ``now``, gets
    ``signal`` None and ``error`` saying why (it is dead-lettered, never posted); a decoder bug
    is caught here too, so the read loop goes on.
    """
    job = Job(entry)
    fields = entry.fields
    traceparent = fields.get(b"traceparent")
    if traceparent:
        tracestate = fields.get(b"tracestate")
        job.parent = extract_parent(
            traceparent.decode("ascii", "replace"),
            tracestate.decode("ascii", "replace") if tracestate else None,
        )
    raw = fields.get(SIGNAL_FIELD)
    try:
        if raw is None:
            raise InvalidSignalError("entry has no 'signal' field")  # noqa: TRY301 - one path for every invalid entry
        job.signal = signal = decode_signal(raw)
        job.signal_at = signal.timestamp.timestamp()
        if rules is not None:
            rules.check(signal, now, signal_at=job.signal_at)
        job.body = encode_canonical(signal, max_body_size=max_body_size)
    except InvalidSignalError as exc:
        job.signal = None
        job.error = exc
        return job
    except Exception as exc:  # a decoder bug must not stop the read loop on this entry
        log.error(
            "unexpected error decoding an entry; dead-lettering it as invalid",
            extra=log_fields(
                entry_id=entry.id, error=str(exc)[:512], error_type=type(exc).__name__
            ),
        )
        job.signal = None
        job.error = InvalidSignalError(
            f"entry could not be decoded ({type(exc).__name__}: {str(exc)[:256]})"
        )
        return job
    # Replayed dead letters alone carry these two fields: `in` spares the usual entry two calls.
    stream_name, entry_id = stream, entry.id
    if ORIGIN_FIELD in fields:  # a replayed dead letter keeps its first key
        origin = fields[ORIGIN_FIELD].decode("utf-8", "replace")
        if origin:
            stream_name, _, entry_id = origin.rpartition("/")
    job.key = idempotency_key(stream_name, entry_id, signal.signal_id)
    if MAX_AGE_WAIVED_FIELD in fields:
        job.age_waived = True
        log.warning(
            "replayed signal will be posted whatever its age: an operator waived the limit",
            extra=log_fields(
                entry_id=entry.id,
                signal_id=signal.signal_id,
                waived_by=fields[MAX_AGE_WAIVED_FIELD].decode("utf-8", "replace"),
            ),
        )
    return job
