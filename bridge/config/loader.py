"""Typed settings from ``config/bridge.toml`` plus environment overrides.

This is the only module that reads ``os.environ``. Every setting has one environment name (the
seed's names are kept exactly: ``HMAC_PRODUCER_SECRET``, ``OUTBOUND_SERVER_URL`` ...) and one key
in a TOML section; the environment wins. Validation errors are ConfigError naming the variable.
Secrets live in :class:`Secret`, whose ``repr`` and ``str`` never show the value.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
import socket
import ssl
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import SplitResult, parse_qsl, unquote, urlsplit, urlunsplit

import msgspec
from redis.crc import key_slot

from bridge.core.outcome import OutcomeTable, parse_statuses
from bridge.core.signal import DEFAULT_MAX_BODY_SIZE
from bridge.core.signing import INGEST_PATH
from bridge.errors import ConfigError
from bridge.streams.entries import is_stream_id
from bridge.telemetry.otel_env import OTEL_SIGNALS, validate_otel_env

__all__ = [
    "PROXY_VARIABLES",
    "BridgeConfig",
    "OutboundConfig",
    "Secret",
    "StreamConfig",
    "TelemetryConfig",
    "effective_settings",
    "load_config",
    "load_ingest_secrets",
    "otel_environment",
    "redact_url",
    "redis_db",
    "secret_file_bytes",
    "secret_fingerprint",
    "select_proxy",
    "setting_names",
]

MIN_SECRET_BYTES: Final = 16
MIN_TIMEOUT_S: Final = 5.0
MAX_BLOCK_MS: Final = 20_000
MIN_LEASE_TTL_MS: Final = 300


class Secret:
    """A secret value that never shows itself in repr, str, logs or tracebacks."""

    __slots__ = ("_value",)

    def __init__(self, value: bytes) -> None:
        self._value = value

    def get(self) -> bytes:
        """Return the secret bytes; call only where they are used, never to log."""
        return self._value

    def __len__(self) -> int:
        return len(self._value)

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __reduce__(self) -> Any:  # noqa: ANN401 - pickling protocol
        raise TypeError("Secret cannot be pickled")


def redact_url(url: str) -> str:
    """Replace the password (and a lone user token) in a URL with ``***``."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    user = parts.username or ""
    userinfo = f"{user}:***" if parts.password is not None else "***"
    return urlunsplit(SplitResult(parts.scheme, f"{userinfo}@{host}", *parts[2:]))


# issue 11: the proxy variables curl and httpx read, lower case first (as curl prefers it).
PROXY_VARIABLES: Final = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


def _redacted_field(name: str, value: object) -> str:
    """Repr one OutboundConfig field, proxy URLs with their credentials redacted."""
    if name == "proxy_url" and isinstance(value, str):
        return repr(redact_url(value))
    if name == "proxy_env" and isinstance(value, dict):
        return repr({k: redact_url(v) for k, v in value.items()})
    return repr(value)


