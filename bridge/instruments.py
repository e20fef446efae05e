"""The bridge's metric instruments, created once per process from one meter.

Counters are plain numbers in this process that the SDK reads when it collects
(``LocalCounter``): a dict update per delivery instead of the SDK's measurement pipeline. Gauges
are observable: values are stored by whoever knows them and read only at collection.
Histograms are plain numbers too (``LocalHistogram``) on providers whose readers add them to
what they collect (``LocalHistograms``, wired by ``bridge.telemetry``), else the SDK's own; they
keep exemplars as the SDK's explicit-bucket histograms do under its three exemplar filters.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import threading
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.trace import INVALID_SPAN, Span, TraceFlags, set_span_in_context
from opentelemetry.util.types import Attributes

from bridge.tracing import INSTRUMENTATION_NAME

__all__ = [
    "AGE_BUCKETS_S",
    "CARDINALITY_LIMIT",
    "DURATION_BUCKETS_S",
    "EXEMPLAR_FILTERS",
    "ExemplarFilterName",
    "ExemplarSample",
    "HistogramPoint",
    "LocalCounter",
    "LocalHistogram",
    "LocalHistograms",
    "Metrics",
]

DURATION_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
AGE_BUCKETS_S: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)


_AttributeKey = tuple[tuple[str, str | bool | int | float], ...]
_Items = tuple[tuple[str, Any], ...]  # a histogram's attribute items (any attribute value)

# The SDK's default cardinality limit (MetricReader): attribute sets past it share one point.
CARDINALITY_LIMIT: Final = 2000
_OVERFLOW_KEY: Final[_Items] = (("otel.metric.overflow", True),)
_OVERFLOW_IDENTITY: Final = frozenset(_OVERFLOW_KEY)
_ALIASES_LIMIT: Final = 4 * CARDINALITY_LIMIT
_INF: Final = math.inf

# The context key of the current span (the API's get_current_span reads it, then checks the
# type against the Span ABC, which is the slow part: known Span types skip that check here).
_SPAN_KEY: Final = next(iter(set_span_in_context(INVALID_SPAN, otel_context.Context())))
_SPAN_TYPES: Final[set[type]] = set()
_SAMPLED: Final = TraceFlags.SAMPLED
_get_current: Final = otel_context.get_current

ExemplarFilterName = Literal["always_off", "always_on", "trace_based"]
# The SDK's exemplar filters by their OTEL_METRICS_EXEMPLAR_FILTER names: the ones mirrored here.
EXEMPLAR_FILTERS: Final[tuple[ExemplarFilterName, ...]] = ("always_off", "always_on", "trace_based")

_logger = logging.getLogger(__name__)


def _frozen(value: Any) -> Any:  # noqa: ANN401 - any attribute value
    """Turn a sequence attribute value into a tuple (hashable; exported as the same sequence)."""
    return tuple(value) if isinstance(value, list) else value


class LocalCounter:
    """A counter kept as plain numbers in this process, reported when the SDK collects.

    ``add`` has the API ``Counter.add`` signature, costs a dict update instead of the SDK's
    measurement pipeline (about 2.7 us), and the totals reach every reader through an
    observable counter of the same name, unit and description: the same cumulative sums in
    Prometheus and OTLP. Attributes are keyed by their items in call order, so a call site
    passes them in one order (each of ours builds the same literal dict every time).
    """

    __slots__ = ("_lock", "_values")

    # A meter registers an instrument name once (a second create returns the first instrument,
    # with the first callback): counters of one name on one meter share their totals, as the
    # SDK's own Counter objects do.
    _shared: Final[weakref.WeakKeyDictionary[Any, dict[str, LocalCounter]]] = (
        weakref.WeakKeyDictionary()
    )
    _shared_lock: Final = threading.Lock()

    def __init__(self, meter: metrics.Meter, name: str, *, unit: str, description: str) -> None:
        """Create the observable counter ``name`` that reports the totals (shared per meter)."""
        with LocalCounter._shared_lock:
            first = LocalCounter._shared.setdefault(meter, {}).setdefault(name, self)
        self._values: dict[_AttributeKey, int | float] = {}
        self._lock: threading.Lock = threading.Lock()
        if first is not self:
            self._values, self._lock = first._values, first._lock
            return
        meter.create_observable_counter(name, [self._observe], unit=unit, description=description)

    def add(
        self,
        amount: float,
        attributes: Attributes = None,
        context: otel_context.Context | None = None,
    ) -> None:
        """Add ``amount`` (>= 0, as for any counter; a negative one is dropped)."""
        del context  # counters carry no exemplars here
        if amount < 0:
            return
        key: _AttributeKey = tuple(attributes.items()) if attributes else ()  # type: ignore[arg-type] # attribute values are the API's hashable plain types
        with self._lock:
            values = self._values
            values[key] = values.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """Report every attribute set's total (called by the SDK when a reader collects)."""
        del options
        with self._lock:
            items = list(self._values.items())
        return [Observation(total, dict(key)) for key, total in items]


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
            span: Any = (context or _get_current()).get(_SPAN_KEY)
            if span is None or (type(span) not in _SPAN_TYPES and not _is_span(span)):
                span = INVALID_SPAN
            if always or (
                span is not INVALID_SPAN and span.get_span_context().trace_flags & _SAMPLED
            ):
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
            span_context = span.get_span_context()
            ids: tuple[int, int] | None = (span_context.span_id, span_context.trace_id)
            ids_from = sequence
        else:  # the SDK's bucket keeps the ids it had (cleared only when collected)
            previous = samples[index]
            ids, ids_from = (None, 0) if previous is None else (previous[4], previous[5])
        samples[index] = (sequence, amount, time_unix_nano, attributes, ids, ids_from)

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


