"""A relay on the wire that rewrites X-Idempotency-Key, against the profiles that sign the key.

The attack of issue 19: a TLS-terminating proxy rewrites the key of a new signal to one the
server already stored, so a v1 server answers 409 and the bridge acks a signal nobody stored.
With ``standard-webhooks`` or ``rfc9421`` the key is signed: the server answers 401, the bridge
neither acks nor dead-letters, and the signal lands once the relay stops rewriting.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final
from urllib.parse import urlsplit

import pytest
import redis.asyncio as aioredis

from bridge.streams.producer import publish
from tests.fixtures_ingest import Server
from tests.support import bridge_config, drained, eventually, make_signal, running

pytestmark = pytest.mark.redis

_KEY: Final = re.compile(rb"(?i)(x-idempotency-key: )[0-9a-f-]{36}")


@dataclass
class KeyRewritingRelay:
    """Forwards 127.0.0.1:<port> to the server; while ``rewrite_to`` is set, swaps every key."""

    upstream: tuple[str, int]
    rewrite_to: bytes | None = None
    rewritten: int = 0
    port: int = 0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, requests: bool
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                if requests and self.rewrite_to is not None:
                    chunk, count = _KEY.subn(rb"\g<1>" + self.rewrite_to, chunk)
                    self.rewritten += count
                writer.write(chunk)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        for task in (
            asyncio.create_task(self._pipe(reader, up_writer, requests=True)),
            asyncio.create_task(self._pipe(up_reader, writer, requests=False)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)


@contextlib.asynccontextmanager
async def relay_to(url: str) -> AsyncIterator[KeyRewritingRelay]:
    """Run a KeyRewritingRelay in front of ``url`` for the block."""
    parts = urlsplit(url)
    relay = KeyRewritingRelay((parts.hostname or "127.0.0.1", parts.port or 80))
    server = await asyncio.start_server(relay._accept, "127.0.0.1", 0)
    relay.port = server.sockets[0].getsockname()[1]
    try:
        yield relay
    finally:
        server.close()
        for task in list(relay._tasks):
            task.cancel()
        await asyncio.gather(*relay._tasks, return_exceptions=True)
        await server.wait_closed()


@pytest.mark.parametrize("scheme", ["standard-webhooks", "rfc9421"])
async def test_a_rewritten_idempotency_key_is_refused_and_the_signal_still_lands(
    server: Server, redis: aioredis.Redis, redis_url: str, stream_name: str, scheme: str
) -> None:
    """401 while the relay rewrites keys: nothing acked or dead-lettered; then stored once."""
    async with relay_to(server.url) as relay:
        config = bridge_config(
            f"http://127.0.0.1:{relay.port}",
            redis_url,
            stream_name,
            OUTBOUND_SIGNATURE_SCHEME=scheme,
            BRIDGE_PROBE_INTERVAL_MS="100",
        )
        async with running(redis, config):
            await publish(redis, make_signal(0), stream=stream_name)
            await eventually(lambda: drained(redis, stream_name), what="first signal delivered")
            [first] = server.app.received
            relay.rewrite_to = first.idempotency_key.encode()
            victim = make_signal(1)
            await publish(redis, victim, stream=stream_name)
            await eventually(
                lambda: (
                    server.app.refusals.get("signature mismatch", 0)
                    + server.app.refusals.get(
                        "X-Idempotency-Key differs from the signed webhook-id", 0
                    )
                    >= 2
                ),
                what="rewritten POSTs refused",
            )
            groups = await redis.xinfo_groups(stream_name)
            assert groups[0]["pending"] == 1, "the victim is neither acked nor dead-lettered"
            assert await redis.xlen(f"{stream_name}:dlq") == 0
            assert [r.signal.signal_id for r in server.app.received] == [first.signal.signal_id]
            relay.rewrite_to = None
            await eventually(lambda: drained(redis, stream_name), what="victim delivered")
    stored = [r.signal.signal_id for r in server.app.received]
    assert stored == [first.signal.signal_id, victim.signal_id]
    assert relay.rewritten >= 2
    assert await redis.xlen(f"{stream_name}:dlq") == 0
