"""``FastTransport``: an httpx transport for one origin, on asyncio and httptools.

httpx's default async engine (httpcore) costs 1-4 ms of CPU per request on this path (its pool
works per pooled connection on every request, encode/httpcore#1035), 15-20x what the rest of a
delivery costs. This transport keeps the httpx API (``httpx.AsyncClient(transport=...)`` works,
and it raises httpx's exceptions) but does HTTP/1.1 keep-alive itself: one asyncio Protocol per
connection, responses parsed by httptools (uvicorn's C parser, chunked and all), a LIFO pool of
idle connections, TLS through ``ssl.SSLContext``. ``post()`` is the hot path the client calls
directly with prebuilt header bytes, skipping httpx.Request/Response construction.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Final, cast

import httptools
import httpx

__all__ = ["FastTransport", "RawResponse"]

# Below common server keep-alive timeouts (uvicorn 5 s, nginx 75 s), so the pool rarely picks a
# connection the server is closing; one that was closed anyway is retried once (see post()).
DEFAULT_KEEPALIVE_EXPIRY_S: Final = 4.0


class _StaleConnectionError(httpx.RemoteProtocolError):
    """A kept-alive connection closed before any byte of the response arrived."""


class _TimedOutError(Exception):
    """The response did not arrive in time (becomes httpx.ReadTimeout)."""


def _expire(waiter: asyncio.Future[RawResponse]) -> None:
    if not waiter.done():
        waiter.set_exception(_TimedOutError())


class RawResponse:
    """Status, lower-cased headers and the whole body of one response."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.closed = False
        self.idle_since = 0.0
        self._waiter: asyncio.Future[RawResponse] | None = None
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._received = False

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """Keep the transport; requests are written to it."""
        # A stream transport (asyncio's or uvloop's, which is not an asyncio.Transport subclass).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        """Feed the parser; a parse error fails the waiting request."""
        self._received = True
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(httpx.RemoteProtocolError(f"malformed HTTP response: {exc}"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        """Fail a waiting request: the server closed or reset the connection."""
        self.closed = True
        if self._received:
            self._fail(httpx.RemoteProtocolError("server closed the connection mid-response"))
        else:
            self._fail(_StaleConnectionError("server closed the connection before answering"))

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        """Collect a header (lower-cased name; a repeated header keeps the last value)."""
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        """Collect a body chunk."""
        self._body.append(body)

    def on_message_complete(self) -> None:
        """Resolve the waiting request with the whole response."""
        status = self.parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            # Interim (100 Continue, 103 Early Hints): the final response follows.
            self._headers, self._body = {}, []
            return
        response = RawResponse(status, self._headers, b"".join(self._body))
        if not self.parser.should_keep_alive():
            self.close()
        waiter, self._waiter = self._waiter, None
        if waiter is None or waiter.done():
            # An answer nobody waits for (a late one after a timeout) must never be taken as
            # the answer to the next request on this connection.
            self.close()
            return
        waiter.set_result(response)

    # requests

    def _fail(self, exc: Exception) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)

    def send(self, data: bytes) -> asyncio.Future[RawResponse]:
        """Write one request; the future resolves with its response."""
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _StaleConnectionError("connection is closed")
        self._headers = {}
        self._body = []
        self._received = False
        waiter: asyncio.Future[RawResponse] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self.transport.write(data)
        return waiter

    def close(self) -> None:
        """Close the socket; the pool drops closed connections."""
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class FastTransport(httpx.AsyncBaseTransport):
    """Keep-alive HTTP/1.1 to one origin (scheme, host, port), up to ``max_connections``."""

    def __init__(
        self,
        url: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 32,
        keepalive_expiry_s: float = DEFAULT_KEEPALIVE_EXPIRY_S,
        connect_timeout_s: float = 10.0,
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
        self._keepalive_expiry_s = keepalive_expiry_s
        self._connect_timeout_s = connect_timeout_s
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)
        self._open: set[_Connection] = set()
        self._closed = False

    async def _connect(self, timeout_s: float) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(min(timeout_s, self._connect_timeout_s)):
                _, conn = await loop.create_connection(
                    _Connection,
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(f"connect to {self.host}:{self.port} timed out") from exc
        except OSError as exc:  # includes ssl.SSLError and certificate failures
            raise httpx.ConnectError(f"cannot connect to {self.host}:{self.port}: {exc}") from exc
        self._open.add(conn)
        return conn

    def _take_idle(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or now - conn.idle_since > self._keepalive_expiry_s:
                self._discard(conn)
                continue
            return conn
        return None

    def _release(self, conn: _Connection) -> None:
        if conn.closed or self._closed:
            self._discard(conn)
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
            return await self._exchange(await self._connect(timeout_s), request, timeout_s)

    async def _exchange(self, conn: _Connection, request: bytes, timeout_s: float) -> RawResponse:
        """One request and its response on ``conn``; the connection returns to the pool."""
        try:
            waiter = conn.send(request)
        except BaseException:
            self._discard(conn)
            raise
        # A timer on the waiter costs a fraction of asyncio.timeout() per request.
        timer = asyncio.get_running_loop().call_later(timeout_s, _expire, waiter)
        try:
            response = await waiter
        except _TimedOutError as exc:
            self._discard(conn)
            raise httpx.ReadTimeout(f"no response within {timeout_s}s") from exc
        except BaseException:
            self._discard(conn)
            raise
        finally:
            timer.cancel()
        self._release(conn)
        return response

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self._open.discard(conn)

    def request_head(self, method: str, target: str, headers: Sequence[tuple[str, str]]) -> bytes:
        """Serialise the request line and headers (Host first), ending with the blank line."""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.host_header}"]
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
        return httpx.Response(raw.status, headers=headers_out, content=raw.body, request=request)

    async def aclose(self) -> None:
        """Close every connection; the transport cannot be used afterwards."""
        self._closed = True
        for conn in list(self._open):
            conn.close()
        self._open.clear()
        self._idle.clear()
