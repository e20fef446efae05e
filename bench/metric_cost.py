"""CPU cost of one histogram record, the SDK's histogram against LocalHistogram, in-process.

Both come from ``setup_telemetry`` as the bridge runs it: as shipped (local histograms), and
with ``LocalHistograms.attach`` disabled, which keeps the SDK's histograms (what releases
before local histograms recorded into, and before exemplars were mirrored, whenever spans
were exported). Each is measured with one reader (Prometheus /metrics) and two (plus a
periodic console exporter that never fires during the loop), and with exemplars on
(OTEL_METRICS_EXEMPLAR_FILTER=trace_based, as with spans exported) under an unsampled and a
sampled current span, alternating, several rounds; the table gives the median and the spread
of process CPU time per ``posted_duration.record`` and per /metrics scrape.

    .venv/bin/python -m bench.metric_cost              # 200,000 records per measurement
    .venv/bin/python -m bench.metric_cost -n 50000 --rounds 5
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from typing import Final

from opentelemetry import metrics, trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from bridge.telemetry.fastpath.histograms import LocalHistogram, LocalHistograms
from bridge.telemetry.setup import TelemetryHandle, setup_telemetry

ATTRIBUTES: Final = {"result": "success", "producer_id": "p"}
SCRAPES: Final = 200
# name, SDK histograms, console reader too, current span's sampled flag (None: no exemplars)
CONFIGS: Final[list[tuple[str, bool, bool, bool | None]]] = [
    ("SDK histogram, 1 reader", True, False, None),
    ("LocalHistogram, 1 reader", False, False, None),
    ("SDK histogram, 2 readers", True, True, None),
    ("LocalHistogram, 2 readers", False, True, None),
    ("SDK histogram, 2 readers, trace_based, unsampled span", True, True, False),
    ("LocalHistogram, 2 readers, trace_based, unsampled span", False, True, False),
    ("SDK histogram, 2 readers, trace_based, sampled span", True, True, True),
    ("LocalHistogram, 2 readers, trace_based, sampled span", False, True, True),
]


@contextmanager
def telemetry(*, sdk: bool, console: bool, exemplars: bool) -> Iterator[TelemetryHandle]:
    """Yield a handle from setup_telemetry; console output (at shutdown) is thrown away."""
    env = {"OTEL_TRACES_EXPORTER": "none", "OTEL_METRICS_EXPORTER": "none"}
    if console:
        env |= {"OTEL_METRICS_EXPORTER": "console", "OTEL_METRIC_EXPORT_INTERVAL": "3600000"}
    if exemplars:
        env["OTEL_METRICS_EXEMPLAR_FILTER"] = "trace_based"
    attach = LocalHistograms.attach
    if sdk:  # the SDK's histograms: local ones are never attached
        LocalHistograms.attach = lambda *args, **kwargs: None  # type: ignore[method-assign]
    saved = {name: os.environ.get(name) for name in (*env, "OTEL_METRICS_EXEMPLAR_FILTER")}
    os.environ.pop("OTEL_METRICS_EXEMPLAR_FILTER", None)
    os.environ.update(env)  # the SDK reads its variables from os.environ itself
    try:
        with redirect_stderr(io.StringIO()):
            handle = setup_telemetry(env, instance_id="bench", prometheus=True)
            assert isinstance(handle.metrics.posted_duration, LocalHistogram) is not sdk
            try:
                yield handle
            finally:
                handle.shutdown()
    finally:
        LocalHistograms.attach = attach  # type: ignore[method-assign]
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def measure(count: int, *, sdk: bool, console: bool, sampled: bool | None) -> tuple[float, float]:
    """Return (CPU us per record, CPU us per /metrics scrape) for one configuration."""
    flags = TraceFlags(TraceFlags.SAMPLED if sampled else TraceFlags.DEFAULT)
    span = NonRecordingSpan(SpanContext(0xA1, 0xB1, is_remote=True, trace_flags=flags))
    with (
        telemetry(sdk=sdk, console=console, exemplars=sampled is not None) as handle,
        trace.use_span(span, end_on_exit=False),
    ):
        record = handle.metrics.posted_duration.record
        for index in range(min(count, 5_000)):  # warm-up, and a few buckets filled
            record((index % 40) * 0.05, ATTRIBUTES)
        started = time.process_time()
        for _ in range(count):
            record(0.0008, ATTRIBUTES)
        per_record = (time.process_time() - started) / count * 1e6
        started = time.process_time()
        for _ in range(SCRAPES):
            handle.prometheus_text()
        per_scrape = (time.process_time() - started) / SCRAPES * 1e6
    return per_record, per_scrape


def main(argv: list[str] | None = None) -> int:
    """Measure every configuration ``--rounds`` times, alternating, and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--count", type=int, default=200_000, help="records per run")
    parser.add_argument("--rounds", type=int, default=3, help="alternated runs per config")
    args = parser.parse_args(argv)
    # setup_telemetry installs global providers; the bench builds several, keep the first.
    trace.set_tracer_provider = lambda provider: None  # type: ignore[assignment,unused-ignore]
    metrics.set_meter_provider = lambda provider: None  # type: ignore[assignment,unused-ignore]
    results: dict[str, list[tuple[float, float]]] = {name: [] for name, *_ in CONFIGS}
    for _ in range(args.rounds):
        for name, sdk, console, sampled in CONFIGS:
            results[name].append(measure(args.count, sdk=sdk, console=console, sampled=sampled))
    print(f"python {sys.version.split()[0]}, {args.count:,} records x {args.rounds} rounds")
    print("| configuration | us per record (median, min-max) | us per scrape (median) |")
    print("| --- | --- | --- |")
    for name, runs in results.items():
        records = [r for r, _ in runs]
        scrapes = [s for _, s in runs]
        print(
            f"| {name} | {statistics.median(records):.2f} "
            f"({min(records):.2f}-{max(records):.2f}) | {statistics.median(scrapes):.0f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
