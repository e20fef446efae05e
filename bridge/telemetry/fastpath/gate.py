"""One start-up check that says whether the SDK mirrors in ``fastpath`` may run at all.

The lean tracer and span (``tracing``, ``spans``), the local histograms (``histograms``,
``histogram_export``), the OTLP encoder (``otlp``, ``otlp_export``), the trace-header
shortcuts (``propagation``) and the current-context reads (``current``) copy behaviour of the
OpenTelemetry SDK and read its private names. They are proven equal to the SDK only by the
differential tests, run against the versions in ``VERIFIED_VERSIONS``. ``fast_paths()`` checks,
once per process, that the installed SDK is such a version and that every private name the
mirrors read still exists; if either fails, every fast path is off at once, the stock SDK runs,
and one INFO line names the version and the missing names. Every mirror asks ``fast_paths()``.

To verify a new release: ``scripts/check-latest-otel.sh`` runs the differential tests against it;
when they pass, add its version here.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, Final

__all__ = ["CHECKED_DISTRIBUTIONS", "VERIFIED_VERSIONS", "FastPaths", "check", "fast_paths"]

# SDK releases whose differential tests passed (api, sdk and the OTLP exporters share a number).
VERIFIED_VERSIONS: frozenset[str] = frozenset({"1.45.2"})

# The distributions whose private code the mirrors copy; each must be a verified version.
CHECKED_DISTRIBUTIONS: Final = (
    "opentelemetry-api",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "opentelemetry-exporter-otlp-proto-common",
)

# Private module-level names, by module: (module, name).
_MODULE_NAMES: Final = (
    ("opentelemetry.sdk.trace._tracer_metrics", "NoOpTracerMetrics"),
    ("opentelemetry.context", "_RUNTIME_CONTEXT._current_context"),
    (
        "opentelemetry.trace.propagation.tracecontext",
        "TraceContextTextMapPropagator._TRACEPARENT_HEADER_FORMAT_RE",
    ),
    (
        "opentelemetry.trace.propagation.tracecontext",
        "TraceContextTextMapPropagator._TRACEPARENT_MAXIMUM_LENGTH",
    ),
    ("opentelemetry.exporter.otlp.proto.http._common", "_is_request_too_large"),
    ("opentelemetry.exporter.otlp.proto.http._common", "RequestPayloadTooLargeError"),
    ("opentelemetry.exporter.otlp.proto.common._internal", "_encode_value"),
    ("opentelemetry.exporter.prometheus", "PrometheusMetricReader._receive_metrics"),
    ("opentelemetry.exporter.otlp.common.http", "_OTLPHTTPClient.export"),
    ("opentelemetry.exporter.otlp.common._exporter_metrics", "ExporterMetrics.export_operation"),
    (
        "opentelemetry.exporter.otlp.common._exporter_metrics",
        "NoOpExporterMetrics.export_operation",
    ),
)

# What the SDK's OTLP/HTTP span exporter sets in ``__init__``, read from its code: building one
# would import its HTTP stack, which a bridge without an OTLP endpoint never needs.
_EXPORTER_ATTRIBUTES: Final = ("_shutdown", "_max_request_size", "_client", "_metrics")

# Private attributes of live SDK objects, by the probe that builds one (see ``_probes``).
_OBJECT_NAMES: Final = (
    ("TracerProvider", "_active_span_processor._span_processors"),
    ("TracerProvider", "_disabled"),
    ("TracerProvider", "sampler"),
    ("TracerProvider", "id_generator.is_trace_id_random"),
    ("Tracer", "_span_limits"),
    ("Tracer", "_instrumentation_scope"),
    ("Tracer", "_tracer_metrics"),
    ("Tracer", "_is_enabled"),
    ("ParentBased", "_remote_parent_sampled"),
    ("ParentBased", "_local_parent_sampled"),
    ("ParentBased", "_remote_parent_not_sampled"),
    ("ParentBased", "_local_parent_not_sampled"),
    ("TraceFlags", "random_trace_id"),
    ("MeterProvider", "_sdk_config.exemplar_filter"),
    ("MetricExporter", "_preferred_temporality"),
    ("MetricExporter", "_preferred_aggregation"),
    ("CompositePropagator", "_propagators"),
)

_logger = logging.getLogger("bridge.telemetry")


@dataclass(frozen=True, kw_only=True)
class FastPaths:
    """The gate's verdict: whether the mirrors run, and why not when they do not."""

    enabled: bool
    versions: dict[str, str | None]
    unverified: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()

    def describe(self) -> str:
        """Say in one line which installed versions or private names failed the check."""
        reasons = []
        if self.unverified:
            verified = ", ".join(sorted(VERIFIED_VERSIONS))
            reasons.append(f"{', '.join(self.unverified)} not verified (verified: {verified})")
        if self.missing:
            sdk = self.versions.get("opentelemetry-sdk")
            reasons.append(f"opentelemetry-sdk {sdk} lacks {', '.join(self.missing)}")
        return "; ".join(reasons) or "verified"


