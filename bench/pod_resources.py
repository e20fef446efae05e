"""What one replica needs from Kubernetes: peak RSS and CPU of a real bridge, idle and draining.

Sizes the ``resources`` of ``deploy/kubernetes/base/deployment.yaml`` (docs/kubernetes.md quotes
the numbers). It starts a private redis-server, the reference ingest server
(``signal-bridge ingest-server``, verifying every signature) and one ``signal-bridge run`` with
the Deployment's settings (strict ordering over 8 shards, health port on, no OTLP exporter), then:

1. idle: the leases held, nothing to do, for ``--idle-s`` seconds;
2. drain: a backlog of ``--signals`` signals XADDed over 64 instruments at once, timed until
   every shard's group has read it all and nothing is pending;
3. steady: ``--rate`` signals a second for ``--steady-s`` seconds.

With ``--otlp-ratio R`` the bridge exports spans and metrics over OTLP/HTTP to a real receiver
on loopback (tests/otlp_receiver.py, in this process: its decoding is not counted) with
``parentbased_traceidratio`` at R, and entries carry no producer trace context, so R alone
decides what is sampled (the example overlay's 0.05).

Each phase reports the bridge's CPU seconds and cores used (utime + stime from /proc) and its
resident memory (VmRSS), with the process's peak (VmHWM) at the end.

    .venv/bin/python -m bench.pod_resources                    # 20,000 signals, 500/s steady
    .venv/bin/python -m bench.pod_resources --signals 50000 --rate 1000
    .venv/bin/python -m bench.pod_resources --signals 50000 --otlp-ratio 0.05

Only 127.0.0.1; every process is ended on exit; every wait is bounded.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import redis

from bench.common import free_port, make_signal, stream_fields
from bench.procstat import cpu_seconds, status_kb
from bridge.devkit.embedded import redis_server
from tests.otlp_receiver import OtlpReceiver

SECRET: Final = "pod-resources-bench-secret-0123456789"
GROUP: Final = "signal-bridge"
WAIT_S: Final = 300.0


def _shard(instrument: str, shards: list[str]) -> str:
    """Pick the shard as a producer does (README: crc32 of the instrument mod the shard count)."""
    return shards[zlib.crc32(instrument.encode()) % len(shards)]


def _publish(
    client: redis.Redis, shards: list[str], start: int, count: int, run: str, *, traced: bool
) -> None:
    """XADD ``count`` signals over 64 instruments, each to its instrument's shard (pipelined).

    ``traced``: half of them carry a sampled producer context, as bench.run's do.
    """
    for first in range(start, start + count, 1000):
        pipe = client.pipeline(transaction=False)
        for index in range(first, min(start + count, first + 1000)):
            item = make_signal(index, run, instruments=64)
            fields = stream_fields(item, index)
            if not traced:
                fields.pop("traceparent", None)
            pipe.xadd(_shard(item["instrument"], shards), fields)
        pipe.execute()


def _drained(client: redis.Redis, shards: list[str]) -> bool:
    """Every shard's group has read everything and has nothing pending."""
    for shard in shards:
        for group in client.xinfo_groups(shard):
            if int(group["pending"]) or int(group.get("lag") or 0):
                return False
    return True


