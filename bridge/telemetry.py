"""Tracer, meter and instrument names, and the structured log format.

Instruments are created once per process (``Metrics``) through the OpenTelemetry API, so they
are no-ops until an SDK provider is installed (``setup_telemetry``). Log lines are one JSON
object each, carrying ``trace_id``/``span_id`` when a span is active; secrets are never handed
to a logger in the first place.

The delivery path pays for telemetry on every signal, so its cost is kept near zero when nothing
looks and small when something does: counters are plain numbers in this process that the SDK
reads when it collects (``LocalCounter``), a tracer whose provider has no span processor makes
no span objects, only the ids a ``traceparent`` and a log line need (``LeanTracer``), and a JSON
log line is one dict encoded once by msgspec.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextvars import Token
from importlib.metadata import entry_points
from types import TracebackType
from typing import Any, Final

import msgspec
from opentelemetry import context as otel_context
from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.semconv.attributes import server_attributes
from opentelemetry.util.types import Attributes

from bridge.config import otel_exporter_names

__all__ = [
    "AGE_BUCKETS_S",
    "DURATION_BUCKETS_S",
    "JsonFormatter",
    "LeanTracer",
    "LocalCounter",
    "Metrics",
    "TelemetryHandle",
    "TextFormatter",
    "configure_logging",
    "get_tracer",
    "log_fields",
    "setup_telemetry",
    "trace_fields",
]

INSTRUMENTATION_NAME: Final = "signal-bridge"
SHUTDOWN_TIMEOUT_S: Final = 5.0
DURATION_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
AGE_BUCKETS_S: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)

# Extra attributes a log record may carry (passed with ``extra={"fields": {...}}``).
_FIELDS_ATTR: Final = "fields"


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """Return the bridge's tracer from ``provider`` or the global one."""
    from bridge import __version__  # noqa: PLC0415 - the package imports this module

    return trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=provider)


_FLAGS: Final = tuple(trace.TraceFlags(bits) for bits in range(4))  # sampled | random-id bits
_SAMPLED_BITS: Final = 0x03


