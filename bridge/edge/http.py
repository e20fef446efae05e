"""``FastTransport``: an httpx transport for one origin, on asyncio and httptools.

httpx's default async engine (httpcore) costs 1-4 ms of CPU per request on this path (its pool
works per pooled connection on every request, encode/httpcore#1035), 15-20x what the rest of a
delivery costs. This transport keeps the httpx API (``httpx.AsyncClient(transport=...)`` works,
and it raises httpx's exceptions) but does HTTP/1.1 keep-alive itself: one asyncio Protocol per
connection, responses parsed by httptools (uvicorn's C parser, chunked and all), a LIFO pool of
idle connections, TLS through ``ssl.SSLContext``. ``post()`` is the hot path the client calls
directly with prebuilt header bytes, skipping httpx.Request/Response construction.

What it reads is bounded (:class:`Limits`): past the response head or body limit it stops
reading, drops what it buffered and aborts the connection; the response it returns then carries
``oversized`` (the status line is known, the body is not). Framings: Content-Length, chunked,
close-delimited (the body ends when the server closes, RFC 9112 section 6.3), 1xx interim
answers, ``Connection: close`` and HTTP/1.0. Through an HTTP proxy, http targets go in absolute
form and https targets through a CONNECT tunnel with the origin's certificate verified.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import time
from collections.abc import Sequence
from typing import Final, NamedTuple, cast
from urllib.parse import unquote

import httptools
import httpx

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "DEFAULT_TCP_USER_TIMEOUT_S",
    "OVERSIZED_EXTENSION",
    "FastTransport",
    "Limits",
    "ProxyRefusedError",
    "RawResponse",
]

# Below common server keep-alive timeouts (uvicorn 5 s, nginx 75 s), so the pool rarely picks a
# connection the server is closing; one that was closed anyway is retried once (see post()).
DEFAULT_KEEPALIVE_EXPIRY_S: Final = 4.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
# Unacknowledged data (or unanswered keepalive probes) for this long ends a connection.
DEFAULT_TCP_USER_TIMEOUT_S: Final = 10.0
# The extension key under which handle_async_request reports an oversized answer.
OVERSIZED_EXTENSION: Final = "bridge.oversized"


class Limits(NamedTuple):
    """How much of one response the transport reads before it gives up on the rest."""

    max_head_bytes: int = 64 * 1024
    max_header_lines: int = 100
    max_body_bytes: int = 1024 * 1024


class _StaleConnectionError(httpx.RemoteProtocolError):
    """A kept-alive connection closed before any byte of the response arrived."""


class _TimedOutError(Exception):
    """The response did not arrive in time (becomes httpx.ReadTimeout)."""


class ProxyRefusedError(httpx.ProxyError):
    """The proxy answered CONNECT with a non-2xx ``status`` (407: our credentials refused)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class _OverLimitError(Exception):
    """Raised from a parser callback to stop parsing at once; the reason is kept on the conn."""


