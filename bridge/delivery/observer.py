"""The telemetry of a delivery, in one place: spans, metrics, counters and log lines per event.

The worker and its collaborators decide; :class:`DeliveryObserver` reports. Each event of an
entry's way (delivered, duplicate, retry, dead letter, abandoned, a stalled lane, a breaker
change) is logged by this one owner, with the ``bridge.worker`` logger and the fields operators
and tests rely on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg_attrs

from bridge.core.outcome import Action
from bridge.core.signal import Signal, guess_signal_id
from bridge.delivery.breaker import BreakerState
from bridge.delivery.jobs import Job
from bridge.delivery.lanes import Lanes
from bridge.delivery.outages import OutageLog
from bridge.edge.results import Delivered, Failed
from bridge.streams.entries import SIGNAL_FIELD, DeadLetter
from bridge.streams.group import SignalStream
from bridge.telemetry.logs import log_fields, log_info
from bridge.telemetry.metrics import Metrics, counter_series, histogram_series

__all__ = ["DeliveryObserver", "WorkerStats"]

log = logging.getLogger("bridge.worker")


@dataclass
class WorkerStats:
    """Counts since start, for the demo, tests and status lines."""

    delivered: int = 0
    duplicates: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    retries: int = 0


class DeliveryObserver:
    """Reports every event of one worker's deliveries: span attributes, metrics, log lines."""

    def __init__(
        self,
        stream: SignalStream,
        *,
        metrics: Metrics,
        tracer: trace.Tracer,
        producer_id: str,
        clock: Callable[[], float],
        clock_skew_s: Callable[[], float | None],
        probe_in_s: Callable[[], float | None],
        outages: OutageLog | None = None,
    ) -> None:
        self.stats = WorkerStats()
        self._stream = stream.stream
        self._dlq_stream = stream.dlq_stream
        self._metrics = metrics
        self._tracer = tracer
        self._producer_id = producer_id
        self._clock = clock
        self._clock_skew_s = clock_skew_s
        self._probe_in_s = probe_in_s  # seconds to the breaker's next probe; None while closed
        self._outages = outages if outages is not None else OutageLog()
        # The attribute sets a delivery records, bound once (see CounterSeries).
        self._acked_success = counter_series(metrics.acked_total, {"outcome": "success"})
        self._acked_duplicate = counter_series(metrics.acked_total, {"outcome": "duplicate"})
        self._signal_age = histogram_series(metrics.signal_age)
        self._span_name = f"process {stream.stream}"
        self._span_attrs = {
            msg_attrs.MESSAGING_SYSTEM: "redis",
            msg_attrs.MESSAGING_DESTINATION_NAME: stream.stream,
            msg_attrs.MESSAGING_CONSUMER_GROUP_NAME: stream.group,
            msg_attrs.MESSAGING_OPERATION_TYPE: "process",
        }

    def span(self, job: Job, instrument: str | None = None) -> AbstractContextManager[trace.Span]:
        """Open the CONSUMER span of one entry's processing, under the producer's context."""
        attributes: dict[str, str] = {
            **self._span_attrs,
            msg_attrs.MESSAGING_MESSAGE_ID: job.entry.id,
        }
        if instrument is not None:
            attributes["bridge.instrument"] = instrument
        return self._tracer.start_as_current_span(
            self._span_name, context=job.parent, kind=trace.SpanKind.CONSUMER, attributes=attributes
        )

    def on_delivered(
        self, job: Job, signal: Signal, span: trace.Span, delivered: Delivered
    ) -> None:
        """Report a delivery: count it and its age, and write the one INFO line."""
        self.stats.delivered += 1
        age_s = self._clock() - job.signal_at  # set with job.signal, once per entry
        self._signal_age.record(age_s if age_s > 0.0 else 0.0)  # max(), without a call
        response = delivered.response
        self._acked(
            job,
            signal,
            span,
            "success",
            delivered.http_code,
            response.signal_id if response else None,
            round(delivered.duration_s * 1000, 3),
        )

    def on_duplicate(self, job: Job, signal: Signal, span: trace.Span, http_code: int) -> None:
        """Report a duplicate: the server already had the key, so it is delivered all the same."""
        self.stats.duplicates += 1
        self._acked(job, signal, span, "duplicate", http_code, None, None)

    def _acked(  # noqa: PLR0917 - one private call per delivery, no keyword dict on the hot path
        self,
        job: Job,
        signal: Signal,
        span: trace.Span,
        outcome: str,
        http_code: int | None,
        server_signal_id: str | None,
        duration_ms: float | None,
    ) -> None:
        if type(span) is not trace.NonRecordingSpan:  # its set_attribute does nothing: no call
            span.set_attribute("bridge.outcome", outcome)
        if self._outages.in_outage:
            self._outages.recovered()
        (self._acked_success if outcome == "success" else self._acked_duplicate).add(1)
        # The one INFO line per delivery: log_info writes it straight into the JSON handler's
        # buffer when logging is as shipped, else it is exactly log.info(..., extra=...).
        fields = {
            "producer_id": self._producer_id,
            "entry_id": job.entry.id,
            "signal_id": signal.signal_id,
            "server_signal_id": server_signal_id,
            "instrument": signal.instrument,
            "http_code": http_code,
            "duration_ms": duration_ms,
            "attempts": job.attempts,
            "outcome": outcome,
        }
        if outcome == "success":
            log_info(log, "signal delivered", fields)
            return
        # A duplicate: the server's id and the duration are not known, so not shown as nulls.
        del fields["server_signal_id"], fields["duration_ms"]
        log_info(log, "signal already on the server", fields)

    def on_retry(self, job: Job, failed: Failed, reason: str, delay_s: float) -> None:
        """Count a failed attempt that will be retried; the outage log decides what to say.

        The start of an outage (unreachable, refusing every signal alike, the breaker opened)
        is one ERROR naming the cause; later attempts are counted in one line per interval.
        """
        exc = failed.cause
        self.stats.retries += 1
        self._metrics.retries_total.add(1, {"reason": reason})
        probe_in_s = self._probe_in_s()
        fields: dict[str, object] = {
            "entry_id": job.entry.id,
            "signal_id": job.signal.signal_id if job.signal else None,
            "http_code": failed.status,
            "error": str(exc),
            "error_type": type(exc).__name__,
            "attempt": job.attempts,
            "retry_in_s": round(delay_s if probe_in_s is None else probe_in_s, 3),
        }
        if failed.verdict.action is Action.SYSTEMIC:
            skew = self._clock_skew_s()
            if skew is not None:
                fields["server_clock_skew_s"] = round(skew, 1)
        self._outages.failed(failed, breaker_open=probe_in_s is not None, fields=fields)

    def on_bug(self, job: Job, exc: Exception) -> None:
        """Report an attempt that raised instead of returning an outcome (a bug, a bad setting)."""
        log.error(
            "unexpected error posting a signal; paused and retrying",
            extra=log_fields(entry_id=job.entry.id, error=str(exc), error_type=type(exc).__name__),
        )

    def on_fenced(self, span: trace.Span) -> None:
        """Count a POST refused as made under a stale lease (the worker logs the one WARNING)."""
        span.set_attribute("bridge.outcome", "fenced")
        self._metrics.fenced_total.add(1, {"stream": self._stream})

    def on_abandoned(self, span: trace.Span) -> None:
        """Mark an entry left pending for a replica (stopping, or the shard's lease is gone)."""
        span.set_attribute("bridge.outcome", "abandoned")

    def on_dead_letter(self, span: trace.Span, letter: DeadLetter) -> None:
        """Mark the entry's span before its dead letter is written."""
        span.set_attribute("bridge.outcome", "dead_letter")
        span.set_attribute("bridge.reason", letter.reason)
        span.set_status(trace.Status(trace.StatusCode.ERROR, letter.reason))

    def on_dead_lettered(self, job: Job, letter: DeadLetter) -> None:
        """Report a written dead letter: count it and write the one ERROR line."""
        self.stats.dead_lettered[letter.reason] = self.stats.dead_lettered.get(letter.reason, 0) + 1
        self._metrics.dead_lettered_total.add(1, {"reason": letter.reason})
        log.error(
            "signal dead-lettered",
            extra=log_fields(
                entry_id=job.entry.id,
                signal_id=(
                    job.signal.signal_id
                    if job.signal
                    else guess_signal_id(job.entry.fields.get(SIGNAL_FIELD))
                ),
                reason=letter.reason,
                error=letter.error,
                http_code=letter.http_code,
                attempts=letter.attempts,
                dlq_stream=self._dlq_stream,
            ),
        )

    async def watch_lanes(self, lanes: Lanes[Job], threshold_s: float) -> None:
        """Warn once per episode about a lane blocked past BRIDGE_LANE_STALL_WARN_SECONDS."""
        interval = max(0.05, min(1.0, threshold_s / 4))
        while True:
            await asyncio.sleep(interval)
            for lane in lanes.newly_stalled(threshold_s):
                head = lane.queue[0] if lane.queue else None
                log.warning(
                    "instrument blocked: its later signals wait until this one is delivered",
                    extra=log_fields(
                        instrument=lane.instrument,
                        blocked_over_s=threshold_s,
                        entry_id=head.entry.id if head else None,
                        attempts=head.attempts if head else None,
                        waiting_in_redis=lane.parked,
                        stream=self._stream,
                    ),
                )

    def on_breaker(self, state: BreakerState, reason: str) -> None:
        """Log the breaker's transitions at INFO: the outage's one ERROR is the outage log's."""
        if state is BreakerState.OPEN:
            log.info(
                "circuit breaker open: reading paused, one probe at a time",
                extra=log_fields(reason=reason, probe_in_s=round(self._probe_in_s() or 0.0, 3)),
            )
        else:
            log.info("circuit breaker closed: delivery resumed, every lane woken")
            self._outages.recovered()