class _CurrentSpan:
    """``start_as_current_span``'s context manager as a plain object (no generator frames).

    Same behaviour as the API's ``use_span(..., end_on_exit=True)``: the span is current inside
    the block; an ``Exception`` leaving it is recorded and sets an ERROR status on a recording
    span; the span ends on exit.
    """

    __slots__ = ("_end", "_record", "_set_status", "_span", "_token")

    def __init__(
        self, span: trace.Span, *, end: bool, record_exception: bool, set_status: bool
    ) -> None:
        """Hold ``span`` until the block is entered."""
        self._span = span
        self._end = end
        self._record = record_exception
        self._set_status = set_status
        self._token: Token[otel_context.Context] | None = None

    def __enter__(self) -> trace.Span:
        """Make the span current and return it."""
        self._token = otel_context.attach(trace.set_span_in_context(self._span))
        return self._span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Restore the previous context, record an escaping exception, end the span."""
        if self._token is not None:
            otel_context.detach(self._token)
        span = self._span
        if isinstance(exc, Exception) and span.is_recording():
            if self._record:
                span.record_exception(exc)
            if self._set_status:
                span.set_status(
                    trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}")
                )
        if self._end:
            span.end()


class LeanTracer(trace.Tracer):
    """A tracer that makes no span objects while its provider has no span processor.

    Without a processor a span is seen only through its ids (the ``traceparent`` header, the
    log line's ``trace_id``/``span_id``), so then only those are made: a ``NonRecordingSpan``
    with the ids and flags the SDK would have given it (a new span id; the parent's trace id,
    or a new one for a root; the sampler's decision; a ParentBased sampler follows the parent
    without being asked). The moment a processor is added, spans are the SDK's again.
    """

    def __init__(self, delegate: trace.Tracer, provider: Any) -> None:  # noqa: ANN401 - SDK
        """Wrap ``delegate`` (a tracer of ``provider``)."""
        from opentelemetry.sdk.trace.sampling import ParentBased  # noqa: PLC0415 - SDK only here

        self._delegate = delegate
        # The SDK's own list of span processors, read on each span so a later
        # add_span_processor() takes effect; no SDK provider: always delegate.
        self._processors = getattr(provider, "_active_span_processor", None)
        self._sampler = getattr(provider, "sampler", None)
        self._ids = getattr(provider, "id_generator", None)
        usable = (
            self._sampler is not None
            and self._ids is not None
            and hasattr(self._processors, "_span_processors")
            and not getattr(provider, "_disabled", False)
        )
        self._usable = usable
        self._parent_based = isinstance(self._sampler, ParentBased)
        self._random_root = bool(usable and self._ids.is_trace_id_random())  # type: ignore[union-attr]

    def _lean(self) -> bool:
        """Say whether no span processor would receive a span now."""
        return self._usable and not self._processors._span_processors  # type: ignore[union-attr]

    def _ids_only(
        self,
        name: str,
        context: otel_context.Context | None,
        kind: trace.SpanKind,
        attributes: Attributes,
        links: Sequence[trace.Link] | None,
    ) -> trace.Span:
        """Make the span the SDK would, reduced to its context: ids, flags and trace state."""
        parent = trace.get_current_span(context).get_span_context()
        span_id = self._ids.generate_span_id()  # type: ignore[union-attr]
        if parent.is_valid and self._parent_based:
            flags = _FLAGS[parent.trace_flags & _SAMPLED_BITS]
            return trace.NonRecordingSpan(
                trace.SpanContext(parent.trace_id, span_id, False, flags, parent.trace_state)
            )
        if parent.is_valid:
            trace_id, random_id = parent.trace_id, parent.trace_flags.random_trace_id
        else:
            trace_id, random_id = self._ids.generate_trace_id(), self._random_root  # type: ignore[union-attr]
        result = self._sampler.should_sample(  # type: ignore[union-attr]
            context, trace_id, name, kind, attributes, links
        )
        bits = (1 if result.decision.is_sampled() else 0) | (2 if random_id else 0)
        return trace.NonRecordingSpan(
            trace.SpanContext(trace_id, span_id, False, _FLAGS[bits], result.trace_state)
        )

    def start_span(  # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace.Span:
        """Start a span (see the class docstring for when it is only ids)."""
        if self._lean():
            return self._ids_only(name, context, kind, attributes, links)
        return self._delegate.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )

    # The API types this as its generator-based context manager; ours is a plain one, used alike.
    def start_as_current_span(  # type: ignore[override] # noqa: PLR0917 - the API's signature
        self,
        name: str,
        context: otel_context.Context | None = None,
        kind: trace.SpanKind = trace.SpanKind.INTERNAL,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
        end_on_exit: bool = True,
    ) -> _CurrentSpan:
        """Start a span and make it current for a ``with`` block."""
        span = self.start_span(
            name,
            context,
            kind,
            attributes,
            links,
            start_time,
            record_exception,
            set_status_on_exception,
        )
        return _CurrentSpan(
            span,
            end=end_on_exit,
            record_exception=record_exception,
            set_status=set_status_on_exception,
        )


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
        key: _AttributeKey = tuple(attributes.items()) if attributes else ()  # type: ignore[arg-type]
        with self._lock:
            values = self._values
            values[key] = values.get(key, 0) + amount

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        """Report every attribute set's total (called by the SDK when a reader collects)."""
        del options
        with self._lock:
            items = list(self._values.items())
        return [Observation(total, dict(key)) for key, total in items]


class Metrics:
    """Every instrument the bridge records, created once from one meter.

    Counters are ``LocalCounter`` (plain numbers, read at collection); the two histograms are
    the SDK's, one record each per delivery.
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
        self.posted_duration = meter.create_histogram(
            "signals_posted_duration_seconds",
            unit="s",
            description="Duration of one POST to the ingest server",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS_S,
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
        self.signal_age = meter.create_histogram(
            "signals_delivery_age_seconds",
            unit="s",
            description="Age of a signal (now - its timestamp) when the server accepted it",
            explicit_bucket_boundaries_advisory=AGE_BUCKETS_S,
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


def trace_fields(span: trace.Span) -> dict[str, str]:
    """Return ``trace_id`` and ``span_id`` of ``span`` for a log line (empty when invalid)."""
    context = span.get_span_context()
    if not context.is_valid:
        return {}
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
    }


def log_fields(**fields: object) -> dict[str, Mapping[str, object]]:
    """Build ``extra=`` for a log call: ``log.info("msg", extra=log_fields(http_code=201))``."""
    return {_FIELDS_ATTR: fields}


_RESERVED: Final = frozenset(("timestamp", "level", "message", "logger"))


@functools.lru_cache(maxsize=4)
def _utc_second(seconds: int) -> str:
    """Format a whole second once: many log lines share it."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def _record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """Flatten a record into the JSON log line's fields (one dict, built once per line)."""
    created = record.created
    seconds = int(created)
    out: dict[str, Any] = {
        "timestamp": f"{_utc_second(seconds)}.{int((created - seconds) * 1_000_000):06d}Z",
        "level": record.levelname,
        "message": record.getMessage(),
        "logger": record.name,
    }
    extra = getattr(record, _FIELDS_ATTR, None)
    if extra is not None and type(extra) is not dict:
        extra = dict(extra) if isinstance(extra, Mapping) else None
    if extra is None or "trace_id" not in extra:
        context = trace.get_current_span().get_span_context()
        if context.is_valid:
            out["trace_id"] = format(context.trace_id, "032x")
            out["span_id"] = format(context.span_id, "016x")
    if extra:
        if _RESERVED.isdisjoint(extra):
            out.update(extra)
        else:
            for key, value in extra.items():
                out[f"field_{key}" if key in _RESERVED else key] = value
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out.setdefault("error_type", type(exc).__name__)
        out.setdefault("error", str(exc))
    return out


_LOG_ENCODER: Final = msgspec.json.Encoder()


def _log_default(obj: Any) -> Any:  # noqa: ANN401 - msgspec's hook contract takes and returns Any
    """Render anything msgspec cannot encode natively as its str()."""
    return str(obj)


_LOG_ENCODER_LENIENT: Final = msgspec.json.Encoder(enc_hook=_log_default)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: timestamp, level, message, logger, trace ids, fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Encode the record; tracebacks are left out (error and error_type say what failed)."""
        data = _record_dict(record)
        try:
            return _LOG_ENCODER.encode(data).decode()
        except TypeError:
            return _LOG_ENCODER_LENIENT.encode(data).decode()


class TextFormatter(logging.Formatter):
    """Human-readable lines for a terminal: time, level, logger, message, key=value fields."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record as one line."""
        data = _record_dict(record)
        head = f"{data.pop('timestamp')} {data.pop('level'):<7} {data.pop('logger')}: "
        message = data.pop("message")
        tail = " ".join(f"{k}={v}" for k, v in data.items())
        return f"{head}{message} {tail}".rstrip()


class LazyFlushHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that flushes at once for WARNING and above, else at most every 200 ms.

    At thousands of deliveries a second, a flush (a write system call) per INFO line costs more
    than the rest of the logging; the buffer is flushed on the next line after 200 ms and at exit
    (``logging.shutdown``), so nothing is lost on a normal stop.
    """

    flush_interval_s: Final = 0.2

    def __init__(self, stream: Any = None) -> None:  # noqa: ANN401 - any text stream
        super().__init__(stream)
        self._last_flush = 0.0

    def emit(self, record: logging.LogRecord) -> None:
        """Write the record; flush when it matters or when the interval has passed."""
        try:
            self.stream.write(self.format(record) + self.terminator)
            now = time.monotonic()
            if record.levelno >= logging.WARNING or now - self._last_flush > self.flush_interval_s:
                self._last_flush = now
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send the root logger to stdout in the chosen format (replacing earlier handlers)."""
    handler = LazyFlushHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The log lines use none of these: skip collecting them (logging HOWTO, "Optimization").
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging._srcfile = None  # the documented switch that skips finding the caller
    # Library chatter (httpx logs every request at INFO) would drown the bridge's own lines.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


# --- SDK set-up ------------------------------------------------------------------------------


def _console_line(item: Any) -> str:  # noqa: ANN401 - a ReadableSpan or MetricsData
    """One JSON object per line, like the logs (the SDK's default is indented, many lines)."""
    return str(item.to_json(indent=None)) + "\n"


def _span_exporter(name: str) -> Any:  # noqa: ANN401 - any SDK SpanExporter
    """Build the SDK's exporter registered as ``name`` (``console``: one line each, on stderr)."""
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter  # noqa: PLC0415

        return ConsoleSpanExporter(out=sys.stderr, formatter=_console_line)
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
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.registry = registry
        self.metrics = Metrics(meter_provider)
        self.tracer: trace.Tracer = LeanTracer(get_tracer(tracer_provider), tracer_provider)

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
            logging.getLogger(__name__).warning(
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
    OTEL_TRACES_EXPORTER / OTEL_METRICS_EXPORTER give (checked at load by bridge.config); OTLP
    without an endpoint exports nothing; trace ids still flow into logs and ``traceparent``
    headers. Console exporters write one JSON object per line to stderr, never into the log
    stream on stdout. ``OTEL_SDK_DISABLED=true``: no tracing and no export at all, but
    ``/metrics`` still serves every bridge metric from a local meter (scraping is not export).
    """
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415 - SDK only when set up
    from opentelemetry.sdk.metrics.export import (  # noqa: PLC0415
        MetricReader,
        PeriodicExportingMetricReader,
    )
    from opentelemetry.sdk.resources import Resource  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.export import BatchSpanProcessor  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased  # noqa: PLC0415

    from bridge import __version__  # noqa: PLC0415 - the package imports this module

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

    registry = None
    readers: list[MetricReader] = []
    if prometheus:
        from opentelemetry.exporter.prometheus import (  # noqa: PLC0415 - optional reader
            PrometheusMetricReader,
        )
        from prometheus_client import CollectorRegistry  # noqa: PLC0415

        registry = CollectorRegistry(auto_describe=True)
        readers.append(PrometheusMetricReader(registry=registry))
        _add_process_metrics(registry)
    if disabled:
        # No spans, no export: the API's no-op tracer. /metrics keeps its meaning (a local
        # meter read only by the scrape); with no health port there is nothing to serve.
        meter_provider: Any = (
            MeterProvider(resource=resource, metric_readers=readers, shutdown_on_exit=False)
            if readers
            else metrics.NoOpMeterProvider()
        )
        return TelemetryHandle(trace.NoOpTracerProvider(), meter_provider, registry)

    span_exporters = otel_exporter_names(otel_env, "traces")
    # With no exporter, recording root spans is pure cost (about 40 us a delivery): record only
    # what the producer's traceparent marks as sampled, so the chain's decision is kept. Trace
    # context still flows: ids for the logs and the traceparent header either way.
    tracer_provider = TracerProvider(
        resource=resource,
        sampler=ParentBased(ALWAYS_OFF) if not span_exporters else None,
        shutdown_on_exit=False,  # TelemetryHandle.shutdown does it, with a bound
    )
    for name in span_exporters:
        tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name)))
    readers.extend(
        PeriodicExportingMetricReader(_metric_exporter(name))
        for name in otel_exporter_names(otel_env, "metrics")
    )
    meter_provider = MeterProvider(
        resource=resource,
        metric_readers=readers,
        shutdown_on_exit=False,
        exemplar_filter=_exemplar_filter(otel_env, spans_exported=bool(span_exporters)),
    )
    trace.set_tracer_provider(tracer_provider)
    metrics.set_meter_provider(meter_provider)
    return TelemetryHandle(tracer_provider, meter_provider, registry)


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
