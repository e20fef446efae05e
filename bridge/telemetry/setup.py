"""OpenTelemetry set-up from the OTEL_* variables: providers, exporters, readers, shutdown.

``setup_telemetry`` installs the SDK's providers and exporters; what the delivery path calls
lives in ``bridge.telemetry.tracing`` (spans), ``bridge.telemetry.metrics`` (metrics) and
``bridge.telemetry.logs`` (JSON
log lines), each kept near free when nothing looks and small when something does.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Any, Final

from opentelemetry import metrics, trace

from bridge.telemetry.fastpath.gate import fast_paths
from bridge.telemetry.fastpath.histograms import LocalHistograms
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.otel_env import otel_exporter_names
from bridge.telemetry.tracing import INSTRUMENTATION_NAME, IdsTracer, LeanTracer, get_tracer

__all__ = ["TelemetryHandle", "setup_telemetry"]

SHUTDOWN_TIMEOUT_S: Final = 5.0


# --- SDK set-up ------------------------------------------------------------------------------


def _console_line(item: Any) -> str:  # noqa: ANN401 - a ReadableSpan or MetricsData
    """One JSON object per line, like the logs (the SDK's default is indented, many lines)."""
    return str(item.to_json(indent=None)) + "\n"


def _span_exporter(name: str) -> Any:  # noqa: ANN401 - any SDK SpanExporter
    """Build the SDK's exporter registered as ``name`` (``console``: one line each, on stderr).

    ``otlp_proto_http`` is the SDK's OTLP/HTTP exporter with the bridge's protobuf encoder
    (``bridge.telemetry.fastpath.otlp``: same bytes on the wire, a fraction of the CPU per span)
    while ``fast_paths()`` is on, else the SDK's own.
    """
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter(out=sys.stderr, formatter=_console_line)
    if name == "otlp_proto_http" and fast_paths().enabled:
        from bridge.telemetry.fastpath.otlp_export import OtlpHttpSpanExporter  # noqa: PLC0415 - SDK only when set up

        return OtlpHttpSpanExporter()
    (entry,) = entry_points(group="opentelemetry_traces_exporter", name=name)
    return entry.load()()


def _metric_exporter(name: str) -> Any:  # noqa: ANN401 - any SDK MetricExporter
    """Build the SDK's metric exporter registered as ``name`` (``console``: stderr, one line)."""
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter  # noqa: PLC0415

        return ConsoleMetricExporter(out=sys.stderr, formatter=_console_line)
    (entry,) = entry_points(group="opentelemetry_metrics_exporter", name=name)
    return entry.load()()


class TelemetryHandle:
    """The installed providers, the instruments, and the Prometheus registry; shut down once."""

    def __init__(
        self,
        tracer_provider: Any,  # noqa: ANN401 - SDK or no-op provider
        meter_provider: Any,  # noqa: ANN401 - SDK or no-op provider
        registry: Any,  # noqa: ANN401 - prometheus_client.CollectorRegistry or None
        tracer: trace.Tracer | None = None,
    ) -> None:
        """Hold the providers; ``tracer`` defaults to a LeanTracer of ``tracer_provider``."""
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.registry = registry
        self.metrics = Metrics(meter_provider)
        self.tracer: trace.Tracer = tracer or LeanTracer(
            get_tracer(tracer_provider), tracer_provider
        )

    def prometheus_text(self) -> bytes:
        """Render the metrics in the Prometheus text format (empty without a health port)."""
        if self.registry is None:
            return b""
        from prometheus_client import generate_latest  # noqa: PLC0415 - optional path

        return bytes(generate_latest(self.registry))

    def shutdown(self, timeout_s: float = SHUTDOWN_TIMEOUT_S) -> None:
        """Flush buffered spans and metrics and stop the exporters, within ``timeout_s``.

        An unreachable collector must not hold up a replica's exit (the exporters retry for
        many seconds): what is not flushed in time is dropped, with a warning.
        """
        providers = [
            provider
            for provider in (self.tracer_provider, self.meter_provider)
            if getattr(provider, "shutdown", None) is not None
        ]
        if not providers:
            return

        def stop() -> None:
            for provider in providers:
                provider.force_flush(int(timeout_s * 1000 / 2))
                provider.shutdown()

        worker = threading.Thread(target=stop, name="otel-shutdown", daemon=True)
        worker.start()
        worker.join(timeout_s)
        if worker.is_alive():
            logging.getLogger("bridge.telemetry").warning(
                "telemetry not flushed within %.0fs (collector unreachable?); dropped", timeout_s
            )


def setup_telemetry(
    otel_env: Mapping[str, str],
    *,
    instance_id: str,
    prometheus: bool = True,
    service_name: str = INSTRUMENTATION_NAME,
) -> TelemetryHandle:
    """Build SDK providers from the OTEL_* variables and install them globally.

    ``service.name`` defaults to ``service_name`` (OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES
    win), ``service.instance.id`` is the consumer name. Exporters are the SDK's own, by the names
    OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER give (checked at load by bridge.config.loader);
    OTLP
    without an endpoint exports nothing; trace ids still flow into logs and ``traceparent``
    headers. Console exporters write one JSON object per line to stderr, never into the log
    stream on stdout. ``OTEL_SDK_DISABLED=true``: no tracing and no export at all, but
    ``/metrics`` still serves every bridge metric from a local meter (scraping is not export).
    The SDK mirrors (lean spans, local histograms, the OTLP encoder) run only where
    ``fast_paths()`` says the installed SDK is verified; elsewhere the stock SDK does it all.
    """
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 - SDK only when set up
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415

    from bridge import __version__  # noqa: PLC0415 - the package imports this module

    fast = fast_paths().enabled
    disabled = otel_env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"
    attributes: dict[str, str] = {
        "service.instance.id": instance_id,
        "service.version": __version__,
    }
    if not otel_env.get("OTEL_SERVICE_NAME") and "service.name=" not in otel_env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    ):
        attributes["service.name"] = service_name
    resource = Resource.create(attributes)

    from bridge.telemetry.fastpath.histogram_export import (  # noqa: PLC0415 - imports the SDK
        LocalHistogramExporter,
        LocalHistogramPrometheusReader,
        exemplar_filter_name,
        reports_local_histograms,
    )

    def attach_local(provider: Any) -> None:  # noqa: ANN401 - an SDK MeterProvider
        """Record histograms locally, with the exemplars the provider's own filter would take."""
        if not fast:
            return
        config = getattr(provider, "_sdk_config", None)  # the filter the SDK resolved
        name = exemplar_filter_name(getattr(config, "exemplar_filter", None))
        if name is not None:  # another filter type: the SDK's histograms apply it
            local.attach(provider, exemplars=name)

    # Histograms are kept in-process and added to what each reader collects (one bisect per
    # record instead of the SDK's pipeline per reader, exemplars as the SDK's filter and
    # reservoir take them), unless an exporter wants other than cumulative explicit buckets
    # or the fast paths are off.
    local = LocalHistograms()
    registry = None
    readers: list[MetricReader] = []
    if prometheus:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader  # noqa: PLC0415
        from prometheus_client import CollectorRegistry  # noqa: PLC0415 - optional reader

        registry = CollectorRegistry(auto_describe=True)
        # No otel_scope_name / _version / _schema_url on every series: one meter, one scope,
        # three labels that say nothing and cost a label set each (the exporter's own option).
        readers.append(
            LocalHistogramPrometheusReader(local, registry=registry, scope_info_enabled=False)
            if fast
            else PrometheusMetricReader(registry=registry, scope_info_enabled=False)
        )
        _add_process_metrics(registry)
    if disabled:
        # No spans, no export: the API's no-op tracer. /metrics keeps its meaning (a local
        # meter read only by the scrape); with no health port there is nothing to serve.
        meter_provider: Any = (
            MeterProvider(
                resource=resource,
                metric_readers=readers,
                shutdown_on_exit=False,
                exemplar_filter=_exemplar_filter(otel_env, spans_exported=False),
            )
            if readers
            else metrics.NoOpMeterProvider()
        )
        if getattr(meter_provider, "_disabled", False):
            # The SDK's provider reads OTEL_SDK_DISABLED from the process environment too and
            # would hand out no-op meters: this one exports nothing, it only answers scrapes.
            # Not a fast path, so not behind the gate: without it /metrics loses every bridge
            # metric on any SDK; an SDK without the flag is left as it is.
            meter_provider._disabled = False
        if readers:
            attach_local(meter_provider)
        return TelemetryHandle(trace.NoOpTracerProvider(), meter_provider, registry)

    span_exporters = otel_exporter_names(otel_env, "traces")
    tracer_provider, tracer = _tracing(resource, span_exporters)
    exporters = [_metric_exporter(name) for name in otel_exporter_names(otel_env, "metrics")]
    exemplar_filter = _exemplar_filter(otel_env, spans_exported=bool(span_exporters))
    use_local = fast and all(map(reports_local_histograms, exporters))
    readers.extend(
        PeriodicExportingMetricReader(
            LocalHistogramExporter(exporter, local) if use_local else exporter
        )
        for exporter in exporters
    )
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        shutdown_on_exit=False,
        exemplar_filter=exemplar_filter,
    )
    if use_local:
        attach_local(meter_provider)
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return TelemetryHandle(tracer_provider, meter_provider, registry, tracer)


