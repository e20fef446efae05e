"""``FastTransport``: an httpx transport for one origin, on asyncio and httptools.

httpx's default async engine (httpcore) costs 1-4 ms of CPU per request on this path (its pool
works per pooled connection on every request, encode/httpcore#1035), 15-20x what the rest of a
delivery costs. This transport keeps the httpx API (``httpx.AsyncClient(transport=...)`` works,
and it raises httpx's exceptions) but does HTTP/1.1 keep-alive itself: one asyncio Protocol per
connection (:mod:`bridge.edge.protocol`: responses parsed by httptools, uvicorn's C parser,
chunked and all, within :class:`~bridge.edge.protocol.Limits`), a LIFO pool of idle
connections, TLS through ``ssl.SSLContext``. ``post()`` is the hot path the client calls
directly with prebuilt header bytes, skipping httpx.Request/Response construction.

An answer past a limit comes back with ``oversized`` set (the status line is known, the body is
not). Through an HTTP proxy, http targets go in absolute form and https targets through a
CONNECT tunnel (:mod:`bridge.edge.tunnel`) with the origin's certificate verified.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Sequence
from typing import Final

import httpx

from bridge.edge.protocol import (
    DEFAULT_TCP_USER_TIMEOUT_S,
    Connection,
    Limits,
    RawResponse,
    ResponseTimeoutError,
    StaleConnectionError,
)
from bridge.edge.slots import Slots
from bridge.edge.tunnel import open_tunnel, parse_proxy

__all__ = [
    "DEFAULT_CONNECT_TIMEOUT_S",
    "OVERSIZED_EXTENSION",
    "FastTransport",
]

# Below common server keep-alive timeouts (uvicorn 5 s, nginx 75 s), so the pool rarely picks a
# connection the server is closing; one that was closed anyway is retried once (see post()).
DEFAULT_KEEPALIVE_EXPIRY_S: Final = 4.0
DEFAULT_CONNECT_TIMEOUT_S: Final = 10.0
# The extension key under which handle_async_request reports an oversized answer.
OVERSIZED_EXTENSION: Final = "bridge.oversized"


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
        self._proxy = parse_proxy(proxy) if proxy else None
        self._idle: list[Connection] = []
        self._slots = Slots(max_connections)
        self._open: set[Connection] = set()
        self._closed = False

    def __repr__(self) -> str:
        via = f" via {self._proxy.host}:{self._proxy.port}" if self._proxy else ""
        return f"FastTransport({self.scheme}://{self.host_header}{via})"

    def _new_connection(self) -> Connection:
        """Build the protocol of one connection with this transport's limits."""
        return Connection(self.limits, self._user_timeout_s)

    async def _connect(self, timeout_s: float) -> Connection:
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

    async def _open_connection(self) -> Connection:
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
        return await open_tunnel(
            loop,
            self._proxy,
            self._new_connection,
            authority=self._authority,
            server_hostname=self.host,
            context=self._ssl,
            max_head_bytes=self.limits.max_head_bytes,
        )

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if conn.closed or now - conn.idle_since > self._keepalive_expiry_s:
                self._discard(conn, graceful=True)
                continue
            return conn
        return None

    async def post(self, request: bytes, timeout_s: float) -> RawResponse:
        """Send prebuilt request bytes on a pooled connection and read the whole response."""
        if self._closed:
            raise httpx.ConnectError("transport is closed")
        slots = self._slots
        if not slots.try_take():
            await slots.take()
        try:
            # One loop, not a method per exchange: the hot path (an idle connection that
            # answers) runs without a coroutine of its own, and takes and gives back its
            # connection in place (_take_idle is for the rest).
            idle = self._idle
            conn = idle.pop() if idle else None
            if conn is not None and (
                conn.closed or time.monotonic() - conn.idle_since > self._keepalive_expiry_s
            ):
                self._discard(conn, graceful=True)
                conn = self._take_idle()
            reused = conn is not None
            wait_s = timeout_s
            while True:
                if conn is None:
                    started = time.monotonic()
                    conn = await self._connect(timeout_s)
                    # One deadline for the whole request: the time spent connecting counts.
                    wait_s = max(0.001, timeout_s - (time.monotonic() - started))
                try:
                    response = await conn.send(request, wait_s)
                except StaleConnectionError:
                    self._discard(conn)
                    if not reused:
                        raise
                    # Closed by the server while idle: once more on a fresh connection.
                    conn, reused = None, False
                    continue
                except ResponseTimeoutError as exc:
                    self._discard(conn)
                    raise httpx.ReadTimeout(f"no response within {timeout_s:g}s") from exc
                except BaseException:
                    self._discard(conn)
                    raise
                if conn.closed or self._closed:
                    self._discard(conn, graceful=True)
                else:  # back to the pool
                    conn.idle_since = time.monotonic()
                    idle.append(conn)
                return response
        finally:
            slots.give()

    def _discard(self, conn: Connection, *, graceful: bool = False) -> None:
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
