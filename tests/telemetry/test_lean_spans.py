"""Recorded spans made by ``LeanTracer`` reach the exporter exactly as the SDK's spans would.

A differential test: one scripted sequence of span API calls runs through the SDK's own tracer
and through ``LeanTracer`` on twin providers (same sampler, same limits, a counting id
generator so the ids match too), each exporting into an ``InMemorySpanExporter`` via a
SimpleSpanProcessor or a BatchSpanProcessor; the exported ``ReadableSpan``s are compared field
by field, and so are the SDK warnings each run logged. Timestamps taken from the clock are
compared by order only; the ones the script gives are compared exactly.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import pytest
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    ParentBased,
    Sampler,
    SamplingResult,
)
from opentelemetry.trace import Link, SpanKind, Status, StatusCode, TraceState
from opentelemetry.util.types import Attributes

from bridge.telemetry.fastpath.spans import LeanSpan
from bridge.telemetry.tracing import LeanTracer, get_tracer

PRODUCER: Final = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
GIVEN_START: Final = 1_700_000_000_000_000_000
GIVEN_EVENT: Final = GIVEN_START + 5_000
GIVEN_END: Final = GIVEN_START + 9_000


class CountingIds(IdGenerator):
    """Ids 1, 2, 3 ... so twin providers give the same ids when asked in the same order."""

    def __init__(self) -> None:
        """Start both counters at zero."""
        self._span = 0
        self._trace = 0

    def generate_span_id(self) -> int:
        """Return the next span id."""
        self._span += 1
        return self._span

    def generate_trace_id(self) -> int:
        """Return the next trace id."""
        self._trace += 1
        return self._trace


class TaggingSampler(Sampler):
    """Samples all but spans named ``record-only`` (RECORD_ONLY), adding an attribute and state."""

    def should_sample(  # noqa: PLR0917 - the SDK's signature
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        """Sample (or record only), with the caller's attributes plus ``sampler.tag``."""
        decision = Decision.RECORD_ONLY if name == "record-only" else Decision.RECORD_AND_SAMPLE
        return SamplingResult(
            decision,
            {**(attributes or {}), "sampler.tag": name},
            TraceState([("sampler", "tagged")]),
        )

    def get_description(self) -> str:
        """Name the sampler."""
        return "TaggingSampler"


class Level(enum.IntEnum):
    """An int subclass as an attribute value (the SDK keeps it as it is)."""

    HIGH = 3


class Opaque:
    """A value with neither __str__ nor __repr__ of its own: the SDK drops it (None)."""

    __slots__ = ()


def _fail() -> None:
    """Raise the error the script records."""
    raise ValueError("price out of range")


