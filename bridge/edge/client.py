"""``HmacClient``: one signed POST to the ingest server, and what its answer means.

The client owns httpx: it signs each attempt afresh (new ``X-Timestamp``, new signature), sends
it on one pooled connection set, and translates every answer through the outcome table
(:mod:`bridge.core.outcome`) so the caller only sees a :class:`Delivery` (any status the table acks:
the server has the signal, whatever its body says) or a :class:`~bridge.errors.DeliveryError`
whose class says duplicate / rejected / systemic / transient.
"""

from __future__ import annotations

import email.utils
import enum
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import TracebackType
from typing import Final, Self
from urllib.parse import urlsplit

import httpx
import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv.attributes import (
    error_attributes,
    http_attributes,
    server_attributes,
    url_attributes,
)

from bridge import __version__
from bridge.core.outcome import Action, OutcomeTable, TransportFailure, Verdict
from bridge.core.secrets import key_fingerprint, redact_url
from bridge.core.signal import Signal, encode_canonical
from bridge.core.signing import Signer
from bridge.core.timestamps import format_timestamp
from bridge.edge.clockskew import SkewEstimator, describe_skew
from bridge.edge.http import OVERSIZED_EXTENSION, FastTransport
from bridge.edge.protocol import Limits
from bridge.edge.settings import OutboundConfig
from bridge.edge.tunnel import ProxyRefusedError
from bridge.errors import (
    AlreadyReceivedError,
    AuthError,
    BridgeError,
    DeliveryError,
    DeliveryTimeoutError,
    InvalidSignalError,
    RejectedError,
    ResponseTooLargeError,
    SystemicError,
    TransientDeliveryError,
)
from bridge.telemetry.logs import log_fields, trace_fields
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.propagation import inject_trace
from bridge.telemetry.tracing import get_tracer

__all__ = [
    "MAX_DETAIL_BYTES",
    "Delivery",
    "HmacClient",
    "IngestResponse",
    "classify_status",
    "cut_detail",
    "outcome_table",
    "parse_retry_after",
]

log = logging.getLogger("bridge.client")

# Error bodies in logs, spans and dead letters: at most this many bytes of UTF-8.
MAX_DETAIL_BYTES: Final = 2048
_MAX_WARNING_BODY_CHARS: Final = 256


class IngestResponse(msgspec.Struct, frozen=True, kw_only=True):
    """The server's answer to an accepted signal."""

    signal_id: str
    status: str
    server_timestamp: datetime
    message: str | None = None
    errors: list[str] | None = None


class Delivery(msgspec.Struct, frozen=True):
    """A successful POST: the server's answer, its status code and how long it took.

    ``response`` is None and ``warning`` says why when the server acknowledged the signal with
    a body that is not the documented IngestResponse (empty, not JSON, odd types), or with an
    answer past a read limit: then ``oversized`` names the limit and the body was never read.
    """

    response: IngestResponse | None
    http_code: int
    duration_s: float
    warning: str | None = None
    oversized: str | None = None


_RESPONSE_DECODER: Final = msgspec.json.Decoder(IngestResponse)
_ANY_DECODER: Final = msgspec.json.Decoder()


_ERROR_OF: Final[dict[Action, type[DeliveryError]]] = {
    Action.ACK_DUPLICATE: AlreadyReceivedError,
    Action.SYSTEMIC: SystemicError,
    Action.DEAD_LETTER: RejectedError,
    Action.TRANSIENT: TransientDeliveryError,
}
_AUTH_CODES: Final = frozenset({401, 403})


def outcome_table(config: OutboundConfig) -> OutcomeTable:
    """Build the outcome table from the OUTBOUND_*_STATUSES settings (validated at load)."""
    return OutcomeTable(
        success=config.success_statuses,
        systemic=config.systemic_statuses,
        reject=config.reject_statuses,
    )


