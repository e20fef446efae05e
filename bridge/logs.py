"""Structured log lines: one JSON object per line, built once and encoded once by msgspec.

Each line carries ``trace_id``/``span_id`` when a span is active; secrets are never handed to a
logger in the first place. ``configure_logging`` sends the root logger to stdout.
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, Final

import msgspec
from opentelemetry import trace

__all__ = [
    "JsonFormatter",
    "LazyFlushHandler",
    "TextFormatter",
    "configure_logging",
    "log_fields",
    "trace_fields",
]

# Extra attributes a log record may carry (passed with ``extra={"fields": {...}}``).
_FIELDS_ATTR: Final = "fields"


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
