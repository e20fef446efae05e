"""Soak: two bridge replicas for ten minutes under faults and restarts, to see what grows.

A private ``redis-server`` and the reference ingest server (in this process, behind a fault
layer answering 1% of POSTs 503 and holding 1% for 100-500 ms) on loopback; a paced producer
XADDs a steady rate over many instruments (each signal's ``comment`` carries its XADD time and
sequence number); two ``signal-bridge run`` processes consume it (with strict ordering, the
default, the stream is split into eight shards by ``shard_for``). Replica ``soak-1`` is
stopped with SIGTERM every minute and started again; ``soak-2`` is SIGKILLed half-way and started
again. Every ten seconds, per replica: RSS, open file descriptors, threads, asyncio tasks (the
``signals_asyncio_tasks`` gauge on its /metrics), Redis connections (CLIENT LIST by client name)
and its pending entries. At the end, counted at the server: published vs accepted (unique
idempotency keys), lost, 409 duplicates, dead letters, per-instrument order inversions, and
latency XADD -> server. Writes a JSON record and a PNG plot, prints Markdown tables.

Run from the repo root: ``.venv/bin/python -m bench.soak`` (10 minutes), ``--minutes 60``,
``--smoke`` (one minute, faster schedule). Exit code 0 when nothing was lost.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import redis

from bench.common import free_port, idempotency_key, make_signal, stream_fields
from bench.procstat import die_with_parent
from bridge.config.loader import setting_names
from bridge.devkit.embedded import redis_server
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.streams.producer import shard_for

__all__ = ["main"]

ROOT: Final = Path(__file__).resolve().parent.parent
SECRET: Final = "soak-secret-0123456789abcdef"
STREAM: Final = "soak"
# Strict ordering shards the stream (BRIDGE_STREAMS): each shard is owned by one replica.
SHARDS: Final = (
    [f"{STREAM}:{{{i}}}" for i in range(8)] if "BRIDGE_ORDERING" in setting_names() else [STREAM]
)
GROUP: Final = "soak"
_SENT: Final = re.compile(r"sent_ns=(\d+);seq=(\d+)")
_TASKS: Final = re.compile(r"^signals_asyncio_tasks\S*\s+([0-9.e+]+)$", re.MULTILINE)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass(frozen=True)
class Plan:
    """How long, how fast, and when to stop replicas."""

    duration_s: float
    rate: float
    instruments: int
    term_every_s: float
    kill_at_s: float
    sample_every_s: float
    warmup_s: float
    drain_stall_s: float = 90.0


# --- the server side ------------------------------------------------------------------------


@dataclass
class ServerLog:
    """What the faulty server saw; appended from the server thread, read at the end."""

    accepted: list[tuple[int, str, int, int]] = field(
        default_factory=list
    )  # arrival, instr, seq, sent
    duplicates: int = 0
    injected_503: int = 0
    slowed: int = 0


class FaultyIngest:
    """ASGI layer over the reference server: 1% 503, 1% held 100-500 ms; records acceptances."""

    def __init__(self, app: IngestApp, *, fail: float, slow: float, seed: int = 14) -> None:
        self.app = app
        self.fail = fail
        self.slow = slow
        self.rng = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
        self.log = ServerLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request, maybe failing or delaying it first."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        draw = self.rng.random()
        if draw < self.fail:
            self.log.injected_503 += 1
            while (await receive()).get("more_body"):
                pass
            await send({"type": "http.response.start", "status": 503, "headers": []})
            await send({"type": "http.response.body", "body": b""})
            return
        if draw < self.fail + self.slow:
            self.log.slowed += 1
            await asyncio.sleep(self.rng.uniform(0.1, 0.5))
        chunks: list[bytes] = []
        status = [0]

        async def tapped_receive() -> Message:
            message = await receive()
            chunks.append(message.get("body", b""))
            return message

        async def tapped_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        await self.app(scope, tapped_receive, tapped_send)
        arrival = time.time_ns()
        if status[0] == 409:
            self.log.duplicates += 1
        elif status[0] == 201:
            signal_json = json.loads(b"".join(chunks))
            match = _SENT.search(signal_json.get("comment") or "")
            if match:
                sent, seq = int(match[1]), int(match[2])
                self.log.accepted.append((arrival, signal_json["instrument"], seq, sent))


# --- the producer ---------------------------------------------------------------------------


@dataclass
class Produced:
    """Every XADD: shard, entry id and signal_id, to derive the keys the server must hold."""

    entries: list[tuple[str, str, str | None]] = field(default_factory=list)
    max_late_s: float = 0.0


def produce(url: str, plan: Plan, out: Produced, stop: threading.Event) -> None:
    """XADD ``rate`` signals a second on an absolute schedule until ``duration_s`` or stop."""
    client = redis.Redis.from_url(url)
    try:
        start = time.perf_counter()
        total = round(plan.rate * plan.duration_s)
        for index in range(total):
            if stop.is_set():
                return
            delay = start + index / plan.rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            else:
                out.max_late_s = max(out.max_late_s, -delay)
            signal_dict = make_signal(
                index,
                "soak",
                comment=f"sent_ns={time.time_ns()};seq={index}",
                instruments=plan.instruments,
            )
            shard = shard_for(str(signal_dict["instrument"]), SHARDS)
            entry_id = client.xadd(shard, stream_fields(signal_dict, index))
            out.entries.append((shard, _text(entry_id), signal_dict["signal_id"]))
    finally:
        client.close()


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- replicas -------------------------------------------------------------------------------


@dataclass
class Sample:
    """One replica at one moment."""

    t_s: float
    replica: str
    life: int
    pid: int
    rss_mb: float
    fds: int
    threads: int
    tasks: int | None
    redis_conns: int
    pending: int
    backlog: int


class Replica:
    """A ``signal-bridge run`` child; restartable; its lives are numbered from 1."""

    def __init__(self, name: str, env: dict[str, str], log_dir: Path) -> None:
        self.name = name
        self.env = env
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.life = 0
        self.started_at = 0.0
        self.exit_codes: list[int] = []

    def start(self) -> None:
        """Start a new life of the replica."""
        self.life += 1
        out = (self.log_dir / f"{self.name}.{self.life}.log").open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "run"],
            env=self.env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only sets the parent-death signal
        )
        out.close()
        self.started_at = time.monotonic()

    def stop(self, sig: signal.Signals, timeout_s: float = 40.0) -> int:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout_s``); return the code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait(timeout=10)
        self.exit_codes.append(code)
        return code

    @property
    def pid(self) -> int:
        """The current life's process id."""
        return self.proc.pid if self.proc is not None else 0


