"""The garbage collector's settings for a long-running replica (``signal-bridge run`` only).

Deliveries make almost no reference cycles: their objects die by reference counting. Yet the
collector's full passes walked every module, class and function loaded at start-up (~58,000
objects, ~15 ms a pass, a few us a delivered signal: bench/README.md, issue 25). So once
start-up is done, what is left of it is frozen: full passes skip it, cycles made later are still
collected. The young threshold stays CPython's: a ten times larger one cut a little more CPU but
added 10-25 ms stalls to the latency run's slowest signal.
"""

from __future__ import annotations

import gc

__all__ = ["settle_heap"]


def settle_heap() -> None:
    """Collect once, then freeze what is left (the start-up objects) out of later passes."""
    gc.collect()
    gc.freeze()
