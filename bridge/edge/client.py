"""``HmacClient``: one signed POST to the ingest server, and what its answer means.

The client owns httpx: it signs each attempt afresh (new ``X-Timestamp``, new signature), sends
it on one pooled connection set, and judges every answer and every transport failure through
the outcome table (:mod:`bridge.core.outcome`). :meth:`HmacClient.attempt` returns the verdict as
a value (:mod:`bridge.edge.results`: ``Delivered | Duplicate | Rejected | Failed``);
:meth:`HmacClient.post_signal` and its siblings raise the matching
:class:`~bridge.errors.DeliveryError` instead, for callers that want one answer or an exception.
"""

from __future__ import annotations

import enum
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Final, Protocol, Self
from urllib.parse import urlsplit

import httpx
import msgspec
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.semconv.attributes import (
    http_attributes,
    server_attributes,
    url_attributes,
)

from bridge import __version__
from bridge.core.fencing import LEASE_HEADER, LeaseStamp, stale_lease_token
from bridge.core.outcome import Action, OutcomeTable, TransportFailure
from bridge.core.secrets import key_fingerprint, redact_url
from bridge.core.signal import Signal, encode_canonical
from bridge.core.signing import RequestSigner
from bridge.core.timestamps import format_epoch
from bridge.edge.clockskew import SkewEstimator, describe_skew
from bridge.edge.failures import transport_failure
from bridge.edge.http import OVERSIZED_EXTENSION, FastTransport
from bridge.edge.posts import PostRecorder
from bridge.edge.protocol import Limits, RawResponse
from bridge.edge.results import (
    Attempt,
    Delivered,
    Failed,
    IngestResponse,
    Rejected,
    parse_retry_after,
    refusal,
    server_details,
    stale_lease,
)
from bridge.edge.settings import OutboundConfig
from bridge.edge.signers import signer_for
from bridge.errors import (
    BridgeError,
    InvalidSignalError,
    ResponseTooLargeError,
)
from bridge.telemetry.logs import log_fields
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.propagation import inject_trace
from bridge.telemetry.tracing import get_tracer

__all__ = ["HmacClient", "build_ssl_context", "outcome_table"]

log = logging.getLogger("bridge.client")

_MAX_WARNING_BODY_CHARS: Final = 256
_RESPONSE_DECODER: Final = msgspec.json.Decoder(IngestResponse)


class _Headers(Protocol):
    """What judging reads of an answer's headers: a mapping, or a RawResponse not decoded yet."""

    def get(self, name: str, /) -> str | None:
        """Return the header ``name`` (lower case), or None."""