def script(tracer: trace.Tracer) -> list[trace.Span]:
    """Drive every part of the span API once; return the spans made, in order."""
    made: list[trace.Span] = []
    producer = propagate.extract({"traceparent": PRODUCER, "tracestate": "vendor=1"})
    with tracer.start_as_current_span(
        "process signals",
        context=producer,
        kind=SpanKind.CONSUMER,
        attributes={"messaging.system": "redis", "bridge.instrument": "EURUSD", "n": 1},
    ) as consumer:
        made.append(consumer)
        client = tracer.start_span("POST", kind=SpanKind.CLIENT, attributes={"port": 8080})
        made.append(client)
        client.set_attribute("http.response.status_code", 201)
        client.set_attribute("port", 8081)  # set again: moves to the end
        client.set_attributes({"a": True, "b": 1.5, "c": "x"})
        client.add_event("retry", {"bridge.attempt": 2, "list": [1, 2]})
        client.add_event("given time", timestamp=GIVEN_EVENT)
        client.update_name("POST ingest")
        client.set_status(StatusCode.OK)
        client.set_status(StatusCode.ERROR, "ignored: OK is final")
        client.add_link(trace.SpanContext(9, 9, is_remote=True), {"link.kind": "follows"})
        client.add_link(trace.INVALID_SPAN_CONTEXT)  # invalid and bare: ignored
        client.end()
        client.end()  # twice: a warning, nothing exported
        client.set_attribute("late", 1)
        client.set_attributes({"late": 2})
        client.add_event("late")
        client.add_link(trace.SpanContext(8, 8, is_remote=False))
        client.update_name("late")
        client.set_status(StatusCode.ERROR)
        consumer.set_attribute("bridge.outcome", "delivered")
        consumer.set_status(Status(StatusCode.ERROR, "from a Status"), "and a description")

    odd = tracer.start_span("odd values", attributes={"seq": ("a", "b")})
    made.append(odd)
    odd.set_attribute("plain", "first")
    odd.set_attribute("tuple", (1, 2))
    odd.set_attribute("list", [1.5, 2.5])
    odd.set_attribute("bytes", b"raw")
    odd.set_attribute("none", None)
    odd.set_attribute("enum", Level.HIGH)
    odd.set_attribute("opaque", Opaque())  # type: ignore[arg-type]
    odd.set_attribute("", "empty key")
    odd.set_attribute("plain", "again")
    odd.set_attributes({"m1": 1, "": 2, 3: "int key", "m2": [3]})  # type: ignore[dict-item]
    odd.set_status(StatusCode.ERROR, "with description")
    odd.set_status(StatusCode.UNSET)
    odd.end(GIVEN_END)

    many = tracer.start_span("many", start_time=GIVEN_START)
    made.append(many)
    for index in range(6):
        many.set_attribute(f"k{index}", index)
        many.add_event(f"e{index}", {"i": index, "j": -index, "k": str(index)})
        many.add_link(trace.SpanContext(100 + index, 100 + index, False), {"i": index, "j": 1})
    many.set_attributes({f"s{index}": index for index in range(5)})
    many.record_exception(ValueError("recorded"), {"extra": "yes"}, timestamp=GIVEN_EVENT)
    many.end(GIVEN_END)

    def fail_in_current_span() -> None:
        with tracer.start_as_current_span("fails", attributes={"x": 1}) as span:
            made.append(span)
            _fail()

    with pytest.raises(ValueError, match="price out of range"):
        fail_in_current_span()

    def fail_in_span_block() -> None:
        with tracer.start_span("with span", kind=SpanKind.PRODUCER) as span:
            made.append(span)
            _fail()

    with pytest.raises(ValueError, match="price out of range"):
        fail_in_span_block()

    def fail_quietly() -> None:
        with tracer.start_as_current_span(
            "quiet", record_exception=False, set_status_on_exception=False
        ) as span:
            made.append(span)
            raise KeyError("k")

    with pytest.raises(KeyError):
        fail_quietly()

    linked = tracer.start_span("linked", links=[Link(trace.SpanContext(7, 7, False), {"l": 1})])
    made.append(linked)
    linked.end()
    unsampled = propagate.extract({"traceparent": PRODUCER[:-2] + "00", "tracestate": "v=2"})
    dropped = tracer.start_span("unsampled parent", context=unsampled, attributes={"d": 1})
    made.append(dropped)
    made.append(tracer.start_span("under dropped", context=trace.set_span_in_context(dropped)))
    record_only = tracer.start_span("record-only", attributes={"r": 1})
    made.append(record_only)
    record_only.set_attribute("seen", False)
    record_only.end()
    return made


def _event(event: Any) -> tuple[Any, ...]:
    """An event as comparable data (the clock's timestamps compared separately)."""
    attributes = dict(event.attributes or {})
    if "exception.stacktrace" in attributes:
        attributes["exception.stacktrace"] = _frames(str(attributes["exception.stacktrace"]))
    stamp = event.timestamp if event.timestamp == GIVEN_EVENT else "clock"
    return (event.name, list(attributes.items()), event.dropped_attributes, stamp)


def _frames(stacktrace: str) -> str:
    """A stack trace without the frames of the SDK's and contextlib's context managers.

    The SDK's ``start_as_current_span`` is a generator: an exception thrown into it gains the
    generator's frame; LeanTracer's plain context manager adds none.
    """
    lines = stacktrace.splitlines()
    kept: list[str] = []
    skip = False
    for line in lines:
        if line.startswith('  File "'):
            skip = "opentelemetry" in line or "contextlib" in line
        if not skip:
            kept.append(line)
    return "\n".join(kept)


def _fields(span: ReadableSpan) -> dict[str, Any]:
    """Every field an exporter reads from ``span``, as comparable data."""
    return {
        "name": span.name,
        "context": span.context,
        "parent": span.parent,
        "kind": span.kind,
        "attributes": list((span.attributes or {}).items()),
        "dropped_attributes": span.dropped_attributes,
        "events": [_event(event) for event in span.events],
        "dropped_events": span.dropped_events,
        "links": [
            (link.context, list((link.attributes or {}).items()), link.dropped_attributes)
            for link in span.links
        ],
        "dropped_links": span.dropped_links,
        "status": (span.status.status_code, span.status.description),
        "resource": span.resource.attributes,
        "scope": span.instrumentation_scope,
        "start": span.start_time if span.start_time == GIVEN_START else "clock",
        "end": span.end_time if span.end_time == GIVEN_END else "clock",
    }


