"""What an operator sees: progress, skipped history, SIGTERM and drain lines, server logs, trace."""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis.asyncio as aioredis

from bridge.app.progress import ProgressSummary
from bridge.core.signal import guess_signal_id
from bridge.streams.entries import GroupStatus
from bridge.streams.producer import publish, publish_raw
from tests.fixtures_ingest import Server
from tests.ops.test_cli import cli
from tests.otlp_receiver import OtlpReceiver
from tests.procs import Replica, Replicas
from tests.support import KEY_ID, SECRET, bridge_config, bridge_env, eventually, make_signal
from tests.support import running as run_worker

pytestmark = pytest.mark.redis


@dataclass
class _Counts:
    delivered: int = 0
    duplicates: int = 0
    dead_lettered: dict[str, int] = field(default_factory=dict)
    retries: int = 0


def _fields(caplog: pytest.LogCaptureFixture, message: str) -> list[dict[str, Any]]:
    """The structured fields of every captured record with this message."""
    return [dict(getattr(r, "fields", {})) for r in caplog.records if r.getMessage() == message]


def test_progress_summary_speaks_only_while_work_flows(caplog: pytest.LogCaptureFixture) -> None:
    """One INFO line per interval with what changed (and lag, oldest age); none while idle."""
    caplog.set_level(logging.INFO, logger="bridge.feedback")
    counts = _Counts()
    status = GroupStatus(
        stream="s",
        group="g",
        length=9,
        lag=4,
        pending=2,
        oldest_pending_age_ms=1500,
        consumers=[],
        dead_letters=0,
    )
    summary = ProgressSummary("s", counts, lambda: status, interval_s=10)

    assert summary.emit() is False
    counts.delivered, counts.duplicates, counts.retries = 120, 3, 7
    counts.dead_lettered = {"expired": 2, "invalid": 1}
    assert summary.emit() is True
    counts.delivered += 5
    counts.dead_lettered["invalid"] += 1
    assert summary.emit() is True
    assert summary.emit() is False

    first, second = _fields(caplog, "progress")
    assert first == {
        "stream": "s",
        "interval_s": 10,
        "delivered": 120,
        "duplicates": 3,
        "dead_lettered": {"expired": 2, "invalid": 1},
        "retries": 7,
        "lag": 4,
        "pending": 2,
        "oldest_pending_age_s": 1.5,
        "delivered_total": 120,
    }
    assert (second["delivered"], second["dead_lettered"], second["retries"]) == (
        5,
        {"invalid": 1},
        0,
    )


def test_guess_signal_id_reads_invalid_signals_best_effort() -> None:
    """The id of a signal that fails validation is still found; junk gives None."""
    assert guess_signal_id(b'{"signal_id": "sig-9", "side": "up"}') == "sig-9"
    assert guess_signal_id(b'{"signal_id": 7}') is None
    assert guess_signal_id(b'{"signal_id": "x\\ny"}') is None
    assert guess_signal_id(b"[1, 2]") is None
    assert guess_signal_id(b"{broken") is None
    assert guess_signal_id(b"\xff\xfe") is None
    assert guess_signal_id(None) is None


