"""Structured log lines: one JSON object per line, built once and encoded once by msgspec.

Each line carries ``trace_id``/``span_id`` when a span is active; secrets are never handed to a
logger in the first place. Every text field (and the message) is cut to 2 KiB with its original
size noted (:mod:`bridge.telemetry.bounds`), so a hostile input never makes a huge line.
``configure_logging`` sends the root logger to stdout through a ``LazyFlushHandler`` (lines
gathered as bytes, written in large chunks, WARNING+ at once). The
per-delivery INFO line goes through ``log_info``, which skips the LogRecord and the formatter when
logging is as shipped and writes the same bytes straight into that handler's buffer.
"""

from __future__ import annotations

import codecs
import contextlib
import logging
import sys
import threading
import time
from collections.abc import Mapping
from typing import Any, Final, TextIO

import msgspec
from opentelemetry import trace

from bridge.core.secrets import redact_text
from bridge.core.timestamps import format_epoch_truncated
from bridge.telemetry.bounds import MAX_FIELD_BYTES, bounded, bounded_fields
from bridge.telemetry.fastpath.current import span_in

__all__ = [
    "JsonFormatter",
    "LazyFlushHandler",
    "TextFormatter",
    "configure_logging",
    "log_fields",
    "log_info",
    "resolve_log_format",
    "trace_fields",
]

# Extra attributes a log record may carry (passed with ``extra={"fields": {...}}``).
_FIELDS_ATTR: Final = "fields"


def trace_fields(span: trace.Span) -> dict[str, str]:
    """Return ``trace_id`` and ``span_id`` of ``span`` for a log line (empty when invalid)."""
    out: dict[str, str] = {}
    _add_trace_ids(out, span.get_span_context())
    return out


def _add_trace_ids(line: dict[str, Any], context: trace.SpanContext) -> None:
    """Add a valid span context's ``trace_id`` and ``span_id`` to a log line, in hex."""
    trace_id, span_id, _, _, _, valid = context  # typed as its tuple: no property calls
    if valid:
        line["trace_id"] = f"{trace_id:032x}"
        line["span_id"] = f"{span_id:016x}"


def log_fields(**fields: object) -> dict[str, Mapping[str, object]]:
    """Build ``extra=`` for a log call: ``log.info("msg", extra=log_fields(http_code=201))``."""
    return {_FIELDS_ATTR: fields}


_RESERVED: Final = frozenset(("timestamp", "level", "message", "logger"))


class _Second:
    """The last whole second a line was stamped in and its text, swapped as one tuple."""

    last: tuple[int, str] = (0, format_epoch_truncated(0.0)[:-8] + ".%06dZ")


def _line_time(at: float) -> str:
    """Return ``format_epoch_truncated(at)``, the second's text made once per second.

    A log line's timestamp (UTC, microseconds truncated as logging always did); ``%d`` of the
    float truncates it as ``int()`` does, so the text is the same, at half the cost a line.
    """
    seconds = int(at)
    second, text = _Second.last
    if seconds != second:
        text = format_epoch_truncated(float(seconds))[:-8] + ".%06dZ"
        _Second.last = (seconds, text)
    return text % ((at - seconds) * 1_000_000)


def _record_dict(record: logging.LogRecord) -> dict[str, Any]:
    """Flatten a record into the JSON log line's fields (one dict, built once per line)."""
    out: dict[str, Any] = {
        "timestamp": _line_time(record.created),
        "level": record.levelname,
        "message": record.getMessage(),
        "logger": record.name,
    }
    if not str(record.name).startswith("bridge"):  # a library may log a URL with credentials
        out["message"] = redact_text(out["message"])
    out["message"] = bounded(out["message"])  # after redaction: a cut must not hide a password
    extra = getattr(record, _FIELDS_ATTR, None)
    if extra is not None and type(extra) is not dict:
        extra = dict(extra) if isinstance(extra, Mapping) else None
    if extra:
        extra = bounded_fields(extra) or extra
    if extra is None or "trace_id" not in extra:
        _add_trace_ids(out, span_in().get_span_context())
    if extra:
        if _RESERVED.isdisjoint(extra):
            out.update(extra)
        else:
            for key, value in extra.items():
                out[f"field_{key}" if key in _RESERVED else key] = value
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        out.setdefault("error_type", type(exc).__name__)
        out.setdefault("error", bounded(str(exc)))
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


