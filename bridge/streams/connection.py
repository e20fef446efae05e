"""The Redis connection, and the one place redis-py errors become :class:`StreamError`.

:func:`connect` opens a client (single node or cluster) with timeouts that notice a silent
Redis; :func:`guard` awaits any Redis call and translates its failure with :func:`translate`,
which names the error's prefix and what it means to an operator. The other ``streams`` modules
and the shard leases do their Redis I/O through these.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any, Final

import redis.asyncio as aioredis
import redis.exceptions

from bridge.core.secrets import Secret
from bridge.errors import ConfigError, StreamError

__all__ = [
    "PASSING_CODES",
    "READ_MARGIN_S",
    "REDIS_ERROR_MEANINGS",
    "connect",
    "error_code",
    "guard",
    "probe_database",
    "read_timeout_s",
    "translate",
]

# What Redis's error prefixes mean to an operator, and why retrying can pass. Every one of them
# refuses the whole command (nothing half-done), so retrying it never duplicates an entry.
REDIS_ERROR_MEANINGS: Final = {
    "OOM": "Redis is out of memory (maxmemory reached, policy noeviction): it refuses writes "
    "that need memory until memory is freed or maxmemory raised",
    "READONLY": "connected to a read-only replica (after a failover the old primary is a "
    "replica now): point BRIDGE_REDIS_URL at the primary",
    "LOADING": "Redis is loading its dataset into memory after a restart: it answers when done",
    "BUSY": "Redis is busy running a long Lua script or function and answers nothing else "
    "until it ends (SCRIPT KILL or FUNCTION KILL stops it)",
    "MASTERDOWN": "this replica lost its link to the primary and serves no stale data",
    "TRYAGAIN": "a cluster slot is migrating: the command can pass a moment later",
    "CLUSTERDOWN": "the Redis Cluster is down (slots not covered)",
    "NOGROUP": "the consumer group or the stream is missing (Redis restarted without data?)",
    "NOPERM": "the Redis ACL user lacks a permission the bridge needs",
}
# Refusals of a moment: the command was not run and will pass once Redis recovers.
PASSING_CODES: Final = frozenset({"OOM", "READONLY", "LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN"})
_CODES_BY_CLASS: Final = (
    (redis.exceptions.BusyLoadingError, "LOADING"),
    (redis.exceptions.ReadOnlyError, "READONLY"),
    (redis.exceptions.OutOfMemoryError, "OOM"),
)


def error_code(exc: redis.exceptions.RedisError) -> str | None:
    """Redis's error prefix of a reply error (``OOM``, ``BUSY`` ...), None for other failures."""
    status = getattr(exc, "status_code", None)
    if isinstance(status, str) and status:
        return status
    for cls, code in _CODES_BY_CLASS:
        if isinstance(exc, cls):
            return code
    if isinstance(exc, redis.exceptions.ResponseError):
        first = str(exc).split(" ", 1)[0]
        if first.isalpha() and first.isupper():
            return first
    return None


def translate(exc: BaseException, what: str) -> StreamError:
    """Turn a redis-py or socket error into a StreamError that names the error and its meaning."""
    code = error_code(exc) if isinstance(exc, redis.exceptions.RedisError) else None
    meaning = REDIS_ERROR_MEANINGS.get(code or "", "")
    text = str(exc)
    if code is not None and not text.startswith(code):
        text = f"{code} {text}"
    suffix = f" ({meaning})" if meaning else ""
    if code is not None and isinstance(exc, redis.exceptions.ResponseError):
        message = f"redis refused {what}: {text}{suffix}"
    else:
        message = f"redis unavailable during {what}: {type(exc).__name__}: {text}{suffix}"
    return StreamError(message, missing_group=code == "NOGROUP", code=code, meaning=meaning)


async def guard(awaitable: Awaitable[Any], what: str) -> Any:  # noqa: ANN401 - redis-py replies are loosely typed; callers convert
    """Await a Redis call, translating its errors into StreamError."""
    try:
        return await awaitable
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise translate(exc, what) from exc


