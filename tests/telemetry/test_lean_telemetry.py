"""Telemetry made cheap on the delivery path still shows a user the same ids, counts and spans.

``LeanTracer`` makes no span objects while its provider has no span processor: what a user sees
(the ``traceparent`` the ingest server receives, the log line's ids) must be what the SDK would
have produced, and spans must come back as soon as a processor is added. ``LocalCounter`` keeps
counters in this process: readers (in-memory, Prometheus text) must see the same cumulative sums.
Histogram exemplars are left out while no span is exported.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Final

import msgspec
import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry import propagate, trace
from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.devkit.ingest import IngestApp
from bridge.edge.client import HmacClient
from bridge.edge.settings import OutboundConfig
from bridge.telemetry.logs import JsonFormatter, log_fields
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.setup import setup_telemetry
from bridge.telemetry.tracing import IdsTracer, LeanTracer, get_tracer
from tests.fixtures_ingest import make_signal, metric_points
from tests.otlp_receiver import OtlpReceiver

PRODUCER_TRACE: Final = "0af7651916cd43dd8448eb211c80319c"
PRODUCER_SPAN: Final = "b7ad6b7169203331"


def _producer(flags: str) -> trace.Span:
    """The producer's span as the bridge sees it: extracted from an entry's traceparent."""
    context = propagate.extract({"traceparent": f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-{flags}"})
    return trace.get_current_span(context)


def _lean(sampler: Sampler) -> tuple[LeanTracer, TracerProvider]:
    """A LeanTracer on an SDK provider with ``sampler`` and no span processor."""
    provider = TracerProvider(sampler=sampler, shutdown_on_exit=False)
    return LeanTracer(get_tracer(provider), provider), provider


def _traceparent(span: trace.Span) -> str:
    """The traceparent header a POST made under ``span`` carries."""
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier["traceparent"]


@pytest.mark.parametrize("sampler", [ParentBased(ALWAYS_OFF), ParentBased(ALWAYS_ON), ALWAYS_ON])
@pytest.mark.parametrize("parent_flags", [None, "00", "01"])
def test_without_a_processor_the_ids_and_flags_are_the_sdks(
    sampler: Sampler, parent_flags: str | None
) -> None:
    """No processor: no recording span, but the trace id and flags the SDK itself would give."""
    lean, provider = _lean(sampler)
    sdk = get_tracer(provider)
    parent = None if parent_flags is None else trace.set_span_in_context(_producer(parent_flags))
    with lean.start_as_current_span("process s", context=parent, kind=SpanKind.CONSUMER) as span:
        assert trace.get_current_span() is span
        client = lean.start_span("POST", kind=SpanKind.CLIENT)
    assert trace.get_current_span() is trace.INVALID_SPAN
    expected = sdk.start_span("process s", context=parent, kind=SpanKind.CONSUMER)
    expected_child = sdk.start_span("POST", context=trace.set_span_in_context(expected))
    for made, reference, parent_ctx in (
        (span, expected, None if parent is None else _producer(parent_flags or "00")),
        (client, expected_child, span),
    ):
        ctx, ref = made.get_span_context(), reference.get_span_context()
        assert not made.is_recording()
        assert ctx.is_valid
        assert ctx.trace_flags == ref.trace_flags
        if parent_ctx is not None:
            assert ctx.trace_id == parent_ctx.get_span_context().trace_id
            assert ctx.span_id != parent_ctx.get_span_context().span_id
    ctx = client.get_span_context()
    header = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert _traceparent(client) == header


@pytest.mark.parametrize("parent_flags", [None, "00", "01", "03"])
def test_the_ids_tracer_gives_the_ids_flags_and_state_the_sdk_gives(
    parent_flags: str | None,
) -> None:
    """IdsTracer (no exporter, public API only): the SDK's flags and trace state, never a record."""
    ids = RandomIdGenerator()
    sampler = ParentBased(ALWAYS_OFF)
    sdk = get_tracer(TracerProvider(sampler=sampler, id_generator=ids, shutdown_on_exit=False))
    tracer = IdsTracer(ids, sampler, follows_parent=True)
    parent = None
    if parent_flags is not None:
        carrier = {
            "traceparent": f"00-{PRODUCER_TRACE}-{PRODUCER_SPAN}-{parent_flags}",
            "tracestate": "vendor=v1",
        }
        parent = propagate.extract(carrier)
    with tracer.start_as_current_span("process s", context=parent, kind=SpanKind.CONSUMER) as span:
        assert trace.get_current_span() is span
        client = tracer.start_span("POST", kind=SpanKind.CLIENT)
    expected = sdk.start_span("process s", context=parent, kind=SpanKind.CONSUMER)
    expected_child = sdk.start_span("POST", context=trace.set_span_in_context(expected))
    for made, reference in ((span, expected), (client, expected_child)):
        ctx, ref = made.get_span_context(), reference.get_span_context()
        assert not made.is_recording()
        assert ctx.is_valid
        assert (ctx.trace_flags, ctx.trace_state) == (ref.trace_flags, ref.trace_state)
        if parent_flags is not None:
            assert f"{ctx.trace_id:032x}" == PRODUCER_TRACE
    assert client.get_span_context().trace_id == span.get_span_context().trace_id


