"""Traces, metrics and logs of the bridge, as an operator's backend would see them.

In-process tests give the client and the worker an SDK ``TracerProvider`` with an in-memory span
exporter and an SDK ``MeterProvider`` with an in-memory reader (never the global providers, which
can be set only once per process); the reference server's tracer lookup is pointed at the same
provider, so one trace spans producer -> bridge -> server. One test runs ``signal-bridge run`` as
a child process exporting over OTLP/HTTP to a real receiver on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import re
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import httpx
import msgspec
import pytest
import redis.asyncio as aioredis
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client.parser import text_string_to_metric_families

import bridge.devkit.ingest
from bridge.app.health import GroupMonitor, HealthServer
from bridge.config.loader import BridgeConfig
from bridge.core.signing import INGEST_PATH
from bridge.delivery.breaker import Breaker
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.errors import TransientDeliveryError
from bridge.streams.entries import DeadLetter
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish, publish_raw
from bridge.telemetry.logs import JsonFormatter, TextFormatter, configure_logging, log_fields
from bridge.telemetry.metrics import DURATION_BUCKETS_S, Metrics
from bridge.telemetry.setup import setup_telemetry
from bridge.telemetry.tracing import get_tracer
from tests.fixtures_ingest import Server, metric_points
from tests.otlp_receiver import OtlpReceiver
from tests.procs import Replicas
from tests.support import (
    FAST,
    SECRET,
    bridge_config,
    bridge_env,
    eventually,
    make_signal,
)
from tests.support import running as run_worker

pytestmark = pytest.mark.redis

PRODUCER_ID: Final = "test-producer"  # what bridge_env configures
SEED_BUCKETS: Final = [0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0]
WAIT_S: Final = 15.0
TIMESTAMP: Final = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$")
# OTLP's SpanKind numbering (opentelemetry/proto/trace/v1/trace.proto).
OTLP_KIND_CLIENT: Final = 3
OTLP_KIND_CONSUMER: Final = 5

Labels = tuple[tuple[str, str], ...]


def labels(**attrs: str) -> Labels:
    """A hashable, order-free key for one attribute set."""
    return tuple(sorted(attrs.items()))


# --- fixtures --------------------------------------------------------------------------------


@dataclass
class Rig:
    """What a delivery test runs against: the ingest server, Redis and a fresh stream name."""

    server: Server
    redis: aioredis.Redis
    redis_url: str
    stream: str

    def config(self, **extra: str) -> BridgeConfig:
        """A validated config for an in-process Worker on this rig."""
        return bridge_config(self.server.url, self.redis_url, self.stream, **extra)

    def key(self, signal_id: str) -> str:
        """The idempotency key the bridge sends for a signal with this signal_id."""
        return idempotency_key(self.stream, "", signal_id)

    async def drained(self) -> bool:
        """Every entry read by the group and acked or dead-lettered."""
        groups = await self.redis.xinfo_groups(self.stream)
        return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0

    async def wait_drained(self) -> None:
        """Wait (bounded) until the stream is drained."""
        await eventually(self.drained, timeout_s=WAIT_S, what=f"{self.stream} drained")


@pytest.fixture
def rig(server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str) -> Rig:
    """The reference server, the session's Redis and a stream no other test uses."""
    return Rig(server, redis, redis_url, stream_name)


@pytest.fixture
def unused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@dataclass
class Otel:
    """SDK providers wired to in-memory exporters, and the bridge's tracer and metrics on them."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    tracer: trace.Tracer
    reader: InMemoryMetricReader
    metrics: Metrics

    def spans(self, kind: SpanKind | None = None) -> list[ReadableSpan]:
        """Finished spans in end order, optionally of one kind."""
        return [s for s in self.exporter.get_finished_spans() if kind is None or s.kind is kind]

    def children(self, parent: ReadableSpan) -> list[ReadableSpan]:
        """Finished spans whose parent is ``parent``."""
        span_id = _ctx(parent).span_id
        return [s for s in self.spans() if s.parent is not None and s.parent.span_id == span_id]

    def points(self, name: str) -> list[Any]:
        """Data points of the metric ``name`` (collected now)."""
        return metric_points(self.reader, name)

    def values(self, name: str) -> dict[Labels, float]:
        """Counter / gauge values by attribute set."""
        return {
            labels(**{k: str(v) for k, v in (p.attributes or {}).items()}): p.value
            for p in self.points(name)
            if isinstance(p, NumberDataPoint)
        }

    def histograms(self, name: str) -> dict[Labels, HistogramDataPoint]:
        """Histogram points by attribute set."""
        return {
            labels(**{k: str(v) for k, v in (p.attributes or {}).items()}): p
            for p in self.points(name)
            if isinstance(p, HistogramDataPoint)
        }


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Iterator[Otel]:
    """In-memory tracing and metrics; the reference server traces into the same exporter.

    IngestApp asks ``get_tracer()`` for the global provider, which a test cannot set more than
    once per process; its lookup is redirected to this test's provider instead.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])

    def server_tracer(provider_arg: trace.TracerProvider | None = None) -> trace.Tracer:
        del provider_arg
        return get_tracer(provider)

    monkeypatch.setattr(bridge.devkit.ingest, "get_tracer", server_tracer)
    try:
        yield Otel(provider, exporter, get_tracer(provider), reader, Metrics(meter_provider))
    finally:
        provider.shutdown()
        meter_provider.shutdown()