def _tracing(
    resource: Any,  # noqa: ANN401 - an SDK Resource
    span_exporters: list[str],
) -> tuple[Any, trace.Tracer | None]:
    """Build the SDK's TracerProvider exporting to ``span_exporters``, and its ids-only tracer.

    The tracer is None when spans are exported (TelemetryHandle then makes a LeanTracer).
    """
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415 - SDK only when set up
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased  # noqa: PLC0415

    # With no exporter, recording root spans is pure cost (about 40 us a delivery): record only
    # what the producer's traceparent marks as sampled, so the chain's decision is kept. Trace
    # context still flows: ids for the logs and the traceparent header either way, from a
    # tracer that makes only those (IdsTracer: public API, so whatever the fast-path gate says).
    ids = RandomIdGenerator()
    sampler = ParentBased(ALWAYS_OFF) if not span_exporters else None
    tracer_provider = TracerProvider(
        resource=resource,
        sampler=sampler,
        id_generator=ids,
        shutdown_on_exit=False,  # TelemetryHandle.shutdown does it, with a bound
    )
    tracer = None if sampler is None else IdsTracer(ids, sampler, follows_parent=True)
    for name in span_exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name)))
    return tracer_provider, tracer


def _add_process_metrics(registry: Any) -> None:  # noqa: ANN401 - a prometheus_client registry
    """Serve the standard ``process_*`` metrics (CPU, RSS, open fds, start time) on /metrics.

    prometheus_client's process collector, not OTel's system-metrics instrumentation: it gives
    the exact names every dashboard and alert expects (``process_resident_memory_bytes`` ...),
    reads /proc at scrape time only, and needs no extra dependency (psutil).
    """
    from prometheus_client import ProcessCollector  # noqa: PLC0415 - optional path

    ProcessCollector(registry=registry)


def _exemplar_filter(env: Mapping[str, str], *, spans_exported: bool) -> Any:  # noqa: ANN401 - SDK
    """No exemplars while no span is exported, unless OTEL_METRICS_EXEMPLAR_FILTER asks.

    The SDK's default (trace_based) attaches the current span's ids to histogram points when
    that span is sampled: about 3 us a record, pointing at spans no backend will ever have.
    None lets the SDK read the variable as usual.
    """
    if spans_exported or env.get("OTEL_METRICS_EXEMPLAR_FILTER", "").strip():
        return None
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter  # noqa: PLC0415 - SDK only here

    return AlwaysOffExemplarFilter()