def _clock_order(span: ReadableSpan) -> bool:
    """Say whether the span's clock readings are in order: start <= events <= end.

    A span that starts or ends at a time the script gives is compared exactly instead.
    """
    assert span.start_time is not None
    assert span.end_time is not None
    if span.start_time == GIVEN_START or span.end_time == GIVEN_END:
        return True  # the script's own times, compared exactly
    stamps = [e.timestamp for e in span.events if e.timestamp != GIVEN_EVENT]
    return span.start_time <= span.end_time and all(
        span.start_time <= stamp <= span.end_time for stamp in stamps
    )


def _processor(kind: str, exporter: InMemorySpanExporter) -> SpanProcessor:
    """A SimpleSpanProcessor or a BatchSpanProcessor exporting into ``exporter``."""
    if kind == "simple":
        return SimpleSpanProcessor(exporter)
    return BatchSpanProcessor(exporter, schedule_delay_millis=60_000)


Run = tuple[list[ReadableSpan], list[trace.Span], list[str]]


@pytest.fixture
def run_script(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[..., Run]]:
    """Run ``script`` on a fresh provider; return the exported spans, the spans made, warnings."""
    providers: list[TracerProvider] = []

    def run(*, lean: bool, processor: str, sampler: Sampler, limits: SpanLimits | None) -> Run:
        provider = TracerProvider(
            sampler=sampler, id_generator=CountingIds(), span_limits=limits, shutdown_on_exit=False
        )
        providers.append(provider)
        exporter = InMemorySpanExporter()
        provider.add_span_processor(_processor(processor, exporter))
        sdk = get_tracer(provider)
        tracer: trace.Tracer = LeanTracer(sdk, provider) if lean else sdk
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="opentelemetry"):
            made = script(tracer)
        warnings = [r.getMessage() for r in caplog.records if r.name.startswith("opentelemetry")]
        provider.force_flush()
        return list(exporter.get_finished_spans()), made, warnings

    yield run
    for provider in providers:
        provider.shutdown()


SAMPLERS: Final = {
    "parent-based": ParentBased(ALWAYS_ON),
    # Not the stock delegates: the sampler must be asked, never answered for.
    "parent-based-inverted": ParentBased(
        ALWAYS_ON,
        remote_parent_sampled=ALWAYS_OFF,
        remote_parent_not_sampled=ALWAYS_ON,
        local_parent_not_sampled=ALWAYS_ON,
    ),
    "tagging": TaggingSampler(),
}
LIMITS: Final = {
    "default": None,
    "unlimited": SpanLimits(
        max_events=SpanLimits.UNSET,
        max_links=SpanLimits.UNSET,
        max_span_attributes=SpanLimits.UNSET,
        max_event_attributes=SpanLimits.UNSET,
        max_link_attributes=SpanLimits.UNSET,
    ),
    "small": SpanLimits(
        max_span_attributes=4,
        max_events=3,
        max_links=2,
        max_event_attributes=2,
        max_link_attributes=1,
    ),
}


@pytest.mark.parametrize("limits", LIMITS.keys())
@pytest.mark.parametrize("sampler", SAMPLERS.keys())
@pytest.mark.parametrize("processor", ["simple", "batch"])
def test_lean_spans_export_what_the_sdk_spans_export(
    run_script: Callable[..., Run], processor: str, sampler: str, limits: str
) -> None:
    """The same calls give the same exported spans and warnings from both tracers."""
    options = {"processor": processor, "sampler": SAMPLERS[sampler], "limits": LIMITS[limits]}
    expected, sdk_made, sdk_warnings = run_script(lean=False, **options)
    exported, lean_made, lean_warnings = run_script(lean=True, **options)
    assert not any(isinstance(span, LeanSpan) for span in sdk_made)
    # The same ids, flags and trace states, exported or not (ids asked for in the same order).
    assert [s.get_span_context() for s in lean_made] == [s.get_span_context() for s in sdk_made]
    # Recording spans are lean but the one started with links, which the SDK makes.
    assert [type(span).__name__ for span in lean_made] == [
        "LeanSpan"
        if isinstance(span, ReadableSpan) and span.name != "linked"
        else type(span).__name__
        for span in sdk_made
    ]
    assert sum(type(span) is LeanSpan for span in lean_made) >= 7
    assert [s.name for s in exported] == [s.name for s in expected]
    for mine, theirs in zip(exported, expected, strict=True):
        assert _fields(mine) == _fields(theirs), mine.name
        assert _clock_order(mine)
    assert lean_warnings == sdk_warnings
    assert "Calling end() on an ended span." in lean_warnings
    # The tagging sampler's RECORD_ONLY span is recorded but never exported.
    assert ("record-only" in [s.name for s in exported]) == (sampler != "tagging")


