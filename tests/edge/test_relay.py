"""A relay on the wire that rewrites X-Idempotency-Key, between a real Worker and the server.

The attack of issue 19: a TLS-terminating proxy (here a plain TCP relay on loopback) rewrites
only the idempotency key to one the server has already stored. Under v1 the key is unsigned:
the server answers 409 and the bridge acks a signal that was never stored (v1's residual risk,
pinned here so it is not forgotten). Under v2 the key is signed: the server answers 401, the
entry stays pending (no ack, no dead letter) and is delivered once the relay stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from bridge.core.fencing import LEASE_HEADER, LeaseStamp
from bridge.core.signal import encode_canonical
from bridge.delivery.jobs import idempotency_key
from bridge.edge.client import HmacClient
from bridge.edge.results import Delivered, Failed
from bridge.streams.producer import publish
from tests.fixtures_ingest import Server, make_outbound_config
from tests.support import SECRET, bridge_config, eventually, make_signal, running

pytestmark = pytest.mark.redis

_KEY_HEADER: Final = b"x-idempotency-key"
_LEASE_HEADER: Final = LEASE_HEADER.lower().encode()
_MAX_HEAD_BYTES: Final = 65536


@dataclass
class KeyRewritingRelay:
    """Forwards 127.0.0.1:<port> to the server; rewrites X-Idempotency-Key while ``rewrite_to``.

    ``lease_to`` likewise replaces the X-Signal-Lease value (an empty string drops the header).
    Requests are parsed one by one (head, then Content-Length bytes of body) so keep-alive
    connections work; answers are passed back untouched.
    """

    upstream_port: int
    rewrite_to: str | None = None
    lease_to: str | None = None
    rewritten: int = 0
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def url(self) -> str:
        """The base URL the bridge is pointed at."""
        return f"http://127.0.0.1:{self.port}"

    async def accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Relay one client connection: requests parsed and maybe rewritten, answers as is."""
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        answers = asyncio.create_task(_pipe(up_reader, writer))
        self._tasks.add(answers)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    break
                head, length = self._rewrite(head)
                body = await reader.readexactly(length)
                up_writer.write(head + body)
                await up_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            up_writer.close()
            answers.cancel()
            writer.close()

    def close(self) -> None:
        """Stop passing answers back on every connection."""
        for task in self._tasks:
            task.cancel()

    def _rewrite(self, head: bytes) -> tuple[bytes, int]:
        """Return the request head (its key rewritten while armed) and its body's length."""
        out: list[bytes] = []
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            replacement = {_KEY_HEADER: self.rewrite_to, _LEASE_HEADER: self.lease_to}.get(lowered)
            if replacement is None:
                out.append(line)
                continue
            self.rewritten += 1
            if replacement:
                out.append(name + b": " + replacement.encode())
        return b"\r\n".join(out), length


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy bytes until either side closes."""
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()


@contextlib.asynccontextmanager
async def key_rewriting_relay(server_url: str) -> AsyncIterator[KeyRewritingRelay]:
    """Run a KeyRewritingRelay in front of ``server_url`` for the block."""
    relay = KeyRewritingRelay(upstream_port=urlsplit(server_url).port or 80)
    listener = await asyncio.start_server(relay.accept, "127.0.0.1", 0, limit=_MAX_HEAD_BYTES)
    relay.port = listener.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        listener.close()
        relay.close()
        await listener.wait_closed()


async def _pending(redis: aioredis.Redis, stream: str) -> int:
    summary = await redis.xpending(stream, "g")
    return int(summary["pending"])


async def _acked(redis: aioredis.Redis, stream: str) -> bool:
    return await _pending(redis, stream) == 0


async def _dead_letters(redis: aioredis.Redis, stream: str) -> int:
    return int(await redis.xlen(f"{stream}:dlq"))


async def test_v2_a_rewritten_key_is_refused_the_entry_stays_pending_then_delivers(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """v2: the rewritten key gets 401, nothing is acked or dead-lettered; unrewritten it lands."""
    async with key_rewriting_relay(server.url) as relay:
        config = bridge_config(relay.url, redis_url, stream_name, OUTBOUND_SIGNATURE_VERSION="2")
        async with running(redis, config) as worker:
            first = await publish(redis, make_signal(0), stream=stream_name)
            await eventually(lambda: len(server.app.received) == 1, what="first delivery")
            relay.rewrite_to = idempotency_key(stream_name, first, "sig-0")
            await publish(redis, make_signal(1), stream=stream_name)
            await eventually(lambda: relay.rewritten >= 3, what="three rewritten attempts")
            assert await _pending(redis, stream_name) == 1
            assert await _dead_letters(redis, stream_name) == 0
            assert (worker.stats.delivered, worker.stats.duplicates) == (1, 0)
            assert server.app.refusals.get("signature mismatch", 0) >= 3
            relay.rewrite_to = None
            await eventually(lambda: len(server.app.received) == 2, what="second delivery")
            await eventually(lambda: _acked(redis, stream_name), what="the second entry acked")
    assert sorted(r.signal.signal_id or "" for r in server.app.received) == ["sig-0", "sig-1"]
    assert await _dead_letters(redis, stream_name) == 0


async def test_v1_residual_risk_a_rewritten_key_is_acked_as_a_duplicate_never_stored(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """v1 (the default) leaves the key unsigned: the relay's 409 makes the bridge ack a loss."""
    async with key_rewriting_relay(server.url) as relay:
        config = bridge_config(relay.url, redis_url, stream_name)
        async with running(redis, config) as worker:
            first = await publish(redis, make_signal(0), stream=stream_name)
            await eventually(lambda: len(server.app.received) == 1, what="first delivery")
            relay.rewrite_to = idempotency_key(stream_name, first, "sig-0")
            await publish(redis, make_signal(1), stream=stream_name)
            await eventually(lambda: worker.stats.duplicates == 1, what="the 409 acked")
            await eventually(lambda: _acked(redis, stream_name), what="the second entry acked")
    assert relay.rewritten == 1
    assert [r.signal.signal_id for r in server.app.received] == ["sig-0"]  # sig-1 is lost
    assert await _dead_letters(redis, stream_name) == 0


@pytest.mark.parametrize(
    "lease_to",
    [
        'shard="signals:{0}", token=18',
        'shard="signals:{1}", token=17',
        "",
        "signals:{0} 17",
    ],
    ids=["token changed", "shard changed", "lease dropped", "lease garbled"],
)
async def test_v2_a_changed_lease_is_refused_401(server: Server, lease_to: str) -> None:
    """v2 signs the lease: a relay that changes, drops or garbles X-Signal-Lease gets 401."""
    lease = LeaseStamp("signals:{0}", 17)
    body = encode_canonical(make_signal(0))
    async with key_rewriting_relay(server.url) as relay:
        env = {"OUTBOUND_SIGNATURE_VERSION": "2", "HMAC_PRODUCER_SECRET": SECRET}
        config = make_outbound_config(relay.url, env)
        async with HmacClient(config) as client:
            relay.lease_to = lease_to
            refused = await client.attempt(body, idempotency_key=str(uuid.uuid4()), lease=lease)
            relay.lease_to = None
            stored = await client.attempt(body, idempotency_key=str(uuid.uuid4()), lease=lease)
    assert isinstance(refused, Failed)
    assert (refused.status, relay.rewritten) == (401, 1)
    assert isinstance(stored, Delivered)
    assert len(server.app.received) == 1
