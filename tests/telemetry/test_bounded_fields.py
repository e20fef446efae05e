"""Log fields and span texts taken from input are cut to 2 KiB with the original size."""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator

import msgspec
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.telemetry.bounds import MAX_FIELD_BYTES, bounded, cut_text
from bridge.telemetry.logs import configure_logging, log_fields, log_info
from bridge.telemetry.tracing import LeanTracer, get_tracer

MEGABYTE = 1 << 20


@pytest.fixture
def stdout_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.TextIOWrapper]:
    """Logging configured as shipped (JSON) onto a captured byte stream."""
    raw = io.BytesIO()
    stream = io.TextIOWrapper(raw, encoding="utf-8", write_through=True)
    monkeypatch.setattr("sys.stdout", stream)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    configure_logging("INFO", "json")
    try:
        yield stream
    finally:
        for handler in list(root.handlers):
            handler.close()
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])


def _lines(stream: io.TextIOWrapper) -> list[dict[str, object]]:
    for handler in logging.getLogger().handlers:
        handler.flush()
    raw = stream.buffer.getvalue()  # type: ignore[attr-defined]
    return [msgspec.json.decode(line) for line in raw.splitlines()]


def test_a_megabyte_field_makes_a_short_line_that_says_how_large_it_was(
    stdout_lines: io.TextIOWrapper,
) -> None:
    """Through logger.warning and the per-delivery log_info path alike, 1 MB becomes <= 2 KiB."""
    huge = "é" * (MEGABYTE // 2)  # 1 MiB in UTF-8
    logging.getLogger("bridge.test").warning("refused", extra=log_fields(error=huge, small="ok"))
    log_info(logging.getLogger("bridge.test"), "delivered", {"detail": huge, "n": 1})
    first, second = _lines(stdout_lines)
    for line, key in ((first, "error"), (second, "detail")):
        text = line[key]
        assert isinstance(text, str)
        assert len(text.encode()) <= MAX_FIELD_BYTES
        assert text.endswith(f"... [cut: {MEGABYTE} bytes in all]")
    assert first["small"] == "ok"
    assert second["n"] == 1


def test_short_values_pass_unchanged_and_cuts_never_split_a_character() -> None:
    """Values within the limit are the same objects; a cut ends on a whole UTF-8 character."""
    short = "x" * 600
    assert bounded(short) is short
    assert bounded(12) == 12
    cut = cut_text("😀" * 1000)
    assert len(cut.encode()) <= MAX_FIELD_BYTES
    assert "\ufffd" not in cut
    assert cut.endswith("... [cut: 4000 bytes in all]")


def test_a_span_ending_in_a_huge_exception_records_it_cut() -> None:
    """The lean span's status and exception event carry at most 2 KiB of a 1 MB message."""
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = LeanTracer(get_tracer(provider), provider)
    huge = "x" * MEGABYTE
    with pytest.raises(ValueError, match="x"), tracer.start_as_current_span("process signals"):
        raise ValueError(huge)
    [span] = exporter.get_finished_spans()
    provider.shutdown()
    assert span.status.description is not None
    assert len(span.status.description.encode()) <= MAX_FIELD_BYTES
    [event] = span.events
    assert event.attributes is not None
    message = str(event.attributes["exception.message"])
    assert message.endswith(f"... [cut: {MEGABYTE} bytes in all]")
    assert len(str(event.attributes["exception.stacktrace"])) < 4 * MAX_FIELD_BYTES