def test_without_a_span_exporter_setup_uses_the_ids_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    """No endpoint: the bridge's tracer is the public-API IdsTracer, whatever the gate says."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    monkeypatch.setattr(otel_metrics, "set_meter_provider", lambda provider: None)
    handle = setup_telemetry({}, instance_id="x", prometheus=False)
    try:
        assert isinstance(handle.tracer, IdsTracer)
    finally:
        handle.shutdown()


def test_spans_are_recorded_again_once_a_processor_is_added() -> None:
    """Adding an exporter to the provider later brings full spans, errors included."""
    lean, provider = _lean(ParentBased(ALWAYS_ON))
    with lean.start_as_current_span("before") as before:
        pass
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    parent = trace.set_span_in_context(_producer("01"))

    def fail_in_span() -> None:
        with lean.start_as_current_span("process s", context=parent, attributes={"a": 1}) as span:
            span.set_attribute("bridge.outcome", "dead_letter")
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        fail_in_span()
    assert not before.is_recording()
    [finished] = exporter.get_finished_spans()
    assert finished.name == "process s"
    assert finished.attributes == {"a": 1, "bridge.outcome": "dead_letter"}
    assert finished.status.status_code is StatusCode.ERROR
    assert [event.name for event in finished.events] == ["exception"]
    assert finished.parent is not None
    assert f"{finished.parent.span_id:016x}" == PRODUCER_SPAN
    assert trace.get_current_span() is trace.INVALID_SPAN


async def test_the_ingest_server_sees_the_producers_trace_without_any_exporter(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A sampled producer trace reaches the server's traceparent through an exporter-less bridge."""
    app, _ = ingest_server
    lean, _provider = _lean(ParentBased(ALWAYS_OFF))
    parent = trace.set_span_in_context(_producer("01"))
    async with HmacClient(outbound_config, tracer=lean) as client:
        with lean.start_as_current_span("process s", context=parent, kind=SpanKind.CONSUMER):
            await client.post_signal(make_signal())
        await client.post_signal(make_signal())  # no producer context: a new, unsampled trace
    first, second = (request.traceparent or "" for request in app.received)
    version, trace_id, span_id, flags = first.split("-")
    assert (version, trace_id, int(flags, 16) & 1) == ("00", PRODUCER_TRACE, 1)
    assert span_id not in (PRODUCER_SPAN, "0" * 16)
    assert second.split("-")[1] not in (PRODUCER_TRACE, "0" * 32)
    assert int(second.split("-")[3], 16) & 1 == 0


