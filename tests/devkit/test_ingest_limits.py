"""The reference ingest server facing hostile peers: head size and count, slow clients, bounds.

The memory tests run the real ``signal-bridge ingest-server`` as a child process and read its
peak resident size (``VmHWM``) from /proc, so they measure the server, not the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx
import pytest

from bridge.core.signal import encode_canonical
from bridge.core.signing import INGEST_PATH, build_signature
from bridge.core.timestamps import format_timestamp
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.devkit.ingest_guard import ServerLimits
from tests.fixtures_ingest import KEY_ID, PRODUCER_ID, TEST_SECRET, make_signal
from tests.procs import Replica, Replicas
from tests.support import eventually

MIB: Final = 1024 * 1024
# The bound for the server's peak resident memory under a hostile peer.
RSS_LIMIT: Final = 100 * MIB
HUGE_HEADER: Final = 300 * MIB
CHUNK: Final = 64 * 1024


def _signed_request(i: int = 0) -> tuple[bytes, dict[str, str]]:
    """A fresh signal's canonical body and the headers a producer signs it with."""
    body = encode_canonical(make_signal(signal_id=f"sig-limits-{i}-{uuid.uuid4().hex[:8]}"))
    timestamp = format_timestamp(datetime.now(UTC))
    return body, {
        "Content-Type": "application/json",
        "X-Producer-Id": PRODUCER_ID,
        "X-Key-Id": KEY_ID,
        "X-Timestamp": timestamp,
        "X-Signature": build_signature(TEST_SECRET, body, timestamp, PRODUCER_ID),
        "X-Idempotency-Key": str(uuid.uuid4()),
    }


async def _post_signed(url: str, i: int = 0) -> httpx.Response:
    """POST one correctly signed signal to the server at ``url``."""
    body, headers = _signed_request(i)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        return await client.post(INGEST_PATH, content=body, headers=headers)


def _free_port() -> int:
    """Ask the kernel for a free loopback port."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _peak_rss(pid: int) -> int:
    """The process's peak resident set size in bytes (VmHWM from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for pid {pid}")


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[tuple[Replica, str]]:
    """Run ``signal-bridge ingest-server`` with 1 s head and body timeouts; yield it and its URL."""
    port = _free_port()
    with Replicas(tmp_path) as children:
        child = children.start(
            "ingest",
            {"INGEST_SECRETS": f"{KEY_ID}={TEST_SECRET.decode()}", "OTEL_SDK_DISABLED": "true"},
            command=(
                "ingest-server",
                "--port",
                str(port),
                "--header-timeout",
                "1",
                "--body-timeout",
                "1",
            ),
        )
        yield child, f"http://127.0.0.1:{port}"


async def _started(child: Replica) -> None:
    """Wait until the child server logs that it is ready."""
    await eventually(
        lambda: "ingest server ready" in child.stdout() or not child.alive,
        what="ingest server start",
    )
    assert child.alive, child.output()


async def _read_until_closed(reader: asyncio.StreamReader, timeout_s: float) -> bytes:
    """Read what the server sends until it closes or resets the connection (within ``timeout_s``).

    A server that closes with unread client bytes in its buffer sends a reset, which may
    discard its answer: the callers accept an empty answer where that can happen.
    """
    data = b""
    with contextlib.suppress(ConnectionError):
        async with asyncio.timeout(timeout_s):
            while chunk := await reader.read(4096):
                data += chunk
    return data


