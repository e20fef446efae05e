"""The OTEL_* variables, checked the way the OpenTelemetry SDK's auto-configuration reads them.

Exporter names are the SDK's entry points (groups ``opentelemetry_<signal>_exporter``); ``otlp``
picks the gRPC or HTTP exporter by OTEL_EXPORTER_OTLP[_<SIGNAL>]_PROTOCOL. Where the SDK would
log a warning and fall back (or send to localhost), the bridge refuses to start instead. Pure
functions of a mapping: the config loader (or, for commands without a BridgeConfig,
:func:`otel_environment`) reads the environment and passes the OTEL_* part.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping
from importlib.metadata import entry_points
from typing import Final

from bridge.core.secrets import redact_url
from bridge.core.urls import split_url
from bridge.errors import ConfigError

__all__ = [
    "OTEL_SIGNALS",
    "OTLP_DEFAULT_PROTOCOL",
    "otel_environment",
    "otel_exporter_names",
    "otlp_protocol",
    "validate_otel_endpoints",
    "validate_otel_env",
]

OTEL_SIGNALS: Final = ("traces", "metrics", "logs")
OTLP_DEFAULT_PROTOCOL: Final = "http/protobuf"  # the specification's recommended default
_OTLP_EXPORTER_OF: Final = {"grpc": "otlp_proto_grpc", "http/protobuf": "otlp_proto_http"}
_OTLP_NAMES: Final = frozenset({"otlp", *_OTLP_EXPORTER_OF.values()})
# Exporters the SDK offers that the bridge does not run, and why.
_UNSUPPORTED_EXPORTERS: Final = {
    ("metrics", "prometheus"): "Prometheus text is served on /metrics of BRIDGE_HEALTH_PORT",
}
_SAMPLERS: Final = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)


@functools.cache
def _entry_point_names(group: str) -> frozenset[str]:
    """Names registered under an entry-point group (scanned once: installs do not change)."""
    return frozenset(ep.name for ep in entry_points(group=group))


def _installed_exporters(signal: str) -> frozenset[str]:
    """List the exporter names the installed OpenTelemetry packages register for ``signal``."""
    return _entry_point_names(f"opentelemetry_{signal}_exporter")


def otlp_protocol(env: Mapping[str, str], signal: str) -> str:
    """Return the OTLP protocol of ``signal``: its variable, the general one, or the default."""
    for variable in (
        f"OTEL_EXPORTER_OTLP_{signal.upper()}_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ):
        value = env.get(variable, "").strip()
        if value:
            if value not in _OTLP_EXPORTER_OF:
                why = (
                    "is not supported by the Python OTLP exporters"
                    if value == "http/json"
                    else "is not an OTLP protocol"
                )
                raise ConfigError(
                    f"{variable}={value!r} {why}; use grpc or http/protobuf", variable=variable
                )
            return value
    return OTLP_DEFAULT_PROTOCOL


def otel_exporter_names(env: Mapping[str, str], signal: str) -> list[str]:
    """Return the SDK exporter entry points to run for ``signal`` (``otlp_proto_http`` ...).

    Empty for ``none`` and for OTLP without any endpoint configured (nothing is sent to a default
    localhost collector). ConfigError for a name the SDK does not have or the bridge does not run.
    """
    variable = f"OTEL_{signal.upper()}_EXPORTER"
    # The specification's default is otlp (which, without an endpoint, exports nothing here).
    # The bridge exports no logs through OpenTelemetry: unset means none for them.
    raw = env.get(variable, "otlp" if signal != "logs" else "none").strip().lower()
    if raw in ("", "none"):
        return []
    if signal == "logs":
        raise ConfigError(
            f"{variable}={raw!r} is not supported: signal-bridge writes its logs as JSON lines "
            "on stdout (unset it or set none)",
            variable=variable,
        )
    installed = _installed_exporters(signal)
    names: list[str] = []
    for name in (part.strip() for part in raw.split(",")):
        if name == "none":
            continue
        reason = _UNSUPPORTED_EXPORTERS.get((signal, name))
        if reason is not None:
            raise ConfigError(f"{variable}={name!r} is not supported: {reason}", variable=variable)
        if name not in installed:
            offered = sorted(installed - {n for s, n in _UNSUPPORTED_EXPORTERS if s == signal})
            raise ConfigError(
                f"{variable}: unknown exporter {name!r} (available: {', '.join(offered)}, none)",
                variable=variable,
            )
        if name in _OTLP_NAMES:
            protocol = otlp_protocol(env, signal)
            if not (
                env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get(f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT")
            ):
                continue
            name = _OTLP_EXPORTER_OF[protocol] if name == "otlp" else name  # noqa: PLW2901
        if name not in names:
            names.append(name)
    return names


def validate_otel_env(env: Mapping[str, str]) -> None:
    """Refuse OTEL_* values the SDK would ignore, warn about, or quietly replace.

    The endpoint URLs are checked by :func:`validate_otel_endpoints`.
    """
    disabled = env.get("OTEL_SDK_DISABLED", "").strip().lower()
    if disabled not in ("", "true", "false"):
        raise ConfigError(
            f"OTEL_SDK_DISABLED must be true or false, got {env['OTEL_SDK_DISABLED']!r}",
            variable="OTEL_SDK_DISABLED",
        )
    for signal in OTEL_SIGNALS:
        otlp_protocol(env, signal)
    if disabled == "true":
        return
    for signal in OTEL_SIGNALS:
        otel_exporter_names(env, signal)
    sampler = env.get("OTEL_TRACES_SAMPLER", "").strip().lower()
    if sampler and sampler not in _SAMPLERS:
        known = _SAMPLERS | _entry_point_names("opentelemetry_traces_sampler")
        if sampler not in known:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER: unknown sampler {sampler!r} "
                f"(available: {', '.join(sorted(known))})",
                variable="OTEL_TRACES_SAMPLER",
            )
    arg = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if arg and sampler.endswith("traceidratio"):
        try:
            ratio = float(arg)
        except ValueError:
            ratio = math.nan
        if not 0.0 <= ratio <= 1.0:
            raise ConfigError(
                f"OTEL_TRACES_SAMPLER_ARG must be a ratio between 0 and 1, got {arg!r}",
                variable="OTEL_TRACES_SAMPLER_ARG",
            )


def validate_otel_endpoints(env: Mapping[str, str]) -> None:
    """Refuse an OTLP endpoint that is not an http(s) URL with a host (named, redacted)."""
    for signal in OTEL_SIGNALS:
        for variable in (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            f"OTEL_EXPORTER_OTLP_{signal.upper()}_ENDPOINT",
        ):
            endpoint = env.get(variable, "").strip()
            if not endpoint:
                continue
            parts = split_url(variable, endpoint)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ConfigError(
                    f"{variable} must be an http(s) URL, got {redact_url(endpoint)!r}",
                    variable=variable,
                )


def otel_environment(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return the OTEL_* variables, for commands that set up telemetry without a BridgeConfig."""
    environ = os.environ if env is None else env
    return {k: v for k, v in environ.items() if k.startswith("OTEL_")}
