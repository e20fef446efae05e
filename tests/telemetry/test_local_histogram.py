"""LocalHistogram against the SDK's histogram: the same values give the same output to every reader.

Each differential test runs ``setup_telemetry`` twice with the same records: once as shipped
(local histograms) and once with ``LocalHistograms.attach`` disabled, which keeps the SDK's
histograms (exemplars included). /metrics is parsed with prometheus_client's parser and checked
by promtool; OTLP goes to a real receiver; the console exporter's JSON lines are compared too.
Exemplars are compared under sampled and unsampled spans for the trace_based and always_on
filters, through OTLP and through in-memory readers (one reservoir per reader).
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Final

import pytest
from opentelemetry import metrics as otel_metrics
from opentelemetry import trace
from opentelemetry.sdk.metrics import (
    AlwaysOffExemplarFilter,
    AlwaysOnExemplarFilter,
    ExemplarFilter,
    MeterProvider,
    TraceBasedExemplarFilter,
)
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    MetricsData,
)
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from prometheus_client.parser import text_string_to_metric_families

from bridge.telemetry import setup as telemetry
from bridge.telemetry.fastpath.histogram_export import with_local_histograms
from bridge.telemetry.fastpath.histograms import CARDINALITY_LIMIT, LocalHistogram, LocalHistograms
from bridge.telemetry.metrics import AGE_BUCKETS_S, DURATION_BUCKETS_S, Metrics
from bridge.telemetry.setup import TelemetryHandle, setup_telemetry
from tests.otlp_receiver import OtlpReceiver, attributes_of

DURATION: Final = "signals_posted_duration_seconds"
AGE: Final = "signals_delivery_age_seconds"
SUCCESS: Final = {"result": "success", "producer_id": "p"}
TRANSIENT: Final = {"result": "transient", "producer_id": "p"}

Record = tuple[str, float, dict[str, str] | None]

# Values on boundaries, past the last one, zero, an int, the same attribute set in another
# order, and amounts the SDK drops (negative, NaN, infinite).
FIRST: Final[list[Record]] = [
    ("posted_duration", 0.0008, SUCCESS),
    ("posted_duration", 0.01, SUCCESS),
    ("posted_duration", 0.05, {"producer_id": "p", "result": "success"}),
    ("posted_duration", 0.3, TRANSIENT),
    ("posted_duration", 7.5, TRANSIENT),
    ("posted_duration", 0.0, SUCCESS),
    ("posted_duration", -1.0, SUCCESS),
    ("posted_duration", math.nan, SUCCESS),
    ("posted_duration", math.inf, TRANSIENT),
    ("signal_age", 0.0012, None),
    ("signal_age", 300.0, None),
    ("signal_age", 42, None),
]
# One record per attribute set after a collection: the SDK adds each collection's partial sum
# to the total, so with more records per set the two sums may differ in the last bit.
SECOND: Final[list[Record]] = [
    ("posted_duration", 2.5, SUCCESS),
    ("posted_duration", 0.7, TRANSIENT),
    ("signal_age", 0.25, None),
]


def _record(handle: TelemetryHandle, records: list[Record]) -> None:
    """Record ``records`` into the handle's histograms (by Metrics attribute name)."""
    for attribute, amount, attributes in records:
        getattr(handle.metrics, attribute).record(amount, attributes)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No OTEL_* variable from outside, and no global provider installed by setup_telemetry."""
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    monkeypatch.setattr(trace, "set_tracer_provider", lambda provider: None)
    monkeypatch.setattr(otel_metrics, "set_meter_provider", lambda provider: None)
    return monkeypatch


def _setup(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], *, sdk: bool, prometheus: bool = True
) -> TelemetryHandle:
    """Run setup_telemetry with ``env`` (in os.environ too, where the SDK's exporters read it).

    ``sdk``: keep the SDK's histograms (``LocalHistograms.attach`` does nothing meanwhile).
    """
    monkeypatch.delenv("OTEL_METRICS_EXEMPLAR_FILTER", raising=False)
    for name, value in env.items():
        if name != "OTEL_SDK_DISABLED":  # the SDK's MeterProvider would disable itself
            monkeypatch.setenv(name, value)
    with pytest.MonkeyPatch.context() as patch:
        if sdk:
            patch.setattr(LocalHistograms, "attach", lambda *args, **kwargs: None)
        handle = setup_telemetry(env, instance_id="x", prometheus=prometheus)
    local = isinstance(handle.metrics.posted_duration, LocalHistogram)
    assert local is not sdk
    assert isinstance(handle.metrics.signal_age, LocalHistogram) is local
    return handle


def _families(text: str) -> dict[str, tuple[str, str, str, list[tuple[str, Any, float]]]]:
    """Parse /metrics: every family but the process collector's, samples in exposition order."""
    return {
        family.name: (
            family.type,
            family.documentation,
            family.unit,
            [(s.name, sorted(s.labels.items()), s.value) for s in family.samples],
        )
        for family in text_string_to_metric_families(text)
        if not family.name.startswith(("process_", "python_"))
    }


def _promtool_accepts(text: str) -> bool:
    """Whether `promtool check metrics` accepts ``text`` (skipped when promtool is missing)."""
    path = shutil.which("promtool")
    if path is None:
        if os.environ.get("CI"):
            pytest.fail("promtool not installed")
        pytest.skip("promtool not installed")
    done = subprocess.run(  # noqa: S603 - promtool with fixed arguments
        [path, "check", "metrics"], input=text, capture_output=True, text=True, check=False
    )
    return done.returncode == 0


@pytest.mark.parametrize("disabled", [False, True], ids=["sdk-on", "OTEL_SDK_DISABLED"])
def test_metrics_endpoint_shows_local_histograms_as_the_sdk_histogram(
    clean_env: pytest.MonkeyPatch, disabled: bool
) -> None:
    """/metrics has the same families, HELP, TYPE, le buckets, _sum, _count and labels."""
    env = {"OTEL_SDK_DISABLED": "true"} if disabled else {}
    scrapes: dict[bool, list[str]] = {}
    for sdk in (True, False):
        handle = _setup(clean_env, env, sdk=sdk)
        try:
            _record(handle, FIRST)
            first = handle.prometheus_text().decode()
            _record(handle, SECOND)
            scrapes[sdk] = [first, handle.prometheus_text().decode()]
        finally:
            handle.shutdown()
    for reference, local in zip(scrapes[True], scrapes[False], strict=True):
        assert _families(local) == _families(reference)
        assert _promtool_accepts(local) == _promtool_accepts(reference) is True
    families = _families(scrapes[False][1])
    assert "target_info" in families
    kind, help_text, _, samples = families[DURATION]
    assert (kind, help_text) == ("histogram", "Duration of one POST to the ingest server")
    buckets = [s for s in samples if s[0] == f"{DURATION}_bucket" and ("result", "success") in s[1]]
    assert [dict(labels)["le"] for _, labels, _ in buckets] == [
        *(str(bound) for bound in DURATION_BUCKETS_S),
        "+Inf",
    ]
    assert [value for *_, value in buckets] == [3, 4, 4, 4, 4, 5, 5, 5]
    assert not [name for name in dict(buckets[0][1]) if name.startswith("otel_scope_")]


def _otlp_histograms(receiver: OtlpReceiver) -> list[dict[str, Any]]:
    """Every histogram metric the receiver got, in arrival order, as plain values."""
    found = []
    for received in receiver.metrics():
        if received.metric.WhichOneof("data") != "histogram":
            continue
        data = received.metric.histogram
        found.append(
            {
                "name": received.name,
                "unit": received.metric.unit,
                "description": received.metric.description,
                "resource": received.resource,
                "scope": received.scope,
                "temporality": data.aggregation_temporality,
                "points": sorted(
                    (
                        sorted(attributes_of(p.attributes).items()),
                        p.count,
                        p.sum,
                        list(p.bucket_counts),
                        list(p.explicit_bounds),
                        p.min,
                        p.max,
                        [
                            (
                                sorted(attributes_of(e.filtered_attributes).items()),
                                getattr(e, e.WhichOneof("value") or "as_double"),
                                e.span_id.hex(),
                                e.trace_id.hex(),
                                e.time_unix_nano,
                            )
                            for e in p.exemplars
                        ],
                        p.start_time_unix_nano,
                        p.time_unix_nano,
                    )
                    for p in data.data_points
                ),
            }
        )
    return found


def timeless(export: dict[str, Any]) -> dict[str, Any]:
    """An export from _otlp_histograms without point and exemplar times (checked in order).

    A record's time is read before its point is made (the SDK's too): it may precede the start.
    """
    points = []
    for point in export["points"]:
        *values, exemplars, start, now = point
        assert all(start - 10**9 < e[-1] <= now for e in exemplars)
        points.append((*values, [e[:-1] for e in exemplars]))
    return {**export, "points": points}


def test_otlp_export_of_local_histograms_matches_the_sdk_histogram(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """A real OTLP receiver gets the same cumulative points: bounds, counts, sum, min, max."""
    exports: dict[bool, list[dict[str, Any]]] = {}
    started: dict[bool, int] = {}
    for sdk in (True, False):
        with OtlpReceiver() as receiver:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint, "OTEL_TRACES_EXPORTER": "none"}
            handle = _setup(clean_env, env, sdk=sdk, prometheus=False)
            started[sdk] = time.time_ns()
            _record(handle, FIRST)
            handle.meter_provider.force_flush()
            _record(handle, SECOND)
            handle.shutdown()
            exports[sdk] = _otlp_histograms(receiver)
    assert len(exports[False]) == len(exports[True]) >= 4  # two names, flushed at least twice

    assert [timeless(e) for e in exports[False]] == [timeless(e) for e in exports[True]]
    for sdk, found in exports.items():
        starts = {e["name"]: [p[-2] for p in e["points"]] for e in found}
        for export in found:
            assert export["temporality"] == 2  # AGGREGATION_TEMPORALITY_CUMULATIVE
            for *_, start, now in export["points"]:  # timeless checked exemplar times
                assert started[sdk] <= start <= now
            assert [p[-2] for p in export["points"]] == starts[export["name"]], "start is kept"
    [first_age] = [e for e in exports[False] if e["name"] == AGE][:1]
    [(_, count, total, buckets, bounds, low, high, exemplars, *_)] = first_age["points"]
    assert (count, total, low, high, exemplars) == (3, 342.0012, 0.0012, 300, [])
    assert (buckets, bounds) == ([1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0], list(AGE_BUCKETS_S))
    assert first_age["resource"]["service.instance.id"] == "x"
    assert first_age["scope"] == "signal-bridge"


def test_console_export_of_local_histograms_matches_the_sdk_histogram(
    clean_env: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console exporter's JSON lines hold the same histogram metrics, timestamps aside."""
    lines: dict[bool, list[Any]] = {}
    for sdk in (True, False):
        env = {"OTEL_METRICS_EXPORTER": "console", "OTEL_TRACES_EXPORTER": "none"}
        handle = _setup(clean_env, env, sdk=sdk, prometheus=False)
        _record(handle, FIRST)
        handle.shutdown()
        exported = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
        histograms = []
        for data in exported:
            for resource in data["resource_metrics"]:
                for scope in resource["scope_metrics"]:
                    for metric in scope["metrics"]:
                        if "explicit_bounds" in json.dumps(metric):
                            for point in metric["data"]["data_points"]:
                                assert point.pop("start_time_unix_nano") <= point.pop(
                                    "time_unix_nano"
                                )
                            histograms.append((resource["resource"], scope["scope"], metric))
        lines[sdk] = histograms
    assert lines[False] == lines[True]
    assert {metric["name"] for *_, metric in lines[False]} == {DURATION, AGE}


@pytest.mark.parametrize(
    ("env", "data"),
    [
        ({"OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE": "delta"}, "histogram"),
        (
            {
                "OTEL_EXPORTER_OTLP_METRICS_DEFAULT_HISTOGRAM_AGGREGATION": (
                    "base2_exponential_bucket_histogram"
                )
            },
            "exponential_histogram",
        ),
    ],
    ids=["delta", "exponential"],
)
def test_sdk_histograms_are_kept_when_local_ones_cannot_give_the_same(
    clean_env: pytest.MonkeyPatch, env: dict[str, str], data: str
) -> None:
    """Delta or exponential histograms keep the SDK's own."""
    with OtlpReceiver() as receiver:
        env = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_TRACES_EXPORTER": "none",
        } | env
        for name, value in env.items():
            clean_env.setenv(name, value)
        handle = setup_telemetry(env, instance_id="x", prometheus=True)
        assert not isinstance(handle.metrics.posted_duration, LocalHistogram)
        handle.metrics.posted_duration.record(0.02, SUCCESS)
        text = handle.prometheus_text().decode()
        handle.shutdown()
        [duration, *_] = [m.metric for m in receiver.metrics() if m.name == DURATION]
    assert _families(text)[DURATION][0] == "histogram"
    if data:
        assert duration.WhichOneof("data") == data
    if env.get("OTEL_EXPORTER_OTLP_METRICS_TEMPORALITY_PREFERENCE") == "delta":
        assert duration.histogram.aggregation_temporality == 1  # DELTA


def test_without_a_health_port_or_exporter_records_go_nowhere_quietly(
    clean_env: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """No reader at all (enabled or OTEL_SDK_DISABLED): records raise nothing, nothing is served."""
    for env in ({}, {"OTEL_SDK_DISABLED": "true"}):
        handle = setup_telemetry(env, instance_id="x", prometheus=False)
        _record(handle, SECOND)
        assert handle.prometheus_text() == b""
        handle.shutdown()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


@pytest.fixture
def paired() -> Iterator[tuple[Metrics, Metrics, Callable[[], tuple[MetricsData, MetricsData]]]]:
    """Metrics with local histograms and with the SDK's, each read by an in-memory reader."""
    local = LocalHistograms()
    readers = (InMemoryMetricReader(), InMemoryMetricReader())
    providers = [
        MeterProvider(
            metric_readers=[reader],
            shutdown_on_exit=False,
            exemplar_filter=AlwaysOffExemplarFilter(),
        )
        for reader in readers
    ]
    local.attach(providers[0])

    def collect() -> tuple[MetricsData, MetricsData]:
        first, second = (reader.get_metrics_data() for reader in readers)
        assert first is not None
        assert second is not None
        return with_local_histograms(first, local), second

    try:
        yield Metrics(providers[0]), Metrics(providers[1]), collect
    finally:
        for provider in providers:
            provider.shutdown()


def _points(data: MetricsData, name: str) -> list[tuple[Any, ...]]:
    """The histogram points of ``name``, timestamps left out, in a stable order."""
    return sorted(
        (
            sorted((key, str(value)) for key, value in (point.attributes or {}).items()),
            point.count,
            point.sum,
            tuple(point.bucket_counts),
            tuple(point.explicit_bounds),
            point.min,
            point.max,
            [
                (
                    sorted(
                        (key, str(value)) for key, value in (e.filtered_attributes or {}).items()
                    ),
                    e.filtered_attributes is None,
                    e.value,
                    e.span_id,
                    e.trace_id,
                )
                for e in point.exemplars
            ],
        )
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
        if isinstance(point, HistogramDataPoint)
    )


def test_attribute_sets_past_the_cardinality_limit_share_the_overflow_point(
    paired: tuple[Metrics, Metrics, Callable[[], tuple[MetricsData, MetricsData]]],
) -> None:
    """Past 2000 attribute sets both fold the rest into one otel.metric.overflow point."""
    local, sdk, collect = paired
    for metrics in (local, sdk):
        for index in range(CARDINALITY_LIMIT + 50):
            metrics.posted_duration.record(0.5, {"result": "success", "producer_id": f"{index}"})
        metrics.posted_duration.record(0.25, {"result": "success", "producer_id": "0"})
    ours, theirs = collect()
    assert _points(ours, DURATION) == _points(theirs, DURATION)
    overflow = [p for p in _points(ours, DURATION) if ("otel.metric.overflow", "True") in p[0]]
    assert [p[1] for p in overflow] == [50]


def test_sequence_attributes_and_attribute_order_give_one_point_each(
    paired: tuple[Metrics, Metrics, Callable[[], tuple[MetricsData, MetricsData]]],
) -> None:
    """A list-valued attribute is accepted, and one attribute set in two orders is one point."""
    local, sdk, collect = paired
    for metrics in (local, sdk):
        metrics.signal_age.record(1.5, {"tags": ["a", "b"], "n": 1})
        metrics.signal_age.record(2.5, {"n": 1, "tags": ["a", "b"]})
        metrics.signal_age.record(3, {"n": 2})
    ours, theirs = collect()
    assert _points(ours, AGE) == _points(theirs, AGE)
    assert [p[1] for p in _points(ours, AGE)] == [2, 1]


def test_a_histogram_without_records_is_not_reported(
    paired: tuple[Metrics, Metrics, Callable[[], tuple[MetricsData, MetricsData]]],
) -> None:
    """Until something is recorded neither reader sees the histogram (nor its placeholder)."""
    local, sdk, collect = paired
    for metrics in (local, sdk):
        metrics.acked_total.add(1, {"outcome": "success"})
    ours, theirs = collect()
    names = [
        [m.name for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics]
        for data in (ours, theirs)
    ]
    assert names[0] == names[1] == ["signals_acked_total"]


def test_collections_while_recording_see_whole_records(clean_env: pytest.MonkeyPatch) -> None:
    """A scrape from another thread never sees a record half applied, and none is lost."""
    handle = _setup(clean_env, {}, sdk=False)
    total = 20_000
    done = threading.Event()

    def record() -> None:
        for _ in range(total):
            handle.metrics.signal_age.record(0.5)
        done.set()

    def scrape() -> tuple[float, float, float] | None:
        family = _families(handle.prometheus_text().decode()).get(AGE)
        if family is None:
            return None
        values = {(name, dict(labels).get("le")): value for name, labels, value in family[3]}
        return (
            values[(f"{AGE}_count", None)],
            values[(f"{AGE}_sum", None)],
            values[(f"{AGE}_bucket", "0.5")],
        )

    recorder = threading.Thread(target=record)
    recorder.start()
    seen: list[tuple[float, float, float]] = []
    try:
        finished = False
        while not finished:
            finished = done.is_set()
            point = scrape()
            if point is not None:
                seen.append(point)
    finally:
        recorder.join()
        handle.shutdown()
    assert seen[-1][0] == total
    assert len(seen) > 1
    for count, sum_s, at_most_half in seen:
        assert (sum_s, at_most_half) == (count * 0.5, count)


SAMPLED: Final = NonRecordingSpan(
    SpanContext(0xA1, 0xB1, is_remote=True, trace_flags=TraceFlags(1))
)
UNSAMPLED: Final = NonRecordingSpan(
    SpanContext(0xA2, 0xB2, is_remote=True, trace_flags=TraceFlags(0))
)
# (span to record under: as the current span or passed as ``context``, or none), then records.
UNDER_SPANS: Final[list[tuple[NonRecordingSpan | None, bool, list[Record]]]] = [
    (SAMPLED, False, FIRST[:5]),
    (UNSAMPLED, False, [("posted_duration", 0.02, SUCCESS), ("posted_duration", 0.6, SUCCESS)]),
    (None, False, [("posted_duration", 0.04, SUCCESS), ("signal_age", 0.0011, None)]),
    (SAMPLED, True, [("signal_age", 0.007, None), ("posted_duration", 9.0, TRANSIENT)]),
    (UNSAMPLED, True, [("signal_age", 0.2, None)]),
]


def _record_under_spans(metrics: Metrics, rounds: list[tuple[Any, bool, list[Record]]]) -> None:
    """Record each round under its span: made current, or passed as the record's context."""
    for span, explicit, records in rounds:
        scope: AbstractContextManager[Any] = nullcontext()
        context = None
        if span is not None and explicit:
            context = trace.set_span_in_context(span)
        elif span is not None:
            scope = trace.use_span(span, end_on_exit=False)
        with scope:
            for attribute, amount, attributes in records:
                getattr(metrics, attribute).record(amount, attributes, context=context)


@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on"])
def test_otlp_exemplars_of_local_histograms_match_the_sdk_histogram(
    clean_env: pytest.MonkeyPatch, exemplar_filter: str
) -> None:
    """With spans exported, OTLP points carry the SDK's exemplars: same buckets, ids and values."""
    exports: dict[bool, list[dict[str, Any]]] = {}
    for sdk in (True, False):
        with OtlpReceiver() as receiver:
            env = {
                "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
                "OTEL_TRACES_EXPORTER": "otlp",
                "OTEL_METRICS_EXEMPLAR_FILTER": exemplar_filter,
            }
            if exemplar_filter == "trace_based":  # the SDK's default
                del env["OTEL_METRICS_EXEMPLAR_FILTER"]
            handle = _setup(clean_env, env, sdk=sdk, prometheus=True)
            _record_under_spans(handle.metrics, UNDER_SPANS[:3])
            handle.prometheus_text()  # a scrape empties only the Prometheus reader's exemplars
            handle.meter_provider.force_flush()
            _record_under_spans(handle.metrics, UNDER_SPANS[3:])
            handle.shutdown()
            exports[sdk] = _otlp_histograms(receiver)
    assert len(exports[False]) == len(exports[True]) >= 4

    assert [timeless(e) for e in exports[False]] == [timeless(e) for e in exports[True]]
    first_duration = next(e for e in exports[False] if e["name"] == DURATION)
    exemplars = {tuple(p[0]): p[7] for p in first_duration["points"]}
    sampled = (SAMPLED.get_span_context().span_id.to_bytes(8).hex(), f"{0xA1:032x}")
    success = exemplars[tuple(sorted(SUCCESS.items()))]
    unsampled = (UNSAMPLED.get_span_context().span_id.to_bytes(8).hex(), f"{0xA2:032x}")
    found = [exemplar[:-1] for exemplar in success]
    if exemplar_filter == "trace_based":  # only records under the sampled span; last one wins
        assert found == [([], 0.01, *sampled), ([], 0.05, *sampled)]
    else:  # every record: 0.04 (no span) keeps the ids 0.02 left in its bucket, as the SDK's
        assert found == [([], 0.01, *sampled), ([], 0.04, *unsampled), ([], 0.6, *unsampled)]


@pytest.mark.parametrize("exemplar_filter", ["trace_based", "always_on", "always_off"])
def test_each_reader_gets_the_exemplars_since_its_own_collection(exemplar_filter: str) -> None:
    """Two readers a provider: each point's exemplars equal the SDK's, overflow attributes too."""
    filters: dict[str, Callable[[], ExemplarFilter]] = {
        "trace_based": TraceBasedExemplarFilter,
        "always_on": AlwaysOnExemplarFilter,
        "always_off": AlwaysOffExemplarFilter,
    }
    sdk_filter = filters[exemplar_filter]()
    local = LocalHistograms()
    readers = [(InMemoryMetricReader(), InMemoryMetricReader()) for _ in range(2)]
    providers = [
        MeterProvider(metric_readers=pair, shutdown_on_exit=False, exemplar_filter=sdk_filter)
        for pair in readers
    ]
    local.attach(providers[0], exemplars=exemplar_filter)  # type: ignore[arg-type]
    pair = (Metrics(providers[0]), Metrics(providers[1]))

    def collect(index: int) -> tuple[MetricsData, MetricsData]:
        """Collect reader ``index`` of both providers, the local one named as that reader."""
        ours, theirs = (reader_pair[index].get_metrics_data() for reader_pair in readers)
        assert ours is not None
        assert theirs is not None
        return with_local_histograms(ours, local, readers[0][index]), theirs

    try:
        for metrics in pair:
            _record_under_spans(metrics, UNDER_SPANS[:3])
            with trace.use_span(SAMPLED, end_on_exit=False):
                for index in range(CARDINALITY_LIMIT + 2):
                    metrics.signal_age.record(0.3, {"n": index})
        first = collect(0)
        for metrics in pair:
            _record_under_spans(metrics, UNDER_SPANS[3:])
        again, other = collect(0), collect(1)
    finally:
        for provider in providers:
            provider.shutdown()
    for ours, theirs in (first, again, other):
        for name in (DURATION, AGE):
            assert _points(ours, name) == _points(theirs, name)
    overflow = [p for p in _points(first[0], AGE) if ("otel.metric.overflow", "True") in p[0]]
    if exemplar_filter == "always_off":
        assert all(not p[-1] for name in (DURATION, AGE) for p in _points(other[0], name))
    else:  # the overflow point's exemplar keeps the attributes the point dropped
        assert [e[0] for e in overflow[0][-1]] == [[("n", str(CARDINALITY_LIMIT + 1))]]
        assert [p[-1] for p in _points(again[0], AGE) if p[-1]] == [
            [([], True, 0.007, 0xB1, 0xA1)]
            + ([([], True, 0.2, 0xB2, 0xA2)] if exemplar_filter == "always_on" else [])
        ]


def test_an_exemplar_filter_of_another_type_keeps_the_sdk_histograms(
    clean_env: pytest.MonkeyPatch,
) -> None:
    """A filter that is not exactly one of the SDK's three may decide otherwise: SDK histograms."""

    class OnlyLarge(TraceBasedExemplarFilter):
        """Samples what the trace-based filter does, and only values above one."""

        def should_sample(self, value: float, *args: Any) -> bool:
            """Sample sampled spans' values above one."""
            return value > 1 and super().should_sample(value, *args)

    clean_env.setattr(telemetry, "_exemplar_filter", lambda *args, **kwargs: OnlyLarge())
    handle = setup_telemetry({}, instance_id="x", prometheus=True)
    try:
        assert not isinstance(handle.metrics.posted_duration, LocalHistogram)
        handle.metrics.posted_duration.record(0.02, SUCCESS)
        assert DURATION in _families(handle.prometheus_text().decode())
    finally:
        handle.shutdown()
