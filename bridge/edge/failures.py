"""A POST that ended without an answer: which failure it was, judged by the outcome table.

The one place httpx's exceptions become :class:`~bridge.edge.results.Failed` values: a timeout,
a refused connection, a proxy that refused the tunnel, a broken protocol, an untrusted
certificate. The table (:mod:`bridge.core.outcome`) says whether each is transient or systemic;
the error in ``cause`` keeps the httpx exception as its ``__cause__``.
"""

from __future__ import annotations

import ssl

import httpx

from bridge.core.outcome import Action, OutcomeTable, TransportFailure
from bridge.edge.results import Failed
from bridge.edge.tunnel import ProxyRefusedError
from bridge.errors import (
    AuthError,
    DeliveryError,
    DeliveryTimeoutError,
    SystemicError,
    TransientDeliveryError,
)

__all__ = ["is_tls_verification_failure", "transport_failure"]


def is_tls_verification_failure(exc: BaseException) -> bool:
    """Tell whether a connect error comes from a refused certificate (never a retry matter)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError | ssl.SSLError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def transport_failure(
    exc: httpx.HTTPError,
    table: OutcomeTable,
    *,
    https: bool,
    timeout_s: float,
    connect_timeout_s: float,
) -> Failed:
    """Judge one httpx error by the table; the message says what failed and what to check."""
    if isinstance(exc, httpx.ConnectTimeout):
        return _judged(
            table,
            TransportFailure.CONNECT_TIMEOUT,
            f"could not connect to the ingest server within "
            f"{min(timeout_s, connect_timeout_s):g}s (OUTBOUND_CONNECT_TIMEOUT_SECONDS): {exc}",
            exc,
        )
    if isinstance(exc, httpx.TimeoutException):
        message = f"no answer from the ingest server within {timeout_s}s"
        return _judged(table, TransportFailure.TIMEOUT, message, exc)
    if isinstance(exc, httpx.ConnectError):
        if is_tls_verification_failure(exc):
            message = (
                f"TLS verification of the ingest server failed: {exc}; check "
                "OUTBOUND_CA_BUNDLE and the server certificate"
            )
            return _judged(table, TransportFailure.TLS, message, exc)
        message = f"cannot connect to the ingest server: {exc}"
        return _judged(table, TransportFailure.CONNECT, message, exc)
    if isinstance(exc, ProxyRefusedError):
        verdict = table.for_status(exc.status)
        if verdict.action is Action.SYSTEMIC:
            refused = SystemicError(
                f"the proxy refused the tunnel: {exc}; likely cause: {verdict.cause}",
                http_code=exc.status,
                cause=verdict.cause,
            )
            refused.__cause__ = exc
            return Failed(verdict=verdict, status=exc.status, retry_after_s=None, cause=refused)
    if isinstance(exc, httpx.ProxyError):
        return _judged(table, TransportFailure.CONNECT, f"proxy failure: {exc}", exc)
    hint = (
        " (over TLS this is also how a server refuses a missing or untrusted client "
        "certificate: check OUTBOUND_CLIENT_CERT)"
        if https and isinstance(exc, httpx.RemoteProtocolError)
        else ""
    )
    message = f"ingest request failed: {type(exc).__name__}: {exc}{hint}"
    return _judged(table, TransportFailure.PROTOCOL, message, exc)


def _judged(table: OutcomeTable, failure: TransportFailure, message: str, exc: Exception) -> Failed:
    """Build the Failed value the table's verdict on ``failure`` gives, caused by ``exc``."""
    verdict = table.for_failure(failure)
    error: DeliveryError
    if verdict.action is Action.SYSTEMIC:
        systemic = AuthError if failure is TransportFailure.TLS else SystemicError
        error = systemic(message, cause=verdict.cause)
    elif failure in (TransportFailure.TIMEOUT, TransportFailure.CONNECT_TIMEOUT):
        error = DeliveryTimeoutError(message)
    else:
        error = TransientDeliveryError(message)
    error.__cause__ = exc
    return Failed(verdict=verdict, status=None, retry_after_s=None, cause=error, failure=failure)
