"""The delivered line's fast path cuts long values exactly as the ordinary path does.

``log_info`` looks at the fields' lengths only when the encoded line is longer than a field may
be; these check that the cut values, the uncut ones and the line's timestamp are the very bytes
``logger.info(extra=log_fields(...))`` writes, and that the fast path is still the one taken.
"""

from __future__ import annotations

import io
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any, Final

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.timestamps import format_epoch_truncated
from bridge.telemetry.bounds import MAX_FIELD_BYTES, bounded_fields
from bridge.telemetry.logs import (
    LazyFlushHandler,
    _line_time,
    configure_logging,
    log_fields,
    log_info,
)

FROZEN_TIME: Final = 1_764_478_000.123456
BASE: Final[dict[str, Any]] = {
    "producer_id": "strategy-engine-1",
    "entry_id": "1764478000000-12",
    "signal_id": "sig-1",
    "server_signal_id": None,
    "instrument": "EURUSD",
    "http_code": 201,
    "duration_ms": 1.234,
    "attempts": 1,
    "outcome": "success",
}


@pytest.fixture
def configure(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[], io.BytesIO]]:
    """Set JSON logging up as shipped, onto a byte buffer as stdout, at one frozen instant.

    Called in the test itself: pytest adds its own handlers to the root around each phase.
    """
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)

    def configured() -> io.BytesIO:
        raw = io.BytesIO()
        stream = io.TextIOWrapper(raw, encoding="utf-8")
        with monkeypatch.context() as patch:
            patch.setattr(sys, "stdout", stream)
            configure_logging("INFO", "json")
        monkeypatch.setattr("time.time", lambda: FROZEN_TIME)
        return raw

    try:
        yield configured
    finally:
        for handler in list(root.handlers):
            handler.close()
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def _lines(raw: io.BytesIO) -> list[bytes]:
    """Every line written so far."""
    logging.getLogger().handlers[0].flush()
    return raw.getvalue().splitlines()


@pytest.mark.parametrize(
    "extra",
    [
        {"server_signal_id": "s" * 3000},  # long: cut
        {"server_signal_id": "€" * 700},  # 2,100 bytes in UTF-8: cut
        {"server_signal_id": "€" * 682},  # 2,046 bytes: kept whole
        {"signal_id": "a" * 600, "instrument": "b" * 600, "producer_id": "c" * 600},  # long line
        {"server_signal_id": b"\x00" * 2049},  # long bytes: cut
    ],
    ids=["ascii-cut", "utf8-cut", "utf8-kept", "long-line-short-values", "bytes-cut"],
)
def test_long_values_are_cut_as_the_ordinary_line_cuts_them(
    configure: Callable[[], io.BytesIO], monkeypatch: pytest.MonkeyPatch, extra: dict[str, Any]
) -> None:
    """A long line gives logger.info's bytes, through the fast path (no LogRecord made)."""
    out = configure()
    fields = {**BASE, **extra}
    log = logging.getLogger("bridge.worker")
    records: list[str] = []
    real_log = logging.Logger._log

    def counting(self: logging.Logger, *args: Any, **kwargs: Any) -> None:
        records.append(self.name)
        real_log(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(logging.Logger, "_log", counting)
        log_info(log, "signal delivered", dict(fields))
    assert records == []
    log.info("signal delivered", extra=log_fields(**fields))
    fast, ordinary = _lines(out)
    assert fast == ordinary
    line = msgspec.json.decode(fast)
    cut = bounded_fields(fields) or fields
    for key in extra:
        value = cut[key]
        assert line[key] == (value if isinstance(value, str) else line[key])
        if isinstance(value, str) and value.endswith("bytes in all]"):
            assert len(value.encode()) <= MAX_FIELD_BYTES


def test_an_unencodable_long_value_falls_back_to_the_ordinary_line(
    configure: Callable[[], io.BytesIO],
) -> None:
    """A long text with a lone surrogate, which msgspec refuses, is logged cut all the same."""
    out = configure()
    log = logging.getLogger("bridge.worker")
    log_info(log, "signal delivered", {**BASE, "server_signal_id": "\ud800" * 3000})
    (line,) = _lines(out)
    assert msgspec.json.decode(line)["server_signal_id"].endswith("[cut: 3000 bytes in all]")


def test_append_json_leaves_nothing_for_a_line_past_its_limit(
    configure: Callable[[], io.BytesIO],
) -> None:
    """append_json answers None for a line longer than the limit and keeps none of it."""
    out = configure()
    (handler,) = logging.getLogger().handlers
    assert isinstance(handler, LazyFlushHandler)
    assert handler.append_json({"x": "y" * 100}, 50) is None
    assert handler.append_json({"x": "y"}, 50) is True
    assert _lines(out) == [b'{"x":"y"}']


@given(st.floats(min_value=-6e10, max_value=2.5e11, allow_nan=False, allow_infinity=False))
def test_line_time_is_format_epoch_truncated(at: float) -> None:
    """The cached-second timestamp has format_epoch_truncated's text, for any instant."""
    assert _line_time(at) == format_epoch_truncated(at)
    assert _line_time(at + 1.0) == format_epoch_truncated(at + 1.0)
    assert _line_time(at) == format_epoch_truncated(at)
