"""HmacClient.attempt returns what a POST came to as a value, judged by the outcome table."""

import ssl
import uuid
from collections.abc import Callable

import httpx
import pytest

from bridge.core.outcome import DEFAULT_TABLE, Action, TransportFailure
from bridge.edge.client import HmacClient
from bridge.edge.results import Attempt, Delivered, Duplicate, Failed, Rejected
from bridge.errors import (
    AlreadyReceivedError,
    AuthError,
    DeliveryTimeoutError,
    InvalidSignalError,
    RejectedError,
    SystemicError,
    TransientDeliveryError,
)
from tests.fixtures_ingest import make_outbound_config

Handler = Callable[[httpx.Request], httpx.Response]
_ANSWER = b'{"signal_id":"srv-1","status":"received","server_timestamp":"2026-01-01T00:00:00Z"}'


async def _attempt(
    handler: Callable[[httpx.Request], httpx.Response], body: bytes = b"{}"
) -> Attempt:
    """POST ``body`` once through a MockTransport answering with ``handler``."""
    config = make_outbound_config("https://ingest.example.com")
    async with HmacClient(config, transport=httpx.MockTransport(handler)) as client:
        return await client.attempt(body, idempotency_key=str(uuid.uuid4()), signal_id="s1")


def _answer(
    status: int, content: bytes = b"", **headers: str
) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(status, content=content, headers=headers)


def _raise(exc: Exception) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        raise exc

    return handler


async def test_an_acked_status_is_delivered_with_the_server_answer() -> None:
    """A 201 with the documented body: Delivered, its response decoded, no warning."""
    outcome = await _attempt(_answer(201, _ANSWER))
    assert isinstance(outcome, Delivered)
    assert outcome.http_code == 201
    assert outcome.response is not None
    assert outcome.response.signal_id == "srv-1"
    assert outcome.warning is None


async def test_409_is_a_duplicate_and_422_a_rejection() -> None:
    """The server already has the key (409), or judged the signal for good (422)."""
    duplicate = await _attempt(_answer(409, b'{"detail":"seen"}'))
    assert isinstance(duplicate, Duplicate)
    assert duplicate.status == 409
    assert isinstance(duplicate.cause, AlreadyReceivedError)
    rejected = await _attempt(_answer(422, b'{"detail":"bad"}'))
    assert isinstance(rejected, Rejected)
    assert isinstance(rejected.cause, RejectedError)
    assert (rejected.status, rejected.cause.details) == (422, {"detail": "bad"})


async def test_a_body_over_the_limit_is_rejected_before_anything_is_sent() -> None:
    """Nothing is posted: the caller dead-letters the signal as invalid."""
    sent: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        sent.append(request)
        return httpx.Response(201)

    outcome = await _attempt(handler, b"x" * 10_000_000)
    assert isinstance(outcome, Rejected)
    assert isinstance(outcome.cause, InvalidSignalError)
    assert sent == []


@pytest.mark.parametrize(
    ("status", "action", "error_class"),
    [(503, Action.TRANSIENT, TransientDeliveryError), (401, Action.SYSTEMIC, AuthError)],
)
async def test_a_failed_status_carries_its_verdict_and_retry_after(
    status: int, action: Action, error_class: type[Exception]
) -> None:
    """A failure keeps the table's verdict, the status and the parsed Retry-After."""
    outcome = await _attempt(_answer(status, b"{}", **{"retry-after": "7"}))
    assert isinstance(outcome, Failed)
    assert outcome.verdict.action is action
    assert (outcome.status, outcome.retry_after_s) == (status, 7.0)
    assert type(outcome.cause) is error_class


@pytest.mark.parametrize(
    ("exc", "failure", "error_class"),
    [
        (httpx.ReadTimeout("slow"), TransportFailure.TIMEOUT, DeliveryTimeoutError),
        (httpx.ConnectTimeout("slow"), TransportFailure.CONNECT_TIMEOUT, DeliveryTimeoutError),
        (httpx.ConnectError("refused"), TransportFailure.CONNECT, TransientDeliveryError),
        (httpx.ProxyError("tunnel"), TransportFailure.CONNECT, TransientDeliveryError),
        (httpx.RemoteProtocolError("bad"), TransportFailure.PROTOCOL, TransientDeliveryError),
    ],
    ids=["timeout", "connect-timeout", "connect", "proxy", "protocol"],
)
async def test_transport_failures_are_decided_by_the_outcome_table(
    exc: httpx.HTTPError, failure: TransportFailure, error_class: type[Exception]
) -> None:
    """No answer at all: the table's verdict for that kind of failure, the httpx error kept."""
    outcome = await _attempt(_raise(exc))
    assert isinstance(outcome, Failed)
    assert outcome.verdict == DEFAULT_TABLE.for_failure(failure)
    assert outcome.status is None
    assert type(outcome.cause) is error_class
    assert outcome.cause.__cause__ is exc


async def test_an_untrusted_certificate_is_systemic_by_the_table() -> None:
    """A TLS verification failure: systemic (AuthError), with the table's cause in words."""
    refused = httpx.ConnectError("handshake")
    refused.__cause__ = ssl.SSLCertVerificationError("certificate verify failed")
    outcome = await _attempt(_raise(refused))
    assert isinstance(outcome, Failed)
    assert outcome.verdict == DEFAULT_TABLE.for_failure(TransportFailure.TLS)
    assert isinstance(outcome.cause, AuthError)
    assert isinstance(outcome.cause, SystemicError)
    assert "OUTBOUND_CA_BUNDLE" in outcome.cause.cause
