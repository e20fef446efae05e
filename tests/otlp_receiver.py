"""A real OTLP/HTTP (protobuf) receiver on 127.0.0.1 for the telemetry tests.

It accepts ``POST /v1/traces`` and ``POST /v1/metrics``, decodes the bodies with the
opentelemetry-proto messages, keeps what it received, and answers 200 with an empty
``Export*ServiceResponse`` - enough for the SDK's OTLP/HTTP exporters of a ``signal-bridge run``
child process to export to. The server runs in a background thread; use it as a context manager.
"""

from __future__ import annotations

import gzip
import threading
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Final

# google.protobuf ships no type stubs (types-protobuf is not a dependency).
from google.protobuf.message import DecodeError  # type: ignore[import-untyped,unused-ignore]
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric

__all__ = ["OtlpReceiver", "ReceivedMetric", "ReceivedSpan", "attributes_of"]

_MAX_BODY_BYTES: Final = 16 * 1024 * 1024
_SOCKET_TIMEOUT_S: Final = 10.0

Value = str | bool | int | float | bytes | list[object] | dict[str, object] | None


def _value(value: AnyValue) -> Value:
    """Convert an OTLP AnyValue into the plain Python value it holds."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "int_value":
        return value.int_value
    if kind == "double_value":
        return value.double_value
    if kind == "bytes_value":
        return value.bytes_value
    if kind == "array_value":
        return [_value(item) for item in value.array_value.values]
    if kind == "kvlist_value":
        return attributes_of(value.kvlist_value.values)
    return None


def attributes_of(pairs: Iterable[KeyValue]) -> dict[str, object]:
    """Turn repeated OTLP KeyValue pairs into a dict."""
    return {pair.key: _value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class ReceivedSpan:
    """One exported span, flattened with its resource and scope."""

    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, object]
    resource: dict[str, object]
    scope: str
    status_code: int
    events: list[tuple[str, dict[str, object]]]


@dataclass(frozen=True)
class ReceivedMetric:
    """One exported metric (all its data points), with its resource and scope."""

    name: str
    resource: dict[str, object]
    scope: str
    metric: Metric

    def points(self) -> list[dict[str, object]]:
        """Return each data point's attributes (counters, gauges and histograms alike)."""
        kind = self.metric.WhichOneof("data")
        if kind is None:
            return []
        data = getattr(self.metric, kind)
        return [attributes_of(point.attributes) for point in data.data_points]


class OtlpReceiver:
    """An OTLP/HTTP protobuf receiver on a free loopback port, serving from a thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.trace_requests: list[ExportTraceServiceRequest] = []
        self.metric_requests: list[ExportMetricsServiceRequest] = []
        self.bad_requests: list[str] = []
        self._lock = threading.Lock()
        self._server = _Server((host, 0), _Handler)
        self._server.receiver = self
        self.port = int(self._server.server_address[1])
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="otlp-receiver",
            daemon=True,
        )

    @property
    def endpoint(self) -> str:
        """The base URL to put in OTEL_EXPORTER_OTLP_ENDPOINT."""
        return f"http://{self.host}:{self.port}"

    def __enter__(self) -> OtlpReceiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving and close the listening socket."""
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=10)
        self._server.server_close()

    def _store(self, path: str, body: bytes) -> bool:
        """Decode and keep one export request; False for an unknown path or a bad body."""
        try:
            if path == "/v1/traces":
                traces = ExportTraceServiceRequest.FromString(body)
                with self._lock:
                    self.trace_requests.append(traces)
                return True
            if path == "/v1/metrics":
                metrics = ExportMetricsServiceRequest.FromString(body)
                with self._lock:
                    self.metric_requests.append(metrics)
                return True
        except DecodeError as exc:
            with self._lock:
                self.bad_requests.append(f"{path}: {exc}")
            return False
        with self._lock:
            self.bad_requests.append(f"unknown path {path}")
        return False

    def spans(self) -> list[ReceivedSpan]:
        """Every span received so far, in arrival order."""
        with self._lock:
            requests = list(self.trace_requests)
        return list(_flatten_spans(requests))

    def metrics(self) -> list[ReceivedMetric]:
        """Every metric received so far (one per export and scope), in arrival order."""
        with self._lock:
            requests = list(self.metric_requests)
        return list(_flatten_metrics(requests))

    def metric_names(self) -> set[str]:
        """Names of all metrics received so far."""
        return {metric.name for metric in self.metrics()}


def _flatten_spans(requests: Iterable[ExportTraceServiceRequest]) -> Iterator[ReceivedSpan]:
    for request in requests:
        for resource_spans in request.resource_spans:
            resource = attributes_of(resource_spans.resource.attributes)
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    yield ReceivedSpan(
                        name=span.name,
                        kind=span.kind,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        attributes=attributes_of(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                        status_code=span.status.code,
                        events=[(e.name, attributes_of(e.attributes)) for e in span.events],
                    )


def _flatten_metrics(
    requests: Iterable[ExportMetricsServiceRequest],
) -> Iterator[ReceivedMetric]:
    for request in requests:
        for resource_metrics in request.resource_metrics:
            resource = attributes_of(resource_metrics.resource.attributes)
            for scope_metrics in resource_metrics.scope_metrics:
                for metric in scope_metrics.metrics:
                    yield ReceivedMetric(
                        name=metric.name,
                        resource=resource,
                        scope=scope_metrics.scope.name,
                        metric=metric,
                    )


class _Server(ThreadingHTTPServer):
    """Handler threads are daemons and are not joined: a kept-alive exporter socket may idle."""

    daemon_threads = True
    block_on_close = False
    receiver: OtlpReceiver


class _Handler(BaseHTTPRequestHandler):
    """POST /v1/traces and /v1/metrics with a protobuf body; HTTP/1.1 keep-alive."""

    protocol_version = "HTTP/1.1"
    timeout = _SOCKET_TIMEOUT_S
    server: _Server

    def do_POST(self) -> None:
        """Decode one export request and answer 200 with an empty response message."""
        length = int(self.headers.get("Content-Length") or 0)
        if length > _MAX_BODY_BYTES:
            self._answer(413, b"")
            self.close_connection = True
            return
        body = self.rfile.read(length)
        encoding = (self.headers.get("Content-Encoding") or "").lower()
        if encoding == "gzip":
            body = gzip.decompress(body)
        elif encoding == "deflate":
            body = zlib.decompress(body)
        path = self.path.split("?", 1)[0]
        if not self.server.receiver._store(path, body):
            self._answer(404 if path not in ("/v1/traces", "/v1/metrics") else 400, b"")
            return
        response = (
            ExportTraceServiceResponse() if path == "/v1/traces" else ExportMetricsServiceResponse()
        )
        self._answer(200, response.SerializeToString())

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Stay quiet: the tests assert on what was received, not on access lines."""
        del format, args
