"""An entry's traceparent read by the shortcut gives the very context the propagator gives."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.telemetry.propagation import extract_parent

_HEX = "0123456789abcdef"
_TRACEPARENTS = st.one_of(
    st.builds(
        lambda version, trace_id, span_id, flags, lead, tail: (
            f"{lead}{version}-{trace_id}-{span_id}-{flags}{tail}"
        ),
        st.sampled_from(["00", "01", "cc", "ff", "0g", "0"]),
        st.one_of(st.just("0" * 32), st.text(_HEX, min_size=31, max_size=33)),
        st.one_of(st.just("0" * 16), st.text(_HEX, min_size=15, max_size=17)),
        st.text(_HEX + "G", min_size=1, max_size=3),
        st.sampled_from(["", " ", "\t "]),
        st.sampled_from(["", "-x", "-", " ", "\t", "\n", "-\n", "x"]),
    ),
    st.text(max_size=80),
)


def _described(context: otel_context.Context) -> tuple[list[str], object, object]:
    """A context's keys, its span's type and that span's full context (trace state included)."""
    span = trace.get_current_span(context)
    span_context = span.get_span_context()
    return list(context), type(span), (span_context, span_context.trace_state)


@given(_TRACEPARENTS)
def test_a_traceparent_alone_gives_the_propagators_context(traceparent: str) -> None:
    """Valid or not, the same keys, span type, ids, flags and remote mark as the propagator's."""
    expected = TraceContextTextMapPropagator().extract({"traceparent": traceparent})
    assert _described(extract_parent(traceparent)) == _described(expected)


def test_an_overlong_traceparent_is_left_to_the_propagator(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Past the propagator's length limit: its warning and an empty context, as ever."""
    header = f"00-{'1' * 32}-{'2' * 16}-01" + " " * 600
    with caplog.at_level(logging.WARNING):
        found = extract_parent(header)
    assert dict(found) == {}
    assert "traceparent header exceeded the maximum length" in caplog.text
