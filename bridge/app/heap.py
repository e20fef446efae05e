"""The garbage collector's settings for a long-running replica (``signal-bridge run`` only).

Deliveries make almost no reference cycles: their objects die by reference counting. With the
default thresholds the collector still ran a young pass every 700 net allocations and full
passes over every module, class and function loaded at start-up, about 7 us a delivered signal
(bench/README.md, issue 25). So once start-up is done, the start-up objects are frozen (full
passes skip them) and the young generation is ten times larger. Cycles are still collected.
"""

from __future__ import annotations

import gc
from typing import Final

__all__ = ["YOUNG_THRESHOLD", "settle_heap"]

YOUNG_THRESHOLD: Final = 7000  # net allocations between young passes (CPython's default: 700)


def settle_heap() -> None:
    """Collect once, freeze what is left (start-up objects), then raise the young threshold."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, older, oldest)
