"""The telemetry of one POST: the ``posted`` metrics, the CLIENT span's error, the client's lines.

One owner for what :class:`~bridge.edge.client.HmacClient` says about an attempt, so the client
itself only signs, sends and judges. Lines keep the ``bridge.client`` logger.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import trace
from opentelemetry.semconv.attributes import error_attributes

from bridge.edge.results import Delivered, Duplicate, Failed, Fenced, Rejected
from bridge.errors import DeliveryError, DeliveryTimeoutError, InvalidSignalError
from bridge.telemetry.bounds import bounded
from bridge.telemetry.logs import log_fields, trace_fields
from bridge.telemetry.metrics import CounterSeries, Metrics, counter_series, histogram_series

__all__ = ["PostRecorder"]

log = logging.getLogger("bridge.client")


class PostRecorder:
    """Counts and logs the attempts of one producer under the seed's metric names."""

    __slots__ = ("_metrics", "_producer_id", "_success_counted", "_success_timed")

    def __init__(self, metrics: Metrics, producer_id: str) -> None:
        self._metrics = metrics
        self._producer_id = producer_id
        # A delivery's metric series, bound once (per status code): record()'s attributes.
        self._success_counted: dict[int, CounterSeries] = {}
        self._success_timed = histogram_series(
            metrics.posted_duration, {"result": "success", "producer_id": producer_id}
        )

    def record(self, result: str, http_code: int | None, elapsed_s: float | None) -> None:
        """Count the attempt and its duration."""
        producer = self._producer_id
        self._metrics.posted_total.add(
            1,
            {"result": result, "http_code": str(http_code or 0), "producer_id": producer},
        )
        if elapsed_s is not None:
            self._metrics.posted_duration.record(
                elapsed_s, {"result": result, "producer_id": producer}
            )

    def invalid(self, signal_id: str | None, exc: InvalidSignalError) -> None:
        """Count and log a signal that could not be encoded: nothing was sent."""
        self.record("validation_error", None, None)
        log.error(
            "Signal validation failed",
            extra=log_fields(
                producer_id=self._producer_id,
                signal_id=signal_id,
                error=str(exc),
                error_type=type(exc).__name__,
            ),
        )

    def delivered(self, span: trace.Span, delivered: Delivered, signal_id: str | None) -> None:
        """Count a delivery; warn when the server acked it with an unexpected body."""
        code = delivered.http_code
        try:
            counted = self._success_counted[code]
        except KeyError:
            counted = self._success_counted[code] = counter_series(
                self._metrics.posted_total,
                {
                    "result": "success",
                    "http_code": str(code or 0),
                    "producer_id": self._producer_id,
                },
            )
        counted.add(1)
        self._success_timed.record(delivered.duration_s)
        if delivered.warning is not None and delivered.oversized is None:
            log.warning(
                "ingest server accepted the signal with an unexpected answer body; acked, "
                "not posted again",
                extra=log_fields(
                    **trace_fields(span),
                    producer_id=self._producer_id,
                    signal_id=signal_id,
                    http_code=delivered.http_code,
                    error=delivered.warning,
                ),
            )

    def unread(self, span: trace.Span, code: int, limit: str, signal_id: str | None) -> None:
        """Say that an acked answer went past a read limit and was never read."""
        span.set_attribute("bridge.response_oversized", limit)
        log.warning(
            "ingest server accepted the signal but its answer is past a read limit; "
            "acked without reading it",
            extra=log_fields(
                **trace_fields(span),
                producer_id=self._producer_id,
                signal_id=signal_id,
                http_code=code,
                error=limit,
            ),
        )

    def failed(
        self,
        span: trace.Span,
        outcome: Duplicate | Rejected | Failed | Fenced,
        started: float,
        signal_id: str | None,
    ) -> None:
        """Record an attempt that did not deliver in the span, metrics and log."""
        elapsed = time.perf_counter() - started
        if isinstance(outcome, Duplicate):
            self.record("duplicate", outcome.status, elapsed)
            return
        if isinstance(outcome, Fenced):  # the worker logs the one WARNING when it drops the shard
            self.record("fenced", outcome.status, elapsed)
            span.set_attribute(error_attributes.ERROR_TYPE, "stale-lease")
            span.set_status(trace.Status(trace.StatusCode.ERROR, str(outcome.cause)))
            return
        exc = outcome.cause
        assert isinstance(exc, DeliveryError)  # noqa: S101 - a sent body is never invalid
        result = "timeout" if isinstance(exc, DeliveryTimeoutError) else "failure"
        self.record(result, exc.http_code, elapsed)
        span.set_attribute(error_attributes.ERROR_TYPE, str(exc.http_code or type(exc).__name__))
        span.set_status(trace.Status(trace.StatusCode.ERROR, bounded(str(exc))))
        # DEBUG: the worker's outage log says it once per outage and counts the rest.
        log.debug(
            "Signal post failed",
            extra=log_fields(
                **trace_fields(span),
                producer_id=self._producer_id,
                signal_id=signal_id,
                http_code=exc.http_code,
                error=str(exc),
                error_type=type(exc).__name__,
                details=exc.details,
                outcome=exc.outcome.value,
            ),
        )