@contextlib.asynccontextmanager
async def running(
    redis: aioredis.Redis, config: BridgeConfig, otel: Otel, *, breaker: Breaker | None = None
) -> AsyncIterator[Worker]:
    """Run a Worker traced and measured by ``otel`` for the block; stop it (bounded) after."""
    async with run_worker(
        redis, config, breaker=breaker, metrics=otel.metrics, tracer=otel.tracer
    ) as worker:
        yield worker


def _ctx(span: ReadableSpan) -> trace.SpanContext:
    context: trace.SpanContext | None = span.context
    assert context is not None
    return context


def _hex_trace(span: ReadableSpan) -> str:
    return format(_ctx(span).trace_id, "032x")


def _hex_span(span: ReadableSpan) -> str:
    return format(_ctx(span).span_id, "016x")


def _fail_first(key: str, code: int, times: int = 1) -> Callable[[Mapping[str, str]], int | None]:
    """A server fault: answer ``code`` to the first ``times`` requests carrying ``key``."""
    seen = itertools.count()

    def fault(headers: Mapping[str, str]) -> int | None:
        if headers.get("x-idempotency-key") == key and next(seen) < times:
            return code
        return None

    return fault


def _json_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The captured records as the JSON lines JsonFormatter wrote at emit time."""
    return [msgspec.json.decode(line) for line in caplog.text.splitlines() if line.strip()]


# --- traces ----------------------------------------------------------------------------------


async def test_one_trace_runs_from_the_producer_through_the_bridge_to_the_server(
    otel: Otel, rig: Rig
) -> None:
    """A signal published inside a producer span yields CONSUMER -> CLIENT -> SERVER spans in that trace."""  # noqa: E501
    producer_tracer = otel.provider.get_tracer("strategy-engine")
    with producer_tracer.start_as_current_span("publish", kind=SpanKind.PRODUCER) as producer:
        await publish(rig.redis, make_signal(1), stream=rig.stream)
    async with running(rig.redis, rig.config(), otel):
        await rig.wait_drained()

    [consumer] = otel.spans(SpanKind.CONSUMER)
    [client] = otel.spans(SpanKind.CLIENT)
    [server_span] = otel.spans(SpanKind.SERVER)
    producer_ctx = producer.get_span_context()
    assert consumer.name == f"process {rig.stream}"
    assert consumer.parent is not None
    assert consumer.parent.span_id == producer_ctx.span_id
    assert consumer.parent.is_remote, "the parent came from the entry's traceparent"
    assert client.name == "POST"
    assert client.parent is not None
    assert client.parent.span_id == _ctx(consumer).span_id
    assert server_span.name == f"POST {INGEST_PATH}"
    assert server_span.parent is not None
    assert server_span.parent.span_id == _ctx(client).span_id
    trace_ids = {_ctx(s).trace_id for s in (consumer, client, server_span)}
    assert trace_ids == {producer_ctx.trace_id}
    [received] = rig.server.app.received
    assert received.traceparent is not None
    assert received.traceparent.split("-")[1:3] == [_hex_trace(client), _hex_span(client)]


async def test_consumer_and_client_spans_carry_messaging_and_http_attributes(
    otel: Otel, rig: Rig
) -> None:
    """The CONSUMER span names the stream, entry and group; the CLIENT span the method, status and URL."""  # noqa: E501
    entry_id = await publish(rig.redis, make_signal(2), stream=rig.stream)
    async with running(rig.redis, rig.config(), otel):
        await rig.wait_drained()

    [consumer] = otel.spans(SpanKind.CONSUMER)
    assert consumer.parent is None, "no traceparent in the entry: the consumer span is a root"
    attrs = dict(consumer.attributes or {})
    assert attrs["messaging.system"] == "redis"
    assert attrs["messaging.destination.name"] == rig.stream
    assert attrs["messaging.message.id"] == entry_id
    assert attrs["messaging.consumer.group.name"] == "g"
    assert attrs["messaging.operation.type"] == "process"
    assert attrs["bridge.outcome"] == "success"
    assert attrs["bridge.instrument"] == make_signal(2).instrument
    assert consumer.status.status_code is not StatusCode.ERROR

    [client] = otel.spans(SpanKind.CLIENT)
    http = dict(client.attributes or {})
    port = int(rig.server.url.rsplit(":", 1)[1])
    assert http["http.request.method"] == "POST"
    assert http["http.response.status_code"] == 201
    assert http["server.address"] == "127.0.0.1"
    assert http["server.port"] == port
    assert http["url.full"] == f"{rig.server.url}{INGEST_PATH}"
    assert all(SECRET not in str(value) for value in http.values())
    assert client.status.status_code is not StatusCode.ERROR


async def test_retries_show_one_client_span_per_attempt_and_retry_events(
    otel: Otel, rig: Rig
) -> None:
    """Two 500s then a 201: three CLIENT spans under one CONSUMER span, retry events for attempts 2 and 3."""  # noqa: E501
    rig.server.app.fault = _fail_first(rig.key("sig-3"), 500, times=2)
    await publish(rig.redis, make_signal(3), stream=rig.stream)
    async with running(rig.redis, rig.config(), otel):
        await rig.wait_drained()

    [consumer] = otel.spans(SpanKind.CONSUMER)
    attempts = otel.children(consumer)
    assert [s.name for s in attempts] == ["POST", "POST", "POST"]
    assert [dict(s.attributes or {})["http.response.status_code"] for s in attempts] == [
        500,
        500,
        201,
    ]
    assert [s.status.status_code for s in attempts[:2]] == [StatusCode.ERROR, StatusCode.ERROR]
    assert all(dict(s.attributes or {})["error.type"] == "500" for s in attempts[:2])
    assert attempts[2].status.status_code is not StatusCode.ERROR
    retries = [(e.name, dict(e.attributes or {})) for e in consumer.events]
    assert retries == [("retry", {"bridge.attempt": 2}), ("retry", {"bridge.attempt": 3})]
    assert dict(consumer.attributes or {})["bridge.outcome"] == "success"
    assert consumer.status.status_code is not StatusCode.ERROR
    assert otel.values("signals_retries_total") == {labels(reason="500"): 2}


async def test_dead_letters_and_failed_attempts_are_recorded_as_errors(
    otel: Otel, rig: Rig
) -> None:
    """A 422 and an undecodable entry end in ERROR consumer spans naming the reason; the 422 POST is ERROR too."""  # noqa: E501
    rig.server.app.fault = _fail_first(rig.key("refuse-me"), 422, times=99)
    rejected_id = await publish(rig.redis, make_signal(4, signal_id="refuse-me"), stream=rig.stream)
    invalid_id = await publish_raw(rig.redis, {"signal": b"{not json"}, stream=rig.stream)
    good_id = await publish(rig.redis, make_signal(5), stream=rig.stream)
    async with running(rig.redis, rig.config(), otel):
        await rig.wait_drained()

    consumers = {
        dict(s.attributes or {})["messaging.message.id"]: s for s in otel.spans(SpanKind.CONSUMER)
    }
    assert set(consumers) == {rejected_id, invalid_id, good_id}
    for entry_id, reason in ((rejected_id, "rejected"), (invalid_id, "invalid")):
        span = consumers[entry_id]
        attrs = dict(span.attributes or {})
        assert span.status.status_code is StatusCode.ERROR
        assert span.status.description == reason
        assert (attrs["bridge.outcome"], attrs["bridge.reason"]) == ("dead_letter", reason)
    assert otel.children(consumers[invalid_id]) == [], "an undecodable entry is never posted"
    [refused] = otel.children(consumers[rejected_id])
    assert refused.status.status_code is StatusCode.ERROR
    assert "422" in (refused.status.description or "")
    assert dict(refused.attributes or {})["http.response.status_code"] == 422
    assert dict(refused.attributes or {})["error.type"] == "422"
    assert consumers[good_id].status.status_code is not StatusCode.ERROR


async def test_a_refused_connection_is_a_failed_client_span(otel: Otel, unused_url: str) -> None:
    """A POST to a port nobody listens on ends in an ERROR CLIENT span with error.type and no status code."""  # noqa: E501
    config = bridge_config(unused_url, "redis://127.0.0.1:1/0", "unused")
    async with HmacClient(config.outbound, metrics=otel.metrics, tracer=otel.tracer) as client:
        with pytest.raises(TransientDeliveryError):
            await client.post_signal(make_signal(6))
    [span] = otel.spans(SpanKind.CLIENT)
    attrs = dict(span.attributes or {})
    assert span.status.status_code is StatusCode.ERROR
    assert attrs["error.type"] == "TransientDeliveryError"
    assert "http.response.status_code" not in attrs
    assert otel.values("signals_posted_total") == {
        labels(result="failure", http_code="0", producer_id=PRODUCER_ID): 1
    }


# --- metrics ---------------------------------------------------------------------------------


async def test_delivery_metrics_keep_the_seed_names_labels_and_buckets(
    otel: Otel, rig: Rig
) -> None:
    """Successes, a retried 500, a 422, an invalid entry and a duplicate are counted under the seed's names."""  # noqa: E501
    faults = [
        _fail_first(rig.key("sig-1"), 500),
        _fail_first(rig.key("refuse-me"), 422, times=99),
    ]
    rig.server.app.fault = lambda headers: next(
        (code for code in (f(headers) for f in faults) if code is not None), None
    )
    await publish(rig.redis, make_signal(0), stream=rig.stream)
    await publish(rig.redis, make_signal(1), stream=rig.stream)
    await publish(rig.redis, make_signal(2, signal_id="refuse-me"), stream=rig.stream)
    # Same instrument, same signal_id: one lane, so the repeat is posted second and gets a 409.
    await publish(rig.redis, make_signal(3, signal_id="dup"), stream=rig.stream)
    await publish(rig.redis, make_signal(8, signal_id="dup"), stream=rig.stream)
    await publish_raw(rig.redis, {"signal": b"[]"}, stream=rig.stream)
    async with running(rig.redis, rig.config(), otel):
        await rig.wait_drained()

    posted = otel.values("signals_posted_total")
    assert posted == {
        labels(result="success", http_code="201", producer_id=PRODUCER_ID): 3,
        labels(result="failure", http_code="500", producer_id=PRODUCER_ID): 1,
        labels(result="failure", http_code="422", producer_id=PRODUCER_ID): 1,
        labels(result="duplicate", http_code="409", producer_id=PRODUCER_ID): 1,
    }
    durations = otel.histograms("signals_posted_duration_seconds")
    assert set(durations) == {
        labels(result=result, producer_id=PRODUCER_ID)
        for result in ("success", "failure", "duplicate")
    }
    for point in durations.values():
        assert list(point.explicit_bounds) == SEED_BUCKETS
    assert list(DURATION_BUCKETS_S) == SEED_BUCKETS
    assert durations[labels(result="success", producer_id=PRODUCER_ID)].count == 3
    assert durations[labels(result="failure", producer_id=PRODUCER_ID)].count == 2

    assert otel.values("signals_dead_lettered_total") == {
        labels(reason="rejected"): 1,
        labels(reason="invalid"): 1,
    }
    assert otel.values("signals_retries_total") == {labels(reason="500"): 1}
    acked = otel.values("signals_acked_total")
    assert acked[labels(outcome="success")] == 3
    assert acked[labels(outcome="duplicate")] == 1
    assert list(otel.values("signals_in_flight").values()) == [0]
    [age] = otel.histograms("signals_delivery_age_seconds").values()
    assert age.count == 3
    assert 0 <= age.sum < 60


