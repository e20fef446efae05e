"""How far the ingest server's clock is from ours, from the ``Date`` header of every answer.

A host clock that drifts past the server's replay window (300 s) turns every POST into a 401.
No extra request is needed to see it coming: each answer carries the server's ``Date`` (one-second
resolution). The estimate is ``server - local`` at the request's midpoint, smoothed with an
exponential moving average; a header is parsed only when its text changes (once a second), so
the hot path pays a dictionary lookup and a string comparison. Pure: no I/O, clocks passed in.
"""

from __future__ import annotations

import email.utils
from datetime import UTC
from typing import Final

__all__ = ["DEFAULT_WARN_S", "SkewEstimator", "describe_skew", "parse_http_date"]

# A skew this large is logged once as a WARNING (a tenth of the default 300 s replay window).
DEFAULT_WARN_S: Final = 30.0
# ``Date`` has whole seconds: the server's time lies in [t, t + 1), so t + 0.5 on average.
_HALF_SECOND: Final = 0.5
_ALPHA: Final = 0.2


def parse_http_date(value: str) -> float | None:
    """Parse an HTTP-date (RFC 9110, IMF-fixdate or the obsolete forms) to epoch seconds.

    None for anything else: the header comes from the network and must never raise.
    """
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        return when.timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def describe_skew(skew_s: float) -> str:
    """Say which way the server's clock is off, for a log line an operator acts on."""
    direction = "ahead of" if skew_s > 0 else "behind"
    return f"server clock is {abs(skew_s):.0f} s {direction} ours: fix NTP"


class SkewEstimator:
    """Smoothed ``server clock - local clock`` in seconds, fed one answer at a time."""

    __slots__ = ("_alpha", "_skew_s", "_warned", "last_date", "warn_s")

    def __init__(self, *, warn_s: float = DEFAULT_WARN_S, alpha: float = _ALPHA) -> None:
        self.warn_s = warn_s
        self._alpha = alpha
        # The Date text last taken: an answer with the same text has nothing new to say.
        self.last_date: str | None = None
        self._skew_s: float | None = None
        self._warned = False

    @property
    def skew_s(self) -> float | None:
        """The smoothed skew (positive: the server is ahead), None before any usable Date."""
        return self._skew_s

    @property
    def beyond_warning(self) -> bool:
        """Tell whether the skew is known and larger than ``warn_s`` either way."""
        return self._skew_s is not None and abs(self._skew_s) > self.warn_s

    def observe(self, date: str | None, sent_at: float, received_at: float) -> None:
        """Take one answer's ``Date`` header, sent and received at these local epoch times."""
        if not date or date == self.last_date:
            return
        self.last_date = date
        server_s = parse_http_date(date)
        if server_s is None:
            return
        sample = server_s + _HALF_SECOND - (sent_at + received_at) / 2
        if self._skew_s is None:
            self._skew_s = sample
        else:
            self._skew_s += self._alpha * (sample - self._skew_s)

    def take_warning(self) -> float | None:
        """Return the skew once when it first exceeds ``warn_s``; again only after it recovered.

        Recovered means back under half the threshold, so a skew hovering at the limit does
        not log on every answer.
        """
        if self._skew_s is None:
            return None
        size = abs(self._skew_s)
        if self._warned:
            if size < self.warn_s / 2:
                self._warned = False
            return None
        if size > self.warn_s:
            self._warned = True
            return self._skew_s
        return None
