"""The reference server's fencing: per (producer, shard), the highest lease token it accepted.

A strict-mode bridge sends ``X-Signal-Lease: shard="<stream>", token=<n>`` with every POST (see
:mod:`bridge.core.fencing`); the shard's fencing token grows with each new owner. The server
refuses a token lower than the highest it has accepted for that producer and shard, so a stale
owner's POST (delayed on the wire past a takeover, or sent by a process that woke up late) can
never land after the new owner's. The check and the record must be one step with storing the
signal: :class:`IngestApp <bridge.devkit.ingest.IngestApp>` calls :meth:`Fences.admit` under the
same lock as its idempotency store.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

from bridge.core.fencing import LEASE_HEADER, LeaseStamp
from bridge.errors import ConfigError

__all__ = ["FENCING_ENV", "Fences", "LeaseVerdict", "fencing_from_env"]

FENCING_ENV: Final = "INGEST_FENCING"
_HEADER: Final = LEASE_HEADER.lower()
_TRUE: Final = frozenset({"1", "true", "yes", "on"})
_FALSE: Final = frozenset({"0", "false", "no", "off"})


def fencing_from_env(environ: Mapping[str, str] | None = None) -> bool:
    """Read ``INGEST_FENCING`` (default true); a value that is not a boolean is refused."""
    raw = (os.environ if environ is None else environ).get(FENCING_ENV, "true").strip().lower()
    if raw in _TRUE:
        return True
    if raw in _FALSE:
        return False
    raise ConfigError(f"{FENCING_ENV} must be true or false", variable=FENCING_ENV)


@dataclass(frozen=True, slots=True)
class LeaseVerdict:
    """What the fence says about one request: go on, refuse (stale), or refuse (bad header)."""

    stamp: LeaseStamp | None = None
    current_token: int | None = None  # set when stale: the highest token accepted
    malformed: bool = False

    @property
    def stale(self) -> bool:
        """Tell whether the request's token is below the highest accepted for its shard."""
        return self.current_token is not None


@dataclass
class Fences:
    """Highest accepted token per (producer, shard); not thread-safe: call under the app lock."""

    enabled: bool = True
    highest: dict[tuple[str, str], int] = field(default_factory=dict)

    def check(self, producer_id: str, headers: Mapping[str, str]) -> LeaseVerdict:
        """Judge a request's ``X-Signal-Lease`` against the highest token of its shard.

        No header (parallel mode, an older bridge) or fencing disabled: go on. A header that does
        not parse: malformed (the server answers 400, since it cannot tell stale from fresh).
        """
        if not self.enabled:
            return LeaseVerdict()
        raw = headers.get(_HEADER)
        if raw is None:
            return LeaseVerdict()
        stamp = LeaseStamp.parse(raw)
        if stamp is None:
            return LeaseVerdict(malformed=True)
        current = self.highest.get((producer_id, stamp.shard), 0)
        if stamp.token < current:
            return LeaseVerdict(stamp, current_token=current)
        return LeaseVerdict(stamp)

    def record(self, producer_id: str, verdict: LeaseVerdict) -> None:
        """Remember an admitted request's token as the shard's highest (it is not lower)."""
        if verdict.stamp is not None and not verdict.stale:
            key = (producer_id, verdict.stamp.shard)
            self.highest[key] = max(self.highest.get(key, 0), verdict.stamp.token)
