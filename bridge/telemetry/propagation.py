"""W3C trace context in and out: the producer's ``traceparent`` on an entry, the POST's header.

With the propagators the SDK installs by default (``OTEL_PROPAGATORS`` unset or
``tracecontext,baggage``) and no baggage in play, the headers are exactly the TraceContext
propagator's, made without the composite propagator's per-call work (about half its cost on
every delivery). Telling the default pair apart reads the composite's private list, so this
shortcut runs only while ``fast_paths()`` is on. Any other configuration (b3, jaeger, baggage
set by someone) goes through ``opentelemetry.propagate`` as usual.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Final

from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import TextMapPropagator
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.telemetry.fastpath.current import CURRENT
from bridge.telemetry.fastpath.gate import fast_paths

__all__ = ["extract_parent", "inject_trace"]

_TRACECONTEXT: Final = TraceContextTextMapPropagator()
_DEFAULT_KINDS: Final = [TraceContextTextMapPropagator, W3CBaggagePropagator]
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