async def test_new_group_at_dollar_warns_how_many_it_skips_and_dead_letters_name_the_signal(
    server: Server,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A `$` group over 4 old entries says it skips 4; an invalid signal's letter names its id."""
    caplog.set_level(logging.INFO)
    for i in range(4):
        await publish(redis, make_signal(i), stream=stream_name)
    config = bridge_config(server.url, redis_url, stream_name, BRIDGE_START_ID="$")
    async with run_worker(redis, config) as worker:
        await eventually(lambda: worker.group_ready, what="group created")
        await publish_raw(
            redis, {"signal": b'{"signal_id": "bad-7", "side": "up"}'}, stream=stream_name
        )
        await eventually(lambda: worker.stats.dead_lettered.get("invalid") == 1, what="letter")

    (skipped,) = _fields(
        caplog,
        "new consumer group starts at '$': entries already in the "
        "stream are skipped (not delivered); to deliver them, XGROUP SETID "
        "<stream> <group> 0 before they expire, or start with BRIDGE_START_ID=0",
    )
    assert (skipped["stream"], skipped["skipped"]) == (stream_name, 4)
    (letter,) = _fields(caplog, "signal dead-lettered")
    assert (letter["signal_id"], letter["reason"]) == ("bad-7", "invalid")
    assert server.app.received == []


async def _empty(redis: aioredis.Redis, stream: str) -> bool:
    return bool(await redis.xlen(stream) == 0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _json_lines(child: Replica) -> list[dict[str, Any]]:
    """Every stdout line parsed as JSON (a line that is not JSON fails the test)."""
    return [json.loads(line) for line in child.stdout().splitlines() if line.strip()]


@pytest.mark.slow
async def test_one_trace_from_publish_through_bridge_to_server_with_json_logs(
    tmp_path: Path, redis: aioredis.Redis, redis_url: str, stream_name: str
) -> None:
    """Publish -> bridge -> server: one trace; JSON server logs; SIGTERM told; acked trimmed."""
    port = _free_port()
    with OtlpReceiver() as receiver, Replicas(tmp_path) as children:
        otel = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "OTEL_METRICS_EXPORTER": "none",
        }
        ingest = children.start(
            "ingest",
            {"INGEST_SECRETS": f"{KEY_ID}={SECRET}", **otel},
            command=("ingest-server", "--port", str(port)),
        )
        await eventually(
            lambda: "ingest server ready" in ingest.stdout() or not ingest.alive,
            what="ingest server start",
        )
        env = bridge_env(
            f"http://127.0.0.1:{port}",
            redis_url,
            stream_name,
            BRIDGE_SUMMARY_INTERVAL_SECONDS="0.2",
            BRIDGE_TRIM_ACKED="true",
            BRIDGE_TRIM_INTERVAL_SECONDS="0.2",
            **otel,
        )
        bridge = children.start("bridge", env)
        published = await asyncio.to_thread(cli, "publish", "--sample", "2", env=env)
        assert published.returncode == 0, published.stderr

        def chains() -> list[frozenset[str]]:
            by_trace: dict[str, set[str]] = {}
            for span in receiver.spans():
                by_trace.setdefault(span.trace_id, set()).add(span.name)
            return [frozenset(names) for names in by_trace.values()]

        chain = frozenset(
            {
                f"publish {stream_name}",
                f"process {stream_name}",
                "POST",
                "POST /api/v1/signals/ingest",
            }
        )
        await eventually(
            lambda: chains().count(chain) == 2 if bridge.alive else True,
            timeout_s=30,
            what="two traces producer -> bridge -> server",
        )
        assert chains() == [chain, chain], children.output()
        await eventually(lambda: "progress" in bridge.stdout(), what="a progress line")
        # Retention is on and ours is the only group: once both are acked the stream is empty.
        await eventually(lambda: _empty(redis, stream_name), what="acked entries trimmed")
        bridge.send(signal.SIGTERM)
        ingest.send(signal.SIGTERM)
        assert await bridge.wait(20) == 0, bridge.output()
        assert await ingest.wait(20) == 0, ingest.output()

    services = {span.name: span.resource.get("service.name") for span in receiver.spans()}
    assert services["POST /api/v1/signals/ingest"] == "signal-bridge-ingest"
    assert services[f"process {stream_name}"] == "signal-bridge"
    server_lines = _json_lines(ingest)
    messages = [line["message"] for line in server_lines]
    assert messages[-1] == "ingest server stopped"
    (starting,) = [line for line in server_lines if line["message"] == "ingest server starting"]
    assert starting["port"] == port
    assert SECRET not in ingest.stdout()
    accepted = [line for line in server_lines if line["message"] == "ingest accepted"]
    assert [line["http_code"] for line in accepted] == [201, 201]
    assert all(line["trace_id"] and line["idempotency_key"] for line in accepted)
    bridge_messages = [line["message"] for line in _json_lines(bridge)]
    stop = bridge_messages.index(
        "SIGTERM received: stopped reading, finishing in-flight deliveries"
    )
    assert "drain finished" in bridge_messages[stop:]
    progress = [line for line in _json_lines(bridge) if line["message"] == "progress"]
    assert sum(line["delivered"] for line in progress) == 2


async def test_ingest_server_logs_each_refusal_with_its_reason(
    ingest_server: tuple[Any, str], caplog: pytest.LogCaptureFixture
) -> None:
    """An unsigned POST is answered a bare 401 and logged as one WARNING line saying why."""
    caplog.set_level(logging.INFO, logger="bridge.ingest")
    _, base_url = ingest_server
    async with httpx.AsyncClient(base_url=base_url) as http:
        response = await http.post(
            "/api/v1/signals/ingest", content=b"{}", headers={"X-Producer-Id": "p1"}
        )
    assert response.status_code == 401
    (record,) = [r for r in caplog.records if r.getMessage() == "ingest refused"]
    fields = dict(getattr(record, "fields", {}))
    assert record.levelno == logging.WARNING
    assert (fields["http_code"], fields["producer_id"]) == (401, "p1")
    assert response.json() == {"detail": "invalid request"}
    assert (fields["reason"], fields["check"]) == ("missing header X-Timestamp", "headers")