async def test_group_monitor_gauges_report_lag_pending_age_dead_letters_and_circuit(
    otel: Otel, rig: Rig
) -> None:
    """After poll_once the gauges show the group's lag, pending, oldest age, DLQ length and breaker state."""  # noqa: E501
    config = rig.config()
    stream = SignalStream(
        rig.redis, stream=rig.stream, group="g", consumer="c1", dlq_stream=f"{rig.stream}:dlq"
    )
    await stream.ensure_group("0")
    for i in range(5):
        await publish(rig.redis, make_signal(i), stream=rig.stream)
    first, second = await stream.read(2, None)
    await stream.dead_letter(first, DeadLetter(reason="rejected", error="test"))
    del second  # read, never acked: it stays pending
    async with HmacClient(config.outbound, metrics=otel.metrics, tracer=otel.tracer) as client:
        worker = Worker(stream, client, config.stream, metrics=otel.metrics, tracer=otel.tracer)
        monitor = GroupMonitor(stream, otel.metrics, lambda: worker.breaker.is_open, interval_s=60)
        assert otel.values("signals_group_lag") == {}, "nothing reported before the first poll"
        await monitor.poll_once()
        group = labels(stream=rig.stream, group="g")
        assert otel.values("signals_group_lag") == {group: 3}
        assert otel.values("signals_group_pending") == {group: 1}
        assert otel.values("signals_dead_letter_stream_length") == {group: 1}
        [age] = otel.values("signals_oldest_pending_age_seconds").items()
        assert age[0] == group
        assert 0 <= age[1] < 60
        circuit = labels(stream=rig.stream)
        assert otel.values("signals_circuit_open") == {circuit: 0}
        worker.breaker.failure("auth", systemic=True)
        assert otel.values("signals_circuit_open") == {circuit: 1}
        worker.breaker.success()
        assert otel.values("signals_circuit_open") == {circuit: 0}


