"""Histograms kept as plain numbers in this process, with the SDK's exemplars.

``LocalHistogram`` has the API ``Histogram.record`` signature and keeps bucket counts, sum, min
and max per attribute set (a bisect and a few increments under a lock). ``LocalHistograms`` holds
those of one SDK MeterProvider; its readers add them to what they collect
(``bridge.telemetry.fastpath.histogram_export``), so every reader reports them as the SDK's
explicit-bucket
histograms, exemplars included under the SDK's three exemplar filters.
"""

from __future__ import annotations

import itertools
import logging
import math
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import INVALID_SPAN, TraceFlags
from opentelemetry.util.types import Attributes

from bridge.telemetry.fastpath.current import span_in

__all__ = [
    "CARDINALITY_LIMIT",
    "EXEMPLAR_FILTERS",
    "ExemplarFilterName",
    "ExemplarSample",
    "HistogramPoint",
    "HistogramSeries",
    "LocalHistogram",
    "LocalHistograms",
]

_Items = tuple[tuple[str, Any], ...]  # a histogram's attribute items (any attribute value)

# The SDK's default cardinality limit (MetricReader): attribute sets past it share one point.
CARDINALITY_LIMIT: Final = 2000
_OVERFLOW_KEY: Final[_Items] = (("otel.metric.overflow", True),)
_OVERFLOW_IDENTITY: Final = frozenset(_OVERFLOW_KEY)
_ALIASES_LIMIT: Final = 4 * CARDINALITY_LIMIT
_INF: Final = math.inf

_SAMPLED: Final = TraceFlags.SAMPLED

ExemplarFilterName = Literal["always_off", "always_on", "trace_based"]
# The SDK's exemplar filters by their OTEL_METRICS_EXEMPLAR_FILTER names: the ones mirrored here.
EXEMPLAR_FILTERS: Final[tuple[ExemplarFilterName, ...]] = ("always_off", "always_on", "trace_based")

_logger = logging.getLogger("bridge.histograms")


def _frozen(value: Any) -> Any:  # noqa: ANN401 - any attribute value
    """Turn a sequence attribute value into a tuple (hashable; exported as the same sequence)."""
    return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class ExemplarSample:
    """One exemplar as the SDK's AlignedHistogramBucketExemplarReservoir would report it."""

    filtered_attributes: dict[str, Any] | None
    value: int | float
    time_unix_nano: int
    span_id: int | None
    trace_id: int | None


@dataclass(frozen=True, slots=True)
class HistogramPoint:
    """One attribute set's cumulative state, as a reader collects it from a LocalHistogram."""

    attributes: dict[str, Any]
    start_time_unix_nano: int
    count: int
    sum: int | float
    bucket_counts: tuple[int, ...]
    min: float
    max: float
    exemplars: tuple[ExemplarSample, ...] = ()


# A bucket's last sampled record: (sequence, value, time, record attributes, (span_id, trace_id),
# sequence of the record those ids came from). An unsampled-span record under always_on keeps
# the ids of the bucket's earlier sample, as the SDK's ExemplarBucket does until it is collected.
_Sample = tuple[int, int | float, int, Attributes, tuple[int, int] | None, int]


class _Cell:
    """The running state of one attribute set (bucket counts, sum, min, max, first record)."""

    __slots__ = ("attributes", "counts", "max", "min", "samples", "start_time_unix_nano", "sum")

    def __init__(self, attributes: dict[str, Any], buckets: int) -> None:
        self.attributes = attributes
        self.start_time_unix_nano = time.time_ns()
        self.counts = [0] * buckets
        self.sum: int | float = 0
        self.min = math.inf
        self.max = -math.inf
        self.samples: list[_Sample | None] | None = None  # per bucket, made at the first sample


