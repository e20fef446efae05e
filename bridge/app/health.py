"""Health endpoints and the group monitor.

``GroupMonitor`` reads the group's lag, pending count, oldest pending age and dead-letter
count from Redis every few seconds (never per message) and hands them to the gauges in
:class:`~bridge.telemetry.metrics.Metrics`.
``HealthServer`` answers ``/healthz`` (the process and its event loop are alive), ``/readyz``
(Redis answered the last PING and the workers' own commands succeed, group present, breaker
closed, dead letters writable, not shutting down; the failing check says why) and ``/metrics``
(Prometheus text) on ``BRIDGE_HEALTH_PORT``, from memory: no request reaches Redis, so a flood
of probes cannot take connections from the workers or delay their leases. It asks a callable
for the workers that count right now at each request, so it follows the shards a replica takes
and hands over. With delivery switched off
(``HMAC_PRODUCER_ENABLED=false``) it runs with no workers: ``/healthz`` and ``/metrics`` answer as
usual, so no liveness probe restarts the pod, and ``/readyz`` is 503 "delivery disabled".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final

import msgspec

from bridge.delivery.worker import Worker
from bridge.errors import ConfigError, StreamError
from bridge.streams.entries import GroupStatus
from bridge.streams.group import SignalStream
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics

__all__ = ["GroupMonitor", "HealthServer"]

log = logging.getLogger("bridge.health")

_MAX_REQUEST_BYTES: Final = 8192
_REQUEST_TIMEOUT_S: Final = 2.0
_PING_TIMEOUT_S: Final = 1.0
# How often the probes' view of Redis is refreshed, and when an unrefreshed one is stale.
_REFRESH_S: Final = 0.5
_STALE_AFTER_S: Final = 5.0
# Connections handled at once; more are answered 503 at once, unread.
_MAX_CONNECTIONS: Final = 32
_METRICS_CACHE_S: Final = 1.0
_BUSY_LINGER_S: Final = 0.2
_BUSY: Final = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b'Content-Length: 17\r\nConnection: close\r\n\r\n{"status":"busy"}'
)
_ENCODER: Final = msgspec.json.Encoder()


class GroupMonitor:
    """Polls one group's status at a modest interval and hands it to the gauges."""

    def __init__(
        self,
        stream: SignalStream,
        metrics: Metrics,
        circuit_open: Callable[[], bool] | None,
        interval_s: float = 5.0,
    ) -> None:
        """Also report the stream's breaker through ``circuit_open``, when given, as a gauge."""
        self.stream = stream
        self.metrics = metrics
        self.interval_s = interval_s
        self.status: GroupStatus | None = None
        if circuit_open is not None:
            metrics.observe_circuit(stream.stream, circuit_open)

    async def poll_once(self) -> None:
        """Read the status now and publish it to the gauges (and whether Redis answered)."""
        try:
            status = await self.stream.status()
        except StreamError:
            self.metrics.observe_redis(self.stream.stream, up=False)
            raise
        self.metrics.observe_redis(self.stream.stream, up=True)
        self.status = status
        self.metrics.observe_group(
            status.stream,
            status.group,
            lag=status.lag or 0,
            pending=status.pending,
            oldest_pending_age_s=(status.oldest_pending_age_ms or 0) / 1000,
            dead_letters=status.dead_letters,
            dead_letter_oldest_age_s=(status.dead_letter_oldest_age_ms or 0) / 1000,
        )

    async def run(self) -> None:
        """Poll until cancelled; errors are logged and retried at the next tick."""
        while True:
            try:
                await self.poll_once()
            except StreamError as exc:
                log.debug("status poll failed", extra=log_fields(error=str(exc)))
            await asyncio.sleep(self.interval_s)


