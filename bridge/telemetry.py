"""Tracer, meter and instrument names, and the structured log format.

Instruments are created once per process (``Metrics``) through the OpenTelemetry API, so they
are no-ops until an SDK provider is installed (see ``bridge.otel``). Log lines are one JSON
object each, carrying ``trace_id``/``span_id`` when a span is active; secrets are never handed
to a logger in the first place.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from opentelemetry import metrics, trace

__all__ = [
    "AGE_BUCKETS_S",
    "DURATION_BUCKETS_S",
    "JsonFormatter",
    "Metrics",
    "TextFormatter",
    "configure_logging",
    "get_tracer",
    "log_fields",
]

INSTRUMENTATION_NAME: Final = "signal-bridge"
DURATION_BUCKETS_S: Final = (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
AGE_BUCKETS_S: Final = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)

# Extra attributes a log record may carry (passed with ``extra={"fields": {...}}``).
_FIELDS_ATTR: Final = "fields"


def get_tracer(provider: trace.TracerProvider | None = None) -> trace.Tracer:
    """Return the bridge's tracer from ``provider`` or the global one."""
    from bridge import __version__  # noqa: PLC0415 - the package imports this module

    return trace.get_tracer(INSTRUMENTATION_NAME, __version__, tracer_provider=provider)


class Metrics:
    """Every instrument the bridge records, created once from one meter."""

    def __init__(self, provider: metrics.MeterProvider | None = None) -> None:
        meter = metrics.get_meter(INSTRUMENTATION_NAME, meter_provider=provider)
        self.meter = meter
        self.posted_total = meter.create_counter(
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
        self.dead_lettered_total = meter.create_counter(
            "signals_dead_lettered_total",
            unit="1",
            description="Entries moved to the dead-letter stream, by reason",
        )
        self.retries_total = meter.create_counter(
            "signals_retries_total",
            unit="1",
            description="Delivery attempts that will be retried, by reason",
        )
        self.acked_total = meter.create_counter(
            "signals_acked_total",
            unit="1",
            description="Entries acknowledged in the consumer group, by outcome",
        )
        self.in_flight = meter.create_up_down_counter(
            "signals_in_flight",
            unit="1",
            description="Entries being delivered right now",
        )
        self.signal_age = meter.create_histogram(
            "signals_delivery_age_seconds",
            unit="s",
            description="Age of a signal (now - its timestamp) when the server accepted it",
            explicit_bucket_boundaries_advisory=AGE_BUCKETS_S,
        )


def log_fields(**fields: object) -> dict[str, Mapping[str, object]]:
    """Build ``extra=`` for a log call: ``log.info("msg", extra=log_fields(http_code=201))``."""
    return {_FIELDS_ATTR: fields}


_RESERVED: Final = ("timestamp", "level", "message", "logger")


def _record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """Flatten a record into the JSON log line's fields."""
    created = record.created
    seconds = int(created)
    micros = int((created - seconds) * 1_000_000)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
    out: dict[str, Any] = {
        "timestamp": f"{stamp}.{micros:06d}Z",
        "level": record.levelname,
        "message": record.getMessage(),
        "logger": record.name,
    }
    span = trace.get_current_span().get_span_context()
    if span.is_valid:
        out["trace_id"] = format(span.trace_id, "032x")
        out["span_id"] = format(span.span_id, "016x")
    extra = getattr(record, _FIELDS_ATTR, None)
    if isinstance(extra, Mapping):
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


def configure_logging(level: str = "INFO", fmt: str = "json") -> None:
    """Send the root logger to stdout in the chosen format (replacing earlier handlers)."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Library chatter (httpx logs every request at INFO) would drown the bridge's own lines.
    for noisy in ("httpx", "httpcore", "uvicorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
