"""Counter and histogram series bound to one attribute set give what ``add`` / ``record`` give.

The delivery path records through series bound once (``counter_series``, ``histogram_series``);
each is checked against the unbound call on a twin instrument: same totals, points, exemplars,
dropped amounts, overflow, and nothing reported before the first record.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

from bridge.telemetry.fastpath.histograms import (
    CARDINALITY_LIMIT,
    ExemplarFilterName,
    HistogramPoint,
    LocalHistogram,
)
from bridge.telemetry.metrics import (
    DURATION_BUCKETS_S,
    LocalCounter,
    Metrics,
    counter_series,
    histogram_series,
)

SAMPLED = NonRecordingSpan(SpanContext(0xA1, 0xB1, False, TraceFlags(TraceFlags.SAMPLED)))
UNSAMPLED = NonRecordingSpan(SpanContext(0xA2, 0xB2, False, TraceFlags(TraceFlags.DEFAULT)))
AMOUNTS = [0.0008, 0.01, 0.05, 0.3, 7.5, 0.0, 42, -1.0, math.nan, math.inf]


def _twins(exemplars: ExemplarFilterName) -> tuple[LocalHistogram, LocalHistogram]:
    """Two empty histograms alike."""
    return tuple(  # type: ignore[return-value]
        LocalHistogram(
            "h", unit="s", description="d", boundaries=DURATION_BUCKETS_S, exemplars=exemplars
        )
        for _ in range(2)
    )


def _timeless(points: list[HistogramPoint]) -> list[tuple[Any, ...]]:
    """Points without their start and exemplar times, in a stable order."""
    return sorted(
        (
            sorted((k, str(v)) for k, v in p.attributes.items()),
            p.count,
            p.sum,
            p.bucket_counts,
            p.min,
            p.max,
            [(e.filtered_attributes, e.value, e.span_id, e.trace_id) for e in p.exemplars],
        )
        for p in points
    )


@pytest.mark.parametrize("exemplars", ["always_off", "trace_based", "always_on"])
@pytest.mark.parametrize(
    "attributes",
    [None, {"result": "success", "producer_id": "p"}, {"tags": ["a", "b"]}],
    ids=["none", "two", "sequence"],
)
def test_histogram_series_gives_the_points_record_gives(
    exemplars: ExemplarFilterName, attributes: dict[str, Any] | None
) -> None:
    """Under no span, a sampled and an unsampled one, a series equals record with the attributes."""
    bound, unbound = _twins(exemplars)
    series = bound.series(attributes)
    assert bound.points() == []
    for span in (None, SAMPLED, UNSAMPLED):
        with trace.use_span(span or trace.INVALID_SPAN, end_on_exit=False):
            for amount in AMOUNTS:
                series.record(amount)
                unbound.record(amount, attributes)
        assert _timeless(bound.points(reader=span)) == _timeless(unbound.points(reader=span))
    assert bound.has_points()


def test_histogram_series_past_the_cardinality_limit_records_into_the_overflow_point() -> None:
    """A series first recorded once the limit is reached lands in the overflow point, as record."""
    bound, unbound = _twins("always_off")
    late = bound.series({"n": "late"})
    for histogram in (bound, unbound):
        for index in range(CARDINALITY_LIMIT):
            histogram.record(0.5, {"n": str(index)})
    late.record(0.25)
    late.record(0.75)
    unbound.record(0.25, {"n": "late"})
    unbound.record(0.75, {"n": "late"})
    assert _timeless(bound.points()) == _timeless(unbound.points())
    assert any("otel.metric.overflow" in p.attributes for p in bound.points())


def test_histogram_series_warns_for_a_dropped_amount(caplog: pytest.LogCaptureFixture) -> None:
    """A negative amount is dropped with record's warning."""
    bound, _ = _twins("always_off")
    with caplog.at_level(logging.WARNING, logger="bridge.histograms"):
        bound.series().record(-2.0)
    assert bound.points() == []
    assert [r.getMessage() for r in caplog.records] == [
        "Histogram h: dropped -2.0 (negative or not finite)"
    ]


@pytest.fixture
def sdk_metrics() -> Iterator[tuple[Metrics, InMemoryMetricReader]]:
    """Metrics on an SDK provider without local histograms: the SDK's own instruments."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader], shutdown_on_exit=False, exemplar_filter=AlwaysOffExemplarFilter()
    )
    try:
        yield Metrics(provider), reader
    finally:
        provider.shutdown()


def _collected(reader: InMemoryMetricReader, name: str) -> list[tuple[Any, ...]]:
    """The points of ``name``: attributes with the value, or the histogram's count and sum."""
    data = reader.get_metrics_data()
    if data is None:  # nothing to report yet
        return []
    return sorted(
        (
            sorted((point.attributes or {}).items()),
            (point.count, point.sum) if isinstance(point, HistogramDataPoint) else point.value,  # type: ignore[union-attr] # counters give NumberDataPoints
        )
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    )


def test_series_of_the_sdks_instruments_call_them_with_the_attributes(
    sdk_metrics: tuple[Metrics, InMemoryMetricReader],
) -> None:
    """Bound to an SDK histogram or counter, a series records there with its attributes."""
    metrics, reader = sdk_metrics
    assert not isinstance(metrics.posted_duration, LocalHistogram)
    histogram_series(metrics.posted_duration, {"result": "success"}).record(0.5)
    histogram_series(metrics.posted_duration, {"result": "success"}).record(0.25)
    counted = counter_series(metrics.dead_lettered_total, {"reason": "expired"})
    counted.add(1)
    counted.add(2)
    assert _collected(reader, "signals_posted_duration_seconds") == [
        ([("result", "success")], (2, 0.75))
    ]
    assert _collected(reader, "signals_dead_lettered_total") == [([("reason", "expired")], 3)]


def test_counter_series_adds_to_the_counters_totals() -> None:
    """Series and add share one total per attribute set, reported from the first add on."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader], shutdown_on_exit=False)
    try:
        metrics = Metrics(provider)
        counter = metrics.acked_total
        assert isinstance(counter, LocalCounter)
        success = counter_series(counter, {"outcome": "success"})
        empty = counter_series(counter, None)
        assert _collected(reader, "signals_acked_total") == []
        success.add(1)
        counter.add(1, {"outcome": "success"})
        success.add(-1)  # dropped, as by add
        success.add(0.5)
        empty.add(2)
        assert _collected(reader, "signals_acked_total") == [
            ([], 2),
            ([("outcome", "success")], 2.5),
        ]
    finally:
        provider.shutdown()