class LazyFlushHandler(logging.StreamHandler):  # type: ignore[type-arg] # generic only in typeshed
    """A stream handler that writes WARNING and above at once, INFO lines in large chunks.

    At thousands of deliveries a second, a write system call per INFO line costs more than the
    rest of the logging. Lines are gathered as UTF-8 bytes in one buffer, in the order they were
    logged, and written when 64 KiB have gathered, when a WARNING or worse arrives (after the
    lines before it), 200 ms after the first line waiting (a daemon thread), on ``flush()`` and at
    exit (``logging.shutdown``). On a terminal (line-buffered stream) every line goes at once.
    A closed reader (EPIPE) stops the writing for good; any other write error (a full disk)
    drops that chunk; neither ever reaches the caller, so the delivery loop never stalls on it.
    """

    flush_interval_s: Final = 0.2
    chunk_bytes: Final = 1 << 16

    def __init__(self, stream: Any = None) -> None:  # noqa: ANN401 - any text stream
        """Write to ``stream`` (sys.stderr by default, as StreamHandler does)."""
        super().__init__(stream)
        self._pending = bytearray()
        self._armed = False  # the flusher thread has been woken for the lines pending
        self._closed = False
        self._broken = False  # the reader went away (EPIPE): nothing more is written
        self._reported: set[str] = set()  # kinds of lost writes already told on stderr
        self._wake = threading.Event()
        self._flusher: threading.Thread | None = None
        self._bind(self.stream)

    def _bind(self, stream: Any) -> None:  # noqa: ANN401 - any text stream
        """Work out how bytes reach ``stream`` and whether log_info may write JSON straight in."""
        binary = getattr(stream, "buffer", None)
        self._binary: Any = binary if hasattr(binary, "write") else None
        encoding = getattr(stream, "encoding", None) or "utf-8"
        # Bytes for a binary layer as the text layer would encode them; for a text-only stream
        # (StringIO) a lossless round trip through UTF-8.
        self._encoding: str = encoding if self._binary is not None else "utf-8"
        self._errors: str = (
            getattr(stream, "errors", None) or "strict"
            if self._binary is not None
            else "surrogatepass"
        )
        self._immediate = bool(getattr(stream, "line_buffering", False))
        try:
            utf8 = codecs.lookup(encoding).name == "utf-8"
        except LookupError:
            utf8 = False
        # log_info encodes UTF-8 itself: only for a byte stream that would get the same bytes.
        self.fast = self._binary is not None and utf8

    def setStream(self, stream: Any) -> Any:  # noqa: ANN401 - StreamHandler's signature
        """Write what is pending to the old stream, then switch (StreamHandler's contract)."""
        with self.lock:  # type: ignore[union-attr] # StreamHandler's lock is typed optional; set in __init__
            old = super().setStream(stream)
            if old is not None:
                self._bind(stream)
            return old

    def emit(self, record: logging.LogRecord) -> None:
        """Queue the record's line behind those pending; write now for WARNING and above."""
        try:
            line = (self.format(record) + self.terminator).encode(self._encoding, self._errors)
            # Handler.handle holds self.lock around emit.
            self._pending += line
            self._queued(urgent=record.levelno >= logging.WARNING)
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def append_json(self, data: dict[str, Any], limit: int | None = None) -> bool | None:
        """Encode ``data`` as one JSON line at the end of the pending bytes (log_info's path).

        Return False, adding nothing, when msgspec cannot encode it (the caller logs it the
        ordinary way instead), and None, adding nothing, when it is longer than ``limit`` bytes.
        """
        with self.lock:  # type: ignore[union-attr] # StreamHandler's lock is typed optional; set in __init__
            pending = self._pending
            start = len(pending)
            try:
                _LOG_ENCODER.encode_into(data, pending, start)
            except (TypeError, ValueError):
                del pending[start:]
                return False
            end = len(pending)
            if limit is not None and end - start > limit:
                del pending[start:]
                return None
            pending += b"\n"
            # _queued(urgent=False) has nothing to do while the flusher is already woken and
            # the buffer is short of a chunk: the usual case, decided here without the call.
            if not self._armed or self._immediate or self._closed or end >= self.chunk_bytes - 1:
                self._queued(urgent=False)
        return True

    def _queued(self, *, urgent: bool) -> None:
        """Decide, under the lock, whether the pending lines are written now or soon."""
        if (
            urgent
            or self._immediate
            or self._closed  # logged after logging.shutdown: no thread to wait for
            or len(self._pending) >= self.chunk_bytes
        ):
            self._write_pending()
        elif not self._armed:
            if self._start_flusher():
                self._armed = True
                self._wake.set()
            else:
                self._write_pending()

    def _start_flusher(self) -> bool:
        """Start the thread that writes lines left waiting (once, and again after a fork).

        Return False when no thread can be started (interpreter shutting down).
        """
        if self._flusher is not None and self._flusher.is_alive():
            return True
        self._wake = threading.Event()
        self._flusher = threading.Thread(target=self._flush_later, name="log-flusher", daemon=True)
        try:
            self._flusher.start()
        except RuntimeError:
            return False
        return True

    def _flush_later(self) -> None:
        """Thread body: after lines start waiting, wait flush_interval_s, then write them."""
        wake = self._wake
        while True:
            wake.wait()
            if self._closed:  # close() wrote what was pending; a line that raced it goes now
                with self.lock:  # type: ignore[union-attr] # StreamHandler's lock is typed optional
                    self._write_pending()
                return
            time.sleep(self.flush_interval_s)
            with self.lock:  # type: ignore[union-attr] # StreamHandler's lock is typed optional; set in __init__
                wake.clear()
                try:
                    self._write_pending()
                except Exception:  # a stream's odd error must not kill the thread
                    self._report("error", "could not write log lines; they are dropped")

    def _write_pending(self) -> None:
        """Write the pending bytes in one call (under the lock); errors never leave here."""
        self._armed = False
        if not self._pending:
            return
        chunk, self._pending = self._pending, bytearray()
        if self._broken:
            return
        stream = self.stream
        try:
            if self._binary is not None:
                stream.flush()  # text others wrote to the stream first, in order
                _write_all(self._binary, chunk)
            else:
                stream.write(chunk.decode(self._encoding, self._errors))
                stream.flush()
        except _StreamFullError as full:
            # A full non-blocking stream: the line it took part of is finished next time, so
            # the stream never holds half a line; the whole lines after it are lost.
            self._pending[:0] = full.rest_of_line
            self._report("full", "stdout is full (non-blocking): log lines are dropped")
        except BrokenPipeError:
            self._broken = True  # the reader is gone; later lines are dropped too
            self._report("epipe", "stdout was closed (EPIPE): log lines are dropped from now on")
        except (OSError, ValueError) as exc:
            # A full disk or a closed file: this chunk is lost, the next one is tried.
            self._report("error", f"could not write log lines ({exc}); those lines are dropped")

    def _report(self, kind: str, problem: str) -> None:
        """Say once per kind of loss on stderr that lines were lost (stderr may be gone too)."""
        if kind in self._reported:
            return
        self._reported.add(kind)
        with contextlib.suppress(Exception):
            sys.stderr.write(f"signal-bridge: {problem}\n")
            sys.stderr.flush()

    def flush(self) -> None:
        """Write every pending line now, then flush the stream."""
        with self.lock:  # type: ignore[union-attr] # StreamHandler's lock is typed optional; set in __init__
            self._write_pending()
            if not self._broken and self.stream is not None and hasattr(self.stream, "flush"):
                with contextlib.suppress(OSError, ValueError):
                    self.stream.flush()

    def close(self) -> None:
        """Write what is pending, stop the flusher thread and close (logging.shutdown calls it).

        Marked closed under the lock first: a line logged after that is written at once.
        """
        with self.lock:  # type: ignore[union-attr] # StreamHandler's lock is typed optional
            self._closed = True
        self.flush()
        self._wake.set()
        super().close()


