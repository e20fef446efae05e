"""Span ids and contexts IdsTracer and LeanTracer make themselves equal the SDK calls' ones.

With the SDK's RandomIdGenerator and the fast-path gate on, both tracers call
``random.getrandbits`` and build the ``SpanContext`` tuple themselves; these compare their spans
with those made through ``generate_span_id`` and ``SpanContext(...)`` from the same random
state, and check the fallbacks.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from bridge.telemetry.fastpath import gate
from bridge.telemetry.tracing import IdsTracer, LeanTracer, get_tracer

PARENTS = [
    None,
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
    "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00",
]


def _contexts(tracer: trace.Tracer, seed: int) -> list[tuple[object, ...]]:
    """Start a span under each parent and a child of it, from random state ``seed``."""
    random.seed(seed)
    made: list[tuple[object, ...]] = []
    for traceparent in PARENTS:
        parent = propagate.extract({"traceparent": traceparent}) if traceparent else None
        span = tracer.start_span("process s", context=parent)
        child = tracer.start_span("POST", context=trace.set_span_in_context(span))
        for each in (span, child):
            context = each.get_span_context()
            assert type(context) is trace.SpanContext
            made.append((*context, context.is_valid, type(context.trace_flags)))
    return made


class _SdkIds(RandomIdGenerator):
    """The SDK's generator under another type: IdsTracer then calls it and the API."""


@pytest.fixture
def gate_off() -> Iterator[None]:
    """The fast-path gate says no (as on an SDK version it does not know)."""
    saved = gate.VERIFIED_VERSIONS
    gate.fast_paths.cache_clear()
    gate.VERIFIED_VERSIONS = frozenset()
    try:
        yield
    finally:
        gate.VERIFIED_VERSIONS = saved
        gate.fast_paths.cache_clear()


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(ALWAYS_OFF), ParentBased(TraceIdRatioBased(0.5)), TraceIdRatioBased(0.5)],
    ids=["parent-based-off", "parent-based-ratio", "ratio"],
)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_lean_ids_are_the_sdks_draw_for_draw(sampler: object, seed: int) -> None:
    """Same random state, same ids, flags, state and validity as through the SDK's calls."""
    follows = isinstance(sampler, ParentBased)
    lean = IdsTracer(RandomIdGenerator(), sampler, follows_parent=follows)
    stock = IdsTracer(_SdkIds(), sampler, follows_parent=follows)
    assert lean._lean_ids
    assert not stock._lean_ids
    assert _contexts(lean, seed) == _contexts(stock, seed)


def test_a_zero_draw_is_drawn_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """A span id of 0 from getrandbits is drawn again, as RandomIdGenerator does."""
    draws = iter([0, 0, 7])
    monkeypatch.setattr(random, "getrandbits", lambda bits: next(draws))
    ids = RandomIdGenerator()
    tracer = IdsTracer(ids, ParentBased(ALWAYS_OFF), follows_parent=True)
    parent = propagate.extract({"traceparent": PARENTS[1]})
    assert tracer.start_span("s", context=parent).get_span_context().span_id == 7


def test_the_api_builds_contexts_when_the_gate_is_off(gate_off: None) -> None:
    """With the gate off, or another IdGenerator, the public API makes the ids and contexts."""
    del gate_off
    sampler = ParentBased(ALWAYS_OFF)
    ids = RandomIdGenerator()
    tracer = IdsTracer(ids, sampler, follows_parent=True)
    assert not tracer._lean_ids
    stock = IdsTracer(_SdkIds(), sampler, follows_parent=True)
    assert _contexts(tracer, 5) == _contexts(stock, 5)


def _recorded(ids: RandomIdGenerator, sampler: Sampler, seed: int) -> list[tuple[object, ...]]:
    """Spans of a LeanTracer on a provider that exports, from random state ``seed``."""
    provider = TracerProvider(sampler=sampler, id_generator=ids, shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = LeanTracer(get_tracer(provider), provider)
    assert tracer._lean_ids is (type(ids) is RandomIdGenerator)
    made = _contexts(tracer, seed)
    exported = [
        (*span.context, span.context.is_valid, span.parent)
        for span in exporter.get_finished_spans()
    ]
    return [*made, *exported]


@pytest.mark.parametrize(
    "sampler",
    [ParentBased(TraceIdRatioBased(0.5)), ALWAYS_ON, TraceIdRatioBased(0.5)],
    ids=["parent-based-ratio", "always-on", "ratio"],
)
def test_lean_tracer_ids_are_those_of_the_sdks_calls(sampler: Sampler) -> None:
    """A LeanTracer's recorded and dropped spans get the ids the SDK's calls would give them."""
    for seed in (1, 2):
        assert _recorded(RandomIdGenerator(), sampler, seed) == _recorded(_SdkIds(), sampler, seed)
