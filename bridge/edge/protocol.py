"""One keep-alive HTTP/1.1 connection: an asyncio Protocol that parses answers with httptools.

:class:`Connection` writes one request at a time and resolves a future with the whole answer,
a :class:`RawResponse` (or fails it with :class:`ResponseTimeoutError` past the request's
timeout: one timer per connection, re-armed only when it fires). What it reads is bounded
(:class:`Limits`): past the response head or body limit it stops reading, drops what it
buffered and aborts the connection; the response then carries ``oversized`` (the status line
is known, the body is not). Framings:
Content-Length, chunked, close-delimited (the body ends when the server closes, RFC 9112
section 6.3), 1xx interim answers, ``Connection: close`` and HTTP/1.0. The pool that reuses
connections is :class:`bridge.edge.http.FastTransport`.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Mapping, Sequence
from typing import Final, NamedTuple, cast

import httptools
import httpx

__all__ = [
    "DEFAULT_TCP_USER_TIMEOUT_S",
    "Connection",
    "Limits",
    "RawResponse",
    "ResponseTimeoutError",
    "StaleConnectionError",
]

# Unacknowledged data (or unanswered keepalive probes) for this long ends a connection.
DEFAULT_TCP_USER_TIMEOUT_S: Final = 10.0
# The event loop's timer resolution (uvloop's clock counts milliseconds): a response timer that
# fires this close to its deadline has reached it.
_TIMER_RESOLUTION_S: Final = 0.001


class Limits(NamedTuple):
    """How much of one response the transport reads before it gives up on the rest."""

    max_head_bytes: int = 64 * 1024
    max_header_lines: int = 100
    max_body_bytes: int = 1024 * 1024


class StaleConnectionError(httpx.RemoteProtocolError):
    """A kept-alive connection closed before any byte of the response arrived."""


class ResponseTimeoutError(Exception):
    """The response did not arrive within the request's timeout (the transport says how long)."""


class _OverLimitError(Exception):
    """Raised from a parser callback to stop parsing at once; the reason is kept on the conn."""


class RawResponse:
    """Status, headers and the whole body of one response.

    The headers stay raw bytes until ``headers`` is first read (most answers are judged by
    status and body alone); ``date`` is the Date header, read on every answer for the clock
    skew. ``oversized`` names the limit the answer went past (then ``body`` is empty and the
    headers are those read before the limit); None for an answer read whole.
    """

    __slots__ = ("_fields", "_headers", "body", "date", "oversized", "status")

    def __init__(
        self,
        status: int,
        fields: Sequence[bytes],
        body: bytes,
        oversized: str | None = None,
        date: str | None = None,
    ) -> None:
        """Take ``fields`` as the raw header names and values in turn, as they were read."""
        self.status = status
        self.body = body
        self.oversized = oversized
        self.date = date
        self._fields = fields
        self._headers: Mapping[str, str] | None = None

    @classmethod
    def of_mapping(
        cls, status: int, headers: Mapping[str, str], body: bytes, oversized: str | None = None
    ) -> RawResponse:
        """Wrap an answer whose headers are already a lower-case mapping (an httpx response)."""
        response = cls(status, (), body, oversized, headers.get("date"))
        response._headers = headers
        return response

    @property
    def headers(self) -> Mapping[str, str]:
        """Lower-cased names to latin-1 values; a repeated header keeps the last value."""
        headers = self._headers
        if headers is None:
            fields = self._fields
            headers = self._headers = {
                fields[i].decode("latin-1").lower(): fields[i + 1].decode("latin-1")
                for i in range(0, len(fields), 2)
            }
        return headers

    def get(self, name: str, /) -> str | None:
        """Return the header ``name`` (lower case) or None; the headers are decoded on first use."""
        return self.headers.get(name)


