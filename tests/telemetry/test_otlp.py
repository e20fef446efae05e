"""Our OTLP encoder and exporter send what the SDK's OTLP/HTTP exporter would, only faster.

Differential: every batch encoded by ``bridge.telemetry.fastpath.otlp.encode_spans`` must parse to
a message equal
to the SDK's ``encode_spans`` of the same spans (generated shapes and real tracer spans). End to
end: the bridge's exporter and the stock one post to a real OTLP/HTTP receiver on 127.0.0.1 and
the receiver decodes the same requests; the exporter falls back to the SDK's encoder when the
installed SDK lacks what it relies on, and setup wires it for http/protobuf only.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Final

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util import BoundedList
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.span import TraceState

from bridge.telemetry.fastpath import gate, otlp_export
from bridge.telemetry.fastpath.otlp import encode_spans
from bridge.telemetry.fastpath.otlp_export import OtlpHttpSpanExporter
from bridge.telemetry.fastpath.spans import LeanSpan
from bridge.telemetry.setup import _span_exporter
from bridge.telemetry.tracing import LeanTracer, get_tracer
from tests.otlp_receiver import OtlpReceiver

SAMPLED: Final = TraceFlags(TraceFlags.SAMPLED)

# --- generated shapes ------------------------------------------------------------------------

texts = st.text(max_size=12)  # non-ASCII included; hypothesis leaves out lone surrogates
ints = st.one_of(
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([0, 1, -1, 127, 128, 2**31, -(2**31), 2**63 - 1, -(2**63)]),
)
floats = st.floats(allow_nan=False)
plain_values = st.one_of(texts, st.booleans(), ints, floats)
arrays = st.one_of(
    st.lists(texts, max_size=3).map(tuple),
    st.lists(st.booleans(), max_size=3).map(tuple),
    st.lists(ints, max_size=3).map(tuple),
    st.lists(floats, max_size=3).map(tuple),
)
values = st.one_of(plain_values, arrays, st.binary(max_size=6))
# Few keys, so pairs repeat within and across batches and the caches are exercised.
keys = st.sampled_from(["k", "messaging.system", "n", "é", ""]) | texts
attribute_maps = st.dictionaries(keys, values, max_size=5)
ids = st.integers(1, 2**64 - 1)
trace_ids = st.integers(1, 2**128 - 1)
times = st.integers(0, 2**64 - 1)
trace_states = st.sampled_from(
    [None, TraceState(), TraceState([("vendor", "v1")]), TraceState([("a", "1"), ("b@x", "y")])]
)


@st.composite
def span_contexts(draw: st.DrawFn) -> SpanContext:
    """A valid span context, remote or not, with or without a trace state."""
    return SpanContext(
        trace_id=draw(trace_ids),
        span_id=draw(ids),
        is_remote=draw(st.booleans()),
        trace_flags=SAMPLED,
        trace_state=draw(trace_states),
    )


def bounded(attributes: Mapping[str, object], limit: int | None) -> BoundedAttributes:
    """Attributes as the SDK keeps them; a ``limit`` below their number makes dropped counts."""
    return BoundedAttributes(maxlen=limit, attributes=attributes, immutable=True)  # type: ignore[arg-type]


limits = st.sampled_from([None, 1, 3])
events = st.builds(
    lambda name, attrs, ts, limit: Event(name, bounded(attrs, limit), ts),
    texts,
    attribute_maps,
    st.one_of(st.none(), times),
    limits,
)
links = st.builds(
    lambda context, attrs, limit: Link(context, bounded(attrs, limit)),
    span_contexts(),
    attribute_maps,
    limits,
)
statuses = st.one_of(
    st.builds(Status, st.sampled_from(list(StatusCode)), st.one_of(st.none(), texts)),
)
resources = st.builds(
    Resource,
    st.dictionaries(keys, plain_values, max_size=3),
    st.one_of(st.none(), st.sampled_from(["", "https://opentelemetry.io/schemas/1.21.0"])),
)
scopes = st.one_of(
    st.none(),
    st.builds(
        InstrumentationScope,
        st.sampled_from(["signal-bridge", "other", ""]),
        st.one_of(st.none(), st.sampled_from(["", "0.1.0"])),
        st.one_of(st.none(), st.sampled_from(["", "https://example.com/s"])),
        st.one_of(st.none(), st.dictionaries(keys, plain_values, max_size=2)),
    ),
)


@st.composite
def span_batches(draw: st.DrawFn) -> list[ReadableSpan]:
    """A batch of finished spans over a few resources and scopes (some equal, distinct objects)."""
    pool_resources = draw(st.lists(resources, min_size=1, max_size=3))
    # An equal resource in another object must land in the same ResourceSpans, as in the SDK.
    pool_resources.append(Resource(pool_resources[0].attributes, pool_resources[0].schema_url))
    pool_scopes = draw(st.lists(scopes, min_size=1, max_size=3))
    batch = []
    for _ in range(draw(st.integers(1, 8))):
        limit = draw(limits)
        event_list = draw(st.lists(events, max_size=3))
        link_list = draw(st.lists(links, max_size=2))
        event_limit = draw(st.sampled_from([None, 1]))
        batch.append(
            ReadableSpan(
                name=draw(st.sampled_from(["process signals", "POST", ""]) | texts),
                context=draw(span_contexts()),
                parent=draw(st.one_of(st.none(), span_contexts())),
                resource=draw(st.sampled_from(pool_resources)),
                attributes=bounded(draw(attribute_maps), limit),
                events=BoundedList.from_seq(event_limit, event_list),
                links=BoundedList.from_seq(event_limit, link_list),
                kind=draw(st.sampled_from(list(SpanKind))),
                status=draw(statuses),
                start_time=draw(st.one_of(st.none(), times)),
                end_time=draw(st.one_of(st.none(), times)),
                instrumentation_scope=draw(st.sampled_from(pool_scopes)),
            )
        )
    return batch


def assert_same_request(spans: Sequence[ReadableSpan]) -> None:
    """Our bytes parse to the very message the SDK's encoder builds for ``spans``."""
    ours = ExportTraceServiceRequest.FromString(encode_spans(spans))
    theirs = sdk_encode(spans)
    assert ours == theirs, f"ours:\n{ours}\nSDK:\n{theirs}"


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=span_batches())
def test_generated_batches_encode_as_the_sdk_does(batch: list[ReadableSpan]) -> None:
    """Any mix of attribute types, events, links, statuses, parents, resources and scopes."""
    assert_same_request(batch)


