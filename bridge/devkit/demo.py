"""``signal-bridge demo``: the whole path on one machine, with no external services.

Starts a private Redis and the reference ingest server on loopback, publishes sample signals
(plus an undecodable one, an invalid one, a stale one and a repeated signal_id), runs one bridge
until the stream is drained, prints what happened to each entry, and exits 0.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import UTC, datetime, timedelta
from typing import Final

import msgspec
from redis.asyncio import Redis

from bridge.config.loader import load_config
from bridge.core.timestamps import format_timestamp
from bridge.delivery.backoff import Backoff
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.devkit.embedded import embedded_redis
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.ops.publish import sample_signal
from bridge.streams.connection import connect
from bridge.streams.deadletters import DeadLetterStore
from bridge.streams.entries import DLQ_PREFIX, Entry
from bridge.streams.group import SignalStream, signal_streams
from bridge.streams.producer import publish, publish_raw
from bridge.telemetry.logs import configure_logging

__all__ = ["run_demo"]

_DRAIN_TIMEOUT_S: Final = 60.0


async def run_demo(count: int = 20) -> int:
    """Run the demo; returns the process exit code."""
    configure_logging("WARNING", "text")
    secret = secrets.token_urlsafe(24)
    app = IngestApp(secrets={"demo": secret.encode()})
    with embedded_redis() as (redis_url, kind), serve_in_thread(app) as server_url:
        print(f"redis: {kind} at {redis_url}; ingest server at {server_url}")
        config = load_config(
            env={
                "HMAC_PRODUCER_SECRET": secret,
                "HMAC_PRODUCER_KEY_ID": "demo",
                "PRODUCER_ID": "demo-producer",
                "OUTBOUND_SERVER_URL": server_url,
                "BRIDGE_REDIS_URL": redis_url,
                "BRIDGE_STREAM": "demo:signals",
                "BRIDGE_DLQ_STREAM": "demo:signals:dlq",
                "BRIDGE_START_ID": "0",
                "BRIDGE_CONSUMER": "demo-consumer",
                "BRIDGE_BLOCK_MS": "100",
            }
        )
        async with connect(redis_url) as redis:
            [stream] = signal_streams(config.stream, redis)
            published = await _publish_samples(redis, config.stream.stream, count)
            print(
                f"published {len(published)} entries, some bad on purpose; the bridge's own "
                "WARNING and ERROR lines follow (each dead letter is one ERROR, as in "
                "production):\n",
                flush=True,
            )
            async with HmacClient(config.outbound) as client:
                worker = Worker(stream, client, config.stream, backoff=Backoff(0.05, 0.5))
                runner = asyncio.create_task(worker.run())
                drained = await _wait_drained(stream, runner)
                worker.stop()
                await runner
            dead = await DeadLetterStore.of(stream).letters()
            letters = {e.field(f"{DLQ_PREFIX}source_id"): e for e in dead}
        _report(published, letters, app, config.stream.stream)
        reasons = ", ".join(
            f"{count} {reason}" for reason, count in sorted(worker.stats.dead_lettered.items())
        )
        print(
            f"\ndelivered {worker.stats.delivered}, duplicates {worker.stats.duplicates}, "
            f"dead-lettered {sum(worker.stats.dead_lettered.values())}"
            + (f" ({reasons})" if reasons else "")
        )
        if not drained:
            print("the stream did not drain in time", flush=True)
            return 1
    return 0


async def _publish_samples(
    redis: Redis, stream: str, count: int
) -> list[tuple[str, str, str | None]]:
    """Publish the samples; return (entry id, label, signal_id) in stream order."""
    now = datetime.now(UTC)
    out: list[tuple[str, str, str | None]] = []
    for i in range(count):
        signal = sample_signal(i, now)
        entry_id = await publish(redis, signal, stream=stream)
        out.append((entry_id, f"{signal.side} {signal.instrument}", signal.signal_id))
    repeat = sample_signal(0, now)
    out.append((await publish(redis, repeat, stream=stream), "repeat of demo-0", "demo-0"))
    stale = msgspec.structs.replace(
        sample_signal(1, now), timestamp=now - timedelta(hours=1), signal_id="demo-stale"
    )
    out.append(
        (await publish(redis, stale, stream=stream), "signal from an hour ago", "demo-stale")
    )
    raw_bad = await publish_raw(redis, {"signal": b"{not json"}, stream=stream)
    out.append((raw_bad, "undecodable JSON", None))
    wrong_side = (
        b'{"instrument":"XAUUSD","side":"buy","entry_price":2000.0,"take_profit":1990.0,'
        b'"stop_loss":null,"risk_percent":1.0,"comment":null,"strategy_name":"demo",'
        b'"timestamp":"' + format_timestamp(now).encode() + b'","signal_id":null}'
    )
    invalid = await publish_raw(redis, {"signal": wrong_side}, stream=stream)
    out.append((invalid, "buy with take_profit below entry", None))
    return out


async def _wait_drained(stream: SignalStream, runner: asyncio.Task[None]) -> bool:
    """Poll until the group has no lag and nothing pending (bounded)."""
    deadline = time.monotonic() + _DRAIN_TIMEOUT_S
    while time.monotonic() < deadline and not runner.done():
        status = await stream.status()
        if status.lag == 0 and status.pending == 0:
            return True
        await asyncio.sleep(0.05)
    return False


def _report(
    published: list[tuple[str, str, str | None]],
    letters: dict[str | None, Entry],
    app: IngestApp,
    stream: str,
) -> None:
    accepted = {r.idempotency_key: r.server_signal_id for r in app.received}
    claimed: set[str] = set()
    print(f"\n{'entry id':<18} {'what':<34} outcome")
    for entry_id, label, signal_id in published:
        letter = letters.get(entry_id)
        if letter is not None:
            outcome = (
                f"dead-lettered: {letter.field(DLQ_PREFIX + 'reason')} "
                f"({_shorten(letter.field(DLQ_PREFIX + 'error') or '', 70)})"
            )
        else:
            key = idempotency_key(stream, entry_id, signal_id)
            server_id = accepted.get(key)
            if server_id is None:
                outcome = "not delivered"
            elif key in claimed:
                outcome = f"duplicate: the server already had it as {server_id} (acked)"
            else:
                claimed.add(key)
                outcome = f"delivered as {server_id}"
        print(f"{entry_id:<18} {label:<34} {outcome}")


def _shorten(text: str, width: int) -> str:
    """Cut ``text`` to ``width`` characters, marking the cut."""
    return text if len(text) <= width else text[: width - 1] + "\u2026"
