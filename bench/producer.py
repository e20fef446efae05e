"""Paced producer for the latency runs: XADDs signals at a fixed rate for a fixed time.

Each signal's ``comment`` is ``sent_ns=<time.time_ns() at XADD>`` (also stored in the entry's
``bench_sent_ns`` field), so a recording sink can compute XADD -> server latency from the body
alone, whatever bridge delivered it. The schedule is absolute (entry i is due at start + i/rate),
so a late XADD does not slow down the ones after it.

Run: ``.venv/bin/python -m bench.producer --redis-url redis://127.0.0.1:PORT/0 --stream S
--rate 1000 --seconds 5``; prints one JSON line (sent, seconds, achieved rate, max lateness).
"""

from __future__ import annotations

import argparse
import json
import time

import redis

from bench.common import make_signal, stream_fields


def produce(
    client: redis.Redis, stream: str, rate: float, seconds: float, prefix: str
) -> dict[str, float]:
    """XADD ``rate * seconds`` signals on an absolute schedule; return what was achieved."""
    total = max(1, round(rate * seconds))
    start = time.perf_counter()
    max_late = 0.0
    for index in range(total):
        due = start + index / rate
        delay = due - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            max_late = max(max_late, -delay)
        sent_ns = time.time_ns()
        signal = make_signal(index, prefix, comment=f"sent_ns={sent_ns}")
        client.xadd(stream, stream_fields(signal, index, sent_ns))
    elapsed = time.perf_counter() - start
    return {
        "sent": total,
        "seconds": round(elapsed, 4),
        "rate": round(total / elapsed, 1),
        "max_late_ms": round(max_late * 1000, 3),
    }


def main(argv: list[str] | None = None) -> None:
    """Parse the CLI, produce, print the JSON summary."""
    parser = argparse.ArgumentParser(description="Paced signal producer (latency runs).")
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--stream", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="signals per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long to produce")
    parser.add_argument("--prefix", default="lat", help="signal_id prefix")
    ns = parser.parse_args(argv)
    if not 0 < ns.rate <= 100_000 or not 0 < ns.seconds <= 600:
        parser.error("rate must be in (0, 100000] and seconds in (0, 600]")
    client = redis.Redis.from_url(ns.redis_url)
    try:
        summary = produce(client, ns.stream, ns.rate, ns.seconds, ns.prefix)
    finally:
        client.close()
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