async def test_a_300_mb_header_is_refused_with_431_and_the_server_stays_small(
    server_process: tuple[Replica, str],
) -> None:
    """A 300 MB header is cut off with 431; the server peaks under 100 MB and still answers."""
    child, url = server_process
    await _started(child)
    port = int(url.rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nX-Big: ".encode())
    filler = b"a" * CHUNK
    sent = 0
    cut_off = False
    for _ in range(HUGE_HEADER // CHUNK):
        try:
            writer.write(filler)
            await writer.drain()
        except ConnectionError:
            cut_off = True
            break
        sent += CHUNK
    assert cut_off, "the server read the whole 300 MB header"
    answer = await _read_until_closed(reader, 10)
    writer.close()
    # The client's unread bytes make the close a reset, which may swallow the 431 itself.
    assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert '"http_code":431' in child.stdout()
    assert "request head too large" in child.stdout()
    assert sent < 16 * MIB, f"the server read {sent} bytes of one header before refusing"
    assert (await _post_signed(url)).status_code == 201
    assert _peak_rss(child.proc.pid) < RSS_LIMIT, f"peak RSS {_peak_rss(child.proc.pid)} bytes"


async def _slow_client(port: int, head: bytes) -> bytes:
    """Send ``head``, then one byte every 0.2 s (for at most 5 s); return the server's answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = asyncio.create_task(_read_until_closed(reader, 6))
    for _ in range(25):
        if answer.done() or writer.is_closing():
            break
        writer.write(b"a")
        await asyncio.sleep(0.2)
    try:
        return await answer
    finally:
        writer.close()


async def test_slow_heads_and_bodies_are_dropped_and_normal_requests_still_served(
    server_process: tuple[Replica, str],
) -> None:
    """Slowloris heads and bodies get 408 and are closed within the timeout; others get 201."""
    child, url = server_process
    await _started(child)
    port = int(url.rsplit(":", 1)[1])
    slow_head = f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nX-Slow: ".encode()
    # A complete head promising a body that then comes one byte at a time.
    slow_body = f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n".encode()
    started = time.monotonic()
    clients = [
        asyncio.create_task(_slow_client(port, slow_body if i % 2 else slow_head))
        for i in range(40)
    ]
    await asyncio.sleep(0.3)
    statuses = [(await _post_signed(url, i)).status_code for i in range(3)]
    answers = await asyncio.gather(*clients)
    elapsed = time.monotonic() - started
    assert statuses == [201, 201, 201]
    assert all(answer.startswith(b"HTTP/1.1 408 ") for answer in answers), answers
    assert sum(b"request head timeout" in answer for answer in answers) == 20
    assert sum(b"request body timeout" in answer for answer in answers) == 20
    assert elapsed < 5, f"slow clients were held {elapsed:.1f} s (timeouts are 1 s)"
    assert _peak_rss(child.proc.pid) < RSS_LIMIT
    # Each slow client is logged once, by the limits; a cut-off body is never judged as a request.
    logged = child.stdout()
    assert logged.count('"reason":"request body timeout"') == 20
    assert logged.count('"reason":"request head timeout"') == 20
    assert "ingest refused" not in logged
    assert "Exception in ASGI application" not in child.output()


async def test_too_many_headers_get_431() -> None:
    """A request with more headers than ``max_headers`` is refused with 431 before the app."""
    app = IngestApp(secrets={KEY_ID: TEST_SECRET})
    with serve_in_thread(app, limits=ServerLimits(max_headers=16)) as url:
        body, headers = _signed_request()
        extra = {f"X-Extra-{i}": "1" for i in range(16)}
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            refused = await client.post(INGEST_PATH, content=body, headers={**headers, **extra})
        assert refused.status_code == 431
        assert refused.json() == {"detail": "too many request headers"}
        assert app.requests_total == 0
        assert (await _post_signed(url)).status_code == 201


async def test_requests_above_the_concurrency_limit_get_503_with_retry_after() -> None:
    """With one request in progress and a limit of 1, the next is answered 503, Retry-After 1."""
    app = IngestApp(secrets={KEY_ID: TEST_SECRET})
    limits = ServerLimits(max_concurrent_requests=1, body_timeout_s=5)
    with serve_in_thread(app, limits=limits) as url:
        port = int(url.rsplit(":", 1)[1])
        # A head whose body never comes keeps one request in progress (the app awaits the body).
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {INGEST_PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n".encode()
        )
        await writer.drain()
        await eventually(lambda: app.requests_total == 1, what="the held request to start")
        busy = await _post_signed(url)
        writer.close()
        assert busy.status_code == 503
        assert busy.headers["retry-after"] == "1"
        await eventually(lambda: reader.at_eof() or writer.is_closing(), what="held closed")
        assert (await _post_signed(url, 1)).status_code == 201


async def test_the_idempotency_store_keeps_at_most_max_stored_keys_oldest_forgotten_first() -> None:
    """Past ``max_stored`` accepted signals the oldest keys are forgotten; memory stays bounded."""
    app = IngestApp(secrets={KEY_ID: TEST_SECRET}, max_stored=3)
    with serve_in_thread(app) as url:
        keys: list[str] = []
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for i in range(6):
                body, headers = _signed_request(i)
                keys.append(headers["X-Idempotency-Key"])
                assert (await client.post(INGEST_PATH, content=body, headers=headers)).is_success
    assert app.keys() == set(keys[-3:])
    assert len(app.received) <= 4
    assert app.received[-1].idempotency_key == keys[-1]


def test_the_command_line_defaults_are_the_server_limits_defaults() -> None:
    """`signal-bridge ingest-server` without options runs with ServerLimits() and 100,000 keys."""
    from bridge.ops.cli import _parser  # noqa: PLC0415 - the command's own parser

    args = _parser().parse_args(["ingest-server"])
    limits = ServerLimits()
    assert (
        args.max_header_bytes,
        args.max_headers,
        args.header_timeout,
        args.body_timeout,
        args.max_connections,
        args.max_concurrent_requests,
    ) == (
        limits.max_header_bytes,
        limits.max_headers,
        limits.header_timeout_s,
        limits.body_timeout_s,
        limits.max_connections,
        limits.max_concurrent_requests,
    )
    assert args.max_stored == IngestApp(secrets={}).max_stored