async def probe_database(client: aioredis.Redis, db: int) -> None:
    """PING once at start; a database the server does not have is a ConfigError.

    redis-py SELECTs the URL's database on every new connection, so ``/99`` on a server with 16
    databases would otherwise fail every command, looking like "redis unavailable" forever.
    Any other failure is a StreamError (the caller decides whether to wait for Redis).
    """
    try:
        await client.ping()
    except redis.exceptions.ResponseError as exc:
        if "DB index is out of range" in str(exc):
            raise ConfigError(
                f"BRIDGE_REDIS_URL selects database {db}, which this Redis server does not have "
                "(it has 16, 0-15, unless redis.conf raises `databases`)",
                variable="BRIDGE_REDIS_URL",
            ) from None
        raise StreamError(f"redis refused PING: {exc}") from exc
    except (redis.exceptions.RedisError, redis.exceptions.RedisClusterException, OSError) as exc:
        raise StreamError(f"redis unavailable during PING: {type(exc).__name__}: {exc}") from exc


# A half-open connection (a partition) must fail a command, not hang it for hours. Without a
# BLOCK time the read timeout stays above the longest XREADGROUP BLOCK the config allows (20 s).
_SOCKET_TIMEOUTS: Final = {"socket_connect_timeout": 5.0, "socket_timeout": 30.0}
# With the worker's BLOCK time known, a read may take BLOCK plus this much before Redis counts as
# gone: a silent Redis is noticed within about BLOCK + 4 s (5 s with the default 1 s BLOCK).
READ_MARGIN_S: Final = 4.0
# A peer that vanished (host down, cable out) is found by TCP keepalive within ~5 s of silence.
_KEEPALIVE_OPTIONS: Final = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 2), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}


def read_timeout_s(block_ms: int) -> float:
    """Return the socket read timeout for a worker that BLOCKs ``block_ms`` per read."""
    return block_ms / 1000 + READ_MARGIN_S


@asynccontextmanager
async def connect(
    url: str,
    *,
    cluster: bool = False,
    block_ms: int | None = None,
    password: Secret | None = None,
    **options: Any,  # noqa: ANN401 - redis-py's connection options
) -> AsyncIterator[aioredis.Redis]:
    """Open a redis-py asyncio client from a URL (redis://, rediss://, unix://); close on exit.

    ``cluster=True`` opens a Redis Cluster client from any node's URL; the commands used here
    are the same, each addressed to the node owning its stream's slot. ``block_ms`` (the
    workers' XREADGROUP BLOCK) sizes the read timeout: BLOCK + ``READ_MARGIN_S``.
    ``password`` (from ``BRIDGE_REDIS_PASSWORD_FILE``) authenticates without being in the URL.
    """
    timeouts: dict[str, Any] = dict(_SOCKET_TIMEOUTS)
    if block_ms is not None:
        timeouts["socket_timeout"] = read_timeout_s(block_ms)
    options = {**timeouts, **options}
    if password is not None:
        options["password"] = password.get()
    if cluster:
        from redis.asyncio.cluster import RedisCluster  # noqa: PLC0415 - cluster users only

        cluster_client = RedisCluster.from_url(url, decode_responses=False, **options)
        try:
            # Initialise once, before several workers share the client: redis-py's lazy
            # initialisation races when many coroutines send their first command at once.
            # Unreachable at start: stay lazy, the workers retry with backoff.
            with contextlib.suppress(redis.exceptions.RedisError, OSError):
                await cluster_client.initialize()
            yield cluster_client  # type: ignore[misc]
        finally:
            await cluster_client.aclose()
        return
    client = aioredis.Redis.from_url(
        url,
        decode_responses=False,
        health_check_interval=5,
        socket_keepalive=True,
        socket_keepalive_options=_KEEPALIVE_OPTIONS,
        **options,
    )
    try:
        yield client
    finally:
        await client.aclose()
