"""The consumer loop: read or reclaim -> deliver -> ack | retry | dead-letter.

One ``Worker`` per stream (the CLI runs one per entry of BRIDGE_STREAMS). It reads batches
with XREADGROUP (BLOCK, so idle costs nothing), holds at most ``max_in_flight`` plus one batch
of entries in memory (each decoded once into a job by :mod:`bridge.delivery.jobs`), and delivers
each
instrument's signals in stream order through a *lane*
(one task per instrument with work queued; different instruments run in parallel). A lane whose
head is being retried keeps its later entries in Redis, not in memory (``bridge.delivery.lanes``),
so
reading goes on for the other instruments. Acks are buffered and flushed in one XACK per burst;
a dead letter and its ack go in one Lua script. What an answer means comes from the outcome
table (:mod:`bridge.core.outcome`). Retries of one entry back off with full jitter (Retry-After sets
the wait); a run of transient failures, or one systemic answer, opens the breaker
(:mod:`bridge.delivery.breaker`), which stops reading and lets one probe through at a time; the
first
success wakes every lane at once. No new POST starts after ``stop()``. Pending entries it owns
are touched so other replicas do not reclaim them; entries idle on other consumers are claimed
every tenth of BRIDGE_CLAIM_IDLE_MS. After any Redis error the worker re-reads its own pending
entries before new ones, so a lost reply delays nothing. ``stop()`` only flips a flag: the loop
stops reading, lets lanes finish within the
grace period, cancels the rest (they stay pending for a replica) and flushes what finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import trace
from opentelemetry.semconv._incubating.attributes import messaging_attributes as msg_attrs

from bridge.app.progress import report_new_group
from bridge.config.loader import StreamConfig
from bridge.core.outcome import Action, Verdict
from bridge.core.signal import Signal, guess_signal_id
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Admission, Breaker, BreakerState
from bridge.delivery.jobs import Job, prepare_job
from bridge.delivery.lanes import (
    CURRENT_LANE,
    Lane,
    Lanes,
    Offer,
    StreamId,
    format_id,
    next_id,
    parse_id,
)
from bridge.edge.client import HmacClient
from bridge.edge.results import Attempt, Delivered, Duplicate, Failed, Rejected
from bridge.errors import (
    InvalidSignalError,
    Outcome,
    RejectedError,
    StreamError,
    SystemicError,
)
from bridge.streams.stream import (
    SIGNAL_FIELD,
    DeadLetter,
    Entry,
    SignalStream,
)
from bridge.telemetry.logs import log_fields, log_info
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import get_tracer

__all__ = ["Worker"]

log = logging.getLogger("bridge.worker")

_TOUCH_CHUNK: Final = 500
# Own pending entries examined per XPENDING page when a lane, a re-read or the claim scan looks.
_SCAN_PAGE: Final = 200
_ACK_COALESCE_S: Final = 0.005


@dataclass(slots=True)
class _Scan:
    """Where a lane's scan of own pending entries has got to, and what it found."""

    cursor: StreamId
    found: list[Job] = field(default_factory=list)
    exhausted: bool = False


@dataclass
class WorkerStats:
    """Counts since start, for the demo, tests and status lines."""

    delivered: int = 0
    duplicates: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    retries: int = 0


