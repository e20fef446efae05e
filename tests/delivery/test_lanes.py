"""Per-instrument scheduling decisions (bridge.delivery.lanes), without Redis or sockets."""

from __future__ import annotations

from bridge.delivery.lanes import Lane, Lanes, Offer, format_id, next_id
from bridge.streams.entries import parse_id


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        """Return the current reading."""
        return self.now


def _lanes(clock: Clock | None = None) -> Lanes[str]:
    """Lanes whose jobs are just their entry ids."""
    return Lanes(lambda job: job, monotonic=clock or Clock())


def test_ids_compare_in_stream_order_not_as_text() -> None:
    """``9-0`` comes before ``10-0``, and a scan resumes right after the id it has seen."""
    assert parse_id("9-0") < parse_id("10-0")
    assert next_id("10-5") == (10, 6)
    assert next_id(f"10-{(1 << 64) - 1}") == (11, 0)
    assert format_id(next_id("7-1")) == "7-2"


def test_a_flowing_lane_keeps_its_entries_in_memory() -> None:
    """The first entry starts a lane; later ones queue behind it while it is not blocked."""
    lanes = _lanes()
    assert lanes.offer("XAUUSD", "1-0") is Offer.START
    assert lanes.offer("XAUUSD", "2-0") is Offer.QUEUED
    assert lanes.offer("EURUSD", "3-0") is Offer.START
    lane = lanes.get("XAUUSD")
    assert lane is not None
    assert list(lane.queue) == ["1-0", "2-0"]
    assert not lane.has_parked


def test_a_blocked_lane_sends_its_queue_back_to_redis_and_parks_what_comes_next() -> None:
    """Only the head stays in memory; queued and later entries wait in Redis from the first one."""
    lanes = _lanes()
    lanes.offer("XAUUSD", "1-0")
    lanes.offer("XAUUSD", "2-0")
    lanes.offer("XAUUSD", "3-0")
    lane = lanes.get("XAUUSD")
    assert lane is not None
    assert lanes.block(lane) == ["2-0", "3-0"]
    assert list(lane.queue) == ["1-0"]
    assert lanes.offer("XAUUSD", "4-0") is Offer.PARKED
    assert lane.parked_from == (2, 0)
    assert lane.parked == 3
    assert lanes.waits_in_redis("XAUUSD", "4-0")
    assert not lanes.waits_in_redis("XAUUSD", "1-0")
    assert not lanes.waits_in_redis("EURUSD", "4-0")
    assert lanes.lowest_parked() == (2, 0)


def test_a_lane_with_entries_in_redis_parks_new_ones_even_once_unblocked() -> None:
    """After the head is done, newer entries still wait behind the parked ones (order)."""
    lanes = _lanes()
    lanes.offer("XAUUSD", "1-0")
    lanes.offer("XAUUSD", "2-0")
    lane = lanes.get("XAUUSD")
    assert lane is not None
    lanes.block(lane)
    lanes.head_done(lane)
    assert lane.blocked_since is None
    assert lanes.offer("XAUUSD", "5-0") is Offer.PARKED


def test_a_scan_that_reaches_the_end_clears_the_parked_range() -> None:
    """Nothing parked during the scan and nothing left: the lane has nothing in Redis."""
    lane: Lane[str] = Lane("XAUUSD")
    lane.park("2-0")
    assert lane.begin_scan() == (2, 0)
    lane.end_scan((9, 0), exhausted=True, taken=1)
    assert not lane.has_parked
    assert lane.parked == 0


def test_a_scan_that_stops_early_continues_where_it_got_to() -> None:
    """A scan that took a batch resumes after the last entry it looked at."""
    lane: Lane[str] = Lane("XAUUSD")
    lane.park("2-0")
    lane.park("3-0")
    lane.begin_scan()
    lane.end_scan((3, 0), exhausted=False, taken=1)
    assert lane.parked_from == (3, 0)
    assert lane.parked == 1


def test_an_entry_parked_below_the_scan_is_not_skipped() -> None:
    """A reclaimed entry parked while a scan runs, below where it got to, is scanned next time."""
    lane: Lane[str] = Lane("XAUUSD")
    lane.park("5-0")
    lane.begin_scan()
    lane.park("4-0")
    lane.end_scan((9, 0), exhausted=True, taken=0)
    assert lane.parked_from == (4, 0)


def test_a_stall_is_reported_once_per_episode_and_measured() -> None:
    """Blocked past the threshold: reported once; the gauge says which lane and for how long."""
    clock = Clock()
    lanes = _lanes(clock)
    lanes.offer("XAUUSD", "1-0")
    lanes.offer("EURUSD", "2-0")
    lane = lanes.get("XAUUSD")
    assert lane is not None
    lanes.block(lane)
    clock.now += 4.0
    assert lanes.newly_stalled(10.0) == []
    assert lanes.blocked_for() == [("XAUUSD", 4.0)]
    clock.now += 7.0
    assert lanes.newly_stalled(10.0) == [lane]
    assert lanes.newly_stalled(10.0) == []
    assert lanes.head_done(lane) is True
    assert lanes.blocked_for() == []
    lanes.block(lane)
    clock.now += 11.0
    assert lanes.newly_stalled(10.0) == [lane]


def test_a_removed_lane_is_forgotten_but_not_its_successor() -> None:
    """remove() drops only the lane object it was given."""
    lanes = _lanes()
    lanes.offer("XAUUSD", "1-0")
    first = lanes.get("XAUUSD")
    assert first is not None
    lanes.remove(first)
    assert lanes.get("XAUUSD") is None
    lanes.offer("XAUUSD", "2-0")
    lanes.remove(first)
    assert lanes.get("XAUUSD") is not None
    assert len(lanes) == 1
