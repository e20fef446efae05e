"""Shard ownership for ``BRIDGE_ORDERING=strict``: membership, assignment, leases, fencing.

The split follows Kafka's consumer group: *membership* (each replica sends a heartbeat; the live
replicas are those whose heartbeat has not expired), *assignment*
(:func:`~bridge.ownership.assign.assign`, a pure function of the sorted live list and the shard
list, so every replica computes the same answer) and *ownership* (:class:`Coordinator`: a shard is
worked on only by the holder of its lease, a Redis key set NX with a TTL and a fencing token
INCRed per acquisition).

Rebalancing is cooperative: a replica that holds a shard it is no longer assigned drains its
worker (stop reading, finish, ack) and then releases the lease; the replica it now belongs to
acquires it, first moves every pending entry of the shard to itself (XAUTOCLAIM at idle 0), and
only then starts a :class:`~bridge.delivery.worker.Worker`, which re-delivers those entries in id
order before it reads new ones. A holder that cannot renew fences itself on its own monotonic
clock (:class:`~bridge.ownership.assign.Lease`): it stops posting before Redis can expire the
lease. The runner hears of each shard's worker through a
:class:`~bridge.ownership.strategy.ShardListener`.

Membership follows the leases: a replica whose lease calls (a heartbeat, a renewal) take longer
than half the TTL or keep failing, that loses a lease, or that fails to acquire an assigned shard
three times in a row, says in its heartbeats that it is not assignable for one TTL after the last
such sign. The others then
assign without it, so a slow replica's late heartbeats cannot pull shards back to it that it
could not hold; with no assignable replica live, every live one is assigned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import msgspec
from opentelemetry.metrics import CallbackOptions, Observation

from bridge.core.fencing import LeaseStamp
from bridge.delivery.fence import ShardFence
from bridge.delivery.worker import Worker
from bridge.errors import StreamError
from bridge.ownership.assign import Lease, assign
from bridge.ownership.leases import LeaseStore, claim_strays, take_pending
from bridge.ownership.strategy import WORKER_EXIT_EXTRA_S, ShardListener, WorkerFactory
from bridge.streams.group import SignalStream, report_new_group
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics

__all__ = ["OWNED_SHARDS_METRIC", "Coordinator", "CoordinatorSettings"]

log = logging.getLogger("bridge.ownership")

OWNED_SHARDS_METRIC: Final = "signals_owned_shards"
# While a shard assigned to this replica is still held elsewhere, ask again this often (ms).
_FAST_POLL_MS: Final = 100
# Otherwise the member list is read this often (a heartbeat each time), so a replica that died
# or joined is noticed within this much of its heartbeat expiring or appearing.
_TICK_MS: Final = 500
# Acquisitions of an assigned shard failing this many times in a row pass this replica over.
_ACQUIRE_FAILURES: Final = 3


class CoordinatorSettings(msgspec.Struct, frozen=True, kw_only=True):
    """What the coordinator needs from the stream settings (BRIDGE_* values, units in names)."""

    member: str  # this replica's name among the live replicas (BRIDGE_CONSUMER)
    start_id: str  # where a shard's group starts when the coordinator creates it
    lease_ttl_ms: int
    lease_renew_ms: int
    heartbeat_ttl_ms: int
    shutdown_grace_s: float


@dataclass(slots=True)
class _Owned:
    """A shard this replica holds: its lease, its worker and that worker's task."""

    lease: Lease
    worker: Worker
    task: asyncio.Task[None]
    acquired_at: float
    releasing: bool = False
    revoked: bool = False  # the listener was told this worker no longer counts


