"""Strict ordering: throughput with 1, 2 and 3 replicas, and takeover times.

For each replica count: start that many ``signal-bridge run`` processes with
``BRIDGE_ORDERING=strict`` over ``--shards`` streams, wait until the shard leases are spread over
all of them, then XADD a backlog (the instrument picks the shard, as producers do) and time the
drain to the fast sink. With two or more replicas, then SIGKILL one (its shards wait for the
lease TTL) and SIGTERM another (a cooperative hand-over): each time, one probe signal per
affected shard is published right after the signal and timed until acked, and the time until
the shards' leases are held by the survivors is recorded.

    .venv/bin/python -m bench.strict                     # 20,000 signals, 8 shards, 1,2,3 replicas
    .venv/bin/python -m bench.strict --lease-ttl-ms 3000 --lease-renew-ms 600

Only 127.0.0.1; private redis-server and sink; every process is ended on exit; every wait is
bounded. Results are printed as Markdown and written to ``bench/results/strict-latest.json``.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import time
import uuid
import zlib
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import redis

from bench.common import make_signal, stream_fields
from bench.run import (
    GROUP,
    PRODUCER_ID,
    RESULTS,
    SECRET,
    BenchError,
    Processes,
    RedisServer,
    group_state,
)
from bench.sink import SinkProcess, start_fast_sink

__all__ = ["main"]

WAIT_S = 120.0
POLL_S = 0.005


def _shard(instrument: str, shards: list[str]) -> str:
    """Pick the shard as the README says: crc32(instrument UTF-8) mod shard count."""
    return shards[zlib.crc32(instrument.encode()) % len(shards)]


def _lease_key(shard: str) -> str:
    return f"{shard}:lease:{GROUP}"


def _holders(client: redis.Redis, shards: list[str]) -> dict[str, str | None]:
    """Shard -> consumer holding its lease (None when free)."""
    values = client.mget([_lease_key(s) for s in shards])
    return {
        s: (v.decode().split(" ")[1] if isinstance(v, bytes) else None)
        for s, v in zip(shards, values, strict=True)
    }


def _until(check: Any, what: str, timeout_s: float = WAIT_S) -> float:  # noqa: ANN401 - a predicate
    """Poll ``check`` until true; return the seconds it took; BenchError after ``timeout_s``."""
    start = time.perf_counter()
    while not check():
        if time.perf_counter() - start > timeout_s:
            raise BenchError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(POLL_S)
    return time.perf_counter() - start


def _drained(client: redis.Redis, shards: list[str]) -> bool:
    for shard in shards:
        state = group_state(client, shard)
        if state.pending or state.lag:
            return False
    return True


def _env(
    args: argparse.Namespace, redis_url: str, sink: SinkProcess, shards: list[str], name: str
) -> dict[str, str]:
    import os  # noqa: PLC0415 - the harness's own environment

    env = {k: v for k, v in os.environ.items() if not k.startswith(("BRIDGE_", "OTEL_"))}
    env.update(
        BRIDGE_REDIS_URL=redis_url,
        BRIDGE_STREAM=shards[0],
        BRIDGE_STREAMS=",".join(shards),
        BRIDGE_GROUP=GROUP,
        BRIDGE_CONSUMER=name,
        BRIDGE_START_ID="0",
        BRIDGE_ORDERING="strict",
        BRIDGE_LEASE_TTL_MS=str(args.lease_ttl_ms),
        BRIDGE_LEASE_RENEW_MS=str(args.lease_renew_ms),
        BRIDGE_HEARTBEAT_TTL_MS=str(args.lease_ttl_ms),
        BRIDGE_BLOCK_MS=str(min(1000, args.lease_ttl_ms // 4)),
        BRIDGE_LOG_LEVEL=args.log_level,
        BRIDGE_HEALTH_PORT="0",
        OUTBOUND_SERVER_URL=sink.url,
        HMAC_PRODUCER_SECRET=SECRET,
        PRODUCER_ID=PRODUCER_ID,
        OTEL_SDK_DISABLED="true" if args.telemetry_off else "false",
    )
    return env


def _publish(
    client: redis.Redis, shards: list[str], count: int, prefix: str, start: int = 0
) -> None:
    """XADD ``count`` signals over 64 instruments, each to its instrument's shard (pipelined)."""
    for first in range(start, start + count, 1000):
        pipe = client.pipeline(transaction=False)
        for index in range(first, min(start + count, first + 1000)):
            item = make_signal(index, prefix, instruments=64)
            pipe.xadd(_shard(item["instrument"], shards), stream_fields(item, index))
        pipe.execute()


def _probe(client: redis.Redis, shards: list[str], targets: set[str], prefix: str) -> None:
    """Publish one signal to each of ``targets`` (an instrument that maps there)."""
    index = 10_000_000
    left = set(targets)
    while left:
        item = make_signal(index, prefix, instruments=64)
        item["instrument"] = f"PROBE{index}"
        shard = _shard(item["instrument"], shards)
        if shard in left:
            client.xadd(shard, stream_fields(item, index))
            left.discard(shard)
        index += 1


