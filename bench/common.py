"""Wire contract helpers shared by the reference bridges, the producer and the sinks.

Everything here follows the contract of the ingest server: the canonical JSON body, the
RFC 3339 timestamp, the HMAC-SHA256 signature and the idempotency key.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import resource
import socket
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import msgspec
from redis.typing import EncodableT, FieldT

INGEST_PATH = "/api/v1/signals/ingest"
"""Path of the ingest endpoint on the server."""

SINK_RESPONSE = (
    b'{"signal_id":"x","status":"received","server_timestamp":"2026-01-01T00:00:00Z",'
    b'"message":null,"errors":null}'
)
"""Body every bench sink answers with (status 201)."""

SIGNAL_FIELD = b"signal"
"""Stream field that holds the signal JSON."""

_CANONICAL = msgspec.json.Encoder(order="sorted")


def canonical_json(obj: Any) -> bytes:  # noqa: ANN401 - any JSON-shaped value
    """Encode ``obj`` as canonical JSON: sorted keys, compact separators, UTF-8."""
    return _CANONICAL.encode(obj)


def rfc3339_now() -> str:
    """Return the current UTC time as RFC 3339 with microseconds and a ``Z`` suffix."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def body_sha256_b64(body: bytes) -> str:
    """Return base64(sha256(body))."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def canonical_request(timestamp: str, producer_id: str, body: bytes) -> bytes:
    """Build the canonical request string that the signature covers."""
    return "\n".join(
        [
            "METHOD:POST",
            f"ENDPOINT:{INGEST_PATH}",
            f"TIMESTAMP:{timestamp}",
            f"PRODUCER_ID:{producer_id}",
            f"BODY_SHA256:{body_sha256_b64(body)}",
        ]
    ).encode("utf-8")


def sign(secret: bytes, timestamp: str, producer_id: str, body: bytes) -> str:
    """Return base64(HMAC-SHA256(secret, canonical_request))."""
    mac = hmac.new(secret, canonical_request(timestamp, producer_id, body), hashlib.sha256)
    return base64.b64encode(mac.digest()).decode("ascii")


def idempotency_key(stream: str, entry_id: str, signal_id: str | None = None) -> str:
    """Return uuid5(NAMESPACE_URL, signal_id or "<stream>/<entry id>"), as signal-bridge does."""
    return str(
        uuid.uuid5(
            uuid.NAMESPACE_URL, signal_id if signal_id is not None else f"{stream}/{entry_id}"
        )
    )


def signed_headers(
    cfg: BridgeConfig, user_agent: str, entry_id: str, body: bytes, signal_id: str | None = None
) -> dict[str, str]:
    """Return the full header set of one ingest POST, signed at the time of the call."""
    timestamp = rfc3339_now()
    return {
        "Content-Type": "application/json",
        "X-Producer-Id": cfg.producer_id,
        "X-Timestamp": timestamp,
        "X-Signature": sign(cfg.secret, timestamp, cfg.producer_id, body),
        "X-Idempotency-Key": idempotency_key(cfg.stream, entry_id, signal_id),
        "User-Agent": user_agent,
    }


class Signal(msgspec.Struct, forbid_unknown_fields=True):
    """A trade signal as stored in the stream's ``signal`` field (validated on decode)."""

    instrument: str
    side: Literal["buy", "sell"]
    entry_price: float
    risk_percent: float
    strategy_name: str
    timestamp: str
    take_profit: float | None = None
    stop_loss: float | None = None
    comment: str | None = None
    signal_id: str | None = None


_INSTRUMENTS = ("EURUSD", "GBPUSD", "USDJPY", "XAUUSD", "BTCUSD", "US500")
_BASE_PRICE = (1.08345, 1.26712, 149.215, 2034.55, 43120.5, 4780.25)


def make_signal(
    index: int, prefix: str, comment: str | None = None, instruments: int = 0
) -> dict[str, Any]:
    """Build a realistic, deterministic signal dict (a few optional fields left null).

    ``instruments`` spreads the signals over that many instruments (0: the six real ones);
    signal-bridge delivers each instrument in order, so this bounds its parallelism.
    """
    count = instruments or len(_INSTRUMENTS)
    slot = index % count
    name = _INSTRUMENTS[slot] if slot < len(_INSTRUMENTS) else f"SYN{slot:04d}"
    base = _BASE_PRICE[slot] if slot < len(_BASE_PRICE) else 100.0 + slot
    price = round(base * (1 + (index % 97) * 0.0001), 5)
    side = "buy" if index % 2 == 0 else "sell"
    step = round(price * 0.004, 5)
    take_profit = (
        None if index % 7 == 3 else round(price + step if side == "buy" else price - step, 5)
    )
    stop_loss = (
        None if index % 9 == 4 else round(price - step if side == "buy" else price + step, 5)
    )
    if comment is None and index % 5 != 0:
        comment = f"bench signal #{index} café ✓" if index % 13 == 0 else f"bench signal #{index}"
    return {
        "instrument": name,
        "side": side,
        "entry_price": price,
        "take_profit": take_profit,
        "stop_loss": stop_loss,
        "risk_percent": (0.5, 1.0, 1.5)[index % 3],
        "comment": comment,
        "strategy_name": "bench-mean-reversion-v2",
        "timestamp": rfc3339_now(),
        "signal_id": None if index % 11 == 10 else f"{prefix}-{index}",
    }


