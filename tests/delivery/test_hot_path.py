"""The delivery path's hand-written shortcuts give exactly what the library calls they replace.

Each shortcut (X-Timestamp text, idempotency key, trace context headers) is checked against the
standard library or OpenTelemetry call it stands in for, over generated inputs, and the
fallbacks are checked to be taken when the shortcut's assumptions do not hold.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry import baggage, propagate, trace
from opentelemetry import context as otel_context
from opentelemetry.baggage.propagation import W3CBaggagePropagator
from opentelemetry.propagators.composite import CompositePropagator
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bridge.core.signal import encode_canonical
from bridge.core.timestamps import format_timestamp
from bridge.delivery.jobs import idempotency_key, instrument_of, prepare_job
from bridge.errors import InvalidSignalError
from bridge.streams.entries import SIGNAL_FIELD, Entry
from bridge.telemetry.propagation import extract_parent, inject_trace
from tests.support import make_signal

_EPOCH_S = st.floats(min_value=-6e10, max_value=2.5e11, allow_nan=False, allow_infinity=False)


@given(
    st.one_of(
        _EPOCH_S,
        st.integers(min_value=0, max_value=4 * 10**15).map(lambda us: us / 1e6),
        st.integers(min_value=0, max_value=4 * 10**9).map(lambda s: s + 0.9999995),
    )
)
def test_format_timestamp_is_datetimes_own_text(epoch_s: float) -> None:
    """X-Timestamp text equals datetime's RFC 3339 rendering, rounding included."""
    expected = datetime.fromtimestamp(epoch_s, UTC).replace(tzinfo=None)
    assert format_timestamp(epoch_s) == expected.isoformat(timespec="microseconds") + "Z"


@given(st.text(max_size=300), st.text(max_size=40), st.text(min_size=1, max_size=30))
def test_idempotency_key_is_uuid5(signal_id: str, stream: str, entry_id: str) -> None:
    """The key is uuid5(NAMESPACE_URL, signal_id or '<stream>/<entry id>'), byte for byte."""
    name = signal_id.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    assert idempotency_key(stream, entry_id, name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))
    by_entry = idempotency_key(stream, entry_id, None)
    assert by_entry == str(uuid.uuid5(uuid.NAMESPACE_URL, f"{stream}/{entry_id}"))


_TRACEPARENTS = st.one_of(
    st.builds(
        lambda version, trace_id, span_id, flags, tail: (
            f"{version}-{trace_id:032x}-{span_id:016x}-{flags:02x}{tail}"
        ),
        st.sampled_from(["00", "01", "cc", "ff", "0g"]),
        st.integers(min_value=0, max_value=2**128 - 1),
        st.integers(min_value=0, max_value=2**64 - 1),
        st.integers(min_value=0, max_value=255),
        st.sampled_from(["", "-x", "-", " ", "\t"]),
    ),
    st.text(max_size=80),
)
_TRACESTATES = st.one_of(
    st.none(), st.just(""), st.just("vendor=abc,other=1"), st.just("bad"), st.text(max_size=40)
)


@given(_TRACEPARENTS, _TRACESTATES)
def test_extract_parent_equals_the_global_propagator(
    traceparent: str, tracestate: str | None
) -> None:
    """An entry's traceparent/tracestate give the context propagate.extract would."""
    carrier = {"traceparent": traceparent}
    if tracestate is not None:
        carrier["tracestate"] = tracestate
    expected = trace.get_current_span(propagate.extract(carrier)).get_span_context()
    found = trace.get_current_span(extract_parent(traceparent, tracestate)).get_span_context()
    assert found == expected
    assert found.trace_state == expected.trace_state


def _headers_both_ways(
    span: trace.Span, context: otel_context.Context | None
) -> tuple[dict[str, str], dict[str, str]]:
    """The headers inject_trace writes, and those propagate.inject writes, for one span."""
    ours: dict[str, str] = {}
    inject_trace(ours, span, context)
    theirs: dict[str, str] = {}
    propagate.inject(theirs, context=trace.set_span_in_context(span, context))
    return ours, theirs


