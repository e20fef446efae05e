"""The connection keeps response headers raw: decoded on demand, with the head limits exact."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from bridge.edge.protocol import Connection, Limits, RawResponse


class _Wire:
    """A stand-in stream transport: records writes and whether it was aborted."""

    def __init__(self) -> None:
        self.aborted = False

    def write(self, data: bytes) -> None:
        del data

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    def close(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> None:
        del name


def _answer(limits: Limits, *chunks: bytes) -> RawResponse:
    """Feed ``chunks`` to a fresh connection as the answer to one request."""
    conn = Connection(limits)
    conn.connection_made(_Wire())  # type: ignore[arg-type]
    waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n", 5.0)
    for chunk in chunks:
        conn.data_received(chunk)
    assert waiter.done()
    return waiter.result()


async def test_headers_are_lower_cased_on_first_read_and_a_repeat_keeps_the_last() -> None:
    """``headers`` decodes latin-1 names lower-cased; ``date`` and ``get`` read the same values."""
    head = (
        b"HTTP/1.1 503 Busy\r\nDate: Mon, 07 Dec 2026 04:55:30 GMT\r\nX-A: 1\r\nx-a: 2\r\n"
        b"Retry-After: 7\r\nX-Note: cr\xe8me\r\nContent-Length: 2\r\n\r\n{}"
    )
    response = _answer(Limits(), head)
    assert response.date == "Mon, 07 Dec 2026 04:55:30 GMT"
    assert response.get("retry-after") == "7"
    assert response.get("location") is None
    assert dict(response.headers) == {
        "date": "Mon, 07 Dec 2026 04:55:30 GMT",
        "x-a": "2",
        "retry-after": "7",
        "x-note": "crème",
        "content-length": "2",
    }
    assert response.headers is response.headers  # decoded once


async def test_the_date_of_the_final_answer_after_an_interim_one() -> None:
    """A 103's headers are forgotten: only the final answer's Date and length count."""
    response = _answer(
        Limits(),
        b"HTTP/1.1 103 Early Hints\r\nDate: early\r\nLink: </a>\r\n\r\n",
        b"HTTP/1.1 201 Created\r\nDATE: final\r\nContent-Length: 2\r\n\r\nok",
    )
    assert (response.status, response.date, response.body) == (201, "final", b"ok")
    assert dict(response.headers) == {"date": "final", "content-length": "2"}


@pytest.mark.parametrize("extra", [0, 1])
async def test_the_head_limit_is_exact_when_a_big_chunk_makes_it_reachable(extra: int) -> None:
    """Header lines of exactly the head limit pass; one byte more is over it, whole or split."""
    limits = Limits(max_head_bytes=1000, max_header_lines=10, max_body_bytes=10_000)
    # Each line counts as name + value + 4: Content-Length 14 + 1 + 4, X-Big 5 + value + 4.
    value = b"v" * (1000 - (14 + 1 + 4) - (5 + 4) + extra)
    head = b"HTTP/1.1 201 Created\r\nContent-Length: 4\r\nX-Big: " + value + b"\r\n\r\n"
    over = "response head over 1000 bytes" if extra else None
    for chunks in ([head + b"body"], [head[:40], head[40:] + b"body"]):
        response = _answer(limits, *chunks)
        assert (response.status, response.oversized) == (201, over)
        assert response.body == (b"" if extra else b"body")
        assert response.get("content-length") == "4"


async def test_a_close_delimited_body_is_told_apart_by_the_transfer_encoding() -> None:
    """A last Transfer-Encoding that ends in chunked frames the body; another ends at the close."""
    conn = Connection(Limits())
    conn.connection_made(_Wire())  # type: ignore[arg-type]
    waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n", 5.0)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\nab"
    )
    assert not waiter.done()
    conn.connection_lost(None)
    assert waiter.result().body == b"ab"


def test_a_mapping_response_reads_through_the_mapping() -> None:
    """``of_mapping`` keeps an httpx response's headers as they are (repeats joined by httpx)."""
    headers = httpx.Headers([("Date", "d"), ("Retry-After", "1"), ("retry-after", "2")])
    response = RawResponse.of_mapping(429, headers, b"{}")
    assert (response.status, response.date, response.oversized) == (429, "d", None)
    assert response.get("retry-after") == "1, 2"
    assert response.headers is headers


async def test_a_late_answer_never_lands_in_the_next_response() -> None:
    """Bytes after the answer start a message of their own, not more headers of the answer."""
    conn = Connection(Limits())
    wire = _Wire()
    conn.connection_made(wire)  # type: ignore[arg-type]
    waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n", 5.0)
    conn.data_received(
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 200 OK\r\nX-Late: 1\r\n"
    )
    response = waiter.result()
    assert dict(response.headers) == {"content-length": "0"}
    await asyncio.sleep(0)
    conn.data_received(b"\r\n")
    assert wire.aborted
