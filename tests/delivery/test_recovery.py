"""Delivery outcomes and recovery end to end: a real Redis, a scripted server on loopback.

The hostile answers of issue 10 (202/204, redirects and wrong URLs, odd 201 bodies, outages)
and issue 11's SIGTERM rule (no new POST after stop) are counted at the server: requests and
their idempotency keys, not the bridge's counters.
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Final

import pytest
import redis.asyncio as aioredis

from bridge.delivery.backoff import Backoff
from bridge.delivery.breaker import Breaker
from bridge.delivery.worker import Worker
from bridge.edge.client import HmacClient
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from tests.fixtures_ingest import RawRequest, RawResponse, ScriptedServer, StartScripted
from tests.support import bridge_config, drained, eventually, fast_breaker, make_signal, running

pytestmark = pytest.mark.redis

ACCEPTED: Final = (
    b'{"signal_id":"srv-1","status":"received","server_timestamp":"2026-01-01T00:00:00.000000Z"}'
)


@dataclass
class Script:
    """A server whose answer the test changes while the bridge runs."""

    answer: RawResponse = field(default_factory=lambda: RawResponse(201, ACCEPTED))

    def __call__(self, request: RawRequest) -> RawResponse:
        """Answer every request with the current scripted answer."""
        return self.answer


@dataclass
class Rig:
    """A private Redis with a fresh stream name."""

    redis: aioredis.Redis
    url: str
    stream: str


@pytest.fixture
def rig(redis: aioredis.Redis, redis_url: str, stream_name: str) -> Rig:
    """Bundle the Redis fixtures of one test."""
    return Rig(redis, redis_url, stream_name)


def _keys(server: ScriptedServer) -> list[str]:
    """The idempotency keys the server received, in order."""
    return [r.headers["x-idempotency-key"] for r in server.requests]


async def _publish(redis: aioredis.Redis, stream: str, count: int) -> None:
    """Publish ``count`` valid signals over the test instruments."""
    for i in range(count):
        await publish(redis, make_signal(i), stream=stream)


async def _pending(redis: aioredis.Redis, stream: str) -> int:
    """Entries read by the group and not acknowledged."""
    groups = await redis.xinfo_groups(stream)
    return int(groups[0]["pending"]) if groups else 0


async def _dlq_len(redis: aioredis.Redis, stream: str) -> int:
    """Entries in the stream's dead-letter stream."""
    return int(await redis.xlen(f"{stream}:dlq"))


@pytest.mark.parametrize("status", [200, 201, 202, 204])
async def test_any_2xx_is_acked_once(
    scripted_server: StartScripted,
    rig: Rig,
    status: int,
) -> None:
    """202 and 204 are acked like 201: each signal is posted once, nothing is dead-lettered."""
    script = Script(RawResponse(status, b"" if status == 204 else ACCEPTED))
    server = await scripted_server(script)
    await _publish(rig.redis, rig.stream, 5)
    async with running(rig.redis, bridge_config(server.base_url, rig.url, rig.stream)) as worker:
        await eventually(lambda: drained(rig.redis, rig.stream), what="drained")
        assert worker.stats.delivered == 5
    assert len(_keys(server)) == len(set(_keys(server))) == 5
    assert await _dlq_len(rig.redis, rig.stream) == 0


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"accepted",
        b'{"signal_id":42,"status":"received","server_timestamp":"2026-01-01T00:00:00Z"}',
        b'{"signal_id":"s","status":"received","server_timestamp":1767225600}',
    ],
    ids=["empty", "not-json", "numeric-signal-id", "numeric-server-timestamp"],
)
async def test_a_201_with_an_odd_body_is_acked_once_with_a_warning(
    scripted_server: StartScripted,
    rig: Rig,
    body: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The server has the signal: acked, posted exactly once, never counted as a duplicate."""
    server = await scripted_server(Script(RawResponse(201, body)))
    await _publish(rig.redis, rig.stream, 3)
    async with running(rig.redis, bridge_config(server.base_url, rig.url, rig.stream)) as worker:
        await eventually(lambda: drained(rig.redis, rig.stream), what="drained")
        assert (worker.stats.delivered, worker.stats.duplicates) == (3, 0)
    assert len(server.requests) == 3
    warnings = [r for r in caplog.records if "unexpected answer body" in r.getMessage()]
    assert len(warnings) == 3
    assert all(r.levelno == logging.WARNING for r in warnings)


@pytest.mark.parametrize(
    ("status", "cause"),
    [
        (301, "redirect"),
        (302, "redirect"),
        (307, "redirect"),
        (308, "redirect"),
        (404, "wrong URL"),
        (405, "wrong URL"),
        (401, "credentials or clock"),
        (403, "credentials"),
        (407, "proxy"),
    ],
)
async def test_systemic_answers_hold_everything_behind_the_breaker(
    scripted_server: StartScripted,
    rig: Rig,
    status: int,
    cause: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A redirect or wrong URL: breaker open, not ready, no ack, no dead letter, one ERROR."""
    script = Script(RawResponse(status, b'{"detail":"moved"}', ((b"Location", b"/elsewhere"),)))
    server = await scripted_server(script)
    await _publish(rig.redis, rig.stream, 10)
    config = bridge_config(server.base_url, rig.url, rig.stream)
    async with running(rig.redis, config, breaker=Breaker(5, probe_interval_s=0.05)) as worker:
        await eventually(lambda: worker.breaker.is_open, what="breaker open")
        await asyncio.sleep(0.3)  # several probe intervals
        assert not worker.ready()
        assert await _dlq_len(rig.redis, rig.stream) == 0
        assert await _pending(rig.redis, rig.stream) == 10
        assert worker.stats.delivered == 0
        assert len(server.requests) < 20  # one probe per interval, not full speed
        script.answer = RawResponse(201, ACCEPTED)
        await eventually(lambda: drained(rig.redis, rig.stream), what="drained once fixed")
        assert worker.ready()
    assert len(set(_keys(server))) == 10
    assert await _dlq_len(rig.redis, rig.stream) == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "bridge.worker"]
    assert len(errors) == 1
    assert cause in errors[0].getMessage()