class Worker:
    """Consumes one stream through a consumer group and delivers every entry at least once."""

    def __init__(
        self,
        stream: SignalStream,
        client: HmacClient,
        config: StreamConfig,
        *,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
        backoff: Backoff | None = None,
        redis_backoff: Backoff | None = None,
        breaker: Breaker | None = None,
        clock: Callable[[], float] = time.time,
        fence: Callable[[], bool] | None = None,
    ) -> None:
        self.stream = stream
        self.client = client
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.tracer = tracer if tracer is not None else get_tracer()
        self.backoff = (
            backoff
            if backoff is not None
            else Backoff(
                config.backoff_base_ms / 1000,
                config.backoff_cap_ms / 1000,
                retry_after_cap_s=config.retry_after_cap_s,
            )
        )
        self.redis_backoff = redis_backoff if redis_backoff is not None else Backoff(0.1, 5.0)
        self.breaker = (
            breaker
            if breaker is not None
            else Breaker(
                config.breaker_threshold,
                probe_interval_s=config.probe_interval_ms / 1000,
                retry_after_cap_s=config.retry_after_cap_s,
            )
        )
        self.breaker.on_change = self._breaker_changed
        self.clock = clock
        # Strict ordering: False once this replica may no longer post or read for the stream
        # (its shard lease is lost or about to expire). Checked right before each POST, read,
        # claim and touch; see ownership.py.
        self.fence = fence
        self.fenced = False
        self._abandoned: set[str] = set()  # instruments whose lane stopped with entries left
        self.stats = WorkerStats()
        self.redis_ok = False
        self.group_ready = False
        self._redis_outage_logged = False
        self._redis_outage_code: str | None = None
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._held: dict[str, Job] = {}
        self.lanes: Lanes[Job] = Lanes(lambda job: job.entry.id)
        self._seen_high: StreamId = (0, 0)  # highest id routed so far (read, claimed, adopted)
        self._reread = False  # a Redis error happened: re-read own pending before new entries
        self._reserved = 0  # window slots promised to a read or claim in progress
        self._released: set[str] = set()  # let go after a lane's unexpected error: not touched
        self._flushing: list[str] = []  # ids of the XACK in flight
        self.redis_error = ""  # the last Redis error, while Redis is away (for /readyz)
        self._lane_tasks: set[asyncio.Task[None]] = set()
        self._critical: set[asyncio.Task[Any]] = set()
        self._room = asyncio.Event()  # set when a whole batch fits (the read loop waits)
        self._room.set()
        self._some_room = asyncio.Event()  # set when one entry fits (a lane bringing back)
        self._some_room.set()
        self._closed = asyncio.Event()
        self._acks: list[str] = []
        self._ack_wakeup = asyncio.Event()
        self._systemic_alerted = False  # the one ERROR of a systemic refusal was logged
        # Held entries = posts in flight + read-ahead; posts are bounded here.
        self._posting = asyncio.Semaphore(config.max_in_flight)
        self.posting = 0  # POSTs in flight right now (at most max_in_flight)
        self._span_attrs = {
            msg_attrs.MESSAGING_SYSTEM: "redis",
            msg_attrs.MESSAGING_DESTINATION_NAME: stream.stream,
            msg_attrs.MESSAGING_CONSUMER_GROUP_NAME: stream.group,
            msg_attrs.MESSAGING_OPERATION_TYPE: "process",
        }
        self._span_name = f"process {stream.stream}"
        self.metrics.observe_in_flight(stream.stream, lambda: len(self._held))
        self.metrics.observe_lanes(stream.stream, self.lanes.blocked_for)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Tell whether stop() was called."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        """Entries held right now (read, not yet acked or dead-lettered)."""
        return len(self._held)

    def ready(self) -> bool:
        """Tell whether the replica should get traffic: Redis up, group there, breaker closed."""
        return (
            self.redis_ok and self.group_ready and not self.breaker.is_open and not self._stopping
        )

    def stop(self) -> None:
        """Ask the loop to stop; safe to call from a signal handler."""
        self._stopping = True
        self._stop_event.set()
        self._room.set()
        self._some_room.set()
        self.breaker.stop()  # lanes waiting for the probe or a backoff give up at once

    async def wait_closed(self) -> None:
        """Wait until run() has finished its shutdown."""
        await self._closed.wait()

    async def run(self) -> None:
        """Run until stop(): start-up, the read loop, then a graceful drain."""
        background = [
            asyncio.create_task(self._ack_loop(), name="ack-flusher"),
            asyncio.create_task(self._touch_loop(), name="touch"),
            asyncio.create_task(self._claim_loop(), name="claim"),
            asyncio.create_task(self._lane_watch_loop(), name="lane-watch"),
        ]
        for task in background:
            task.add_done_callback(self._background_done)
        try:
            await self._start()
            await self._read_loop()
        finally:
            await self._drain()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)
            await self._final_flush()
            await self._leave_group()
            self._closed.set()

    def _background_done(self, task: asyncio.Task[None]) -> None:
        """Log a background loop that died (it must never die quietly) and stop the worker."""
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error(
                "background task failed; stopping so a restart can take over",
                extra=log_fields(
                    task=task.get_name(), error=str(exc), error_type=type(exc).__name__
                ),
            )
            self.stop()

    async def _start(self) -> None:
        """Ensure the group exists (retrying while Redis is away), then resume own pending."""
        attempt = 0
        while not self._stopping:
            try:
                if await self.stream.ensure_group(self.config.start_id):
                    await report_new_group(self.stream, self.config.start_id)
                self.redis_ok = self.group_ready = True
                self._redis_outage_logged = False
                break
            except StreamError as exc:
                attempt += 1
                self._redis_down(exc)
                await self._pause(self.redis_backoff.delay(attempt))
        await self._resume_own_pending()

    async def _resume_own_pending(self) -> None:
        """Re-deliver what this consumer name left pending in an earlier run."""
        after = "0"
        while await self._wait_for_room():
            try:
                entries, gone = await self.stream.read_own_pending(after, self.config.batch_size)
            except StreamError as exc:
                self._redis_down(exc)
                await self._pause(self.redis_backoff.delay(1))
                continue
            self._ack_now(gone)
            if not entries:
                if not gone:
                    return
                after = gone[-1]
                continue
            log.info(
                "resuming own pending entries",
                extra=log_fields(count=len(entries), consumer=self.stream.consumer),
            )
            after = max(entries[-1].id, gone[-1] if gone else "0", key=_id_key)
            self._dispatch_all(entries)

    async def _read_loop(self) -> None:
        """Read new entries while running; pause while full, while the breaker is open.

        After a Redis error, own pending entries are re-read first (a reply lost on the way may
        have handed this consumer entries it never saw), so nothing is delayed or reordered.
        """
        failures = 0
        while not self._stopping:
            if self.breaker.is_open:
                await self._pause(0.05)
                continue
            if not await self._wait_for_room():
                break
            if self._fence_closed():
                self._fenced()  # a read now could take entries from the shard's next owner
                break
            try:
                if self._reread:
                    await self._reread_own_pending()
                    if self._free() < self.config.batch_size:
                        continue  # the re-read filled the window
                self._reserved += self.config.batch_size
                try:
                    entries = await self.stream.read(self.config.batch_size, self.config.block_ms)
                finally:
                    self._unreserve(self.config.batch_size)
            except StreamError as exc:
                if exc.missing_group and await self._recreate_group():
                    continue
                failures += 1
                self._redis_down(exc)
                await self._pause(self.redis_backoff.delay(failures))
                continue
            if self._redis_outage_logged:
                log.info("redis is back", extra=log_fields(stream=self.stream.stream))
                self._redis_outage_logged = False
            failures = 0
            self.redis_ok = True
            self.redis_error = ""
            if entries:
                self._dispatch_all(entries)

    async def _reread_own_pending(self) -> None:
        """Deliver own pending entries nobody here holds, in id order, before reading new ones.

        A read or claim whose reply was lost (timeout, reset) left entries pending on this
        consumer that it never saw. XPENDING + XRANGE find them without counting a delivery;
        those a blocked lane will bring back, and those delivered and waiting for their XACK,
        are left alone. Raises StreamError (the flag stays set: it is tried again).
        """
        self._reread = False
        cursor = "-"
        adopted = 0
        try:
            while True:
                page = await self.stream.pending(cursor, "+", _SCAN_PAGE)
                busy = self._busy_ids()
                entries, gone = await self.stream.fetch([p for p in page if p.id not in busy])
                self._ack_now(gone)
                adopted += self._adopt(entries)
                if len(page) < _SCAN_PAGE:
                    break
                cursor = f"({page[-1].id}"
        except StreamError:
            self._reread = True
            raise
        if adopted:
            log.warning(
                "after a Redis error: delivering own pending entries whose read reply was lost",
                extra=log_fields(count=adopted, consumer=self.stream.consumer),
            )

    async def _recreate_group(self) -> bool:
        """Recreate a group that vanished (Redis restarted without persistence).

        It starts from ``0``, not ``$``: entries published since the restart are delivered.
        """
        self.group_ready = False
        try:
            await self.stream.ensure_group("0")
        except StreamError:
            return False
        log.warning(
            "consumer group was missing (Redis restarted without persistence?): recreated",
            extra=log_fields(stream=self.stream.stream, group=self.stream.group),
        )
        self.group_ready = self.redis_ok = True
        return True

    async def _claim_loop(self) -> None:
        """Claim entries idle on other consumers soon after they pass BRIDGE_CLAIM_IDLE_MS.

        A pass over the group's idle pending entries starts every tenth of the idle time, so a
        dead consumer's entries are taken within 1.1x of it. This consumer's own entries are
        never claimed (see :meth:`_claim_page`).
        """
        interval = max(0.05, self.config.claim_idle_ms / 10_000)
        cursor = "-"
        failures = 0
        while not self._stopping:
            if cursor == "-":
                await self._pause(interval)
            room = self._free()
            if self._stopping or self.breaker.is_open or not self.group_ready or room < 1:
                cursor = "-"
                continue
            if self._fence_closed():
                self._fenced()  # a claim now could take entries from the shard's next owner
                break
            count = min(room, _SCAN_PAGE)
            self._reserved += count
            try:
                cursor = await self._claim_page(cursor, count)
                failures = 0
            except StreamError as exc:
                cursor = "-"
                failures += 1
                self._redis_down(exc)
                await self._pause(self.redis_backoff.delay(failures))
            finally:
                self._unreserve(count)

    async def _claim_page(self, cursor: str, count: int) -> str:
        """Claim one page of idle entries; return where the pass goes on (``-``: pass done).

        Other consumers' entries are XCLAIMed (only while still idle: a live owner that touched
        one keeps it). Own entries idle after an outage longer than the idle time are not
        claimed: the held ones are being worked on and the touch loop freshens them; the rest
        (a lost reply's, or let go after an error) are adopted, each delivered once.
        """
        page = await self.stream.pending(
            cursor, "+", count, own=False, min_idle_ms=self.config.claim_idle_ms
        )
        mine = [p for p in page if p.consumer == self.stream.consumer]
        theirs = [p for p in page if p.consumer != self.stream.consumer]
        if mine:
            busy = self._busy_ids()
            entries, gone = await self.stream.fetch([p for p in mine if p.id not in busy])
            self._ack_now(gone)
            adopted = self._adopt(entries)
            if adopted:
                log.info(
                    "own pending entries went idle unheld: delivering them",
                    extra=log_fields(count=adopted, consumer=self.stream.consumer),
                )
        if theirs:
            entries, gone = await self.stream.claim(theirs, self.config.claim_idle_ms)
            self._ack_now(gone)
            if entries:
                log.warning(
                    "reclaimed idle entries from another consumer",
                    extra=log_fields(
                        count=len(entries),
                        consumer=self.stream.consumer,
                        previous_consumers=sorted({p.consumer for p in theirs}),
                    ),
                )
                self._dispatch_all(entries)
        return f"({page[-1].id}" if len(page) == count else "-"

    async def _drain(self) -> None:
        """Let lanes finish within the grace period, then cancel what is left (stays pending)."""
        self.stop()
        if self._lane_tasks:
            _, pending = await asyncio.wait(
                set(self._lane_tasks), timeout=self.config.shutdown_grace_s
            )
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "shutdown grace period over: unfinished entries stay pending for a replica",
                    extra=log_fields(lanes=len(pending), held=len(self._held)),
                )
                await asyncio.gather(*pending, return_exceptions=True)
        if self._critical:
            await asyncio.gather(*set(self._critical), return_exceptions=True)

    async def _final_flush(self) -> None:
        """Flush buffered acks once more (shielded, a few tries)."""
        for attempt in range(1, 4):
            if not self._acks:
                return
            ids, self._acks = self._acks, []
            try:
                await asyncio.shield(self.stream.ack(ids))
            except StreamError as exc:
                self._acks = ids + self._acks
                self._redis_down(exc)
                await asyncio.sleep(self.redis_backoff.delay(attempt))
        if self._acks:
            log.error(
                "could not ack delivered entries before exit; they will be redelivered "
                "and the server will drop them as duplicates",
                extra=log_fields(count=len(self._acks)),
            )

    async def _leave_group(self) -> None:
        """Remove this consumer from the group when it holds nothing (autoscaling hygiene)."""
        try:
            if not self._held and await self.stream.remove_consumer_if_idle():
                log.info("left the consumer group", extra=log_fields(consumer=self.stream.consumer))
        except StreamError as exc:
            log.warning("could not leave the consumer group", extra=log_fields(error=str(exc)))

    # --- dispatch ----------------------------------------------------------------------------

    def _free(self) -> int:
        """How many more entries may be held: the posting window plus one batch of read-ahead."""
        held = len(self._held) + self._reserved
        return max(0, self.config.max_in_flight + self.config.batch_size - held)

    async def _wait_for_room(self, *, whole_batch: bool = True) -> bool:
        """Wait until a whole batch (or one entry) fits; False once stopping.

        The read loop waits for a whole batch (few, large reads); a lane bringing its entries
        back from Redis takes what fits, so the read loop cannot starve it.
        """
        need, event = (self.config.batch_size, self._room) if whole_batch else (1, self._some_room)
        while not self._stopping and self._free() < need:
            event.clear()
            await event.wait()
        return not self._stopping

    def _room_changed(self) -> None:
        """Wake whoever waits for room, once what they need fits."""
        free = self._free()
        if free >= self.config.batch_size:
            self._room.set()
        if free >= 1:
            self._some_room.set()

    def _unreserve(self, count: int) -> None:
        """Give back window slots promised to a read or claim that has finished."""
        self._reserved -= count
        self._room_changed()

    def _busy_ids(self) -> set[str]:
        """Ids this worker holds or has delivered and not yet acked: never to be posted again."""
        return {*self._held, *self._acks, *self._flushing}

    def _note_seen(self, entry_id: str) -> None:
        self._seen_high = max(self._seen_high, parse_id(entry_id))

    def _dispatch_all(self, entries: Sequence[Entry]) -> None:
        """Route entries just read or claimed (in id order, so the last is the highest)."""
        if entries:
            self._note_seen(entries[-1].id)
        for entry in entries:
            if entry.id not in self._held:  # a claim and a re-read may both return an entry
                self._route(self._prepare(entry))

    def _adopt(self, entries: Iterable[Entry]) -> int:
        """Route own pending entries found unheld; those a blocked lane will fetch stay in Redis.

        Returns how many were routed.
        """
        busy = self._busy_ids()
        adopted = 0
        for entry in entries:
            self._note_seen(entry.id)
            if entry.id in busy:
                continue
            job = self._prepare(entry)
            if job.signal is not None and self.lanes.waits_in_redis(
                job.signal.instrument, entry.id
            ):
                continue
            self._route(job)
            adopted += 1
        return adopted

    def _route(self, job: Job) -> None:
        """Hold a prepared entry on its lane (starting the lane), or leave it parked in Redis."""
        self._released.discard(job.entry.id)
        if self._dead_letter_at_once(job) or job.signal is None:
            return
        if job.signal.instrument in self._abandoned:
            return  # an earlier entry of it was left pending (stopping, fenced): this one too
        offer = self.lanes.offer(job.signal.instrument, job)
        if offer is Offer.PARKED:
            return
        self._held[job.entry.id] = job
        if offer is Offer.START:
            self._spawn(self._run_lane(job.signal.instrument))

    def _dead_letter_at_once(self, job: Job) -> bool:
        """Dead-letter a poison (delivered too often) or invalid entry without posting it."""
        entry = job.entry
        if entry.deliveries > self.config.max_deliveries:
            letter = DeadLetter(
                reason="max_deliveries",
                error=f"delivered {entry.deliveries} times, limit {self.config.max_deliveries}",
            )
        elif job.signal is None:
            error = job.error or InvalidSignalError("entry could not be decoded")
            letter = DeadLetter(reason=error.reason, error=str(error))
        else:
            return False
        self._held[entry.id] = job
        self._spawn(self._dead_letter_now(job, letter))
        return True

    def _prepare(self, entry: Entry) -> Job:
        """Decode and encode once per entry (see ``bridge.delivery.jobs.prepare_job``)."""
        return prepare_job(
            entry, stream=self.stream.stream, max_body_size=self.client.max_body_size
        )

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._lane_tasks.add(task)
        task.add_done_callback(self._lane_tasks.discard)

    async def _run_lane(self, instrument: str) -> None:
        """Deliver one instrument's entries in stream order, one at a time.

        While the head is retried the rest waits in Redis (``_lane_waits``); once the head is
        done, the lane brings its next entries back by id (``_refetch``) before anything newer.
        """
        lane = self.lanes.get(instrument)
        if lane is None:
            return
        CURRENT_LANE.set(instrument)  # this task's context only: _pause knows whose retry waits
        try:
            # During shutdown, queued entries are still delivered while the grace period lasts;
            # an entry abandoned mid-retry stops its lane so the order holds for the next owner.
            while True:
                if not lane.queue:
                    if not lane.has_parked or self._stopping:
                        break
                    await self._refetch(lane)
                    continue
                job = lane.queue[0]
                if job.signal is None or not await self._deliver(job, job.signal):
                    # Later entries of it (a read racing with stop()) stay pending behind it.
                    self._abandoned.add(instrument)
                    break
                if self.lanes.head_done(lane):
                    log.info(
                        "instrument moving again",
                        extra=log_fields(instrument=instrument, stream=self.stream.stream),
                    )
        except Exception as exc:  # a bug must not strand the lane's entries
            # Let go of the lane's entries: they stay pending, are no longer kept fresh, and are
            # taken again once idle past BRIDGE_CLAIM_IDLE_MS (by this replica or another).
            # Newer entries of the instrument may go first meanwhile: order is not kept here.
            log.error(
                "unexpected error delivering; the instrument's entries will be reclaimed",
                extra=log_fields(
                    instrument=instrument,
                    entries=len(lane.queue),
                    waiting_in_redis=lane.parked,
                    error=str(exc),
                    error_type=type(exc).__name__,
                ),
            )
            for job in lane.queue:
                self._release(job)
                self._released.add(job.entry.id)
        finally:
            self.lanes.remove(lane)

    def _retry_waits(self) -> None:
        """From a lane's task, before a retry waits: block that lane (no-op elsewhere)."""
        instrument = CURRENT_LANE.get()
        if instrument is not None:
            self._lane_waits(instrument)

    def _lane_waits(self, instrument: str) -> None:
        """Block a lane whose head waits for a retry: its queued entries go back to Redis."""
        lane = self.lanes.get(instrument)
        if lane is None or not lane.queue:
            return
        for job in self.lanes.block(lane):
            self._held.pop(job.entry.id, None)  # still pending in Redis, owned by this consumer
        self._room_changed()

    async def _refetch(self, lane: Lane[Job]) -> None:
        """Bring a lane's next entries back from Redis, in id order, within the read window.

        Scans this consumer's pending entries from where the lane's parked entries start, up to
        the highest id routed so far, and keeps those of the lane's instrument. XPENDING +
        XRANGE count no delivery, so waiting never pushes an entry toward max deliveries.
        """
        if not await self._wait_for_room(whole_batch=False):
            return
        want = max(1, min(self.config.batch_size, self._free()))
        self._reserved += want  # other lanes and the read loop see the slots as taken
        scan = _Scan(lane.begin_scan() or (0, 0))
        failed = False
        try:
            while len(scan.found) < want and not scan.exhausted:
                await self._scan_page(lane.instrument, scan, want)
        except StreamError as exc:
            failed = True
            self._redis_down(exc)
        finally:
            lane.end_scan(scan.cursor, exhausted=scan.exhausted, taken=len(scan.found))
            for job in scan.found:
                if not self._dead_letter_at_once(job):
                    self._held[job.entry.id] = job
                    lane.queue.append(job)
            self._unreserve(want)
        if failed:
            await self._pause(self.redis_backoff.delay(1), retry=False)

    async def _scan_page(self, instrument: str, scan: _Scan, want: int) -> None:
        """Look at one page of own pending entries for the instrument's next ones."""
        page = await self.stream.pending(
            format_id(scan.cursor), format_id(self._seen_high), _SCAN_PAGE
        )
        busy = self._busy_ids()
        entries, gone = await self.stream.fetch([p for p in page if p.id not in busy])
        self._ack_now(gone)
        by_id = {entry.id: entry for entry in entries}
        for item in page:
            scan.cursor = next_id(item.id)
            entry = by_id.get(item.id)
            if entry is None:
                continue
            job = self._prepare(entry)
            if job.signal is not None and job.signal.instrument == instrument:
                scan.found.append(job)
                if len(scan.found) >= want:
                    return
        scan.exhausted = len(page) < _SCAN_PAGE

    # --- delivery ----------------------------------------------------------------------------

    async def _deliver(self, job: Job, signal: Signal) -> bool:
        """Deliver one entry: retry transient failures until delivered, expired or stopped.

        Returns False when the entry was left pending (stop() before or between attempts: no
        new POST starts after stop, the entry stays pending for a replica).
        """
        with self.tracer.start_as_current_span(
            self._span_name,
            context=job.parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={
                **self._span_attrs,
                msg_attrs.MESSAGING_MESSAGE_ID: job.entry.id,
                "bridge.instrument": signal.instrument,
            },
        ) as span:
            while True:
                too_old = self._too_old(signal, waived=job.age_waived)
                if too_old is not None:
                    await self._dead_letter(
                        job,
                        DeadLetter(reason="expired", error=too_old, attempts=job.attempts),
                        span,
                    )
                    return True
                # After stop(): no retry, no probe, no wait for the breaker. A first attempt
                # still goes within the grace period while the server answers well (checked
                # again once a slot is free), so a healthy drain does not strand entries.
                if self._stopping and job.attempts:
                    admission = None
                else:  # a closed breaker admits at once: no coroutine for the common case
                    admission = self.breaker.try_admit() or await self.breaker.admit()
                if admission is None:
                    span.set_attribute("bridge.outcome", "abandoned")
                    return False  # stopping: leave it pending for a replica
                try:
                    result = await self._attempt(job, signal, span)
                finally:
                    if admission is Admission.PROBE:
                        self.breaker.probe_done()
                if result is None:
                    return True
                if isinstance(result, _Abandoned):
                    span.set_attribute("bridge.outcome", "abandoned")
                    return False
                # A retry is coming: the lane is blocked, its later entries wait in Redis.
                self._retry_waits()
                if not self.breaker.is_open:
                    # One entry's failure while the server is otherwise healthy: its own
                    # backoff, cut short when the breaker opens (then admit() waits for the
                    # probe) or stop() is called.
                    await self.breaker.wait(result)

    async def _attempt(
        self, job: Job, signal: Signal, span: trace.Span
    ) -> float | _Abandoned | None:
        """Make one attempt; None when the entry is finished, else the backoff before the next."""
        job.attempts += 1
        if job.attempts > 1:
            span.add_event("retry", {"bridge.attempt": job.attempts})
        try:
            outcome = await self._post(job, signal)
        except _ExpiredError as exc:
            # It aged past the limit while waiting for a posting slot.
            job.attempts -= 1
            await self._dead_letter(
                job, DeadLetter(reason="expired", error=str(exc), attempts=job.attempts), span
            )
            return None
        except _StoppedError:
            job.attempts -= 1
            return _Abandoned()
        except Exception as exc:  # our bug or a bad setting: systemic, like a 401
            log.error(
                "unexpected error posting a signal; paused and retrying",
                extra=log_fields(
                    entry_id=job.entry.id, error=str(exc), error_type=type(exc).__name__
                ),
            )
            outcome = _bug(exc)
        match outcome:
            case Delivered():
                self.breaker.success()
                self._acked(
                    job,
                    signal,
                    span,
                    outcome="success",
                    delivery=outcome,
                    http_code=outcome.http_code,
                )
            case Duplicate(status=status):
                self.breaker.success()
                self._acked(job, signal, span, outcome="duplicate", delivery=None, http_code=status)
            case Rejected(cause=cause):
                self.breaker.success()  # the server answered and judged this signal
                await self._dead_letter(job, self._rejection(job, cause), span)
            case Failed():
                return self._retry_after_failure(job, outcome)
        return None

    def _too_old(self, signal: Signal, *, waived: bool = False) -> str | None:
        """Say why ``signal`` is too old to send now, or None while fresh enough (or waived)."""
        max_age = 0.0 if waived else self.config.signal_max_age_s
        age_s = self.clock() - signal.timestamp.timestamp()
        if max_age and age_s > max_age:
            return f"signal is {age_s:.1f}s old, limit {max_age:g}s"
        return None

    async def _post(self, job: Job, signal: Signal) -> Attempt:
        """POST within a posting slot; after stop() only while the server's last answer was good."""
        async with self._posting:
            too_old = self._too_old(signal, waived=job.age_waived)  # the wait may have been long
            if too_old is not None:
                raise _ExpiredError(too_old)
            if self._stopping and (self.breaker.is_open or self.breaker.consecutive_failures):
                raise _StoppedError  # a slot freed by a failure: the server is not draining
            if self._fence_closed():
                self._fenced()
                raise _StoppedError  # the shard's lease is lost or expiring: leave it pending
            self.posting += 1
            try:
                return await self._send(job, signal)
            finally:
                self.posting -= 1

    async def _send(self, job: Job, signal: Signal) -> Attempt:
        return await self.client.attempt(
            job.body, idempotency_key=job.key, signal_id=signal.signal_id
        )

    def _rejection(self, job: Job, exc: RejectedError | InvalidSignalError) -> DeadLetter:
        if isinstance(exc, InvalidSignalError):
            return DeadLetter(reason=exc.reason, error=str(exc), attempts=job.attempts)
        detail = f"{exc}: {_short(exc.details)}" if exc.details is not None else str(exc)
        return DeadLetter(
            reason="rejected", error=detail, http_code=exc.http_code, attempts=job.attempts
        )

    def _retry_after_failure(self, job: Job, failed: Failed) -> float:
        """Count a transient or systemic failure, log it, and return the entry's backoff.

        A systemic answer opens the breaker at once and logs one ERROR naming the likely cause;
        later refusals until the breaker closes again are WARNINGs.
        """
        exc = failed.cause
        systemic = failed.verdict.action is Action.SYSTEMIC
        if exc.outcome is Outcome.AUTH:
            reason = "auth"
        elif systemic:
            reason = "systemic"
        else:
            reason = str(failed.status) if failed.status else "network"
        self.breaker.failure(reason, systemic=systemic, retry_after_s=failed.retry_after_s)
        delay = self.backoff.delay(job.attempts, failed.retry_after_s)
        self.stats.retries += 1
        self.metrics.retries_total.add(1, {"reason": reason})
        fields = log_fields(
            entry_id=job.entry.id,
            signal_id=job.signal.signal_id if job.signal else None,
            http_code=failed.status,
            error=str(exc),
            error_type=type(exc).__name__,
            attempt=job.attempts,
            retry_in_s=round(self.breaker.next_probe_in_s if self.breaker.is_open else delay, 3),
        )
        if systemic and not self._systemic_alerted:
            self._systemic_alerted = True  # once per outage: reset when the breaker closes
            cause = failed.verdict.cause
            skew = self.client.clock_skew_s
            if skew is not None:
                fields = log_fields(**fields["fields"], server_clock_skew_s=round(skew, 1))
            log.error(
                "ingest server refuses every signal alike: delivery paused (no ack, no dead "
                f"letter), probing until it answers; likely cause: {cause}",
                extra=fields,
            )
        else:
            log.warning("delivery failed, will retry", extra=fields)
        return delay

    def _acked(
        self,
        job: Job,
        signal: Signal,
        span: trace.Span,
        *,
        outcome: str,
        delivery: Delivered | None,
        http_code: int | None,
    ) -> None:
        """Buffer the ack of a delivered entry and record it."""
        self._release(job)
        self._acks.append(job.entry.id)
        self._ack_wakeup.set()
        span.set_attribute("bridge.outcome", outcome)
        self.metrics.acked_total.add(1, {"outcome": outcome})
        if outcome == "duplicate":
            self.stats.duplicates += 1
        else:
            self.stats.delivered += 1
            age_s = self.clock() - signal.timestamp.timestamp()
            self.metrics.signal_age.record(max(0.0, age_s))
        # The one INFO line per delivery: log_info writes it straight into the JSON handler's
        # buffer when logging is as shipped, else it is exactly log.info(..., extra=...).
        log_info(
            log,
            "signal delivered" if outcome == "success" else "signal already on the server",
            {
                "producer_id": self.client.producer_id,
                "entry_id": job.entry.id,
                "signal_id": signal.signal_id,
                "server_signal_id": (
                    delivery.response.signal_id if delivery and delivery.response else None
                ),
                "instrument": signal.instrument,
                "http_code": http_code,
                "duration_ms": round(delivery.duration_s * 1000, 3) if delivery else None,
                "attempts": job.attempts,
                "outcome": outcome,
            },
        )

    def _release(self, job: Job) -> None:
        if not job.done:
            job.done = True
            self._held.pop(job.entry.id, None)
            if not (self._room.is_set() and self._some_room.is_set()):
                self._room_changed()

    async def _dead_letter_now(self, job: Job, letter: DeadLetter) -> None:
        """Dead-letter an entry that is never posted (invalid, poison), in its own span."""
        with self.tracer.start_as_current_span(
            self._span_name,
            context=job.parent,
            kind=trace.SpanKind.CONSUMER,
            attributes={**self._span_attrs, msg_attrs.MESSAGING_MESSAGE_ID: job.entry.id},
        ) as span:
            await self._dead_letter(job, letter, span)

    async def _dead_letter(self, job: Job, letter: DeadLetter, span: trace.Span) -> None:
        """Write the dead letter + XACK atomically; retried while Redis is away, never split."""
        task = asyncio.create_task(self._write_dead_letter(job, letter))
        self._critical.add(task)
        task.add_done_callback(self._critical.discard)
        span.set_attribute("bridge.outcome", "dead_letter")
        span.set_attribute("bridge.reason", letter.reason)
        span.set_status(trace.Status(trace.StatusCode.ERROR, letter.reason))
        await asyncio.shield(task)

    async def _write_dead_letter(self, job: Job, letter: DeadLetter) -> None:
        attempt = 0
        while True:
            try:
                await self.stream.dead_letter(job.entry, letter)
                break
            except StreamError as exc:
                attempt += 1
                self._redis_down(exc)
                if self._stopping and attempt >= 3:
                    log.error(
                        "could not write a dead letter before exit; the entry stays pending",
                        extra=log_fields(entry_id=job.entry.id, reason=letter.reason),
                    )
                    self._release(job)
                    return
                await asyncio.sleep(self.redis_backoff.delay(attempt))
        self._release(job)
        self.stats.dead_lettered[letter.reason] = self.stats.dead_lettered.get(letter.reason, 0) + 1
        self.metrics.dead_lettered_total.add(1, {"reason": letter.reason})
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
                dlq_stream=self.stream.dlq_stream,
            ),
        )

    # --- background loops --------------------------------------------------------------------

    def _ack_now(self, ids: list[str]) -> None:
        """Ack ids of entries deleted from the stream while pending (nothing to deliver).

        Their signals are gone (XDEL, or a MAXLEN trim that outran delivery): say so loudly and
        count them, since nobody can replay them.
        """
        if ids:
            log.error(
                "pending entries were deleted from the stream before delivery; acking them away",
                extra=log_fields(count=len(ids), entry_ids=ids[:20], stream=self.stream.stream),
            )
            self.metrics.dead_lettered_total.add(len(ids), {"reason": "deleted"})
            self._acks.extend(ids)
            self._ack_wakeup.set()

    async def _ack_loop(self) -> None:
        """Flush buffered acks in one XACK per burst; keep them on failure and retry."""
        attempt = 0
        while True:
            await self._ack_wakeup.wait()
            if len(self._acks) < self.config.batch_size:
                # Gather a burst into one XACK; an ack a few ms later only matters after a
                # crash, and then the server drops the redelivery as a duplicate.
                await asyncio.sleep(_ACK_COALESCE_S)
            self._ack_wakeup.clear()
            if not self._acks:
                continue
            ids, self._acks = self._acks, []
            self._flushing = ids
            flush = asyncio.ensure_future(self.stream.ack(ids))
            try:
                await asyncio.shield(flush)
                attempt = 0
                self._flushing = []
            except asyncio.CancelledError:
                # stop() cancelled the loop mid-XACK: give the ids back to _final_flush (XACK
                # is idempotent) and collect the orphaned attempt's outcome.
                self._acks = ids + self._acks
                self._flushing = []
                flush.add_done_callback(_collect)
                raise
            except StreamError as exc:
                self._acks = ids + self._acks
                self._flushing = []
                attempt += 1
                self._redis_down(exc)
                await asyncio.sleep(self.redis_backoff.delay(attempt))
                self._ack_wakeup.set()

    async def _touch_loop(self) -> None:
        """Keep the idle time of owned entries fresh so no replica reclaims them."""
        interval = max(0.05, self.config.claim_idle_ms / 3000)
        while True:
            await asyncio.sleep(interval)
            if self._fence_closed():
                return  # a fenced worker must not pull entries back from the shard's new owner
            try:
                await self._touch_once()
            except StreamError as exc:
                self._redis_down(exc)

    async def _touch_once(self) -> None:
        """Touch held entries, and the pending entries blocked lanes keep waiting in Redis.

        Waiting entries are not in memory: every own pending entry from the lowest parked id on
        is touched (XPENDING pages), except those let go after an error.
        """
        ids = list(self._held)
        for start in range(0, len(ids), _TOUCH_CHUNK):
            await self.stream.touch(ids[start : start + _TOUCH_CHUNK])
        low = self.lanes.lowest_parked()
        if low is None:
            self._released.clear()  # only kept out of the parked range's touches
            return
        held = set(ids)
        cursor = format_id(low)
        while True:
            page = await self.stream.pending(cursor, "+", _TOUCH_CHUNK)
            await self.stream.touch(
                [p.id for p in page if p.id not in held and p.id not in self._released]
            )
            if len(page) < _TOUCH_CHUNK:
                return
            cursor = f"({page[-1].id}"

    async def _lane_watch_loop(self) -> None:
        """Warn once per episode about a lane blocked past BRIDGE_LANE_STALL_WARN_SECONDS."""
        threshold = self.config.lane_stall_warn_s
        interval = max(0.05, min(1.0, threshold / 4))
        while True:
            await asyncio.sleep(interval)
            for lane in self.lanes.newly_stalled(threshold):
                head = lane.queue[0] if lane.queue else None
                log.warning(
                    "instrument blocked: its later signals wait until this one is delivered",
                    extra=log_fields(
                        instrument=lane.instrument,
                        blocked_over_s=threshold,
                        entry_id=head.entry.id if head else None,
                        attempts=head.attempts if head else None,
                        waiting_in_redis=lane.parked,
                        stream=self.stream.stream,
                    ),
                )

    async def _pause(self, seconds: float, *, retry: bool = True) -> None:
        """Sleep, but wake at once when stop() is called.

        Called from a lane's task for a retry's backoff, it first marks the lane blocked, so the
        instrument's later entries wait in Redis instead of holding the read window.
        """
        if retry:
            self._retry_waits()
        if seconds <= 0 or self._stopping:
            await asyncio.sleep(0)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop_event.wait(), seconds)

    def _redis_down(self, exc: StreamError) -> None:
        """Log the first failure of an outage, and each change of its kind; quiet until back.

        The line names Redis's error code (OOM, READONLY, LOADING, BUSY ...) and its meaning.
        Any Redis error may have eaten a reply that handed this consumer entries: own pending
        entries are re-read before the next new read.
        """
        if not self._redis_outage_logged or exc.code != self._redis_outage_code:
            log.error(
                "redis unavailable, retrying"
                if exc.code is None
                else f"redis refused a command ({exc.code}), retrying",
                extra=log_fields(
                    error=str(exc),
                    stream=self.stream.stream,
                    redis_error=exc.code,
                    meaning=exc.meaning or None,
                ),
            )
            self._redis_outage_logged = True
            self._redis_outage_code = exc.code
        self.redis_ok = False
        self.redis_error = str(exc)
        self._reread = True

    def _fence_closed(self) -> bool:
        """Tell whether the fence forbids posting and reading (never without a fence)."""
        return self.fence is not None and (self.fenced or not self.fence())

    def _fenced(self) -> None:
        """Stop posting and reading at once: this replica no longer owns the stream's shard."""
        if not self.fenced:
            self.fenced = True
            log.warning(
                "shard lease lost or expiring: stopped posting, entries left pending for the "
                "next owner",
                extra=log_fields(stream=self.stream.stream, held=len(self._held)),
            )
        self.stop()

    def _breaker_changed(self, state: BreakerState, reason: str) -> None:
        """Log the breaker's transitions (the systemic ERROR with its cause is logged apart)."""
        if state is BreakerState.OPEN:
            log.warning(
                "circuit breaker open: reading paused, one probe at a time",
                extra=log_fields(reason=reason, probe_in_s=round(self.breaker.next_probe_in_s, 3)),
            )
        else:
            self._systemic_alerted = False
            log.info("circuit breaker closed: delivery resumed, every lane woken")


class _ExpiredError(Exception):
    """The signal passed its maximum age while waiting to be sent."""


class _StoppedError(Exception):
    """stop() was called while the attempt waited for a posting slot: nothing was sent."""


class _Abandoned:
    """An attempt that did not start because the worker is stopping."""

    __slots__ = ()


def _bug(exc: Exception) -> Failed:
    """Judge an attempt that raised as systemic, so the breaker pauses delivery and probes."""
    cause = "a bug or a bad setting"
    systemic = SystemicError(f"unexpected {type(exc).__name__}: {exc}", cause=cause)
    return Failed(
        verdict=Verdict(Action.SYSTEMIC, cause), status=None, retry_after_s=None, cause=systemic
    )


def _collect(task: asyncio.Future[Any]) -> None:
    """Retrieve a finished background task's exception so asyncio does not report it."""
    if not task.cancelled():
        task.exception()


def _id_key(entry_id: str) -> tuple[int, int]:
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _short(details: object, limit: int = 512) -> str:
    text = details if isinstance(details, str) else repr(details)
    return text[:limit]