class LocalHistogram:
    """An explicit-bucket histogram kept as plain numbers in this process, read when collected.

    ``record`` has the API ``Histogram.record`` signature and costs a dict look-up, a bisect and
    a few increments under a lock (the SDK's measurement pipeline is about 2.7 us a record, per
    reader). ``LocalHistograms`` puts the points into what every reader collects: the same
    cumulative points the SDK's histogram gives (bounds, counts, sum, min, max, start time).
    Like the SDK it drops negative and non-finite amounts, files a value equal to a boundary
    in the bucket that boundary closes, and folds attribute sets beyond the SDK's cardinality
    limit into one ``otel.metric.overflow`` point. Exemplars follow the SDK's filter of that
    name (``exemplars``) and its AlignedHistogramBucketExemplarReservoir: the last sampled
    record of each bucket since the collecting reader's previous collection.
    """

    __slots__ = (
        "_aliases",
        "_bounds",
        "_cells",
        "_collected",
        "_filter",
        "_lock",
        "_sequence",
        "description",
        "name",
        "unit",
    )

    def __init__(
        self,
        name: str,
        *,
        unit: str,
        description: str,
        boundaries: Sequence[float],
        exemplars: ExemplarFilterName = "always_off",
    ) -> None:
        """Keep ``name``'s points with the explicit bucket ``boundaries`` (strictly increasing)."""
        if exemplars not in EXEMPLAR_FILTERS:
            raise ValueError(f"{name}: unknown exemplar filter {exemplars!r}")
        bounds = tuple(float(bound) for bound in boundaries)
        if any(not math.isfinite(b) for b in bounds) or any(
            low >= high for low, high in itertools.pairwise(bounds)
        ):
            raise ValueError(f"{name}: boundaries must be finite and strictly increasing")
        self.name = name
        self.unit = unit
        self.description = description
        self._bounds: Final = bounds
        self._lock: Final = threading.Lock()
        # Attribute items in call order -> cell; _cells holds each attribute set once, so the
        # same set passed in another order lands in the same cell (the SDK ignores order too).
        self._aliases: dict[_Items, _Cell] = {}
        self._cells: dict[frozenset[tuple[str, Any]], _Cell] = {}
        # None: no exemplars; else whether every record is offered (always_on) or sampled spans'.
        self._filter: Final = None if exemplars == "always_off" else exemplars == "always_on"
        self._sequence = 0  # samples taken so far; a reader reports those past its last look
        self._collected: dict[object, int] = {}

    @property
    def boundaries(self) -> tuple[float, ...]:
        """The explicit bucket boundaries (the upper bounds of every bucket but the last)."""
        return self._bounds

    def record(
        self,
        amount: float,
        attributes: Attributes = None,
        context: otel_context.Context | None = None,
    ) -> None:
        """Record ``amount`` (>= 0 and finite, as the SDK requires; others are dropped).

        The exemplar check is the SDK's: the span of ``context`` (or of the current context)
        and, for trace_based, its sampled flag; only a sampled record reads the clock.
        """
        if not 0 <= amount < _INF:  # NaN fails both comparisons
            _logger.warning("Histogram %s: dropped %r (negative or not finite)", self.name, amount)
            return
        sample: tuple[int, Any] | None = None
        always = self._filter
        if always is not None:  # the SDK: get_current_span(context or get_current())
            span: Any = span_in(context or None)
            # A SpanContext is typed as its tuple: [3] is its trace_flags, without a property call.
            if always or (span is not INVALID_SPAN and span.get_span_context()[3] & _SAMPLED):
                sample = (time.time_ns(), span)
        key: _Items = tuple(attributes.items()) if attributes else ()
        with self._lock:
            try:
                cell = self._aliases.get(key)
            except TypeError:  # a sequence value (a list): key it by a tuple of its items
                key = tuple((name, _frozen(value)) for name, value in key)
                cell = self._aliases.get(key)
            if cell is None:
                cell = self._cell(key)
            index = bisect_left(self._bounds, amount)
            cell.counts[index] += 1
            cell.sum += amount
            if amount < cell.min:  # noqa: PLR1730 - cheaper than calling min() per record
                cell.min = amount
            if amount > cell.max:  # noqa: PLR1730 - cheaper than calling max() per record
                cell.max = amount
            if sample is not None:
                self._sample(cell, index, amount, attributes, sample)

    def series(self, attributes: Attributes = None) -> HistogramSeries:
        """Return ``record`` bound to ``attributes``: the same points, without keying each call."""
        return HistogramSeries(self, attributes)

    def _sample(
        self,
        cell: _Cell,
        index: int,
        amount: float,
        attributes: Attributes,
        sample: tuple[int, Any],
    ) -> None:
        """Keep this record as bucket ``index``'s exemplar (the lock is held).

        ``sample`` is the record's time and the span the filter looked at.
        """
        time_unix_nano, span = sample
        samples = cell.samples
        if samples is None:
            samples = cell.samples = [None] * len(cell.counts)
        self._sequence = sequence = self._sequence + 1
        if span is not INVALID_SPAN:
            trace_id, span_id, _, _, _, _ = span.get_span_context()  # typed as its tuple
            ids: tuple[int, int] | None = (span_id, trace_id)
            ids_from = sequence
        else:  # the SDK's bucket keeps the ids it had (cleared only when collected)
            previous = samples[index]
            ids, ids_from = (None, 0) if previous is None else (previous[4], previous[5])
        samples[index] = (sequence, amount, time_unix_nano, attributes, ids, ids_from)

    def _find(self, attributes: Attributes) -> _Cell:
        """Find or make the cell of ``attributes`` (the lock is held)."""
        key: _Items = tuple(attributes.items()) if attributes else ()
        try:
            cell = self._aliases.get(key)
        except TypeError:  # a sequence value (a list): key it by a tuple of its items
            key = tuple((name, _frozen(value)) for name, value in key)
            cell = self._aliases.get(key)
        return self._cell(key) if cell is None else cell

    def _cell(self, key: _Items) -> _Cell:
        """Find or create the cell of an attribute order not seen yet (the lock is held)."""
        identity = frozenset(key)
        cell = self._cells.get(identity)
        if cell is None:
            attributes = key
            if len(self._cells) >= CARDINALITY_LIMIT:  # as the SDK: one overflow point
                identity, attributes = _OVERFLOW_IDENTITY, _OVERFLOW_KEY
                cell = self._cells.get(identity)
            if cell is None:
                cell = _Cell(dict(attributes), len(self._bounds) + 1)
                self._cells[identity] = cell
        if len(self._aliases) < _ALIASES_LIMIT:  # past it, unseen orders take this slow path
            self._aliases[key] = cell
        return cell

    def has_points(self) -> bool:
        """Whether anything was recorded (a collection then reports this histogram)."""
        return bool(self._cells)

    def points(self, reader: object = None) -> list[HistogramPoint]:
        """Every attribute set's cumulative point, copied under the lock (the reader's side).

        Exemplars are those sampled since ``reader``'s previous call: the SDK keeps one
        reservoir per reader and empties it at each of that reader's collections.
        """
        with self._lock:
            since = self._collected.get(reader, 0)
            self._collected[reader] = self._sequence
            return [
                HistogramPoint(
                    dict(cell.attributes),
                    cell.start_time_unix_nano,
                    sum(cell.counts),
                    cell.sum,
                    tuple(cell.counts),
                    cell.min,
                    cell.max,
                    () if cell.samples is None else _exemplars(cell, since),
                )
                for cell in self._cells.values()
            ]


