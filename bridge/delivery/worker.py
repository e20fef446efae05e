"""The consumer loop: read or reclaim -> deliver -> ack | retry | dead-letter.

One ``Worker`` per stream (the runner's ownership strategy starts one per shard it owns). It reads
batches with XREADGROUP (BLOCK, so idle costs nothing), holds at most ``max_in_flight`` plus one
batch of entries in memory (:mod:`~bridge.delivery.window`; each decoded once into a job by
:mod:`~bridge.delivery.jobs`), and delivers each instrument's signals in stream order through a
*lane* (one task per instrument with work queued; different instruments run in parallel). A lane
whose head is being retried keeps its later entries in Redis, not in memory
(:mod:`~bridge.delivery.lanes`), so reading goes on for the other instruments.

``Worker`` is a facade: it reads and routes, and wires collaborators that each get only the
callables they need. :mod:`~bridge.delivery.attempts` delivers one entry (outcome values,
backoff, the breaker of :mod:`~bridge.delivery.breaker`); :mod:`~bridge.delivery.acks` flushes
acks in one XACK per burst and touches owned entries so no replica reclaims them;
:mod:`~bridge.delivery.letters` writes a dead letter and its ack in one script;
:mod:`~bridge.delivery.recovery` resumes own pending entries, re-reads them after any Redis
error (a lost reply delays nothing), claims entries idle on other consumers and brings a
blocked lane's entries back; :mod:`~bridge.delivery.redis_link` retries Redis and logs its
outages; :mod:`~bridge.delivery.observer` reports every event. No new POST starts after
``stop()``, which only flips a flag: the loop stops reading, lets lanes finish within the grace
period, cancels the rest (they stay pending for a replica) and flushes what finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from opentelemetry import trace

from bridge.core.signal import Signal
from bridge.delivery.acks import Acks, Toucher
from bridge.delivery.attempts import Attempts
from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Breaker
from bridge.delivery.fence import ShardFence
from bridge.delivery.jobs import Job, prepare_job
from bridge.delivery.lanes import Lane, Lanes
from bridge.delivery.letters import DeadLetters
from bridge.delivery.observer import DeliveryObserver, WorkerStats
from bridge.delivery.outages import OutageLog
from bridge.delivery.receipting import acked_receipt
from bridge.delivery.recovery import Recovery
from bridge.delivery.redis_link import RedisLink
from bridge.delivery.router import Router
from bridge.delivery.window import Window
from bridge.edge.client import HmacClient
from bridge.edge.results import Attempt, Delivered, Duplicate
from bridge.errors import StreamError
from bridge.streams.entries import Entry
from bridge.streams.group import SignalStream, report_new_group
from bridge.streams.receipt_writer import receipt_writer
from bridge.streams.settings import StreamConfig
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import get_tracer

__all__ = ["Worker", "WorkerStats"]

log = logging.getLogger("bridge.worker")


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
        outages: OutageLog | None = None,
    ) -> None:
        self.stream = stream
        self.client = client
        self.config = config
        self.metrics = metrics if metrics is not None else Metrics()
        self.tracer = tracer if tracer is not None else get_tracer()
        self.backoff = backoff or Backoff(
            config.backoff_base_ms / 1000,
            config.backoff_cap_ms / 1000,
            retry_after_cap_s=config.retry_after_cap_s,
        )
        self.redis_backoff = redis_backoff or Backoff(0.1, 5.0)
        self.breaker = breaker or Breaker(
            config.breaker_threshold,
            probe_interval_s=config.probe_interval_ms / 1000,
            retry_after_cap_s=config.retry_after_cap_s,
        )
        self.clock = clock
        # Strict ordering: False once this replica may no longer post or read for the stream
        # (its shard lease is lost or about to expire). Checked right before each POST, read,
        # claim, touch, ack and dead letter; see bridge.ownership. A ShardFence also carries
        # the lease: its stamp goes with every POST, its key and value into the write scripts.
        self.fence = fence
        self.lease = fence if isinstance(fence, ShardFence) else None
        lease_check = None if self.lease is None else (self.lease.lease_key, self.lease.lease_value)
        self.fenced = False
        self._resuming = False  # entries routed now were pending before this worker started
        self.group_ready = False
        self.lanes: Lanes[Job] = Lanes(lambda job: job.entry.id)
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._closed = asyncio.Event()
        self._window = Window(config.max_in_flight, config.batch_size)
        self._rules = config.signal_rules()
        self._max_body_size = client.max_body_size
        self._link = RedisLink(
            stream.stream, self.redis_backoff, self._stop_event, on_error=self._reread_later
        )
        self._receipts = receipt_writer(stream, config)
        self._acks = Acks(
            stream,
            self._link,
            self.metrics,
            batch_size=config.batch_size,
            receipts=self._receipts,
            lease=lease_check,
            fence_closed=self._fence_closed,
            fenced=self._fenced,
        )
        self._observer = DeliveryObserver(
            stream,
            metrics=self.metrics,
            tracer=self.tracer,
            producer_id=client.producer_id,
            clock=clock,
            clock_skew_s=lambda: client.clock_skew_s,
            probe_in_s=self._probe_in_s,
            outages=outages,
        )
        self.breaker.on_change = self._observer.on_breaker
        self._letters = DeadLetters(
            stream,
            self._link,
            self._observer,
            release=self._window.release,
            let_go=self._let_go,
            stopping=lambda: self._stopping,
            fence_closed=self._fence_closed,
            receipts=self._receipts,
            lease=lease_check,
            fenced=self._fenced,
        )
        self._router = Router(
            self._window,
            self.lanes,
            max_deliveries=config.max_deliveries,
            prepare=self._prepare,
            unacked=self._acks.unsent,
            run_lane=self._run_lane,
            dead_letter_now=self._letters.write_now,
            deferred=self._letters.deferred,
        )
        self._attempts = Attempts(
            send=self._send,
            max_in_flight=config.max_in_flight,
            max_age_s=config.signal_max_age_s,
            # An old owner's POST can land until it times out: twice that, for skewed clocks.
            takeover_grace_s=2 * client.timeout_s,
            breaker=self.breaker,
            backoff=self.backoff,
            clock=clock,
            observer=self._observer,
            letters=self._letters,
            acked=self._acked,
            block=self._block,
            stopping=lambda: self._stopping,
            # Without a fence nothing can close it: no call before each POST.
            fence_closed=None if fence is None else self._fence_closed,
            fenced=self._fenced,
        )
        self._recovery = Recovery(
            stream,
            self._window,
            self._link,
            batch_size=config.batch_size,
            claim_idle_ms=config.claim_idle_ms,
            busy=self._router.busy,
            gone=self._acks.gone,
            dispatch=self._router.dispatch,
            adopt=self._router.adopt,
            prepare=self._prepare,
            take_back=self._router.take_back,
            seen_high=lambda: self._router.seen_high,
            stopping=lambda: self._stopping,
            may_claim=self._may_claim,
            fence_closed=self._fence_closed,
        )
        self._toucher = Toucher(
            stream,
            self._link,
            claim_idle_ms=config.claim_idle_ms,
            held=lambda: self._window.held,
            lowest_parked=self.lanes.lowest_parked,
            released=self._router.released,
            fence_closed=self._fence_closed,
        )
        self.metrics.observe_in_flight(stream.stream, lambda: len(self._window))
        self.metrics.observe_lanes(stream.stream, self.lanes.blocked_for)
        self.metrics.observe_dead_letters_writable(stream.stream, lambda: self._letters.health.ok)

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Tell whether stop() was called."""
        return self._stopping

    @property
    def in_flight(self) -> int:
        """Entries held right now (read, not yet acked or dead-lettered)."""
        return len(self._window)

    @property
    def posting(self) -> int:
        """POSTs in flight right now (at most max_in_flight)."""
        return self._attempts.posting

    @property
    def stats(self) -> WorkerStats:
        """Counts since start, for the demo, tests and status lines."""
        return self._observer.stats

    @stats.setter
    def stats(self, stats: WorkerStats) -> None:
        self._observer.stats = stats  # a runner may keep one WorkerStats per stream across runs

    @property
    def redis_ok(self) -> bool:
        """Tell whether Redis answered the last command."""
        return self._link.ok

    @property
    def redis_error(self) -> str:
        """The last Redis error, while Redis is away (for /readyz)."""
        return self._link.error

    @property
    def redis_lost_at(self) -> float | None:
        """When (monotonic) the worker's connection to Redis last failed, while it is down."""
        return None if self._link.ok else self._link.lost_at

    @property
    def dead_letter_error(self) -> str:
        """Why the dead-letter stream refuses letters ("" while it takes them)."""
        return self._letters.health.error

    def ready(self) -> bool:
        """Tell whether the replica should get traffic: Redis up, group there, breaker closed."""
        return (
            self._link.ok
            and self.group_ready
            and not self.breaker.is_open
            and not self._stopping
            and self._letters.health.ok
        )

    def stop(self) -> None:
        """Ask the loop to stop; safe to call from a signal handler."""
        self._stopping = True
        self._stop_event.set()
        self._window.stop()
        self.breaker.stop()  # lanes waiting for the probe or a backoff give up at once

    async def wait_closed(self) -> None:
        """Wait until run() has finished its shutdown."""
        await self._closed.wait()

    async def run(self) -> None:
        """Run until stop(): start-up, the read loop, then a graceful drain."""
        background = [
            asyncio.create_task(self._acks.loop(), name="ack-flusher"),
            asyncio.create_task(self._toucher.loop(), name="touch"),
            asyncio.create_task(self._claim(), name="claim"),
            asyncio.create_task(
                self._observer.watch_lanes(self.lanes, self.config.lane_stall_warn_s),
                name="lane-watch",
            ),
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
            await self._acks.final_flush()
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
        if not self._stopping:
            with contextlib.suppress(StreamError):  # stopped while Redis was away
                await self._link.call(self._ensure_group)
        self._resuming = True
        try:
            await self._recovery.resume_own_pending()
        finally:
            self._resuming = False

    async def _ensure_group(self) -> None:
        if await self.stream.ensure_group(self.config.start_id):
            await report_new_group(self.stream, self.config.start_id, self.metrics)
        self.group_ready = True
        self._link.started()

    async def _read_loop(self) -> None:
        """Read new entries while running; pause while full, while the breaker is open.

        After a Redis error, own pending entries are re-read first (a reply lost on the way may
        have handed this consumer entries it never saw), so nothing is delayed or reordered.
        """
        batch = self.config.batch_size
        failures = 0
        while not self._stopping:
            if self.breaker.is_open:
                await self._link.pause(0.05)
                continue
            if not await self._window.wait_for_room():
                break
            if self._fence_closed():
                self._fenced()  # a read now could take entries from the shard's next owner
                break
            try:
                if self._recovery.reread:
                    await self._recovery.reread_own_pending()
                    if self._window.free() < batch:
                        continue  # the re-read filled the window
                with self._window.reserved(batch):
                    entries = await self.stream.read(batch, self.config.block_ms)
            except StreamError as exc:
                if exc.missing_group and await self._recreate_group():
                    continue
                failures += 1
                await self._link.after(exc, failures)
                continue
            self._link.recovered()
            failures = 0
            if entries:
                self._router.dispatch(entries)

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
        self.group_ready = self._link.ok = True
        return True

    async def _claim(self) -> None:
        """Run the claim loop; stop the worker when the fence closes under it."""
        if await self._recovery.claim_loop():
            self._fenced()  # a claim now could take entries from the shard's next owner

    async def _drain(self) -> None:
        """Let lanes finish within the grace period, then cancel what is left (stays pending)."""
        self.stop()
        if self._router.tasks:
            _, pending = await asyncio.wait(
                set(self._router.tasks), timeout=self.config.shutdown_grace_s
            )
            for task in pending:
                task.cancel()
            if pending:
                log.warning(
                    "shutdown grace period over: unfinished entries stay pending for a replica",
                    extra=log_fields(lanes=len(pending), held=len(self._window)),
                )
                await asyncio.gather(*pending, return_exceptions=True)
        await self._letters.drain()

    async def _leave_group(self) -> None:
        """Remove this consumer from the group when it holds nothing (autoscaling hygiene)."""
        try:
            if not self._window.held and await self.stream.remove_consumer_if_idle():
                log.info("left the consumer group", extra=log_fields(consumer=self.stream.consumer))
        except StreamError as exc:
            log.warning("could not leave the consumer group", extra=log_fields(error=str(exc)))

    def _prepare(self, entry: Entry) -> Job:
        """Decode and encode once per entry (see ``bridge.delivery.jobs.prepare_job``).

        Strict ordering: an entry found pending when the worker starts (taken over from the
        shard's previous owner, or left by this consumer) is sent once even a little past the
        age limit, up to twice the POST timeout more: the previous owner may have posted it, so
        the server's answer decides (see "Order across replicas" in the README).
        """
        job = prepare_job(
            entry,
            stream=self.stream.stream,
            max_body_size=self._max_body_size,
            rules=self._rules,
            now=self.clock(),
        )
        if self._resuming and self.lease is not None:
            job.resend_first = True
        return job

    # --- lanes -------------------------------------------------------------------------------

    async def _run_lane(self, instrument: str) -> None:
        """Deliver one instrument's entries in stream order, one at a time.

        While the head is retried the rest waits in Redis (``_block``); once the head is done,
        the lane brings its next entries back by id (``Recovery.refetch``) before anything newer.
        """
        lane = self.lanes.get(instrument)
        if lane is None:
            return
        try:
            # During shutdown, queued entries are still delivered while the grace period lasts;
            # an entry abandoned mid-retry stops its lane so the order holds for the next owner.
            while True:
                if not lane.queue:
                    if not lane.has_parked or self._stopping:
                        break
                    await self._recovery.refetch(lane)
                    continue
                job = lane.queue[0]
                if job.signal is None or not await self._attempts.deliver(job, job.signal, lane):
                    # Later entries of it (a read racing with stop()) stay pending behind it.
                    self._router.abandoned.add(instrument)
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
                self._window.release(job)
                self._router.released.add(job.entry.id)
        finally:
            self.lanes.remove(lane)

    def _block(self, lane: Lane[Job]) -> None:
        """Block a lane whose head waits for a retry: its queued entries go back to Redis."""
        if lane.queue:
            self._window.send_back(self.lanes.block(lane))

    # --- delivery ----------------------------------------------------------------------------

    def _send(self, job: Job, signal: Signal) -> Awaitable[Attempt]:
        """POST one job's canonical body; what came of it, as a value.

        Returns the client's own coroutine for the caller to await: no frame of ours between.
        """
        return self.client.attempt(
            job.body,
            idempotency_key=job.key,
            signal_id=signal.signal_id,
            lease=None if self.lease is None else self.lease.stamp,
        )

    def _acked(self, job: Job, outcome: Delivered | Duplicate) -> None:
        """Let go of a delivered entry and buffer its ack (and its receipt, when on)."""
        self._window.release(job)
        if self._receipts is None:
            self._acks.add(job.entry.id)
            return
        stream = self.stream
        receipt = acked_receipt(job, outcome, stream=stream.stream, consumer=stream.consumer)
        self._acks.add(job.entry.id, receipt)

    def adopt_pending(self) -> None:
        """Deliver own pending entries nobody here holds (moved here from another consumer).

        They go in id order before the next read; see ``Recovery.reread_own_pending``.
        """
        self._recovery.reread = True

    def _let_go(self, job: Job) -> None:
        """Leave an entry pending in Redis, unheld and not kept fresh (its letter was refused).

        The claim scan brings it back once it is idle past BRIDGE_CLAIM_IDLE_MS.
        """
        self._window.release(job)
        self._router.released.add(job.entry.id)

    def _reread_later(self) -> None:
        """Any Redis error may have eaten a reply that handed this consumer entries."""
        self._recovery.reread = True

    def _may_claim(self) -> bool:
        return not self._stopping and not self.breaker.is_open and self.group_ready

    def _probe_in_s(self) -> float | None:
        return self.breaker.next_probe_in_s if self.breaker.is_open else None

    def _fence_closed(self) -> bool:
        """Tell whether the fence forbids posting and reading (never without a fence)."""
        return self.fence is not None and (self.fenced or not self.fence())

    def _fenced(self, current_token: int | None = None) -> None:
        """Stop posting and reading at once: this replica no longer owns the stream's shard.

        ``current_token``: the server refused our lease as stale (it accepted that token).
        """
        if current_token is not None and self.lease is not None:
            self.lease.refused(current_token)
        if not self.fenced:
            self.fenced = True
            if current_token is None:
                log.warning(
                    "shard lease lost or expiring: stopped posting, entries left pending for "
                    "the next owner",
                    extra=log_fields(stream=self.stream.stream, held=len(self._window)),
                )
            else:
                log.warning(
                    "the server refused this shard's lease as stale: dropped the shard, "
                    "entries left pending for its owner",
                    extra=log_fields(
                        stream=self.stream.stream,
                        held=len(self._window),
                        fencing_token=None if self.lease is None else self.lease.stamp.token,
                        server_token=current_token,
                    ),
                )
        self.stop()
