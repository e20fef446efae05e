"""The current context read and set through the API's ContextVar: the same answers as the API."""

from __future__ import annotations

import contextvars
import logging

import pytest
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler

from bridge.telemetry.fastpath import current, gate
from bridge.telemetry.propagation import inject_trace
from bridge.telemetry.tracing import IdsTracer, LeanTracer, get_tracer

_SPAN = trace.NonRecordingSpan(trace.SpanContext(5, 6, False, trace.TraceFlags(1)))


def test_with_the_fast_paths_on_the_current_context_is_the_apis_contextvar() -> None:
    """get/set/reset are the stock runtime's ContextVar methods, seen alike by the API."""
    current.CURRENT.get()  # resolved on first use
    assert gate.fast_paths().enabled
    token = current.CURRENT.set(current.with_span(_SPAN))
    try:
        assert trace.get_current_span() is _SPAN
        assert current.CURRENT.get() is otel_context.get_current()
    finally:
        current.CURRENT.reset(token)
    assert trace.get_current_span() is trace.INVALID_SPAN


@pytest.mark.usefixtures("fresh_gate")
def test_with_the_fast_paths_off_the_current_context_is_the_apis_functions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An unverified SDK: a fresh CURRENT binds get_current, attach and detach themselves."""
    monkeypatch.setattr(gate, "_version", lambda distribution: "1.99.0")
    fresh = current._Current()
    token = fresh.set(current.with_span(_SPAN))
    assert trace.get_current_span() is _SPAN
    fresh.reset(token)
    assert (fresh.get, fresh.set, fresh.reset) == (
        otel_context.get_current,
        otel_context.attach,
        otel_context.detach,
    )


@pytest.mark.parametrize(
    "value", [None, _SPAN, "not a span"], ids=["nothing", "a-span", "not-a-span"]
)
def test_span_in_is_get_current_span(value: object) -> None:
    """The span of the current or a given context, INVALID_SPAN when there is none or no Span."""
    context = otel_context.set_value(current.SPAN_KEY, value)
    assert current.span_in(context) is trace.get_current_span(context)
    token = otel_context.attach(context)
    try:
        assert current.span_in() is trace.get_current_span()
    finally:
        otel_context.detach(token)


def test_with_span_is_set_span_in_context() -> None:
    """The current context with the span in it, every other value kept."""
    token = otel_context.attach(baggage.set_baggage("tenant", "blue"))
    try:
        assert current.with_span(_SPAN) == trace.set_span_in_context(_SPAN)
    finally:
        otel_context.detach(token)


def test_a_span_left_in_another_context_is_detached_as_the_api_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Leaving the span in another context than it began in logs the API's own error."""
    tracer = IdsTracer(RandomIdGenerator(), ParentBased(ALWAYS_OFF), follows_parent=True)
    block = tracer.start_as_current_span("s")
    contextvars.copy_context().run(block.__enter__)
    with caplog.at_level(logging.ERROR, logger="opentelemetry.context"):
        block.__exit__(None, None, None)
    assert [r.getMessage() for r in caplog.records] == ["Failed to detach context"]


def test_baggage_in_the_current_context_goes_through_the_propagators() -> None:
    """Baggage attached (not passed) is sent as the composite propagator sends it."""
    token = otel_context.attach(baggage.set_baggage("tenant", "blue"))
    try:
        ours: dict[str, str] = {}
        inject_trace(ours, _SPAN)
        theirs: dict[str, str] = {}
        propagate.inject(theirs, context=trace.set_span_in_context(_SPAN))
    finally:
        otel_context.detach(token)
    assert ours == theirs
    assert ours["baggage"] == "tenant=blue"


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(ALWAYS_OFF), ParentBased(ALWAYS_ON), ALWAYS_ON],
    ids=["parent-based-off", "parent-based-on", "always-on"],
)
def test_a_root_of_the_ids_tracer_has_the_sdks_flags_and_state(sampler: Sampler) -> None:
    """A root is answered for only under ParentBased(ALWAYS_OFF); else the sampler is asked."""
    ids = RandomIdGenerator()
    sdk = get_tracer(TracerProvider(sampler=sampler, id_generator=ids, shutdown_on_exit=False))
    made = IdsTracer(ids, sampler, follows_parent=True).start_span("root")
    expected = sdk.start_span("root")
    ctx, ref = made.get_span_context(), expected.get_span_context()
    assert (ctx.trace_flags, ctx.trace_state, ctx.is_valid) == (
        ref.trace_flags,
        ref.trace_state,
        ref.is_valid,
    )


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(ALWAYS_OFF), ParentBased(ALWAYS_ON)],
    ids=["parent-based-off", "parent-based-on"],
)
def test_a_recorded_root_of_the_lean_tracer_is_the_sdks(sampler: Sampler) -> None:
    """With a processor, a root answered for has the SDK's flags, state, attributes and parent."""
    made = []
    for lean in (False, True):
        provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
        exporter = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        sdk = get_tracer(provider)
        tracer = LeanTracer(sdk, provider) if lean else sdk
        span = tracer.start_span("root", attributes={"a": 1})
        span.end()
        ctx = span.get_span_context()
        finished = exporter.get_finished_spans()
        exported = [(s.name, s.parent, dict(s.attributes or {})) for s in finished]
        made.append((span.is_recording(), ctx.trace_flags, ctx.trace_state, exported))
    assert made[0] == made[1]
