"""One response timer per connection: each request still times out at its own deadline."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from bridge.edge.http import FastTransport

_ANSWER = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok"


@asynccontextmanager
async def _answering_until(silent_from: int) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve on loopback: answer requests 1 .. ``silent_from - 1``, then read and stay silent."""
    accepted: list[int] = []
    handlers: set[asyncio.Task[object]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        seen = 0
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                seen += 1
                if seen < silent_from:
                    writer.write(_ANSWER)
                    await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()
        if handlers:  # each ends once the client closed its connection
            await asyncio.wait(handlers, timeout=2)


def _request(transport: FastTransport) -> bytes:
    return transport.request_head("POST", "/x", [("Content-Length", "2")]) + b"{}"


async def test_a_later_request_on_the_connection_times_out_at_its_own_deadline() -> None:
    """The timer armed by the first request waits on for the second one's deadline."""
    async with _answering_until(silent_from=2) as (url, accepted):
        transport = FastTransport(url)
        try:
            assert (await transport.post(_request(transport), 0.4)).status == 201
            await asyncio.sleep(0.2)  # the first deadline passes while the second waits
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout, match=r"no response within 0.4s"):
                await transport.post(_request(transport), 0.4)
            assert 0.39 <= time.monotonic() - started < 1.0
        finally:
            await transport.aclose()
    assert len(accepted) == 1


async def test_a_shorter_timeout_than_the_armed_one_fires_first() -> None:
    """A request with a shorter timeout moves the connection's timer earlier."""
    async with _answering_until(silent_from=2) as (url, _):
        transport = FastTransport(url)
        try:
            assert (await transport.post(_request(transport), 30)).status == 201
            started = time.monotonic()
            with pytest.raises(httpx.ReadTimeout, match=r"no response within 0.2s"):
                await transport.post(_request(transport), 0.2)
            assert time.monotonic() - started < 1.0
        finally:
            await transport.aclose()


async def test_a_timer_that_fires_while_the_connection_is_idle_fails_nothing() -> None:
    """Past an answered request's deadline, the idle connection still serves the next one."""
    async with _answering_until(silent_from=99) as (url, accepted):
        transport = FastTransport(url)
        try:
            assert (await transport.post(_request(transport), 0.05)).status == 201
            await asyncio.sleep(0.15)
            assert (await transport.post(_request(transport), 0.05)).status == 201
            assert (await transport.post(_request(transport), 5)).status == 201
        finally:
            await transport.aclose()
    assert len(accepted) == 1