class Coordinator:
    """One per replica: heartbeats, takes its share of shards, runs a Worker per held shard."""

    def __init__(
        self,
        leases: LeaseStore,
        streams: Sequence[SignalStream],
        settings: CoordinatorSettings,
        worker_factory: WorkerFactory,
        *,
        listener: ShardListener | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        instance: str | None = None,
    ) -> None:
        self.leases = leases
        self.streams = {stream.stream: stream for stream in streams}
        self.shards = [stream.stream for stream in streams]
        self.settings = settings
        self.worker_factory = worker_factory
        self.listener = listener
        self.clock = clock
        self.metrics = metrics
        self.member = settings.member
        # The lease value names this process, not just the consumer: a restarted replica with
        # the same name waits for its predecessor's lease to expire instead of sharing it.
        self.owner = f"{settings.member} {instance or uuid.uuid4().hex[:12]}"
        self.owned: dict[str, _Owned] = {}
        self.live: list[str] = []
        self.target: list[str] = []
        self._ttl_ms = settings.lease_ttl_ms
        self._renew_s = settings.lease_renew_ms / 1000
        self._stopping = False
        self._stop_event = asyncio.Event()
        self._releases: set[asyncio.Task[None]] = set()
        self._heartbeat_failing = False
        self._redis_down = False  # "redis unavailable" was said; "redis is back" is owed
        self._heartbeat_task: asyncio.Future[list[str]] | None = None
        self._heartbeat_asked = 0.0
        self._heartbeat_flag = True  # the assignable flag the heartbeat in flight carries
        self._late_heartbeats: set[asyncio.Future[list[str]]] = set()
        # Not assignable until this monotonic time: Redis was too slow or failing for leases.
        self._unfit_until = 0.0
        self._unfit_reported = False
        # A lease call (answered or not) that took this long means the leases cannot be kept:
        # two more like it and the fence closes.
        self._slow_s = settings.lease_ttl_ms / 2000
        self._acquire_failures = 0  # in a row; at _ACQUIRE_FAILURES this replica is passed over
        self._stale_tokens: dict[str, int] = {}  # shard -> token the server named refusing ours
        self.left_pending = 0  # entries still held by workers when the hand-over let them go
        if metrics is not None:
            metrics.meter.create_observable_gauge(
                OWNED_SHARDS_METRIC,
                callbacks=[self._owned_callback],
                description="Shards whose lease this replica holds (BRIDGE_ORDERING=strict)",
            )

    # --- lifecycle ---------------------------------------------------------------------------

    @property
    def stopping(self) -> bool:
        """Tell whether stop() was called."""
        return self._stopping

    def stop(self) -> None:
        """Ask run() to hand every shard over; safe to call from a signal handler."""
        self._stopping = True
        self._stop_event.set()
        for owned in self.owned.values():
            owned.worker.stop()

    async def run(self) -> None:
        """Balance shards until stop(), then drain, ack and release every lease."""
        # Renewals run on their own, so a slow acquisition (a large takeover) never delays them.
        renewer = asyncio.create_task(self._renew_loop(), name="lease renewals")
        try:
            while not self._stopping:
                await self._tick()
                balanced = set(self.target) <= set(self.owned)
                interval = min(self._renew_s, (_TICK_MS if balanced else _FAST_POLL_MS) / 1000)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_event.wait(), interval)
        finally:
            renewer.cancel()
            await asyncio.gather(renewer, return_exceptions=True)
            beats = set(self._late_heartbeats)
            if self._heartbeat_task is not None:
                beats.add(self._heartbeat_task)
            for beat in beats:
                beat.cancel()
            await asyncio.gather(*beats, return_exceptions=True)
            await self._hand_over()

    # --- one round ---------------------------------------------------------------------------

    async def _tick(self) -> None:
        """Heartbeat, collect finished workers, release surplus, acquire what is ours."""
        try:
            self.live, asked = await self._heartbeat()
            self._check_latency("heartbeat", asked)
            if self._redis_down:
                self._redis_down = False
                log.info("redis is back", extra=log_fields(consumer=self.member))
            if self._heartbeat_failing:
                self._heartbeat_failing = False
                log.info("heartbeat sent again", extra=log_fields(live_replicas=len(self.live)))
        except (StreamError, TimeoutError) as exc:
            down = self._redis_unavailable(exc)
            if self._heartbeat_failing:  # twice in a row: this replica cannot keep leases now
                self._unfit("heartbeats failing")
            if not self._heartbeat_failing:  # once per outage, not every tick
                self._heartbeat_failing = True
                log.log(
                    logging.INFO if down else logging.WARNING,
                    "heartbeat failed: no shard is acquired until Redis answers; held shards "
                    "stay fenced by their own clocks",
                    extra=log_fields(error=str(exc) or type(exc).__name__),
                )
            self.live = []
        self._collect_finished()
        if not self.live:
            return  # without a member list, keep what we hold (fenced by the clock) and wait
        self.target = assign(self.shards, self.live).get(self.member, [])
        # Passed over for slowness: keep working on what we hold while the leases last (the
        # clock fences them); a drain now would leave them idle until our late release lands.
        keep = not self.assignable
        for shard, owned in list(self.owned.items()):
            if shard not in self.target and not owned.releasing and not keep:
                self._release_later(owned, why="rebalance")
        for shard in self.target:
            if shard not in self.owned and not self._stopping:
                await self._acquire(shard)

    def _redis_unavailable(self, exc: Exception) -> bool:
        """Say "redis unavailable" once per outage (ERROR); True when Redis is unreachable.

        A plain outage (no connection, no answer in time) is the operator's news; the lease
        lines it causes (renewal, acquire, release, fencing) then go at INFO. A refusal with a
        Redis error code keeps its WARNING: that is not an outage.
        """
        if isinstance(exc, StreamError) and exc.code is not None:
            return False
        if not self._redis_down:
            self._redis_down = True
            log.error(
                "redis unavailable, retrying",
                extra=log_fields(consumer=self.member, error=str(exc) or type(exc).__name__),
            )
        return True

    def _trouble_level(self, exc: Exception) -> int:
        """Pick INFO for a lease line a plain Redis outage caused (already said), else WARNING."""
        return logging.INFO if self._redis_unavailable(exc) else logging.WARNING

    async def _heartbeat(self) -> tuple[list[str], float]:
        """Send a heartbeat (one at most in flight); return the members and when it was asked.

        A heartbeat that does not answer within a renew interval is not cancelled: it still
        reaches Redis, late, with the assignable flag it was sent with, and the next tick waits
        for it again rather than sending another (cancelling would drop the connection, and on
        a slow link the next one would never get a command through). Only when the flag has
        changed is it dropped for a new one, so the others learn the news as early as possible.
        """
        task = self._heartbeat_task
        assignable = self.assignable
        if task is None or task.done() or self._heartbeat_flag != assignable:
            if task is not None and not task.done():
                # The one in flight says the wrong thing now: drop it if it is still waiting for
                # a connection (if it was sent, Redis ignores it once the news has landed).
                task.cancel()
                self._late_heartbeats.add(task)
                task.add_done_callback(self._late_heartbeats.discard)
            asked = self.clock()
            call = self.leases.heartbeat(
                self.member, self.settings.heartbeat_ttl_ms, assignable=assignable
            )
            task = self._heartbeat_task = asyncio.ensure_future(call)
            self._heartbeat_asked, self._heartbeat_flag = asked, assignable
        done, _ = await asyncio.wait({task}, timeout=max(self._renew_s, 0.05))
        if not done:
            raise TimeoutError
        self._heartbeat_task = None
        return task.result(), self._heartbeat_asked

    @property
    def assignable(self) -> bool:
        """Tell whether this replica may be given shards (its Redis keeps up with its leases)."""
        if self._unfit_until and self.clock() >= self._unfit_until:
            self._unfit_until = 0.0
            if self._unfit_reported:
                self._unfit_reported = False
                log.info("assignable again: Redis answers in time", extra=log_fields())
        return not self._unfit_until

    def _unfit(self, why: str) -> None:
        """Pass this replica over for one TTL: its leases cannot be kept (slow or failing Redis)."""
        self._unfit_until = self.clock() + self._ttl_ms / 1000
        if not self._unfit_reported:
            self._unfit_reported = True
            log.log(
                # A plain Redis outage was said once ("redis unavailable"): this is no news then.
                logging.INFO if self._redis_down else logging.WARNING,
                "not assignable: Redis is too slow or failing to keep shard leases; the other "
                "replicas are given this replica's shards",
                extra=log_fields(reason=why, for_s=self._ttl_ms / 1000),
            )

    def _acquire_failed(self, why: str) -> None:
        """Count a failed acquisition of an assigned shard; pass over after a few in a row."""
        self._acquire_failures += 1
        if self._acquire_failures >= _ACQUIRE_FAILURES:
            self._acquire_failures = 0
            self._unfit(f"{why} ({_ACQUIRE_FAILURES} times in a row)")

    def _check_latency(self, what: str, asked: float) -> None:
        """Pass this replica over when a Redis call took past half the TTL (answered or not)."""
        took = self.clock() - asked
        if took > self._slow_s:
            self._unfit(f"{what} answered after {took:.2f}s")

    async def _bounded(self, call: Any) -> Any:  # noqa: ANN401 - passes any Redis reply through
        """Await a Redis call for at most one renewal interval, so a hung socket cannot stall."""
        return await asyncio.wait_for(call, max(self._renew_s, 0.05))

    async def _renew_loop(self) -> None:
        """Renew every held lease each BRIDGE_LEASE_RENEW_MS until cancelled."""
        while True:
            await self._renew_all()
            await asyncio.sleep(self._renew_s)

    async def _renew_all(self) -> None:
        """Renew every held lease at once; a refused renewal means it is lost: fence at once."""
        held = [owned for owned in self.owned.values() if not owned.lease.lost]
        await asyncio.gather(*(self._renew(owned) for owned in held))

    async def _renew(self, owned: _Owned) -> None:
        """Renew one lease, waiting for the answer as long as the lease is still valid."""
        lease = owned.lease
        started = self.clock()
        # A late answer still counts (from when it was asked), so wait until the fence would
        # close anyway rather than give up after one interval on a busy event loop.
        timeout = max(self._renew_s, lease.deadline - started)
        try:
            renewed = await asyncio.wait_for(
                self.leases.renew(lease.shard, lease.value, self._ttl_ms), timeout
            )
        except (StreamError, TimeoutError) as exc:
            self._check_latency("lease renewal (failed)", started)
            log.log(
                self._trouble_level(exc),
                "lease renewal failed",
                extra=log_fields(shard=lease.shard, fencing_token=lease.token, error=str(exc)),
            )
            if not lease.valid(self.clock()) and not lease.lost:
                self._lose(owned, f"cannot renew: {exc or type(exc).__name__}")
            return
        if renewed:
            lease.renewed_at = max(lease.renewed_at, started)
            self._check_latency("lease renewal", started)
            await self._claim_strays(owned)
        elif self.owned.get(lease.shard) is owned and not lease.lost:
            self._lose(owned, "lease expired or taken by another replica")

    async def _claim_strays(self, owned: _Owned) -> None:
        """Move the shard's entries pending for other consumers here; the worker delivers them.

        A dead owner's XREADGROUP that reached Redis after the takeover handed it entries; each
        renewal moves them to this replica's consumer (lease checked in the same script), and the
        worker re-reads its own pending entries, in id order, before its next read.
        """
        lease = owned.lease
        if owned.releasing or lease.lost:
            return
        try:
            moved = await asyncio.wait_for(
                claim_strays(
                    self.streams[lease.shard], self.leases.lease_key(lease.shard), lease.value
                ),
                self._renew_s,
            )
        except (StreamError, TimeoutError):
            return  # tried again at the next renewal
        if moved:
            owned.worker.adopt_pending()
            log.warning(
                "entries pending for another consumer of an owned shard moved here",
                extra=log_fields(shard=lease.shard, fencing_token=lease.token, count=moved),
            )

    def _lose(self, owned: _Owned, why: str) -> None:
        """Fence a shard's worker: it stops posting and reading, its entries stay pending."""
        owned.lease.lost = True
        owned.worker.stop()
        self._unfit(f"lease lost: {why}")
        log.log(
            logging.INFO if self._redis_down else logging.WARNING,
            "shard lease lost: stopped posting for it",
            extra=log_fields(shard=owned.lease.shard, fencing_token=owned.lease.token, reason=why),
        )

    def _collect_finished(self) -> None:
        """Forget shards whose worker ended on its own (fenced, or failed): re-acquire later."""
        for shard, owned in list(self.owned.items()):
            if owned.task.done() and not owned.releasing:
                if not owned.task.cancelled() and owned.task.exception() is not None:
                    exc = owned.task.exception()
                    log.error(
                        "shard worker failed",
                        extra=log_fields(
                            shard=shard, error=str(exc), error_type=type(exc).__name__
                        ),
                    )
                self._release_later(owned, why="worker ended")

    async def _acquire(self, shard: str) -> None:
        """Take the shard's lease if free; move its pending entries here; start its worker."""
        started = self.clock()
        try:
            token, value = await self._bounded(self.leases.acquire(shard, self.owner, self._ttl_ms))
        except (StreamError, TimeoutError) as exc:
            self._acquire_failed("lease acquire failed")
            log.log(
                self._trouble_level(exc),
                "lease acquire failed",
                extra=log_fields(shard=shard, error=str(exc)),
            )
            return
        if not token:
            if not value.endswith(f" {self.owner}"):
                return  # still held: its owner drains and releases it, or it expires
            # Our own lease, dropped after a Redis hiccup while Redis kept it: adopt it (the
            # worker that used it has ended) instead of waiting for it to expire.
            token = int(value.split(" ", 1)[0])
        lease = Lease(shard, token, value, renewed_at=started, ttl_s=self._ttl_ms / 1000)
        stream = self.streams[shard]
        try:
            if await stream.ensure_group(self.settings.start_id):
                await report_new_group(stream, self.settings.start_id, self.metrics)
            moved = await take_pending(stream, self.leases.lease_key(shard), value)
        except StreamError as exc:
            self._acquire_failed("takeover failed")
            log.log(
                self._trouble_level(exc),
                "could not take over the shard's pending entries; releasing it",
                extra=log_fields(shard=shard, fencing_token=token, error=str(exc)),
            )
            with contextlib.suppress(StreamError):
                await self.leases.release(shard, value)
            return
        if moved is None:
            self._acquire_failed("lease lost during the takeover")
            log.warning(
                "shard lease lost before its pending entries were taken over; trying again",
                extra=log_fields(shard=shard, fencing_token=token),
            )
            return
        taken, deleted = moved
        if deleted:
            if self.metrics is not None:
                self.metrics.dead_lettered_total.add(len(deleted), {"reason": "deleted"})
            log.error(
                "pending entries were deleted from the stream before delivery",
                extra=log_fields(shard=shard, count=len(deleted), entry_ids=deleted[:20]),
            )
        # The takeover may have been long: renew (and so check) the lease before any POST.
        confirm_started = self.clock()
        try:
            confirmed = await self._bounded(self.leases.renew(shard, value, self._ttl_ms))
        except (StreamError, TimeoutError):
            confirmed = False
        if not confirmed:
            self._acquire_failed("lease lost during the takeover")
            log.log(
                logging.INFO if self._redis_down else logging.WARNING,
                "shard lease lost during the takeover; trying again",
                extra=log_fields(shard=shard, fencing_token=token),
            )
            return
        lease.renewed_at = confirm_started
        self._acquire_failures = 0
        self._check_latency("lease renewal after the takeover", confirm_started)
        fence = ShardFence(
            valid=lambda: lease.valid(self.clock()),
            stamp=LeaseStamp(shard, token),
            lease_key=self.leases.lease_key(shard),
            lease_value=value,
            refused=lambda server_token: self._stale(shard, server_token),
        )
        worker = self.worker_factory(stream, fence)
        task = asyncio.create_task(worker.run(), name=f"worker {shard}")
        self.owned[shard] = _Owned(lease, worker, task, acquired_at=self.clock())
        if self.listener is not None:
            self.listener.on_acquired(shard, worker)
        log.info(
            "shard taken over" if taken else "shard acquired",
            extra=log_fields(
                shard=shard,
                fencing_token=token,
                pending_taken=taken,
                took_ms=round((self.clock() - started) * 1000, 1),
                owned=len(self.owned),
                live_replicas=len(self.live),
            ),
        )

    def _release_later(self, owned: _Owned, *, why: str) -> None:
        """Drain the shard's worker in the background, then release its lease."""
        owned.releasing = True
        owned.worker.stop()
        if not self._stopping:  # a rebalance: a draining worker must not make /readyz fail
            self._revoke(owned)
        task = asyncio.create_task(
            self._release(owned, why=why), name=f"release {owned.lease.shard}"
        )
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    def _stale(self, shard: str, server_token: int) -> None:
        """Remember the token the server holds for a shard whose POST it refused as stale."""
        self._stale_tokens[shard] = max(self._stale_tokens.get(shard, 0), server_token)

    async def _raise_fence(self, lease: Lease, server_token: int) -> None:
        """Make the next acquisition's token higher than the one the server holds.

        Redis may have lost the counter (restarted without persistence), so tokens began again
        below what the server holds; raising the counter lets the next owner, us or another,
        post again. It only ever grows.
        """
        try:
            counter = await self._bounded(self.leases.raise_fence(lease.shard, server_token))
        except (StreamError, TimeoutError) as exc:
            log.log(
                self._trouble_level(exc),
                "could not raise the shard's fencing counter",
                extra=log_fields(shard=lease.shard, error=str(exc)),
            )
            return
        log.info(
            "the server holds a higher lease token: the fencing counter is at least that now",
            extra=log_fields(
                shard=lease.shard,
                fencing_token=lease.token,
                server_token=server_token,
                counter=counter,
            ),
        )

    def _revoke(self, owned: _Owned) -> None:
        """Tell the listener, once, that the shard's worker no longer counts for this replica."""
        if not owned.revoked:
            owned.revoked = True
            if self.listener is not None:
                self.listener.on_revoked(owned.lease.shard)

    async def _release(self, owned: _Owned, *, why: str) -> None:
        """Wait for the worker (drained and acked), then release the lease; bounded."""
        started = self.clock()
        lease = owned.lease
        await asyncio.wait(
            {owned.task}, timeout=self.settings.shutdown_grace_s + WORKER_EXIT_EXTRA_S
        )
        server_token = self._stale_tokens.pop(lease.shard, 0)
        if server_token:
            await self._raise_fence(lease, server_token)
        released = False
        if not lease.lost:
            try:
                released = await self._bounded(self.leases.release(lease.shard, lease.value))
                lease.lost = True  # released: no renewal, no post
            except (StreamError, TimeoutError) as exc:
                log.log(
                    self._trouble_level(exc),
                    "lease release failed; it expires on its own",
                    extra=log_fields(shard=lease.shard, error=str(exc)),
                )
        self.owned.pop(lease.shard, None)
        if self._stopping:
            self.left_pending += owned.worker.in_flight
        self._revoke(owned)
        log.info(
            "shard released",
            extra=log_fields(
                shard=lease.shard,
                fencing_token=lease.token,
                reason=why,
                released=released,
                drain_ms=round((self.clock() - started) * 1000, 1),
                held_s=round(self.clock() - owned.acquired_at, 3),
            ),
        )

    async def _hand_over(self) -> None:
        """SIGTERM: stop every worker, keep renewing while they drain, release every lease."""
        with contextlib.suppress(StreamError, TimeoutError):
            await self._bounded(self.leases.leave(self.member))
        for owned in list(self.owned.values()):
            if not owned.releasing:
                self._release_later(owned, why="shutdown")
        deadline = self.clock() + self.settings.shutdown_grace_s + 2 * WORKER_EXIT_EXTRA_S
        while self._releases and self.clock() < deadline:
            await asyncio.wait(set(self._releases), timeout=self._renew_s)
            if self._releases:
                await self._renew_all()
        for task in set(self._releases):
            task.cancel()
        await asyncio.gather(*self._releases, return_exceptions=True)

    # --- metrics -----------------------------------------------------------------------------

    def _owned_callback(self, options: CallbackOptions) -> list[Observation]:
        """Report the shards held right now as signals_owned_shards{consumer}."""
        del options
        held = sum(1 for owned in self.owned.values() if not owned.lease.lost)
        return [Observation(held, {"consumer": self.member})]
