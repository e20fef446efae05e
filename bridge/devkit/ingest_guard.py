"""The reference ingest server's limits against hostile peers: what uvicorn and httptools lack.

uvicorn's httptools protocol (0.54) buffers a request head of any size, never times out a head
or a body that arrives slowly, and its ``limit_concurrency`` counts open connections, so a few
slow clients would turn every normal request into a 503. :class:`GuardedHttpToolsProtocol` adds
a head size and header count limit (431), a head and a body read timeout (408, then close) and a
cap on open connections; :class:`ConcurrencyGuard` answers 503 with ``Retry-After`` above a
number of requests in progress. :func:`uvicorn_config` builds the one uvicorn config both the
``ingest-server`` command and :func:`~bridge.devkit.ingest.serve_in_thread` run.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal

import httptools
import msgspec
import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from bridge.telemetry.logs import log_fields

__all__ = ["ConcurrencyGuard", "GuardedHttpToolsProtocol", "ServerLimits", "uvicorn_config"]

log = logging.getLogger("bridge.ingest")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]

_REASONS: Final = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


@dataclass(frozen=True, slots=True)
class ServerLimits:
    """What one reference server accepts from its peers (the README's "reference server" table).

    A head is the request line and the headers; it may overshoot ``max_header_bytes`` by one
    socket read (at most 256 KiB) before it is refused. ``keep_alive_s`` closes an idle
    connection between requests (uvicorn's own timer).
    """

    max_header_bytes: int = 16 * 1024
    max_headers: int = 64
    header_timeout_s: float = 10.0
    body_timeout_s: float = 10.0
    keep_alive_s: int = 5
    max_connections: int = 256
    max_concurrent_requests: int = 128


class _Refused(Exception):
    """Raised inside a parser callback to stop parsing; the protocol answers ``status``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with head limits, read timeouts and a connection cap.

    The limits are a class attribute: :meth:`with_limits` makes the subclass uvicorn is given.
    """

    limits: ClassVar[ServerLimits] = ServerLimits()

    @classmethod
    def with_limits(cls, limits: ServerLimits) -> type[GuardedHttpToolsProtocol]:
        """Return a subclass bound to ``limits`` (uvicorn instantiates the class it is given)."""
        return type("GuardedHttpToolsProtocol", (cls,), {"limits": limits})

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Accept, or close at once above ``max_connections``; arm the head timer."""
        self._reading_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        super().connection_made(transport)  # type: ignore[arg-type]
        if len(self.connections) > self.limits.max_connections:
            log.warning(
                "ingest connection refused: too many open connections",
                extra=log_fields(max_connections=self.limits.max_connections),
            )
            self.transport.close()
            return
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        """Drop the timer with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; refuse a head that grew past the limit or broke a parser callback."""
        self._unset_keepalive_if_required()
        if self._reading_head:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._refuse(400, "protocol upgrades are not served")
            return
        except httptools.HttpParserError as exc:
            refused = exc.__context__ if isinstance(exc.__context__, _Refused) else None
            if refused is None:
                self._refuse(400, "invalid HTTP request")
            else:
                self._refuse(refused.status, refused.reason)
            return
        if self._reading_head and self._head_bytes > self.limits.max_header_bytes:
            self._refuse(431, "request head too large")

    def on_message_begin(self) -> None:
        """Time a new request's head from its first byte."""
        super().on_message_begin()
        self._reading_head = True
        self._header_count = 0
        if self._deadline is None:
            self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep one header, or stop parsing past ``max_headers``."""
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            raise _Refused(431, "too many request headers")
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        """Give the body ``body_timeout_s`` to arrive, now that the head is in."""
        self._reading_head = False
        self._head_bytes = 0
        self._disarm()
        self._arm(self.limits.body_timeout_s, self._body_timed_out)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        """Stop the body timer: none runs until the next request's first byte."""
        self._disarm()
        super().on_message_complete()

    def _arm(self, delay_s: float, callback: Callable[[], None]) -> None:
        """Start the one deadline this connection has."""
        self._disarm()
        self._deadline = self.loop.call_later(delay_s, callback)

    def _disarm(self) -> None:
        """Cancel the deadline, if any."""
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _head_timed_out(self) -> None:
        """Answer 408 to a head that came too slowly (close silently if none of it came)."""
        self._deadline = None
        if self._head_bytes:
            self._refuse(408, "request head timeout")
        elif not self.transport.is_closing():
            self.transport.close()

    def _body_timed_out(self) -> None:
        """Answer 408 to a body that came too slowly (unless the app answered), then close."""
        self._deadline = None
        self._refuse(408, "request body timeout")

    def _refuse(self, status: int, reason: str) -> None:
        """Answer ``status`` with a JSON detail (if no response has started) and close."""
        self._disarm()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        started = cycle is not None and not cycle.response_complete and cycle.response_started
        if cycle is not None and not cycle.response_complete:
            # The app (if it is reading the body) sees http.disconnect and its answer is dropped.
            cycle.disconnected = True
            cycle.message_event.set()
        if not started:
            body = msgspec.json.encode({"detail": reason})
            phrase = _REASONS.get(status, b"Bad Request")
            self.transport.write(
                b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\n"
                b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                % (status, phrase, len(body), body)
            )
        log.warning(
            "ingest request refused by the server's limits",
            extra=log_fields(http_code=status, reason=reason),
        )
        self.transport.close()


@dataclass
class ConcurrencyGuard:
    """ASGI wrapper: at most ``limit`` requests in progress; above it 503 with ``Retry-After``."""

    app: ASGIApp
    limit: int
    in_progress: int = 0

    async def __call__(
        self,
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        """Run the app, or refuse while ``limit`` requests are in progress."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.in_progress >= self.limit:
            body = msgspec.json.encode({"detail": "too many requests in progress"})
            await send(
                {
                    "type": "http.response.start",
                    "status": 503,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                        (b"retry-after", b"1"),
                    ],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        self.in_progress += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.in_progress -= 1


def uvicorn_config(
    app: ASGIApp,
    limits: ServerLimits,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    lifespan: Literal["auto", "on", "off"] = "off",
    keep_log_config: bool = False,
    ssl_certfile: str | None = None,
    ssl_keyfile: str | None = None,
) -> uvicorn.Config:
    """Build a reference server's uvicorn config: the guarded protocol behind the guard.

    ``keep_log_config`` leaves logging as the caller set it (the command's JSON lines) instead
    of uvicorn's own handlers.
    """
    extra: dict[str, Any] = {"log_config": None} if keep_log_config else {}
    return uvicorn.Config(
        ConcurrencyGuard(app, limits.max_concurrent_requests),
        host=host,
        port=port,
        http=GuardedHttpToolsProtocol.with_limits(limits),
        timeout_keep_alive=limits.keep_alive_s,
        lifespan=lifespan,
        log_level="warning",
        access_log=False,
        date_header=False,  # the app sends Date from its own (injectable) clock
        ssl_certfile=ssl_certfile,
        ssl_keyfile=ssl_keyfile,
        **extra,
    )