@pytest.mark.parametrize(
    ("status", "headers"),
    [(500, ()), (503, ((b"Retry-After", b"1"),))],
    ids=["500", "503-retry-after"],
)
async def test_lanes_resume_on_the_servers_return_not_after_their_backoff(
    scripted_server: StartScripted,
    rig: Rig,
    status: int,
    headers: tuple[tuple[bytes, bytes], ...],
) -> None:
    """After an outage every lane posts as soon as a probe succeeds, not after a 30 s backoff."""
    script = Script(RawResponse(status, b'{"detail":"down"}', headers))
    server = await scripted_server(script)
    await _publish(rig.redis, rig.stream, 10)
    config = bridge_config(server.base_url, rig.url, rig.stream)
    stream = SignalStream(
        rig.redis, stream=rig.stream, group="g", consumer="c1", dlq_stream=f"{rig.stream}:dlq"
    )
    async with HmacClient(config.outbound) as client:
        # Every per-entry backoff is 20-30 s: a lane that slept on it would miss the bound below.
        worker = Worker(
            stream,
            client,
            config.stream,
            backoff=Backoff(20.0, 30.0, rand=lambda: 1.0),
            breaker=Breaker(3, probe_interval_s=0.1),
        )
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: worker.breaker.is_open, what="breaker open")
            await asyncio.sleep(0.3)
            script.answer = RawResponse(201, ACCEPTED)
            back = time.monotonic()
            await eventually(lambda: drained(rig.redis, rig.stream), timeout_s=10, what="drained")
            assert time.monotonic() - back < 8  # well under one 20 s backoff
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
    assert len(set(_keys(server))) == 10
    assert await _dlq_len(rig.redis, rig.stream) == 0


async def test_no_post_starts_after_stop_while_the_breaker_is_open(
    scripted_server: StartScripted, rig: Rig
) -> None:
    """SIGTERM with lanes waiting for the probe: no POST after stop(), entries stay pending."""
    script = Script(RawResponse(404, b""))
    server = await scripted_server(script)
    await _publish(rig.redis, rig.stream, 5)
    config = bridge_config(server.base_url, rig.url, rig.stream)
    async with running(rig.redis, config, breaker=Breaker(5, probe_interval_s=0.2)) as worker:
        await eventually(lambda: worker.breaker.is_open, what="breaker open")
        await asyncio.sleep(0.05)
        worker.stop()
        at_stop = len(server.requests)
        await asyncio.wait_for(worker.wait_closed(), 10)
        await asyncio.sleep(0.5)  # past two probe intervals
    assert len(server.requests) == at_stop
    assert await _pending(rig.redis, rig.stream) == 5
    assert await _dlq_len(rig.redis, rig.stream) == 0


async def test_no_post_starts_after_stop_against_a_server_that_never_answers(
    scripted_server: StartScripted, rig: Rig
) -> None:
    """After stop() a slot freed by a timeout starts no POST: waiting lanes give up."""
    server = await scripted_server(Script(RawResponse(hold=True)))
    await _publish(rig.redis, rig.stream, 5)
    config = bridge_config(
        server.base_url,
        rig.url,
        rig.stream,
        BRIDGE_MAX_IN_FLIGHT="1",
        OUTBOUND_TIMEOUT_SECONDS="5",
        BRIDGE_SHUTDOWN_GRACE_SECONDS="8",
    )
    async with running(rig.redis, config, breaker=fast_breaker()) as worker:
        await eventually(lambda: len(server.requests) == 1, what="first POST on the wire")
        worker.stop()
        # The POST times out after 5 s; the lanes waiting for its slot then give up, so the
        # worker closes well before the 8 s grace period and posts nothing more.
        await asyncio.wait_for(worker.wait_closed(), 7)
        await asyncio.sleep(0.3)
    assert len(server.requests) == 1
    assert await _pending(rig.redis, rig.stream) == 5


async def test_a_systemic_answer_during_an_outage_still_gets_its_one_error(
    scripted_server: StartScripted, rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """500s open the breaker (one ERROR); a 404 that follows is still named once in an ERROR."""
    script = Script(RawResponse(500, b""))
    server = await scripted_server(script)
    await _publish(rig.redis, rig.stream, 5)
    config = bridge_config(server.base_url, rig.url, rig.stream)
    async with running(rig.redis, config, breaker=Breaker(2, probe_interval_s=0.02)) as worker:
        await eventually(lambda: worker.breaker.is_open, what="breaker open on 500s")
        script.answer = RawResponse(404, b"")
        await eventually(lambda: worker.breaker.reason == "systemic", what="a probe gets 404")
        await asyncio.sleep(0.2)  # more refused probes: still one ERROR
        script.answer = RawResponse(201, ACCEPTED)
        await eventually(lambda: drained(rig.redis, rig.stream), what="drained")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name == "bridge.worker"]
    assert [("wrong URL" in r.getMessage()) for r in errors] == [False, True]
    assert "HTTP 500" in errors[0].getMessage()
    assert len(set(_keys(server))) == 5
