"""The recovering breaker and the backoff: pure decisions on an injected clock, no sockets."""

import asyncio
from typing import Final

from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Admission, Breaker, BreakerState

# Bound every wait in these tests: a broken breaker fails the test instead of hanging it.
BOUND_S: Final = 2.0


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        """Return the current fake time."""
        return self.now


def _open(clock: FakeClock, **kwargs: float) -> Breaker:
    """A breaker opened by three transient failures."""
    breaker = Breaker(3, probe_interval_s=1.0, retry_after_cap_s=10.0, clock=clock, **kwargs)
    for _ in range(3):
        breaker.failure("500")
    assert breaker.is_open
    return breaker


def test_closed_admits_everyone_and_counts_to_the_threshold() -> None:
    """Below the threshold every lane posts; the third consecutive failure opens it."""
    breaker = Breaker(3, clock=FakeClock())
    breaker.failure("500")
    breaker.failure("500")
    assert breaker.try_admit() is Admission.POST
    breaker.success()
    breaker.failure("500")
    breaker.failure("500")
    assert not breaker.is_open  # a success in between reset the count
    breaker.failure("500")
    assert breaker.state is BreakerState.OPEN


def test_a_systemic_answer_opens_at_once() -> None:
    """One 404 or 401 opens the breaker without waiting for the threshold."""
    breaker = Breaker(5, clock=FakeClock())
    breaker.failure("systemic", systemic=True)
    assert breaker.is_open
    assert breaker.reason == "systemic"


def test_open_lets_one_probe_through_per_interval() -> None:
    """Open: nothing until the interval passes, then exactly one probe at a time."""
    clock = FakeClock()
    breaker = _open(clock)
    assert breaker.try_admit() is None
    clock.now += 0.999
    assert breaker.try_admit() is None
    clock.now += 0.001
    assert breaker.try_admit() is Admission.PROBE
    assert breaker.try_admit() is None  # the probe is out: nobody else
    breaker.failure("500")
    breaker.probe_done()
    assert breaker.try_admit() is None  # the failed probe scheduled the next one
    clock.now += 1.0
    assert breaker.try_admit() is Admission.PROBE


def test_retry_after_sets_the_next_probe_capped() -> None:
    """Retry-After: 2 schedules the next probe in 2 s (not 1); 3600 is capped at 10 s."""
    clock = FakeClock()
    breaker = _open(clock)
    clock.now += 1.0
    assert breaker.try_admit() is Admission.PROBE
    breaker.failure("503", retry_after_s=2.0)
    breaker.probe_done()
    assert breaker.next_probe_in_s == 2.0
    clock.now += 2.0
    assert breaker.try_admit() is Admission.PROBE
    breaker.failure("503", retry_after_s=3600.0)
    breaker.probe_done()
    assert breaker.next_probe_in_s == 10.0


def test_the_first_successful_probe_closes_it_for_everyone() -> None:
    """A probe that succeeds closes the breaker: every lane is admitted to post at once."""
    clock = FakeClock()
    changes: list[BreakerState] = []
    breaker = _open(clock)
    breaker.on_change = lambda state, _reason: changes.append(state)
    clock.now += 1.0
    assert breaker.try_admit() is Admission.PROBE
    breaker.success()
    breaker.probe_done()
    assert [breaker.try_admit() for _ in range(5)] == [Admission.POST] * 5
    assert changes == [BreakerState.CLOSED]


async def test_waiting_lanes_resume_on_the_success_event_not_a_sleep() -> None:
    """Lanes parked in admit() all return POST as soon as the probe succeeds."""
    breaker = Breaker(1, probe_interval_s=60.0)
    breaker.failure("500")
    waiters = [asyncio.create_task(breaker.admit()) for _ in range(20)]
    await asyncio.sleep(0.01)
    assert not any(w.done() for w in waiters)  # the next probe is a minute away
    breaker.success()
    admitted = await asyncio.wait_for(asyncio.gather(*waiters), BOUND_S)
    assert admitted == [Admission.POST] * 20


async def test_a_lane_backing_off_wakes_when_the_breaker_changes() -> None:
    """A 30 s per-entry backoff ends early when the breaker opens, closes or stops."""
    breaker = Breaker(1, probe_interval_s=60.0)
    sleeper = asyncio.create_task(breaker.wait(30.0))
    await asyncio.sleep(0.01)
    breaker.failure("500")  # opens: the lane should go wait for the probe instead
    await asyncio.wait_for(sleeper, BOUND_S)
    sleeper = asyncio.create_task(breaker.wait(30.0))
    await asyncio.sleep(0.01)
    breaker.success()  # closes: the server is back, the backoff is moot
    await asyncio.wait_for(sleeper, BOUND_S)


async def test_one_probe_at_a_time_under_concurrency() -> None:
    """Many lanes in admit(): exactly one gets PROBE until probe_done(), then the next one."""
    breaker = Breaker(1, probe_interval_s=0.0)
    breaker.failure("500")
    waiters = [asyncio.create_task(breaker.admit()) for _ in range(10)]
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 1
    breaker.failure("500")
    breaker.probe_done()
    await asyncio.sleep(0.01)
    assert sum(w.done() for w in waiters) == 2
    assert {w.result() for w in waiters if w.done()} == {Admission.PROBE}
    breaker.stop()
    rest = await asyncio.wait_for(asyncio.gather(*waiters), BOUND_S)
    assert rest.count(None) == 8


async def test_stop_releases_every_waiter_with_no() -> None:
    """After stop() an open breaker admits nothing: waiters return None at once, new callers too."""
    breaker = Breaker(1, probe_interval_s=60.0)
    breaker.failure("500")
    waiters = [asyncio.create_task(breaker.admit()) for _ in range(5)]
    sleeper = asyncio.create_task(breaker.wait(30.0))
    await asyncio.sleep(0.01)
    breaker.stop()
    assert await asyncio.wait_for(asyncio.gather(*waiters), BOUND_S) == [None] * 5
    await asyncio.wait_for(sleeper, BOUND_S)
    assert await breaker.admit() is None
    await asyncio.wait_for(breaker.wait(30.0), BOUND_S)  # no backoff sleeps once stopped


def test_retry_after_sets_the_backoff_instead_of_a_floor() -> None:
    """With Retry-After the wait is exactly that (capped), not max(jitter, Retry-After)."""
    backoff = Backoff(0.5, 30.0, retry_after_cap_s=60.0, rand=lambda: 1.0)
    assert backoff.delay(10) == 30.0
    assert backoff.delay(10, retry_after_s=2.0) == 2.0
    assert backoff.delay(1, retry_after_s=0.0) == 0.0
    assert backoff.delay(1, retry_after_s=600.0) == 60.0
    assert backoff.delay(1) == 0.5
    assert backoff.delay(3) == 2.0
