"""CPU cost of exporting spans over OTLP/HTTP, in-process: the encoding, then the batch processor.

Part 1 encodes the same finished spans (the shapes of one delivery: a CONSUMER span with the
messaging attributes and a CLIENT child with the HTTP ones, as bridge/worker.py and
bridge/client.py make them) with the SDK's encoder (``encode_spans(...)
.SerializePartialToString()``, what the stock OTLP/HTTP exporter sends) and with
``bridge.otlp.encode_spans``, in batches of the BatchSpanProcessor's sizes, and reports process
CPU per span. Part 2 ends spans through a ``BatchSpanProcessor`` at several settings
(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE) into an
exporter that encodes with ``bridge.otlp`` and drops the bytes, and reports process CPU (all
threads) per span over the cost of the same spans with no processor at all.

    .venv/bin/python -m bench.otlp_cost            # 20,000 spans per measurement
    .venv/bin/python -m bench.otlp_cost -n 5000
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Sequence
from typing import Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bridge.otlp import encode_spans

CONSUMER_ATTRS: Final[dict[str, str]] = {
    "messaging.system": "redis",
    "messaging.destination.name": "signals",
    "messaging.consumer.group.name": "signal-bridge",
    "messaging.operation.type": "process",
}
CLIENT_ATTRS: Final[dict[str, str | int]] = {
    "http.request.method": "POST",
    "url.full": "http://127.0.0.1:8080/api/v1/signals/ingest",
    "server.address": "127.0.0.1",
    "server.port": 8080,
}
RESOURCE: Final = Resource.create({"service.name": "signal-bridge", "service.instance.id": "b-1"})


def make_spans(tracer: trace.Tracer, deliveries: int) -> None:
    """End two spans per delivery (CONSUMER and its CLIENT child), as one delivery does."""
    for index in range(deliveries):
        attributes = {
            **CONSUMER_ATTRS,
            "messaging.message.id": f"{index}-0",
            "bridge.instrument": "X",
        }
        with tracer.start_as_current_span(
            "process signals", kind=trace.SpanKind.CONSUMER, attributes=attributes
        ) as span:
            with tracer.start_as_current_span(
                "POST", kind=trace.SpanKind.CLIENT, attributes=CLIENT_ATTRS
            ) as post:
                post.set_attribute("http.response.status_code", 201)
            span.set_attribute("bridge.outcome", "success")


class Collect(SpanProcessor):
    """Keeps every ended span (to encode them afterwards)."""

    def __init__(self) -> None:
        """Start empty."""
        self.spans: list[ReadableSpan] = []

    def on_end(self, span: ReadableSpan) -> None:
        """Keep ``span``."""
        self.spans.append(span)


class EncodeAndDrop(SpanExporter):
    """Encodes each batch with bridge.otlp (what OtlpHttpSpanExporter sends) and drops it."""

    def __init__(self) -> None:
        """Start counting."""
        self.spans = 0
        self.exports = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode ``spans`` as one request body."""
        self.spans += len(spans)
        self.exports += 1
        encode_spans(spans)
        return SpanExportResult.SUCCESS


def encoding_cost(spans: list[ReadableSpan], batch: int, encode: Callable[..., object]) -> float:
    """Process CPU us per span to encode ``spans`` in batches of ``batch`` (best of 3)."""
    batches = [spans[i : i + batch] for i in range(0, len(spans), batch)]
    for part in batches[:4]:  # warm-up: caches, imports
        encode(part)
    best = float("inf")
    for _ in range(3):
        started = time.process_time()
        for part in batches:
            encode(part)
        best = min(best, time.process_time() - started)
    return best / len(spans) * 1e6


def processor_cost(count: int, processor: SpanProcessor | None) -> float:
    """Process CPU us per span (all threads) to make ``count`` spans and flush ``processor``."""
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    if processor is not None:
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("signal-bridge")
    make_spans(tracer, 500)  # warm-up
    provider.force_flush()
    started = time.process_time()
    make_spans(tracer, count // 2)
    provider.force_flush()
    cpu = time.process_time() - started
    provider.shutdown()
    return cpu / count * 1e6


def main(argv: list[str] | None = None) -> int:
    """Print the encoding table and the batch processor table (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=20_000, help="spans per measurement")
    args = parser.parse_args(argv)
    if not 1_000 <= args.count <= 1_000_000:
        parser.error("--count must be in [1000, 1000000]")

    collect = Collect()
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(collect)
    make_spans(provider.get_tracer("signal-bridge"), args.count // 2)
    spans = collect.spans

    print(f"| encoding ({len(spans):,} spans) | batch | SDK us/span | bridge.otlp us/span | x |")
    print("| --- | --- | --- | --- | --- |")
    for batch in (32, 512, 2048):
        sdk = encoding_cost(spans, batch, lambda part: sdk_encode(part).SerializePartialToString())
        ours = encoding_cost(spans, batch, encode_spans)
        print(f"| two spans a delivery | {batch} | {sdk:.2f} | {ours:.2f} | {sdk / ours:.1f} |")

    base = processor_cost(args.count, None)
    print(f"\nspans with no processor: {base:.2f} us/span (subtracted below)\n")
    print("| BatchSpanProcessor setting | us/span over none | exports |")
    print("| --- | --- | --- |")
    settings = [
        ("SDK defaults (queue 2048, batch 512, delay 5000 ms)", {}),
        ("batch 64", {"max_export_batch_size": 64}),
        ("batch 128", {"max_export_batch_size": 128}),
        ("delay 500 ms", {"schedule_delay_millis": 500}),
        (
            "delay 1000 ms, batch 1024, queue 4096",
            {"schedule_delay_millis": 1000, "max_export_batch_size": 1024, "max_queue_size": 4096},
        ),
        ("queue 8192, batch 2048", {"max_queue_size": 8192, "max_export_batch_size": 2048}),
    ]
    for name, kwargs in settings:
        exporter = EncodeAndDrop()
        cost = processor_cost(args.count, BatchSpanProcessor(exporter, **kwargs))  # type: ignore[arg-type]
        print(f"| {name} | {cost - base:.2f} | {exporter.exports:,} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