def _proc_status(pid: int) -> tuple[float, int]:
    """(RSS in MB, threads) of a process from /proc, zeros when it is gone."""
    rss_kb, threads = 0, 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss_kb = int(line.split()[1])
            elif line.startswith("Threads:"):
                threads = int(line.split()[1])
    return rss_kb / 1024, threads


def _fds(pid: int) -> int:
    try:
        return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return 0


def _tasks(port: int) -> int | None:
    """Read the replica's asyncio task count from its /metrics (None when it does not answer)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as answer:
            text = answer.read().decode()
    except OSError:
        return None
    match = _TASKS.search(text)
    return int(float(match[1])) if match else None


def sample(
    client: redis.Redis, replicas: list[Replica], ports: dict[str, int], t_s: float
) -> list[Sample]:
    """Measure every replica once."""
    clients = client.client_list()
    conns: dict[str, int] = defaultdict(int)
    for entry in clients:
        conns[entry.get("name", "")] += 1
    pending: dict[str, int] = defaultdict(int)
    for shard in SHARDS:
        for consumer in client.xinfo_consumers(shard, GROUP):
            pending[_text(consumer["name"])] += int(consumer["pending"])
    backlog = _backlog(client)
    out = []
    for replica in replicas:
        rss, threads = _proc_status(replica.pid)
        out.append(
            Sample(
                t_s=round(t_s, 1),
                replica=replica.name,
                life=replica.life,
                pid=replica.pid,
                rss_mb=round(rss, 2),
                fds=_fds(replica.pid),
                threads=threads,
                tasks=_tasks(ports[replica.name]),
                redis_conns=conns.get(replica.name, 0),
                pending=pending.get(replica.name, 0),
                backlog=backlog,
            )
        )
    return out


# --- the run --------------------------------------------------------------------------------


def _replica_env(name: str, redis_url: str, server_url: str, health_port: int) -> dict[str, str]:
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("BRIDGE_", "HMAC_", "OUTBOUND_", "OTEL_", "PRODUCER_ID"))
    }
    env = {
        **base,
        "HMAC_PRODUCER_SECRET": SECRET,
        "PRODUCER_ID": "soak-producer",
        "OUTBOUND_SERVER_URL": server_url,
        "BRIDGE_REDIS_URL": f"{redis_url}?client_name={name}",
        "BRIDGE_STREAMS": ",".join(SHARDS),
        "BRIDGE_GROUP": GROUP,
        "BRIDGE_CONSUMER": name,
        "BRIDGE_START_ID": "0",
        "BRIDGE_LOG_LEVEL": "WARNING",
        "BRIDGE_HEALTH_PORT": str(health_port),
        "BRIDGE_HEALTH_HOST": "127.0.0.1",
    }
    if "BRIDGE_ORDERING" in setting_names():
        env["BRIDGE_ORDERING"] = "strict"
    return env


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _inversions(accepted: list[tuple[int, str, int, int]]) -> dict[str, int]:
    """Per instrument: acceptances whose sequence number is below one accepted before it."""
    highest: dict[str, int] = {}
    found: dict[str, int] = defaultdict(int)
    for _, instrument, seq, _ in sorted(accepted):
        if seq < highest.get(instrument, -1):
            found[instrument] += 1
        highest[instrument] = max(seq, highest.get(instrument, -1))
    return dict(found)


def _lives(samples: list[Sample], warmup_s: float) -> list[dict[str, Any]]:
    """Per replica life: RSS growth after warm-up, and the ranges of fds, tasks, connections."""
    by_life: dict[tuple[str, int], list[Sample]] = defaultdict(list)
    for s in samples:
        if s.rss_mb > 0:
            by_life[(s.replica, s.life)].append(s)
    rows = []
    for (name, life), group in sorted(by_life.items()):
        # A life starts when the replica answers /metrics (imports and start-up done).
        up = [s for s in group if s.tasks is not None] or group
        start = up[0].t_s
        warm = [s for s in up if s.t_s - start >= warmup_s] or up[-1:]
        tasks = [s.tasks for s in warm if s.tasks is not None]
        rows.append(
            {
                "replica": name,
                "life": life,
                "seconds": round(group[-1].t_s - start, 0),
                "rss_warm_mb": warm[0].rss_mb,
                "rss_end_mb": warm[-1].rss_mb,
                "rss_growth_mb": round(warm[-1].rss_mb - warm[0].rss_mb, 2),
                "fds": (min(s.fds for s in warm), max(s.fds for s in warm)),
                "tasks": (min(tasks), max(tasks)) if tasks else None,
                "redis_conns": (
                    min(s.redis_conns for s in warm),
                    max(s.redis_conns for s in warm),
                ),
                "threads": (min(s.threads for s in warm), max(s.threads for s in warm)),
                "samples": len(warm),
            }
        )
    return rows


def _backlog(client: redis.Redis) -> int:
    """Entries not yet acked by the group: lag (unread) plus pending (read, not acked)."""
    total = 0
    for shard in SHARDS:
        groups = client.xinfo_groups(shard)
        total += int(groups[0]["lag"] or 0) + int(groups[0]["pending"]) if groups else 0
    return total


def _wait_drained(client: redis.Redis, stall_s: float, limit_s: float) -> float | None:
    """Wait until the backlog is 0; None if it stops shrinking for ``stall_s`` or after limit."""
    started = last_progress = time.monotonic()
    best = _backlog(client)
    while time.monotonic() - started < limit_s:
        left = _backlog(client)
        if left == 0:
            return time.monotonic() - started
        if left < best:
            best, last_progress = left, time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            return None
        time.sleep(0.5)
    return None


def run(plan: Plan, out_dir: Path, plot: Path) -> dict[str, Any]:
    """Run the soak once; return everything measured."""
    log_dir = out_dir / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    log_dir.mkdir(parents=True, exist_ok=True)
    app = IngestApp(secrets={"default": SECRET.encode()})
    faulty = FaultyIngest(app, fail=0.01, slow=0.01)
    produced = Produced()
    samples: list[Sample] = []
    events: list[tuple[float, str]] = []
    stop_producing = threading.Event()
    with redis_server() as (redis_url, _), serve_in_thread(faulty) as server_url:
        client = redis.Redis.from_url(redis_url, decode_responses=True)
        for shard in SHARDS:
            client.xgroup_create(shard, GROUP, id="0", mkstream=True)
        ports = {name: free_port() for name in ("soak-1", "soak-2")}
        replicas = [
            Replica(name, _replica_env(name, redis_url, server_url, ports[name]), log_dir)
            for name in ("soak-1", "soak-2")
        ]
        term, kill = replicas
        try:
            for replica in replicas:
                replica.start()
            started = time.monotonic()
            producer = threading.Thread(
                target=produce, args=(redis_url, plan, produced, stop_producing), daemon=True
            )
            producer.start()
            next_sample = started + 2.0
            next_term = started + plan.term_every_s
            killed = False
            while producer.is_alive() and time.monotonic() - started < plan.duration_s + 30:
                now = time.monotonic()
                if now >= next_term:
                    code = term.stop(signal.SIGTERM)
                    events.append((now - started, f"SIGTERM {term.name} (exit {code})"))
                    term.start()
                    next_term += plan.term_every_s
                if not killed and now - started >= plan.kill_at_s:
                    kill.stop(signal.SIGKILL)
                    events.append((now - started, f"SIGKILL {kill.name}"))
                    time.sleep(1.0)
                    kill.start()
                    killed = True
                if now >= next_sample:
                    samples.extend(sample(client, replicas, ports, now - started))
                    next_sample += plan.sample_every_s
                time.sleep(0.1)
            stop_producing.set()
            producer.join(timeout=10)
            backlog_at_end = _backlog(client)
            drain_s = _wait_drained(client, plan.drain_stall_s, plan.duration_s + 300)
            samples.extend(sample(client, replicas, ports, time.monotonic() - started))
            dead_letters = sum(client.xlen(f"{s}:dlq") for s in SHARDS if client.exists(f"{s}:dlq"))
            for replica in replicas:
                replica.stop(signal.SIGTERM)
        finally:
            for replica in replicas:
                if replica.proc is not None and replica.proc.poll() is None:
                    replica.proc.kill()
                    replica.proc.wait(timeout=10)
            client.close()
    expected = {idempotency_key(s, entry_id, sid) for s, entry_id, sid in produced.entries}
    accepted_keys = app.keys()
    latencies_ms = [(arrival - sent) / 1e6 for arrival, _, _, sent in faulty.log.accepted]
    inversions = _inversions(faulty.log.accepted)
    result = {
        "plan": asdict(plan),
        "ordering": "strict"
        if "BRIDGE_ORDERING" in setting_names()
        else "parallel (per-instrument lanes)",
        "published": len(produced.entries),
        "accepted_unique": len(expected & accepted_keys),
        "lost": len(expected - accepted_keys),
        "unexpected_keys": len(accepted_keys - expected),
        "duplicates_409": faulty.log.duplicates,
        "injected_503": faulty.log.injected_503,
        "slowed": faulty.log.slowed,
        "dead_letters": dead_letters,
        "drained": drain_s is not None,
        "backlog_when_producing_stopped": backlog_at_end,
        "drain_s": None if drain_s is None else round(drain_s, 1),
        "max_backlog": max((s.backlog for s in samples), default=0),
        "inversions_total": sum(inversions.values()),
        "inversions_by_instrument": inversions,
        "latency_ms": {
            "p50": round(_percentile(latencies_ms, 0.5), 2),
            "p99": round(_percentile(latencies_ms, 0.99), 2),
            "max": round(max(latencies_ms, default=float("nan")), 2),
            "mean": round(statistics.fmean(latencies_ms), 2) if latencies_ms else None,
        },
        "producer_max_late_ms": round(produced.max_late_s * 1000, 1),
        "events": events,
        "exit_codes": {r.name: r.exit_codes for r in replicas},
        "lives": _lives(samples, plan.warmup_s),
        "samples": [asdict(s) for s in samples],
        "log_dir": str(log_dir),
    }
    (log_dir / "soak.json").write_text(json.dumps(result, indent=1))
    _plot(result, faulty.log.accepted, plot)
    return result


def _plot(result: dict[str, Any], accepted: list[tuple[int, str, int, int]], path: Path) -> None:
    """RSS, fds, latency (p50/p99 per 10 s) and backlog over time, with the restarts marked."""
    import matplotlib  # noqa: PLC0415 - bench group only, and only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    samples = result["samples"]
    fig, axes = plt.subplots(4, 1, figsize=(10, 11), sharex=True)
    for name in ("soak-1", "soak-2"):
        mine = [s for s in samples if s["replica"] == name and s["rss_mb"] > 0]
        axes[0].plot([s["t_s"] for s in mine], [s["rss_mb"] for s in mine], ".-", label=name)
        axes[1].plot([s["t_s"] for s in mine], [s["fds"] for s in mine], ".-", label=name)
    if accepted:
        first = min(a[0] for a in accepted)
        windows: dict[int, list[float]] = defaultdict(list)
        for arrival, _, _, sent in accepted:
            windows[int((arrival - first) / 1e10)].append((arrival - sent) / 1e6)
        xs = [10 * k + 5 for k in sorted(windows)]
        axes[2].plot(xs, [_percentile(windows[k], 0.5) for k in sorted(windows)], label="p50")
        axes[2].plot(xs, [_percentile(windows[k], 0.99) for k in sorted(windows)], label="p99")
        axes[2].set_yscale("log")
    one = [s for s in samples if s["replica"] == "soak-1"]
    axes[3].plot([s["t_s"] for s in one], [s["backlog"] for s in one], ".-", label="lag + pending")
    for t, what in result["events"]:
        for ax in axes:
            ax.axvline(t, color="red" if "KILL" in what else "grey", alpha=0.3, linewidth=1)
    axes[0].set_ylabel("RSS (MB)")
    axes[1].set_ylabel("open fds")
    axes[2].set_ylabel("XADD -> server (ms)")
    axes[3].set_ylabel("backlog (entries)")
    axes[3].set_xlabel("seconds (grey: SIGTERM + restart of soak-1; red: SIGKILL of soak-2)")
    for ax in axes:
        ax.legend(loc="upper right")
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"soak: {result['plan']['rate']:.0f} signals/s, {result['published']} published, "
        f"{result['lost']} lost"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def _tables(result: dict[str, Any]) -> str:
    """Format the Markdown tables for bench/README.md."""
    lat = result["latency_ms"]
    lines = [
        "| published | accepted (unique keys) | lost | 409 duplicates | dead letters | "
        "503 injected / slowed | inversions | p50 / p99 / max ms |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
        f"| {result['published']} | {result['accepted_unique']} | {result['lost']} | "
        f"{result['duplicates_409']} | {result['dead_letters']} | "
        f"{result['injected_503']} / {result['slowed']} | {result['inversions_total']} | "
        f"{lat['p50']} / {lat['p99']} / {lat['max']} |",
        "",
        "| replica | life | seconds up | RSS after warm-up -> end (MB) | growth MB | fds | tasks | "
        "Redis conns | threads |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def span(pair: tuple[int, int] | list[int] | None) -> str:
        if not pair:
            return "-"
        low, high = pair[0], pair[1]
        return str(low) if low == high else f"{low}-{high}"

    for life in result["lives"]:
        lines.append(
            f"| {life['replica']} | {life['life']} | {life['seconds']:.0f} | "
            f"{life['rss_warm_mb']} -> {life['rss_end_mb']} | {life['rss_growth_mb']} | "
            f"{span(life['fds'])} | {span(life['tasks'])} | {span(life['redis_conns'])} | "
            f"{span(life['threads'])} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the soak, print the tables; exit 1 when anything was lost."""
    parser = argparse.ArgumentParser(description="Soak two replicas under faults and restarts.")
    parser.add_argument("--minutes", type=float, default=10.0, help="producing time (default 10)")
    parser.add_argument("--smoke", action="store_true", help="1 minute, restarts every 20 s")
    parser.add_argument("--rate", type=float, default=500.0, help="signals/s (default 500)")
    parser.add_argument("--instruments", type=int, default=20)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path (default in --out)")
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 5000 or not 0 < args.minutes <= 24 * 60:
        parser.error("rate must be in (0, 5000] and minutes in (0, 1440]")
    if args.smoke:
        plan = Plan(60, args.rate, args.instruments, 20, 30, 5, 10)
    else:
        seconds = args.minutes * 60
        plan = Plan(seconds, args.rate, args.instruments, 60, seconds / 2, 10, 30)
    plot = args.plot or args.out / "soak.png"
    result = run(plan, args.out, plot)
    print(_tables(result))
    print(
        f"\nordering: {result['ordering']}; backlog when producing stopped: "
        f"{result['backlog_when_producing_stopped']} (max {result['max_backlog']}), drained in "
        f"{result['drain_s']} s; producer max late: {result['producer_max_late_ms']} ms; "
        f"plot: {plot}; record: {result['log_dir']}"
    )
    return 0 if result["lost"] == 0 and result["drained"] else 1


if __name__ == "__main__":
    sys.exit(main())
