"""CPU cost of the bridge's telemetry per delivery, in-process, by trace sampling ratio.

Replays what one delivery does to OpenTelemetry and logging (CONSUMER span made current, CLIENT
span with traceparent injected, the counters and histograms of a success, the INFO line) with the
bridge's own ``Metrics``, tracers (``IdsTracer`` with no exporter, else ``LeanTracer``) and JSON
logging, and reports process CPU time (all threads, so the exporter's encoding counts) per
delivery. Sampled spans go through a ``BatchSpanProcessor`` to an exporter that encodes them
exactly as the OTLP exporters do and drops the bytes: the network is left out, the encoding is
not.

``--stock`` replaces fast paths by the SDK's own to show what each buys: ``tracer`` (the SDK's
tracer), ``histograms`` (the SDK's histograms), ``encoder`` (the SDK's OTLP encoder), or
``all`` (the fast-path gate turned off, as on an unverified SDK; the ids-only path stays).

    .venv/bin/python -m bench.telemetry_cost            # 20,000 deliveries per configuration
    .venv/bin/python -m bench.telemetry_cost -n 5000
    .venv/bin/python -m bench.telemetry_cost -n 5000 --stock tracer
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from opentelemetry import propagate, trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as sdk_encode
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased, TraceIdRatioBased

from bridge.telemetry.fastpath import gate
from bridge.telemetry.fastpath.histograms import LocalHistograms
from bridge.telemetry.fastpath.otlp import encode_spans
from bridge.telemetry.logs import configure_logging, log_fields
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import IdsTracer, LeanTracer, get_tracer

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


# What --stock may replace by the SDK's own.
STOCK_CHOICES: Final = ("none", "tracer", "histograms", "encoder", "all")


class EncodingExporter(SpanExporter):
    """Encodes each batch as the bridge's OTLP/HTTP exporter does, then drops the bytes."""

    def __init__(self, *, stock: bool = False) -> None:
        """Start counting; ``stock``: encode with the SDK's encoder, as the stock exporter."""
        self.spans = 0
        self.bytes = 0
        self._stock = stock

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode ``spans`` in one request body."""
        self.spans += len(spans)
        if self._stock:
            self.bytes += len(sdk_encode(spans).SerializePartialToString())
        else:
            self.bytes += len(encode_spans(spans))
        return SpanExportResult.SUCCESS


def deliver(
    tracer: trace.Tracer, metrics: Metrics, log: logging.Logger, index: int, *, parents: bool
) -> None:
    """Do the telemetry of one successful delivery, as the delivery observer and the client do it.

    With ``parents`` every other entry carries a sampled producer ``traceparent`` (as in
    ``bench.run``'s backlogs), extracted as the worker does.
    """
    parent = None
    if parents and index % 2 == 0:
        carrier = {"traceparent": f"00-{index + 1:032x}-{index + 1:016x}-01"}
        parent = propagate.extract(carrier)
    attributes = {**CONSUMER_ATTRS, "messaging.message.id": f"{index}-0", "bridge.instrument": "X"}
    with tracer.start_as_current_span(
        "process signals", context=parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
    ) as span:
        post = tracer.start_span("POST", kind=trace.SpanKind.CLIENT, attributes=CLIENT_ATTRS)
        headers: dict[str, str] = {}
        propagate.inject(headers, context=trace.set_span_in_context(post))
        post.set_attribute("http.response.status_code", 201)
        metrics.posted_total.add(1, {"result": "success", "http_code": "201", "producer_id": "p"})
        metrics.posted_duration.record(0.0008, {"result": "success", "producer_id": "p"})
        post.end()
        span.set_attribute("bridge.outcome", "success")
        metrics.acked_total.add(1, {"outcome": "success"})
        metrics.signal_age.record(0.0012)
        log.info(
            "signal delivered",
            extra=log_fields(
                producer_id="p",
                entry_id=f"{index}-0",
                signal_id=f"sig-{index}",
                server_signal_id="x",
                instrument="X",
                http_code=201,
                duration_ms=0.8,
                attempts=1,
                outcome="success",
            ),
        )


def measure(
    name: str, ratio: float | None, count: int, *, parents: bool = False, stock: str = "none"
) -> tuple[str, float, int]:
    """Return (name, CPU us per delivery, spans exported) for one configuration."""
    fast = gate.fast_paths().enabled
    exporter = EncodingExporter(stock=not fast or stock == "encoder")
    ids = RandomIdGenerator()
    if ratio is None:  # as shipped without an endpoint: no processor, only ids (IdsTracer)
        sampler = ParentBased(ALWAYS_OFF)
        provider = TracerProvider(sampler=sampler, id_generator=ids, shutdown_on_exit=False)
    else:
        provider = TracerProvider(
            sampler=ParentBased(TraceIdRatioBased(ratio)), shutdown_on_exit=False
        )
        provider.add_span_processor(BatchSpanProcessor(exporter))
    tracer = get_tracer(provider)
    if stock != "tracer":
        tracer = (
            IdsTracer(ids, sampler, follows_parent=True)
            if ratio is None
            else LeanTracer(tracer, provider)
        )
    meters = MeterProvider(
        shutdown_on_exit=False,
        exemplar_filter=AlwaysOffExemplarFilter() if ratio is None else None,
    )
    # As shipped: histograms kept in-process, with exemplars (trace_based) once spans export.
    if fast and stock != "histograms":
        LocalHistograms().attach(meters, "always_off" if ratio is None else "trace_based")
    metrics = Metrics(meters)
    log = logging.getLogger("bridge.worker")
    for index in range(min(count, 2_000)):  # warm-up
        deliver(tracer, metrics, log, index, parents=parents)
    provider.force_flush()
    exporter.spans = 0
    started = time.process_time()
    for index in range(count):
        deliver(tracer, metrics, log, index, parents=parents)
    provider.force_flush()
    cpu = time.process_time() - started
    provider.shutdown()
    meters.shutdown()
    return name, cpu / count * 1e6, exporter.spans


def main(argv: list[str] | None = None) -> int:
    """Measure every configuration and print a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=20_000, help="deliveries per config")
    parser.add_argument(
        "--stock", choices=STOCK_CHOICES, default="none", help="fast path(s) to replace by the SDK"
    )
    args = parser.parse_args(argv)
    if args.stock == "all":  # as on an SDK version the gate does not know
        gate.VERIFIED_VERSIONS = frozenset()
    stock: str = args.stock
    if not 100 <= args.count <= 1_000_000:
        parser.error("--count must be in [100, 1000000]")
    out = sys.stdout
    sys.stdout = Path(os.devnull).open("w")  # noqa: SIM115 - the INFO lines go nowhere
    configure_logging("INFO", "json")
    rows = [
        measure("no exporter (as shipped), no producer context", None, args.count, stock=stock),
        measure(
            "no exporter, sampled producer context on half (as bench.run)",
            None,
            args.count,
            parents=True,
            stock=stock,
        ),
        measure("OTLP exporter, 0% sampled", 0.0, args.count, stock=stock),
        measure("OTLP exporter, 1% sampled", 0.01, args.count, stock=stock),
        measure("OTLP exporter, 10% sampled", 0.1, args.count, stock=stock),
        measure("OTLP exporter, 100% sampled", 1.0, args.count, stock=stock),
    ]
    base = rows[2][1]
    print(
        f"| configuration ({args.count:,} deliveries, stock: {stock}) | CPU us/delivery "
        "| spans exported |",
        file=out,
    )
    print("| --- | --- | --- |", file=out)
    for name, cpu, spans in rows:
        print(f"| {name} | {cpu:.1f} | {spans:,} |", file=out)
    full = rows[-1]
    per_span = (full[1] - base) / 2
    print(f"\nper sampled span (100% vs 0%, two spans a delivery): {per_span:.1f} us", file=out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
