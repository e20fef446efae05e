"""The shard lease a POST is sent under, as it travels to the server: the fencing stamp.

In strict ordering every POST carries ``X-Signal-Lease`` with the shard (its stream name) and the
lease's fencing token, spelled as an RFC 8941 dictionary::

    X-Signal-Lease: shard="signals:{0}", token=17

A server that remembers, per (producer, shard), the highest token it accepted can refuse a write
from a replica whose lease has since passed to another (Kleppmann's fencing token). Parallel mode
sends no header. Pure, no I/O: the bridge writes it, the reference server parses it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

__all__ = [
    "LEASE_HEADER",
    "PROBLEM_CONTENT_TYPE",
    "STALE_LEASE_TYPE",
    "LeaseStamp",
    "stale_lease_problem",
    "stale_lease_token",
]

LEASE_HEADER: Final = "X-Signal-Lease"
# RFC 9457 problem details: a server refuses a stale lease with 409 (or 412) and this type.
PROBLEM_CONTENT_TYPE: Final = "application/problem+json"
STALE_LEASE_TYPE: Final = "urn:signal-bridge:problem:stale-lease"
_STALE_SUFFIX: Final = "stale-lease"

# The most a token may be: Redis INCR counts in a signed 64-bit integer, RFC 8941 integers
# have at most 15 digits; a larger token is refused rather than compared wrongly.
_MAX_TOKEN: Final = 999_999_999_999_999
_MAX_SHARD_LENGTH: Final = 256
# Printable ASCII but the two characters a string would have to escape.
_SHARD: Final = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]+")
_VALUE: Final = re.compile(
    r'\A\s*shard="([\x20-\x21\x23-\x5b\x5d-\x7e]{1,256})"\s*,\s*token=([0-9]{1,15})\s*\Z'
)


@dataclass(frozen=True, slots=True)
class LeaseStamp:
    """One shard lease as a POST presents it: the shard's name and its fencing token."""

    shard: str
    token: int

    def __post_init__(self) -> None:
        if len(self.shard) > _MAX_SHARD_LENGTH or not _SHARD.fullmatch(self.shard):
            raise ValueError(
                "a lease's shard must be 1-256 printable ASCII characters without '\"' or '\\'"
            )
        if not 0 < self.token <= _MAX_TOKEN:
            raise ValueError(f"a lease's token must lie in 1..{_MAX_TOKEN}")

    def header_value(self) -> str:
        """Return the ``X-Signal-Lease`` value: ``shard="<stream>", token=<n>``."""
        return f'shard="{self.shard}", token={self.token}'

    @classmethod
    def parse(cls, value: str) -> LeaseStamp | None:
        """Read an ``X-Signal-Lease`` value; None for anything not exactly in the format."""
        match = _VALUE.match(value)
        if match is None:
            return None
        token = int(match.group(2))
        return cls(match.group(1), token) if token > 0 else None


def stale_lease_problem(stamp: LeaseStamp, current_token: int) -> dict[str, object]:
    """Return the problem+json body that refuses ``stamp``: a higher token was accepted."""
    return {
        "type": STALE_LEASE_TYPE,
        "title": "stale lease",
        "status": 409,
        "detail": (
            f"token {stamp.token} for shard {stamp.shard!r} is below the highest accepted, "
            f"{current_token}: another replica owns the shard now"
        ),
        "shard": stamp.shard,
        "token": stamp.token,
        "current_token": current_token,
    }


def stale_lease_token(content_type: str | None, details: object) -> int | None:
    """Read a stale-lease refusal: the server's current token (0 if it gave none), else None.

    A refusal is a problem+json body (RFC 9457) whose ``type`` ends in ``stale-lease``; any
    other body, an idempotency 409 included, is not one.
    """
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media != PROBLEM_CONTENT_TYPE or not isinstance(details, dict):
        return None
    kind = details.get("type")
    if not isinstance(kind, str) or not kind.endswith(_STALE_SUFFIX):
        return None
    current = details.get("current_token")
    return current if isinstance(current, int) and not isinstance(current, bool) else 0
