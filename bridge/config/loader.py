"""Typed settings from ``config/bridge.toml`` plus environment overrides.

This is the only module that reads ``os.environ`` for the bridge's settings. Each subsystem
declares its own settings struct (:mod:`bridge.edge.settings`, :mod:`bridge.streams.settings`,
:mod:`bridge.telemetry.settings`): one environment name and one key in a TOML section per field;
the environment wins. This module reads the file and the environment, composes
:class:`BridgeConfig` from the three structs and turns every refusal into a ConfigError naming
the variable an operator would set.
"""

from __future__ import annotations

import functools
import math
import os
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import msgspec

from bridge.core.secrets import Secret, key_fingerprint, read_secret_file, redact_url
from bridge.core.settings import Declared, declared, parse_env
from bridge.edge.proxy import PROXY_VARIABLES
from bridge.edge.settings import OutboundConfig
from bridge.errors import ConfigError
from bridge.streams.settings import StreamConfig
from bridge.telemetry.settings import TelemetryConfig

__all__ = [
    "CHECK_ORDER",
    "BridgeConfig",
    "declared_settings",
    "default_consumer_name",
    "effective_settings",
    "load_config",
    "setting_names",
]


class BridgeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """All settings of one bridge process."""

    outbound: OutboundConfig = msgspec.field(default_factory=OutboundConfig)
    stream: StreamConfig = msgspec.field(default_factory=StreamConfig)
    telemetry: TelemetryConfig = msgspec.field(default_factory=TelemetryConfig)

    def check(self) -> BridgeConfig:
        """Run each subsystem's start-up checks; return self so it chains."""
        self.outbound.check()
        self.stream.check()
        self.telemetry.check()
        return self


_SECTIONS: Final[dict[str, type[msgspec.Struct]]] = {
    "outbound": OutboundConfig,
    "stream": StreamConfig,
    "telemetry": TelemetryConfig,
}

# The order `check` lists the settings in, as operators have read it so far. A test keeps it
# equal to the declared settings, so a new setting fails that test until it is placed here.
CHECK_ORDER: Final = (
    "HMAC_PRODUCER_ENABLED",
    "HMAC_PRODUCER_SECRET",
    "HMAC_PRODUCER_KEY_ID",
    "OUTBOUND_SIGNATURE_VERSION",
    "OUTBOUND_SIGNATURE_SCHEME",
    "OUTBOUND_ED25519_KEY_FILE",
    "OUTBOUND_ED25519_NEXT_KEY_FILE",
    "PRODUCER_ID",
    "OUTBOUND_SERVER_URL",
    "OUTBOUND_TIMEOUT_SECONDS",
    "OUTBOUND_MAX_BODY_SIZE",
    "OUTBOUND_CA_BUNDLE",
    "OUTBOUND_CLIENT_CERT",
    "OUTBOUND_CLIENT_KEY",
    "OUTBOUND_MAX_CONNECTIONS",
    "BRIDGE_REDIS_URL",
    "BRIDGE_STREAM",
    "BRIDGE_STREAMS",
    "BRIDGE_REDIS_CLUSTER",
    "BRIDGE_GROUP",
    "BRIDGE_CONSUMER",
    "BRIDGE_DLQ_STREAM",
    "BRIDGE_DEAD_LETTER_MAX_BYTES",
    "BRIDGE_RECEIPTS",
    "BRIDGE_RECEIPTS_MAXLEN",
    "BRIDGE_RECEIPTS_MAX_AGE_SECONDS",
    "BRIDGE_START_ID",
    "BRIDGE_MAX_IN_FLIGHT",
    "BRIDGE_CLAIM_IDLE_MS",
    "BRIDGE_MAX_DELIVERIES",
    "BRIDGE_SIGNAL_MAX_AGE_SECONDS",
    "BRIDGE_MAX_CLOCK_AHEAD_SECONDS",
    "BRIDGE_INSTRUMENT_PATTERN",
    "BRIDGE_BATCH_SIZE",
    "BRIDGE_BLOCK_MS",
    "BRIDGE_SHUTDOWN_GRACE_SECONDS",
    "BRIDGE_LOG_LEVEL",
    "BRIDGE_LOG_FORMAT",
    "BRIDGE_HEALTH_PORT",
    "BRIDGE_HEALTH_HOST",
    "BRIDGE_STATUS_INTERVAL_SECONDS",
    "BRIDGE_LANE_STALL_WARN_SECONDS",
    "OUTBOUND_SUCCESS_STATUSES",
    "OUTBOUND_SYSTEMIC_STATUSES",
    "OUTBOUND_REJECT_STATUSES",
    "BRIDGE_PROBE_INTERVAL_MS",
    "BRIDGE_BACKOFF_BASE_MS",
    "BRIDGE_BACKOFF_CAP_MS",
    "BRIDGE_BREAKER_THRESHOLD",
    "BRIDGE_RETRY_AFTER_CAP_SECONDS",
    "BRIDGE_TRIM_ACKED",
    "BRIDGE_TRIM_INTERVAL_SECONDS",
    "BRIDGE_CONSUMER_EXPIRE_SECONDS",
    "BRIDGE_SUMMARY_INTERVAL_SECONDS",
    "OUTBOUND_MAX_RESPONSE_BYTES",
    "OUTBOUND_MAX_RESPONSE_HEAD_BYTES",
    "OUTBOUND_MAX_RESPONSE_HEADERS",
    "OUTBOUND_CONNECT_TIMEOUT_SECONDS",
    "OUTBOUND_TCP_USER_TIMEOUT_SECONDS",
    "OUTBOUND_PROXY_URL",
    "BRIDGE_ORDERING",
    "BRIDGE_LEASE_TTL_MS",
    "BRIDGE_LEASE_RENEW_MS",
    "BRIDGE_HEARTBEAT_TTL_MS",
)