def outcome_table(config: OutboundConfig) -> OutcomeTable:
    """Build the outcome table from the OUTBOUND_*_STATUSES settings (validated at load)."""
    return OutcomeTable(
        success=config.success_statuses,
        systemic=config.systemic_statuses,
        reject=config.reject_statuses,
    )


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
    """Posts HMAC-signed signals: straight over ``FastTransport`` on the delivery path.

    An injected httpx transport (tests, odd deployments) goes through an ``httpx.AsyncClient``.

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
        # The largest canonical body this client will send. An attribute, not a property: the
        # worker reads it for every entry.
        self.max_body_size: Final = config.max_body_size
        self._signer: RequestSigner = signer_for(config)
        self._table = outcome_table(config)
        self._success = self._table.success  # the statuses the table acks (for_status: ACK)
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
        self._posts = PostRecorder(self._metrics, config.producer_id)
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
    def timeout_s(self) -> float:
        """The longest one POST may take (``OUTBOUND_TIMEOUT_SECONDS``)."""
        return self._config.timeout_s

    @property
    def clock_skew_s(self) -> float | None:
        """The ingest server's clock minus ours (smoothed, from Date headers); None if unknown."""
        return self._skew.skew_s

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
                signature_scheme=self._config.signature_scheme,
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
        return format_epoch(at)

    def _attempt_headers(
        self, body: bytes, idempotency_key: str, lease: LeaseStamp | None
    ) -> dict[str, str]:
        """Build the headers that change with each attempt (the static ones are built once)."""
        self._signed_at = at = self._clock()  # as timestamp() does, one call fewer per POST
        timestamp = format_epoch(at)
        headers = {"X-Timestamp": timestamp, "X-Idempotency-Key": idempotency_key}
        headers.update(
            self._signer.signature_headers(body, timestamp, self._signed_at, idempotency_key, lease)
        )
        if lease is not None:
            headers[LEASE_HEADER] = lease.header_value()
        return headers

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
            self._posts.invalid(signal.signal_id, exc)
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
    ) -> Delivered:
        """Like :meth:`post_body`, but also return the status code and the duration."""
        outcome = await self.attempt(
            body, idempotency_key=idempotency_key, timeout=timeout, signal_id=signal_id
        )
        if isinstance(outcome, Delivered):
            return outcome
        raise outcome.cause

    async def attempt(
        self,
        body: bytes,
        *,
        idempotency_key: str,
        timeout: float | None = None,
        signal_id: str | None = None,
        context: otel_context.Context | None = None,
        lease: LeaseStamp | None = None,
    ) -> Attempt:
        """POST one canonical body and return what it came to, judged by the outcome table.

        ``context`` is the parent of the CLIENT span (default: the current context); passing
        it explicitly spares attaching a context on the hot path. ``lease`` is the shard lease
        the POST is made under (strict ordering), sent as ``X-Signal-Lease``. Raises only for a
        client that is not open (a bug).
        """
        if self._state is not _State.OPENED:
            raise BridgeError("HmacClient is not open (use 'async with')")
        size = len(body)
        if size > self._config.max_body_size:
            too_large = InvalidSignalError(
                f"body is {size} bytes, over the limit of {self._config.max_body_size}"
            )
            return Rejected(status=None, cause=too_large)
        timeout_s = self._config.timeout_s if timeout is None else timeout
        headers = self._attempt_headers(body, idempotency_key, lease)
        span = self._tracer.start_span(
            "POST", context=context, kind=trace.SpanKind.CLIENT, attributes=self._span_attributes
        )
        try:
            inject_trace(headers, span, context)
            started = time.perf_counter()
            sent_at = self._signed_at  # the clock reading the signature was made with
            try:
                fast = self._fast
                if fast is None:
                    raw = await self._post_httpx(body, headers, timeout_s)
                else:
                    # The request line and the static headers were serialised once, at
                    # start-up; this attempt's own follow (in place: once per POST).
                    dynamic = ""
                    for name, value in headers.items():
                        dynamic += f"{name}: {value}\r\n"
                    raw = await fast.post(
                        b"%b%bContent-Length: %d\r\n\r\n%b"
                        % (self._fast_head, dynamic.encode("latin-1"), size, body),
                        timeout_s,
                    )
            except httpx.HTTPError as exc:  # httpx errors end here, judged by the outcome table
                failed = self._failure(exc, timeout_s)
                self._posts.failed(span, failed, started, signal_id)
                return failed
            status = raw.status
            date = raw.date
            if date and date != self._skew.last_date:  # the same Date text has nothing new
                self._observe_clock(date, sent_at, time.perf_counter() - started)
            span.set_attribute(http_attributes.HTTP_RESPONSE_STATUS_CODE, status)
            outcome: Attempt
            if raw.oversized is not None:
                outcome = self._oversized(status, raw.oversized, span, signal_id, started)
            else:
                outcome = self._judge(status, raw, raw.body, started)
            if not isinstance(outcome, Delivered):
                self._posts.failed(span, outcome, started, signal_id)
                return outcome
            self._posts.delivered(span, outcome, signal_id)
            return outcome
        finally:
            span.end()

    async def _post_httpx(
        self, body: bytes, headers: dict[str, str], timeout_s: float
    ) -> RawResponse:
        """POST through the httpx.AsyncClient (an injected transport)."""
        response = await self._client.post(
            self._url,
            content=body,
            headers={**self._static_headers, **headers},
            timeout=httpx.Timeout(timeout_s),
        )
        oversized = response.extensions.get(OVERSIZED_EXTENSION)
        return RawResponse.of_mapping(
            response.status_code,
            response.headers,
            response.content,
            oversized if isinstance(oversized, str) else None,
        )

    def _failure(self, exc: httpx.HTTPError, timeout_s: float) -> Failed:
        """Judge a POST that ended without an answer by the outcome table."""
        return transport_failure(
            exc,
            self._table,
            https=self._url.startswith("https:"),
            timeout_s=timeout_s,
            connect_timeout_s=self._config.connect_timeout_s,
        )

    def _oversized(
        self, code: int, limit: str, span: trace.Span, signal_id: str | None, started: float
    ) -> Delivered | Failed:
        """Decide on an answer past a read limit from its status line alone.

        A status the outcome table acks (2xx by default): the server has the signal; say so
        with a WARNING and deliver it unread. Anything else fails with ResponseTooLargeError, a
        transient failure (the rest of the answer is unknown).
        """
        if self._table.for_status(code).action is not Action.ACK:
            too_large = ResponseTooLargeError(
                f"ingest server answered {code} past a read limit ({limit}); not read",
                http_code=code,
                limit=limit,
            )
            verdict = self._table.for_failure(TransportFailure.PROTOCOL)
            return Failed(verdict=verdict, status=code, retry_after_s=None, cause=too_large)
        self._posts.unread(span, code, limit, signal_id)
        elapsed = time.perf_counter() - started
        return Delivered(None, code, elapsed, f"answer not read: {limit}", limit)

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

    def _judge(self, code: int, headers: _Headers, content: bytes, started: float) -> Attempt:
        """Judge a response by the outcome table.

        An acked status is final whatever the body: the server has the signal, so a body that
        is not the documented IngestResponse is a warning, never a reason to post again. Only
        a refusal reads ``headers`` (the hot path passes its RawResponse, decoded on demand).
        """
        if code in self._success:  # the table's ACK, without a call: every delivery comes here
            warning: str | None = None
            try:
                response: IngestResponse | None = _RESPONSE_DECODER.decode(content)
            except (
                msgspec.DecodeError,
                msgspec.ValidationError,
                UnicodeDecodeError,  # bad UTF-8 inside a JSON string (found by fuzzing)
                RecursionError,  # nesting past the interpreter's limit (found by fuzzing)
            ) as exc:
                snippet = content[:_MAX_WARNING_BODY_CHARS].decode("utf-8", "replace")
                response, warning = (
                    None,
                    f"answer body is not an IngestResponse ({exc}): {snippet!r}",
                )
            return Delivered(response, code, time.perf_counter() - started, warning)
        verdict = self._table.for_status(code)
        details = server_details(content)
        current = stale_lease_token(headers.get("content-type"), details)
        if current is not None and self._table.for_answer(code, stale_lease=True).action is (
            Action.FENCED
        ):
            return stale_lease(code, details, current)
        cause = verdict.cause
        skew = self._skew.skew_s
        if code == 401 and skew is not None and self._skew.beyond_warning:
            cause = describe_skew(skew)  # measured, so more likely than the table's guess
        return refusal(
            code,
            verdict,
            details,
            retry_after_s=parse_retry_after(headers.get("retry-after"), now=self._clock()),
            location=headers.get("location"),
            cause=cause,
        )