def _env_value(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """Return (variable, value) of ``name`` in lower then upper case, if set and non-empty."""
    for variable in (name.lower(), name.upper()):
        value = env.get(variable, "").strip()
        if value:
            return variable, value
    return None


def _no_proxy_matches(entry: str, host: str, port: int) -> bool:
    """Tell whether one NO_PROXY entry (host, .domain, host:port, IP, CIDR or *) covers us."""
    entry = entry.strip().lower()
    if entry == "*":
        return True
    if "/" in entry:
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            return ipaddress.ip_address(host) in network
        except ValueError:
            return False
    want_port: int | None = None
    if entry.startswith("["):  # [v6] or [v6]:port
        address, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            want_port = int(rest[1:])
        entry = address
    elif entry.count(":") == 1:
        name, _, port_text = entry.partition(":")
        if port_text.isdigit():
            entry, want_port = name, int(port_text)
    if want_port is not None and want_port != port:
        return False
    entry = entry.lstrip(".").rstrip(".")
    host = host.rstrip(".")
    return bool(entry) and (host == entry or host.endswith("." + entry))


def select_proxy(
    target_url: str, explicit: str | None, env: Mapping[str, str]
) -> tuple[str | None, str]:
    """Choose the proxy for ``target_url`` as curl and httpx do; return (url or None, source).

    ``explicit`` is OUTBOUND_PROXY_URL: a URL wins over the environment, ``none`` ignores it.
    Otherwise ``https_proxy`` / ``http_proxy`` (by the target's scheme), then ``all_proxy``,
    either case, unless ``no_proxy`` covers the host.
    """
    if explicit is not None and explicit.strip():
        if explicit.strip().lower() == "none":
            return None, "OUTBOUND_PROXY_URL=none"
        return _with_scheme(explicit.strip()), "OUTBOUND_PROXY_URL"
    parts = urlsplit(target_url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found = _env_value(env, f"{parts.scheme}_proxy") or _env_value(env, "all_proxy")
    if found is None:
        return None, "no proxy variable set"
    no_proxy = _env_value(env, "no_proxy")
    if no_proxy is not None and any(
        _no_proxy_matches(entry, host, port) for entry in no_proxy[1].split(",") if entry.strip()
    ):
        return None, f"{no_proxy[0]} covers {host}"
    variable, url = found
    return _with_scheme(url), variable


def _with_scheme(url: str) -> str:
    """Read a bare ``host:port`` as ``http://host:port``, as curl does."""
    return url if "://" in url else f"http://{url}"


def is_loopback_host(host: str) -> bool:
    """Tell whether ``host`` is localhost or a loopback address (plain http is fine there)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class OutboundConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach and authenticate to the ingest server."""

    server_url: str = ""
    secret: Secret | None = None
    producer_id: str = ""
    enabled: bool = True
    timeout_s: float = 30.0
    max_body_size: int = DEFAULT_MAX_BODY_SIZE
    key_id: str | None = None
    ca_bundle: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    max_connections: int = 32
    success_statuses: list[int] | None = None
    systemic_statuses: list[int] | None = None
    reject_statuses: list[int] | None = None
    # issue 11: limits, proxies and timeouts of the HTTP edge
    max_response_bytes: int = 1024 * 1024
    max_response_head_bytes: int = 64 * 1024
    max_response_headers: int = 100
    connect_timeout_s: float = 10.0
    tcp_user_timeout_s: float = 10.0
    proxy_url: str | None = None
    proxy_env: dict[str, str] = msgspec.field(default_factory=dict)

    def __repr__(self) -> str:
        # Proxy URLs may carry credentials: show them redacted; the secret is a Secret.
        fields = ", ".join(
            f"{name}={_redacted_field(name, getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"OutboundConfig({fields})"

    def proxy(self) -> tuple[str | None, str]:
        """Return the proxy for the ingest URL (None for a direct connection) and its source."""
        return select_proxy(self.ingest_url, self.proxy_url, self.proxy_env)

    @property
    def ingest_url(self) -> str:
        """The full URL of the ingest endpoint."""
        return self.server_url.rstrip("/") + INGEST_PATH

    @property
    def ingest_path(self) -> str:
        """The request path that goes into the canonical request."""
        return urlsplit(self.ingest_url).path

    def secret_bytes(self) -> bytes:
        """Return the HMAC secret; ConfigError when none is configured."""
        if self.secret is None:
            raise ConfigError("HMAC_PRODUCER_SECRET is required", variable="HMAC_PRODUCER_SECRET")
        return self.secret.get()


class StreamConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Where signals come from and how the consumer group treats them."""

    redis_url: str = "redis://localhost:6379/0"
    stream: str = "signals"
    group: str = "signal-bridge"
    consumer: str = ""
    dlq_stream: str = "signals:dlq"
    start_id: str = "$"
    max_in_flight: int = 32
    claim_idle_ms: int = 30000
    max_deliveries: int = 10
    signal_max_age_s: float = 300.0
    batch_size: int = 100
    block_ms: int = 1000
    shutdown_grace_s: float = 10.0
    streams: list[str] = msgspec.field(default_factory=list)
    cluster: bool = False
    lane_stall_warn_s: float = 10.0
    probe_interval_ms: int = 1000
    backoff_base_ms: int = 500
    backoff_cap_ms: int = 30000
    breaker_threshold: int = 5
    retry_after_cap_s: float = 60.0
    trim_acked: bool = False
    trim_interval_s: float = 10.0
    # issue 9: strict ordering across replicas (shard leases)
    ordering: Literal["strict", "parallel"] = "strict"
    lease_ttl_ms: int = 10000
    lease_renew_ms: int = 2000
    heartbeat_ttl_ms: int = 10000

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


class TelemetryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Logs, health port and OpenTelemetry switches."""

    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    health_port: int = 8081
    health_host: str = "0.0.0.0"  # noqa: S104 - probes come from the kubelet / compose network
    status_interval_s: float = 5.0
    otel_env: dict[str, str] = msgspec.field(default_factory=dict)
    summary_interval_s: float = 10.0

    def __repr__(self) -> str:
        # OTEL_EXPORTER_OTLP_HEADERS often carries an API key: show variable names only.
        return (
            f"TelemetryConfig(log_level={self.log_level!r}, log_format={self.log_format!r}, "
            f"health_port={self.health_port}, health_host={self.health_host!r}, "
            f"status_interval_s={self.status_interval_s}, otel_env=<{sorted(self.otel_env)}>, "
            f"summary_interval_s={self.summary_interval_s})"
        )


class BridgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """All settings of one bridge process."""

    outbound: OutboundConfig = msgspec.field(default_factory=OutboundConfig)
    stream: StreamConfig = msgspec.field(default_factory=StreamConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)

    def validate(self) -> BridgeConfig:
        """Check cross-field rules; return self so it chains."""
        _validate_outbound(self.outbound)
        _validate_stream(self.stream)
        _validate_telemetry(self.telemetry)
        return self


# --- parsing helpers -----------------------------------------------------------------------


def _parse_bool(variable: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{variable} must be true or false, got {raw!r}", variable=variable)


def _parse_int(variable: str, raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ConfigError(
            f"{variable} must be an integer, got {raw!r}", variable=variable
        ) from None


def _parse_float(variable: str, raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{variable} must be a number, got {raw!r}", variable=variable) from None
    if not math.isfinite(value):
        raise ConfigError(f"{variable} must be a finite number, got {raw!r}", variable=variable)
    return value


def _parse_str(variable: str, raw: str) -> str:
    # Text is used exactly as written: edge whitespace is refused after loading (see
    # _check_text), whether the value came from the environment or the file.
    del variable
    return raw


def _parse_secret(variable: str, raw: str) -> Secret:
    del variable
    return Secret(raw.encode())


def _parse_list(variable: str, raw: str) -> list[str]:
    del variable
    return [part.strip() for part in raw.split(",") if part.strip()]


def _parse_name(variable: str, raw: str) -> str:
    """Parse a stream, group or consumer name; set but empty is refused, never defaulted.

    Kept exactly as written: edge whitespace is refused after loading (``_check_text``).
    """
    if not raw.strip():
        raise ConfigError(
            f"{variable} is set but empty: give a name, or unset it to use the default",
            variable=variable,
        )
    return raw


def _parse_names(variable: str, raw: str) -> list[str]:
    """Parse a comma-separated list of names (a stray comma is fine); no name at all is refused."""
    names = [part.strip() for part in raw.split(",") if part.strip()]
    if not names:
        raise ConfigError(
            f"{variable} is set but lists no stream: list them, or unset it", variable=variable
        )
    return names


def _parse_optional(variable: str, raw: str) -> str | None:
    del variable
    return raw or None


def _parse_statuses(variable: str, raw: str) -> list[int]:
    """Parse an OUTBOUND_*_STATUSES list (``200-299,304,4xx``), naming the variable on error."""
    try:
        return parse_statuses(raw)
    except ValueError as exc:
        raise ConfigError(f"{variable}: {exc}", variable=variable) from None


Parser = Callable[[str, str], Any]

# env name -> (section, field, parser). The seed's names are kept as they were.
_ENV: Final[dict[str, tuple[str, str, Parser]]] = {
    "HMAC_PRODUCER_ENABLED": ("outbound", "enabled", _parse_bool),
    "HMAC_PRODUCER_SECRET": ("outbound", "secret", _parse_secret),
    "HMAC_PRODUCER_KEY_ID": ("outbound", "key_id", _parse_optional),
    "PRODUCER_ID": ("outbound", "producer_id", _parse_str),
    "OUTBOUND_SERVER_URL": ("outbound", "server_url", _parse_str),
    "OUTBOUND_TIMEOUT_SECONDS": ("outbound", "timeout_s", _parse_float),
    "OUTBOUND_MAX_BODY_SIZE": ("outbound", "max_body_size", _parse_int),
    "OUTBOUND_CA_BUNDLE": ("outbound", "ca_bundle", _parse_optional),
    "OUTBOUND_CLIENT_CERT": ("outbound", "client_cert", _parse_optional),
    "OUTBOUND_CLIENT_KEY": ("outbound", "client_key", _parse_optional),
    "OUTBOUND_MAX_CONNECTIONS": ("outbound", "max_connections", _parse_int),
    "BRIDGE_REDIS_URL": ("stream", "redis_url", _parse_str),
    "BRIDGE_STREAM": ("stream", "stream", _parse_name),
    "BRIDGE_STREAMS": ("stream", "streams", _parse_names),
    "BRIDGE_REDIS_CLUSTER": ("stream", "cluster", _parse_bool),
    "BRIDGE_GROUP": ("stream", "group", _parse_name),
    "BRIDGE_CONSUMER": ("stream", "consumer", _parse_name),
    "BRIDGE_DLQ_STREAM": ("stream", "dlq_stream", _parse_name),
    "BRIDGE_START_ID": ("stream", "start_id", _parse_str),
    "BRIDGE_MAX_IN_FLIGHT": ("stream", "max_in_flight", _parse_int),
    "BRIDGE_CLAIM_IDLE_MS": ("stream", "claim_idle_ms", _parse_int),
    "BRIDGE_MAX_DELIVERIES": ("stream", "max_deliveries", _parse_int),
    "BRIDGE_SIGNAL_MAX_AGE_SECONDS": ("stream", "signal_max_age_s", _parse_float),
    "BRIDGE_BATCH_SIZE": ("stream", "batch_size", _parse_int),
    "BRIDGE_BLOCK_MS": ("stream", "block_ms", _parse_int),
    "BRIDGE_SHUTDOWN_GRACE_SECONDS": ("stream", "shutdown_grace_s", _parse_float),
    "BRIDGE_LOG_LEVEL": ("telemetry", "log_level", _parse_str),
    "BRIDGE_LOG_FORMAT": ("telemetry", "log_format", _parse_str),
    "BRIDGE_HEALTH_PORT": ("telemetry", "health_port", _parse_int),
    "BRIDGE_HEALTH_HOST": ("telemetry", "health_host", _parse_str),
    "BRIDGE_STATUS_INTERVAL_SECONDS": ("telemetry", "status_interval_s", _parse_float),
    # issue 9: isolation, lost reads, detection
    "BRIDGE_LANE_STALL_WARN_SECONDS": ("stream", "lane_stall_warn_s", _parse_float),
    # issue 10: outcomes and recovery
    "OUTBOUND_SUCCESS_STATUSES": ("outbound", "success_statuses", _parse_statuses),
    "OUTBOUND_SYSTEMIC_STATUSES": ("outbound", "systemic_statuses", _parse_statuses),
    "OUTBOUND_REJECT_STATUSES": ("outbound", "reject_statuses", _parse_statuses),
    "BRIDGE_PROBE_INTERVAL_MS": ("stream", "probe_interval_ms", _parse_int),
    "BRIDGE_BACKOFF_BASE_MS": ("stream", "backoff_base_ms", _parse_int),
    "BRIDGE_BACKOFF_CAP_MS": ("stream", "backoff_cap_ms", _parse_int),
    "BRIDGE_BREAKER_THRESHOLD": ("stream", "breaker_threshold", _parse_int),
    "BRIDGE_RETRY_AFTER_CAP_SECONDS": ("stream", "retry_after_cap_s", _parse_float),
    # issue 12: retention and feedback
    "BRIDGE_TRIM_ACKED": ("stream", "trim_acked", _parse_bool),
    "BRIDGE_TRIM_INTERVAL_SECONDS": ("stream", "trim_interval_s", _parse_float),
    "BRIDGE_SUMMARY_INTERVAL_SECONDS": ("telemetry", "summary_interval_s", _parse_float),
    # issue 11: limits, proxies and timeouts of the HTTP edge
    "OUTBOUND_MAX_RESPONSE_BYTES": ("outbound", "max_response_bytes", _parse_int),
    "OUTBOUND_MAX_RESPONSE_HEAD_BYTES": ("outbound", "max_response_head_bytes", _parse_int),
    "OUTBOUND_MAX_RESPONSE_HEADERS": ("outbound", "max_response_headers", _parse_int),
    "OUTBOUND_CONNECT_TIMEOUT_SECONDS": ("outbound", "connect_timeout_s", _parse_float),
    "OUTBOUND_TCP_USER_TIMEOUT_SECONDS": ("outbound", "tcp_user_timeout_s", _parse_float),
    "OUTBOUND_PROXY_URL": ("outbound", "proxy_url", _parse_optional),
    # issue 9: strict ordering across replicas (shard leases)
    "BRIDGE_ORDERING": ("stream", "ordering", _parse_str),
    "BRIDGE_LEASE_TTL_MS": ("stream", "lease_ttl_ms", _parse_int),
    "BRIDGE_LEASE_RENEW_MS": ("stream", "lease_renew_ms", _parse_int),
    "BRIDGE_HEARTBEAT_TTL_MS": ("stream", "heartbeat_ttl_ms", _parse_int),
}

# Parsers that see a blank value instead of it meaning "unset".
_SEES_BLANK: Final = frozenset({_parse_secret, _parse_name, _parse_names})

# For messages about values that came from the file, name the variable an operator would set.
_VARIABLE_OF: Final = {(section, field): env for env, (section, field, _) in _ENV.items()}

_SECTIONS: Final[dict[str, type[msgspec.Struct]]] = {
    "outbound": OutboundConfig,
    "stream": StreamConfig,
    "telemetry": TelemetryConfig,
}


def setting_names() -> list[str]:
    """Every environment variable the settings table reads, in table order."""
    return list(_ENV)


def secret_fingerprint(secret: Secret) -> str:
    """First 8 hex digits of SHA-256 of the key: compare set-ups without showing the secret."""
    return hashlib.sha256(secret.get()).hexdigest()[:8]


def effective_settings(config: BridgeConfig) -> list[tuple[str, str]]:
    """(variable, value) for every setting in the table and each OTEL_* variable, secrets hidden.

    The secret shows as its fingerprint, Redis passwords as ``***``, OTLP headers (API keys) and
    any OTEL_* value that may carry credentials as ``***``.
    """
    rows: list[tuple[str, str]] = []
    for variable, (section, field, _) in _ENV.items():
        value = getattr(getattr(config, section), field)
        if isinstance(value, Secret):
            shown = f"*** (sha256 {secret_fingerprint(value)})" if len(value) else "(empty)"
        elif value is None:
            shown = "(unset)"
        elif isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, list):
            shown = ",".join(value) or "(unset)"
        elif field in ("redis_url", "proxy_url"):
            shown = redact_url(value)
        else:
            shown = str(value)
        rows.append((variable, shown))
    for variable, value in sorted(config.telemetry.otel_env.items()):
        hidden = "HEADERS" in variable or "KEY" in variable or "PASSWORD" in variable
        rows.append((variable, "***" if hidden else redact_url(value)))
    return rows


def _variable(section: str, field: str) -> str:
    return _VARIABLE_OF.get((section, field), f"[{section}].{field}")


def _read_file(path: Path) -> dict[str, dict[str, Any]]:
    """Read the TOML file into per-section dicts, checking the section and key names."""
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}", variable="BRIDGE_CONFIG") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from exc
    sections: dict[str, dict[str, Any]] = {}
    for section, values in data.items():
        struct = _SECTIONS.get(section)
        if struct is None or not isinstance(values, dict):
            raise ConfigError(f"config file {path}: unknown section [{section}]")
        for key in values:
            if key not in struct.__struct_fields__:
                raise ConfigError(f"config file {path}: unknown key {key!r} in [{section}]")
        if "secret" in values:
            raise ConfigError(
                f"config file {path}: put the secret in HMAC_PRODUCER_SECRET or "
                "HMAC_PRODUCER_SECRET_FILE, not in the file",
                variable="HMAC_PRODUCER_SECRET",
            )
        sections[section] = dict(values)
    return sections


def secret_file_bytes(raw: bytes) -> bytes:
    r"""Apply the one rule for secret files: exactly one trailing ``\n`` or ``\r\n`` is dropped.

    That is what ``echo secret > file``, ``kubectl create secret --from-file`` of such a file
    and most editors leave; every other byte is part of the key.
    """
    if raw.endswith(b"\r\n"):
        return raw[:-2]
    if raw.endswith(b"\n"):
        return raw[:-1]
    return raw


def _read_secret_file(variable: str, path: str) -> Secret:
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{variable}: cannot read {path}: {exc.strerror}", variable=variable
        ) from None
    return Secret(secret_file_bytes(raw))


def default_consumer_name() -> str:
    """Host name plus pid: unique per replica, stable for the life of the process."""
    return f"{socket.gethostname()}-{os.getpid()}"


def load_config(
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    delivery: bool = True,
) -> BridgeConfig:
    """Load ``path`` (or ``BRIDGE_CONFIG``), apply environment overrides, validate.

    ``delivery=False`` is for operator commands (status, dlq, publish): they need Redis only,
    so the ingest settings are not required.
    """
    environ = os.environ if env is None else env
    if not delivery:
        environ = {**environ, "HMAC_PRODUCER_ENABLED": "false"}
    file_path = path if path is not None else environ.get("BRIDGE_CONFIG")
    sections = _read_file(Path(file_path)) if file_path else {}
    for variable, (section, field, parser) in _ENV.items():
        raw = environ.get(variable)
        # A blank value means "unset" (compose's ${VAR:-}), except for the names, which refuse
        # it, and the secret, which is checked below.
        if raw is not None and (raw.strip() or parser in _SEES_BLANK):
            sections.setdefault(section, {})[field] = parser(variable, raw)
    secret_file = environ.get("HMAC_PRODUCER_SECRET_FILE")
    if secret_file and not environ.get("HMAC_PRODUCER_SECRET"):
        sections.setdefault("outbound", {})["secret"] = _read_secret_file(
            "HMAC_PRODUCER_SECRET_FILE", secret_file
        )
    # The OpenTelemetry SDK reads its own OTEL_* variables; keep a copy so setup can decide
    # whether an exporter is configured without reading the environment again.
    sections.setdefault("telemetry", {})["otel_env"] = {
        k: v for k, v in environ.items() if k.startswith("OTEL_")
    }
    outbound = sections.setdefault("outbound", {})
    # The proxy variables curl and httpx read; select_proxy picks one for the ingest URL.
    outbound["proxy_env"] = {k: environ[k] for k in PROXY_VARIABLES if k in environ}
    if not outbound.get("producer_id"):
        outbound["producer_id"] = socket.gethostname()
    stream = sections.setdefault("stream", {})
    if "consumer" not in stream:
        stream["consumer"] = default_consumer_name()
    built: dict[str, msgspec.Struct] = {}
    for section, struct in _SECTIONS.items():
        values = sections.get(section, {})
        try:
            built[section] = msgspec.convert(values, struct, from_attributes=False)
        except msgspec.ValidationError as exc:
            named, message = _translate(section, str(exc))
            raise ConfigError(f"[{section}] {message}", variable=named) from None
        for name in struct.__struct_fields__:
            value = getattr(built[section], name)
            if isinstance(value, float) and not math.isfinite(value):
                env_name = _variable(section, name)
                raise ConfigError(f"{env_name} must be a finite number", variable=env_name)
            _check_text(section, name, value)
    return BridgeConfig(**built).validate()  # type: ignore[arg-type]


def _check_text(section: str, name: str, value: object) -> None:
    """Refuse text settings with edge whitespace: used exactly as written, never trimmed.

    One rule for every source (environment, TOML file): a padded PRODUCER_ID would be signed
    as is while servers strip header values, so every request would be refused.
    """
    items = value if isinstance(value, list) else [value]
    for item in items:
        if isinstance(item, str) and item != item.strip():
            variable = _variable(section, name)
            raise ConfigError(
                f"{variable} has leading or trailing whitespace ({item!r}); settings are used "
                "exactly as written, remove it",
                variable=variable,
            )


def _translate(section: str, message: str) -> tuple[str | None, str]:
    """Name the environment variable in msgspec's message about a field (``$.field``)."""
    marker = "at `$."
    if marker in message:
        field = message.split(marker, 1)[1].rstrip("`").split(".")[0].split("[")[0]
        variable = _variable(section, field)
        return variable, f"{variable}: {message}"
    return None, message


def _validate_server_url(cfg: OutboundConfig) -> None:
    if not cfg.server_url:
        raise ConfigError("OUTBOUND_SERVER_URL is required", variable="OUTBOUND_SERVER_URL")
    url = urlsplit(cfg.server_url)
    if url.scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(
            "OUTBOUND_SERVER_URL must be an http(s) URL with a host, got "
            f"{redact_url(cfg.server_url)!r}",
            variable="OUTBOUND_SERVER_URL",
        )
    if url.username or url.password:
        raise ConfigError(
            "OUTBOUND_SERVER_URL must not carry credentials", variable="OUTBOUND_SERVER_URL"
        )
    if url.scheme == "http" and not is_loopback_host(url.hostname):
        raise ConfigError(
            "OUTBOUND_SERVER_URL must use https (plain http only for loopback hosts)",
            variable="OUTBOUND_SERVER_URL",
        )


def _validate_outbound(cfg: OutboundConfig) -> None:
    if not cfg.enabled:
        return
    _validate_server_url(cfg)
    if cfg.secret is None or len(cfg.secret) == 0:
        raise ConfigError(
            "HMAC_PRODUCER_SECRET (or HMAC_PRODUCER_SECRET_FILE) is required when "
            "HMAC_PRODUCER_ENABLED is true",
            variable="HMAC_PRODUCER_SECRET",
        )
    if len(cfg.secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            f"HMAC_PRODUCER_SECRET must be at least {MIN_SECRET_BYTES} bytes",
            variable="HMAC_PRODUCER_SECRET",
        )
    for variable, value in (("PRODUCER_ID", cfg.producer_id), ("HMAC_PRODUCER_KEY_ID", cfg.key_id)):
        if value is not None and not (value and value.isascii() and value.isprintable()):
            raise ConfigError(
                f"{variable} must be non-empty printable ASCII (it is sent as a header)",
                variable=variable,
            )
    if cfg.timeout_s < MIN_TIMEOUT_S:
        raise ConfigError(
            f"OUTBOUND_TIMEOUT_SECONDS must be at least {MIN_TIMEOUT_S:g}, got {cfg.timeout_s:g}",
            variable="OUTBOUND_TIMEOUT_SECONDS",
        )
    if cfg.max_body_size <= 0:
        raise ConfigError(
            "OUTBOUND_MAX_BODY_SIZE must be positive", variable="OUTBOUND_MAX_BODY_SIZE"
        )
    if cfg.max_connections < 1:
        raise ConfigError(
            "OUTBOUND_MAX_CONNECTIONS must be at least 1", variable="OUTBOUND_MAX_CONNECTIONS"
        )
    _validate_statuses(cfg)
    if cfg.client_key is not None and cfg.client_cert is None:
        raise ConfigError(
            "OUTBOUND_CLIENT_KEY needs OUTBOUND_CLIENT_CERT", variable="OUTBOUND_CLIENT_CERT"
        )
    _validate_edge(cfg)
    _validate_tls_files(cfg)


_PEM_CERT: Final = b"-----BEGIN CERTIFICATE-----"
_PEM_KEY: Final = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")


def _read_pem(variable: str, file: str, *, key: bool) -> bytes:
    """Read a PEM file; ConfigError when it is missing, unreadable or holds no PEM block."""
    if not Path(file).is_file():
        raise ConfigError(f"{variable}: no such file {file}", variable=variable)
    try:
        data = Path(file).read_bytes()
    except OSError as exc:
        raise ConfigError(
            f"{variable}: cannot read {file}: {exc.strerror}", variable=variable
        ) from None
    if key and b"ENCRYPTED" in data:
        raise ConfigError(
            f"{variable}: {file} is an encrypted key; give an unencrypted one (mounted as a "
            "secret)",
            variable=variable,
        )
    found = _PEM_KEY.search(data) if key else _PEM_CERT in data
    if not found:
        kind = "private key" if key else "certificate"
        raise ConfigError(
            f"{variable}: {file} is not a PEM {kind} (no -----BEGIN ...{kind.upper()}----- block)",
            variable=variable,
        )
    return data


def _validate_tls_files(cfg: OutboundConfig) -> None:
    """Load the CA bundle and the client certificate and key as the client will, or refuse."""
    if cfg.ca_bundle is not None:
        _read_pem("OUTBOUND_CA_BUNDLE", cfg.ca_bundle, key=False)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no system store: only these files
    if cfg.ca_bundle is not None:
        try:
            context.load_verify_locations(cafile=cfg.ca_bundle)
        except ssl.SSLError as exc:
            raise ConfigError(
                f"OUTBOUND_CA_BUNDLE: {cfg.ca_bundle} holds no usable certificate "
                f"({exc.reason or exc})",
                variable="OUTBOUND_CA_BUNDLE",
            ) from None
    if cfg.client_cert is None:
        return
    cert = _read_pem("OUTBOUND_CLIENT_CERT", cfg.client_cert, key=False)
    if cfg.client_key is not None:
        _read_pem("OUTBOUND_CLIENT_KEY", cfg.client_key, key=True)
    elif not _PEM_KEY.search(cert):
        raise ConfigError(
            f"OUTBOUND_CLIENT_CERT: {cfg.client_cert} holds no private key; set "
            "OUTBOUND_CLIENT_KEY",
            variable="OUTBOUND_CLIENT_CERT",
        )
    try:
        # password=b"": an encrypted key fails here instead of prompting on a terminal.
        context.load_cert_chain(cfg.client_cert, cfg.client_key, password=b"")
    except ssl.SSLError as exc:
        mismatch = "KEY_VALUES_MISMATCH" in str(exc)
        variable = "OUTBOUND_CLIENT_KEY" if mismatch or cfg.client_key else "OUTBOUND_CLIENT_CERT"
        what = (
            "does not match OUTBOUND_CLIENT_CERT"
            if mismatch
            else f"could not be loaded ({exc.reason or exc})"
        )
        file = cfg.client_key if variable == "OUTBOUND_CLIENT_KEY" else cfg.client_cert
        raise ConfigError(f"{variable}: {file} {what}", variable=variable) from None


def _validate_statuses(cfg: OutboundConfig) -> None:
    """Check the outcome lists: real status codes, and no code in two lists that are set."""
    lists = (
        ("OUTBOUND_SUCCESS_STATUSES", cfg.success_statuses),
        ("OUTBOUND_SYSTEMIC_STATUSES", cfg.systemic_statuses),
        ("OUTBOUND_REJECT_STATUSES", cfg.reject_statuses),
    )
    for variable, codes in lists:
        for code in codes or ():
            if not 100 <= code <= 599:
                raise ConfigError(
                    f"{variable}: {code} is not an HTTP status code (100-599)", variable=variable
                )
    for i, (first, first_codes) in enumerate(lists):
        for second, second_codes in lists[i + 1 :]:
            both = sorted(set(first_codes or ()) & set(second_codes or ()))
            if both:
                raise ConfigError(
                    f"status {both[0]} is in both {first} and {second}: a code has one meaning",
                    variable=second,
                )
    OutcomeTable(
        success=cfg.success_statuses, systemic=cfg.systemic_statuses, reject=cfg.reject_statuses
    )


def _validate_edge(cfg: OutboundConfig) -> None:
    """Check the HTTP edge's limits, timeouts and the proxy that applies (issue 11)."""
    _positive("OUTBOUND_MAX_RESPONSE_BYTES", cfg.max_response_bytes)
    _positive("OUTBOUND_MAX_RESPONSE_HEAD_BYTES", cfg.max_response_head_bytes)
    _positive("OUTBOUND_MAX_RESPONSE_HEADERS", cfg.max_response_headers)
    _positive("OUTBOUND_CONNECT_TIMEOUT_SECONDS", cfg.connect_timeout_s)
    if cfg.tcp_user_timeout_s < 0:
        raise ConfigError(
            "OUTBOUND_TCP_USER_TIMEOUT_SECONDS must be >= 0 (0 disables)",
            variable="OUTBOUND_TCP_USER_TIMEOUT_SECONDS",
        )
    proxy, source = cfg.proxy()
    if proxy is None:
        return
    variable = source
    parts = urlsplit(proxy)
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        raise ConfigError(
            f"{variable}: bad port in {redact_url(proxy)!r}", variable=variable
        ) from None
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(
            f"{variable} must be an http:// proxy URL (https targets go through it with "
            f"CONNECT), got {redact_url(proxy)!r}; set OUTBOUND_PROXY_URL=none to connect "
            "directly",
            variable=variable,
        )


def _positive(variable: str, value: float) -> None:
    if value <= 0:
        raise ConfigError(f"{variable} must be positive, got {value:g}", variable=variable)


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


def _validate_redis_url(cfg: StreamConfig) -> None:
    parts = urlsplit(cfg.redis_url)
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            f"BRIDGE_REDIS_URL must be redis://, rediss:// or unix://, got "
            f"{redact_url(cfg.redis_url)!r}",
            variable="BRIDGE_REDIS_URL",
        )
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(
            f"BRIDGE_REDIS_URL has an invalid port: {redact_url(cfg.redis_url)!r}",
            variable="BRIDGE_REDIS_URL",
        ) from None
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(
            f"BRIDGE_REDIS_URL needs a host: {redact_url(cfg.redis_url)!r}",
            variable="BRIDGE_REDIS_URL",
        )
    del port
    if redis_db(cfg.redis_url) != 0 and cfg.cluster:
        raise ConfigError(
            "BRIDGE_REDIS_URL: Redis Cluster has only database 0 (BRIDGE_REDIS_CLUSTER is true)",
            variable="BRIDGE_REDIS_URL",
        )


def _validate_stream(cfg: StreamConfig) -> None:
    _validate_redis_url(cfg)
    for variable, name in (
        ("BRIDGE_STREAM", cfg.stream),
        ("BRIDGE_GROUP", cfg.group),
        ("BRIDGE_CONSUMER", cfg.consumer),
        ("BRIDGE_DLQ_STREAM", cfg.dlq_stream),
    ):
        if not name:
            raise ConfigError(f"{variable} must not be empty", variable=variable)
    if cfg.dlq_stream == cfg.stream:
        raise ConfigError(
            "BRIDGE_DLQ_STREAM must differ from BRIDGE_STREAM", variable="BRIDGE_DLQ_STREAM"
        )
    names = cfg.stream_names()
    if len(set(names)) != len(names) or any(n.endswith(":dlq") for n in cfg.streams):
        raise ConfigError(
            "BRIDGE_STREAMS must list distinct streams that are not dead-letter streams",
            variable="BRIDGE_STREAMS",
        )
    if not (cfg.start_id in ("$", "0") or is_stream_id(cfg.start_id)):
        raise ConfigError(
            f"BRIDGE_START_ID must be '$', '0' or a stream id, got {cfg.start_id!r}",
            variable="BRIDGE_START_ID",
        )
    _positive("BRIDGE_MAX_IN_FLIGHT", cfg.max_in_flight)
    _positive("BRIDGE_CLAIM_IDLE_MS", cfg.claim_idle_ms)
    _positive("BRIDGE_MAX_DELIVERIES", cfg.max_deliveries)
    _positive("BRIDGE_BATCH_SIZE", cfg.batch_size)
    _positive("BRIDGE_BLOCK_MS", cfg.block_ms)
    if cfg.block_ms > MAX_BLOCK_MS:
        raise ConfigError(
            f"BRIDGE_BLOCK_MS must be at most {MAX_BLOCK_MS} (below the Redis read timeout)",
            variable="BRIDGE_BLOCK_MS",
        )
    if cfg.cluster:
        for name in names:
            if key_slot(name.encode()) != key_slot(cfg.dlq_for(name).encode()):
                raise ConfigError(
                    f"with BRIDGE_REDIS_CLUSTER, {name!r} and its dead-letter stream "
                    f"{cfg.dlq_for(name)!r} must share a {{hash tag}} (same slot), e.g. "
                    "BRIDGE_STREAMS=signals:{0},signals:{1}",
                    variable="BRIDGE_DLQ_STREAM",
                )
    if cfg.signal_max_age_s < 0:
        raise ConfigError(
            "BRIDGE_SIGNAL_MAX_AGE_SECONDS must be >= 0 (0 disables)",
            variable="BRIDGE_SIGNAL_MAX_AGE_SECONDS",
        )
    _positive("BRIDGE_LANE_STALL_WARN_SECONDS", cfg.lane_stall_warn_s)
    if cfg.shutdown_grace_s < 0:
        raise ConfigError(
            "BRIDGE_SHUTDOWN_GRACE_SECONDS must be >= 0", variable="BRIDGE_SHUTDOWN_GRACE_SECONDS"
        )
    _validate_recovery(cfg)
    _validate_leases(cfg)


def _validate_leases(cfg: StreamConfig) -> None:
    """Lease timings of strict ordering: renewals well inside the TTL, heartbeats outliving one."""
    _positive("BRIDGE_LEASE_TTL_MS", cfg.lease_ttl_ms)
    _positive("BRIDGE_LEASE_RENEW_MS", cfg.lease_renew_ms)
    _positive("BRIDGE_HEARTBEAT_TTL_MS", cfg.heartbeat_ttl_ms)
    if cfg.lease_ttl_ms < MIN_LEASE_TTL_MS:
        raise ConfigError(
            f"BRIDGE_LEASE_TTL_MS must be at least {MIN_LEASE_TTL_MS}, got {cfg.lease_ttl_ms}",
            variable="BRIDGE_LEASE_TTL_MS",
        )
    if cfg.lease_renew_ms * 3 > cfg.lease_ttl_ms:
        raise ConfigError(
            "BRIDGE_LEASE_RENEW_MS must be at most a third of BRIDGE_LEASE_TTL_MS (a lease must "
            f"survive two failed renewals), got {cfg.lease_renew_ms} for {cfg.lease_ttl_ms}",
            variable="BRIDGE_LEASE_RENEW_MS",
        )
    if cfg.ordering == "strict" and cfg.block_ms * 4 > cfg.lease_ttl_ms:
        raise ConfigError(
            "with BRIDGE_ORDERING=strict, BRIDGE_BLOCK_MS must be at most a quarter of "
            "BRIDGE_LEASE_TTL_MS (a read started before the fence must end before the lease "
            f"can expire), got {cfg.block_ms} for {cfg.lease_ttl_ms}",
            variable="BRIDGE_BLOCK_MS",
        )
    if cfg.heartbeat_ttl_ms < 2 * cfg.lease_renew_ms:
        raise ConfigError(
            "BRIDGE_HEARTBEAT_TTL_MS must be at least twice BRIDGE_LEASE_RENEW_MS (heartbeats "
            f"are sent at each renewal), got {cfg.heartbeat_ttl_ms} for {cfg.lease_renew_ms}",
            variable="BRIDGE_HEARTBEAT_TTL_MS",
        )


def _validate_recovery(cfg: StreamConfig) -> None:
    """Check the probe interval, the backoff and the breaker settings."""
    _positive("BRIDGE_PROBE_INTERVAL_MS", cfg.probe_interval_ms)
    _positive("BRIDGE_BACKOFF_BASE_MS", cfg.backoff_base_ms)
    _positive("BRIDGE_BREAKER_THRESHOLD", cfg.breaker_threshold)
    _positive("BRIDGE_RETRY_AFTER_CAP_SECONDS", cfg.retry_after_cap_s)
    if cfg.backoff_cap_ms < cfg.backoff_base_ms:
        raise ConfigError(
            "BRIDGE_BACKOFF_CAP_MS must be at least BRIDGE_BACKOFF_BASE_MS",
            variable="BRIDGE_BACKOFF_CAP_MS",
        )
    _positive("BRIDGE_TRIM_INTERVAL_SECONDS", cfg.trim_interval_s)


def _validate_telemetry(cfg: TelemetryConfig) -> None:
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
        raise ConfigError(
            f"BRIDGE_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got "
            f"{cfg.log_level!r}",
            variable="BRIDGE_LOG_LEVEL",
        )
    if cfg.status_interval_s <= 0:
        raise ConfigError(
            "BRIDGE_STATUS_INTERVAL_SECONDS must be positive",
            variable="BRIDGE_STATUS_INTERVAL_SECONDS",
        )
    if not 0 <= cfg.health_port <= 65535:
        raise ConfigError(
            "BRIDGE_HEALTH_PORT must be 0..65535 (0 disables)", variable="BRIDGE_HEALTH_PORT"
        )
    if cfg.summary_interval_s < 0:
        raise ConfigError(
            "BRIDGE_SUMMARY_INTERVAL_SECONDS must be >= 0 (0 disables)",
            variable="BRIDGE_SUMMARY_INTERVAL_SECONDS",
        )
    if not _is_host(cfg.health_host):
        raise ConfigError(
            f"BRIDGE_HEALTH_HOST must be an IP address or a host name, got {cfg.health_host!r}",
            variable="BRIDGE_HEALTH_HOST",
        )
    validate_otel_env(cfg.otel_env)
    _validate_otel_endpoints(cfg.otel_env)


_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def _is_host(host: str) -> bool:
    """Tell whether ``host`` is an IP address or a DNS name (999.1.1.1 is neither)."""
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        labels = host.rstrip(".").split(".")
        return (
            0 < len(host) <= 253
            and all(_HOST_LABEL.fullmatch(label) for label in labels)
            and not all(label.isdigit() for label in labels)
        )
    return True


def _validate_otel_endpoints(env: Mapping[str, str]) -> None:
    """Refuse an OTLP endpoint that is not an http(s) URL with a host (named, redacted)."""
    for signal in OTEL_SIGNALS:
        for variable in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT",
        ):
            endpoint = env.get(variable, "").strip()
            if endpoint and (
                urlsplit(endpoint).scheme not in ("http", "https")
                or not urlsplit(endpoint).hostname
            ):
                raise ConfigError(
                    f"{variable} must be an http(s) URL, got {redact_url(endpoint)!r}",
                    variable=variable,
                )


def load_ingest_secrets(env: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """Load the reference server's key id -> secret map.

    From ``INGEST_SECRETS`` (``id=secret,id2=secret2``), ``INGEST_SECRET_FILE`` (key id
    ``default``), or else ``HMAC_PRODUCER_SECRET`` / ``_FILE`` under ``HMAC_PRODUCER_KEY_ID``.
    """
    environ = os.environ if env is None else env
    secrets: dict[str, bytes] = {}
    for item in filter(
        None, (part.strip() for part in environ.get("INGEST_SECRETS", "").split(","))
    ):
        key_id, sep, secret = item.partition("=")
        if not sep or not key_id or not secret:
            raise ConfigError(
                "INGEST_SECRETS must be key_id=secret[,key_id=secret...]",
                variable="INGEST_SECRETS",
            )
        secrets[key_id] = secret.encode()
    if environ.get("INGEST_SECRET_FILE"):
        secrets["default"] = _read_secret_file(
            "INGEST_SECRET_FILE", environ["INGEST_SECRET_FILE"]
        ).get()
    if not secrets:
        key_id = environ.get("HMAC_PRODUCER_KEY_ID") or "default"
        if environ.get("HMAC_PRODUCER_SECRET"):
            secrets[key_id] = environ["HMAC_PRODUCER_SECRET"].encode()
        elif environ.get("HMAC_PRODUCER_SECRET_FILE"):
            secrets[key_id] = _read_secret_file(
                "HMAC_PRODUCER_SECRET_FILE", environ["HMAC_PRODUCER_SECRET_FILE"]
            ).get()
    if not secrets:
        raise ConfigError(
            "the ingest server needs INGEST_SECRETS, INGEST_SECRET_FILE or HMAC_PRODUCER_SECRET",
            variable="INGEST_SECRETS",
        )
    for name, value in secrets.items():
        if len(value) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"ingest secret {name!r} must be at least {MIN_SECRET_BYTES} bytes",
                variable="INGEST_SECRETS",
            )
    return secrets


def otel_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the OTEL_* variables, for commands that set up telemetry without a BridgeConfig."""
    environ = os.environ if env is None else env
    return {k: v for k, v in environ.items() if k.startswith("OTEL_")}
