"""The SDK's OTLP/HTTP span exporter with only the encoding replaced (``fastpath.otlp``).

Settings (every OTEL_EXPORTER_OTLP_* variable), sending, retries, size limit and shutdown stay
the SDK's. When ``fast_paths()`` is off (an SDK the encoder is not verified on), it exports
exactly as the stock one does.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExportResult

from bridge.telemetry.fastpath.gate import fast_paths
from bridge.telemetry.fastpath.otlp import encode_spans

__all__ = ["OtlpHttpSpanExporter"]

_logger = logging.getLogger("bridge.otlp_export")


class OtlpHttpSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/HTTP span exporter, encoding with ``encode_spans`` (about 10x cheaper).

    The SDK still reads every OTEL_EXPORTER_OTLP_* setting and sends (retries, size limit,
    timeout, compression, shutdown). When ``fast_paths()`` is off it exports exactly as the
    stock one does.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:  # noqa: ANN401 - the SDK's arguments
        """Build the SDK's exporter; encode with ``encode_spans`` only if the gate allows it."""
        super().__init__(*args, **kwargs)
        self._fast_encoding = fast_paths().enabled

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        """Encode ``spans`` with ``encode_spans`` and send them as the SDK's ``export`` does."""
        if not self._fast_encoding:
            return super().export(spans)
        from opentelemetry.exporter.otlp.proto.http._common import (  # noqa: PLC0415 - checked
            RequestPayloadTooLargeError,
            _is_request_too_large,
        )
        from opentelemetry.semconv.attributes.http_attributes import (  # noqa: PLC0415
            HTTP_RESPONSE_STATUS_CODE,
        )

        if self._shutdown:
            _logger.warning("Exporter already shutdown, ignoring batch")
            return SpanExportResult.FAILURE
        with self._metrics.export_operation(len(spans)) as result:
            try:
                body = encode_spans(spans)
            except Exception as error:
                _logger.exception("Failed to encode span batch")
                result.error = error
                return SpanExportResult.FAILURE
            if _is_request_too_large(body, self._max_request_size):
                _logger.warning(
                    "Dropping span batch: serialized size %d bytes exceeds max_request_size "
                    "%d bytes.",
                    len(body),
                    self._max_request_size,
                )
                result.error = RequestPayloadTooLargeError(
                    f"Serialized span request size {len(body)} bytes exceeds max_request_size "
                    f"{self._max_request_size} bytes."
                )
                return SpanExportResult.FAILURE
            sent = self._client.export(body)
            if not sent.success:
                result.error = sent.error
                result.error_attrs = (
                    {HTTP_RESPONSE_STATUS_CODE: sent.status_code}
                    if sent.status_code is not None
                    else None
                )
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS
