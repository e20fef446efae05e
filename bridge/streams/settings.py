"""Where signals come from and how the consumer group treats them: the stream settings.

Each field declares its environment name and bounds once (see :mod:`bridge.core.settings`).
:meth:`StreamConfig.check` applies them at start, with the Redis URL, the names and the rules
between fields (backoff, cluster slots, lease timings).
"""

from __future__ import annotations

import re
from typing import Annotated, Final, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

import msgspec
from redis.crc import key_slot

from bridge.core.secrets import Secret, redact_url
from bridge.core.settings import Setting, check_bounds, parse_name, parse_names
from bridge.core.signal import SignalRules
from bridge.core.urls import split_url
from bridge.errors import ConfigError
from bridge.streams.entries import is_stream_id

__all__ = [
    "DEAD_LETTER_MAX_BYTES",
    "MAX_BLOCK_MS",
    "MIN_LEASE_TTL_MS",
    "StreamConfig",
    "redis_db",
]

MAX_BLOCK_MS: Final = 20_000
# Bytes of an entry's field names and values copied into its dead letter: twice the largest
# canonical body sent by default, so any signal that could be posted is kept whole.
DEAD_LETTER_MAX_BYTES: Final = 131_072
MIN_LEASE_TTL_MS: Final = 300


class StreamConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where signals come from and how the consumer group treats them."""

    redis_url: Annotated[str, Setting("BRIDGE_REDIS_URL", redact=True)] = "redis://localhost:6379/0"
    # From BRIDGE_REDIS_PASSWORD_FILE (read by the loader, never from the config file).
    redis_password: Secret | None = None
    stream: Annotated[str, Setting("BRIDGE_STREAM", parse=parse_name, sees_blank=True)] = "signals"
    group: Annotated[str, Setting("BRIDGE_GROUP", parse=parse_name, sees_blank=True)] = (
        "signal-bridge"
    )
    consumer: Annotated[
        str,
        Setting(
            "BRIDGE_CONSUMER", parse=parse_name, sees_blank=True, readme_default="host name + pid"
        ),
    ] = ""
    dlq_stream: Annotated[str, Setting("BRIDGE_DLQ_STREAM", parse=parse_name, sees_blank=True)] = (
        "signals:dlq"
    )
    start_id: Annotated[str, Setting("BRIDGE_START_ID")] = "$"
    max_in_flight: Annotated[int, Setting("BRIDGE_MAX_IN_FLIGHT", positive=True)] = 32
    claim_idle_ms: Annotated[int, Setting("BRIDGE_CLAIM_IDLE_MS", positive=True)] = 30000
    max_deliveries: Annotated[int, Setting("BRIDGE_MAX_DELIVERIES", positive=True)] = 10
    signal_max_age_s: Annotated[
        float, Setting("BRIDGE_SIGNAL_MAX_AGE_SECONDS", ge=0, note="0 disables")
    ] = 300.0
    max_clock_ahead_s: Annotated[float, Setting("BRIDGE_MAX_CLOCK_AHEAD_SECONDS", ge=0)] = 60.0
    instrument_pattern: Annotated[str, Setting("BRIDGE_INSTRUMENT_PATTERN")] = ""
    batch_size: Annotated[int, Setting("BRIDGE_BATCH_SIZE", positive=True)] = 100
    block_ms: Annotated[
        int,
        Setting(
            "BRIDGE_BLOCK_MS",
            positive=True,
            le=MAX_BLOCK_MS,
            note="below the Redis read timeout",
        ),
    ] = 1000
    shutdown_grace_s: Annotated[float, Setting("BRIDGE_SHUTDOWN_GRACE_SECONDS", ge=0)] = 10.0
    streams: Annotated[list[str], Setting("BRIDGE_STREAMS", parse=parse_names, sees_blank=True)] = (
        msgspec.field(default_factory=list)
    )
    cluster: Annotated[bool, Setting("BRIDGE_REDIS_CLUSTER")] = False
    lane_stall_warn_s: Annotated[
        float, Setting("BRIDGE_LANE_STALL_WARN_SECONDS", positive=True)
    ] = 10.0
    probe_interval_ms: Annotated[int, Setting("BRIDGE_PROBE_INTERVAL_MS", positive=True)] = 1000
    backoff_base_ms: Annotated[int, Setting("BRIDGE_BACKOFF_BASE_MS", positive=True)] = 500
    backoff_cap_ms: Annotated[int, Setting("BRIDGE_BACKOFF_CAP_MS")] = 30000
    breaker_threshold: Annotated[int, Setting("BRIDGE_BREAKER_THRESHOLD", positive=True)] = 5
    retry_after_cap_s: Annotated[
        float, Setting("BRIDGE_RETRY_AFTER_CAP_SECONDS", positive=True)
    ] = 60.0
    trim_acked: Annotated[bool, Setting("BRIDGE_TRIM_ACKED")] = False
    trim_interval_s: Annotated[float, Setting("BRIDGE_TRIM_INTERVAL_SECONDS", positive=True)] = 10.0
    consumer_expire_s: Annotated[
        float, Setting("BRIDGE_CONSUMER_EXPIRE_SECONDS", ge=0, note="0 disables")
    ] = 3600.0
    ordering: Annotated[Literal["strict", "parallel"], Setting("BRIDGE_ORDERING")] = "strict"
    lease_ttl_ms: Annotated[
        int, Setting("BRIDGE_LEASE_TTL_MS", positive=True, ge=MIN_LEASE_TTL_MS)
    ] = 10000
    lease_renew_ms: Annotated[int, Setting("BRIDGE_LEASE_RENEW_MS", positive=True)] = 2000
    heartbeat_ttl_ms: Annotated[int, Setting("BRIDGE_HEARTBEAT_TTL_MS", positive=True)] = 10000
    dead_letter_max_bytes: Annotated[int, Setting("BRIDGE_DEAD_LETTER_MAX_BYTES", ge=1024)] = (
        DEAD_LETTER_MAX_BYTES
    )
    receipts: Annotated[bool, Setting("BRIDGE_RECEIPTS")] = False
    receipts_maxlen: Annotated[int, Setting("BRIDGE_RECEIPTS_MAXLEN", positive=True)] = 100_000
    receipts_max_age_s: Annotated[
        float, Setting("BRIDGE_RECEIPTS_MAX_AGE_SECONDS", ge=0, note="0 disables")
    ] = 0.0

    def stream_names(self) -> list[str]:
        """Return the streams to consume: BRIDGE_STREAMS when set, else BRIDGE_STREAM."""
        return list(self.streams) or [self.stream]

    def dlq_for(self, stream: str) -> str:
        """Return the dead-letter stream of ``stream``.

        With several streams each gets ``<stream>:dlq``, which keeps a ``{hash tag}`` so the
        dead letter and the XACK share a Redis Cluster slot (one MULTI).
        """
        return self.dlq_stream if not self.streams else f"{stream}:dlq"

    def __repr__(self) -> str:
        fields = ", ".join(
            f"{name}={redact_url(v) if name == 'redis_url' else v!r}"
            for name in self.__struct_fields__
            for v in (getattr(self, name),)
        )
        return f"StreamConfig({fields})"

    def signal_rules(self) -> SignalRules:
        """Return the rules a worker checks each signal against when it reads it."""
        pattern = None
        if self.instrument_pattern:
            try:
                pattern = re.compile(self.instrument_pattern)
            except re.error as exc:
                raise ConfigError(
                    f"BRIDGE_INSTRUMENT_PATTERN is not a regular expression: {exc}",
                    variable="BRIDGE_INSTRUMENT_PATTERN",
                ) from None
        return SignalRules(max_clock_ahead_s=self.max_clock_ahead_s, instrument_pattern=pattern)

    def check(self) -> None:
        """Check the settings at start; the first broken rule is refused, naming its variable.

        The URL and the names first, then the declared bounds, then the rules between fields.
        A start-up check, not a construction rule: code builds partial StreamConfigs (no
        consumer name yet, short leases for coordinators that never read).
        """
        _check_redis_url(self.redis_url, cluster=self.cluster)
        if self.redis_password is not None and split_url("", self.redis_url).password:
            raise ConfigError(
                "BRIDGE_REDIS_URL carries a password and BRIDGE_REDIS_PASSWORD_FILE is set: give "
                "one (the file keeps it out of the URL)",
                variable="BRIDGE_REDIS_PASSWORD_FILE",
            )
        self.signal_rules()  # refuses a pattern that does not compile
        for variable, name in (
            ("BRIDGE_STREAM", self.stream),
            ("BRIDGE_GROUP", self.group),
            ("BRIDGE_CONSUMER", self.consumer),
            ("BRIDGE_DLQ_STREAM", self.dlq_stream),
        ):
            if not name:
                raise ConfigError(f"{variable} must not be empty", variable=variable)
        if self.dlq_stream == self.stream:
            raise ConfigError(
                "BRIDGE_DLQ_STREAM must differ from BRIDGE_STREAM", variable="BRIDGE_DLQ_STREAM"
            )
        names = self.stream_names()
        if len(set(names)) != len(names) or any(n.endswith(":dlq") for n in self.streams):
            raise ConfigError(
                "BRIDGE_STREAMS must list distinct streams that are not dead-letter streams",
                variable="BRIDGE_STREAMS",
            )
        if not (self.start_id in ("$", "0") or is_stream_id(self.start_id)):
            raise ConfigError(
                f"BRIDGE_START_ID must be '$', '0' or a stream id, got {self.start_id!r}",
                variable="BRIDGE_START_ID",
            )
        check_bounds(self)
        self._check_cluster_slots()
        if self.backoff_cap_ms < self.backoff_base_ms:
            raise ConfigError(
                "BRIDGE_BACKOFF_CAP_MS must be at least BRIDGE_BACKOFF_BASE_MS",
                variable="BRIDGE_BACKOFF_CAP_MS",
            )
        self._check_leases()

    def _check_cluster_slots(self) -> None:
        """With Redis Cluster, each stream and its dead letter share a slot (one MULTI)."""
        if not self.cluster:
            return
        for name in self.stream_names():
            if key_slot(name.encode()) != key_slot(self.dlq_for(name).encode()):
                raise ConfigError(
                    f"with BRIDGE_REDIS_CLUSTER, {name!r} and its dead-letter stream "
                    f"{self.dlq_for(name)!r} must share a {{hash tag}} (same slot), e.g. "
                    "BRIDGE_STREAMS=signals:{0},signals:{1}",
                    variable="BRIDGE_DLQ_STREAM",
                )

    def _check_leases(self) -> None:
        """Strict ordering's timings: renewals well inside the TTL, heartbeats outliving one."""
        if self.lease_renew_ms * 3 > self.lease_ttl_ms:
            raise ConfigError(
                "BRIDGE_LEASE_RENEW_MS must be at most a third of BRIDGE_LEASE_TTL_MS (a lease "
                "must survive two failed renewals), got "
                f"{self.lease_renew_ms} for {self.lease_ttl_ms}",
                variable="BRIDGE_LEASE_RENEW_MS",
            )
        if self.ordering == "strict" and self.block_ms * 4 > self.lease_ttl_ms:
            raise ConfigError(
                "with BRIDGE_ORDERING=strict, BRIDGE_BLOCK_MS must be at most a quarter of "
                "BRIDGE_LEASE_TTL_MS (a read started before the fence must end before the lease "
                f"can expire), got {self.block_ms} for {self.lease_ttl_ms}",
                variable="BRIDGE_BLOCK_MS",
            )
        if self.heartbeat_ttl_ms < 2 * self.lease_renew_ms:
            raise ConfigError(
                "BRIDGE_HEARTBEAT_TTL_MS must be at least twice BRIDGE_LEASE_RENEW_MS "
                "(heartbeats are sent at each renewal), got "
                f"{self.heartbeat_ttl_ms} for {self.lease_renew_ms}",
                variable="BRIDGE_HEARTBEAT_TTL_MS",
            )