async def test_metrics_endpoint_serves_prometheus_text_with_the_seed_names(
    monkeypatch: pytest.MonkeyPatch, rig: Rig
) -> None:
    """GET /metrics parses as Prometheus text with signals_posted_total labels and the seed's buckets."""  # noqa: E501
    installed: list[object] = []
    monkeypatch.setattr(trace, "set_tracer_provider", installed.append)
    monkeypatch.setattr(otel_metrics, "set_meter_provider", installed.append)
    handle = setup_telemetry({}, instance_id="c1", prometheus=True)
    try:
        assert installed == [handle.tracer_provider, handle.meter_provider]
        rig.server.app.fault = _fail_first(rig.key("sig-1"), 503)
        config = rig.config()
        stream = SignalStream(
            rig.redis, stream=rig.stream, group="g", consumer="c1", dlq_stream=f"{rig.stream}:dlq"
        )
        await publish(rig.redis, make_signal(0), stream=rig.stream)
        await publish(rig.redis, make_signal(1), stream=rig.stream)
        async with HmacClient(
            config.outbound, metrics=handle.metrics, tracer=handle.tracer
        ) as client:
            worker = Worker(
                stream,
                client,
                config.stream,
                metrics=handle.metrics,
                tracer=handle.tracer,
                backoff=FAST,
            )
            monitor = GroupMonitor(
                stream, handle.metrics, lambda: worker.breaker.is_open, interval_s=60
            )
            async with (
                HealthServer(
                    lambda: [worker], host="127.0.0.1", port=0, metrics_text=handle.prometheus_text
                ) as health,
                httpx.AsyncClient(base_url=f"http://127.0.0.1:{health.port}") as http,
            ):
                task = asyncio.create_task(worker.run())
                try:
                    await rig.wait_drained()
                    await monitor.poll_once()
                    response = await http.get("/metrics")
                finally:
                    worker.stop()
                    await asyncio.wait_for(task, 30)
    finally:
        handle.shutdown()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    samples = [s for f in families.values() for s in f.samples]

    def sample_labels(name: str) -> list[dict[str, str]]:
        return [dict(s.labels) for s in samples if s.name == name]

    posted = {
        (lab["result"], lab["http_code"], lab["producer_id"])
        for lab in sample_labels("signals_posted_total")
    }
    assert posted == {("success", "201", PRODUCER_ID), ("failure", "503", PRODUCER_ID)}
    assert families["signals_posted"].type == "counter"
    assert families["signals_posted_duration_seconds"].type == "histogram"
    buckets = sorted(
        {
            float(lab["le"])
            for lab in sample_labels("signals_posted_duration_seconds_bucket")
            if lab["result"] == "success"
        }
    )
    assert buckets == [*SEED_BUCKETS, float("inf")]
    for name in (
        "signals_retries_total",
        "signals_acked_total",
        "signals_in_flight",
        "signals_delivery_age_seconds_bucket",
        "signals_group_lag",
        "signals_group_pending",
        "signals_oldest_pending_age_seconds",
        "signals_dead_letter_stream_length",
        "signals_circuit_open",
        "signals_dead_letter_oldest_age_seconds",
        "signals_redis_up",
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_start_time_seconds",
        "process_open_fds",
    ):
        assert sample_labels(name), f"{name} missing from /metrics"
    assert {lab["reason"] for lab in sample_labels("signals_retries_total")} == {"503"}
    lag = [s for s in samples if s.name == "signals_group_lag"]
    assert [(s.labels["stream"], s.labels["group"], s.value) for s in lag] == [(rig.stream, "g", 0)]
    [circuit] = [s for s in samples if s.name == "signals_circuit_open"]
    assert (circuit.labels["stream"], circuit.value) == (rig.stream, 0)
    [redis_up] = [s for s in samples if s.name == "signals_redis_up"]
    assert (redis_up.labels["stream"], redis_up.value) == (rig.stream, 1)
    [rss] = [s for s in samples if s.name == "process_resident_memory_bytes"]
    assert rss.value > 1_000_000


