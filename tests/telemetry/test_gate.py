"""The fast-path gate: on for the verified SDK, off all at once for any other, and then stock.

A newer SDK is simulated by the version the gate reads (the installed packages stay what the
lock pins); a missing private name by one more name on the gate's list.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Final, NoReturn

import pytest
import redis.asyncio as aioredis
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from prometheus_client.parser import text_string_to_metric_families

from bridge.streams.producer import publish
from bridge.telemetry import propagation, tracing
from bridge.telemetry.fastpath import gate, otlp_export
from bridge.telemetry.fastpath.histograms import LocalHistogram, LocalHistograms
from bridge.telemetry.fastpath.spans import LeanSpan
from bridge.telemetry.setup import _span_exporter, setup_telemetry
from bridge.telemetry.tracing import IdsTracer, LeanTracer, get_tracer
from tests.fixtures_ingest import Server
from tests.otlp_receiver import OtlpReceiver
from tests.support import bridge_config, eventually, make_signal
from tests.support import running as run_worker

pytestmark = pytest.mark.usefixtures("fresh_gate")

NEWER: Final = "1.99.0"
SEED_BUCKETS: Final = [0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0]


def _newer_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the gate read a release newer than every verified one for each checked package."""
    monkeypatch.setattr(gate, "_version", lambda distribution: NEWER)


def _missing_name(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the gate need a private name the installed SDK does not have."""
    monkeypatch.setattr(gate, "_OBJECT_NAMES", (*gate._OBJECT_NAMES, ("Tracer", "_gone")))


def _gate_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    """The gate's log records."""
    return [r for r in caplog.records if r.name == "bridge.telemetry"]


def _no_otel_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Unset every OTEL_* variable and keep the global providers untouched."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    monkeypatch.setattr(otel_metrics, "set_meter_provider", lambda provider: None)


def test_the_locked_sdk_is_verified_and_has_every_private_name() -> None:
    """The versions the lock installs pass the gate: every fast path is on."""
    verdict = gate.check()
    assert verdict.missing == ()
    assert verdict.unverified == ()
    assert verdict.enabled
    assert gate.fast_paths().enabled


@pytest.mark.parametrize("simulate", [_newer_sdk, _missing_name], ids=["newer", "missing-name"])
def test_the_gate_turns_every_fast_path_off_at_once(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, simulate: Any
) -> None:
    """Lean tracer, lean spans, OTLP encoder and local histograms all go stock; one INFO line."""
    simulate(monkeypatch)
    _no_otel_env(monkeypatch)
    caplog.set_level(logging.INFO, logger="bridge.telemetry")
    unexported = TracerProvider(shutdown_on_exit=False)
    exported = TracerProvider(shutdown_on_exit=False)
    exported.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    ids_only = LeanTracer(get_tracer(unexported), unexported).start_span("work")
    recorded = LeanTracer(get_tracer(exported), exported).start_span("work")
    # The SDK's own spans: recording without a processor (its default sampler), never lean.
    assert ids_only.is_recording()
    assert recorded.is_recording()
    assert not isinstance(recorded, LeanSpan)
    recorded.end()
    ids_only.end()
    exported.shutdown()

    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.endpoint)
        exporter = _span_exporter("otlp_proto_http")
        exporter.shutdown()
        assert type(exporter) is OTLPSpanExporter
        handle = setup_telemetry(
            {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}, instance_id="g", prometheus=True
        )
        try:
            assert LocalHistograms.of(handle.meter_provider) is None
            assert not isinstance(handle.metrics.posted_duration, LocalHistogram)
            assert not isinstance(handle.metrics.signal_age, LocalHistogram)
            with handle.tracer.start_as_current_span("work") as span:
                assert not isinstance(span, LeanSpan)
        finally:
            handle.shutdown()
    handle = setup_telemetry({}, instance_id="g", prometheus=False)
    handle.shutdown()
    assert isinstance(handle.tracer, IdsTracer), "the ids-only tracer needs no gate"
    monkeypatch.setattr(propagation._Textmap, "seen", None)  # the verdict is read on a change
    monkeypatch.setattr(propagation._Textmap, "default", True)
    monkeypatch.setattr(propagation, "_TRACECONTEXT", _refuse)
    parent = propagation.extract_parent(f"00-{1:032x}-{2:016x}-01")
    assert trace.get_current_span(parent).get_span_context().trace_id == 1

    lines = _gate_lines(caplog)
    assert [r.levelno for r in lines] == [logging.INFO], "one line, however many mirrors asked"
    message = lines[0].getMessage()
    assert "fast paths off" in message
    assert (NEWER if simulate is _newer_sdk else "Tracer._gone") in message


