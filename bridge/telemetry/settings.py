"""Logs, the health endpoints and the OpenTelemetry switches: the telemetry settings.

Each field declares its environment name and bounds once (see :mod:`bridge.core.settings`);
:meth:`TelemetryConfig.check` applies them at start, with the log level, the health host and the
OTEL_* variables.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Final, Literal

import msgspec

from bridge.core.settings import Setting, check_bounds
from bridge.errors import ConfigError
from bridge.telemetry.otel_env import validate_otel_endpoints, validate_otel_env

__all__ = ["TelemetryConfig"]

_HOST_LABEL: Final = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class TelemetryConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Logs, health port and OpenTelemetry switches."""

    log_level: Annotated[str, Setting("BRIDGE_LOG_LEVEL")] = "INFO"
    # auto: a human line on a terminal, JSON otherwise (a container, a pipe, a log shipper).
    log_format: Annotated[Literal["json", "text", "auto"], Setting("BRIDGE_LOG_FORMAT")] = "auto"
    health_port: Annotated[
        int, Setting("BRIDGE_HEALTH_PORT", ge=0, le=65535, note="0 disables")
    ] = 8081
    # Probes come from the kubelet / compose network.
    health_host: Annotated[str, Setting("BRIDGE_HEALTH_HOST")] = "0.0.0.0"  # noqa: S104
    status_interval_s: Annotated[
        float, Setting("BRIDGE_STATUS_INTERVAL_SECONDS", positive=True, echo=False)
    ] = 5.0
    otel_env: dict[str, str] = msgspec.field(default_factory=dict)
    summary_interval_s: Annotated[
        float, Setting("BRIDGE_SUMMARY_INTERVAL_SECONDS", ge=0, note="0 disables")
    ] = 10.0

    def __repr__(self) -> str:
        # OTEL_EXPORTER_OTLP_HEADERS often carries an API key: show variable names only.
        return (
            f"TelemetryConfig(log_level={self.log_level!r}, log_format={self.log_format!r}, "
            f"health_port={self.health_port}, health_host={self.health_host!r}, "
            f"status_interval_s={self.status_interval_s}, otel_env=<{sorted(self.otel_env)}>, "
            f"summary_interval_s={self.summary_interval_s})"
        )

    def check(self) -> None:
        """Check the log level, the bounds, the health address and the OTEL_* values at start."""
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(
                f"BRIDGE_LOG_LEVEL must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got "
                f"{self.log_level!r}",
                variable="BRIDGE_LOG_LEVEL",
            )
        check_bounds(self)
        if not _is_host(self.health_host):
            raise ConfigError(
                "BRIDGE_HEALTH_HOST must be an IP address or a host name, got "
                f"{self.health_host!r}",
                variable="BRIDGE_HEALTH_HOST",
            )
        validate_otel_env(self.otel_env)
        validate_otel_endpoints(self.otel_env)


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