def _expire(waiter: asyncio.Future[RawResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(_TimedOutError())


class RawResponse:
    """Status, lower-cased headers and the whole body of one response.

    ``oversized`` names the limit the answer went past (then ``body`` is empty and the headers
    are those read before the limit); None for an answer read whole.
    """

    __slots__ = ("body", "headers", "oversized", "status")

    def __init__(
        self, status: int, headers: dict[str, str], body: bytes, oversized: str | None = None
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.oversized = oversized


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


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time; bounded reads."""

    def __init__(self, limits: Limits, user_timeout_s: float = DEFAULT_TCP_USER_TIMEOUT_S) -> None:
        # Made by the running loop's create_connection. Kept: on Python 3.11 every
        # get_running_loop() is a getpid() system call, and a request needs the loop twice.
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._limits = limits
        self._user_timeout_s = user_timeout_s
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._reset()
        self._received = False

    def _reset(self) -> None:
        """Forget the message being read (a new request, or an interim answer done)."""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._head_bytes = 0
        self._header_bytes = 0
        self._header_lines = 0
        self._body_bytes = 0
        self._status: int | None = None
        self._headers_done = False
        self._until_close = False
        self._over: str | None = None

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
        if not self._headers_done:
            self._head_bytes += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            if self._over is not None:
                self._stop_reading()
                return
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close(abort=True)
            return
        if not self._headers_done and self._head_bytes > self._limits.max_head_bytes:
            self._over = f"response head over {self._limits.max_head_bytes} bytes"
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
            self._fail(_StaleConnectionError("server closed the connection before answering"))
        self._reset()

    # httptools callbacks

    def on_message_begin(self) -> None:
        """Start a new message (the final answer after a 1xx) with a clean state."""
        head_bytes = self._head_bytes
        self._reset()
        self._head_bytes = head_bytes

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header (lower-cased name; a repeated header keeps the last value)."""
        if self._status is None:  # headers follow a whole status line: now it is known
            self._status = self.parser.get_status_code()
        self._header_lines += 1
        self._header_bytes += len(name) + len(value) + 4
        if self._header_lines > self._limits.max_header_lines:
            self._over = f"more than {self._limits.max_header_lines} response header lines"
            raise _OverLimitError
        if self._header_bytes > self._limits.max_head_bytes:
            self._over = f"response head over {self._limits.max_head_bytes} bytes"
            raise _OverLimitError
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        """Note whether the body is delimited by the close of the connection."""
        self._headers_done = True
        status = self.parser.get_status_code()
        self._status = status
        self._until_close = not (
            100 <= status < 200
            or status in (204, 304)
            or "content-length" in self._headers
            or self._headers.get("transfer-encoding", "").lower().rstrip().endswith("chunked")
        )

    def on_body(self, body: bytes) -> None:
        """Collect a body chunk, up to the body limit."""
        self._body_bytes += len(body)
        if self._body_bytes > self._limits.max_body_bytes:
            self._over = f"response body over {self._limits.max_body_bytes} bytes"
            raise _OverLimitError
        self._body.append(body)

    def on_message_complete(self) -> None:
        """Resolve the waiting request with the whole response."""
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim (100 Continue, 103 Early Hints): the final response follows.
            self._reset()
            return
        keep_alive = self.parser.should_keep_alive()
        self._complete()
        if not keep_alive:
            self.close()

    # requests

    def _complete(self) -> None:
        """Resolve the waiter with the message read so far (complete, or ended by a close)."""
        response = RawResponse(self._status or 0, self._headers, b"".join(self._body))
        self._reset()
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
        if self._status is None:
            self._fail(httpx.RemoteProtocolError(f"{reason} before a status line"))
        else:
            waiter, self._waiter = self._waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(RawResponse(self._status, self._headers, b"", reason))
        self.close(abort=True)

    def _fail(self, exc: Exception) -> None:
        """Fail the waiting request, if any, with ``exc``."""
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: bytes) -> asyncio.Future[RawResponse]:
        """Write one request; the future resolves with its response."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _StaleConnectionError("connection is closed")
        self._reset()
        self._received = False
        waiter: asyncio.Future[RawResponse] = self.loop.create_future()
        self._waiter = waiter
        self.transport.write(data)
        return waiter

    def close(self, *, abort: bool = False) -> None:
        """Close (or abort) the socket and free the buffers; the pool drops closed ones."""
        self.closed = True
        self._body = []
        if self.transport is not None:
            if abort:
                self.transport.abort()
            else:
                self.transport.close()


class _TunnelReply(asyncio.Protocol):
    """Reads a proxy's answer to CONNECT (a bounded head, no body)."""

    def __init__(self, max_head_bytes: int) -> None:
        self._max = max_head_bytes
        self._buffer = bytearray()
        self.status: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    def data_received(self, data: bytes) -> None:
        """Collect the head; resolve with the status code once the blank line arrives."""
        if self.status.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            if len(self._buffer) > self._max:
                self.status.set_exception(httpx.ProxyError("proxy answer to CONNECT too long"))
            return
        line = bytes(self._buffer[: self._buffer.find(b"\r\n")]).split()
        extra = len(self._buffer) - (end + 4)
        self._buffer = bytearray()
        if len(line) < 2 or not line[0].startswith(b"HTTP/1.") or not line[1].isdigit():
            self.status.set_exception(httpx.ProxyError("malformed proxy answer to CONNECT"))
        elif extra and line[1].startswith(b"2"):
            self.status.set_exception(httpx.ProxyError("proxy sent data before the tunnel"))
        else:
            self.status.set_result(int(line[1]))

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail the tunnel when the proxy closes before answering."""
        if not self.status.done():
            self.status.set_exception(
                httpx.ProxyError(f"proxy closed the connection during CONNECT: {exc}")
            )


class _Proxy(NamedTuple):
    """Where the proxy listens and the Proxy-Authorization value (None without credentials)."""

    host: str
    port: int
    authorization: str | None


def _parse_proxy(url: str) -> _Proxy:
    """Split an http:// proxy URL into host, port and a Basic Proxy-Authorization value."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http" or not parsed.host:
        raise httpx.UnsupportedProtocol("only http:// proxies are supported")
    authorization = None
    if parsed.username or parsed.password:
        user_pass = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}"
        authorization = "Basic " + base64.b64encode(user_pass.encode()).decode("ascii")
    return _Proxy(parsed.host, parsed.port or 80, authorization)


class FastTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 to one origin (scheme, host, port), up to ``max_connections``."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 32,
        keepalive_expiry_s: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        limits: Limits | None = None,
        proxy: str | None = None,
        tcp_user_timeout_s: float = DEFAULT_TCP_USER_TIMEOUT_S,
    ) -> None:
        parsed = httpx.URL(url)
        self.scheme = parsed.scheme
        self.host = parsed.host
        self.port = parsed.port or (443 if parsed.scheme == "https" else 80)
        if self.scheme == "https" and ssl_context is None:
            ssl_context = ssl.create_default_context()
        self._ssl = ssl_context if self.scheme == "https" else None
        default_port = 443 if self.scheme == "https" else 80
        ascii_host = parsed.raw_host.decode("ascii")  # IDNA (punycode) form for the header
        host_header = ascii_host if ":" not in ascii_host else f"[{ascii_host}]"
        if self.port != default_port:
            host_header = f"{host_header}:{self.port}"
        self.host_header = host_header
        bracketed = ascii_host if ":" not in ascii_host else f"[{ascii_host}]"
        self._authority = f"{bracketed}:{self.port}"  # the CONNECT target
        self._keepalive_expiry_s = keepalive_expiry_s
        self._connect_timeout_s = connect_timeout_s
        self._user_timeout_s = tcp_user_timeout_s
        self.limits = limits if limits is not None else Limits()
        self._proxy = _parse_proxy(proxy) if proxy else None
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[_Connection] = set()
        self._closed = False

    def __repr__(self) -> str:
        via = f" via {self._proxy.host}:{self._proxy.port}" if self._proxy else ""
        return f"FastTransport({self.scheme}://{self.host_header}{via})"

    def _new_connection(self) -> _Connection:
        """Build the protocol of one connection with this transport's limits."""
        return _Connection(self.limits, self._user_timeout_s)

    async def _connect(self, timeout_s: float) -> _Connection:
        """Open a connection within the connect timeout; httpx errors that say where."""
        limit_s = min(timeout_s, self._connect_timeout_s)
        where = f"{self.host}:{self.port}"
        if self._proxy is not None:
            where = f"{where} through the proxy {self._proxy.host}:{self._proxy.port}"
        try:
            async with asyncio.timeout(limit_s):
                conn = await self._open_connection()
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {where} timed out after {limit_s:g}s") from exc
        except httpx.ProxyError:
            raise
        except OSError as exc:  # includes ssl.SSLError and certificate failures
            raise httpx.ConnectError(f"cannot connect to {where}: {exc}") from exc
        self._open.add(conn)
        return conn

    async def _open_connection(self) -> _Connection:
        """Connect directly, to the proxy (http target) or through a CONNECT tunnel (https)."""
        loop = asyncio.get_running_loop()
        if self._proxy is None:
            _, conn = await loop.create_connection(
                self._new_connection,
                self.host,
                self.port,
                ssl=self._ssl,
                server_hostname=self.host if self._ssl is not None else None,
            )
            return conn
        if self._ssl is None:  # http target: requests go to the proxy in absolute form
            _, conn = await loop.create_connection(
                self._new_connection, self._proxy.host, self._proxy.port
            )
            return conn
        return await self._tunnel(loop, self._proxy, self._ssl)

    async def _tunnel(
        self, loop: asyncio.AbstractEventLoop, proxy: _Proxy, context: ssl.SSLContext
    ) -> _Connection:
        """CONNECT through the proxy, then TLS to the origin inside the tunnel."""
        max_head = self.limits.max_head_bytes
        transport, reply = await loop.create_connection(
            lambda: _TunnelReply(max_head), proxy.host, proxy.port
        )
        conn = self._new_connection()
        try:
            tls = await self._through(
                loop, transport, reply, proxy=proxy, context=context, conn=conn
            )
        except BaseException:
            transport.abort()
            raise
        conn.connection_made(tls)
        return conn

    async def _through(
        self,
        loop: asyncio.AbstractEventLoop,
        transport: asyncio.BaseTransport,
        reply: _TunnelReply,
        *,
        proxy: _Proxy,
        context: ssl.SSLContext,
        conn: _Connection,
    ) -> asyncio.BaseTransport:
        """Ask for the tunnel and start TLS inside it; ProxyError when the proxy refuses."""
        head = f"CONNECT {self._authority} HTTP/1.1\r\nHost: {self._authority}\r\n"
        if proxy.authorization is not None:
            head += f"Proxy-Authorization: {proxy.authorization}\r\n"
        cast(asyncio.Transport, transport).write((head + "\r\n").encode("latin-1"))
        status = await reply.status
        if not 200 <= status < 300:
            raise ProxyRefusedError(
                f"proxy answered {status} to CONNECT {self._authority}", status=status
            )
        tls = await loop.start_tls(
            cast(asyncio.WriteTransport, transport), conn, context, server_hostname=self.host
        )
        if tls is None:  # only for a transport already closing
            raise httpx.ConnectError("the tunnel closed during the TLS handshake")
        return tls

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or now - conn.idle_since > self._keepalive_expiry_s:
                self._discard(conn, graceful=True)
                continue
            return conn
        return None

    def _release(self, conn: _Connection) -> None:
        if conn.closed or self._closed:
            self._discard(conn, graceful=True)
            return
        conn.idle_since = time.monotonic()
        self._idle.append(conn)

    async def post(self, request: bytes, timeout_s: float) -> RawResponse:
        """Send prebuilt request bytes on a pooled connection and read the whole response."""
        if self._closed:
            raise httpx.ConnectError("transport is closed")
        async with self._slots:
            conn = self._take_idle()
            if conn is not None:
                try:
                    return await self._exchange(conn, request, timeout_s)
                except _StaleConnectionError:
                    pass  # closed by the server while idle: once more on a fresh connection
            started = time.monotonic()
            conn = await self._connect(timeout_s)
            # One deadline for the whole request: the time spent connecting counts.
            remaining = max(0.001, timeout_s - (time.monotonic() - started))
            return await self._exchange(conn, request, remaining, timeout_s)

    async def _exchange(
        self,
        conn: _Connection,
        request: bytes,
        timeout_s: float,
        total_s: float | None = None,
    ) -> RawResponse:
        """One request and its response on ``conn``; the connection returns to the pool."""
        try:
            waiter = conn.send(request)
        except BaseException:
            self._discard(conn)
            raise
        # A timer on the waiter costs a fraction of asyncio.timeout() per request.
        timer = conn.loop.call_later(timeout_s, _expire, waiter)
        try:
            response = await waiter
        except _TimedOutError as exc:
            self._discard(conn)
            raise httpx.ReadTimeout(f"no response within {total_s or timeout_s:g}s") from exc
        except BaseException:
            self._discard(conn)
            raise
        finally:
            timer.cancel()
        self._release(conn)
        return response

    def _discard(self, conn: _Connection, *, graceful: bool = False) -> None:
        """Drop ``conn``: aborted after a failure (nothing more is read), else closed cleanly."""
        conn.close(abort=not graceful)
        self._open.discard(conn)

    def request_head(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
        """Serialise the request line and headers (Host first), ending with the blank line.

        Through a proxy an http target goes in absolute form with the Proxy-Authorization
        header (an https target's proxy credentials go on the CONNECT only).
        """
        if self._proxy is not None and self._ssl is None:
            target = f"http://{self.host_header}{target}"
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
        if self._proxy is not None and self._ssl is None and self._proxy.authorization:
            lines.append(f"Proxy-Authorization: {self._proxy.authorization}")
        lines.extend(f"{name}: {value}" for name, value in headers)
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Serve any httpx request to this transport's origin (the generic entry point)."""
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        if (request.url.scheme, request.url.host, port) != (self.scheme, self.host, self.port):
            raise httpx.UnsupportedProtocol(
                f"FastTransport serves {self.scheme}://{self.host} only"
            )
        body = await request.aread()
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() not in (b"host", b"content-length", b"transfer-encoding")
        ]
        headers.append(("Content-Length", str(len(body))))
        target = request.url.raw_path.decode("ascii")
        timeout = request.extensions.get("timeout", {})
        read_timeout = timeout.get("read") or timeout.get("pool") or 30.0
        raw = await self.post(
            self.request_head(request.method, target, headers) + body, float(read_timeout)
        )
        headers_out = [(k, v) for k, v in raw.headers.items() if k != "transfer-encoding"]
        extensions = {OVERSIZED_EXTENSION: raw.oversized} if raw.oversized else {}
        return httpx.Response(
            raw.status,
            headers=headers_out,
            content=raw.body,
            request=request,
            extensions=extensions,
        )

    async def aclose(self) -> None:
        """Close every connection; the transport cannot be used afterwards."""
        self._closed = True
        for conn in list(self._open):
            conn.close()  # a clean close (TLS close_notify): idle connections only by now
        self._open.clear()
        self._idle.clear()
