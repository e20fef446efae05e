"""W3C trace context in and out: the producer's ``traceparent`` on an entry, the POST's header.

With the propagators the SDK installs by default (``OTEL_PROPAGATORS`` unset or
``tracecontext,baggage``) and no baggage in play, the headers are exactly the TraceContext
propagator's, made without the composite propagator's per-call work (about half its cost on
every delivery); an entry's valid ``traceparent`` without ``tracestate`` is read with the
TraceContext propagator's own pattern and checks, without its getter and group calls. Telling
the default pair apart reads the composite's private list, so these shortcuts run only while
``fast_paths()`` is on. Any other configuration (b3, jaeger, baggage set by someone) goes
through ``opentelemetry.propagate`` as usual.
"""

from __future__ import annotations

import re
from collections.abc import MutableMapping
from typing import Final

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.telemetry.fastpath.current import CURRENT, SPAN_KEY
from bridge.telemetry.fastpath.gate import fast_paths

__all__ = ["extract_parent", "inject_trace"]

_TRACECONTEXT: Final = TraceContextTextMapPropagator()
_DEFAULT_KINDS: Final = [TraceContextTextMapPropagator, W3CBaggagePropagator]
# The TraceContext propagator's own pattern and length limit for a traceparent (the gate checks
# that they exist).
_TRACEPARENT_RE: Final[re.Pattern[str] | None] = getattr(
    TraceContextTextMapPropagator, "_TRACEPARENT_HEADER_FORMAT_RE", None
)
_MAX_LENGTH: Final[int] = getattr(TraceContextTextMapPropagator, "_TRACEPARENT_MAXIMUM_LENGTH", 0)
_ZERO_TRACE_ID: Final = "0" * 32
_ZERO_SPAN_ID: Final = "0" * 16
# The context key of the baggage, found through the public API.
_BAGGAGE_KEY: Final = next(iter(baggage.set_baggage("key", "value", otel_context.Context())))


class _Textmap:
    """Remembers whether the global propagator is the SDK's default pair (checked on change)."""

    seen: TextMapPropagator | None = None
    default = False


def _is_default_pair(textmap: TextMapPropagator) -> bool:
    """Say whether ``textmap`` is exactly TraceContext + W3C baggage, as built by default."""
    parts = getattr(textmap, "_propagators", None)  # the SDK's composite keeps its list here
    return (
        type(textmap) is CompositePropagator
        and isinstance(parts, list | tuple)
        and [type(part) for part in parts] == _DEFAULT_KINDS
    )


def _default_textmap() -> bool:
    """Say whether the global propagator (as set now) is the default pair."""
    textmap = propagate.get_global_textmap()
    if textmap is not _Textmap.seen:
        _Textmap.seen = textmap
        _Textmap.default = fast_paths().enabled and _is_default_pair(textmap)
    return _Textmap.default


def extract_parent(traceparent: str, tracestate: str | None = None) -> otel_context.Context:
    """Return the context an entry's ``traceparent`` (and ``tracestate``) describe.

    An entry carries no ``baggage`` field, so with the default pair only the TraceContext
    propagator has anything to read; the result is the composite's.
    """
    if tracestate is None and _TRACEPARENT_RE is not None and _default_textmap():
        # The TraceContext propagator's extract for a valid traceparent alone, without its
        # getter, re.search and group() calls; anything else is left to the propagator.
        match = _TRACEPARENT_RE.search(traceparent) if len(traceparent) <= _MAX_LENGTH else None
        if match is not None:
            version, trace_id, span_id, flags, rest = match.groups()
            if not (
                trace_id == _ZERO_TRACE_ID
                or span_id == _ZERO_SPAN_ID
                or version == "ff"
                or (version == "00" and rest)
            ):
                span_context = trace.SpanContext(
                    int(trace_id, 16), int(span_id, 16), True, trace.TraceFlags(int(flags, 16))
                )
                return otel_context.Context({SPAN_KEY: trace.NonRecordingSpan(span_context)})
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    if _default_textmap():
        return _TRACECONTEXT.extract(carrier)
    return propagate.extract(carrier)


def inject_trace(
    headers: MutableMapping[str, str],
    span: trace.Span,
    context: otel_context.Context | None = None,
) -> None:
    """Add the headers that carry ``span`` (a child of ``context``, default current) onward."""
    if _default_textmap():
        # baggage.get_all(set_span_in_context(span, context)), without building that context.
        carried = (CURRENT.get() if context is None else context).get(_BAGGAGE_KEY)
        if not (carried and isinstance(carried, dict)):
            # Exactly the TraceContext propagator's headers.
            span_context = span.get_span_context()
            if span_context == trace.INVALID_SPAN_CONTEXT:  # the propagator's own test
                return
            trace_id, span_id, _, flags, trace_state, _ = span_context  # typed as its tuple
            headers["traceparent"] = f"00-{trace_id:032x}-{span_id:016x}-{flags:02x}"
            # The shared empty state (a span without one) is told apart without its __len__.
            if trace_state is not trace.DEFAULT_TRACE_STATE and trace_state:
                headers["tracestate"] = trace_state.to_header()
            return
    propagate.inject(headers, context=trace.set_span_in_context(span, context))
