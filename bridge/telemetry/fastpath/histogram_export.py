"""Readers and exporters that report the local histograms as the SDK's histograms would be.

``bridge.telemetry.fastpath.histograms.LocalHistogram`` keeps bucket counts in this process; each
has a
placeholder observable gauge of its name, so the SDK collects whenever the histogram holds
data and hands over ``MetricsData`` with the resource, the scope and the collection time. The
two classes here replace that gauge with a cumulative ``Histogram`` metric before anything
reads it, so every reader formats the points with its own code:

- ``LocalHistogramExporter`` wraps any ``MetricExporter`` (OTLP, console) of a
  ``PeriodicExportingMetricReader``: the public exporter interface;
- ``LocalHistogramPrometheusReader`` is the Prometheus reader whose ``_receive_metrics`` (the
  hook ``MetricReader`` documents for subclasses) gets the same data, so ``/metrics`` keeps the
  exporter's own names, units, ``otel_scope_*`` labels and ``target_info``.

Each reader gets the exemplars sampled since its own previous collection, as from the SDK's
per-reader reservoirs; ``exemplar_filter_name`` says which SDK filters the local ones mirror.

This module imports the SDK; ``bridge.telemetry.setup`` imports it only when it sets the SDK up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from opentelemetry.exporter.prometheus import PrometheusMetricReader
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    Exemplar,
    ExemplarFilter,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics import Histogram as HistogramInstrument
from opentelemetry.sdk.metrics.export import (
    AggregationTemporality,
    Gauge,
    Histogram,
    HistogramDataPoint,
    Metric,
    MetricExporter,
    MetricExportResult,
    MetricsData,
)
from opentelemetry.sdk.metrics.view import (
    Aggregation,
    DefaultAggregation,
    ExplicitBucketHistogramAggregation,
)

from bridge.telemetry.fastpath.histograms import ExemplarFilterName, LocalHistograms

__all__ = [
    "LocalHistogramExporter",
    "LocalHistogramPrometheusReader",
    "exemplar_filter_name",
    "reports_local_histograms",
    "with_local_histograms",
]


_FILTER_NAMES: dict[type, ExemplarFilterName] = {
    AlwaysOffExemplarFilter: "always_off",
    AlwaysOnExemplarFilter: "always_on",
    TraceBasedExemplarFilter: "trace_based",
}


def exemplar_filter_name(exemplar_filter: ExemplarFilter | None) -> ExemplarFilterName | None:
    """Name the SDK exemplar filter a local histogram mirrors; None for any other type.

    Only the exact SDK classes: a subclass may decide differently, so it keeps SDK histograms.
    """
    return _FILTER_NAMES.get(type(exemplar_filter))


def with_local_histograms(
    data: MetricsData, local: LocalHistograms, reader: object = None
) -> MetricsData:
    """Return ``data`` with each local histogram's placeholder gauge replaced by its points.

    ``reader`` names the collecting reader: its exemplars are those since its previous call.
    """
    return replace(
        data,
        resource_metrics=[
            replace(
                resource,
                scope_metrics=[
                    replace(
                        scope,
                        metrics=[
                            _replace(m, scope.scope.name, local, reader) for m in scope.metrics
                        ],
                    )
                    for scope in resource.scope_metrics
                ],
            )
            for resource in data.resource_metrics
        ],
    )


def _replace(metric: Metric, scope: str, local: LocalHistograms, reader: object) -> Metric:
    """Turn our placeholder gauge into the histogram's metric, timed as the gauge's point.

    The gauge reports a point only once the histogram holds one (cells are never removed).
    """
    histogram = local.get(scope, metric.name)
    if histogram is None or not isinstance(metric.data, Gauge) or not metric.data.data_points:
        return metric
    time_unix_nano = metric.data.data_points[0].time_unix_nano
    points = [
        HistogramDataPoint(
            attributes=point.attributes,
            start_time_unix_nano=point.start_time_unix_nano,
            time_unix_nano=time_unix_nano,
            count=point.count,
            sum=point.sum,
            bucket_counts=point.bucket_counts,
            explicit_bounds=histogram.boundaries,
            min=point.min,
            max=point.max,
            exemplars=[
                Exemplar(
                    sample.filtered_attributes,
                    sample.value,
                    sample.time_unix_nano,
                    sample.span_id,
                    sample.trace_id,
                )
                for sample in point.exemplars
            ],
        )
        for point in histogram.points(reader)
    ]
    return Metric(
        name=metric.name,
        description=metric.description,
        unit=metric.unit,
        data=Histogram(
            data_points=points, aggregation_temporality=AggregationTemporality.CUMULATIVE
        ),
    )


def reports_local_histograms(exporter: MetricExporter) -> bool:
    """Whether ``exporter`` wants what a local histogram gives: cumulative explicit buckets.

    An exporter that prefers delta temporality or another aggregation for histograms
    (OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE=delta, exponential buckets) keeps the
    SDK's histograms. The preferences are the constructor arguments ``MetricExporter`` keeps
    and ``PeriodicExportingMetricReader`` reads.
    """
    temporality: Mapping[type, AggregationTemporality] = (
        getattr(exporter, "_preferred_temporality", None) or {}
    )
    aggregations: Mapping[type, Aggregation] = (
        getattr(exporter, "_preferred_aggregation", None) or {}
    )
    if temporality.get(HistogramInstrument, AggregationTemporality.CUMULATIVE) is not (
        AggregationTemporality.CUMULATIVE
    ):
        return False
    aggregation = aggregations.get(HistogramInstrument)
    return (
        aggregation is None
        or type(aggregation) is DefaultAggregation
        or (
            type(aggregation) is ExplicitBucketHistogramAggregation
            and vars(aggregation) == vars(ExplicitBucketHistogramAggregation())
        )
    )


class LocalHistogramExporter(MetricExporter):
    """A ``MetricExporter`` that adds the local histograms to each export, then hands it on.

    It takes the wrapped exporter's preferred temporality and aggregation, so the periodic
    reader configures every other instrument exactly as for that exporter.
    """

    def __init__(self, exporter: MetricExporter, local: LocalHistograms) -> None:
        super().__init__(
            preferred_temporality=getattr(exporter, "_preferred_temporality", None),
            preferred_aggregation=getattr(exporter, "_preferred_aggregation", None),
        )
        self.exporter = exporter
        self._local = local

    def export(
        self,
        metrics_data: MetricsData,
        timeout_millis: float = 10_000,
        **kwargs: Any,  # noqa: ANN401 - the SDK's signature
    ) -> MetricExportResult:
        """Export ``metrics_data`` with the local histograms in their placeholders' place."""
        return self.exporter.export(
            with_local_histograms(metrics_data, self._local, self), timeout_millis, **kwargs
        )

    def force_flush(self, timeout_millis: float = 10_000) -> bool:
        """Flush the wrapped exporter."""
        return self.exporter.force_flush(timeout_millis)

    def shutdown(self, timeout_millis: float = 30_000, **kwargs: Any) -> None:  # noqa: ANN401
        """Shut the wrapped exporter down."""
        self.exporter.shutdown(timeout_millis, **kwargs)


class LocalHistogramPrometheusReader(PrometheusMetricReader):
    """The OTel Prometheus reader, fed each scrape's data with the local histograms in it."""

    def __init__(self, local: LocalHistograms, **kwargs: Any) -> None:  # noqa: ANN401
        """Read ``local`` into every scrape; ``kwargs`` are PrometheusMetricReader's."""
        self._local = local
        super().__init__(**kwargs)

    def _receive_metrics(
        self,
        metrics_data: MetricsData,
        timeout_millis: float = 10_000,
        **kwargs: Any,  # noqa: ANN401 - the SDK's signature
    ) -> None:
        """Translate ``metrics_data``, local histograms included, as the exporter does."""
        super()._receive_metrics(
            with_local_histograms(metrics_data, self._local, self), timeout_millis, **kwargs
        )