# --- real tracer spans -----------------------------------------------------------------------


def _tracer_spans() -> list[ReadableSpan]:
    """Spans as the SDK's tracer ends them: limits hit, events, links, errors, a remote parent."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "signal-bridge", "service.instance.id": "b-1"}),
        span_limits=SpanLimits(max_span_attributes=6, max_events=2, max_links=1),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("signal-bridge", "0.1.0", schema_url="https://example.com/s")
    other = provider.get_tracer("other-scope")
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=SAMPLED)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    for index in range(3):
        with tracer.start_as_current_span(
            "process signals",
            context=parent if index % 2 == 0 else None,
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "redis", "messaging.message.id": f"{index}-0"},
            links=[Link(remote, {"why": "producer"}), Link(remote)],
        ) as span:
            span.add_event("retry", {"attempt": index, "delay_s": 0.25, "ok": False})
            span.add_event("more")
            span.add_event("dropped")
            with other.start_as_current_span("POST", kind=SpanKind.CLIENT) as post:
                post.set_attributes({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7})
                post.set_attribute("tags", ["x", "y"])
                post.set_status(Status(StatusCode.ERROR, "timed out ⏱"))
            span.set_status(StatusCode.OK)
    return list(exporter.get_finished_spans())


def test_spans_from_the_sdk_tracer_encode_as_the_sdk_does() -> None:
    """What a TracerProvider really hands the exporter, again and again (caches warm)."""
    spans = _tracer_spans()
    assert any(span.dropped_attributes for span in spans)
    assert any(span.dropped_events for span in spans)
    assert any(span.dropped_links for span in spans)
    for _ in range(3):
        assert_same_request(spans)
    assert_same_request(spans * 300)  # lengths past the varint table (ScopeSpans of ~1 MB)


def test_spans_the_bridge_records_encode_as_the_sdk_does() -> None:
    """LeanTracer's spans (plain dicts, no BoundedList) as the worker and client make them."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "b"}), shutdown_on_exit=False
    )
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = LeanTracer(get_tracer(provider), provider)
    remote = SpanContext(0xABC, 0xDEF, is_remote=True, trace_flags=SAMPLED)
    parent = trace.set_span_in_context(trace.NonRecordingSpan(remote))
    for index in range(3):
        with tracer.start_as_current_span(
            "process signals",
            context=parent if index else None,
            kind=SpanKind.CONSUMER,
            attributes={"messaging.system": "redis", "messaging.message.id": f"{index}-0"},
        ) as span:
            assert isinstance(span, LeanSpan)
            span.add_event("retry", {"bridge.attempt": index})
            with tracer.start_as_current_span("POST", kind=SpanKind.CLIENT) as post:
                post.set_attribute("http.response.status_code", 503)
                post.set_status(Status(StatusCode.ERROR, "503"))
            span.set_attribute("bridge.outcome", "success")
    spans = exporter.get_finished_spans()
    assert len(spans) == 6
    assert_same_request(spans)


