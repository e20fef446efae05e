"""Consumer hygiene: remove the consumer names that rescheduled pods leave in a group.

Each new pod brings a new consumer name, and Redis keeps every old one in ``XINFO CONSUMERS``
for ever. With ``BRIDGE_CONSUMER_EXPIRE_SECONDS`` (default 3,600) each replica runs one
:class:`ConsumerHygiene` per stream: it lists the group's consumers, picks those idle longer than
that and holding no pending entry, never its own, and deletes each with a script that checks both
again before XGROUP DELCONSUMER (``lua/expire_consumer.lua``), so a consumer handed an entry in
between keeps it: deleting a consumer drops its pending entries from the group's pending list.
A consumer without pending entries holds nothing but its name; a live one deleted by mistake is
created again by its next read.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Final

from bridge.errors import StreamError
from bridge.streams.connection import guard
from bridge.streams.entries import ConsumerStatus, as_text
from bridge.streams.group import SignalStream
from bridge.streams.scripts import load
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics

__all__ = ["ConsumerHygiene", "sweep_interval_s"]

log = logging.getLogger("bridge.consumers")

_EXPIRE_CONSUMER_LUA: Final = load("expire_consumer")
# A sweep every tenth of the expiry, at most a minute and at least a second apart.
_MAX_INTERVAL_S: Final = 60.0
_MIN_INTERVAL_S: Final = 1.0


def sweep_interval_s(expire_s: float) -> float:
    """How often a replica looks for expired consumers: a tenth of the expiry, 1-60 s."""
    return min(_MAX_INTERVAL_S, max(_MIN_INTERVAL_S, expire_s / 10))


class ConsumerHygiene:
    """Removes one stream's expired consumers at an interval; errors are logged once per outage."""

    def __init__(
        self,
        stream: SignalStream,
        metrics: Metrics,
        expire_s: float,
        interval_s: float | None = None,
    ) -> None:
        self.stream = stream
        self.metrics = metrics
        self.expire_ms = int(expire_s * 1000)
        self.interval_s = sweep_interval_s(expire_s) if interval_s is None else interval_s
        self.removed = 0
        self._script = stream.redis.register_script(_EXPIRE_CONSUMER_LUA)
        self._failing = False

    async def candidates(self) -> list[ConsumerStatus]:
        """Return the consumers idle past the expiry that hold nothing, this replica's left out."""
        reply = await guard(
            self.stream.redis.xinfo_consumers(self.stream.stream, self.stream.group),
            "XINFO CONSUMERS",
        )
        consumers = [
            ConsumerStatus(as_text(c["name"]), int(c["pending"]), int(c["idle"])) for c in reply
        ]
        return [
            c
            for c in consumers
            if c.name != self.stream.consumer and not c.pending and c.idle_ms >= self.expire_ms
        ]

    async def remove(self, consumer: ConsumerStatus) -> bool:
        """Delete ``consumer`` if it is still idle past the expiry and holds nothing; log it."""
        if consumer.name == self.stream.consumer:
            return False
        deleted = await guard(
            self._script(
                keys=[self.stream.stream],
                args=[self.stream.group, consumer.name, self.expire_ms],
            ),
            "XGROUP DELCONSUMER (script)",
        )
        if int(deleted) != 1:
            return False
        self.removed += 1
        self.metrics.consumers_removed_total.add(1, {"stream": self.stream.stream})
        log.info(
            "idle consumer removed from the group",
            extra=log_fields(
                stream=self.stream.stream,
                group=self.stream.group,
                consumer=consumer.name,
                idle_s=round(consumer.idle_ms / 1000),
            ),
        )
        return True

    async def sweep_once(self) -> list[str]:
        """One pass now: list the candidates, delete each that still qualifies; their names."""
        if not await self.stream.group_exists():
            return []
        return [c.name for c in await self.candidates() if await self.remove(c)]

    async def run(self) -> None:
        """Sweep every ``interval_s`` until cancelled."""
        while True:
            try:
                await self.sweep_once()
                self._failing = False
            except StreamError as exc:
                if not self._failing:
                    log.warning(
                        "could not remove idle consumers; retrying",
                        extra=log_fields(stream=self.stream.stream, error=str(exc)),
                    )
                self._failing = True
            await asyncio.sleep(self.interval_s)
