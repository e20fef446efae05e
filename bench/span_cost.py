"""CPU cost of one sampled, recorded span, in-process: the SDK's tracer against ``LeanTracer``.

Replays the two spans of one delivery (the CONSUMER span made current with six attributes, the
CLIENT span with four, one ``set_attribute`` on each, both ended) on a provider whose processor
hands every span to an exporter that only counts them, so what is measured is the recording
side: span objects, attributes, the ``ReadableSpan`` and the processor's ``on_end``. The OTLP
encoding is left out on purpose (``bench.telemetry_cost`` includes it). Reports process CPU
time (all threads, so a BatchSpanProcessor's worker counts) per span, best of ``--repeat``
alternated runs per configuration.

    .venv/bin/python -m bench.span_cost                 # 20,000 deliveries (40,000 spans) each
    .venv/bin/python -m bench.span_cost -n 5000 --repeat 5
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    SimpleSpanProcessor,
    SpanExporter,
    SpanExportResult,
)
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased

from bench.telemetry_cost import CLIENT_ATTRS, CONSUMER_ATTRS
from bridge.telemetry.tracing import LeanTracer, get_tracer

__all__ = ["main"]

# The CONSUMER span's attributes of one delivery (the message id and instrument as constants).
SPAN_ATTRS: Final = {
    **CONSUMER_ATTRS,
    "messaging.message.id": "1700000000000-0",
    "bridge.instrument": "EURUSD",
}
PRODUCER: Final = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}


class CountingExporter(SpanExporter):
    """Counts the spans it is given and drops them (no encoding, no I/O)."""

    def __init__(self) -> None:
        """Start at zero."""
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Count ``spans``."""
        self.spans += len(spans)
        return SpanExportResult.SUCCESS


def _deliveries(tracer: trace.Tracer, count: int) -> None:
    """Make the two spans of ``count`` deliveries, each under the producer's sampled context."""
    parent = propagate.extract(PRODUCER)
    for _ in range(count):
        with tracer.start_as_current_span(
            "process signals",
            context=parent,
            kind=trace.SpanKind.CONSUMER,
            attributes=SPAN_ATTRS,
        ) as span:
            client = tracer.start_span("POST", kind=trace.SpanKind.CLIENT, attributes=CLIENT_ATTRS)
            client.set_attribute("http.response.status_code", 201)
            client.end()
            span.set_attribute("bridge.outcome", "delivered")


def _measure(lean: bool, batch: bool, count: int) -> float:
    """CPU microseconds per span for one configuration (all spans must reach the exporter)."""
    exporter = CountingExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON), shutdown_on_exit=False)
    processor = (
        BatchSpanProcessor(exporter, max_queue_size=4 * count)
        if batch
        else SimpleSpanProcessor(exporter)
    )
    provider.add_span_processor(processor)
    sdk = get_tracer(provider)
    tracer: trace.Tracer = LeanTracer(sdk, provider) if lean else sdk
    _deliveries(tracer, 200)  # warm up
    provider.force_flush()
    exporter.spans = 0
    started = time.process_time()
    _deliveries(tracer, count)
    provider.force_flush()
    elapsed = time.process_time() - started
    provider.shutdown()
    if exporter.spans != 2 * count:
        raise SystemExit(f"exported {exporter.spans} spans, expected {2 * count}")
    return elapsed / (2 * count) * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    """Print CPU microseconds per sampled span, SDK tracer vs LeanTracer, per processor."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=20_000, help="deliveries per run (2 spans each)")
    parser.add_argument("--repeat", type=int, default=3, help="alternated runs per configuration")
    args = parser.parse_args(argv)
    configs: list[tuple[str, Callable[[], float]]] = []
    for batch in (False, True):
        for lean in (False, True):
            label = f"{'LeanTracer' if lean else 'SDK tracer'} + {'Batch' if batch else 'Simple'}"
            configs.append(
                (label, lambda lean=lean, batch=batch: _measure(lean, batch, args.n))  # type: ignore[misc]
            )
    results: dict[str, list[float]] = {label: [] for label, _ in configs}
    for _ in range(args.repeat):
        for label, run in configs:
            results[label].append(run())
    print(f"CPU us per sampled span, {args.n} deliveries x {args.repeat} runs (min / max)")
    for label, values in results.items():
        print(f"  {label:<26} {min(values):6.2f} / {max(values):6.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
