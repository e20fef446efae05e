"""The worker's side of receipts: acks and dead letters that write their receipts in one script.

Used only with ``BRIDGE_RECEIPTS=true``; otherwise the worker keeps its plain XACK and
dead-letter script. ``lua/ack_receipts.lua`` writes a burst's receipts and acks in one call,
``lua/dead_letter_receipt.lua`` the letter, the receipt and the ack; both write the receipt
before the ack and remove it when the ack did not take, and check the shard's lease first in
strict ordering (a fenced replica writes nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import msgspec

from bridge.streams.connection import guard
from bridge.streams.entries import DeadLetter, Entry
from bridge.streams.group import SignalStream
from bridge.streams.letter_fields import letter_fields
from bridge.streams.receipts import ReceiptPolicy, receipts_stream
from bridge.streams.scripts import load
from bridge.streams.settings import StreamConfig

__all__ = ["ReceiptWriter", "receipt_writer"]

_ACK_RECEIPTS_LUA: Final = load("ack_receipts")
_DEAD_LETTER_RECEIPT_LUA: Final = load("dead_letter_receipt")
# A burst's receipts go to the script as one JSON argument: redis-py encodes each argument on
# its own, and a burst of 100 receipts as ~2,800 arguments cost more CPU than the POSTs.
_encode: Final = msgspec.json.Encoder().encode


class ReceiptWriter:
    """Acks and dead letters of one stream, each with its receipt, in one script call."""

    def __init__(self, stream: SignalStream, policy: ReceiptPolicy) -> None:
        self.stream = stream
        self.policy = policy
        self._ack_script = stream.redis.register_script(_ACK_RECEIPTS_LUA)
        self._letter_script = stream.redis.register_script(_DEAD_LETTER_RECEIPT_LUA)

    def __repr__(self) -> str:
        return f"ReceiptWriter(stream={self.stream.stream!r}, receipts={self.policy.stream!r})"

    async def ack(
        self,
        items: Sequence[tuple[str, Sequence[str]]],
        lease: tuple[str, str] | None = None,
    ) -> int | None:
        """XACK ``(entry id, receipt fields)`` items, each with its receipt; how many were acked.

        None (nothing written) when ``lease`` (strict ordering: the shard's lease key and value)
        no longer holds that value.
        """
        if not items:
            return 0
        keys = [self.stream.stream, self.policy.stream]
        burst = _encode([(entry_id, fields) for entry_id, fields in items])
        args: list[Any] = [self.stream.group, self.policy.maxlen, self.policy.max_age_ms, burst]
        if lease is not None:
            keys.append(lease[0])
            args.append(lease[1])
        reply = await guard(
            self._ack_script(keys=keys, args=args), "XACK with receipts (XADD + XACK script)"
        )
        return None if int(reply) < 0 else int(reply)

    async def dead_letter(
        self,
        entry: Entry,
        letter: DeadLetter,
        receipt: Sequence[str],
        lease: tuple[str, str] | None = None,
    ) -> bool | None:
        """Move a pending entry to the dead-letter stream with its receipt, then XACK it.

        True when both are written and the entry acked, False when it was no longer pending
        (nothing written), None when ``lease`` no longer holds (fenced: nothing written).
        StreamError when nothing was done.
        """
        stream = self.stream
        pairs = letter_fields(
            entry,
            letter,
            max_bytes=stream.dead_letter_max_bytes,
            group=stream.group,
            consumer=stream.consumer,
            stream=stream.stream,
        )
        args: list[Any] = [stream.group, entry.id, len(pairs)]
        for name, value in pairs:
            args += (name, value)
        args += (self.policy.maxlen, self.policy.max_age_ms, _encode(receipt))
        keys = [stream.stream, stream.dlq_stream, self.policy.stream]
        if lease is not None:
            keys.append(lease[0])
            args.append(lease[1])
        written = await guard(
            self._letter_script(keys=keys, args=args),
            "dead letter with receipt (XADD + XADD + XACK script)",
        )
        return None if int(written) < 0 else int(written) == 1


def receipt_writer(stream: SignalStream, config: StreamConfig) -> ReceiptWriter | None:
    """Return the receipt writer of ``stream`` with BRIDGE_RECEIPTS on, else None (plain XACK)."""
    if not config.receipts:
        return None
    policy = ReceiptPolicy(
        receipts_stream(stream.stream),
        maxlen=config.receipts_maxlen,
        max_age_ms=int(config.receipts_max_age_s * 1000),
    )
    return ReceiptWriter(stream, policy)