def test_an_unknown_processor_gets_the_sdks_spans() -> None:
    """A processor other than Simple/Batch may need on_start: the SDK makes every span."""

    class Starting(SpanProcessor):
        """Counts on_start calls (what a lean span would never make)."""

        def __init__(self) -> None:
            """Start at zero."""
            self.started = 0

        def on_start(self, span: Any, parent_context: Context | None = None) -> None:
            """Count a started span."""
            self.started += 1

    provider = TracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lean = LeanTracer(get_tracer(provider), provider)
    with lean.start_as_current_span("before") as before:
        assert isinstance(before, LeanSpan)
    starting = Starting()
    provider.add_span_processor(starting)
    with lean.start_as_current_span("after") as after:
        assert not isinstance(after, LeanSpan)
    assert starting.started == 1
    assert [s.name for s in exporter.get_finished_spans()] == ["before", "after"]


def test_a_length_limit_gets_the_sdks_spans() -> None:
    """Attribute values to truncate: the SDK makes the span, so values are cut as it cuts them."""
    provider = TracerProvider(
        span_limits=SpanLimits(max_span_attribute_length=3), shutdown_on_exit=False
    )
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lean = LeanTracer(get_tracer(provider), provider)
    with lean.start_as_current_span("cut", attributes={"k": "abcdef"}) as span:
        assert not isinstance(span, LeanSpan)
    [finished] = exporter.get_finished_spans()
    assert finished.attributes == {"k": "abc"}


def test_a_lean_span_becomes_current_and_carries_its_ids() -> None:
    """Inside the block the lean span is current; a child and the traceparent use its ids."""
    provider = TracerProvider(shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    lean = LeanTracer(get_tracer(provider), provider)
    with lean.start_as_current_span("parent") as parent:
        assert trace.get_current_span() is parent
        child = lean.start_span("child")
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(child))
        child.end()
    context = child.get_span_context()
    flags = int(context.trace_flags)
    assert flags & trace.TraceFlags.SAMPLED
    assert carrier["traceparent"] == (
        f"00-{context.trace_id:032x}-{context.span_id:016x}-{flags:02x}"
    )
    assert repr(parent).startswith('LeanSpan(name="parent"')
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert finished["child"].parent == parent.get_span_context()
    assert finished["parent"].parent is None
    assert trace.get_current_span() is trace.INVALID_SPAN


def test_without_a_processor_a_parent_based_with_other_delegates_is_asked() -> None:
    """No processor, ParentBased that drops sampled remote parents: the ids-only span is unsampled.

    Only the stock ParentBased may be answered for from the parent's flag.
    """
    sampler = ParentBased(ALWAYS_ON, remote_parent_sampled=ALWAYS_OFF)
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    lean = LeanTracer(get_tracer(provider), provider)
    producer = propagate.extract({"traceparent": PRODUCER})
    span = lean.start_span("process signals", context=producer)
    reference = get_tracer(provider).start_span("process signals", context=producer)
    assert not reference.get_span_context().trace_flags.sampled
    assert span.get_span_context().trace_flags == reference.get_span_context().trace_flags


def test_with_the_sdks_span_metrics_on_spans_are_the_sdks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED: the SDK makes the span, so its metrics count it."""
    monkeypatch.setenv("OTEL_PYTHON_SDK_INTERNAL_METRICS_ENABLED", "true")
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    provider = TracerProvider(meter_provider=meters, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    lean = LeanTracer(get_tracer(provider), provider)
    with lean.start_as_current_span("counted") as span:
        assert not isinstance(span, LeanSpan)
    data = reader.get_metrics_data()
    assert data is not None
    names = {
        metric.name
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
    }
    assert "otel.sdk.span.started" in names
    meters.shutdown()
