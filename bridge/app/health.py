"""Health endpoints and the group monitor.

``GroupMonitor`` reads the group's lag, pending count, oldest pending age and dead-letter
count from Redis every few seconds (never per message) and hands them to the gauges in
:class:`~bridge.telemetry.metrics.Metrics`.
``HealthServer`` answers ``/healthz`` (the process and its event loop are alive), ``/readyz``
(Redis answers a PING and the workers' own commands succeed, group present, breaker closed,
not shutting down; the failing check says why) and ``/metrics`` (Prometheus text) on
``BRIDGE_HEALTH_PORT``. It asks a callable for the workers that count right now at each request,
so it follows the shards a replica takes and hands over. With delivery switched off
(``HMAC_PRODUCER_ENABLED=false``) it runs with no workers: ``/healthz`` and ``/metrics`` answer as
usual, so no liveness probe restarts the pod, and ``/readyz`` is 503 "delivery disabled".
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
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
_REQUEST_TIMEOUT_S: Final = 5.0
_PING_TIMEOUT_S: Final = 1.0
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
    """A tiny HTTP/1.1 server for probes and scraping; one request per connection."""

    def __init__(
        self,
        workers: Callable[[], Sequence[Worker]],
        *,
        host: str,
        port: int,
        metrics_text: Callable[[], bytes] = lambda: b"",
        delivery_enabled: bool = True,
        ping: Callable[[], Awaitable[None]] | None = None,
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
        self._server: asyncio.Server | None = None

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
        log.info("health endpoints listening", extra=log_fields(host=self.host, port=self.port))
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def readiness(self) -> tuple[bool, dict[str, object]]:
        """Check Redis (a PING with a short timeout), the groups, the breakers, shutdown."""
        checks: dict[str, object] = {}
        try:
            await asyncio.wait_for(self.ping(), _PING_TIMEOUT_S)
            checks["redis"] = "ok"
        except TimeoutError:
            checks["redis"] = f"unreachable: no answer to PING within {_PING_TIMEOUT_S:g}s"
        except StreamError as exc:
            checks["redis"] = f"unreachable: {exc}"
        workers = self.workers()
        # PING may answer on a fresh connection while the workers' own commands fail (a stalled
        # link): name their last Redis error until a read succeeds again.
        errors = [w.redis_error for w in workers if not w.redis_ok and w.redis_error]
        checks["consumer"] = f"redis error: {errors[0]}" if errors else "ok"
        groups_ready = all(w.group_ready for w in workers)
        group_check = "ok" if groups_ready else "not created yet"
        if groups_ready and checks["redis"] == "ok":
            # group_ready is only a flag: after Redis comes back empty the group is gone until
            # the worker's next read recreates it. Ask Redis (one XINFO GROUPS per stream).
            try:
                present = await asyncio.wait_for(
                    asyncio.gather(*(w.stream.group_exists() for w in workers)),
                    _PING_TIMEOUT_S,
                )
            except (StreamError, TimeoutError) as exc:
                groups_ready, group_check = False, f"unknown: {exc}"
            else:
                if not all(present):
                    groups_ready, group_check = False, "missing (being recreated)"
        circuits_open = [w.stream.stream for w in workers if w.breaker.is_open]
        stopping = any(w.stopping for w in workers)
        checks["group"] = group_check
        checks["circuit"] = f"open: {', '.join(circuits_open)}" if circuits_open else "closed"
        checks["stopping"] = stopping
        ready = (
            checks["redis"] == "ok"
            and checks["consumer"] == "ok"
            and groups_ready
            and not circuits_open
            and not stopping
        )
        return ready, checks

    async def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            body = {"status": "ok", "in_flight": sum(w.in_flight for w in self.workers())}
            return 200, "application/json", _ENCODER.encode(body)
        if path == "/readyz" and not self.delivery_enabled:
            body = {"status": "delivery disabled", "delivery": "HMAC_PRODUCER_ENABLED is false"}
            return 503, "application/json", _ENCODER.encode(body)
        if path == "/readyz":
            ready, checks = await self.readiness()
            body = {"status": "ready" if ready else "not ready", **checks}
            return (200 if ready else 503), "application/json", _ENCODER.encode(body)
        if path == "/metrics":
            return 200, "text/plain; version=0.0.4; charset=utf-8", self.metrics_text()
        return 404, "application/json", b'{"status":"not found"}'

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _REQUEST_TIMEOUT_S)
            if len(head) > _MAX_REQUEST_BYTES:
                return
            parts = head.split(b"\r\n", 1)[0].split(b" ")
            if len(parts) != 3 or parts[0] not in (b"GET", b"HEAD"):
                status, kind, body = 405, "application/json", b'{"status":"GET only"}'
            else:
                path = parts[1].decode("latin-1").split("?", 1)[0]
                status, kind, body = await self._route(path)
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
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
