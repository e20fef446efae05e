"""``signal-bridge top``: a live terminal view of the streams, shard owners and replicas.

Each second it reads what ``status`` reads from Redis (each stream's lag, pending, oldest pending
age, dead letters and, in strict ordering, the shard's lease holder and fencing token) plus the
group's read counter for a rate, and, for each ``--metrics URL``, the replica's ``/metrics``
(POST, failure and retry rates, shards held, breaker state). The screen fits 80 columns; colour
only on a terminal (and never with ``NO_COLOR``); ``q`` or Ctrl-C quits; ``--once`` prints one
view (two readings a second apart, for the rates) and exits, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO

import httpx

from bridge.config.loader import BridgeConfig
from bridge.core.secrets import redact_url
from bridge.errors import BridgeError
from bridge.ownership.leases import LeaseHolder, LeaseStore, members_key
from bridge.streams.connection import connect, guard
from bridge.streams.entries import GroupStatus, as_text
from bridge.streams.group import SignalStream, signal_streams

__all__ = ["Reading", "ReplicaReading", "render", "run_top"]

WIDTH: Final = 80
REFRESH_S: Final = 1.0
_METRICS_TIMEOUT_S: Final = 0.8
# Thresholds of config/alerts.yml: past them a value is shown red (on a terminal).
_OLDEST_RED_S: Final = 60.0
_LAG_RED: Final = 1000
_RED: Final = "\x1b[31;1m"
_YELLOW: Final = "\x1b[33m"
_BOLD: Final = "\x1b[1m"
_RESET: Final = "\x1b[0m"


@dataclass(frozen=True)
class ReplicaReading:
    """What one replica's ``/metrics`` said, or why it could not be read."""

    address: str
    error: str | None = None
    posted: float = 0.0
    failed: float = 0.0
    retries: float = 0.0
    dead_lettered: float = 0.0
    owned_shards: int | None = None
    open_circuits: tuple[str, ...] = ()
    blocked_lanes: int = 0


@dataclass(frozen=True)
class Reading:
    """One look at Redis and the replicas, at ``at`` (monotonic seconds)."""

    at: float
    statuses: list[GroupStatus] = field(default_factory=list)
    settled: dict[str, int] = field(default_factory=dict)  # stream -> entries read - pending
    leases: dict[str, LeaseHolder | None] = field(default_factory=dict)
    replicas: list[ReplicaReading] = field(default_factory=list)
    strict: bool = False
    group: str = ""
    error: str | None = None


async def _settled(stream: SignalStream) -> int:
    """Entries the group has read and settled (acked or dead-lettered): read minus pending."""
    for group in await guard(stream.redis.xinfo_groups(stream.stream), "XINFO GROUPS"):
        if as_text(group["name"]) == stream.group:
            read = group.get("entries-read")
            return int(read or 0) - int(group["pending"])
    return 0


async def _read_redis(config: BridgeConfig, redis: Any, at: float) -> Reading:  # noqa: ANN401 - a redis-py client
    """Read every stream's status, settled count and (strict) lease holder."""
    cfg = config.stream
    strict = cfg.ordering == "strict"
    streams = signal_streams(cfg, redis)
    statuses = [await stream.status() for stream in streams]
    settled = {stream.stream: await _settled(stream) for stream in streams}
    leases: dict[str, LeaseHolder | None] = {}
    if strict:
        store = LeaseStore(
            redis, group=cfg.group, members_key=members_key(cfg.stream_names(), cfg.group)
        )
        leases = {stream.stream: await store.describe(stream.stream) for stream in streams}
    return Reading(
        at=at, statuses=statuses, settled=settled, leases=leases, strict=strict, group=cfg.group
    )


def _replica(address: str, text: str) -> ReplicaReading:
    """Sum one replica's exposition into the numbers ``top`` shows."""
    from prometheus_client.parser import text_string_to_metric_families  # noqa: PLC0415 - only here

    posted = failed = retries = dead = 0.0
    owned: int | None = None
    circuits: list[str] = []
    blocked = 0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, sample.value
            if name == "signals_posted_total":
                posted += value
                if labels.get("result") in ("failure", "timeout"):
                    failed += value
            elif name == "signals_retries_total":
                retries += value
            elif name == "signals_dead_lettered_total":
                dead += value
            elif name == "signals_owned_shards":
                owned = (owned or 0) + int(value)
            elif name == "signals_circuit_open" and value:
                circuits.append(labels.get("stream", "?"))
            elif name == "signals_lane_blocked_seconds":
                blocked += 1
    return ReplicaReading(
        address,
        posted=posted,
        failed=failed,
        retries=retries,
        dead_lettered=dead,
        owned_shards=owned,
        open_circuits=tuple(circuits),
        blocked_lanes=blocked,
    )


async def _read_replica(http: httpx.AsyncClient, url: str) -> ReplicaReading:
    """GET one replica's /metrics; an unreachable replica is a reading with its error."""
    address = httpx.URL(url).netloc.decode() or redact_url(url)
    try:
        response = await http.get(url)
    except httpx.HTTPError as exc:
        return ReplicaReading(address, error=f"unreachable ({type(exc).__name__})")
    if response.status_code != 200:
        return ReplicaReading(address, error=f"HTTP {response.status_code}")
    try:
        return _replica(address, response.text)
    except (ValueError, IndexError, TypeError):  # the parser's ways of refusing a text
        return ReplicaReading(address, error="not Prometheus text")


async def _read(
    config: BridgeConfig,
    redis: Any,  # noqa: ANN401 - a redis-py client
    http: httpx.AsyncClient,
    urls: Sequence[str],
) -> Reading:
    """One reading of Redis and every replica; Redis trouble becomes the reading's error."""
    at = time.monotonic()
    try:
        reading = await _read_redis(config, redis, at)
    except BridgeError as exc:
        reading = Reading(at=at, group=config.stream.group, error=str(exc))
    replicas = await asyncio.gather(*(_read_replica(http, url) for url in urls))
    return Reading(
        at=reading.at,
        statuses=reading.statuses,
        settled=reading.settled,
        leases=reading.leases,
        replicas=list(replicas),
        strict=reading.strict,
        group=reading.group,
        error=reading.error,
    )


# --- the screen ----------------------------------------------------------------------------


def _cut(text: str, width: int) -> str:
    """Fit ``text`` in ``width`` columns, marking a cut with ``~``."""
    return text if len(text) <= width else text[: width - 1] + "~"


def _rate(now: float | None, before: float | None, seconds: float) -> str:
    """Return the per-second rate between two counter readings, or ``-`` without two."""
    if now is None or before is None or seconds <= 0:
        return "-"
    return f"{max(now - before, 0.0) / seconds:.1f}"


class _Paint:
    """Wraps text in ANSI colours, or leaves it as it is when colour is off."""

    def __init__(self, colour: bool) -> None:
        self.colour = colour

    def __call__(self, text: str, code: str | None) -> str:
        return f"{code}{text}{_RESET}" if self.colour and code else text


def _stream_lines(reading: Reading, before: Reading | None, paint: _Paint) -> list[str]:
    """One line per stream: rate, lag, pending, oldest age, dead letters, owner and token."""
    seconds = reading.at - before.at if before else 0.0
    head = f"{'STREAM':<20} {'RATE/s':>6} {'LAG':>6} {'PEND':>6} {'OLDEST':>7} {'DLQ':>5} "
    head += f"{'TOKEN':>6} OWNER"
    lines = [paint(_cut(head, WIDTH), _BOLD)]
    for status in reading.statuses:
        settled = reading.settled.get(status.stream)
        prior = before.settled.get(status.stream) if before else None
        rate = _rate(settled, prior, seconds)
        lag = "?" if status.lag is None else str(status.lag)
        age_ms = status.oldest_pending_age_ms
        oldest = "-" if age_ms is None else f"{age_ms / 1000:.1f}s"
        if reading.strict:
            lease = reading.leases.get(status.stream)
            token, owner = (
                ("-", "FREE")
                if lease is None
                else (
                    str(lease.fencing_token),
                    lease.consumer,
                )
            )
        else:
            token, owner = "-", "(parallel)"
        cells = [
            (f"{_cut(status.stream, 20):<20}", None),
            (f"{rate:>6}", None),
            (f"{_cut(lag, 6):>6}", _RED if (status.lag or 0) > _LAG_RED else None),
            (f"{_cut(str(status.pending), 6):>6}", None),
            (
                f"{_cut(oldest, 7):>7}",
                _RED if age_ms is not None and age_ms / 1000 > _OLDEST_RED_S else None,
            ),
            (f"{_cut(str(status.dead_letters), 5):>5}", _YELLOW if status.dead_letters else None),
            (f"{_cut(token, 6):>6}", None),
            (_cut(owner, WIDTH - 63), _RED if owner == "FREE" else None),
        ]
        lines.append(" ".join(paint(text, code) for text, code in cells))
        if status.dead_letter_error:
            lines.append(paint(_cut(f"  PROBLEM {status.dead_letter_error}", WIDTH), _RED))
    return lines


def _replica_lines(reading: Reading, before: Reading | None, paint: _Paint) -> list[str]:
    """One line per replica: POST, failure, retry and dead-letter rates, shards, breaker."""
    seconds = reading.at - before.at if before else 0.0
    earlier = {r.address: r for r in before.replicas} if before else {}
    head = f"{'REPLICA':<22} {'POST/s':>7} {'FAIL/s':>7} {'RETRY/s':>7} {'DEAD/s':>6} "
    head += f"{'SHARDS':>6} {'BLOCKED':>7} BREAKER"
    lines = [paint(_cut(head, WIDTH), _BOLD)]
    for replica in reading.replicas:
        name = f"{_cut(replica.address, 22):<22}"
        if replica.error is not None:
            lines.append(f"{name} {paint(_cut(replica.error, WIDTH - 23), _RED)}")
            continue
        prior = earlier.get(replica.address)
        usable = prior if prior is not None and prior.error is None else None

        rates = [
            _rate(
                getattr(replica, name),
                None if usable is None else getattr(usable, name),
                seconds,
            )
            for name in ("posted", "failed", "retries", "dead_lettered")
        ]
        shards = "-" if replica.owned_shards is None else str(replica.owned_shards)
        breaker = f"OPEN on {len(replica.open_circuits)}" if replica.open_circuits else "closed"
        cells = [
            (name, None),
            (f"{rates[0]:>7}", None),
            (f"{rates[1]:>7}", None),
            (f"{rates[2]:>7}", None),
            (f"{rates[3]:>6}", None),
            (f"{shards:>6}", None),
            (f"{replica.blocked_lanes:>7}", _RED if replica.blocked_lanes else None),
            (breaker, _RED if replica.open_circuits else None),
        ]
        lines.append(" ".join(paint(text, code) for text, code in cells))
    return lines


def render(
    reading: Reading,
    before: Reading | None,
    *,
    colour: bool,
    live: bool,
    now: datetime | None = None,
) -> list[str]:
    """Return the screen for ``reading`` (rates against ``before``), lines within 80 columns."""
    paint = _Paint(colour)
    clock = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"signal-bridge top   group {reading.group}   {clock}"
    if live:
        title += "   q quits"
    lines = [paint(_cut(title, WIDTH), _BOLD), ""]
    if reading.error is not None:
        lines += [paint(part, _RED) for part in textwrap.wrap(f"Redis: {reading.error}", WIDTH)]
    else:
        lines += _stream_lines(reading, before, paint)
    if reading.replicas:
        lines.append("")
        lines += _replica_lines(reading, before, paint)
    return lines


# --- the command ---------------------------------------------------------------------------


def _colour(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (no-color.org)."""
    return stream.isatty() and not os.environ.get("NO_COLOR")


@contextlib.asynccontextmanager
async def _keys(stream: TextIO) -> AsyncIterator[asyncio.Queue[str]]:
    """Key presses from a terminal ``stream`` (cbreak mode, restored on exit); none otherwise."""
    pressed: asyncio.Queue[str] = asyncio.Queue()
    if not stream.isatty():
        yield pressed
        return
    import termios  # noqa: PLC0415 - POSIX terminals only
    import tty  # noqa: PLC0415

    fd = stream.fileno()
    saved = termios.tcgetattr(fd)
    loop = asyncio.get_running_loop()
    tty.setcbreak(fd)  # keys arrive one by one; Ctrl-C still interrupts
    loop.add_reader(fd, lambda: pressed.put_nowait(os.read(fd, 32).decode(errors="replace")))
    try:
        yield pressed
    finally:
        loop.remove_reader(fd)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _wait_for_q(pressed: asyncio.Queue[str], seconds: float) -> bool:
    """Wait up to ``seconds`` for a key press; True when ``q`` was pressed."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            keys = await asyncio.wait_for(pressed.get(), left)
        except TimeoutError:
            return False
        if "q" in keys.lower():
            return True
    return False


async def run_top(config: BridgeConfig, args: argparse.Namespace) -> int:
    """Show the live view until ``q`` or Ctrl-C, or print one view with ``--once``."""
    out = sys.stdout
    urls: list[str] = list(args.metrics or [])
    cfg = config.stream
    async with (
        connect(cfg.redis_url, cluster=cfg.cluster, password=cfg.redis_password) as redis,
        httpx.AsyncClient(timeout=_METRICS_TIMEOUT_S, trust_env=False) as http,
    ):
        if args.once:
            first = await _read(config, redis, http, urls)
            await asyncio.sleep(REFRESH_S)
            reading = await _read(config, redis, http, urls)
            out.write("\n".join(render(reading, first, colour=_colour(out), live=False)) + "\n")
            return 1 if reading.error is not None else 0
        before: Reading | None = None
        async with _keys(sys.stdin) as pressed:
            while True:
                reading = await _read(config, redis, http, urls)
                screen = render(reading, before, colour=_colour(out), live=True)
                clear = "\x1b[H\x1b[2J" if out.isatty() else ""
                out.write(clear + "\n".join(screen) + "\n")
                out.flush()
                before = reading
                if await _wait_for_q(pressed, REFRESH_S):
                    return 0