def _error_class(code: int, verdict: Verdict) -> type[DeliveryError] | None:
    """Return the error class an answer raises; None when the table acks it."""
    if verdict.action is Action.ACK:
        return None
    if verdict.action is Action.SYSTEMIC and code in _AUTH_CODES:
        return AuthError
    return _ERROR_OF[verdict.action]


def classify_status(code: int, table: OutcomeTable | None = None) -> type[DeliveryError] | None:
    """Map an HTTP status to the error class it raises; None when the table acks it."""
    verdict = (table or _DEFAULT_TABLE).for_status(code)
    return _error_class(code, verdict)


_DEFAULT_TABLE: Final = OutcomeTable()


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Parse Retry-After (seconds or an HTTP date) into seconds from now; None if absent/bad."""
    if not value:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def cut_detail(content: bytes | str, limit: int = MAX_DETAIL_BYTES) -> str:
    """Return ``content`` as text of at most ``limit`` UTF-8 bytes, noting the original size.

    The one place error bodies are cut for logs, spans and dead letters: a cut text ends with
    ``... [cut: N bytes in all]`` and never splits a UTF-8 character.
    """
    raw = content.encode("utf-8", "replace") if isinstance(content, str) else content
    if len(raw) <= limit:
        return raw.decode("utf-8", "replace")
    note = f"... [cut: {len(raw)} bytes in all]"
    keep = max(0, limit - len(note.encode()))
    head = raw[:keep].decode("utf-8", "ignore")
    while len(head.encode("utf-8")) > keep:  # a replacement character can grow the text
        head = head[:-1]
    return head + note


def _server_details(content: bytes) -> object:
    """Return the server's error body: small JSON decoded, anything else as cut text."""
    if len(content) <= MAX_DETAIL_BYTES:
        try:
            return _ANY_DECODER.decode(content)
        except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
            pass  # bad UTF-8 in a string, nesting past the recursion limit (found by fuzzing)
    return cut_detail(content)


