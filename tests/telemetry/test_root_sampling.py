"""Spans answered for without asking a stock sampler: the SDK's own decision, id by id.

Roots under ParentBased with an ALWAYS_ON / ALWAYS_OFF / TraceIdRatioBased root, and every span
under a plain ALWAYS_ON / ALWAYS_OFF / TraceIdRatioBased, get the flags, trace state and
attributes the SDK's tracer gives them, on trace ids either side of the ratio's bound.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)

from bridge.telemetry.tracing import IdsTracer, LeanTracer, get_tracer

_LIMIT: Final = (1 << 64) - 1
_RATIO: Final = TraceIdRatioBased(0.3)
_SAMPLERS: Final[dict[str, Callable[[], Sampler]]] = {
    "parent-based-ratio": lambda: ParentBased(TraceIdRatioBased(0.3)),
    "parent-based-off": lambda: ParentBased(ALWAYS_OFF),
    "ratio": lambda: TraceIdRatioBased(0.3),
    "ratio-none": lambda: TraceIdRatioBased(0.0),
    "ratio-all": lambda: TraceIdRatioBased(1.0),
    "always-on": lambda: ALWAYS_ON,
    "always-off": lambda: ALWAYS_OFF,
}
# Ids either side of the 0.3 ratio's bound in the low 64 bits, some with high bits set.
_NEAR: Final = [_RATIO.bound - 1, _RATIO.bound, _RATIO.bound + 1, 1, _LIMIT]
_TRACE_IDS: Final = [*_NEAR, *((1 << 100) | low for low in _NEAR), (1 << 128) - 1]
_STATE: Final = trace.TraceState([("vendor", "v1")])

_Row = tuple[int, trace.TraceFlags, trace.TraceState, bool]


class _GivenIds(IdGenerator):
    """Trace ids from a list, span ids 1, 2, 3 ..., so twin providers give the same ids."""

    def __init__(self) -> None:
        """Hand out _TRACE_IDS in order."""
        self._trace_ids: Iterator[int] = iter(_TRACE_IDS)
        self._span = 0

    def generate_span_id(self) -> int:
        """Return the next span id."""
        self._span += 1
        return self._span

    def generate_trace_id(self) -> int:
        """Return the next given trace id."""
        return next(self._trace_ids)


def _spans(
    sampler: Sampler, *, tracer_kind: str, parent_flags: int | None
) -> tuple[list[_Row], list[tuple[int, object, object]]]:
    """One span per id (a root, or a child of a remote parent with that trace id)."""
    provider = TracerProvider(sampler=sampler, id_generator=_GivenIds(), shutdown_on_exit=False)
    exporter = InMemorySpanExporter()
    if tracer_kind != "ids":
        provider.add_span_processor(SimpleSpanProcessor(exporter))
    sdk = get_tracer(provider)
    tracer: trace.Tracer = sdk
    if tracer_kind == "lean":
        tracer = LeanTracer(sdk, provider)
    elif tracer_kind == "ids":  # as setup_telemetry builds it, for a parent-based sampler
        follows = isinstance(sampler, ParentBased)
        tracer = IdsTracer(provider.id_generator, sampler, follows_parent=follows)
    made: list[_Row] = []
    for trace_id in _TRACE_IDS:
        context = None
        if parent_flags is not None:  # -1: an invalid parent (zero ids) that has a trace state
            parent = (
                trace.SpanContext(0, 0, True, trace.TraceFlags(1), _STATE)
                if parent_flags < 0
                else trace.SpanContext(trace_id, 99, True, trace.TraceFlags(parent_flags), _STATE)
            )
            context = trace.set_span_in_context(trace.NonRecordingSpan(parent))
        span = tracer.start_span("span", context=context, attributes={"a": 1})
        span.end()
        ctx = span.get_span_context()
        made.append((ctx.trace_id, ctx.trace_flags, ctx.trace_state, span.is_recording()))
    exported: list[tuple[int, object, object]] = [
        (s.context.trace_id, s.parent, dict(s.attributes or {}))
        for s in exporter.get_finished_spans()
    ]
    return made, exported


@pytest.mark.parametrize(
    "parent_flags",
    [None, -1, 0, 1, 2, 3],
    ids=["root", "invalid", "unsampled", "sampled", "random-unsampled", "random-sampled"],
)
@pytest.mark.parametrize("sampler", _SAMPLERS.keys())
def test_a_lean_span_is_sampled_and_exported_as_the_sdks(
    sampler: str, parent_flags: int | None
) -> None:
    """Sampled or dropped as the SDK decides; the sampled ones exported alike."""
    ours = _spans(_SAMPLERS[sampler](), tracer_kind="lean", parent_flags=parent_flags)
    sdk = _spans(_SAMPLERS[sampler](), tracer_kind="sdk", parent_flags=parent_flags)
    assert ours == sdk


@pytest.mark.parametrize(
    "parent_flags",
    [None, -1, 0, 1, 2, 3],
    ids=["root", "invalid", "unsampled", "sampled", "random-unsampled", "random-sampled"],
)
@pytest.mark.parametrize("sampler", _SAMPLERS.keys())
def test_an_ids_only_span_has_the_sdks_flags_and_state(
    sampler: str, parent_flags: int | None
) -> None:
    """The ids tracer's flags and trace state are those the SDK's span gets (none recorded)."""
    ours, _ = _spans(_SAMPLERS[sampler](), tracer_kind="ids", parent_flags=parent_flags)
    sdk, _ = _spans(_SAMPLERS[sampler](), tracer_kind="sdk", parent_flags=parent_flags)
    assert [row[:3] for row in ours] == [row[:3] for row in sdk]
