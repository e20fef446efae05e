"""CPU cost of exporting spans over OTLP/HTTP, in-process: the encoding, then the batch processor.

Part 1 encodes the same finished spans (the shapes of one delivery: a CONSUMER span with the
messaging attributes and a CLIENT child with the HTTP ones, recorded by the bridge's
LeanTracer as bridge/delivery/observer.py and bridge/edge/client.py make them) with the SDK's
encoder
(``encode_spans(...).SerializePartialToString()``, what the stock OTLP/HTTP exporter sends) and
with ``bridge.telemetry.fastpath.otlp.encode_spans``, in batches of the BatchSpanProcessor's sizes,
and reports
process CPU per span. Part 2 calls each exporter's ``export()`` on those batches, posting to a
real receiver (tests/otlp_receiver.py, in a child process so its decoding is not counted).
Part 3 ends spans through a ``BatchSpanProcessor`` at several settings
(OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_SCHEDULE_DELAY, OTEL_BSP_MAX_QUEUE_SIZE) into an
exporter posting to that receiver, and reports process CPU (all threads: the exporter's thread
encodes and sends) per span over the cost of the same spans with no processor at all. Part 4
is the whole telemetry of one delivery (bench.telemetry_cost's ``deliver``: spans, metrics, the
INFO line) at 1%, 10% and 100% sampling, exported to that receiver by either exporter.

    .venv/bin/python -m bench.otlp_cost            # 20,000 spans per measurement
    .venv/bin/python -m bench.otlp_cost -n 5000
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Final

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from bench.telemetry_cost import CLIENT_ATTRS, CONSUMER_ATTRS, deliver
from bridge.telemetry.fastpath.otlp import encode_spans
from bridge.telemetry.fastpath.otlp_export import OtlpHttpSpanExporter
from bridge.telemetry.logs import configure_logging
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import LeanTracer, get_tracer

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


class Counting(SpanExporter):
    """Passes batches on to ``inner`` and counts the spans handed to it (the rest were dropped)."""

    def __init__(self, inner: SpanExporter) -> None:
        """Wrap ``inner``."""
        self.inner = inner
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Count, then export with ``inner``."""
        self.spans += len(spans)
        return self.inner.export(spans)

    def shutdown(self) -> None:
        """Shut ``inner`` down."""
        self.inner.shutdown()