class HistogramSeries:
    """One attribute set of a histogram: ``record(amount)`` as ``record(amount, attributes)``.

    A delivery's histograms have fixed attribute sets: bound once, a record finds its cell
    without building and keying the attribute dict (the cell is found, or made, at the first
    record, as ``record`` would). Exemplars are taken as ``record`` takes them; dropped values
    go through it. Any other histogram (the SDK's) is called with the attributes.
    """

    __slots__ = ("_attributes", "_cell", "_histogram", "_other")

    def __init__(self, histogram: object, attributes: Attributes = None) -> None:
        """Bind ``histogram`` (a LocalHistogram, or any with the API's ``record``)."""
        self._histogram = histogram if type(histogram) is LocalHistogram else None
        self._other: Any = None if self._histogram is not None else histogram
        self._attributes = attributes
        self._cell: _Cell | None = None

    def record(self, amount: float) -> None:
        """Record ``amount`` (see ``LocalHistogram.record``)."""
        histogram = self._histogram
        if histogram is None:
            self._other.record(amount, self._attributes)
            return
        # LocalHistogram.record (current context) for an amount it keeps, minus the key look-up.
        if not 0 <= amount < _INF:  # NaN fails both comparisons
            histogram.record(amount, self._attributes)  # dropped there, with its warning
            return
        sample: tuple[int, Any] | None = None
        always = histogram._filter
        if always is not None:
            span: Any = span_in()
            if always or (span is not INVALID_SPAN and span.get_span_context()[3] & _SAMPLED):
                sample = (time.time_ns(), span)
        with histogram._lock:
            cell = self._cell
            if cell is None:
                cell = self._cell = histogram._find(self._attributes)
            index = bisect_left(histogram._bounds, amount)
            cell.counts[index] += 1
            cell.sum += amount
            if amount < cell.min:  # noqa: PLR1730 - cheaper than calling min() per record
                cell.min = amount
            if amount > cell.max:  # noqa: PLR1730 - cheaper than calling max() per record
                cell.max = amount
            if sample is not None:
                histogram._sample(cell, index, amount, self._attributes, sample)