def test_values_equal_across_types_are_not_confused_by_the_cache() -> None:
    """``True == 1 == 1.0`` in Python: each must still go out as its own OTLP type."""
    context = SpanContext(1, 2, is_remote=False)
    for value in (1, True, 1.0, "1", 1, True, 0, False, 0.0, -0.0, 0, "1", (1,), (True,)):
        span = ReadableSpan("s", context, attributes=bounded({"v": value}, None))
        assert_same_request([span])


def test_unencodable_attributes_are_skipped_as_the_sdk_skips_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ints beyond int64 and lone surrogates are left out (the rest kept), logged by key only."""
    context = SpanContext(1, 2, is_remote=False)
    attributes: dict[str, Any] = {
        "ok": "yes",
        "huge": 2**64 + 12345,
        "huge_array": (1, -(2**70)),
        "surrogate": "12345\ud800",
    }
    span = ReadableSpan("s", context, attributes=attributes)
    with caplog.at_level(logging.WARNING, logger="bridge.otlp"):
        body = encode_spans([span])
    assert ExportTraceServiceRequest.FromString(body) == sdk_encode([span])
    lines = [r.getMessage() for r in caplog.records if r.name == "bridge.otlp"]
    assert len(lines) == 3
    assert "huge" in lines[0]
    assert "12345" not in "\n".join(lines)


def test_rare_value_types_go_through_the_sdk_encoder() -> None:
    """Mappings, None and subclasses of str and int come out as the SDK encodes them."""

    class Label(str):
        """A str subclass (as an enum's value may be)."""

    class Count(int):
        """An int subclass."""

    context = SpanContext(1, 2, is_remote=False)
    attributes = {
        "map": {"inner": "x", "n": 3, "nested": {"deep": True}},
        "none": None,
        "label": Label("l"),
        "count": Count(7),
        "mixed": ("a", None),
    }
    span = ReadableSpan("s", context, attributes=attributes)  # type: ignore[arg-type]
    assert_same_request([span])


# --- the exporter, end to end ----------------------------------------------------------------


def _export_to(
    receiver: OtlpReceiver, exporter: OTLPSpanExporter, spans: list[ReadableSpan]
) -> None:
    """Export ``spans`` in one request and shut the exporter down."""
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]


def test_exporter_sends_what_the_stock_exporter_sends() -> None:
    """The receiver decodes the same request from the bridge's exporter as from the SDK's."""
    spans = _tracer_spans()
    with OtlpReceiver() as receiver:
        endpoint = f"{receiver.endpoint}/v1/traces"
        _export_to(receiver, OtlpHttpSpanExporter(endpoint=endpoint), spans)
        _export_to(receiver, OTLPSpanExporter(endpoint=endpoint), spans)
    assert receiver.bad_requests == []
    ours, stock = receiver.trace_requests
    assert ours == stock
    assert len(receiver.spans()) == 2 * len(spans)