class _StreamFullError(BlockingIOError):
    """A non-blocking stream took part of a chunk; ``rest_of_line`` ends the line it began."""

    def __init__(self, rest_of_line: bytes) -> None:
        super().__init__("stream full")
        self.rest_of_line = rest_of_line


def _write_all(binary: Any, chunk: bytearray) -> None:  # noqa: ANN401 - any binary stream
    """Write all of ``chunk``: a raw stream (PYTHONUNBUFFERED=1, ``-u``) may take only part.

    A non-blocking stream that is full is never waited for: _StreamFullError carries what
    finishes the line already begun on it (nothing when the chunk's first write found it full).
    """
    view = memoryview(chunk)
    while view:
        written = binary.write(view)
        if written is None:
            began = len(view) != len(chunk) and chunk[len(chunk) - len(view) - 1] != 0x0A
            end = bytes(view).find(b"\n") + 1 if began else 0
            raise _StreamFullError(bytes(view[:end]))
        view = view[written:]
    binary.flush()


def log_info(logger: logging.Logger, message: str, fields: dict[str, Any]) -> None:
    """Log ``message`` at INFO with ``fields``, as ``logger.info(msg, extra=log_fields(...))`` does.

    The line is built and encoded once, straight into the handler's buffer, when logging is set
    up as shipped: ``configure_logging(..., "json")`` on a UTF-8 stdout and nothing else on
    the logger's way to the root: no other handler (pytest's caplog), no filter, INFO enabled.
    Otherwise, and for fields the fast path cannot encode, it is exactly ``logger.info``.
    """
    handler = _fast_handler(logger)
    if handler is not None and _RESERVED.isdisjoint(fields) and "trace_id" not in fields:
        trace_id, span_id, _, _, _, valid = span_in().get_span_context()  # typed as its tuple
        stamp = _line_time(time.time())
        level = logging.getLevelName(logging.INFO)
        # One dict literal per line (the trace ids between the head and the fields, as
        # _record_dict orders them): no helper calls, no second dict merged in.
        data: dict[str, Any] = (
            {
                "timestamp": stamp,
                "level": level,
                "message": message,
                "logger": logger.name,
                "trace_id": f"{trace_id:032x}",
                "span_id": f"{span_id:016x}",
                **fields,
            }
            if valid
            else {
                "timestamp": stamp,
                "level": level,
                "message": message,
                "logger": logger.name,
                **fields,
            }
        )
        # A line of at most MAX_FIELD_BYTES holds no value that bounded() would cut (JSON takes
        # at least a value's UTF-8 bytes), so the fields are looked at only for a longer line.
        appended = handler.append_json(data, MAX_FIELD_BYTES)
        if appended is None:
            cut = bounded_fields(fields)
            if cut is not None:
                data.update(cut)  # the same keys: only the long values change, order kept
            appended = handler.append_json(data)
        if appended:
            return
    logger.info(message, extra={_FIELDS_ATTR: bounded_fields(fields) or fields})


