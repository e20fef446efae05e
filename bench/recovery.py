"""Recovery after an outage: how soon signal-bridge resumes and drains once the server is back.

Runs the real service (``.venv/bin/signal-bridge run``) against a private redis-server and an
in-process sink whose answer the harness switches: healthy, then an outage of N seconds plus a
random fraction (500s, or 503 with ``Retry-After: 2``) while a producer keeps publishing, then
healthy again. A baseline run publishes the same backlog at once to a healthy server. It
reports, per run, the time from the server's return to the first accepted POST and to the last
ack (group lag and pending both 0), the backlog size and the drain rate, and checks that every
published signal reached the sink exactly once (unique idempotency keys) and none was
dead-lettered. Only 127.0.0.1 is used; every process started is ended; every loop is bounded.

    .venv/bin/python -m bench.recovery                 # 15 s outages, 3 runs each (~2.5 min)
    .venv/bin/python -m bench.recovery --outage-s 5 --runs 1
    .venv/bin/python -m bench.recovery --bridge-cmd ../main/.venv/bin/signal-bridge   # before
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import redis

from bench.common import make_signal, stream_fields
from bench.run import REPO, BenchError, Processes, RedisServer
from bridge.devkit.ingest import serve_in_thread

__all__ = ["SwitchSink", "main"]

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

SECRET: Final = "bench-recovery-secret-0123456789"
GROUP: Final = "signal-bridge"
ACCEPTED: Final = (
    b'{"signal_id":"sink","status":"received","server_timestamp":"2026-01-01T00:00:00.000000Z"}'
)
DRAIN_LIMIT_S: Final = 120.0
POLL_S: Final = 0.005


class SwitchSink:
    """ASGI sink: 201 when healthy, else the outage's status; remembers accepted keys."""

    def __init__(self) -> None:
        self.status = 201
        self.retry_after: str | None = None
        self.first_accept_after: float | None = None
        self.returned_at = 0.0
        self.keys: dict[str, int] = {}
        self.refused = 0
        self._lock = threading.Lock()

    def set_healthy(self) -> None:
        """End the outage: answer 201 from now on."""
        with self._lock:
            self.status, self.retry_after = 201, None
            self.returned_at = time.monotonic()
            self.first_accept_after = None

    def set_outage(self, status: int, retry_after: str | None) -> None:
        """Start an outage answering ``status`` (with Retry-After when given)."""
        with self._lock:
            self.status, self.retry_after = status, retry_after

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer one request as the current mode says."""
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        with self._lock:
            status, retry_after = self.status, self.retry_after
            if status == 201:
                key = headers.get("x-idempotency-key", "")
                self.keys[key] = self.keys.get(key, 0) + 1
                if self.first_accept_after is None:
                    self.first_accept_after = time.monotonic()
            else:
                self.refused += 1
        out = [(b"content-type", b"application/json")]
        if retry_after is not None:
            out.append((b"retry-after", retry_after.encode()))
        body = ACCEPTED if status == 201 else b'{"detail":"outage"}'
        await send({"type": "http.response.start", "status": status, "headers": out})
        await send({"type": "http.response.body", "body": body})


@dataclass
class RunResult:
    """One outage run, measured at the sink and in Redis."""

    scenario: str
    backlog: int
    resume_s: float
    last_ack_s: float
    published: int
    delivered_unique: int
    duplicates: int
    dead_letters: int

    @property
    def drain_per_s(self) -> float:
        """Signals per second from the first accepted POST to the last ack."""
        span = self.last_ack_s - self.resume_s
        return self.backlog / span if span > 0 else float("inf")


def _drained(client: redis.Redis, stream: str) -> bool:
    """Everything read and acknowledged."""
    groups: Any = client.xinfo_groups(stream)
    return bool(groups) and groups[0]["lag"] == 0 and groups[0]["pending"] == 0


def _publish(client: redis.Redis, stream: str, start: int, count: int, prefix: str) -> None:
    """XADD ``count`` bench signals in one pipeline."""
    pipe = client.pipeline(transaction=False)
    for index in range(start, start + count):
        pipe.xadd(stream, stream_fields(make_signal(index, prefix), index))
    pipe.execute()


def _wait(check: Callable[[], bool], limit_s: float, what: str) -> float:
    """Poll ``check`` until true (bounded); return when it became true (monotonic)."""
    deadline = time.monotonic() + limit_s
    while not check():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {limit_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return time.monotonic()


@dataclass
class Rig:
    """What every run shares: the processes, Redis, the sink and its URL, the log directory."""

    args: argparse.Namespace
    procs: Processes
    server: RedisServer
    sink: SwitchSink
    url: str
    log_dir: Path


def one_run(rig: Rig, scenario: tuple[str, int, str | None]) -> RunResult:
    """Warm up, hold an outage while publishing, restore the server, time the recovery."""
    args, procs, server, sink, url, log_dir = (
        rig.args,
        rig.procs,
        rig.server,
        rig.sink,
        rig.url,
        rig.log_dir,
    )
    name, status, retry_after = scenario
    # A generous socket timeout: on a shared 2-core machine Redis can stall for seconds.
    client = redis.Redis.from_url(server.url, socket_timeout=60)
    stream = f"bench:recovery:{name}:{uuid.uuid4().hex[:6]}"
    prefix = uuid.uuid4().hex[:8]
    client.xgroup_create(stream, GROUP, id="0", mkstream=True)
    env = {
        "PATH": str(Path(sys.executable).parent),
        "BRIDGE_REDIS_URL": server.url,
        "BRIDGE_STREAM": stream,
        "BRIDGE_DLQ_STREAM": f"{stream}:dlq",
        "BRIDGE_GROUP": GROUP,
        "BRIDGE_CONSUMER": "bench-1",
        "BRIDGE_START_ID": "0",
        "OUTBOUND_SERVER_URL": url,
        "HMAC_PRODUCER_SECRET": SECRET,
        "PRODUCER_ID": "bench-recovery",
        "BRIDGE_LOG_LEVEL": args.log_level,
        "BRIDGE_HEALTH_PORT": "0",
        "OTEL_SDK_DISABLED": "true",
    }
    bridge = procs.spawn([args.bridge_cmd, "run"], log_dir / f"{stream}.log", env)
    try:
        sink.set_healthy()
        _publish(client, stream, 0, 100, prefix)
        _wait(lambda: _drained(client, stream), 30, "the warm-up to drain")
        published = 100
        if status == 201:  # the baseline: the same backlog at once, to a healthy server
            backlog = round(args.rate * args.outage_s)
            _publish(client, stream, published, backlog, prefix)
            published += backlog
            sink.set_healthy()
        else:
            sink.set_outage(status, retry_after)
            # A random extra fraction of a second, so the server's return does not fall in step
            # with the probe schedule (an outage of whole seconds would meet a probe at once).
            outage_s = args.outage_s + random.random()  # noqa: S311 - timing jitter, not crypto
            started = time.monotonic()
            per_tick = max(1, round(args.rate * 0.05))
            while time.monotonic() - started < outage_s:
                _publish(client, stream, published, per_tick, prefix)
                published += per_tick
                time.sleep(0.05)
            backlog = published - 100
            sink.set_healthy()
        back = sink.returned_at
        done = _wait(lambda: _drained(client, stream), DRAIN_LIMIT_S, "the backlog to drain")
        first = sink.first_accept_after or done
    finally:
        procs.stop(bridge)
    dead = int(client.xlen(f"{stream}:dlq"))
    client.close()
    delivered = len(sink.keys)
    duplicates = sum(count - 1 for count in sink.keys.values())
    sink.keys.clear()
    return RunResult(
        scenario=name,
        backlog=backlog,
        resume_s=first - back,
        last_ack_s=done - back,
        published=published,
        delivered_unique=delivered,
        duplicates=duplicates,
        dead_letters=dead,
    )


def _table(results: list[RunResult]) -> None:
    """Print the runs as a Markdown table plus the medians per scenario."""
    print(
        "| scenario | run | backlog | resume (first 201) s | last ack s | drain /s "
        "| unique delivered / published | dead letters |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    runs: dict[str, int] = {}
    for r in results:
        runs[r.scenario] = runs.get(r.scenario, 0) + 1
        print(
            f"| {r.scenario} | {runs[r.scenario]} | {r.backlog} | {r.resume_s:.2f} "
            f"| {r.last_ack_s:.2f} | {r.drain_per_s:,.0f} | {r.delivered_unique} / {r.published} "
            f"| {r.dead_letters} |"
        )
    for scenario in runs:
        mine = [r for r in results if r.scenario == scenario]
        print(
            f"\n{scenario}: median resume {statistics.median(r.resume_s for r in mine):.2f} s, "
            f"median last ack {statistics.median(r.last_ack_s for r in mine):.2f} s"
        )


def main(argv: list[str] | None = None) -> int:
    """Run the outage scenarios and print a Markdown table; exit 1 if a signal went missing."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outage-s", type=float, default=15.0, help="outage length (15)")
    parser.add_argument("--runs", type=int, default=3, help="runs per scenario (3)")
    parser.add_argument("--rate", type=float, default=200.0, help="signals/s published (200)")
    parser.add_argument("--log-level", default="ERROR", help="the bridge's BRIDGE_LOG_LEVEL")
    parser.add_argument(
        "--bridge-cmd",
        default=str(REPO / ".venv/bin/signal-bridge"),
        help="the signal-bridge executable (another checkout's, to compare)",
    )
    args = parser.parse_args(argv)
    scenarios = [
        ("baseline: same backlog, no outage", 201, None),
        ("500", 500, None),
        ("503 + Retry-After: 2", 503, "2"),
    ]
    log_dir = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    procs = Processes()
    sink = SwitchSink()
    results: list[RunResult] = []
    try:
        server = RedisServer(procs, log_dir)
        with serve_in_thread(sink) as url:
            rig = Rig(args, procs, server, sink, url, log_dir)
            for scenario in scenarios:
                for _ in range(args.runs):
                    results.append(one_run(rig, scenario))
                    print(json.dumps(results[-1].__dict__), flush=True)
        server.close(procs)
    finally:
        procs.stop_all()
    _table(results)
    lost = [r for r in results if r.delivered_unique != r.published or r.dead_letters]
    print(f"\nlogs: {log_dir}")
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