def _is_tls_verification_failure(exc: BaseException) -> bool:
    """Tell whether a connect error comes from a refused certificate (never a retry matter)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError | ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def build_ssl_context(config: OutboundConfig) -> ssl.SSLContext:
    """Verify against the system store, or OUTBOUND_CA_BUNDLE; add the client certificate."""
    context = ssl.create_default_context(cafile=config.ca_bundle)
    if config.client_cert is not None:
        context.load_cert_chain(config.client_cert, config.client_key)
    return context


class _State(enum.Enum):
    UNOPENED = 1
    OPENED = 2
    CLOSED = 3


class HmacClient:
    """Posts HMAC-signed signals over one pooled ``httpx.AsyncClient``.

    Use as ``async with HmacClient(config) as client: await client.post_signal(signal)``.
    A closed client cannot be reopened.
    """

    def __init__(
        self,
        config: OutboundConfig,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        metrics: Metrics | None = None,
        tracer: trace.Tracer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._signer = Signer(config.secret_bytes(), config.producer_id, path=config.ingest_path)
        self._table = outcome_table(config)
        self._url = config.ingest_url
        parts = urlsplit(self._url)
        self._server_address = parts.hostname or ""
        self._server_port = parts.port or (443 if parts.scheme == "https" else 80)
        self._timeout = httpx.Timeout(config.timeout_s)
        self._static_headers = {
            "Content-Type": "application/json",
            "User-Agent": f"signal-bridge/{__version__}",
            "X-Producer-Id": config.producer_id,
        }
        if config.key_id is not None:
            self._static_headers["X-Key-Id"] = config.key_id
        self._proxy, self._proxy_source = config.proxy()
        if transport is None:
            transport = FastTransport(
                self._url,
                ssl_context=build_ssl_context(config) if parts.scheme == "https" else None,
                max_connections=config.max_connections,
                connect_timeout_s=config.connect_timeout_s,
                limits=Limits(
                    max_head_bytes=config.max_response_head_bytes,
                    max_header_lines=config.max_response_headers,
                    max_body_bytes=config.max_response_bytes,
                ),
                proxy=self._proxy,
                tcp_user_timeout_s=config.tcp_user_timeout_s,
            )
        # The hot path talks to FastTransport directly; any other httpx transport (a test's
        # MockTransport, httpx's own) goes through the regular AsyncClient.
        self._fast = transport if isinstance(transport, FastTransport) else None
        self._fast_head = b""
        if self._fast is not None:
            head = self._fast.request_head(
                "POST", config.ingest_path, list(self._static_headers.items())
            )
            self._fast_head = head[:-2]  # drop the blank line: per-request headers follow
        self._client = httpx.AsyncClient(transport=transport, timeout=self._timeout)
        self._metrics = metrics if metrics is not None else Metrics()
        self._tracer = tracer if tracer is not None else get_tracer()
        self._clock = clock
        self._skew = SkewEstimator()
        self._signed_at = 0.0
        self._metrics.observe_clock_skew(self._server_address, lambda: self._skew.skew_s)
        self._state = _State.UNOPENED
        self._span_attributes: dict[str, str | int] = {
            http_attributes.HTTP_REQUEST_METHOD: "POST",
            url_attributes.URL_FULL: self._url,
            server_attributes.SERVER_ADDRESS: self._server_address,
            server_attributes.SERVER_PORT: self._server_port,
        }

    def __repr__(self) -> str:
        return f"HmacClient(url={self._url!r}, producer_id={self._config.producer_id!r})"

    @property
    def max_body_size(self) -> int:
        """The largest canonical body this client will send."""
        return self._config.max_body_size

    @property
    def clock_skew_s(self) -> float | None:
        """The ingest server's clock minus ours (smoothed, from Date headers); None if unknown."""
        return self._skew.skew_s

    @property
    def clock_skew_beyond_warning(self) -> bool:
        """Tell whether the measured skew is over the 30 s warning threshold."""
        return self._skew.beyond_warning

    @property
    def producer_id(self) -> str:
        """The producer id this client signs as."""
        return self._config.producer_id

    async def __aenter__(self) -> Self:
        if self._state is not _State.UNOPENED:
            raise BridgeError("an HmacClient can be opened only once")
        self._state = _State.OPENED
        await self._client.__aenter__()
        log.info(
            "signing key loaded",
            extra=log_fields(
                producer_id=self._config.producer_id,
                key_id=self._config.key_id,
                key_fingerprint=key_fingerprint(self._config.secret_bytes()),
                url=self._url,
            ),
        )
        log.info(
            "outbound proxy: %s",
            f"{redact_url(self._proxy)} (from {self._proxy_source})"
            if self._proxy
            else f"none ({self._proxy_source})",
            extra=log_fields(
                proxy=redact_url(self._proxy) if self._proxy else None,
                proxy_source=self._proxy_source,
            ),
        )
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        if self._state is not _State.CLOSED:
            self._state = _State.CLOSED
            await self._client.aclose()

    def timestamp(self) -> str:
        """Return the current time as RFC 3339 UTC with microseconds and Z (X-Timestamp)."""
        self._signed_at = at = self._clock()
        return format_timestamp(at)

    def _attempt_headers(self, body: bytes, idempotency_key: str) -> dict[str, str]:
        """Build the headers that change with each attempt (the static ones are built once)."""
        timestamp = self.timestamp()
        return {
            "X-Timestamp": timestamp,
            "X-Signature": self._signer.sign(body, timestamp),
            "X-Idempotency-Key": idempotency_key,
        }

    @property
    def table(self) -> OutcomeTable:
        """The outcome table this client judges answers by."""
        return self._table

    async def post_signal(
        self,
        signal: Signal,
        idempotency_key: str | None = None,
        timeout: float | None = None,
    ) -> IngestResponse | None:
        """Validate, encode canonically, sign and POST one signal.

        Returns the server's IngestResponse on a status the table acks (None, with a WARNING
        logged, when its body is not one). Raises InvalidSignalError before sending anything
        when the body is too large; AlreadyReceivedError on 409; RejectedError, SystemicError
        (AuthError for 401/403/TLS) or TransientDeliveryError (DeliveryTimeoutError on a
        timeout) otherwise.
        """
        try:
            body = encode_canonical(signal, max_body_size=self._config.max_body_size)
        except InvalidSignalError as exc:
            self._record("validation_error", None, None)
            log.error(
                "Signal validation failed",
                extra=log_fields(
                    producer_id=self.producer_id,
                    signal_id=signal.signal_id,
                    error=str(exc),
                    error_type=type(exc).__name__,
                ),
            )
            raise
        return await self.post_body(
            body,
            # A fresh UUID unless the caller passes one: a caller that retries must pass the
            # same key each time (the consumer derives it from signal_id or the entry id).
            idempotency_key=idempotency_key or str(uuid.uuid4()),
            timeout=timeout,
            signal_id=signal.signal_id,
        )

    async def post_body(
        self,
        body: bytes,
        *,
        idempotency_key: str,
        timeout: float | None = None,
        signal_id: str | None = None,
    ) -> IngestResponse | None:
        """POST an already canonical body; same results and errors as :meth:`post_signal`."""
        delivery = await self.send_body(
            body, idempotency_key=idempotency_key, timeout=timeout, signal_id=signal_id
        )
        return delivery.response

    async def send_body(
        self,
        body: bytes,
        *,
        idempotency_key: str,
        timeout: float | None = None,
        signal_id: str | None = None,
        context: otel_context.Context | None = None,
    ) -> Delivery:
        """Like :meth:`post_body`, but also return the status code and the duration.

        ``context`` is the parent of the CLIENT span (default: the current context); passing
        it explicitly spares attaching a context on the hot path.
        """
        if self._state is not _State.OPENED:
            raise BridgeError("HmacClient is not open (use 'async with')")
        if len(body) > self._config.max_body_size:
            raise InvalidSignalError(
                f"body is {len(body)} bytes, over the limit of {self._config.max_body_size}"
            )
        headers = self._attempt_headers(body, idempotency_key)
        span = self._tracer.start_span(
            "POST", context=context, kind=trace.SpanKind.CLIENT, attributes=self._span_attributes
        )
        try:
            inject_trace(headers, span, context)
            started = time.perf_counter()
            sent_at = self._signed_at  # the clock reading the signature was made with
            try:
                status, response_headers, content, oversized = await self._exchange(
                    body, headers, timeout
                )
                self._observe_clock(
                    response_headers.get("date"), sent_at, time.perf_counter() - started
                )
                span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, status)
                warning: str | None
                if oversized is not None:
                    result, warning = self._oversized(status, oversized, span, signal_id)
                else:
                    result, warning = self._interpret(status, response_headers, content)
            except DeliveryError as exc:
                self._fail(span, exc, started, signal_id)
                raise
            elapsed = time.perf_counter() - started
            self._record("success", status, elapsed)
            if warning is not None and oversized is None:
                log.warning(
                    "ingest server accepted the signal with an unexpected answer body; acked, "
                    "not posted again",
                    extra=log_fields(
                        **trace_fields(span),
                        producer_id=self.producer_id,
                        signal_id=signal_id,
                        http_code=status,
                        error=warning,
                    ),
                )
            return Delivery(result, status, elapsed, warning, oversized)
        finally:
            span.end()

    async def _exchange(
        self, body: bytes, headers: dict[str, str], timeout: float | None
    ) -> tuple[int, Mapping[str, str], bytes, str | None]:
        """Send one request; return (status, headers, body, oversized). httpx errors become ours.

        ``headers`` are the attempt's own (signature, trace context); the static ones are added
        here.
        """
        timeout_s = self._config.timeout_s if timeout is None else timeout
        try:
            if self._fast is not None:
                # The request line and the static headers were serialised once, at start-up.
                dynamic = "".join([f"{name}: {value}\r\n" for name, value in headers.items()])
                raw = await self._fast.post(
                    b"%b%bContent-Length: %d\r\n\r\n%b"
                    % (self._fast_head, dynamic.encode("latin-1"), len(body), body),
                    timeout_s,
                )
                exchanged: tuple[int, Mapping[str, str], bytes, str | None] = (
                    raw.status,
                    raw.headers,
                    raw.body,
                    raw.oversized,
                )
            else:
                response = await self._client.post(
                    self._url,
                    content=body,
                    headers={**self._static_headers, **headers},
                    timeout=httpx.Timeout(timeout_s),
                )
                oversized = response.extensions.get(OVERSIZED_EXTENSION)
                exchanged = (
                    response.status_code,
                    response.headers,
                    response.content,
                    oversized if isinstance(oversized, str) else None,
                )
        except httpx.ConnectTimeout as exc:
            raise DeliveryTimeoutError(
                f"could not connect to the ingest server within "
                f"{min(timeout_s, self._config.connect_timeout_s):g}s "
                f"(OUTBOUND_CONNECT_TIMEOUT_SECONDS): {exc}"
            ) from exc
        except httpx.TimeoutException as exc:
            raise DeliveryTimeoutError(
                f"no answer from the ingest server within {timeout_s}s"
            ) from exc
        except httpx.ConnectError as exc:
            if _is_tls_verification_failure(exc):
                verdict = self._table.for_failure(TransportFailure.TLS)
                raise AuthError(
                    f"TLS verification of the ingest server failed: {exc}; check "
                    "OUTBOUND_CA_BUNDLE and the server certificate",
                    cause=verdict.cause,
                ) from exc
            raise TransientDeliveryError(f"cannot connect to the ingest server: {exc}") from exc
        except ProxyRefusedError as exc:
            verdict = self._table.for_status(exc.status)
            if verdict.action is Action.SYSTEMIC:
                raise SystemicError(
                    f"the proxy refused the tunnel: {exc}; likely cause: {verdict.cause}",
                    http_code=exc.status,
                    cause=verdict.cause,
                ) from exc
            raise TransientDeliveryError(f"proxy failure: {exc}") from exc
        except httpx.ProxyError as exc:
            raise TransientDeliveryError(f"proxy failure: {exc}") from exc
        except httpx.HTTPError as exc:
            hint = (
                " (over TLS this is also how a server refuses a missing or untrusted client "
                "certificate: check OUTBOUND_CLIENT_CERT)"
                if self._url.startswith("https:") and isinstance(exc, httpx.RemoteProtocolError)
                else ""
            )
            raise TransientDeliveryError(
                f"ingest request failed: {type(exc).__name__}: {exc}{hint}"
            ) from exc
        return exchanged

    def _oversized(
        self, code: int, limit: str, span: trace.Span, signal_id: str | None
    ) -> tuple[IngestResponse | None, str]:
        """Decide on an answer past a read limit from its status line alone.

        A status the outcome table acks (2xx by default): the server has the signal; say so
        with a WARNING and return (None, warning). Anything else: ResponseTooLargeError, a
        transient failure (the rest of the answer is unknown).
        """
        if self._table.for_status(code).action is not Action.ACK:
            raise ResponseTooLargeError(
                f"ingest server answered {code} past a read limit ({limit}); not read",
                http_code=code,
                limit=limit,
            )
        span.set_attribute("bridge.response_oversized", limit)
        log.warning(
            "ingest server accepted the signal but its answer is past a read limit; "
            "acked without reading it",
            extra=log_fields(
                **trace_fields(span),
                producer_id=self.producer_id,
                signal_id=signal_id,
                http_code=code,
                error=limit,
            ),
        )
        return None, f"answer not read: {limit}"

    def _observe_clock(self, date: str | None, sent_at: float, elapsed_s: float) -> None:
        """Feed the answer's Date header to the skew estimate; warn once when it is large."""
        self._skew.observe(date, sent_at, sent_at + elapsed_s)
        skew = self._skew.take_warning()
        if skew is not None:
            log.warning(
                f"{describe_skew(skew)}: signatures expire outside the server's replay window",
                extra=log_fields(
                    server_clock_skew_s=round(skew, 1),
                    warn_above_s=self._skew.warn_s,
                    server_address=self._server_address,
                ),
            )

    def _interpret(
        self, code: int, headers: Mapping[str, str], content: bytes
    ) -> tuple[IngestResponse | None, str | None]:
        """Judge a response by the outcome table: (answer, warning) when acked, else raise.

        An acked status is final whatever the body: the server has the signal, so a body that
        is not the documented IngestResponse is a warning, never a reason to post again.
        """
        verdict = self._table.for_status(code)
        error_class = _error_class(code, verdict)
        if error_class is None:
            try:
                return _RESPONSE_DECODER.decode(content), None
            except (
                msgspec.DecodeError,
                msgspec.ValidationError,
                UnicodeDecodeError,  # bad UTF-8 inside a JSON string (found by fuzzing)
                RecursionError,  # nesting past the interpreter's limit (found by fuzzing)
            ) as exc:
                snippet = content[:_MAX_WARNING_BODY_CHARS].decode("utf-8", "replace")
                return None, f"answer body is not an IngestResponse ({exc}): {snippet!r}"
        retry_after_s = parse_retry_after(headers.get("retry-after"), now=self._clock())
        details = _server_details(content)
        if issubclass(error_class, SystemicError):
            location = headers.get("location")
            moved = f" (Location: {location[:_MAX_WARNING_BODY_CHARS]!r})" if location else ""
            cause = verdict.cause
            skew = self._skew.skew_s
            if code == 401 and skew is not None and self._skew.beyond_warning:
                cause = describe_skew(skew)  # measured, so more likely than the table's guess
            raise error_class(
                f"ingest server answered {code}{moved}: likely cause: {cause}",
                http_code=code,
                details=details,
                retry_after_s=retry_after_s,
                cause=cause,
            )
        message = (
            "the server already has this idempotency key"
            if error_class is AlreadyReceivedError
            else f"ingest server answered {code}"
        )
        raise error_class(message, http_code=code, details=details, retry_after_s=retry_after_s)

    def _fail(
        self, span: trace.Span, exc: DeliveryError, started: float, signal_id: str | None
    ) -> None:
        """Record a failed attempt in the span, metrics and log."""
        elapsed = time.perf_counter() - started
        if isinstance(exc, AlreadyReceivedError):
            self._record("duplicate", exc.http_code, elapsed)
            return
        result = "timeout" if isinstance(exc, DeliveryTimeoutError) else "failure"
        self._record(result, exc.http_code, elapsed)
        span.set_attribute(error_attributes.ERROR_TYPE, str(exc.http_code or type(exc).__name__))
        span.set_status(trace.Status(trace.StatusCode.ERROR, str(exc)))
        log.warning(
            "Signal post failed",
            extra=log_fields(
                **trace_fields(span),
                producer_id=self.producer_id,
                signal_id=signal_id,
                http_code=exc.http_code,
                error=str(exc),
                error_type=type(exc).__name__,
                details=exc.details,
                outcome=exc.outcome.value,
            ),
        )

    def _record(self, result: str, http_code: int | None, elapsed_s: float | None) -> None:
        """Count the attempt and its duration under the seed's metric names."""
        producer = self._config.producer_id
        self._metrics.posted_total.add(
            1,
            {"result": result, "http_code": str(http_code or 0), "producer_id": producer},
        )
        if elapsed_s is not None:
            self._metrics.posted_duration.record(
                elapsed_s, {"result": result, "producer_id": producer}
            )
