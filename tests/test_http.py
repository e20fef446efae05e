"""FastTransport against scripted HTTP/1.1 servers on loopback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from bridge.http import FastTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, int], Awaitable[None]]


@asynccontextmanager
async def scripted(handler: Handler) -> AsyncIterator[tuple[str, list[int]]]:
    """Serve ``handler`` on 127.0.0.1; yield (base URL, connection counter per accept)."""
    accepted: list[int] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(len(accepted))
        try:
            await handler(reader, writer, len(accepted))
        finally:
            writer.close()

    server = await asyncio.start_server(on_connect, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", accepted
    finally:
        server.close()
        await server.wait_closed()


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + await reader.readexactly(length)


def _request(transport: FastTransport, body: bytes = b"{}") -> bytes:
    head = transport.request_head(
        "POST", "/x", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return head + body


async def test_keep_alive_reuses_one_connection() -> None:
    """Sequential requests share one connection while the server keeps it alive."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        for _ in range(3):
            request = await _read_request(reader)
            assert request.startswith(b"POST /x HTTP/1.1\r\nHost: 127.0.0.1:")
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()

    async with scripted(handler) as (url, accepted):
        transport = FastTransport(url)
        try:
            for _ in range(3):
                response = await transport.post(_request(transport), 5)
                assert (response.status, response.body) == (201, b"ok")
        finally:
            await transport.aclose()
    assert len(accepted) == 1


async def test_chunked_responses_are_reassembled() -> None:
    """A chunked body arrives whole, headers lower-cased."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        await _read_request(reader)
        writer.write(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nRetry-After: 3\r\n\r\n"
            b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
        )
        await writer.drain()

    async with scripted(handler) as (url, _):
        transport = FastTransport(url)
        try:
            response = await transport.post(_request(transport), 5)
        finally:
            await transport.aclose()
    assert response.body == b"hello world"
    assert response.headers["retry-after"] == "3"


async def test_a_connection_closed_while_idle_is_retried_on_a_new_one() -> None:
    """The server drops the kept-alive connection; the next request still succeeds."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        await _read_request(reader)
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        # Leaves: the connection closes after one answer although it looked keep-alive.

    async with scripted(handler) as (url, accepted):
        transport = FastTransport(url)
        try:
            assert (await transport.post(_request(transport), 5)).status == 201
            await asyncio.sleep(0.05)
            assert (await transport.post(_request(transport), 5)).status == 201
        finally:
            await transport.aclose()
    assert len(accepted) == 2


async def test_connection_close_is_not_reused() -> None:
    """A response with Connection: close makes the next request open a new connection."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        await _read_request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx")
        await writer.drain()
        await asyncio.sleep(0.5)

    async with scripted(handler) as (url, accepted):
        transport = FastTransport(url)
        try:
            await transport.post(_request(transport), 5)
            await transport.post(_request(transport), 5)
        finally:
            await transport.aclose()
    assert len(accepted) == 2


async def test_garbage_is_a_protocol_error() -> None:
    """A reply that is not HTTP raises httpx.RemoteProtocolError."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        await _read_request(reader)
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async with scripted(handler) as (url, _):
        transport = FastTransport(url)
        try:
            with pytest.raises(httpx.RemoteProtocolError):
                await transport.post(_request(transport), 5)
        finally:
            await transport.aclose()


async def test_a_silent_server_times_out() -> None:
    """No answer within the timeout raises httpx.ReadTimeout (a TimeoutException)."""
    release = asyncio.Event()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del writer, n
        await _read_request(reader)
        await asyncio.wait_for(release.wait(), 5)

    async with scripted(handler) as (url, _):
        transport = FastTransport(url)
        try:
            with pytest.raises(httpx.ReadTimeout):
                await transport.post(_request(transport), 0.1)
        finally:
            release.set()
            await transport.aclose()


