"""One-command benchmark of signal-bridge against the two reference bridges.

Run from the repo root: ``.venv/bin/python -m bench.run`` (``--help`` for options, ``--quick``
for a short run). It starts a private redis-server and the sinks, then for each bridge:

1. a contract check (a few hundred signals through the recording sink, verified against the
   stream: idempotency keys, canonical bodies, headers, signatures);
2. drain runs: a fresh backlog of N signals, timed from the first ack until the group has read
   everything and nothing is pending (CPU and peak RSS from /proc, median of ``--repeat``);
3. latency runs: a separate producer XADDs at fixed rates, the recording sink measures
   XADD -> server latency;
4. optional memory run (``--memory-entries``) and two-replica run (``--replica-bridges``).

Results go to ``bench/results/latest.json`` and are printed as tables.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any, Final

import redis

from bench.common import (
    canonical_json,
    free_port,
    idempotency_key,
    make_signal,
    stream_fields,
)
from bench.procstat import (
    die_with_parent,
    machine_busy_seconds,
    self_cpu_seconds,
    tree_cpu_seconds,
    tree_peak_rss_mb,
)
from bench.sink import (
    SinkProcess,
    http_call,
    start_fast_sink,
    start_uvicorn_sink,
    uvicorn_impl,
)

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
VENV_PY = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PY) if VENV_PY.exists() else sys.executable
GROUP = "signal-bridge"
SECRET = "bench-secret-0123456789abcdef"
PRODUCER_ID = "bench-producer"
POLL_S = 0.01
STOP_WAIT_S = 10.0


class BenchError(RuntimeError):
    """A run failed (bridge exited, timed out, or answered wrongly)."""


@dataclass
class BridgeSpec:
    """How to start one bridge, and whether it can be started here."""

    name: str
    argv: list[str]
    missing: str | None = None
    # signal-bridge variants: export spans and metrics over OTLP with this sampler spec
    # (``--sampler`` syntax; "" is the bridge's default, every span of a sampled trace).
    otlp_sampler: str | None = None
    # Extra environment of this variant (the signature scheme and its key file).
    env: dict[str, str] = field(default_factory=dict)


# signal-bridge with OTLP export on, as separate bridges so one run measures them beside the
# references: every span, and the ratios the README recommends.
OTLP_VARIANTS: Final = {
    "signal-bridge-otlp": "",
    "signal-bridge-otlp-10pct": "traceidratio:0.1",
    "signal-bridge-otlp-1pct": "traceidratio:0.01",
}


# signal-bridge with each signature scheme (issue 19), as separate bridges so one run measures
# them beside the references; the Ed25519 key is made once per harness run (ED25519_KEY_FILE).
ED25519_KEY_FILE: Final = RESULTS / "bench-ed25519.pem"


def scheme_variants() -> dict[str, dict[str, str]]:
    """Return the signature-scheme variants of signal-bridge: bridge name -> environment."""
    key = {"OUTBOUND_ED25519_KEY_FILE": str(ED25519_KEY_FILE)}
    return {
        "signal-bridge-v2": {"OUTBOUND_SIGNATURE_VERSION": "2"},
        "signal-bridge-webhooks": {"OUTBOUND_SIGNATURE_SCHEME": "standard-webhooks"},
        "signal-bridge-webhooks-ed25519": {
            "OUTBOUND_SIGNATURE_SCHEME": "standard-webhooks",
            **key,
        },
        "signal-bridge-rfc9421": {"OUTBOUND_SIGNATURE_SCHEME": "rfc9421"},
        "signal-bridge-rfc9421-ed25519": {"OUTBOUND_SIGNATURE_SCHEME": "rfc9421", **key},
        # issue 22: one receipt per settled entry, written in the ack's script
        "signal-bridge-receipts": {"BRIDGE_RECEIPTS": "true"},
    }


def ed25519_public_key() -> str:
    """Write a fresh Ed25519 key for the scheme variants; return its public key (base64)."""
    from bridge.core.ed25519 import (  # noqa: PLC0415 - only the scheme variants need it
        generate_private_key,
        private_key_pem,
        public_key_b64,
    )

    key = generate_private_key()
    ED25519_KEY_FILE.unlink(missing_ok=True)
    ED25519_KEY_FILE.touch(mode=0o600)
    ED25519_KEY_FILE.write_bytes(private_key_pem(key))
    return public_key_b64(key)


def bridge_specs(signal_bridge_cmd: str, baseline_cmd: str = "") -> dict[str, BridgeSpec]:
    """Return the known bridges, marking signal-bridge missing when it cannot be imported.

    ``baseline_cmd`` (another checkout's ``signal-bridge run``) adds ``baseline`` and
    ``baseline-otlp``, so one run measures a change beside the version before it.
    """
    specs = {
        "naive": BridgeSpec("naive", [PYTHON, "-m", "bench.ref_naive", "--idle-exit", "0"]),
        "aiohttp": BridgeSpec("aiohttp", [PYTHON, "-m", "bench.ref_aiohttp", "--idle-exit", "0"]),
        "aiohttp-asyncio": BridgeSpec(
            "aiohttp-asyncio",
            [PYTHON, "-m", "bench.ref_aiohttp", "--idle-exit", "0", "--loop", "asyncio"],
        ),
    }
    argv = shlex.split(signal_bridge_cmd)
    exe = argv[0] if Path(argv[0]).is_absolute() else str(REPO / argv[0])
    argv[0] = exe if Path(exe).exists() else (shutil.which(argv[0]) or exe)
    missing: str | None = None
    if not Path(argv[0]).exists():
        missing = f"{argv[0]} does not exist"
    elif Path(argv[0]).name == "signal-bridge":  # the console script exists before its module
        probe = subprocess.run(  # noqa: S603
            [PYTHON, "-c", "from bridge.ops.cli import main"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if probe.returncode != 0:
            last = (probe.stderr.strip().splitlines() or ["?"])[-1]
            missing = f"bridge.ops.cli:main is not importable ({last})"
    specs["signal-bridge"] = BridgeSpec("signal-bridge", argv, missing)
    for name, sampler in OTLP_VARIANTS.items():
        specs[name] = BridgeSpec(name, argv, missing, otlp_sampler=sampler)
    for name, scheme_env in scheme_variants().items():
        specs[name] = BridgeSpec(name, argv, missing, env=scheme_env)
    if baseline_cmd:
        base = shlex.split(baseline_cmd)
        gone = None if Path(base[0]).exists() else f"{base[0]} does not exist"
        specs["baseline"] = BridgeSpec("baseline", base, gone)
        specs["baseline-otlp"] = BridgeSpec("baseline-otlp", base, gone, otlp_sampler="")
    return specs


# --------------------------------------------------------------------------- processes


class Processes:
    """Every child process the harness started, so that all of them are ended on exit."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sinks: list[SinkProcess] = []

    def spawn(
        self, argv: list[str], log: Path, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a process with stdout+stderr to ``log`` and remember it."""
        with log.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=REPO,
                preexec_fn=die_with_parent,  # noqa: PLW1509 - the harness has no threads
            )
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], wait_s: float = STOP_WAIT_S) -> int | None:
        """SIGTERM, wait at most ``wait_s``, then SIGKILL; return the exit code."""
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(wait_s)
            except subprocess.TimeoutExpired:
                print(f"  pid {proc.pid} ignored SIGTERM for {wait_s:.0f} s; SIGKILL")
                proc.kill()
                proc.wait(5)
        with contextlib.suppress(ValueError):
            self.procs.remove(proc)
        return proc.returncode

    def stop_all(self) -> None:
        """End every process and sink still running."""
        for proc in list(self.procs):
            self.stop(proc, 5)
        for sink in self.sinks:
            sink.stop()
        self.sinks.clear()


class RedisServer:
    """A private redis-server on a free loopback port, without persistence."""

    def __init__(self, procs: Processes, log_dir: Path) -> None:
        binary = shutil.which("redis-server")
        if not binary:
            raise BenchError("redis-server is not installed (apt-get install -y redis-server)")
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        argv = [
            binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.tmp),
            "--daemonize",
            "no",
        ]
        self.proc = procs.spawn(argv, log_dir / "redis.log")
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise BenchError("redis-server did not start") from None
                time.sleep(0.05)
        self.version = str(self.client.info("server")["redis_version"])

    def close(self, procs: Processes) -> None:
        """Stop the server and remove its directory."""
        self.client.close()
        procs.stop(self.proc, 5)
        shutil.rmtree(self.tmp, ignore_errors=True)


# --------------------------------------------------------------------------- stream helpers


def build_backlog(
    client: redis.Redis, stream: str, count: int, prefix: str, instruments: int = 0
) -> None:
    """XADD ``count`` signals in pipelined batches and create the group at id 0."""
    client.delete(stream)
    for start in range(0, count, 1000):
        pipe = client.pipeline(transaction=False)
        for index in range(start, min(count, start + 1000)):
            signal = make_signal(index, prefix, instruments=instruments)
            pipe.xadd(stream, stream_fields(signal, index))
        pipe.execute()
    client.xgroup_create(stream, GROUP, id="0")


@dataclass
class GroupState:
    """What XINFO GROUPS says about the bench group."""

    read: int
    pending: int
    lag: int | None

    @property
    def acked(self) -> int:
        """Entries the group read and no longer has pending."""
        return self.read - self.pending


def group_state(client: redis.Redis, stream: str) -> GroupState:
    """Return the bench group's entries-read, pending and lag."""
    for group in client.xinfo_groups(stream):
        name = group["name"]
        if (name.decode() if isinstance(name, bytes) else name) == GROUP:
            read = group.get("entries-read")
            lag = group.get("lag")
            return GroupState(
                int(read or 0), int(group["pending"]), None if lag is None else int(lag)
            )
    raise BenchError(f"group {GROUP} vanished from {stream}")


def wait_drained(
    client: redis.Redis,
    stream: str,
    total: int,
    procs: list[subprocess.Popen[bytes]],
    timeout_s: float,
    *,
    stall_s: float,
) -> dict[str, float]:
    """Poll until the group read ``total`` entries and none is pending; time and CPU it.

    Fails when nothing was read or acked for ``stall_s`` (a stuck bridge) or after
    ``timeout_s``. Returns the spawn-relative time of the first observed ack and of completion,
    the acks and CPU seconds at the first observation and at completion (all bridge processes'
    trees).
    """
    pids = [p.pid for p in procs]
    start = time.perf_counter()
    first: tuple[float, int, float] | None = None
    progress, progress_at = (-1, -1), start
    while True:
        now = time.perf_counter()
        for proc in procs:
            if proc.poll() is not None:
                raise BenchError(f"bridge pid {proc.pid} exited early with code {proc.returncode}")
        state = group_state(client, stream)
        if first is None and state.acked > 0:
            first = (now, state.acked, tree_cpu_seconds(pids))
        if state.read >= total and state.pending == 0 and not state.lag:
            cpu = tree_cpu_seconds(pids)
            first = first or (start, 0, 0.0)
            return {
                "first_s": first[0] - start,
                "first_acked": first[1],
                "first_cpu_s": first[2],
                "done_s": now - start,
                "cpu_s": cpu,
            }
        if (state.read, state.acked) != progress:
            progress, progress_at = (state.read, state.acked), now
        elif now - progress_at > stall_s:
            raise BenchError(
                f"no progress for {stall_s:.0f} s: read {state.read}/{total}, "
                f"pending {state.pending}, lag {state.lag}"
            )
        if now - start > timeout_s:
            raise BenchError(
                f"not drained after {timeout_s:.0f} s: read {state.read}/{total}, "
                f"pending {state.pending}, lag {state.lag}"
            )
        time.sleep(POLL_S)


def _sampler_env(spec: str) -> dict[str, str]:
    """OTEL_TRACES_SAMPLER(_ARG) for ``--sampler NAME[:ARG]`` (empty: the bridge's default)."""
    if not spec:
        return {}
    name, _, arg = spec.partition(":")
    return {"OTEL_TRACES_SAMPLER": name, **({"OTEL_TRACES_SAMPLER_ARG": arg} if arg else {})}


def bridge_env(
    ctx: Context,
    stream: str,
    consumer: str,
    start_id: str,
    url: str,
    *,
    spec: BridgeSpec | None = None,
) -> dict[str, str]:
    """Return the environment a bridge runs with (signal-bridge's variables)."""
    env = {k: v for k, v in os.environ.items() if k != "OTEL_SDK_DISABLED"}
    variant = spec.otlp_sampler if spec is not None else None
    otlp = ctx.args.otlp or variant is not None
    sampler = variant if variant is not None else ctx.args.sampler
    env.update(
        BRIDGE_REDIS_URL=ctx.redis.url,
        BRIDGE_STREAM=stream,
        BRIDGE_GROUP=GROUP,
        BRIDGE_CONSUMER=consumer,
        BRIDGE_START_ID=start_id,
        OUTBOUND_SERVER_URL=url,
        HMAC_PRODUCER_SECRET=SECRET,
        PRODUCER_ID=PRODUCER_ID,
        BRIDGE_LOG_LEVEL=ctx.args.log_level,
        # One shared stream, like the references: the group is shared (bench/strict.py measures
        # strict ordering over shards).
        BRIDGE_ORDERING="parallel",
        **(
            {
                "OTEL_EXPORTER_OTLP_ENDPOINT": ctx.fast_sink.url,
                "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
            }
            if otlp
            else {}
        ),
        **({"OTEL_SDK_DISABLED": "true"} if ctx.args.telemetry_off else {}),
        **_sampler_env(sampler),
        BRIDGE_HEALTH_PORT="0",
    )
    env.update(spec.env if spec is not None else {})
    return env


@dataclass
class Context:
    """Shared state of one harness invocation."""

    args: argparse.Namespace
    procs: Processes
    redis: RedisServer
    fast_sink: SinkProcess
    record_sink: SinkProcess
    log_dir: Path
    run_seq: int = 0
    results: dict[str, Any] = field(default_factory=dict)

    def next_name(self, kind: str, bridge: str) -> str:
        """Return a fresh stream/log name for one run."""
        self.run_seq += 1
        return f"bench:{kind}:{bridge}:{self.run_seq}:{uuid.uuid4().hex[:6]}"


def start_bridges(
    ctx: Context, spec: BridgeSpec, stream: str, *, start_id: str, url: str, replicas: int = 1
) -> list[subprocess.Popen[bytes]]:
    """Start ``replicas`` processes of a bridge with distinct consumer names."""
    procs = []
    for k in range(replicas):
        env = bridge_env(ctx, stream, f"bench-{k + 1}", start_id, url, spec=spec)
        log = ctx.log_dir / f"{stream.replace(':', '_')}-{k + 1}.log"
        procs.append(ctx.procs.spawn(spec.argv, log, env))
    return procs


def stop_bridges(ctx: Context, procs: list[subprocess.Popen[bytes]]) -> list[int | None]:
    """Terminate bridge processes (SIGTERM, bounded wait, SIGKILL); return their exit codes."""
    for proc in procs:  # signal all first, so replicas shut down in parallel
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    return [ctx.procs.stop(proc) for proc in procs]


def log_tail(ctx: Context, stream: str, lines: int = 15) -> str:
    """Return the last lines of a run's bridge logs (for error reports)."""
    out = []
    for path in sorted(ctx.log_dir.glob(f"{stream.replace(':', '_')}-*.log")):
        text = path.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {path.name}\n" + "\n".join(text))
    return "\n".join(out)


def self_report(ctx: Context, stream: str) -> dict[str, Any] | None:
    """Return the JSON stats line a reference bridge printed on exit, if any."""
    for path in sorted(ctx.log_dir.glob(f"{stream.replace(':', '_')}-*.log")):
        for line in reversed(path.read_text(errors="replace").splitlines()):
            if line.startswith('{"bridge"'):
                data: dict[str, Any] = json.loads(line)
                return data
    return None


def drain_timeout(ctx: Context, total: int) -> float:
    """Return the time bound of one drain run (assumes at least ~300 signals/s)."""
    if ctx.args.timeout:
        return float(ctx.args.timeout)
    return min(900.0, max(30.0, total / 300))


# --------------------------------------------------------------------------- runs


def wait_posts(sink: SinkProcess, before: int, total: int) -> int:
    """Return the requests the sink answered since ``before``, waiting up to 1 s for ``total``."""
    deadline = time.monotonic() + 1.0
    while True:
        posts = sink.request_count() - before
        if posts >= total or time.monotonic() > deadline:
            return posts
        time.sleep(0.05)


def drain_run(ctx: Context, spec: BridgeSpec, total: int, replicas: int = 1) -> dict[str, Any]:
    """Drain a fresh backlog of ``total`` signals to the fast sink and measure the bridge."""
    stream = ctx.next_name("drain", spec.name)
    client = ctx.redis.client
    build_backlog(client, stream, total, "drain", ctx.args.instruments)
    redis_cpu0 = tree_cpu_seconds([ctx.redis.proc.pid])
    sink_cpu0 = tree_cpu_seconds([ctx.fast_sink.proc.pid])
    posts0 = ctx.fast_sink.request_count()
    busy0, self0 = machine_busy_seconds(), self_cpu_seconds()
    procs = start_bridges(ctx, spec, stream, start_id="0", url=ctx.fast_sink.url, replicas=replicas)
    pids = [p.pid for p in procs]
    try:
        timing = wait_drained(
            client, stream, total, procs, drain_timeout(ctx, total), stall_s=ctx.args.stall_timeout
        )
        rss = tree_peak_rss_mb(pids)
        cpu_end = tree_cpu_seconds(pids)
    except BenchError as exc:
        stop_bridges(ctx, procs)
        raise BenchError(f"{exc}\n{log_tail(ctx, stream)}") from exc
    redis_cpu = tree_cpu_seconds([ctx.redis.proc.pid]) - redis_cpu0
    sink_cpu = tree_cpu_seconds([ctx.fast_sink.proc.pid]) - sink_cpu0
    # CPU that neither the bridge, redis, the sink nor the harness used: other load (noise).
    ours = cpu_end + redis_cpu + sink_cpu + self_cpu_seconds() - self0
    other_cpu = max(0.0, machine_busy_seconds() - busy0 - ours)
    exit_codes = stop_bridges(ctx, procs)
    client.delete(stream)
    posts = wait_posts(ctx.fast_sink, posts0, total)
    if posts < total:
        raise BenchError(
            f"the sink got {posts} POSTs for {total} signals: the bridge acked entries it did "
            f"not deliver (dead-lettered? too old?)\n{log_tail(ctx, stream)}"
        )
    steady_n = total - timing["first_acked"]
    steady_s = timing["done_s"] - timing["first_s"]
    if steady_n < total * 0.5 or steady_s <= 0:  # too fast to observe a first ack: use totals
        steady_n, steady_s = total, timing["done_s"]
        steady_cpu = cpu_end
    else:
        steady_cpu = cpu_end - timing["first_cpu_s"]
    return {
        "bridge": spec.name,
        "replicas": replicas,
        "signals": total,
        "signals_per_s": round(steady_n / steady_s, 1),
        "cpu_us_per_signal": round(steady_cpu / steady_n * 1e6, 1),
        "peak_rss_mb": round(rss, 1),
        "startup_s": round(timing["first_s"], 3),
        "total_s": round(timing["done_s"], 3),
        "total_cpu_s": round(cpu_end, 3),
        "redis_cpu_us_per_signal": round(redis_cpu / total * 1e6, 1),
        "sink_cpu_us_per_signal": round(sink_cpu / total * 1e6, 1),
        "posts": posts,
        "exit_codes_after_sigterm": exit_codes,
        "other_cpu_pct": round(100 * other_cpu / timing["done_s"], 1),
        "self_report": self_report(ctx, stream),
    }


def verify_delivery(
    client: redis.Redis, stream: str, records: list[dict[str, Any]], after_id: str = "-"
) -> dict[str, Any]:
    """Compare what the recording sink got with the stream's entries.

    Two independent checks, so that one failing does not hide the other: the *bodies* (the
    multiset of delivered bodies equals the canonical encodings of the entries: nothing lost,
    duplicated or altered) and the *keys* (each request's X-Idempotency-Key is
    uuid5(NAMESPACE_URL, signal_id), else uuid5 of "<stream>/<entry id>" in the entry namespace,
    of an entry whose body it
    carries). Header and signature violations found by the sink are in ``problems``.
    """
    by_key: dict[str, str] = {}
    entries: Any = client.xrange(stream, min=after_id)
    for raw_id, fields in entries:
        entry_id = raw_id.decode()
        if after_id != "-" and entry_id == after_id.lstrip("("):
            continue
        data = json.loads(fields[b"signal"])
        body = canonical_json(data)
        key = idempotency_key(stream, entry_id, data.get("signal_id"))
        by_key[key] = hashlib.sha256(body).hexdigest()
    want = Counter(by_key.values())
    got = Counter(r["body_sha256"] for r in records)
    missing = sum((want - got).values())
    extra = sum((got - want).values())
    wrong_keys = sum(1 for r in records if by_key.get(r["key"]) != r["body_sha256"])
    problems: Counter[str] = Counter(p for r in records for p in r["problems"])
    failed = [name for name, bad in (("missing", missing), ("extra", extra)) if bad]
    if wrong_keys:
        failed.append("keys")
    failed.extend(sorted(problems))
    return {
        "ok": not failed,
        "failed": failed,
        "expected": len(by_key),
        "delivered": len(records),
        "missing_bodies": missing,
        "extra_or_altered_bodies": extra,
        "wrong_idempotency_keys": wrong_keys,
        "problems": dict(problems),
    }


def sink_records(ctx: Context) -> list[dict[str, Any]]:
    """Fetch the recording sink's records."""
    status, body = http_call(ctx.record_sink.port, "GET", "/stats")
    if status != 200:
        raise BenchError(f"recording sink /stats answered {status}")
    records: list[dict[str, Any]] = json.loads(body)["records"]
    return records


def reset_sink(ctx: Context) -> None:
    """Clear the recording sink's records."""
    http_call(ctx.record_sink.port, "POST", "/reset")


def contract_check(ctx: Context, spec: BridgeSpec, total: int) -> dict[str, Any]:
    """Deliver a small backlog through the verifying sink and check every request."""
    stream = ctx.next_name("check", spec.name)
    client = ctx.redis.client
    build_backlog(client, stream, total, "check")
    reset_sink(ctx)
    procs = start_bridges(ctx, spec, stream, start_id="0", url=ctx.record_sink.url)
    try:
        wait_drained(client, stream, total, procs, 60, stall_s=ctx.args.stall_timeout)
    except BenchError as exc:
        stop_bridges(ctx, procs)
        raise BenchError(f"{exc}\n{log_tail(ctx, stream)}") from exc
    stop_bridges(ctx, procs)
    result = verify_delivery(client, stream, sink_records(ctx))
    client.delete(stream)
    return result


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def latency_run(ctx: Context, spec: BridgeSpec, rate: float, seconds: float) -> dict[str, Any]:
    """Produce at ``rate`` for ``seconds`` (separate process) and measure XADD -> sink latency."""
    stream = ctx.next_name("latency", spec.name)
    client = ctx.redis.client
    client.xgroup_create(stream, GROUP, id="$", mkstream=True)
    procs = start_bridges(ctx, spec, stream, start_id="$", url=ctx.record_sink.url)
    try:
        # Warm-up: a few signals, added while the bridge starts up (the group exists already, at
        # "$"), open the connections and fill caches; once they are acked the bridge is ready.
        warmup = 50
        for index in range(warmup):
            client.xadd(stream, stream_fields(make_signal(index, "warmup"), index))
        wait_drained(client, stream, warmup, procs, 60, stall_s=ctx.args.stall_timeout)
        newest: Any = client.xrevrange(stream, count=1)
        last_warmup = newest[0][0].decode()
        reset_sink(ctx)
        producer_argv = [
            PYTHON,
            "-m",
            "bench.producer",
            "--redis-url",
            ctx.redis.url,
            "--stream",
            stream,
            "--rate",
            str(rate),
            "--seconds",
            str(seconds),
        ]
        log = ctx.log_dir / f"{stream.replace(':', '_')}-producer.log"
        producer = ctx.procs.spawn(producer_argv, log)
        try:
            producer.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            ctx.procs.stop(producer)
            raise BenchError("producer did not finish in time") from None
        ctx.procs.stop(producer)
        produced_at = time.perf_counter()
        producer_summary = json.loads(log.read_text().strip().splitlines()[-1])
        sent = int(producer_summary["sent"])
        drained = True
        try:
            wait_drained(
                client,
                stream,
                warmup + sent,
                procs,
                max(30.0, 4 * seconds),
                stall_s=ctx.args.stall_timeout,
            )
        except BenchError:
            drained = False
        drain_after_s = time.perf_counter() - produced_at
    except BenchError as exc:
        stop_bridges(ctx, procs)
        raise BenchError(f"{exc}\n{log_tail(ctx, stream)}") from exc
    stop_bridges(ctx, procs)
    records = sink_records(ctx)
    contract = verify_delivery(client, stream, records, after_id=f"({last_warmup}")
    client.delete(stream)
    lat = sorted((r["arrival_ns"] - r["sent_ns"]) / 1e6 for r in records if r["sent_ns"])
    return {
        "bridge": spec.name,
        "rate": rate,
        "seconds": seconds,
        "sent": sent,
        "delivered": len(lat),
        "producer": producer_summary,
        "drained": drained,
        "drain_after_producer_s": round(drain_after_s, 3),
        "p50_ms": round(percentile(lat, 0.50), 3),
        "p99_ms": round(percentile(lat, 0.99), 3),
        "max_ms": round(lat[-1], 3) if lat else math.nan,
        "mean_ms": round(statistics.fmean(lat), 3) if lat else math.nan,
        "contract": contract,
    }


# --------------------------------------------------------------------------- reporting


NOISY_PCT = 15.0


def noise_note(other_cpu_pct: float) -> str:
    """Return a warning when other processes used noticeable CPU during a run."""
    if other_cpu_pct < NOISY_PCT:
        return ""
    return f"  [NOISY: other processes used {other_cpu_pct:.0f}% of a core meanwhile]"


def busy_before_start(seconds: float = 1.0) -> float:
    """Return how much of a core other processes use while the harness is idle (percent)."""
    busy0 = machine_busy_seconds()
    time.sleep(seconds)
    return 100 * (machine_busy_seconds() - busy0) / seconds


def wait_idle(budget_s: float) -> None:
    """Wait, at most ``budget_s``, until other processes use less than NOISY_PCT of a core."""
    deadline = time.monotonic() + budget_s
    while (busy := busy_before_start(0.5)) >= NOISY_PCT:
        if time.monotonic() > deadline:
            print(f"  machine still busy ({busy:.0f}% of a core) after {budget_s:.0f} s; running")
            return


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Return the per-metric median of repeated drain runs."""
    keys = (
        "other_cpu_pct",
        "signals_per_s",
        "cpu_us_per_signal",
        "peak_rss_mb",
        "startup_s",
        "redis_cpu_us_per_signal",
        "sink_cpu_us_per_signal",
    )
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 1) for k in keys}
    out["runs"] = len(runs)
    out["signals_per_s_all"] = [r["signals_per_s"] for r in runs]
    return out


def contract_cell(check: dict[str, Any]) -> str:
    """Format a contract result for a table cell: ``ok``, ``FAIL: keys,signature`` or ``-``."""
    if not check:
        return "-"
    return "ok" if check["ok"] else "FAIL: " + ",".join(check["failed"])


def ratio(a: float | None, b: float | None) -> str:
    """Format a/b as ``1.23x`` (``-`` when either is missing)."""
    if not a or not b:
        return "-"
    return f"{a / b:.2f}x"


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Print a Markdown table."""
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def report(results: dict[str, Any]) -> None:
    """Print the drain, latency, memory and replica tables."""
    drain: dict[str, dict[str, Any]] = results["drain"]
    ref = drain.get("aiohttp", {})
    naive = drain.get("naive", {})
    rows = []
    for name, med in drain.items():
        check = results["contract"].get(name, {})
        rates = sorted(run["signals_per_s"] for run in results.get("drain_runs", {}).get(name, []))
        rows.append(
            [
                name,
                f"{med['signals_per_s']:,.0f}",
                f"{rates[0]:,.0f}-{rates[-1]:,.0f}" if rates else "-",
                f"{med['cpu_us_per_signal']:,.0f}",
                f"{med['peak_rss_mb']:.1f}",
                ratio(med["signals_per_s"], ref.get("signals_per_s")),
                ratio(med["signals_per_s"], naive.get("signals_per_s")),
                ratio(med["cpu_us_per_signal"], ref.get("cpu_us_per_signal")),
                f"{med['startup_s']:.2f}",
                contract_cell(check),
                f"{med['other_cpu_pct']:.0f}%",
            ]
        )
    meta = results["meta"]
    print(
        f"\nDrain {meta['signals']:,} signals -> {meta['sink']} sink "
        f"(median of {meta['repeat']}; rate and CPU measured from the first ack)"
    )
    headers = [
        "bridge",
        "signals/s",
        "spread",
        "CPU us/signal",
        "peak RSS MB",
        "rate vs aiohttp",
        "rate vs naive",
        "CPU vs aiohttp",
        "startup s",
        "contract",
        "other CPU",
    ]
    print_table(headers, rows)
    if results["latency"]:
        print(f"\nLatency XADD -> sink (separate paced producer; {meta['latency_sink']} sink)")
        rows = [
            [
                r["bridge"],
                f"{r['rate']:,.0f}/s",
                f"{r['delivered']}/{r['sent']}",
                f"{r['p50_ms']:.2f}",
                f"{r['p99_ms']:.2f}",
                f"{r['max_ms']:.2f}",
                f"{r['drain_after_producer_s']:.2f}" + ("" if r["drained"] else " (timeout)"),
                contract_cell(r["contract"]),
            ]
            for r in results["latency"]
        ]
        headers = [
            "bridge",
            "rate",
            "delivered",
            "p50 ms",
            "p99 ms",
            "max ms",
            "drain after producer s",
            "contract",
        ]
        print_table(headers, rows)
    if results["memory"]:
        print("\nMemory run")
        rows = [
            [
                r["bridge"],
                f"{r['signals']:,}",
                f"{r['peak_rss_mb']:.1f}",
                f"{r['signals_per_s']:,.0f}",
            ]
            for r in results["memory"]
        ]
        print_table(["bridge", "entries", "peak RSS MB", "signals/s"], rows)
    if results["replicas"]:
        print("\nTwo replicas vs one (same backlog, distinct BRIDGE_CONSUMER)")
        rows = [
            [r["bridge"], f"{r['one']:,.0f}", f"{r['two']:,.0f}", f"{r['ratio']:.2f}x"]
            for r in results["replicas"]
        ]
        print_table(["bridge", "1 replica signals/s", "2 replicas signals/s", "ratio 2 vs 1"], rows)
    for name, why in results["skipped"].items():
        print(f"skipped {name}: {why}")


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the harness CLI."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add = parser.add_argument
    add(
        "--bridges",
        default="naive,aiohttp,signal-bridge,signal-bridge-otlp",
        help="comma-separated bridges (also: aiohttp-asyncio, signal-bridge-otlp-10pct, "
        "signal-bridge-otlp-1pct, and one per signature scheme: signal-bridge-v2, "
        "signal-bridge-webhooks, signal-bridge-webhooks-ed25519, signal-bridge-rfc9421, "
        "signal-bridge-rfc9421-ed25519; signal-bridge-receipts: BRIDGE_RECEIPTS=true)",
    )
    add("--signals", "-n", type=int, default=20_000, help="backlog size of a drain run")
    add("--repeat", type=int, default=3, help="drain runs per bridge (median reported)")
    add("--quick", action="store_true", help="5,000 signals, 1 repeat, 2 s latency runs")
    add("--rates", default="200,1000", help="latency-run rates (signals/s); empty: none")
    add("--latency-seconds", type=float, default=5.0, help="producer time per latency run")
    add("--check-signals", type=int, default=300, help="signals in the contract check")
    add("--memory-entries", type=int, default=0, help="backlog of the memory run (0: none)")
    add("--memory-bridges", default="signal-bridge", help="bridges given the memory run")
    add("--replica-bridges", default="signal-bridge", help="bridges given the 2-replica run")
    add("--install-nginx", action="store_true", help="apt-get install nginx when missing")
    add("--uvicorn-sink", action="store_true", help="use the uvicorn fast sink even with nginx")
    add("--signal-bridge-cmd", default=".venv/bin/signal-bridge run", help="command (shlex)")
    add(
        "--baseline-cmd",
        default="",
        help="another checkout's signal-bridge command (absolute path): adds the bridges "
        "baseline and baseline-otlp, to measure a change beside the version before it",
    )
    add("--timeout", type=float, default=0, help="bound of one drain run in s (0: auto)")
    add("--stall-timeout", type=float, default=20, help="fail a run after S s without progress")
    add("--wait-idle", type=float, default=0, help="before each run wait up to S s for idle CPU")
    add(
        "--instruments",
        type=int,
        default=0,
        help="spread the backlog over N instruments (default: 6 real ones; bounds ordering)",
    )
    add(
        "--telemetry-off",
        action="store_true",
        help="OTEL_SDK_DISABLED=true for signal-bridge: the cost of the pipeline without OTel",
    )
    add(
        "--otlp",
        action="store_true",
        help="signal-bridge exports spans and metrics over OTLP/HTTP (to the nginx sink's stub)",
    )
    add(
        "--sampler",
        default="",
        help="signal-bridge's OTEL_TRACES_SAMPLER[:ARG] with --otlp, e.g. traceidratio:0.1",
    )
    add(
        "--log-level",
        default="INFO",
        help="signal-bridge's BRIDGE_LOG_LEVEL (INFO: a JSON line per delivery, as in production)",
    )
    add("--out", type=Path, default=RESULTS / "latest.json", help="JSON results file")
    args = parser.parse_args(argv)
    if args.quick:
        args.signals = min(args.signals, 5_000)
        args.repeat = 1
        args.latency_seconds = min(args.latency_seconds, 2.0)
    if not 100 <= args.signals <= 2_000_000 or not 1 <= args.repeat <= 20:
        parser.error("--signals must be in [100, 2000000] and --repeat in [1, 20]")
    if not 0 < args.latency_seconds <= 120:
        parser.error("--latency-seconds must be in (0, 120]")
    return args


def names(csv: str) -> list[str]:
    """Split a comma-separated list."""
    return [n.strip() for n in csv.split(",") if n.strip()]


class Runner:
    """Runs the selected measurements and fills ``ctx.results``; a failed run is recorded."""

    def __init__(self, ctx: Context, specs: dict[str, BridgeSpec]) -> None:
        self.ctx = ctx
        self.args = ctx.args
        self.res = ctx.results
        self.specs = specs

    def guarded(self, label: str, spec: BridgeSpec, func: Any, *fargs: Any) -> Any:  # noqa: ANN401
        """Run one measurement; on failure record it and return None."""
        if label != "contract" and self.args.wait_idle:
            wait_idle(self.args.wait_idle)
        try:
            return func(self.ctx, spec, *fargs)
        except (BenchError, redis.RedisError, OSError) as exc:
            print(f"FAILED {label} {spec.name}: {exc}")
            self.res["errors"].append({"bridge": spec.name, "run": label, "error": str(exc)})
            return None

    def select(self) -> list[BridgeSpec]:
        """Return the selected bridges that can run; report the ones skipped."""
        wanted = names(self.args.bridges)
        unknown = [n for n in wanted if n not in self.specs]
        if unknown:
            raise BenchError(f"unknown bridge(s) {unknown} (known: {', '.join(self.specs)})")
        active = []
        for name in wanted:
            missing = self.specs[name].missing
            if missing:
                print(f"SKIP {name}: {missing}")
                self.res["skipped"][name] = missing
            else:
                active.append(self.specs[name])
        return active

    def contracts(self, active: list[BridgeSpec]) -> None:
        """Run the contract check of every bridge."""
        for spec in active:
            check = self.guarded("contract", spec, contract_check, self.args.check_signals)
            if check is not None:
                self.res["contract"][spec.name] = check
                print(f"contract {spec.name}: {contract_cell(check)} {check}")

    def drains(self, active: list[BridgeSpec]) -> None:
        """Run the drain runs, interleaved across bridges so that drift hits all alike."""
        runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in active}
        for rep in range(self.args.repeat):
            for spec in active:
                one = self.guarded("drain", spec, drain_run, self.args.signals)
                if one is not None:
                    runs[spec.name].append(one)
                    print(
                        f"drain {spec.name} #{rep + 1}: {one['signals_per_s']:,.0f} signals/s, "
                        f"{one['cpu_us_per_signal']:,.0f} us CPU/signal, "
                        f"{one['peak_rss_mb']:.1f} MB" + noise_note(one["other_cpu_pct"])
                    )
        self.res["drain_runs"] = runs
        self.res["drain"] = {name: median_of(r) for name, r in runs.items() if r}

    def latencies(self, active: list[BridgeSpec]) -> None:
        """Run the fixed-rate latency runs."""
        for rate in [float(r) for r in names(self.args.rates)]:
            for spec in active:
                lat = self.guarded("latency", spec, latency_run, rate, self.args.latency_seconds)
                if lat is not None:
                    self.res["latency"].append(lat)
                    print(
                        f"latency {spec.name} @ {rate:,.0f}/s: p50 {lat['p50_ms']} ms, "
                        f"p99 {lat['p99_ms']} ms, max {lat['max_ms']} ms, "
                        f"{lat['delivered']}/{lat['sent']} delivered"
                    )

    def memory(self, active: list[BridgeSpec]) -> None:
        """Run the memory run (a large backlog) for the chosen bridges."""
        if not self.args.memory_entries:
            return
        for spec in active:
            if spec.name in names(self.args.memory_bridges):
                mem = self.guarded("memory", spec, drain_run, self.args.memory_entries)
                if mem is not None:
                    self.res["memory"].append(mem)
                    print(f"memory {spec.name}: {mem['peak_rss_mb']:.1f} MB peak RSS")

    def replicas(self, active: list[BridgeSpec]) -> None:
        """Run two replicas of the chosen bridges and compare with one."""
        for spec in active:
            one = self.res["drain"].get(spec.name, {}).get("signals_per_s")
            if spec.name not in names(self.args.replica_bridges) or not one:
                continue
            two = [
                self.guarded("replicas", spec, drain_run, self.args.signals, 2)
                for _ in range(self.args.repeat)
            ]
            ok = [t for t in two if t is not None]
            if ok:
                rate2 = statistics.median(t["signals_per_s"] for t in ok)
                self.res["replicas"].append(
                    {
                        "bridge": spec.name,
                        "one": one,
                        "two": rate2,
                        "ratio": rate2 / one,
                        "runs": ok,
                    }
                )
                print(f"replicas {spec.name}: 2 vs 1 = {rate2 / one:.2f}x")


def run_all(ctx: Context, specs: dict[str, BridgeSpec]) -> None:
    """Run every selected measurement, filling ``ctx.results``."""
    runner = Runner(ctx, specs)
    active = runner.select()
    runner.contracts(active)
    runner.drains(active)
    runner.latencies(active)
    runner.memory(active)
    runner.replicas(active)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; return 0 when every selected run succeeded."""
    args = parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    log_dir = RESULTS / "logs" / datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir.mkdir(parents=True, exist_ok=True)
    specs = bridge_specs(args.signal_bridge_cmd, args.baseline_cmd)

    def on_term(signum: int, frame: FrameType | None) -> None:
        """Turn SIGTERM into SystemExit so that every child is cleaned up."""
        del frame
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    procs = Processes()
    redis_server: RedisServer | None = None
    started = time.perf_counter()
    try:
        redis_server = RedisServer(procs, log_dir)
        fast = start_fast_sink(
            log_dir, allow_install=args.install_nginx, force_uvicorn=args.uvicorn_sink
        )
        procs.sinks.append(fast)
        os.environ["BENCH_SINK_ED25519_PUBLIC_KEYS"] = ed25519_public_key()
        record = start_uvicorn_sink("record", log_dir, SECRET, PRODUCER_ID)
        procs.sinks.append(record)
        ctx = Context(args, procs, redis_server, fast, record, log_dir)
        idle_busy = busy_before_start()
        if idle_busy > NOISY_PCT:
            print(
                f"WARNING: other processes use {idle_busy:.0f}% of a core before the run; "
                "numbers will be noisy (this is a 2-core machine: run on an idle one)"
            )
        ctx.results = {
            "meta": {
                "started": datetime.now(UTC).isoformat(timespec="seconds"),
                "signals": args.signals,
                "repeat": args.repeat,
                "sink": fast.kind,
                "latency_sink": f"{record.kind} ({uvicorn_impl()})",
                "aiohttp_ref_loop": "uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
                "redis": redis_server.version,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
                "argv": sys.argv[1:] if argv is None else argv,
                "logs": str(log_dir.relative_to(REPO)),
                "other_cpu_pct_before": round(idle_busy, 1),
                "loadavg_before": Path("/proc/loadavg").read_text().split()[:3],
            },
            "skipped": {},
            "errors": [],
            "contract": {},
            "drain": {},
            "latency": [],
            "memory": [],
            "replicas": [],
        }
        print(
            f"redis {redis_server.version} on :{redis_server.port}; fast sink {fast.kind} "
            f"on :{fast.port}; recording sink {record.kind} on :{record.port}"
        )
        run_all(ctx, specs)
        ctx.results["meta"]["seconds"] = round(time.perf_counter() - started, 1)
        ctx.results["meta"]["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(ctx.results, indent=2, default=str) + "\n")
        report(ctx.results)
        print(f"\nresults: {args.out}  logs: {log_dir}  ({ctx.results['meta']['seconds']} s)")
        return 1 if ctx.results["errors"] else 0
    finally:
        procs.stop_all()
        if redis_server is not None:
            redis_server.close(procs)


if __name__ == "__main__":
    sys.exit(main())
