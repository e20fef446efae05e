"""Health endpoints and the group monitor.

``GroupMonitor`` reads the group's lag, pending count, oldest pending age and dead-letter
count from Redis every few seconds (never per message) and serves them to observable gauges.
``HealthServer`` answers ``/healthz`` (the process and its event loop are alive), ``/readyz``
(Redis reachable, group present, breaker closed, not shutting down) and ``/metrics``
(Prometheus text) on ``BRIDGE_HEALTH_PORT``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Final

import msgspec
from opentelemetry.metrics import CallbackOptions, Observation

from bridge.errors import StreamError
from bridge.stream import GroupStatus, SignalStream
from bridge.telemetry import Metrics, log_fields
from bridge.worker import Worker

__all__ = ["GroupMonitor", "HealthServer"]

log = logging.getLogger(__name__)

_MAX_REQUEST_BYTES: Final = 8192
_REQUEST_TIMEOUT_S: Final = 5.0
_PING_TIMEOUT_S: Final = 1.0
_ENCODER: Final = msgspec.json.Encoder()


class GroupMonitor:
    """Polls the group's status at a modest interval and exposes it as gauges."""

    def __init__(
        self, stream: SignalStream, metrics: Metrics, worker: Worker, interval_s: float = 5.0
    ) -> None:
        self.stream = stream
        self.worker = worker
        self.interval_s = interval_s
        self.status: GroupStatus | None = None
        self.last_ok = 0.0
        attrs = {"stream": stream.stream, "group": stream.group}
        self._attrs = attrs
        meter = metrics.meter
        meter.create_observable_gauge(
            "signals_group_lag",
            [self._observe(lambda s: s.lag)],
            unit="1",
            description="Entries in the stream not yet read by the group",
        )
        meter.create_observable_gauge(
            "signals_group_pending",
            [self._observe(lambda s: s.pending)],
            unit="1",
            description="Entries read by the group but not yet acknowledged",
        )
        meter.create_observable_gauge(
            "signals_oldest_pending_age_seconds",
            [
                self._observe(
                    lambda s: (
                        None if s.oldest_pending_age_ms is None else s.oldest_pending_age_ms / 1000
                    )
                )
            ],
            unit="s",
            description="Age of the oldest pending entry (0 when nothing is pending)",
        )
        meter.create_observable_gauge(
            "signals_dead_letter_stream_length",
            [self._observe(lambda s: s.dead_letters)],
            unit="1",
            description="Entries in the dead-letter stream",
        )
        meter.create_observable_gauge(
            "signals_circuit_open",
            [self._circuit],
            unit="1",
            description="1 while the circuit breaker is open (reading paused), else 0",
        )

    def _observe(
        self, pick: Callable[[GroupStatus], float | int | None]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            del options
            if self.status is None:
                return []
            value = pick(self.status)
            return [Observation(0 if value is None else value, self._attrs)]

        return callback

    def _circuit(self, options: CallbackOptions) -> Iterable[Observation]:
        del options
        return [Observation(1 if self.worker.breaker.is_open else 0, self._attrs)]

    async def poll_once(self) -> None:
        """Read the status now."""
        self.status = await self.stream.status()
        self.last_ok = time.monotonic()

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
        worker: Worker,
        *,
        host: str,
        port: int,
        metrics_text: Callable[[], bytes] = lambda: b"",
    ) -> None:
        self.worker = worker
        self.host = host
        self.port = port
        self.metrics_text = metrics_text
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> HealthServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
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
        """Check Redis (a PING with a short timeout), the group, the breaker, shutdown."""
        checks: dict[str, object] = {}
        try:
            await asyncio.wait_for(self.worker.stream.ping(), _PING_TIMEOUT_S)
            checks["redis"] = "ok"
        except (StreamError, TimeoutError) as exc:
            checks["redis"] = f"unreachable: {exc}"
        checks["group"] = "ok" if self.worker.group_ready else "not created yet"
        checks["circuit"] = self.worker.breaker.state.value
        checks["stopping"] = self.worker.stopping
        ready = (
            checks["redis"] == "ok"
            and self.worker.group_ready
            and not self.worker.breaker.is_open
            and not self.worker.stopping
        )
        return ready, checks

    async def _route(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            body = {"status": "ok", "in_flight": self.worker.in_flight}
            return 200, "application/json", _ENCODER.encode(body)
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
