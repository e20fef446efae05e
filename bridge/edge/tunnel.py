"""Through an HTTP forward proxy: its URL's parts, and the CONNECT tunnel for https targets.

An http target needs no tunnel (the transport writes requests to the proxy in absolute form);
an https target gets a CONNECT, the proxy's bounded answer, then TLS to the origin inside the
tunnel, with the origin's certificate verified. A refusal is :class:`ProxyRefusedError`.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
from collections.abc import Callable
from typing import NamedTuple, cast
from urllib.parse import unquote

import httpx

from bridge.edge.protocol import Connection

__all__ = ["Proxy", "ProxyRefusedError", "open_tunnel", "parse_proxy"]


class ProxyRefusedError(httpx.ProxyError):
    """The proxy answered CONNECT with a non-2xx ``status`` (407: our credentials refused)."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


class Proxy(NamedTuple):
    """Where the proxy listens and the Proxy-Authorization value (None without credentials)."""

    host: str
    port: int
    authorization: str | None


def parse_proxy(url: str) -> Proxy:
    """Split an http:// proxy URL into host, port and a Basic Proxy-Authorization value."""
    parsed = httpx.URL(url)
    if parsed.scheme != "http" or not parsed.host:
        raise httpx.UnsupportedProtocol("only http:// proxies are supported")
    authorization = None
    if parsed.username or parsed.password:
        user_pass = f"{unquote(parsed.username)}:{unquote(parsed.password or '')}"
        authorization = "Basic " + base64.b64encode(user_pass.encode()).decode("ascii")
    return Proxy(parsed.host, parsed.port or 80, authorization)


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


async def open_tunnel(
    loop: asyncio.AbstractEventLoop,
    proxy: Proxy,
    new_connection: Callable[[], Connection],
    *,
    authority: str,
    server_hostname: str,
    context: ssl.SSLContext,
    max_head_bytes: int,
) -> Connection:
    """CONNECT through the proxy to ``authority``, then TLS to the origin inside the tunnel.

    Returns a connection from ``new_connection`` that carries the requests over the tunnel.
    The proxy's socket is aborted if anything fails on the way (refusal, handshake, cancel).
    """
    transport, reply = await loop.create_connection(
        lambda: _TunnelReply(max_head_bytes), proxy.host, proxy.port
    )
    conn = new_connection()
    try:
        tls = await _through(
            loop,
            transport,
            reply,
            proxy=proxy,
            authority=authority,
            server_hostname=server_hostname,
            context=context,
            conn=conn,
        )
    except BaseException:
        transport.abort()
        raise
    conn.connection_made(tls)
    return conn


async def _through(
    loop: asyncio.AbstractEventLoop,
    transport: asyncio.BaseTransport,
    reply: _TunnelReply,
    *,
    proxy: Proxy,
    authority: str,
    server_hostname: str,
    context: ssl.SSLContext,
    conn: Connection,
) -> asyncio.BaseTransport:
    """Ask for the tunnel and start TLS inside it; ProxyError when the proxy refuses."""
    head = f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n"
    if proxy.authorization is not None:
        head += f"Proxy-Authorization: {proxy.authorization}\r\n"
    cast(asyncio.Transport, transport).write((head + "\r\n").encode("latin-1"))
    status = await reply.status
    if not 200 <= status < 300:
        raise ProxyRefusedError(f"proxy answered {status} to CONNECT {authority}", status=status)
    tls = await loop.start_tls(
        cast(asyncio.WriteTransport, transport), conn, context, server_hostname=server_hostname
    )
    if tls is None:  # only for a transport already closing
        raise httpx.ConnectError("the tunnel closed during the TLS handshake")
    return tls