async def test_refused_connection_is_a_connect_error() -> None:
    """Nothing listening raises httpx.ConnectError."""
    async with scripted(lambda r, w, n: asyncio.sleep(0)) as (url, _):
        pass
    transport = FastTransport(url)
    with pytest.raises(httpx.ConnectError):
        await transport.post(_request(transport), 2)
    await transport.aclose()


async def test_connections_are_bounded_by_max_connections() -> None:
    """Twenty concurrent requests use at most three connections."""
    live = 0
    peak = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        nonlocal live, peak
        del n
        live += 1
        peak = max(peak, live)
        try:
            while True:
                try:
                    await _read_request(reader)
                except asyncio.IncompleteReadError:
                    return
                await asyncio.sleep(0.005)
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        finally:
            live -= 1

    async with scripted(handler) as (url, _):
        transport = FastTransport(url, max_connections=3)
        try:
            results = await asyncio.gather(
                *(transport.post(_request(transport), 5) for _ in range(20))
            )
        finally:
            await transport.aclose()
    assert [r.status for r in results] == [201] * 20
    assert peak <= 3


async def test_works_as_an_ordinary_httpx_transport() -> None:
    """httpx.AsyncClient(transport=FastTransport(...)) serves any request to its origin."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        request = await _read_request(reader)
        assert request.startswith(b"PUT /thing?q=1 HTTP/1.1\r\n")
        assert b"x-test: yes" in request.lower()
        writer.write(b"HTTP/1.1 202 Accepted\r\nContent-Length: 4\r\nX-Answer: 42\r\n\r\ndone")
        await writer.drain()

    async with scripted(handler) as (url, _):  # noqa: SIM117 - the client needs the server's URL
        async with httpx.AsyncClient(transport=FastTransport(url)) as client:
            response = await client.put(
                f"{url}/thing?q=1", content=b"abc", headers={"X-Test": "yes"}
            )
            assert response.status_code == 202
            assert response.text == "done"
            assert response.headers["x-answer"] == "42"
            with pytest.raises(httpx.UnsupportedProtocol):
                await client.get("http://example.invalid/")


async def test_a_closed_transport_refuses_requests() -> None:
    """After aclose() every request fails fast."""
    transport = FastTransport("http://127.0.0.1:9")
    await transport.aclose()
    with pytest.raises(httpx.ConnectError):
        await transport.post(b"", 1)


def test_host_header_and_default_ports() -> None:
    """The Host header omits default ports and brackets IPv6 literals."""
    assert FastTransport("https://ingest.example.com/x").host_header == "ingest.example.com"
    assert FastTransport("http://127.0.0.1:8080").host_header == "127.0.0.1:8080"
    assert FastTransport("http://[::1]:81").host_header == "[::1]:81"


async def test_interim_responses_are_skipped() -> None:
    """A 103 Early Hints before the 201 is not taken as the answer (nor left for the next)."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        for i in range(2):
            await _read_request(reader)
            writer.write(
                b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
                + f"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n{i}".encode()
            )
            await writer.drain()

    async with scripted(handler) as (url, accepted):
        transport = FastTransport(url)
        try:
            first = await transport.post(_request(transport), 5)
            second = await transport.post(_request(transport), 5)
        finally:
            await transport.aclose()
    assert (first.status, first.body, second.status, second.body) == (201, b"0", 201, b"1")
    assert len(accepted) == 1


async def test_a_late_answer_never_answers_the_next_request() -> None:
    """After a timeout, the slow answer is not read as the reply to the following request."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        await _read_request(reader)
        if n == 1:
            await asyncio.sleep(0.3)  # answers after the client gave up
        writer.write(f"HTTP/1.1 201 Created\r\nContent-Length: 1\r\n\r\n{n}".encode())
        await writer.drain()
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await _read_request(reader)

    async with scripted(handler) as (url, _):
        transport = FastTransport(url)
        try:
            with pytest.raises(httpx.ReadTimeout):
                await transport.post(_request(transport), 0.1)
            response = await transport.post(_request(transport), 5)
        finally:
            await transport.aclose()
    assert response.body == b"2"