def _one_count(args: argparse.Namespace, ctx: dict[str, Any], replicas: int) -> dict[str, Any]:
    procs: Processes = ctx["procs"]
    client: redis.Redis = ctx["client"]
    run = uuid.uuid4().hex[:6]
    shards = [f"bench:strict:{replicas}:{run}:{{{i}}}" for i in range(args.shards)]
    for shard in shards:
        client.xgroup_create(shard, GROUP, id="0", mkstream=True)
    names = [f"strict-{k + 1}" for k in range(replicas)]
    started: dict[str, subprocess.Popen[bytes]] = {}
    for name in names:
        log = ctx["log_dir"] / f"{run}-{name}.log"
        started[name] = procs.spawn(
            [ctx["python"], "-m", "bridge", "run"],
            log,
            _env(args, ctx["redis_url"], ctx["sink"], shards, name),
        )
    result: dict[str, Any] = {"replicas": replicas, "shards": args.shards, "signals": args.signals}
    try:
        low = args.shards // replicas

        def spread() -> bool:
            for name, proc in started.items():
                if proc.poll() is not None:
                    log = (ctx["log_dir"] / f"{run}-{name}.log").read_text(errors="replace")
                    raise BenchError(f"{name} exited with {proc.returncode}: {log[-2000:]}")
            owners = Counter(_holders(client, shards).values())
            counts = [owners[n] for n in names]
            return None not in owners and min(counts) >= low and max(counts) - min(counts) <= 1

        # From spawning the processes (interpreter start-up included) to a balanced assignment.
        result["balance_s"] = round(_until(spread, "leases spread over the replicas"), 3)
        result["leases"] = dict(Counter(_holders(client, shards).values()))
        t0 = time.perf_counter()
        _publish(client, shards, args.signals, run)
        _until(lambda: _drained(client, shards), "backlog drained")
        seconds = time.perf_counter() - t0
        result["drain_s"] = round(seconds, 3)
        result["signals_per_s"] = round(args.signals / seconds)
        if replicas >= 2:
            result["sigkill"] = _takeover(
                client, shards, started, victim=names[0], how=signal.SIGKILL, run=run
            )
            if replicas >= 3:
                result["sigterm"] = _takeover(
                    client, shards, started, victim=names[1], how=signal.SIGTERM, run=run
                )
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in started.values():
            procs.stop(proc)
    return result


def _takeover(
    client: redis.Redis,
    shards: list[str],
    started: dict[str, subprocess.Popen[bytes]],
    *,
    victim: str,
    how: signal.Signals,
    run: str,
) -> dict[str, float]:
    """Signal ``victim``; time until its shards are leased elsewhere and their probes acked."""
    lost = {s for s, owner in _holders(client, shards).items() if owner == victim}
    started[victim].send_signal(how)
    t0 = time.perf_counter()
    _probe(client, shards, lost, f"{run}-probe-{how.name}")
    others = {n for n in started if n != victim}
    leased = _until(
        lambda: all(_holders(client, sorted(lost))[s] in others for s in lost),
        f"{victim}'s shards taken over",
    )
    acked = _until(lambda: _drained(client, sorted(lost)), "probes acked")
    return {
        "shards": len(lost),
        "leased_s": round(leased, 3),
        "probe_acked_s": round(time.perf_counter() - t0, 3),
        "probe_wait_after_lease_s": round(acked, 3),
    }


def _report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    print(
        f"\nStrict ordering, {args.shards} shards, {args.signals} signals over 64 instruments, "
        f"lease TTL {args.lease_ttl_ms} ms, renew {args.lease_renew_ms} ms\n"
    )
    print(
        "| replicas | leases | drain s | signals/s | SIGKILL: shards, leased after s, probe "
        "acked after s | SIGTERM: shards, leased after s, probe acked after s |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for row in results:
        kill = row.get("sigkill")
        term = row.get("sigterm")
        kill_cell = (
            f"{kill['shards']}, {kill['leased_s']}, {kill['probe_acked_s']}" if kill else "-"
        )
        term_cell = (
            f"{term['shards']}, {term['leased_s']}, {term['probe_acked_s']}" if term else "-"
        )
        leases = ", ".join(f"{v}" for _, v in sorted(row["leases"].items()))
        cells = [
            row["replicas"],
            leases,
            row["drain_s"],
            row["signals_per_s"],
            kill_cell,
            term_cell,
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def main(argv: list[str] | None = None) -> int:
    """Run the strict-mode measurements; 0 when every run succeeded."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--signals", type=int, default=20_000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--replicas", default="1,2,3", help="comma-separated replica counts")
    parser.add_argument("--lease-ttl-ms", type=int, default=10_000)
    parser.add_argument("--lease-renew-ms", type=int, default=2_000)
    parser.add_argument("--log-level", default="WARNING")
    parser.add_argument("--telemetry-off", action="store_true", help="OTEL_SDK_DISABLED=true")
    parser.add_argument("--install-nginx", action="store_true")
    parser.add_argument("--uvicorn-sink", action="store_true", help="never nginx")
    args = parser.parse_args(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    log_dir = RESULTS / "logs" / f"strict-{stamp}"
    log_dir.mkdir(parents=True, exist_ok=True)
    procs = Processes()
    server: RedisServer | None = None
    results: list[dict[str, Any]] = []
    try:
        server = RedisServer(procs, log_dir)
        sink = start_fast_sink(
            log_dir, allow_install=args.install_nginx, force_uvicorn=args.uvicorn_sink
        )
        procs.sinks.append(sink)
        from bench.run import PYTHON  # noqa: PLC0415 - the venv's interpreter

        ctx = {
            "procs": procs,
            "client": server.client,
            "redis_url": server.url,
            "sink": sink,
            "log_dir": log_dir,
            "python": PYTHON,
        }
        print(f"redis {server.version}; sink {sink.kind}; logs in {log_dir}")
        for count in (int(c) for c in args.replicas.split(",")):
            row = _one_count(args, ctx, count)
            print(json.dumps(row))
            results.append(row)
        _report(results, args)
        out = RESULTS / "strict-latest.json"
        out.write_text(json.dumps({"args": vars(args), "results": results}, indent=2))
    except BenchError as exc:
        print(f"FAILED: {exc}")
        return 1
    else:
        return 0
    finally:
        if server is not None:
            server.close(procs)
        procs.stop_all()


if __name__ == "__main__":
    raise SystemExit(main())
