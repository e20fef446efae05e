"""One entry's delivery: attempts until delivered, dead-lettered, expired or left pending.

Each attempt posts within a posting slot (at most ``max_in_flight`` at once) and comes back as
a value (:mod:`bridge.edge.results`, plus :class:`Expired` and :data:`STOPPED` decided here);
:meth:`Attempts._attempt` matches it in the one place that decides ack, dead letter or retry.
A retry blocks the entry's lane (its later entries wait in Redis) and backs off with full
jitter, cut short when the breaker opens or the worker stops.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final, assert_never

import msgspec
from opentelemetry import trace

from bridge.core.outcome import Action, Verdict
from bridge.core.signal import Signal
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Admission, Breaker, BreakerState
from bridge.delivery.jobs import Job
from bridge.delivery.lanes import Lane
from bridge.delivery.letters import DeadLetters
from bridge.delivery.observer import DeliveryObserver
from bridge.edge.results import Attempt, Delivered, Duplicate, Failed, Fenced, Rejected
from bridge.edge.slots import Slots
from bridge.errors import InvalidSignalError, Outcome, RejectedError, SystemicError
from bridge.streams.entries import DeadLetter

__all__ = ["STOPPED", "Attempts", "Expired", "Stopped", "retry_reason"]

_BUG_CAUSE: Final = "a bug or a bad setting"


class Expired(msgspec.Struct, frozen=True):
    """The signal passed its maximum age while waiting for a posting slot: nothing was sent."""

    error: str


class Stopped(msgspec.Struct, frozen=True):
    """stop() was called, or the fence closed, while the attempt waited: nothing was sent."""


STOPPED: Final = Stopped()


class _Abandoned:
    """An entry left pending for a replica (stopping or fenced)."""

    __slots__ = ()


_ABANDONED: Final = _Abandoned()


def retry_reason(failed: Failed) -> str:
    """Label a failure for the breaker and the retries metric: auth, systemic or the code."""
    if failed.cause.outcome is Outcome.AUTH:
        return "auth"
    if failed.verdict.action is Action.SYSTEMIC:
        return "systemic"
    return str(failed.status) if failed.status else "network"


class Attempts:
    """Delivers entries one attempt at a time, within the posting window and the breaker."""

    def __init__(
        self,
        *,
        send: Callable[[Job, Signal], Awaitable[Attempt]],
        max_in_flight: int,
        max_age_s: float,
        breaker: Breaker,
        backoff: Backoff,
        clock: Callable[[], float],
        observer: DeliveryObserver,
        letters: DeadLetters,
        acked: Callable[[Job, Delivered | Duplicate], None],
        block: Callable[[Lane[Job]], None],
        stopping: Callable[[], bool],
        fence_closed: Callable[[], bool] | None,
        fenced: Callable[[int | None], None],
        takeover_grace_s: float = 0.0,
    ) -> None:
        self.posting = 0  # POSTs in flight right now (at most max_in_flight)
        self._slots = Slots(max_in_flight)
        self._send = send
        self._max_age_s = max_age_s
        self._takeover_grace_s = takeover_grace_s
        # No age limit is below this one: a younger signal needs no closer look (the hot path).
        self._min_age_s = (
            min(max_age_s, max_age_s + takeover_grace_s) if max_age_s else float("inf")
        )
        self._breaker = breaker
        self._backoff = backoff
        self._clock = clock
        self._observer = observer
        self._letters = letters
        self._acked = acked
        self._block = block
        self._stopping = stopping
        self._fence_closed = fence_closed
        self._fenced = fenced

    async def deliver(self, job: Job, signal: Signal, lane: Lane[Job]) -> bool:
        """Deliver one entry: retry transient failures until delivered, expired or stopped.

        Returns False when the entry was left pending (stop() before or between attempts: no
        new POST starts after stop, the entry stays pending for a replica).
        """
        breaker = self._breaker
        with self._observer.span(job, signal.instrument) as span:
            while True:
                now = self._clock()
                too_old = self._too_old(job, now) if now - job.signal_at > self._min_age_s else None
                if too_old is not None:
                    letter = DeadLetter(reason="expired", error=too_old, attempts=job.attempts)
                    await self._letters.write(job, letter, span)
                    return True
                # After stop(): no retry, no probe, no wait for the breaker. A first attempt
                # still goes within the grace period while the server answers well (checked
                # again once a slot is free), so a healthy drain does not strand entries.
                admitted_at: float | None = None  # when admitted without waiting
                if job.attempts and self._stopping():
                    admission = None
                elif breaker.state is not BreakerState.OPEN:
                    # try_admit's first answer, read in place: no call for the common case.
                    admission, admitted_at = Admission.POST, now
                else:
                    admission = breaker.try_admit() or await breaker.admit()
                if admission is None:
                    self._observer.on_abandoned(span)
                    return False  # stopping: leave it pending for a replica
                try:
                    delay = await self._attempt(job, signal, span, admitted_at)
                finally:
                    if admission is Admission.PROBE:
                        breaker.probe_done()
                if delay is None:
                    return True
                if isinstance(delay, _Abandoned):
                    self._observer.on_abandoned(span)
                    return False
                # A retry is coming: the lane is blocked, its later entries wait in Redis.
                self._block(lane)
                if not breaker.is_open:
                    # One entry's failure while the server is otherwise healthy: its own
                    # backoff, cut short when the breaker opens (then admit() waits for the
                    # probe) or stop() is called.
                    await breaker.wait(delay)

    async def _attempt(  # noqa: PLR0912, PLR0915 - the POST and its outcome in one frame: see below
        self, job: Job, signal: Signal, span: trace.Span, admitted_at: float | None
    ) -> float | _Abandoned | None:
        """Make one attempt; None when the entry is settled, else the backoff before the next.

        ``admitted_at``: when deliver() checked the age and admitted this attempt without
        waiting (None when it waited for the breaker).
        """
        job.attempts += 1
        if job.attempts == 1:
            job.first_attempt_at = self._clock() if admitted_at is None else admitted_at
        elif job.attempts > 1:
            span.add_event("retry", {"bridge.attempt": job.attempts})
            admitted_at = None  # a retry's age limit may differ from the one checked
        # The POST is made here, not in a coroutine of its own: each coroutine between the lane
        # and the socket is resumed once more when the answer comes (latency at 1 instrument).
        slots = self._slots
        if not slots.try_take():
            await slots.take()
            admitted_at = None
        breaker = self._breaker
        try:
            outcome: Attempt | Expired | Stopped | None = None
            # Plain reads first: the happy path (admitted just now, the server answering well,
            # no fence) makes no call before the POST.
            if (
                admitted_at is None
                or breaker.consecutive_failures
                or breaker.state is BreakerState.OPEN
                or self._fence_closed is not None
            ):
                outcome = self._held_back(job, admitted_at)
            if outcome is None:
                self.posting += 1
                try:
                    outcome = await self._send(job, signal)
                finally:
                    self.posting -= 1
        except Exception as exc:  # our bug or a bad setting: systemic, like a 401
            self._observer.on_bug(job, exc)
            outcome = _bug(exc)
        finally:
            slots.give()
        match outcome:
            case Delivered():
                self._breaker.success()
                self._acked(job, outcome)
                self._observer.on_delivered(job, signal, span, outcome)
                return None
            case Duplicate(status=status):
                self._breaker.success()
                self._acked(job, outcome)
                self._observer.on_duplicate(job, signal, span, status)
                return None
            case Rejected(cause=cause):
                self._breaker.success()  # the server answered and judged this signal
                await self._letters.write(job, _rejection(job, cause), span)
                return None
            case Failed():
                return self._retry(job, outcome)
            case Fenced(cause=cause):  # another replica owns the shard: drop it, leave pending
                self._breaker.success()  # the server answered well; this lease is the problem
                self._observer.on_fenced(span)
                self._fenced(cause.current_token)
                return _ABANDONED
            case Expired(error=error):  # it aged past the limit while waiting for a slot
                job.attempts -= 1
                letter = DeadLetter(reason="expired", error=error, attempts=job.attempts)
                await self._letters.write(job, letter, span)
                return None
            case Stopped():
                job.attempts -= 1
                return _ABANDONED
            case _:
                assert_never(outcome)

    def _retry(self, job: Job, failed: Failed) -> float:
        """Count a transient or systemic failure and return the entry's backoff.

        A systemic answer opens the breaker at once.
        """
        reason = retry_reason(failed)
        self._breaker.failure(
            reason,
            systemic=failed.verdict.action is Action.SYSTEMIC,
            retry_after_s=failed.retry_after_s,
        )
        delay = self._backoff.delay(job.attempts, failed.retry_after_s)
        self._observer.on_retry(job, failed, reason, delay)
        return delay

    def _age_limit(self, job: Job) -> float:
        """Return the age past which this attempt is not made (0: none).

        A takeover's first attempt gets ``takeover_grace_s`` more: the old owner may have posted
        the signal when it was just under the limit, and that copy can land until its POST
        times out. Past limit + grace no old copy can still land, so expiring it is safe.
        """
        if job.age_waived or not self._max_age_s:
            return 0.0
        if job.resend_first and job.attempts <= 1:
            return self._max_age_s + self._takeover_grace_s
        return self._max_age_s

    def _too_old(self, job: Job, now: float) -> str | None:
        """Say why the job's signal is too old to send at ``now``, or None (fresh, or no limit)."""
        max_age = self._age_limit(job)
        age_s = now - job.signal_at
        if max_age and age_s > max_age:
            return f"signal is {age_s:.1f}s old, limit {max_age:g}s"
        return None

    def _held_back(self, job: Job, admitted_at: float | None) -> Expired | Stopped | None:
        """Say why a POST holding a slot must not be made (too old, stopping, fenced); None: post.

        The age is checked again unless ``admitted_at`` says deliver() checked it for this very
        attempt and nothing was awaited since; after stop() a POST goes only while the server's
        last answer was good.
        """
        if admitted_at is None:  # the wait may have been long
            now = self._clock()
            too_old = self._too_old(job, now) if now - job.signal_at > self._min_age_s else None
            if too_old is not None:
                return Expired(too_old)
        breaker = self._breaker
        unhealthy = breaker.consecutive_failures or breaker.state is BreakerState.OPEN
        if unhealthy and self._stopping():
            return STOPPED  # a slot freed by a failure: the server is not draining
        if self._fence_closed is not None and self._fence_closed():
            self._fenced(None)
            return STOPPED  # the shard's lease is lost or expiring: leave it pending
        return None


def _bug(exc: Exception) -> Failed:
    """Judge an attempt that raised as systemic, so the breaker pauses delivery and probes."""
    systemic = SystemicError(f"unexpected {type(exc).__name__}: {exc}", cause=_BUG_CAUSE)
    verdict = Verdict(Action.SYSTEMIC, _BUG_CAUSE)
    return Failed(verdict=verdict, status=None, retry_after_s=None, cause=systemic)


def _rejection(job: Job, exc: RejectedError | InvalidSignalError) -> DeadLetter:
    """Build the dead letter of a signal refused for good, or one that could not be sent."""
    if isinstance(exc, InvalidSignalError):
        return DeadLetter(reason=exc.reason, error=str(exc), attempts=job.attempts)
    detail = f"{exc}: {_short(exc.details)}" if exc.details is not None else str(exc)
    return DeadLetter(
        reason="rejected", error=detail, http_code=exc.http_code, attempts=job.attempts
    )


def _short(details: object, limit: int = 512) -> str:
    text = details if isinstance(details, str) else repr(details)
    return text[:limit]
