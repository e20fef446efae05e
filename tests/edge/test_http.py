"""FastTransport against scripted HTTP/1.1 servers on loopback."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import httpx
import pytest

from bridge.edge.http import OVERSIZED_EXTENSION, FastTransport
from bridge.edge.protocol import Limits, RawResponse

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


def _answering(answer: bytes, *, close: bool = False) -> Handler:
    """A handler that answers every request on a connection with ``answer`` bytes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                await _read_request(reader)
                writer.write(answer)
                await writer.drain()
                if close:
                    return

    return handler


async def _post_once(url: str, **options: object) -> RawResponse:
    transport = FastTransport(url, **options)  # type: ignore[arg-type]
    try:
        return await transport.post(_request(transport), 5)
    finally:
        await transport.aclose()


async def test_a_close_delimited_body_ends_when_the_server_closes() -> None:
    """No Content-Length, no chunking: the close ends the body (RFC 9112 6.3), not an error."""
    answer = b'HTTP/1.1 201 Created\r\nContent-Type: application/json\r\n\r\n{"a":1}'
    async with scripted(_answering(answer, close=True)) as (url, _):
        response = await _post_once(url)
    assert (response.status, response.body, response.oversized) == (201, b'{"a":1}', None)


async def test_http_1_0_answers_are_read_and_their_connection_not_reused() -> None:
    """An HTTP/1.0 answer with a length is complete; the next request uses a new connection."""
    answer = b"HTTP/1.0 409 Conflict\r\nContent-Length: 2\r\n\r\n{}"
    async with scripted(_answering(answer)) as (url, accepted):
        transport = FastTransport(url)
        try:
            for _ in range(2):
                response = await transport.post(_request(transport), 5)
                assert (response.status, response.body) == (409, b"{}")
        finally:
            await transport.aclose()
    assert len(accepted) == 2


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (b"HTTP/1.1 201 Created\r\nContent-Length: 2000\r\n\r\n" + b"x" * 2000, "body over 1000"),
        (b"HTTP/1.1 201 Created\r\n" + b"X-A: b\r\n" * 11 + b"\r\n", "more than 10 response"),
        (b"HTTP/1.1 201 Created\r\nX-Big: " + b"y" * 5000 + b"\r\n\r\n", "head over 4096"),
    ],
)
async def test_a_2xx_past_a_limit_is_returned_flagged_and_unread(
    answer: bytes, reason: str
) -> None:
    """Past the body, header-line or head limit: the status is known, the body is dropped."""
    limits = Limits(max_head_bytes=4096, max_header_lines=10, max_body_bytes=1000)
    async with scripted(_answering(answer)) as (url, _):
        response = await _post_once(url, limits=limits)
    assert response.status == 201
    assert response.body == b""
    assert response.oversized is not None
    assert reason in response.oversized


async def test_a_head_over_the_limit_before_the_status_line_is_a_protocol_error() -> None:
    """Without a status line nothing is known: a protocol error (the caller retries)."""
    async with scripted(_answering(b"HTTP/1.1 201 " + b"C" * 10_000)) as (url, _):
        with pytest.raises(httpx.RemoteProtocolError, match="before a status line"):
            await _post_once(url, limits=Limits(max_head_bytes=1024))


async def test_a_limit_aborts_the_connection_and_the_next_request_uses_a_new_one() -> None:
    """The rest of an oversized answer is never read: its connection is dropped at once."""
    answer = b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\n" + b"z" * 5000
    async with scripted(_answering(answer)) as (url, accepted):
        transport = FastTransport(url, limits=Limits(max_body_bytes=100))
        try:
            for _ in range(2):
                assert (await transport.post(_request(transport), 5)).oversized
        finally:
            await transport.aclose()
    assert len(accepted) == 2


async def test_tcp_keepalive_and_user_timeout_are_set_on_connections() -> None:
    """Each connection carries keepalive probes and TCP_USER_TIMEOUT from the setting."""
    seen: list[tuple[int, int]] = []
    answer = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
    async with scripted(_answering(answer)) as (url, _):
        transport = FastTransport(url, tcp_user_timeout_s=6)
        try:
            await transport.post(_request(transport), 5)
            for conn in transport._open:
                assert conn.transport is not None
                sock = conn.transport.get_extra_info("socket")
                seen.append(
                    (
                        sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                        sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
                    )
                )
        finally:
            await transport.aclose()
    assert seen == [(1, 6000)]


async def test_through_a_proxy_http_targets_go_in_absolute_form_with_credentials() -> None:
    """The request line names the origin; Proxy-Authorization carries the URL's user."""
    requests: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        requests.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    async with scripted(proxy) as (proxy_url, _):
        authed = proxy_url.replace("http://", "http://us%40er:p%3Ass@")
        response = await _post_once("http://ingest.internal:8080", proxy=authed)
    assert response.status == 201
    head = requests[0].split(b"\r\n")
    assert head[0] == b"POST http://ingest.internal:8080/x HTTP/1.1"
    assert b"Host: ingest.internal:8080" in head
    assert b"Proxy-Authorization: Basic " + base64.b64encode(b"us@er:p:ss") in head


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"HTTP/1.1 403 Forbidden\r\nContent-Length: 3\r\n\r\nno!", "answered 403 to CONNECT"),
        (b"HTTP/1.1 200 OK\r\n\r\nsurprise", "data before the tunnel"),
        (b"SSH-2.0-OpenSSH\r\n\r\n", "malformed proxy answer"),
        (b"", "closed the connection during CONNECT"),
    ],
)
async def test_a_refused_or_broken_connect_is_a_proxy_error(reply: bytes, message: str) -> None:
    """CONNECT answered with an error, garbage, early data or a close: ProxyError, no TLS."""
    connects: list[bytes] = []

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
        del n
        connects.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(reply)
        await writer.drain()

    async with scripted(proxy) as (proxy_url, _):
        with pytest.raises(httpx.ProxyError, match=message):
            await _post_once("https://ingest.internal", proxy=proxy_url)
    assert connects[0].startswith(b"CONNECT ingest.internal:443 HTTP/1.1\r\n")


async def test_an_oversized_answer_is_flagged_through_the_httpx_api() -> None:
    """Through httpx.AsyncClient the flag is the response's ``bridge.oversized`` extension."""
    answer = b"HTTP/1.1 201 Created\r\nContent-Length: 500\r\n\r\n" + b"q" * 500
    async with scripted(_answering(answer)) as (url, _):
        transport = FastTransport(url, limits=Limits(max_body_bytes=100))
        async with httpx.AsyncClient(transport=transport) as client:
            response = await client.post(f"{url}/x", content=b"{}")
    assert response.status_code == 201
    assert response.content == b""
    assert response.extensions[OVERSIZED_EXTENSION] == "response body over 100 bytes"