def test_exporter_keeps_the_sdk_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_EXPORTER_OTLP_* still configure it: the endpoint and gzip compression from env."""
    spans = _tracer_spans()
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.endpoint}/v1/traces")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip")
        _export_to(receiver, OtlpHttpSpanExporter(), spans)
    assert receiver.bad_requests == []
    (request,) = receiver.trace_requests
    assert request == sdk_encode(spans)


@pytest.mark.usefixtures("fresh_gate")
def test_exporter_falls_back_to_the_sdk_encoder_when_a_private_part_is_missing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """An SDK without what the fast path uses: one INFO line, then exactly the stock export."""
    monkeypatch.setattr(gate, "_EXPORTER_ATTRIBUTES", (*gate._EXPORTER_ATTRIBUTES, "_gone"))

    def refuse(spans: Sequence[ReadableSpan]) -> bytes:
        """The fast encoder must not be used."""
        raise AssertionError(
            "bridge.telemetry.fastpath.otlp.encode_spans used despite the fallback"
        )

    monkeypatch.setattr(otlp_export, "encode_spans", refuse)
    spans = _tracer_spans()
    with OtlpReceiver() as receiver:
        with caplog.at_level(logging.INFO, logger="bridge.telemetry"):
            exporter = OtlpHttpSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        _export_to(receiver, exporter, spans)
    lines = [r for r in caplog.records if r.name == "bridge.telemetry"]
    assert [r.levelno for r in lines] == [logging.INFO]
    assert "_gone" in lines[0].getMessage()
    (request,) = receiver.trace_requests
    assert request == sdk_encode(spans)


def test_exporter_refuses_batches_after_shutdown() -> None:
    """As the SDK's exporter: a batch after shutdown fails and nothing is sent."""
    with OtlpReceiver() as receiver:
        exporter = OtlpHttpSpanExporter(endpoint=f"{receiver.endpoint}/v1/traces")
        exporter.shutdown()  # type: ignore[no-untyped-call]
        assert exporter.export(_tracer_spans()) is SpanExportResult.FAILURE
    assert receiver.trace_requests == []


def test_exporter_fails_a_batch_as_the_sdk_does(caplog: pytest.LogCaptureFixture) -> None:
    """Too large for max_request_size, refused by the receiver, or unencodable: FAILURE."""
    spans = _tracer_spans()
    unencodable = ReadableSpan("bad \ud800", SpanContext(1, 2, is_remote=False))
    with OtlpReceiver() as receiver:
        traces = f"{receiver.endpoint}/v1/traces"
        small = OtlpHttpSpanExporter(endpoint=traces, max_request_size=100)
        refused = OtlpHttpSpanExporter(endpoint=f"{receiver.endpoint}/v1/unknown")
        fine = OtlpHttpSpanExporter(endpoint=traces)
        with caplog.at_level(logging.WARNING):
            assert small.export(spans) is SpanExportResult.FAILURE
            assert refused.export(spans) is SpanExportResult.FAILURE
            assert fine.export([unencodable]) is SpanExportResult.FAILURE
            assert fine.export(spans) is SpanExportResult.SUCCESS
        for exporter in (small, refused, fine):
            exporter.shutdown()  # type: ignore[no-untyped-call]
    assert receiver.bad_requests == ["unknown path /v1/unknown"]
    (request,) = receiver.trace_requests
    assert request == sdk_encode(spans)
    assert any("max_request_size" in r.getMessage() for r in caplog.records)
    assert any("Failed to encode span batch" in r.getMessage() for r in caplog.records)


def test_setup_uses_the_bridge_exporter_for_http_protobuf_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """otlp_proto_http gets the bridge's exporter; gRPC stays the SDK's own."""
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:9")
    http = _span_exporter("otlp_proto_http")
    grpc = _span_exporter("otlp_proto_grpc")
    try:
        assert type(http) is OtlpHttpSpanExporter
        assert type(grpc) is GrpcSpanExporter
    finally:
        http.shutdown()  # type: ignore[no-untyped-call]
        grpc.shutdown()