def test_verified_sdk_keeps_every_fast_path_on(caplog: pytest.LogCaptureFixture) -> None:
    """The same set-up on the verified SDK: lean spans, our exporter, local histograms, no line."""
    caplog.set_level(logging.INFO, logger="bridge.telemetry")
    provider = TracerProvider(shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(InMemorySpanExporter()))
    span = LeanTracer(get_tracer(provider), provider).start_span("work")
    span.end()
    handle = setup_telemetry({}, instance_id="gate", prometheus=True)
    try:
        assert isinstance(span, LeanSpan)
        assert isinstance(handle.metrics.posted_duration, LocalHistogram)
    finally:
        handle.shutdown()
        provider.shutdown()
    assert _gate_lines(caplog) == []


def test_with_the_sdk_disabled_metrics_are_still_served_when_the_gate_is_off(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """OTEL_SDK_DISABLED=true on an unverified SDK: /metrics still has the bridge's metrics."""
    _newer_sdk(monkeypatch)
    _no_otel_env(monkeypatch)
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")  # where the SDK's providers read it
    handle = setup_telemetry({"OTEL_SDK_DISABLED": "true"}, instance_id="g", prometheus=True)
    try:
        handle.metrics.posted_total.add(1, {"result": "success", "http_code": "201"})
        handle.metrics.posted_duration.record(0.02, {"result": "success"})
        families = {
            f.name: f for f in text_string_to_metric_families(handle.prometheus_text().decode())
        }
    finally:
        handle.shutdown()
    assert [s.value for s in families["signals_posted"].samples if s.name.endswith("_total")] == [1]
    assert families["signals_posted_duration_seconds"].type == "histogram"


def _refuse(*args: object, **kwargs: object) -> NoReturn:
    """A mirror that must not run while the gate is off."""
    raise AssertionError("a fast path ran although the gate is off")


@pytest.mark.redis
async def test_with_a_newer_sdk_the_bridge_delivers_exports_and_serves_metrics(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    *,
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
) -> None:
    """An unverified SDK: signals are delivered, spans and metrics exported, /metrics served."""
    _newer_sdk(monkeypatch)
    _no_otel_env(monkeypatch)
    monkeypatch.setattr(tracing, "LeanSpan", _refuse)
    monkeypatch.setattr(otlp_export, "encode_spans", _refuse)
    monkeypatch.setattr(LocalHistograms, "histogram", _refuse)
    caplog.set_level(logging.INFO, logger="bridge.telemetry")
    for i in range(3):
        await publish(redis, make_signal(i), stream=stream_name)

    with OtlpReceiver() as receiver:
        for name, value in {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
        }.items():
            monkeypatch.setenv(name, value)
        otel_env = {k: v for k, v in os.environ.items() if k.startswith("OTEL_")}
        handle = setup_telemetry(otel_env, instance_id="newer-sdk", prometheus=True)
        try:
            config = bridge_config(server.url, redis_url, stream_name)
            async with run_worker(redis, config, metrics=handle.metrics, tracer=handle.tracer):
                await eventually(
                    lambda: len(server.app.received) == 3, timeout_s=15, what="3 deliveries"
                )
            scraped = handle.prometheus_text().decode()
        finally:
            handle.shutdown()

    names = [s.name for s in receiver.spans()]
    assert names.count(f"process {stream_name}") == 3
    assert names.count("POST") == 3
    assert receiver.bad_requests == []
    assert {"signals_posted_total", "signals_posted_duration_seconds"} <= receiver.metric_names()

    families = {f.name: f for f in text_string_to_metric_families(scraped)}
    assert families["signals_posted_duration_seconds"].type == "histogram"
    buckets = sorted(
        {
            float(s.labels["le"])
            for s in families["signals_posted_duration_seconds"].samples
            if s.name.endswith("_bucket")
        }
    )
    assert buckets == [*SEED_BUCKETS, float("inf")]
    [posted] = [s for s in families["signals_posted"].samples if s.name == "signals_posted_total"]
    assert (posted.labels["result"], posted.labels["http_code"], posted.value) == (
        "success",
        "201",
        3,
    )

    lines = _gate_lines(caplog)
    assert [r.levelno for r in lines] == [logging.INFO]
    assert NEWER in lines[0].getMessage()