def _is_span(value: object) -> bool:
    """Whether ``value`` is an API Span (as get_current_span checks); remembers its type."""
    if isinstance(value, Span):
        _SPAN_TYPES.add(type(value))
        return True
    return False


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
    it collects (``bridge.histogram_export``); ``Metrics`` on that provider then records into
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


class Metrics:
    """Every instrument the bridge records, created once from one meter.

    Counters are ``LocalCounter`` (plain numbers, read at collection); the two histograms are
    ``LocalHistogram`` where the provider's readers report them (see ``LocalHistograms``), else
    the SDK's: one record each per delivery.
    """

    def __init__(self, provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=provider)
        self.meter = meter
        # Through the global provider the meter is a proxy whose instruments are re-created on
        # the real meter once one is set, possibly beside another Metrics of that provider:
        # there the SDK's own counters keep one total per name; LocalCounter needs its meter.
        counter: Callable[..., Any] = (
            LocalCounter
            if provider is not None
            else lambda m, name, **kw: m.create_counter(name, **kw)
        )
        self.posted_total = counter(
            meter,
            "signals_posted_total",
            unit="1",
            description="POSTs to the ingest server by result and HTTP code",
        )
        local = LocalHistograms.of(provider)

        def histogram(
            name: str, *, unit: str, description: str, boundaries: Sequence[float]
        ) -> metrics.Histogram | LocalHistogram:
            """Make a local histogram where the readers report them, else the SDK's."""
            if local is not None:
                return local.histogram(
                    meter,
                    INSTRUMENTATION_NAME,
                    name,
                    unit=unit,
                    description=description,
                    boundaries=boundaries,
                )
            return meter.create_histogram(
                name,
                unit=unit,
                description=description,
                explicit_bucket_boundaries_advisory=boundaries,
            )

        self.posted_duration = histogram(
            "signals_posted_duration_seconds",
            unit="s",
            description="Duration of one POST to the ingest server",
            boundaries=DURATION_BUCKETS_S,
        )
        self.dead_lettered_total = counter(
            meter,
            "signals_dead_lettered_total",
            unit="1",
            description="Entries moved to the dead-letter stream, by reason",
        )
        self.retries_total = counter(
            meter,
            "signals_retries_total",
            unit="1",
            description="Delivery attempts that will be retried, by reason",
        )
        self.acked_total = counter(
            meter,
            "signals_acked_total",
            unit="1",
            description="Entries acknowledged in the consumer group, by outcome",
        )
        self.signal_age = histogram(
            "signals_delivery_age_seconds",
            unit="s",
            description="Age of a signal (now - its timestamp) when the server accepted it",
            boundaries=AGE_BUCKETS_S,
        )
        # Group-level gauges: values are read from Redis every few seconds by the group
        # monitor (never per message) and served from here when a reader collects.
        self._groups: dict[tuple[str, str], dict[str, float]] = {}
        self._circuits: dict[str, Callable[[], bool]] = {}
        for name, key, unit, description in (
            ("signals_group_lag", "lag", "1", "Entries in the stream not yet read by the group"),
            ("signals_group_pending", "pending", "1", "Entries read but not yet acknowledged"),
            (
                "signals_oldest_pending_age_seconds",
                "oldest_pending_age_s",
                "s",
                "Age of the oldest pending entry (0 when nothing is pending)",
            ),
            (
                "signals_dead_letter_stream_length",
                "dead_letters",
                "1",
                "Entries in the dead-letter stream",
            ),
            (
                "signals_dead_letter_oldest_age_seconds",
                "dead_letter_oldest_age_s",
                "s",
                "Age of the oldest entry in the dead-letter stream (0 when it is empty)",
            ),
        ):
            meter.create_observable_gauge(
                name, [self._group_callback(key)], unit=unit, description=description
            )
        self._in_flight: dict[str, Callable[[], int]] = {}
        meter.create_observable_gauge(
            "signals_in_flight",
            [self._in_flight_callback],
            unit="1",
            description="Entries held right now (read, not yet acked or dead-lettered)",
        )
        self._lanes: dict[str, Callable[[], Iterable[tuple[str, float]]]] = {}
        meter.create_observable_gauge(
            "signals_lane_blocked_seconds",
            [self._lanes_callback],
            unit="s",
            description="How long an instrument's lane has been blocked by a retried signal",
        )
        meter.create_observable_gauge(
            "signals_circuit_open",
            [self._circuit_callback],
            unit="1",
            description="1 while the circuit breaker is open (reading paused), else 0",
        )
        # issue 12: retention and Redis reachability
        self.trimmed_total = meter.create_counter(
            "signals_trimmed_total",
            unit="1",
            description="Entries XTRIM MINID removed from the source stream (read and acked)",
        )
        self._redis_up: dict[str, int] = {}
        meter.create_observable_gauge(
            "signals_redis_up",
            [self._redis_up_callback],
            unit="1",
            description="1 when the last status poll reached Redis, else 0",
        )
        # issue 14: the ingest server's clock, from the Date header of every answer.
        self._clock_skews: dict[str, Callable[[], float | None]] = {}
        meter.create_observable_gauge(
            "signals_server_clock_skew_seconds",
            [self._clock_skew_callback],
            unit="s",
            description="Ingest server clock minus local clock, from its Date headers (smoothed)",
        )
        self._loops: list[asyncio.AbstractEventLoop] = []
        meter.create_observable_gauge(
            "signals_asyncio_tasks",
            [self._tasks_callback],
            unit="1",
            description="asyncio tasks alive in the replica's event loop (constant when healthy)",
        )

    def observe_group(
        self,
        stream: str,
        group: str,
        *,
        lag: int,
        pending: int,
        oldest_pending_age_s: float,
        dead_letters: int,
        dead_letter_oldest_age_s: float = 0.0,
    ) -> None:
        """Store the latest group status for the gauges."""
        self._groups[(stream, group)] = {
            "lag": lag,
            "pending": pending,
            "oldest_pending_age_s": oldest_pending_age_s,
            "dead_letters": dead_letters,
            "dead_letter_oldest_age_s": dead_letter_oldest_age_s,
        }

    def observe_redis(self, stream: str, *, up: bool) -> None:
        """Record whether the last status poll of ``stream`` reached Redis (signals_redis_up)."""
        self._redis_up[stream] = 1 if up else 0

    def _redis_up_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [Observation(up, {"stream": stream}) for stream, up in self._redis_up.items()]

    def observe_circuit(self, stream: str, is_open: Callable[[], bool]) -> None:
        """Report a worker's breaker state as signals_circuit_open{stream}."""
        self._circuits[stream] = is_open

    def observe_in_flight(self, stream: str, held: Callable[[], int]) -> None:
        """Report a worker's held entries as signals_in_flight{stream} (read when collected)."""
        self._in_flight[stream] = held

    def observe_lanes(
        self, stream: str, blocked: Callable[[], Iterable[tuple[str, float]]]
    ) -> None:
        """Report blocked lanes as signals_lane_blocked_seconds{stream, instrument}."""
        self._lanes[stream] = blocked

    def _lanes_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [
            Observation(seconds, {"stream": stream, "instrument": instrument})
            for stream, blocked in self._lanes.items()
            for instrument, seconds in blocked()
        ]

    def observe_event_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the tasks alive in ``loop`` as signals_asyncio_tasks (a leak shows as growth)."""
        self._loops.append(loop)

    def _tasks_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [Observation(len(asyncio.all_tasks(loop))) for loop in self._loops[-1:]]

    def observe_clock_skew(self, server: str, skew_s: Callable[[], float | None]) -> None:
        """Report a client's smoothed server clock skew as signals_server_clock_skew_seconds."""
        self._clock_skews[server] = skew_s

    def _clock_skew_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        found = ((server, read()) for server, read in self._clock_skews.items())
        return [
            Observation(skew, {server_attributes.SERVER_ADDRESS: server})
            for server, skew in found
            if skew is not None
        ]

    def _in_flight_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [Observation(held(), {"stream": stream}) for stream, held in self._in_flight.items()]

    def _group_callback(self, key: str) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            del options
            return [
                Observation(values[key], {"stream": stream, "group": group})
                for (stream, group), values in self._groups.items()
            ]

        return callback

    def _circuit_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [
            Observation(1 if is_open() else 0, {"stream": stream})
            for stream, is_open in self._circuits.items()
        ]
