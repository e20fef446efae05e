"""A TCP proxy on loopback that delays what a client sends (late, never lost or reordered).

Put between a replica and the ingest server it holds a POST on the wire past a takeover; put
between a replica and Redis it makes every command arrive late. ``delay_s`` applies to the bytes
read from the client from the moment it is set; bytes keep their order on each connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["DelayProxy", "delay_proxy"]

_CHUNK: Final = 65536


@dataclass
class DelayProxy:
    """Forwards 127.0.0.1:<port> to ``upstream``; client bytes wait ``delay_s`` before going on."""

    upstream_host: str
    upstream_port: int
    delay_s: float = 0.0
    port: int = 0
    delayed_chunks: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _server: asyncio.Server | None = None

    def url(self, scheme: str = "http") -> str:
        """The URL that goes through the proxy (``redis`` for a Redis upstream)."""
        suffix = "/0" if scheme == "redis" else ""
        return f"{scheme}://127.0.0.1:{self.port}{suffix}"

    async def start(self) -> None:
        """Listen on a free loopback port."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def aclose(self) -> None:
        """Stop listening and close every connection."""
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(
                self.upstream_host, self.upstream_port
            )
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        self._spawn(self._read_client(reader, queue))
        self._spawn(self._send_late(queue, up_writer))
        self._spawn(self._pipe(up_reader, writer))

    async def _read_client(
        self,
        reader: asyncio.StreamReader,
        queue: asyncio.Queue[tuple[float, bytes]],
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(_CHUNK):
                if self.delay_s:
                    self.delayed_chunks += 1
                queue.put_nowait((time.monotonic() + self.delay_s, chunk))
        queue.put_nowait((time.monotonic() + self.delay_s, b""))

    async def _send_late(
        self, queue: asyncio.Queue[tuple[float, bytes]], upstream: asyncio.StreamWriter
    ) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while True:
                due, chunk = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    break
                upstream.write(chunk)
                await upstream.drain()
        upstream.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await reader.read(_CHUNK):
                writer.write(chunk)
                await writer.drain()
        writer.close()


@asynccontextmanager
async def delay_proxy(url: str) -> AsyncIterator[DelayProxy]:
    """Run a DelayProxy in front of ``url`` (``scheme://host:port/...``)."""
    host_port = url.split("://", 1)[1].split("/", 1)[0].rsplit("@", 1)[-1]
    host, _, port = host_port.rpartition(":")
    proxy = DelayProxy(host, int(port))
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.aclose()
