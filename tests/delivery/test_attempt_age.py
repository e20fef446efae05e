"""The age check before an attempt: made once when nothing waits, again after any wait.

A first attempt admitted at once with a free posting slot is checked once (the reading also
dates the attempt); an attempt that waited for a slot is checked again, so a signal that aged
past the limit meanwhile is dead-lettered as expired, never posted.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis.asyncio as aioredis
from opentelemetry import trace

from bridge.core.signal import encode_canonical
from bridge.delivery.attempts import Attempts
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Breaker
from bridge.delivery.jobs import Job, prepare_job
from bridge.delivery.lanes import Lane
from bridge.delivery.letters import DeadLetters
from bridge.delivery.observer import DeliveryObserver
from bridge.edge.results import Attempt, Delivered
from bridge.streams.entries import SIGNAL_FIELD, DeadLetter, Entry
from bridge.streams.group import SignalStream
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import get_tracer
from tests.support import make_signal

_MAX_AGE_S = 10.0


class _Clock:
    """A wall clock the test moves by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        """Return the current reading."""
        return self.now


class _Letters:
    """Records dead letters instead of writing them."""

    def __init__(self) -> None:
        self.written: list[DeadLetter] = []

    async def write(self, job: Job, letter: DeadLetter, span: trace.Span) -> None:
        """Keep the letter."""
        self.written.append(letter)


def _attempts(clock: _Clock, letters: _Letters, sent: list[Job]) -> Attempts:
    """Attempts with one posting slot, a real breaker and observer, and a recording sender."""

    async def send(job: Job, signal: Any) -> Attempt:
        sent.append(job)
        return Delivered(response=None, http_code=200, duration_s=0.001)

    stream = SignalStream(aioredis.Redis(), stream="s", group="g", consumer="c", dlq_stream="s:dlq")
    observer = DeliveryObserver(
        stream,
        metrics=Metrics(),
        tracer=get_tracer(),
        producer_id="p",
        clock=clock,
        clock_skew_s=lambda: None,
        probe_in_s=lambda: None,
    )
    return Attempts(
        send=send,
        max_in_flight=1,
        max_age_s=_MAX_AGE_S,
        breaker=Breaker(5),
        backoff=Backoff(0.001, 0.002),
        clock=clock,
        observer=observer,
        letters=cast(DeadLetters, letters),
        acked=lambda job, outcome: None,
        block=lambda lane: None,
        stopping=lambda: False,
        fence_closed=lambda: False,
        fenced=lambda token: None,
    )


def _job() -> Job:
    """A prepared job of a signal dated now."""
    body = encode_canonical(make_signal())
    return prepare_job(Entry("1-0", {SIGNAL_FIELD: body}), stream="s", max_body_size=65536)


async def test_a_first_attempt_with_a_free_slot_is_dated_by_its_age_check() -> None:
    """Admitted at once: the reading that checked the age also dates the first attempt."""
    job = _job()
    clock = _Clock(job.signal_at + 1.0)
    letters, sent = _Letters(), list[Job]()
    attempts = _attempts(clock, letters, sent)
    assert job.signal is not None
    assert await attempts.deliver(job, job.signal, Lane("XAUUSD"))
    assert sent == [job]
    assert job.first_attempt_at == job.signal_at + 1.0
    assert letters.written == []


async def test_a_signal_that_ages_while_waiting_for_a_slot_is_expired_not_posted() -> None:
    """The age is checked again once the slot is free: past the limit, a dead letter."""
    job = _job()
    clock = _Clock(job.signal_at + 1.0)
    letters, sent = _Letters(), list[Job]()
    attempts = _attempts(clock, letters, sent)
    assert attempts._slots.try_take()  # the only slot is busy
    assert job.signal is not None
    delivery = asyncio.ensure_future(attempts.deliver(job, job.signal, Lane("XAUUSD")))
    await asyncio.sleep(0.01)
    assert not delivery.done()
    clock.now = job.signal_at + _MAX_AGE_S + 5.0
    attempts._slots.give()
    assert await delivery
    assert sent == []
    assert [(letter.reason, letter.attempts) for letter in letters.written] == [("expired", 0)]
    assert letters.written[0].error == f"signal is 15.0s old, limit {_MAX_AGE_S:g}s"
