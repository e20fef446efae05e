"""The fast-path gate for the telemetry tests: a fresh verdict per test that changes it.

``scripts/check-latest-otel.sh`` sets SIGNAL_BRIDGE_TEST_TRUST_OTEL=1 to run the differential
tests against a release not yet verified: the installed versions then count as verified.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from bridge.telemetry.fastpath import gate


def pytest_configure(config: pytest.Config) -> None:
    """Treat the installed OpenTelemetry versions as verified when the script asks for it."""
    del config
    if os.environ.get("SIGNAL_BRIDGE_TEST_TRUST_OTEL") == "1":
        installed = {v for v in map(gate._version, gate.CHECKED_DISTRIBUTIONS) if v is not None}
        gate.VERIFIED_VERSIONS = gate.VERIFIED_VERSIONS | installed


@pytest.fixture
def fresh_gate() -> Iterator[None]:
    """Forget the process's verdict before and after the test, so each one asks again."""
    gate.fast_paths.cache_clear()
    yield
    gate.fast_paths.cache_clear()