def stream_fields(
    signal: dict[str, Any], index: int, sent_ns: int | None = None
) -> dict[FieldT, EncodableT]:
    """Return the stream entry fields a producer stores (non-canonical JSON, like a real one)."""
    fields: dict[FieldT, EncodableT] = {"signal": json.dumps(signal, ensure_ascii=False)}
    if index % 2 == 0:
        # Spread trace ids over the whole range, as a producer's random ids are: ratio samplers
        # look at the low 64 bits, and small ids would all fall under any ratio.
        trace_id = ((index + 1) * 0x9E3779B97F4A7C15F39CC0605CEDC835) % (1 << 128) or 1
        fields["traceparent"] = f"00-{trace_id:032x}-{index + 1:016x}-01"
    if sent_ns is not None:
        fields["bench_sent_ns"] = str(sent_ns)
    return fields


def free_port() -> int:
    """Return a currently free TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class BridgeConfig:
    """Configuration of a reference bridge (CLI flags default to signal-bridge's env vars)."""

    redis_url: str
    stream: str
    group: str
    consumer: str
    start_id: str
    server_url: str
    secret: bytes
    producer_id: str
    count: int
    idle_exit: float
    concurrency: int
    batch: int
    loop: str


def parse_bridge_args(description: str, argv: list[str] | None = None) -> BridgeConfig:
    """Parse the reference bridges' CLI; every flag defaults to the matching env var."""
    env = os.environ
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--redis-url", default=env.get("BRIDGE_REDIS_URL", "redis://127.0.0.1:6379/0")
    )
    parser.add_argument("--stream", default=env.get("BRIDGE_STREAM", "signals"))
    parser.add_argument("--group", default=env.get("BRIDGE_GROUP", "signal-bridge"))
    parser.add_argument(
        "--consumer", default=env.get("BRIDGE_CONSUMER", f"{socket.gethostname()}-{os.getpid()}")
    )
    parser.add_argument("--start-id", default=env.get("BRIDGE_START_ID", "0"))
    parser.add_argument("--url", default=env.get("OUTBOUND_SERVER_URL", "http://127.0.0.1:8000"))
    parser.add_argument("--secret", default=env.get("HMAC_PRODUCER_SECRET", ""))
    parser.add_argument("--producer-id", default=env.get("PRODUCER_ID", "bench-producer"))
    parser.add_argument("--count", type=int, default=0, help="exit after N acks (0: no target)")
    parser.add_argument(
        "--idle-exit",
        type=float,
        default=0.5,
        help="exit after this many seconds without entries, once one was seen (0: never)",
    )
    parser.add_argument("--concurrency", type=int, default=32, help="requests in flight")
    parser.add_argument("--batch", type=int, default=100, help="XREADGROUP COUNT")
    parser.add_argument(
        "--loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="event loop of the asyncio bridge (auto: uvloop when installed)",
    )
    ns = parser.parse_args(argv)
    if not ns.secret:
        parser.error("--secret or HMAC_PRODUCER_SECRET is required")
    return BridgeConfig(
        redis_url=ns.redis_url,
        stream=ns.stream,
        group=ns.group,
        consumer=ns.consumer,
        start_id=ns.start_id,
        server_url=ns.url.rstrip("/"),
        secret=ns.secret.encode("utf-8"),
        producer_id=ns.producer_id,
        count=ns.count,
        idle_exit=ns.idle_exit,
        concurrency=ns.concurrency,
        batch=ns.batch,
        loop=ns.loop,
    )


@dataclass
class BridgeStats:
    """Self-reported counters of a reference bridge, printed as JSON on exit."""

    bridge: str
    count: int = 0
    failed: int = 0
    invalid: int = 0
    first_ns: int = 0
    last_ns: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def mark(self) -> None:
        """Record one acknowledged entry at the current time."""
        now = time.perf_counter_ns()
        if not self.first_ns:
            self.first_ns = now
        self.last_ns = now

    def report(self) -> str:
        """Return the stats as one JSON line, with CPU time and peak RSS of this process."""
        usage = resource.getrusage(resource.RUSAGE_SELF)
        data = asdict(self)
        data["seconds"] = round((self.last_ns - self.first_ns) / 1e9, 6)
        data["cpu_seconds"] = round(time.process_time(), 6)
        data["peak_rss_mb"] = round(usage.ru_maxrss / 1024, 2)
        return json.dumps(data)