async def test_without_an_endpoint_nothing_is_exported_and_nothing_fails(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """setup_telemetry({}) installs no exporter, raises nothing, and still gives valid trace ids."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    monkeypatch.setattr(otel_metrics, "set_meter_provider", lambda provider: None)
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    handle = setup_telemetry({}, instance_id="x", prometheus=False)
    try:
        assert handle.tracer_provider._active_span_processor._span_processors == ()
        assert handle.meter_provider._metric_readers == []
        with handle.tracer.start_as_current_span("work") as span:
            assert span.get_span_context().is_valid
            handle.metrics.posted_total.add(1, {"result": "success"})
        assert handle.tracer_provider.force_flush(1000)
        assert handle.prometheus_text() == b""
    finally:
        started = time.monotonic()
        handle.shutdown()
    assert time.monotonic() - started < 2.0, "shutdown waited for an exporter"
    problems = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert problems == []


async def test_run_exports_spans_and_metrics_over_otlp_and_flushes_on_sigterm(
    monkeypatch: pytest.MonkeyPatch, rig: Rig, tmp_path: Path
) -> None:
    """`signal-bridge run` exports its spans and metrics to an OTLP/HTTP receiver, then exits 0 on SIGTERM."""  # noqa: E501
    consumer_name = f"otlp-{rig.stream.rsplit(':', 1)[-1]}"
    producer_provider = TracerProvider()
    entry_ids: list[str] = []
    with producer_provider.get_tracer("strategy-engine").start_as_current_span(
        "publish", kind=SpanKind.PRODUCER
    ) as producer:
        for i in range(3):
            entry_ids.append(await publish(rig.redis, make_signal(i), stream=rig.stream))
    producer_provider.shutdown()
    producer_trace = format(producer.get_span_context().trace_id, "032x")
    producer_span = format(producer.get_span_context().span_id, "016x")

    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)  # OTEL_SERVICE_NAME & co. stay unset in the child
    with OtlpReceiver() as receiver, Replicas(tmp_path) as replicas:
        env = bridge_env(
            rig.server.url,
            rig.redis_url,
            rig.stream,
            BRIDGE_CONSUMER=consumer_name,
            BRIDGE_STATUS_INTERVAL_SECONDS="0.2",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_PROTOCOL="http/protobuf",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="500",
        )
        child = replicas.start(consumer_name, env)

        def exported() -> bool:
            if not child.alive:
                raise AssertionError(f"the bridge exited early\n{child.output()}")
            names = [s.name for s in receiver.spans()]
            return (
                names.count(f"process {rig.stream}") == 3
                and names.count("POST") == 3
                and "signals_posted_total" in receiver.metric_names()
            )

        await eventually(exported, timeout_s=30, interval_s=0.05, what="OTLP export")
        assert len(rig.server.app.received) == 3
        # SIGTERM right after one more delivery: what the batch has not sent yet, shutdown sends.
        last_id = await publish(rig.redis, make_signal(3), stream=rig.stream)
        await eventually(lambda: len(rig.server.app.received) == 4, timeout_s=WAIT_S, what="4th")
        child.send(signal.SIGTERM)
        assert await child.wait(WAIT_S) == 0, child.output()

    assert receiver.bad_requests == []
    spans = receiver.spans()
    consumers = [s for s in spans if s.name == f"process {rig.stream}"]
    posts = [s for s in spans if s.name == "POST"]
    for span in spans:
        assert span.resource["service.name"] == "signal-bridge"
        assert span.resource["service.instance.id"] == consumer_name
    assert {s.kind for s in consumers} == {OTLP_KIND_CONSUMER}
    assert {s.kind for s in posts} == {OTLP_KIND_CLIENT}
    by_entry = {str(s.attributes["messaging.message.id"]): s for s in consumers}
    assert sorted(by_entry) == sorted([*entry_ids, last_id]), "one consumer span per entry"
    traced = [by_entry[entry_id] for entry_id in entry_ids]
    assert {s.parent_span_id for s in traced} == {producer_span}
    assert {s.trace_id for s in traced} == {producer_trace}
    assert by_entry[last_id].parent_span_id == "", "published outside any span: a new trace"
    assert {s.parent_span_id for s in posts} == {s.span_id for s in consumers}
    assert {s.trace_id for s in posts} == {s.trace_id for s in consumers}
    assert all(s.attributes["http.response.status_code"] == 201 for s in posts)

    metrics = receiver.metrics()
    assert {m.resource.get("service.instance.id") for m in metrics} == {consumer_name}
    assert {m.resource.get("service.name") for m in metrics} == {"signal-bridge"}
    names = {m.name for m in metrics}
    assert {
        "signals_posted_total",
        "signals_posted_duration_seconds",
        "signals_acked_total",
        "signals_group_lag",
        "signals_circuit_open",
    } <= names
    # The last export (at shutdown) holds the cumulative count of all four deliveries.
    final = [m for m in metrics if m.name == "signals_posted_total"][-1]
    assert final.points() == [{"result": "success", "http_code": "201", "producer_id": PRODUCER_ID}]
    assert [p.as_int for p in final.metric.sum.data_points] == [4]

    # The child's own log lines are JSON, and the delivered ones carry the exported trace id.
    lines = [msgspec.json.decode(line) for line in child.stdout().splitlines() if line.strip()]
    delivered = {line["entry_id"]: line for line in lines if line["message"] == "signal delivered"}
    assert len(delivered) == 4, child.output()
    for entry_id, line in delivered.items():
        span = by_entry[entry_id]
        assert (line["trace_id"], line["span_id"]) == (span.trace_id, span.span_id)
    assert any(line["message"] == "signal-bridge stopped" for line in lines), child.output()


# --- logs ------------------------------------------------------------------------------------


async def test_json_log_lines_carry_trace_ids_seed_fields_and_levels(
    otel: Otel, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """Delivered is INFO, a retry WARNING, a dead letter ERROR, the client's POST lines DEBUG; each JSON line has the seed's fields and its span's ids."""  # noqa: E501
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="bridge.client")
    caplog.handler.setFormatter(JsonFormatter())
    faults = [
        _fail_first(rig.key("sig-1"), 500),
        _fail_first(rig.key("refuse-me"), 422, times=99),
    ]
    rig.server.app.fault = lambda headers: next(
        (code for code in (f(headers) for f in faults) if code is not None), None
    )
    ok_id = await publish(rig.redis, make_signal(0), stream=rig.stream)
    retried_id = await publish(rig.redis, make_signal(1), stream=rig.stream)
    rejected_id = await publish(rig.redis, make_signal(2, signal_id="refuse-me"), stream=rig.stream)
    async with running(rig.redis, rig.config(), otel):
        await rig.wait_drained()

    lines = _json_lines(caplog)
    consumer_of = {
        dict(s.attributes or {})["messaging.message.id"]: s for s in otel.spans(SpanKind.CONSUMER)
    }
    for line in lines:
        assert TIMESTAMP.match(line["timestamp"]), line
        assert {"level", "message", "logger"} <= set(line)

    delivered = {line["entry_id"]: line for line in lines if line["message"] == "signal delivered"}
    assert set(delivered) == {ok_id, retried_id}
    received = {r.signal.signal_id: r.server_signal_id for r in rig.server.app.received}
    for entry_id, signal_id in ((ok_id, "sig-0"), (retried_id, "sig-1")):
        line = delivered[entry_id]
        assert (line["level"], line["logger"]) == ("INFO", "bridge.worker")
        assert line["producer_id"] == PRODUCER_ID
        assert line["signal_id"] == signal_id
        assert line["server_signal_id"] == received[signal_id]
        assert line["http_code"] == 201
        assert isinstance(line["duration_ms"], float | int)
        assert line["duration_ms"] >= 0
        span = consumer_of[entry_id]
        assert (line["trace_id"], line["span_id"]) == (_hex_trace(span), _hex_span(span))

    [retry] = [line for line in lines if line["message"] == "delivery failed, will retry"]
    assert retry["level"] == "WARNING"
    assert (retry["entry_id"], retry["signal_id"], retry["http_code"]) == (retried_id, "sig-1", 500)
    assert retry["error_type"] == "TransientDeliveryError"
    assert "500" in retry["error"]
    assert retry["span_id"] == _hex_span(consumer_of[retried_id])

    failed_posts = [line for line in lines if line["message"] == "Signal post failed"]
    assert {(p["level"], p["http_code"]) for p in failed_posts} == {
        ("DEBUG", 500),
        ("DEBUG", 422),
    }
    client_span_ids = {_hex_span(s) for s in otel.spans(SpanKind.CLIENT)}
    for post in failed_posts:
        assert post["producer_id"] == PRODUCER_ID
        assert post["error_type"] in ("TransientDeliveryError", "RejectedError")
        assert post["span_id"] in client_span_ids, "logged inside the POST span"

    [dead] = [line for line in lines if line["message"] == "signal dead-lettered"]
    assert (dead["level"], dead["reason"], dead["http_code"]) == ("ERROR", "rejected", 422)
    assert (dead["entry_id"], dead["signal_id"]) == (rejected_id, "refuse-me")
    assert "422" in dead["error"]
    assert dead["trace_id"] == _hex_trace(consumer_of[rejected_id])