def redis_db(url: str) -> int:
    """Return the database a Redis URL selects (path ``/N`` or ``?db=N``; default 0).

    ConfigError when it is not a number: redis-py would quietly use database 0 for ``/abc``.
    """
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    raw = query.get("db")
    where = "?db="
    if raw is None and parts.scheme != "unix":
        raw, where = unquote(parts.path).strip("/"), "path /"
    if not raw:
        return 0
    if not raw.isdigit():
        raise ConfigError(
            f"BRIDGE_REDIS_URL: the database ({where}{raw}) must be a number, e.g. "
            "redis://host:6379/0",
            variable="BRIDGE_REDIS_URL",
        )
    return int(raw)


def _check_redis_url(url: str, *, cluster: bool) -> None:
    """Refuse a Redis URL without a known scheme, a host, a valid port or a usable database."""
    parts = split_url("BRIDGE_REDIS_URL", url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"BRIDGE_REDIS_URL must be redis://, rediss:// or unix://, got {redact_url(url)!r}",
            variable="BRIDGE_REDIS_URL",
        )
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(
            f"BRIDGE_REDIS_URL needs a host: {redact_url(url)!r}", variable="BRIDGE_REDIS_URL"
        )
    if redis_db(url) != 0 and cluster:
        raise ConfigError(
            "BRIDGE_REDIS_URL: Redis Cluster has only database 0 (BRIDGE_REDIS_CLUSTER is true)",
            variable="BRIDGE_REDIS_URL",
        )
