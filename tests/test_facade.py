"""The public facade: ``import bridge`` stays cheap and has what the README tells people to use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import bridge
from bridge.core.signal import Signal
from bridge.core.verification import verify_request


def test_the_facade_names_are_the_modules_own() -> None:
    """``bridge.publish``, ``bridge.Signal`` and ``bridge.verify_request`` are the real objects."""
    assert sorted(bridge.__all__) == [
        "Receipt",
        "Signal",
        "__version__",
        "publish",
        "receipts",
        "verify_request",
    ]
    assert bridge.publish.__name__ == "publish"
    assert bridge.publish.__module__.startswith("bridge.streams.")
    assert bridge.Signal is Signal
    assert bridge.verify_request is verify_request
    assert isinstance(bridge.__version__, str)
    assert set(bridge.__all__) <= set(dir(bridge))


def test_import_bridge_loads_no_dependency() -> None:
    """A fresh ``import bridge`` imports no redis, msgspec or OpenTelemetry; a name loads on use."""
    code = (
        "import sys, bridge\n"
        "heavy = ('redis', 'msgspec', 'opentelemetry', 'bridge.')\n"
        "assert not [m for m in sys.modules if m.startswith(heavy)], sorted(sys.modules)\n"
        "assert bridge.publish.__module__ in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # noqa: S603 - this interpreter, fixed code


def test_an_unknown_name_is_an_attribute_error() -> None:
    """Names outside the facade raise AttributeError, as on any module."""
    with pytest.raises(AttributeError, match="nothing_here"):
        getattr(bridge, "nothing_here")  # noqa: B009 - a name mypy rightly says is absent