def _version(distribution: str) -> str | None:
    """Return the installed version of ``distribution`` (None if it is not installed)."""
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


def _has_path(target: object, path: str) -> bool:
    """Say whether the dotted attribute ``path`` resolves on ``target``."""
    for part in path.split("."):
        if not hasattr(target, part):
            return False
        target = getattr(target, part)
    return True


def _probes() -> dict[str, Callable[[], Any]]:
    """Builders of throw-away SDK objects whose attributes the mirrors read."""
    from opentelemetry.propagators.composite import CompositePropagator  # noqa: PLC0415
    from opentelemetry.sdk.metrics import MeterProvider  # noqa: PLC0415
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter  # noqa: PLC0415
    from opentelemetry.sdk.trace import TracerProvider  # noqa: PLC0415
    from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ParentBased  # noqa: PLC0415
    from opentelemetry.trace import TraceFlags  # noqa: PLC0415

    return {
        "TracerProvider": lambda: TracerProvider(shutdown_on_exit=False),
        "Tracer": lambda: TracerProvider(shutdown_on_exit=False).get_tracer("probe"),
        "ParentBased": lambda: ParentBased(ALWAYS_OFF),
        "TraceFlags": lambda: TraceFlags(0),
        "MeterProvider": lambda: MeterProvider(shutdown_on_exit=False),
        "MetricExporter": lambda: ConsoleMetricExporter(out=io.StringIO()),
        "CompositePropagator": lambda: CompositePropagator([]),
    }


def _missing_names() -> list[str]:
    """Name every private SDK piece the mirrors read that the installed SDK lacks."""
    missing: list[str] = []
    for module_name, path in _MODULE_NAMES:
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            missing.append(module_name)
            continue
        if not _has_path(module, path):
            missing.append(f"{module_name}.{path}")
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # noqa: PLC0415
            OTLPSpanExporter,
        )
    except ImportError:
        missing.append("opentelemetry.exporter.otlp.proto.http.trace_exporter")
    else:
        assigned = OTLPSpanExporter.__init__.__code__.co_names
        missing.extend(
            f"OTLPSpanExporter.{name}" for name in _EXPORTER_ATTRIBUTES if name not in assigned
        )
    probes = _probes()
    built: dict[str, Any] = {}
    for probe, path in _OBJECT_NAMES:
        if probe not in built:
            built[probe] = probes[probe]()
        if not _has_path(built[probe], path):
            missing.append(f"{probe}.{path}")
    for probe in built.values():
        shutdown = getattr(probe, "shutdown", None)
        if callable(shutdown):
            shutdown()
    return missing


def check(verified: Iterable[str] = VERIFIED_VERSIONS) -> FastPaths:
    """Decide whether the mirrors may run on the installed SDK (logs nothing)."""
    allowed = frozenset(verified)
    versions = {name: _version(name) for name in CHECKED_DISTRIBUTIONS}
    unverified = tuple(
        f"{name} {version}" for name, version in versions.items() if version not in allowed
    )
    missing = tuple(_missing_names())
    return FastPaths(
        enabled=not unverified and not missing,
        versions=versions,
        unverified=unverified,
        missing=missing,
    )


@functools.cache
def fast_paths() -> FastPaths:
    """Return the process's verdict, checked on first use; log one INFO line if it is off."""
    verdict = check(VERIFIED_VERSIONS)
    if not verdict.enabled:
        _logger.info("OpenTelemetry fast paths off, the stock SDK runs: %s", verdict.describe())
    return verdict
