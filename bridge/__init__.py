"""signal-bridge: Redis Stream trade signals, delivered HMAC-signed to the ingest API.

The public surface: producers build a :class:`Signal` and :func:`publish` it (``wait=`` for its
:class:`Receipt`, or follow them all with :func:`receipts`); server teams call
:func:`verify_request`. The three are loaded on first use, so ``import bridge`` (and with it
``python -m bridge --version``) imports neither redis nor msgspec nor OpenTelemetry.
"""

from __future__ import annotations

import importlib
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from bridge.core.signal import Signal
    from bridge.core.verification import verify_request
    from bridge.streams.producer import publish
    from bridge.streams.receipts import Receipt, receipts

__all__ = ["Receipt", "Signal", "__version__", "publish", "receipts", "verify_request"]

try:
    __version__ = version("signal-bridge")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0"

# Each public name and the module that defines it.
_LAZY: Final = {
    "Signal": "bridge.core.signal",
    "publish": "bridge.streams.producer",
    "Receipt": "bridge.streams.receipts",
    "receipts": "bridge.streams.receipts",
    "verify_request": "bridge.core.verification",
}


def __getattr__(name: str) -> object:
    """Import a public name's module on first use and keep the name here."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'bridge' has no attribute {name!r}")
    value: object = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """List the public names with the loaded ones, as ``dir()`` of an eager module would."""
    return sorted({*globals(), *__all__})