class HealthServer:
    """A tiny HTTP/1.1 server for probes and scraping; one request per connection.

    No request reaches Redis: ``/readyz`` answers from the workers' own state and from one view
    of Redis (a PING, one XINFO GROUPS per stream) that a background task refreshes every
    ``refresh_s``, whatever the number of probes. At most ``max_connections`` are handled at
    once; one more is answered 503 "busy" at once, unread. ``/metrics`` renders at most once per
    ``metrics_cache_s``.
    """

    def __init__(
        self,
        workers: Callable[[], Sequence[Worker]],
        *,
        host: str,
        port: int,
        metrics_text: Callable[[], bytes] = lambda: b"",
        delivery_enabled: bool = True,
        ping: Callable[[], Awaitable[None]] | None = None,
        refresh_s: float = _REFRESH_S,
        max_connections: int = _MAX_CONNECTIONS,
        metrics_cache_s: float = _METRICS_CACHE_S,
    ) -> None:
        """Serve probes on ``workers()``, the workers that count now; ``ping`` checks Redis.

        Without ``ping`` the first worker's stream is pinged; give one when the replica may hold
        no worker (strict ordering, a standby).
        """
        self.workers = workers
        self.delivery_enabled = delivery_enabled
        self.ping = ping if ping is not None else self._first_worker_ping
        self.host = host
        self.port = port
        self.metrics_text = metrics_text
        self._refresh_s = refresh_s
        self._max_connections = max_connections
        self._metrics_cache_s = metrics_cache_s
        self._server: asyncio.Server | None = None
        self._watch: asyncio.Task[None] | None = None
        self._active = 0
        # The last view of Redis: the PING's verdict, streams whose group was missing, and when.
        self._redis_check = "unknown: not checked yet"
        self._missing_groups: set[str] = set()
        self._group_unknown = ""
        self._checked_at: float | None = None
        self._metrics_cache: tuple[float, bytes] | None = None

    async def _first_worker_ping(self) -> None:
        """PING Redis through the first worker's stream."""
        await self.workers()[0].stream.ping()

    async def __aenter__(self) -> HealthServer:
        try:
            self._server = await asyncio.start_server(self._handle, self.host, self.port)
        except OSError as exc:
            # A busy port or an address this host does not have is a settings error (exit 2).
            reasons = {
                errno.EADDRINUSE: "is already in use",
                errno.EACCES: "is not allowed (ports below 1024 need privileges)",
            }
            port_problem = reasons.get(exc.errno or 0)
            variable = "BRIDGE_HEALTH_PORT" if port_problem else "BRIDGE_HEALTH_HOST"
            why = port_problem or f"cannot be listened on: {exc.strerror or exc}"
            raise ConfigError(
                f"{variable}: {self.host}:{self.port} {why}", variable=variable
            ) from None
        sockets = self._server.sockets
        if sockets:
            self.port = int(sockets[0].getsockname()[1])
        if self.delivery_enabled:
            await self.refresh()  # the first answer already knows Redis
            self._watch = asyncio.create_task(self._watch_redis(), name="health-redis-view")
        log.info("health endpoints listening", extra=log_fields(host=self.host, port=self.port))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._watch is not None:
            self._watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _watch_redis(self) -> None:
        """Refresh the view of Redis every ``refresh_s`` until cancelled."""
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except Exception as exc:  # the probes must outlive any surprise here
                log.debug("health refresh failed", extra=log_fields(error=str(exc)))

    async def refresh(self) -> None:
        """Look at Redis once: a PING with a short timeout, then whether each group exists."""
        try:
            await asyncio.wait_for(self.ping(), _PING_TIMEOUT_S)
            redis_check = "ok"
        except TimeoutError:
            redis_check = f"unreachable: no answer to PING within {_PING_TIMEOUT_S:g}s"
        except StreamError as exc:
            redis_check = f"unreachable: {exc}"
        except IndexError:
            redis_check = "unreachable: no stream to ping through"
        missing: set[str] = set()
        unknown = ""
        workers = self.workers()
        if redis_check == "ok" and workers and all(w.group_ready for w in workers):
            # group_ready is only a flag: after Redis comes back empty the group is gone until
            # the worker's next read recreates it. Ask Redis (one XINFO GROUPS per stream).
            try:
                present = await asyncio.wait_for(
                    asyncio.gather(*(w.stream.group_exists() for w in workers)),
                    _PING_TIMEOUT_S,
                )
            except (StreamError, TimeoutError) as exc:
                unknown = f"unknown: {exc}"
            else:
                missing = {
                    w.stream.stream for w, ok in zip(workers, present, strict=True) if not ok
                }
        self._redis_check, self._missing_groups, self._group_unknown = redis_check, missing, unknown
        self._checked_at = time.monotonic()

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        """Refresh the view of Redis now, then answer as ``/readyz`` would."""
        await self.refresh()
        return self.answer()

    def answer(self) -> tuple[bool, dict[str, object]]:
        """Answer from memory: the last view of Redis, the groups, breakers, dead letters, stop."""
        checks: dict[str, object] = {}
        redis_check = self._redis_check
        if self._checked_at is not None:
            age_s = time.monotonic() - self._checked_at
            if age_s > max(_STALE_AFTER_S, 4 * self._refresh_s):
                redis_check = f"unknown: last checked {age_s:.0f}s ago"
        workers = self.workers()
        checked_at = self._checked_at or 0.0
        if redis_check == "ok":  # a worker may notice a lost connection before the next PING
            lost = [
                w.redis_error
                for w in workers
                if (w.redis_lost_at or 0.0) > checked_at and w.redis_error
            ]
            if lost:
                redis_check = f"unreachable: {lost[0]}"
        checks["redis"] = redis_check
        # PING may answer on a fresh connection while the workers' own commands fail (a stalled
        # link): name their last Redis error until a read succeeds again.
        errors = [w.redis_error for w in workers if not w.redis_ok and w.redis_error]
        checks["consumer"] = f"redis error: {errors[0]}" if errors else "ok"
        groups_ready = all(w.group_ready for w in workers)
        group_check = "ok" if groups_ready else "not created yet"
        if groups_ready and redis_check == "ok":
            if self._group_unknown:
                groups_ready, group_check = False, self._group_unknown
            elif any(w.stream.stream in self._missing_groups for w in workers):
                groups_ready, group_check = False, "missing (being recreated)"
        letters = [
            f"{w.stream.dlq_stream}: {w.dead_letter_error}" for w in workers if w.dead_letter_error
        ]
        circuits_open = [w.stream.stream for w in workers if w.breaker.is_open]
        stopping = any(w.stopping for w in workers)
        checks["group"] = group_check
        checks["circuit"] = f"open: {', '.join(circuits_open)}" if circuits_open else "closed"
        checks["dead_letters"] = f"cannot be written: {letters[0]}" if letters else "ok"
        checks["stopping"] = stopping
        ready = (
            redis_check == "ok"
            and checks["consumer"] == "ok"
            and groups_ready
            and not circuits_open
            and not letters
            and not stopping
        )
        return ready, checks

    def _metrics(self) -> bytes:
        """Return the Prometheus text, rendered at most once per ``metrics_cache_s``."""
        now = time.monotonic()
        cached = self._metrics_cache
        if cached is not None and now - cached[0] < self._metrics_cache_s:
            return cached[1]
        text = self.metrics_text()
        self._metrics_cache = (now, text)
        return text

    def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            body = {"status": "ok", "in_flight": sum(w.in_flight for w in self.workers())}
            return 200, "application/json", _ENCODER.encode(body)
        if path == "/readyz" and not self.delivery_enabled:
            body = {"status": "delivery disabled", "delivery": "HMAC_PRODUCER_ENABLED is false"}
            return 503, "application/json", _ENCODER.encode(body)
        if path == "/readyz":
            ready, checks = self.answer()
            body = {"status": "ready" if ready else "not ready", **checks}
            return (200 if ready else 503), "application/json", _ENCODER.encode(body)
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self._metrics()
        return 404, "application/json", b'{"status":"not found"}'

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._active >= self._max_connections:
            # Answered at once, not parsed. What the client sent is read for a moment (at most
            # 8 KiB), only so that closing does not reset the connection before it reads this.
            writer.write(_BUSY)
            with contextlib.suppress(TimeoutError, OSError, asyncio.IncompleteReadError):
                await asyncio.wait_for(reader.read(_MAX_REQUEST_BYTES), _BUSY_LINGER_S)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            return
        self._active += 1
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT_S)
            if len(head) > _MAX_REQUEST_BYTES:
                return
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
                status, kind, body = 405, "application/json", b'{"status":"GET only"}'
            else:
                path = parts[1].decode("latin-1").split("?", 1)[0]
                status, kind, body = self._route(path)
            reason = {200: "OK", 404: "Not Found", 405: "Method Not Allowed"}.get(
                status, "Service Unavailable"
            )
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: {kind}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
                + (body if parts[0] != b"HEAD" else b"")
            )
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError):
            return
        finally:
            self._active -= 1
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
