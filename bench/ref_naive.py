"""Naive reference bridge: sync redis-py + ``httpx.Client``, one entry at a time, XACK each.

Run: ``.venv/bin/python -m bench.ref_naive --help`` (flags default to signal-bridge's env vars).
Prints one JSON line of stats on exit (count, seconds, cpu_seconds, peak_rss_mb).
"""

from __future__ import annotations

import json
import signal
import sys
import time
from types import FrameType
from typing import Any

import httpx
import redis

from bench.common import (
    INGEST_PATH,
    SIGNAL_FIELD,
    BridgeConfig,
    BridgeStats,
    canonical_json,
    parse_bridge_args,
    signed_headers,
)

USER_AGENT = "bench-ref-naive/1.0"
MAX_ATTEMPTS = 3


class _Stop:
    """A flag the SIGTERM/SIGINT handler sets."""

    requested = False

    @classmethod
    def handler(cls, signum: int, frame: FrameType | None) -> None:
        """Ask the main loop to stop after the current entry."""
        del signum, frame
        cls.requested = True


def ensure_group(client: redis.Redis, cfg: BridgeConfig) -> None:
    """Create the consumer group (and stream) unless it already exists."""
    try:
        client.xgroup_create(cfg.stream, cfg.group, id=cfg.start_id, mkstream=True)
    except redis.ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise


def deliver(
    http: httpx.Client, cfg: BridgeConfig, entry_id: str, body: bytes, signal_id: str | None
) -> bool:
    """POST one signed signal, retrying transient failures; True when the server took it."""
    for attempt in range(MAX_ATTEMPTS):
        headers = signed_headers(cfg, USER_AGENT, entry_id, body, signal_id)
        try:
            response = http.post(INGEST_PATH, content=body, headers=headers)
        except httpx.HTTPError as exc:
            print(f"ref_naive: POST {entry_id} failed: {exc!r}", file=sys.stderr)
        else:
            if response.status_code in (200, 201):
                return True
            print(f"ref_naive: POST {entry_id} -> {response.status_code}", file=sys.stderr)
            if response.status_code < 500 and response.status_code not in (408, 429):
                return False
        time.sleep(0.05 * (attempt + 1))
    return False


def run(cfg: BridgeConfig) -> BridgeStats:
    """Consume, sign, post and ack until stopped, the count is reached or the stream idles."""
    stats = BridgeStats(bridge="naive")
    client = redis.Redis.from_url(cfg.redis_url)
    ensure_group(client, cfg)
    last_seen = time.monotonic()
    with httpx.Client(base_url=cfg.server_url, timeout=10.0) as http:
        while not _Stop.requested:
            if cfg.count and stats.count >= cfg.count:
                break
            reply: Any = client.xreadgroup(
                cfg.group, cfg.consumer, {cfg.stream: ">"}, count=1, block=100
            )
            if not reply:
                idle = time.monotonic() - last_seen
                if cfg.idle_exit and stats.count and idle >= cfg.idle_exit:
                    break
                continue
            last_seen = time.monotonic()
            for raw_id, fields in reply[0][1]:
                entry_id = raw_id.decode()
                try:
                    data = json.loads(fields[SIGNAL_FIELD])
                    body = canonical_json(data)
                except (KeyError, ValueError) as exc:
                    print(f"ref_naive: dropping invalid entry {entry_id}: {exc!r}", file=sys.stderr)
                    stats.invalid += 1
                    client.xack(cfg.stream, cfg.group, raw_id)
                    continue
                if deliver(http, cfg, entry_id, body, data.get("signal_id")):
                    client.xack(cfg.stream, cfg.group, raw_id)
                    stats.count += 1
                    stats.mark()
                else:
                    stats.failed += 1
    client.close()
    return stats


def main(argv: list[str] | None = None) -> None:
    """Run the naive bridge and print its stats as JSON."""
    cfg = parse_bridge_args("Naive reference bridge (sync redis-py + httpx.Client).", argv)
    signal.signal(signal.SIGTERM, _Stop.handler)
    signal.signal(signal.SIGINT, _Stop.handler)
    stats = run(cfg)
    print(stats.report(), flush=True)


if __name__ == "__main__":
    main()