async def test_auth_failures_are_logged_as_errors(
    otel: Otel, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """A 401 logs one ERROR naming the likely cause, with http_code and error_type."""
    caplog.set_level(logging.INFO)
    caplog.handler.setFormatter(JsonFormatter())
    rig.server.app.fault = _fail_first(rig.key("sig-7"), 401)
    await publish(rig.redis, make_signal(7), stream=rig.stream)
    async with running(rig.redis, rig.config(), otel):
        await rig.wait_drained()
    lines = _json_lines(caplog)
    [refused] = [line for line in lines if "refuses every signal alike" in line["message"]]
    assert (refused["level"], refused["http_code"]) == ("ERROR", 401)
    assert "credentials or clock" in refused["message"]
    assert refused["error_type"] == "AuthError"
    assert refused["signal_id"] == "sig-7"
    [opened] = [line for line in lines if line["message"].startswith("circuit breaker open")]
    assert (opened["level"], opened["reason"]) == ("INFO", "auth")
    closed = [line for line in lines if line["message"].startswith("circuit breaker closed")]
    assert [line["level"] for line in closed] == ["INFO"]
    assert [line["level"] for line in lines if line["message"] == "signal delivered"] == ["INFO"]


def test_log_format_setting_switches_between_json_and_a_human_line(
    otel: Otel, capsys: pytest.CaptureFixture[str]
) -> None:
    """configure_logging writes JSON lines with BRIDGE_LOG_FORMAT=json and one readable line with text."""  # noqa: E501
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    noisy = {
        name: logging.getLogger(name).level for name in ("httpx", "httpcore", "uvicorn.access")
    }
    log = logging.getLogger("bridge.worker")
    contexts: list[trace.SpanContext] = []
    try:
        for fmt in ("json", "text"):
            config = bridge_config(
                "http://127.0.0.1:9", "redis://127.0.0.1:1/0", "s", BRIDGE_LOG_FORMAT=fmt
            )
            assert config.telemetry.log_format == fmt
            configure_logging(config.telemetry.log_level, config.telemetry.log_format)
            with otel.tracer.start_as_current_span("process s") as span:
                contexts.append(span.get_span_context())
                log.info(
                    "signal delivered",
                    extra=log_fields(signal_id="sig-9", http_code=201, message="shadowed"),
                )
            log.debug("not at INFO")
    finally:
        for handler in list(root.handlers):
            handler.close()  # writes the lines it holds, as logging.shutdown does at exit
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
        for name, level in noisy.items():
            logging.getLogger(name).setLevel(level)

    json_line, text_line = capsys.readouterr().out.splitlines()
    ctx, text_ctx = contexts
    data = msgspec.json.decode(json_line)
    assert data["level"] == "INFO"
    assert data["logger"] == "bridge.worker"
    assert data["message"] == "signal delivered"
    assert data["field_message"] == "shadowed", "a field never overwrites the log's own keys"
    assert (data["signal_id"], data["http_code"]) == ("sig-9", 201)
    assert data["trace_id"] == format(ctx.trace_id, "032x")
    assert data["span_id"] == format(ctx.span_id, "016x")
    assert TIMESTAMP.match(data["timestamp"])

    assert not text_line.startswith("{")
    stamp, level_name, logger, rest = text_line.split(maxsplit=3)
    assert TIMESTAMP.match(stamp)
    assert (level_name, logger) == ("INFO", "bridge.worker:")
    assert rest.startswith("signal delivered ")
    assert "signal_id=sig-9" in rest
    assert "http_code=201" in rest
    assert f"trace_id={text_ctx.trace_id:032x}" in rest


def test_exceptions_become_error_and_error_type_fields() -> None:
    """A record logged with exc_info gets error and error_type (no traceback) in both formats."""
    try:
        _raise(TransientDeliveryError("ingest server answered 503", http_code=503))
    except TransientDeliveryError:
        record = logging.getLogger("bridge.client").makeRecord(
            "bridge.client",
            logging.ERROR,
            __file__,
            1,
            "post failed",
            (),
            sys.exc_info(),
        )
    data = msgspec.json.decode(JsonFormatter().format(record))
    assert data["error_type"] == "TransientDeliveryError"
    assert data["error"] == "ingest server answered 503"
    assert "trace_id" not in data, "no span is active here"
    assert "Traceback" not in JsonFormatter().format(record)
    text = TextFormatter().format(record)
    assert "\n" not in text
    assert "error_type=TransientDeliveryError" in text


def _raise(exc: Exception) -> None:
    raise exc