@given(
    st.integers(min_value=0, max_value=2**128 - 1),
    st.integers(min_value=0, max_value=2**64 - 1),
    st.integers(min_value=0, max_value=255),
    st.sampled_from(["", "vendor=abc", "a=1,b=2"]),
)
def test_inject_trace_equals_the_global_propagator(
    trace_id: int, span_id: int, flags: int, state: str
) -> None:
    """The POST carries the traceparent/tracestate propagate.inject would write."""
    span_context = trace.SpanContext(
        trace_id,
        span_id,
        is_remote=False,
        trace_flags=trace.TraceFlags(flags),
        trace_state=trace.TraceState.from_header([state]) if state else None,
    )
    ours, theirs = _headers_both_ways(trace.NonRecordingSpan(span_context), None)
    assert ours == theirs


def test_inject_trace_carries_baggage_through_the_propagators() -> None:
    """Baggage in the context is sent as the baggage propagator sends it."""
    span = trace.NonRecordingSpan(
        trace.SpanContext(1, 2, is_remote=False, trace_flags=trace.TraceFlags(1))
    )
    context = baggage.set_baggage("tenant", "blue")
    ours, theirs = _headers_both_ways(span, context)
    assert ours == theirs
    assert ours["baggage"] == "tenant=blue"


class _Marker(TextMapPropagator):
    """A propagator nobody installs by default: writes one header, reads nothing."""

    def extract(
        self,
        carrier: CarrierT,
        context: otel_context.Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> otel_context.Context:
        """Read nothing."""
        return context if context is not None else otel_context.Context()

    def inject(
        self,
        carrier: CarrierT,
        context: otel_context.Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        """Write a marker header."""
        setter.set(carrier, "x-marker", "1")

    @property
    def fields(self) -> set[str]:
        """The one header it writes."""
        return {"x-marker"}


@pytest.fixture
def custom_propagators() -> Iterator[None]:
    """Install tracecontext + a custom propagator globally, as OTEL_PROPAGATORS would."""
    before = propagate.get_global_textmap()
    propagate.set_global_textmap(CompositePropagator([TraceContextTextMapPropagator(), _Marker()]))
    yield
    propagate.set_global_textmap(before)


@pytest.mark.usefixtures("custom_propagators")
def test_other_propagators_are_used_when_configured() -> None:
    """With propagators other than the default pair, their headers are written too."""
    span = trace.NonRecordingSpan(
        trace.SpanContext(1, 2, is_remote=False, trace_flags=trace.TraceFlags(1))
    )
    ours, theirs = _headers_both_ways(span, None)
    assert ours == theirs
    assert ours["x-marker"] == "1"


def test_the_default_pair_is_recognised() -> None:
    """The SDK's default propagators are the pair the shortcut stands in for."""
    textmap = propagate.get_global_textmap()
    assert isinstance(textmap, CompositePropagator)
    kinds = [type(part) for part in textmap._propagators]  # what the shortcut reads
    assert kinds == [TraceContextTextMapPropagator, W3CBaggagePropagator]


@given(
    st.text(min_size=1, max_size=40).filter(lambda text: text == text.strip()),
    st.integers(min_value=0, max_value=50),
)
def test_instrument_of_reads_what_the_full_decode_reads(instrument: str, i: int) -> None:
    """A lane's refetch reads only the instrument: the same text the full decode validates."""
    try:
        signal = make_signal(i, instrument=instrument)
    except InvalidSignalError:
        return  # not a valid instrument: the full decode refuses it too
    entry = Entry(f"{i}-0", {SIGNAL_FIELD: encode_canonical(signal)})
    decoded = prepare_job(entry, stream="s", max_body_size=65536).signal
    assert decoded is not None
    assert instrument_of(entry) == decoded.instrument == instrument


@pytest.mark.parametrize(
    "fields",
    [{}, {SIGNAL_FIELD: b"{not json"}, {SIGNAL_FIELD: b'{"instrument": 1}'}, {SIGNAL_FIELD: b"[]"}],
    ids=["no-signal", "broken", "number", "array"],
)
def test_instrument_of_is_none_when_there_is_no_instrument_to_read(
    fields: dict[bytes, bytes],
) -> None:
    """An entry without a readable instrument is never taken as one of a lane's own."""
    assert instrument_of(Entry("1-0", fields)) is None
