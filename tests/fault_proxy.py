"""A TCP fault proxy on loopback between the bridge and a real redis-server.

It forwards bytes both ways and, on request, loses what a real network loses: the reply to one
XREADGROUP that handed out entries (Redis has assigned them to the consumer; the consumer never
sees them), every command of some kinds (e.g. XACK: acks fail while reads work), or everything
(a blackhole: connections stay open, nothing gets through). Healing closes every connection
that lost bytes, as both ends would after their timeouts.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Final

__all__ = ["FaultProxy", "fault_proxy"]

_CHUNK: Final = 65536
# A blocking XREADGROUP that timed out with nothing answers a nil array (RESP2) or null (RESP3).
_EMPTY_REPLIES: Final = (b"*-1\r\n", b"_\r\n")


@dataclass(eq=False)
class _Link:
    """One client connection and its upstream connection."""

    client: asyncio.StreamWriter
    upstream: asyncio.StreamWriter
    last_command: bytes = b""
    stalled: bool = False


@dataclass
class FaultProxy:
    """Forwards 127.0.0.1:<port> to the upstream Redis; ``swallow_next_read`` and ``blackhole``."""

    upstream_host: str
    upstream_port: int
    port: int = 0
    swallowed: int = 0
    _armed: bool = False
    _blackholed: bool = False
    _stalled_commands: frozenset[bytes] = frozenset()
    _links: set[_Link] = field(default_factory=set)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        """The redis:// URL that goes through the proxy."""
        return f"redis://127.0.0.1:{self.port}/0"

    def swallow_next_read(self) -> None:
        """Drop the next XREADGROUP ``>`` reply that carries entries, and stall its connection."""
        self._armed = True

    def stall_commands(self, *names: bytes) -> None:
        """Never forward commands named ``names`` (e.g. b"XACK"); their connections stall."""
        self._stalled_commands = frozenset(name.upper() for name in names)

    def blackhole(self) -> None:
        """Forward nothing any more, on open and new connections, until heal()."""
        self._blackholed = True
        for link in self._links:
            link.stalled = True

    def heal(self) -> None:
        """Forward again; close the connections that lost bytes (their streams are broken)."""
        self._blackholed = False
        self._stalled_commands = frozenset()
        for link in list(self._links):
            if link.stalled:
                self._close(link)

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for link in list(self._links):
            self._close(link)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        link = _Link(client=writer, upstream=up_writer, stalled=self._blackholed)
        self._links.add(link)
        for coro in (self._to_server(link, reader), self._to_client(link, up_reader)):
            task = asyncio.create_task(coro)
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _to_server(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(_CHUNK):
                if not link.stalled and any(n in chunk.upper() for n in self._stalled_commands):
                    link.stalled = True
                if link.stalled:
                    continue
                link.last_command = chunk
                link.upstream.write(chunk)
                await link.upstream.drain()
        self._close(link)

    async def _to_client(self, link: _Link, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(_CHUNK):
                if link.stalled:
                    continue
                if self._armed and self._hands_out_entries(link.last_command, chunk):
                    self._armed = False
                    self.swallowed += 1
                    link.stalled = True
                    continue
                link.client.write(chunk)
                await link.client.drain()
        self._close(link)

    @staticmethod
    def _hands_out_entries(command: bytes, reply: bytes) -> bool:
        """Tell whether ``reply`` answers an XREADGROUP for new entries with some."""
        is_new_read = b"XREADGROUP" in command.upper() and b"\r\n>\r\n" in command
        return is_new_read and not reply.startswith(_EMPTY_REPLIES)

    def _close(self, link: _Link) -> None:
        if link in self._links:
            self._links.discard(link)
            link.client.close()
            link.upstream.close()


@asynccontextmanager
async def fault_proxy(redis_url: str) -> AsyncIterator[FaultProxy]:
    """Run a FaultProxy in front of the Redis at ``redis_url`` (redis://host:port/...)."""
    host_port = redis_url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.rpartition(":")
    proxy = FaultProxy(host, int(port))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