def _keepalive(transport: asyncio.BaseTransport, user_timeout_s: float) -> None:
    """Turn on TCP keepalive and TCP_USER_TIMEOUT so a silently dead peer is noticed."""
    sock = transport.get_extra_info("socket")
    if sock is None or user_timeout_s <= 0:
        return
    idle = max(1, int(user_timeout_s / 3))
    options = [
        (socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPIDLE", 0), idle),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPINTVL", 0), max(1, idle // 2)),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_KEEPCNT", 0), 3),
        (socket.IPPROTO_TCP, getattr(socket, "TCP_USER_TIMEOUT", 0), int(user_timeout_s * 1000)),
    ]
    for level, option, value in options:
        if option:
            try:
                sock.setsockopt(level, option, value)
            except OSError:  # a platform without the option: the request timeout still holds
                continue


class Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; bounded reads."""

    # The message being read, set by on_message_begin.
    _fields: list[bytes]
    _body: list[bytes]
    _status: int | None
    _date: str | None
    _transfer_encoding: bytes | None
    _over: str | None

    def __init__(self, limits: Limits, user_timeout_s: float = DEFAULT_TCP_USER_TIMEOUT_S) -> None:
        # Made by the running loop's create_connection. Kept: on Python 3.11 every
        # get_running_loop() is a getpid() system call, and a request needs the loop twice.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        # Plain attributes: the parser callbacks read them several times per answer.
        self._max_head_bytes = limits.max_head_bytes
        self._max_header_lines = limits.max_header_lines
        self._max_body_bytes = limits.max_body_bytes
        # A header line counts its name and value (bytes that were fed) plus 4, so while no
        # more than this was fed, no message's header lines can reach the head limit.
        self._head_bytes_unchecked = limits.max_head_bytes - 4 * limits.max_header_lines
        self._user_timeout_s = user_timeout_s
        self._waiter: asyncio.Future[RawResponse] | None = None
        # One timer per connection, not one per request: it is armed for the first request's
        # deadline and, when it fires, waits on for the deadline of the request then in flight
        # (arming and cancelling a timer costs more than the rest of send()).
        self._deadline: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._reset()

    def _reset(self) -> None:
        """Forget the exchange: a new request, or a close."""
        self._fed = 0  # every byte fed since the request was sent
        self._received = False
        self._head_bytes = 0  # bytes of this message's head fed so far (the data_received check)
        self.on_message_begin()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; requests are written to it."""
        # A stream transport (asyncio's or uvloop's, which is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)
        _keepalive(transport, self._user_timeout_s)

    def data_received(self, data: bytes) -> None:
        """Feed the parser within the limits; a parse error fails the waiting request."""
        if self._waiter is None or self.closed:
            self.close(abort=True)  # bytes nobody asked for can never answer a later request
            return
        self._received = True
        size = len(data)
        self._fed += size
        if not self._headers_done:
            self._head_bytes += size
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._over is not None:
                self._stop_reading()
                return
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close(abort=True)
            return
        if not self._headers_done and self._head_bytes > self._max_head_bytes:
            self._over = f"response head over {self._max_head_bytes} bytes"
            self._stop_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        """End a close-delimited body, or fail a waiting request the server cut off."""
        self.closed = True
        if self._waiter is None:
            self._reset()
            return
        if self._until_close and exc is None:
            self._complete()  # RFC 9112 6.3: without a length, the close ends the body
        elif isinstance(exc, TimeoutError):  # ETIMEDOUT: keepalive or TCP_USER_TIMEOUT
            self._fail(
                httpx.ReadError(
                    f"connection died: nothing acknowledged within {self._user_timeout_s:g}s "
                    "(TCP keepalive / TCP_USER_TIMEOUT)"
                )
            )
        elif self._received:
            reason = f": {exc}" if exc is not None else ""
            self._fail(
                httpx.RemoteProtocolError(f"server closed the connection mid-response{reason}")
            )
        else:
            self._fail(StaleConnectionError("server closed the connection before answering"))
        self._reset()

    # httptools callbacks

    def on_message_begin(self) -> None:
        """Start a new message (the final answer after a 1xx) with a clean state."""
        self._fields = []
        self._body = []
        self._header_lines = 0
        self._header_bytes = 0  # counted only near the head limit (see on_header)
        self._header_fields_counted = 0
        self._body_bytes = 0
        self._status = None
        self._date = None
        self._has_length = False
        self._transfer_encoding = None
        self._headers_done = False
        self._until_close = False
        self._over = None

    def on_header(self, name: bytes, value: bytes) -> None:
        """Keep a header's raw bytes; decode now only what the connection or every answer reads.

        The head limit is exact: header lines are counted byte by byte once enough was fed
        for them to reach it, which a usual answer never is.
        """
        self._header_lines += 1
        if self._header_lines > self._max_header_lines:
            self._over = f"more than {self._max_header_lines} response header lines"
            raise _OverLimitError
        if self._fed > self._head_bytes_unchecked:
            self._count_header_bytes(name, value)
        # Extending by a tuple: a flat list of names and values in turn, without a method call.
        self._fields += (name, value)
        size = len(name)
        if size in {4, 14, 17}:  # date, content-length, transfer-encoding: decode only these
            lowered = name.lower()
            if lowered == b"date":
                self._date = value.decode("latin-1")
            elif lowered == b"content-length":
                self._has_length = True
            elif lowered == b"transfer-encoding":
                self._transfer_encoding = value

    def _count_header_bytes(self, name: bytes, value: bytes) -> None:
        """Count this message's header lines not yet counted, and this one; stop past the limit."""
        fields = self._fields
        total = self._header_bytes + len(name) + len(value) + 4
        for index in range(self._header_fields_counted, len(fields)):
            total += len(fields[index]) + 2  # a name or a value: half of a line's 4
        self._header_bytes = total
        self._header_fields_counted = len(fields) + 2
        if total > self._max_head_bytes:
            self._over = f"response head over {self._max_head_bytes} bytes"
            raise _OverLimitError

    def on_headers_complete(self) -> None:
        """Note whether the body is delimited by the close of the connection."""
        self._headers_done = True
        status = self.parser.get_status_code()
        self._status = status
        encoding = self._transfer_encoding
        self._until_close = not (
            100 <= status < 200
            or status in (204, 304)
            or self._has_length
            or (
                encoding is not None
                and encoding.decode("latin-1").lower().rstrip().endswith("chunked")
            )
        )

    def on_body(self, body: bytes) -> None:
        """Collect a body chunk, up to the body limit."""
        self._body_bytes += len(body)
        if self._body_bytes > self._max_body_bytes:
            self._over = f"response body over {self._max_body_bytes} bytes"
            raise _OverLimitError
        self._body.append(body)

    def on_message_complete(self) -> None:
        """Resolve the waiting request with the whole response."""
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim (100 Continue, 103 Early Hints): the final response follows.
            self._head_bytes = 0
            self.on_message_begin()
            return
        keep_alive = self.parser.should_keep_alive()
        self._complete()
        if not keep_alive:
            self.close()

    # requests

    def _complete(self) -> None:
        """Resolve the waiter with the message read so far (complete, or ended by a close)."""
        response = RawResponse(
            self._status or 0, self._fields, b"".join(self._body), None, self._date
        )
        self._body = []  # the response holds the body now; an idle connection holds nothing
        self._head_bytes = 0  # bytes past the answer belong to no request's head
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            # An answer nobody waits for (a late one after a timeout) must never be taken as
            # the answer to the next request on this connection.
            self.close(abort=True)
            return
        waiter.set_result(response)

    def _stop_reading(self) -> None:
        """Past a limit: answer with what is known, drop the buffers, abort the connection."""
        reason = self._over or "response over a limit"
        if self._status is None and self._header_lines:  # a header came: the status line did
            self._status = self.parser.get_status_code()
        if self._status is None:
            self._fail(httpx.RemoteProtocolError(f"{reason} before a status line"))
        else:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(RawResponse(self._status, self._fields, b"", reason, self._date))
        self.close(abort=True)

    def _fail(self, exc: Exception) -> None:
        """Fail the waiting request, if any, with ``exc``."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: bytes, timeout_s: float | None = None) -> asyncio.Future[RawResponse]:
        """Write one request; the future resolves with its response.

        It fails with ResponseTimeoutError when no whole response came within ``timeout_s``
        (None: no timer, the caller bounds the wait).
        """
        if self.closed or self.transport is None or self.transport.is_closing():
            raise StaleConnectionError("connection is closed")
        # _reset() without its call of on_message_begin: the parser makes that call at the
        # answer's first byte, and until then only these four are read (one call fewer each).
        self._fed = 0
        self._received = False
        self._head_bytes = 0
        self._headers_done = False
        waiter: asyncio.Future[RawResponse] = self.loop.create_future()
        self._waiter = waiter
        self.transport.write(data)
        if timeout_s is None:
            self._deadline = None
        else:
            self._deadline = deadline = self.loop.time() + timeout_s
            if self._timer is None or deadline < self._timer_at:
                self._arm(deadline)
        return waiter

    def _arm(self, when: float) -> None:
        """(Re)start the connection's response timer for the loop time ``when``."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_at(when, self._on_timer)
        self._timer_at = when

    def _on_timer(self) -> None:
        """Fail the request in flight past its deadline; before it, wait on until it."""
        self._timer = None
        waiter, deadline = self._waiter, self._deadline
        if waiter is None or waiter.done() or deadline is None:
            return  # idle (or untimed): the next timed request arms the timer again
        if self.loop.time() < deadline - _TIMER_RESOLUTION_S:
            self._arm(deadline)  # a later request than the one the timer was armed for
            return
        waiter.set_exception(ResponseTimeoutError())

    def close(self, *, abort: bool = False) -> None:
        """Close (or abort) the socket and free the buffers; the pool drops closed ones."""
        self.closed = True
        self._body = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()