@functools.cache
def declared_settings() -> dict[str, tuple[str, Declared]]:
    """Every declared setting by environment name: (section, declaration), in section order."""
    return {
        item.setting.env: (section, item)
        for section, struct in _SECTIONS.items()
        for item in declared(struct)
    }


@functools.cache
def _variable_of() -> dict[tuple[str, str], str]:
    """(section, field) -> environment name, to name the variable when a file value is bad."""
    return {(section, item.field): env for env, (section, item) in declared_settings().items()}


def setting_names() -> list[str]:
    """Every environment variable the settings structs declare, in the order `check` lists them."""
    return list(CHECK_ORDER)


def effective_settings(config: BridgeConfig) -> list[tuple[str, str]]:
    """(variable, value) for every declared setting and each OTEL_* variable, secrets hidden.

    The secret shows as its fingerprint, Redis and proxy passwords as ``***``, OTLP headers (API
    keys) and any OTEL_* value that may carry credentials as ``***``.
    """
    settings = declared_settings()
    rows: list[tuple[str, str]] = []
    for variable in CHECK_ORDER:
        section, item = settings[variable]
        value = getattr(getattr(config, section), item.field)
        if isinstance(value, Secret):
            shown = f"*** (sha256 {key_fingerprint(value.get())})" if len(value) else "(empty)"
        elif value is None:
            shown = "(unset)"
        elif isinstance(value, bool):
            shown = str(value).lower()
        elif isinstance(value, list):
            shown = ",".join(str(part) for part in value) or "(unset)"
        elif item.setting.redact:
            shown = redact_url(value)
        else:
            shown = str(value)
        rows.append((variable, shown))
    for variable, value in sorted(config.telemetry.otel_env.items()):
        hidden = "HEADERS" in variable or "KEY" in variable or "PASSWORD" in variable
        rows.append((variable, "***" if hidden else redact_url(value)))
    return rows


def _variable(section: str, field: str) -> str:
    return _variable_of().get((section, field), f"[{section}].{field}")


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
        if "redis_password" in values:
            raise ConfigError(
                f"config file {path}: put the Redis password in BRIDGE_REDIS_PASSWORD_FILE, "
                "not in the file",
                variable="BRIDGE_REDIS_PASSWORD_FILE",
            )
        if "secret" in values:
            raise ConfigError(
                f"config file {path}: put the secret in HMAC_PRODUCER_SECRET or "
                "HMAC_PRODUCER_SECRET_FILE, not in the file",
                variable="HMAC_PRODUCER_SECRET",
            )
        sections[section] = dict(values)
    return sections


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
    for section, struct in _SECTIONS.items():
        for field, value in parse_env(struct, environ):
            sections.setdefault(section, {})[field] = value
    secret_file = environ.get("HMAC_PRODUCER_SECRET_FILE")
    if secret_file and not environ.get("HMAC_PRODUCER_SECRET"):
        sections.setdefault("outbound", {})["secret"] = read_secret_file(
            "HMAC_PRODUCER_SECRET_FILE", secret_file
        )
    redis_password_file = environ.get("BRIDGE_REDIS_PASSWORD_FILE")
    if redis_password_file:
        sections.setdefault("stream", {})["redis_password"] = read_secret_file(
            "BRIDGE_REDIS_PASSWORD_FILE", redis_password_file
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
    built = {
        section: _build(section, struct, sections.get(section, {}))
        for section, struct in _SECTIONS.items()
    }
    return BridgeConfig(**built).check()  # type: ignore[arg-type]


def _build(section: str, struct: type[msgspec.Struct], values: dict[str, Any]) -> msgspec.Struct:
    """Convert one section's values to its struct; every refusal becomes a ConfigError."""
    try:
        built = msgspec.convert(values, struct, from_attributes=False)
    except msgspec.ValidationError as exc:
        named, message = _translate(section, str(exc))
        raise ConfigError(f"[{section}] {message}", variable=named) from None
    for name in struct.__struct_fields__:
        value = getattr(built, name)
        if isinstance(value, float) and not math.isfinite(value):
            env_name = _variable(section, name)
            raise ConfigError(f"{env_name} must be a finite number", variable=env_name)
        _check_text(section, name, value)
    return built


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