def _until(check: Any, what: str) -> None:  # noqa: ANN401 - a predicate
    """Poll ``check`` every 50 ms; RuntimeError after WAIT_S."""
    deadline = time.monotonic() + WAIT_S
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def _process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Run one process with its output in ``log``; SIGTERM (then SIGKILL) on exit."""
    with log.open("wb") as out:
        # The harness's own commands (signal-bridge from this environment), not input.
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)  # noqa: S603
        try:
            yield proc
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=10)


def _phase(pid: int, name: str, seconds: float, cpu_before: float) -> dict[str, Any]:
    """One phase's numbers: CPU seconds and cores over its wall time, RSS now."""
    cpu = cpu_seconds(pid) - cpu_before
    return {
        "phase": name,
        "wall_s": round(seconds, 2),
        "cpu_s": round(cpu, 2),
        "cores": round(cpu / seconds, 3) if seconds else 0.0,
        "rss_mib": round(status_kb(pid, "VmRSS") / 1024, 1),
    }


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the three phases; return their numbers and the peak RSS."""
    signal_bridge = shutil.which("signal-bridge", path=str(Path(sys.executable).parent))
    if signal_bridge is None:
        raise RuntimeError("signal-bridge is not installed in this environment")
    run = uuid.uuid4().hex[:6]
    shards = [f"signals:{{{i}}}" for i in range(args.shards)]
    base = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "OTEL_"))}
    ingest_port = free_port()
    health_port = free_port()
    traced = args.otlp_ratio is None
    with (
        OtlpReceiver() if args.otlp_ratio is not None else contextlib.nullcontext() as receiver,
        tempfile.TemporaryDirectory() as tmp,
        redis_server() as (redis_url, _),
        redis.Redis.from_url(redis_url) as client,
    ):
        logs = Path(tmp)
        ingest_env = dict(base, HMAC_PRODUCER_SECRET=SECRET, HMAC_PRODUCER_KEY_ID="bench")
        bridge_env = dict(
            base,
            OUTBOUND_SERVER_URL=f"http://127.0.0.1:{ingest_port}",
            HMAC_PRODUCER_SECRET=SECRET,
            HMAC_PRODUCER_KEY_ID="bench",
            PRODUCER_ID="pod-resources-bench",
            BRIDGE_REDIS_URL=redis_url,
            BRIDGE_STREAM=shards[0],
            BRIDGE_STREAMS=",".join(shards),
            BRIDGE_GROUP=GROUP,
            BRIDGE_CONSUMER="signal-bridge-0",
            BRIDGE_START_ID="0",
            BRIDGE_ORDERING="strict",
            BRIDGE_HEALTH_PORT=str(health_port),
            BRIDGE_HEALTH_HOST="127.0.0.1",
            BRIDGE_SIGNAL_MAX_AGE_SECONDS="0",
            BRIDGE_LOG_LEVEL="WARNING",
        )
        if receiver is not None:
            bridge_env.update(
                OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
                OTEL_TRACES_SAMPLER="parentbased_traceidratio",
                OTEL_TRACES_SAMPLER_ARG=str(args.otlp_ratio),
            )
        for shard in shards:
            client.xgroup_create(shard, GROUP, id="0", mkstream=True)
        ingest_argv = [signal_bridge, "ingest-server", "--host=127.0.0.1", f"--port={ingest_port}"]
        ingest_argv.append(f"--max-stored={args.signals + args.rate * args.steady_s + 1000}")
        with (
            _process(ingest_argv, ingest_env, logs / "ingest.log"),
            _process([signal_bridge, "run"], bridge_env, logs / "bridge.log") as bridge,
        ):
            pid = bridge.pid

            def owns_all() -> bool:
                if bridge.poll() is not None:
                    raise RuntimeError((logs / "bridge.log").read_text()[-3000:])
                leases = client.mget([f"{s}:lease:{GROUP}" for s in shards])
                return all(leases)

            _until(owns_all, "the bridge to hold every shard's lease")
            phases = []
            cpu0 = cpu_seconds(pid)
            time.sleep(args.idle_s)
            phases.append(_phase(pid, "idle", args.idle_s, cpu0))

            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            _publish(client, shards, 0, args.signals, run, traced=traced)
            _until(lambda: _drained(client, shards), "the backlog to drain")
            drain = _phase(pid, "drain", time.perf_counter() - t0, cpu0)
            drain["signals_per_s"] = round(args.signals / drain["wall_s"])
            phases.append(drain)

            cpu0, t0 = cpu_seconds(pid), time.perf_counter()
            index = args.signals
            for second in range(args.steady_s):
                _publish(client, shards, index, args.rate, run, traced=traced)
                index += args.rate
                time.sleep(max(0.0, t0 + second + 1 - time.perf_counter()))
            _until(lambda: _drained(client, shards), "the steady load to drain")
            phases.append(_phase(pid, f"steady {args.rate}/s", time.perf_counter() - t0, cpu0))
            peak = round(status_kb(pid, "VmHWM") / 1024, 1)
    return {
        "signals": args.signals,
        "shards": args.shards,
        "otlp_ratio": args.otlp_ratio,
        "spans_exported": len(receiver.spans()) if receiver is not None else 0,
        "phases": phases,
        "peak_rss_mib": peak,
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the options, measure, print the numbers as JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--signals", type=int, default=20_000, help="backlog drained")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--rate", type=int, default=500, help="steady signals per second")
    parser.add_argument("--steady-s", type=int, default=20)
    parser.add_argument("--idle-s", type=float, default=10.0)
    parser.add_argument("--otlp-ratio", type=float, default=None, help="export over OTLP")
    print(json.dumps(measure(parser.parse_args(argv)), indent=2))


if __name__ == "__main__":
    main()
