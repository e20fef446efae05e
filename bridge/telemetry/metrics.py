"""The bridge's metric instruments, created once per process from one meter.

Counters are plain numbers in this process that the SDK reads when it collects
(``LocalCounter``): a dict update per delivery instead of the SDK's measurement pipeline. Gauges
are observable: values are stored by whoever knows them and read only at collection.
Histograms are plain numbers too (``bridge.telemetry.fastpath.histograms``) on providers whose
readers add them to
what they collect (wired by ``bridge.telemetry.setup``), else the SDK's own.
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.util.types import Attributes

from bridge.telemetry.fastpath.histograms import HistogramSeries, LocalHistogram, LocalHistograms
from bridge.telemetry.tracing import INSTRUMENTATION_NAME

__all__ = [
    "AGE_BUCKETS_S",
    "DURATION_BUCKETS_S",
    "CounterSeries",
    "LocalCounter",
    "Metrics",
    "counter_series",
    "histogram_series",
]

DURATION_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
AGE_BUCKETS_S: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)


_AttributeKey = tuple[tuple[str, str | bool | int | float], ...]


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

    def series(self, attributes: Attributes = None) -> CounterSeries:
        """Return ``add`` bound to ``attributes``: the same totals, without keying each call."""
        key: _AttributeKey = tuple(attributes.items()) if attributes else ()  # type: ignore[arg-type] # as in add()
        return CounterSeries(self._values, self._lock, key)

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """Report every attribute set's total (called by the SDK when a reader collects)."""
        del options
        with self._lock:
            items = list(self._values.items())
        return [Observation(total, dict(key)) for key, total in items]


class CounterSeries:
    """One attribute set of a counter: ``add(amount)`` as ``counter.add(amount, attributes)``.

    A delivery's counters have fixed attribute sets; bound once, a call skips building and
    keying the attribute dict. The total appears at the first add, as with ``add``.
    """

    __slots__ = ("_attributes", "_counter", "_key", "_lock", "_values")

    def __init__(
        self,
        values: dict[_AttributeKey, int | float] | None,
        lock: threading.Lock | None,
        key: _AttributeKey,
        *,
        counter: metrics.Counter | None = None,
        attributes: Attributes = None,
    ) -> None:
        """Add into a LocalCounter's ``values`` under ``lock``, or else through ``counter``."""
        self._values = values
        self._lock = lock
        self._key = key
        self._counter = counter
        self._attributes = attributes

    def add(self, amount: float) -> None:
        """Add ``amount`` (>= 0; a negative one is dropped, as by any counter)."""
        values = self._values
        if values is None:  # not a LocalCounter: the instrument's own add
            self._counter.add(amount, self._attributes)  # type: ignore[union-attr] # set whenever values is None
            return
        if amount < 0:
            return
        key = self._key
        with self._lock:  # type: ignore[union-attr] # set with values
            try:
                values[key] += amount
            except KeyError:
                values[key] = amount


def counter_series(
    counter: LocalCounter | metrics.Counter, attributes: Attributes
) -> CounterSeries:
    """Bind ``counter`` (a LocalCounter or the SDK's) to one attribute set."""
    if isinstance(counter, LocalCounter):
        return counter.series(attributes)
    return CounterSeries(None, None, (), counter=counter, attributes=attributes)


def histogram_series(
    histogram: LocalHistogram | metrics.Histogram, attributes: Attributes = None
) -> HistogramSeries:
    """Bind ``histogram`` (a LocalHistogram or the SDK's) to one attribute set."""
    return (
        histogram.series(attributes)
        if isinstance(histogram, LocalHistogram)
        else (HistogramSeries(histogram, attributes))
    )


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
        self.fenced_total = counter(
            meter,
            "signals_fenced_total",
            unit="1",
            description="POSTs the server refused as made under a stale shard lease, by stream",
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
        self._letters_writable: dict[str, Callable[[], bool]] = {}
        meter.create_observable_gauge(
            "signals_dead_letters_writable",
            [self._letters_writable_callback],
            unit="1",
            description="0 while Redis refuses to write the stream's dead letters, else 1",
        )
        # retention and Redis reachability
        self.trimmed_total = meter.create_counter(
            "signals_trimmed_total",
            unit="1",
            description="Entries XTRIM MINID removed from the source stream (read and acked)",
        )
        self.consumers_removed_total = meter.create_counter(
            "signals_consumers_removed_total",
            unit="1",
            description="Consumers removed from a group: idle past BRIDGE_CONSUMER_EXPIRE_SECONDS, "
            "holding no pending entry",
        )
        self.skipped_total = meter.create_counter(
            "signals_skipped_total",
            unit="1",
            description="Entries already in the stream that a new consumer group created at '$' "
            "skipped (never delivered)",
        )
        self._redis_up: dict[str, int] = {}
        meter.create_observable_gauge(
            "signals_redis_up",
            [self._redis_up_callback],
            unit="1",
            description="1 when the last status poll reached Redis, else 0",
        )
        # the ingest server's clock, from the Date header of every answer.
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

    def observe_dead_letters_writable(self, stream: str, writable: Callable[[], bool]) -> None:
        """Report whether a worker can write its dead letters (signals_dead_letters_writable)."""
        self._letters_writable[stream] = writable

    def _letters_writable_callback(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [
            Observation(1 if writable() else 0, {"stream": stream})
            for stream, writable in self._letters_writable.items()
        ]

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