def _fast_handler(logger: logging.Logger) -> LazyFlushHandler | None:
    """Return the root's only handler if an INFO record of ``logger`` reaches just it, as JSON."""
    if not logger.isEnabledFor(logging.INFO) or logger.filters:
        return None
    root = logging.root
    try:
        (handler,) = root.handlers  # exactly one, checked without a len() call
    except ValueError:
        return None
    if (
        type(handler) is not LazyFlushHandler
        or not handler.fast
        or handler.filters
        or handler.level > logging.INFO
        or type(handler.formatter) is not JsonFormatter
        or type(logger) is not logging.Logger
        or logging.getLogRecordFactory() is not logging.LogRecord
    ):
        return None
    node: logging.Logger | None = logger
    while node is not root:
        if node is None or node.handlers or not node.propagate:
            return None
        node = node.parent
    return handler


def resolve_log_format(fmt: str, stream: TextIO | None = None) -> str:
    """Turn ``auto`` into ``text`` on a terminal and ``json`` elsewhere; keep json and text."""
    if fmt != "auto":
        return fmt
    out = sys.stdout if stream is None else stream
    try:
        return "text" if out.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Send the root logger to stdout in the chosen format (replacing earlier handlers).

    ``fmt`` is ``json``, ``text`` or ``auto`` (text on a terminal, else JSON).
    """
    handler = LazyFlushHandler(sys.stdout)
    json_lines = resolve_log_format(fmt) == "json"
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
        if isinstance(old, LazyFlushHandler):
            old.close()  # its pending lines go out before the new handler's
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