def test_a_log_line_inside_a_lean_span_carries_its_ids() -> None:
    """The JSON line written during a delivery names the trace and span a traceparent names."""
    lean, _provider = _lean(ParentBased(ALWAYS_OFF))
    logger = logging.getLogger("tests.lean")
    with lean.start_as_current_span(
        "process s", context=trace.set_span_in_context(_producer("01"))
    ) as span:
        record = logger.makeRecord(
            logger.name,
            logging.INFO,
            "",
            0,
            "signal delivered",
            (),
            None,
            extra=log_fields(entry_id="1-0", message="clash"),
        )
        line = msgspec.json.decode(JsonFormatter().format(record))
    assert line["trace_id"] == PRODUCER_TRACE
    assert line["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert (line["message"], line["field_message"], line["entry_id"]) == (
        "signal delivered",
        "clash",
        "1-0",
    )


@pytest.fixture
def prometheus_metrics() -> Iterator[tuple[Metrics, InMemoryMetricReader, CollectorRegistry]]:
    """Bridge Metrics read both by an in-memory reader and a Prometheus registry."""
    memory = InMemoryMetricReader()
    registry = CollectorRegistry(auto_describe=True)
    provider = MeterProvider(
        metric_readers=[memory, PrometheusMetricReader(registry=registry)], shutdown_on_exit=False
    )
    try:
        yield Metrics(provider), memory, registry
    finally:
        provider.shutdown()


def test_local_counters_reach_every_reader_as_cumulative_sums(
    prometheus_metrics: tuple[Metrics, InMemoryMetricReader, CollectorRegistry],
) -> None:
    """Counts kept in-process are collected as monotonic cumulative sums, per attribute set."""
    metrics, memory, registry = prometheus_metrics
    for _ in range(3):
        metrics.acked_total.add(1, {"outcome": "success"})
    metrics.acked_total.add(1, {"outcome": "duplicate"})
    metrics.dead_lettered_total.add(2, {"reason": "deleted"})
    metrics.dead_lettered_total.add(-5, {"reason": "deleted"})  # a counter never goes down
    first = {
        tuple(p.attributes.items()): p.value for p in metric_points(memory, "signals_acked_total")
    }
    assert first == {(("outcome", "success"),): 3, (("outcome", "duplicate"),): 1}
    metrics.acked_total.add(1, {"outcome": "success"})
    [*points] = metric_points(memory, "signals_acked_total")
    assert sorted(p.value for p in points) == [1, 4], "cumulative across collections"

    families = {
        f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
    }
    acked = families["signals_acked"]
    assert acked.type == "counter"
    samples = {s.labels["outcome"]: s.value for s in acked.samples if s.name.endswith("_total")}
    assert samples == {"success": 4.0, "duplicate": 1.0}
    dead = families["signals_dead_lettered"]
    assert [s.value for s in dead.samples if s.name.endswith("_total")] == [2.0]
    assert dead.documentation == "Entries moved to the dead-letter stream, by reason"


@pytest.mark.parametrize(("filter_env", "exemplars"), [(None, 0), ("trace_based", 1)])
def test_histogram_exemplars_only_when_spans_are_exported_or_asked_for(
    monkeypatch: pytest.MonkeyPatch, filter_env: str | None, exemplars: int
) -> None:
    """Metrics exported without traces carry no exemplars, unless OTEL_METRICS_EXEMPLAR_FILTER."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    monkeypatch.setattr(otel_metrics, "set_meter_provider", lambda provider: None)
    with OtlpReceiver() as receiver:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_EXPORTER": "none"}
        if filter_env is not None:
            env["OTEL_METRICS_EXEMPLAR_FILTER"] = filter_env
        for name, value in env.items():
            monkeypatch.setenv(name, value)  # the SDK's exporters read os.environ themselves
        handle = setup_telemetry(env, instance_id="x", prometheus=False)
        producer = trace.set_span_in_context(_producer("01"))
        with handle.tracer.start_as_current_span("process s", context=producer):
            handle.metrics.signal_age.record(0.25)
        handle.shutdown()
        ages = [m for m in receiver.metrics() if m.name == "signals_delivery_age_seconds"]
    points = [point for age in ages for point in age.metric.histogram.data_points]
    assert points[-1].count == 1  # cumulative; exemplars go out with the export after the record
    found = [e.trace_id.hex() for point in points for e in point.exemplars]
    assert found == [PRODUCER_TRACE] * exemplars