def processor_cost(count: int, processor: SpanProcessor | None) -> float:
    """Process CPU us per span (all threads) to make ``count`` spans and flush ``processor``.

    The SDK's own tracer, so that "no processor" still records the same spans (LeanTracer
    would make none) and the difference is the processor and the exporter alone.

    Spans come in bursts of 400 with a 10 ms pause between (a steady ~25,000 spans/s, above
    what a replica makes) so the exporter thread keeps up as it would in service.
    """
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    if processor is not None:
        provider.add_span_processor(processor)
    tracer = provider.get_tracer("signal-bridge")
    make_spans(tracer, 500)  # warm-up
    provider.force_flush()
    started = time.process_time()
    for _ in range(count // 400):
        make_spans(tracer, 200)
        time.sleep(0.01)
    provider.force_flush()
    cpu = time.process_time() - started
    provider.shutdown()
    return cpu / (count // 400 * 400) * 1e6


def export_cost(spans: list[ReadableSpan], batch: int, exporter: SpanExporter) -> float:
    """Process CPU us per span of ``exporter.export`` (encode and HTTP POST) by ``batch``."""
    batches = [spans[i : i + batch] for i in range(0, len(spans), batch)]
    exporter.export(batches[0])  # warm-up: connection, caches
    started = time.process_time()
    for part in batches:
        exporter.export(part)
    cpu = time.process_time() - started
    exporter.shutdown()
    return cpu / len(spans) * 1e6


def delivery_cost(count: int, ratio: float, exporter: SpanExporter) -> float:
    """Process CPU us per delivery of bench.telemetry_cost's delivery at a sampling ``ratio``."""
    provider = TracerProvider(
        resource=RESOURCE,
        sampler=ParentBased(TraceIdRatioBased(ratio)),
        shutdown_on_exit=False,
    )
    provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = LeanTracer(get_tracer(provider), provider)
    meters = MeterProvider(shutdown_on_exit=False)
    metrics = Metrics(meters)
    log = logging.getLogger("bridge.worker")
    for index in range(min(count, 2_000)):  # warm-up
        deliver(tracer, metrics, log, index, parents=False)
    provider.force_flush()
    started = time.process_time()
    for index in range(count):
        deliver(tracer, metrics, log, index, parents=False)
        if index % 200 == 199:  # paced as processor_cost is: the exporter keeps up, drops none
            time.sleep(0.01)
    provider.force_flush()
    cpu = time.process_time() - started
    provider.shutdown()
    meters.shutdown()
    return cpu / count * 1e6


@contextlib.contextmanager
def receiver() -> Iterator[str]:
    """Run a real OTLP/HTTP receiver (tests/otlp_receiver.py) in a child; yield its traces URL.

    In another process, so its decoding is not counted in this process's CPU time.
    """
    child = subprocess.Popen(  # noqa: S603 - our own interpreter and code
        [sys.executable, "-c", RECEIVER_CODE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        yield f"http://127.0.0.1:{port}/v1/traces"
    finally:
        assert child.stdin is not None
        child.stdin.close()
        child.wait(timeout=10)


RECEIVER_CODE: Final = """
import sys
from tests.otlp_receiver import OtlpReceiver
with OtlpReceiver() as receiver:
    print(receiver.port, flush=True)
    sys.stdin.read()
"""

# (label, BatchSpanProcessor keyword arguments): the SDK's defaults, then other settings.
BSP_SETTINGS: Final[list[tuple[str, dict[str, int]]]] = [
    ("SDK defaults: queue 2048, batch 512, delay 5000 ms", {}),
    ("batch 128", {"max_export_batch_size": 128}),
    ("delay 500 ms", {"schedule_delay_millis": 500}),
    ("queue 8192, batch 2048", {"max_queue_size": 8192, "max_export_batch_size": 2048}),
]
ROUNDS: Final = 3


def main(argv: list[str] | None = None) -> int:
    """Print the encoding, export, batch processor and sampling tables (Markdown)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=20_000, help="spans per measurement")
    args = parser.parse_args(argv)
    if not 1_000 <= args.count <= 1_000_000:
        parser.error("--count must be in [1000, 1000000]")

    # The spans the bridge exports: LeanTracer's (bridge.telemetry.fastpath.spans.LeanSpan ends as
    # a ReadableSpan).
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, shutdown_on_exit=False)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    make_spans(LeanTracer(get_tracer(provider), provider), args.count // 2)
    spans = list(memory.get_finished_spans())

    print(
        f"| encoding ({len(spans):,} spans, two a delivery) | SDK us/span "
        "| bridge.telemetry.fastpath.otlp us/span |"
    )
    print("| --- | --- | --- |")
    for batch in (32, 512, 2048):
        sdk = encoding_cost(spans, batch, lambda part: sdk_encode(part).SerializePartialToString())
        ours = encoding_cost(spans, batch, encode_spans)
        print(f"| batches of {batch} | {sdk:.2f} | {ours:.2f} ({sdk / ours:.1f}x less) |")

    with receiver() as url:
        exporters: list[tuple[str, Callable[[], SpanExporter]]] = [
            ("SDK OTLPSpanExporter", lambda: OTLPSpanExporter(endpoint=url)),
            ("bridge OtlpHttpSpanExporter", lambda: OtlpHttpSpanExporter(endpoint=url)),
        ]
        print("\n| export() to the receiver: encode + POST | batch | us/span |")
        print("| --- | --- | --- |")
        for batch in (128, 512, 2048):
            for label, make in exporters:
                print(f"| {label} | {batch} | {export_cost(spans, batch, make()):.2f} |")

        print(
            f"\n| BatchSpanProcessor, {ROUNDS} alternated rounds | exporter | us/span over none |"
        )
        print("| --- | --- | --- |")
        runs: dict[tuple[str, str], list[float]] = {}
        exported: dict[tuple[str, str], int] = {}
        for _ in range(ROUNDS):
            base = processor_cost(args.count, None)
            for name, kwargs in BSP_SETTINGS:
                for label, make in exporters if not kwargs else exporters[1:]:
                    counting = Counting(make())
                    processor = BatchSpanProcessor(counting, **kwargs)  # type: ignore[arg-type]
                    cost = processor_cost(args.count, processor) - base
                    runs.setdefault((name, label), []).append(cost)
                    exported[name, label] = counting.spans
        for (name, label), costs in runs.items():
            costs.sort()
            spread = f"{costs[0]:.1f}-{costs[-1]:.1f}"
            print(f"| {name} | {label} | {costs[len(costs) // 2]:.1f} ({spread}) |")
        dropped = {key: n for key, n in exported.items() if n < args.count // 400 * 400 + 1000}
        print(f"\nspans dropped (last round): {dropped or 'none'}")

        out = sys.stdout
        sys.stdout = Path(os.devnull).open("w")  # noqa: SIM115 - the INFO lines go nowhere
        configure_logging("INFO", "json")
        rows = []
        for ratio in (0.01, 0.1, 1.0):
            for label, make in exporters:
                rows.append((ratio, label, delivery_cost(args.count // 2, ratio, make())))
        sys.stdout.close()
        sys.stdout = out
    print(
        f"\n| whole delivery telemetry ({args.count // 2:,} deliveries) | exporter | us/delivery |"
    )
    print("| --- | --- | --- |")
    for ratio, label, cost in rows:
        print(f"| {ratio:.0%} sampled | {label} | {cost:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