def _exemplars(cell: _Cell, since: int) -> tuple[ExemplarSample, ...]:
    """Return the cell's samples after sequence ``since``, in bucket order, as the SDK does.

    Exemplar attributes are the record's attributes not in the point's (the SDK's filtered
    attributes): none but on the overflow point, and None for a record without attributes.
    """
    found = []
    for sample in cell.samples or ():
        if sample is None or sample[0] <= since:
            continue
        _, value, time_unix_nano, attributes, ids, ids_from = sample
        span_id, trace_id = ids if ids is not None and ids_from > since else (None, None)
        filtered = (
            {k: v for k, v in attributes.items() if k not in cell.attributes}
            if attributes
            else None
        )
        found.append(ExemplarSample(filtered, value, time_unix_nano, span_id, trace_id))
    return tuple(found)


class LocalHistograms:
    """The local histograms of one SDK MeterProvider, found by its readers when they collect.

    ``setup_telemetry`` attaches one to a provider whose every reader adds these points to what
    it collects (``bridge.telemetry.fastpath.histogram_export``); ``Metrics`` on that provider then
    records into
    ``LocalHistogram`` and elsewhere into the SDK's histograms. Each local histogram also has an
    observable gauge of its name that reports one point while it holds data: the SDK then
    collects (and names the scope, resource and timestamp) exactly when it would for its own
    histogram, and the readers put the histogram in that gauge's place.
    """

    _attached: Final[weakref.WeakKeyDictionary[Any, LocalHistograms]] = weakref.WeakKeyDictionary()

    def __init__(self) -> None:
        """Hold no histogram yet; ``attach`` names the provider and its exemplar filter."""
        self.exemplars: ExemplarFilterName = "always_off"
        self._lock: Final = threading.Lock()
        self._histograms: dict[tuple[str, str], LocalHistogram] = {}

    def attach(
        self, provider: metrics.MeterProvider, exemplars: ExemplarFilterName = "always_off"
    ) -> None:
        """Make ``Metrics(provider)`` record its histograms here.

        Exemplars are taken as the provider's SDK filter, named ``exemplars``, would take them.
        """
        self.exemplars = exemplars
        LocalHistograms._attached[provider] = self

    @staticmethod
    def of(provider: metrics.MeterProvider | None) -> LocalHistograms | None:
        """Return the local histograms attached to ``provider``, if any."""
        return None if provider is None else LocalHistograms._attached.get(provider)

    def histogram(
        self,
        meter: metrics.Meter,
        scope: str,
        name: str,
        *,
        unit: str,
        description: str,
        boundaries: Sequence[float],
    ) -> LocalHistogram:
        """Return the histogram ``name`` of ``meter`` (scope named ``scope``), made once."""
        with self._lock:
            found = self._histograms.get((scope, name))
            if found is not None:  # a meter registers a name once, as for LocalCounter
                return found
            histogram = LocalHistogram(
                name,
                unit=unit,
                description=description,
                boundaries=boundaries,
                exemplars=self.exemplars,
            )
            self._histograms[(scope, name)] = histogram

        def present(options: CallbackOptions) -> Iterable[Observation]:
            """One point while the histogram holds data, none before (as the SDK's)."""
            del options
            return [Observation(0)] if histogram.has_points() else []

        meter.create_observable_gauge(name, [present], unit=unit, description=description)
        return histogram

    def get(self, scope: str, name: str) -> LocalHistogram | None:
        """Return our histogram whose gauge a reader found as ``name`` in scope ``scope``."""
        return self._histograms.get((scope, name))
