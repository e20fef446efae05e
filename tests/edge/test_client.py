import base64
import email.utils
import json
import logging
import re
import shutil
import ssl
import subprocess
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import bridge
from bridge.config.loader import load_config
from bridge.core.fencing import LeaseStamp
from bridge.core.signal import encode_canonical
from bridge.core.signing import INGEST_PATH, build_signature
from bridge.core.verification import verify_request
from bridge.devkit.ingest import IngestApp
from bridge.edge.client import HmacClient
from bridge.edge.results import (
    MAX_DETAIL_BYTES,
    IngestResponse,
    classify_status,
    cut_detail,
    parse_retry_after,
)
from bridge.edge.settings import OutboundConfig
from bridge.errors import (
    AlreadyReceivedError,
    AuthError,
    BodyTooLargeError,
    BridgeError,
    ConfigError,
    DeliveryError,
    DeliveryTimeoutError,
    InvalidSignalError,
    Outcome,
    RejectedError,
    ResponseTooLargeError,
    SystemicError,
    TransientDeliveryError,
)
from bridge.telemetry.logs import JsonFormatter, TextFormatter
from bridge.telemetry.metrics import DURATION_BUCKETS_S
from tests.fixtures_ingest import (
    KEY_ID,
    PRODUCER_ID,
    TEST_SECRET,
    MetricsCapture,
    RawRequest,
    RawResponse,
    StartScripted,
    Tracing,
    make_outbound_config,
    make_signal,
    outbound_env,
)

RFC3339_MICROS_Z: Final = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
ACCEPTED: Final = {
    "signal_id": "srv_scripted_1",
    "status": "received",
    "server_timestamp": "2025-10-25T14:30:46.000001Z",
    "message": "queued for approval",
    "errors": None,
}
ACCEPTED_BODY: Final = json.dumps(ACCEPTED).encode()


def _capture_headers(app: IngestApp) -> list[dict[str, str]]:
    """Make the reference server record each request's headers (and then serve normally)."""
    seen: list[dict[str, str]] = []

    def fault(headers: Mapping[str, str]) -> int | None:
        seen.append(dict(headers))
        return None

    app.fault = fault
    return seen


def _force_status(app: IngestApp, status: int) -> None:
    """Make the reference server answer every request with ``status`` and its JSON detail."""
    app.fault = lambda headers: status


def _verifying(response: RawResponse) -> Callable[[RawRequest], RawResponse]:
    """Return a scripted responder that answers ``response`` only to correctly signed requests."""

    def respond(request: RawRequest) -> RawResponse:
        verdict = verify_request(request.headers, request.body, {KEY_ID: TEST_SECRET})
        return response if verdict.ok else RawResponse(401, b'{"detail":"bad signature"}')

    return respond


def _counter_values(capture: MetricsCapture) -> dict[tuple[str, str], int]:
    """Map (result, http_code) to the signals_posted_total count."""
    out: dict[tuple[str, str], int] = {}
    for point in capture.counter("signals_posted_total"):
        attrs = point.attributes or {}
        assert attrs["producer_id"] == PRODUCER_ID
        out[(str(attrs["result"]), str(attrs["http_code"]))] = int(point.value)
    return out


# --- group 1: initialisation -----------------------------------------------------------------


async def test_hmac_client_init_from_config(outbound_config: OutboundConfig) -> None:
    """A client built from a config reports its URL and producer, and needs opening to post."""
    client = HmacClient(outbound_config)
    assert client.producer_id == PRODUCER_ID
    assert repr(client) == (
        f"HmacClient(url={outbound_config.ingest_url!r}, producer_id={PRODUCER_ID!r})"
    )
    with pytest.raises(BridgeError, match="not open"):
        await client.post_signal(make_signal())
    await client.aclose()


async def test_hmac_client_from_env_loads_config(
    ingest_server: tuple[IngestApp, str],
) -> None:
    """A client built from load_config(env=...) posts as the PRODUCER_ID from the environment."""
    app, base_url = ingest_server
    config = load_config(env=outbound_env(base_url, {"PRODUCER_ID": "mt5-from-env"})).outbound
    async with HmacClient(config) as client:
        response = await client.post_signal(make_signal())
        assert response is not None
    assert response.status == "received"
    assert [r.producer_id for r in app.received] == ["mt5-from-env"]
    assert app.received[0].key_id == KEY_ID


def test_hmac_client_init_missing_secret_raises() -> None:
    """Without a secret neither load_config nor HmacClient accepts the config (ValueError)."""
    env = {"OUTBOUND_SERVER_URL": "http://127.0.0.1:9"}
    with pytest.raises(ValueError, match="HMAC_PRODUCER_SECRET"):
        load_config(env=env)
    disabled = load_config(env={**env, "HMAC_PRODUCER_ENABLED": "false"}).outbound
    with pytest.raises(ConfigError, match="HMAC_PRODUCER_SECRET") as info:
        HmacClient(disabled)
    assert isinstance(info.value, ValueError)


# --- group 2: posting, happy path ------------------------------------------------------------


async def test_post_signal_success_201(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A good signal gets 201 from the verifying server, which stores exactly that signal."""
    app, _ = ingest_server
    signal = make_signal()
    async with HmacClient(outbound_config) as client:
        response = await client.post_signal(signal)
        assert response is not None
    assert isinstance(response, IngestResponse)
    assert response.status == "received"
    assert [r.signal for r in app.received] == [signal]
    assert response.signal_id == app.received[0].server_signal_id
    assert app.refusals == {}


async def test_post_signal_sets_headers_correctly(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """Every request carries content type, producer, RFC 3339 timestamp, signature, key, UA."""
    app, _ = ingest_server
    seen = _capture_headers(app)
    signal = make_signal()
    now = time.time()
    async with HmacClient(outbound_config, clock=lambda: now) as client:
        await client.post_signal(signal)
    [headers] = seen
    assert headers["content-type"] == "application/json"
    assert headers["x-producer-id"] == PRODUCER_ID
    assert headers["x-key-id"] == KEY_ID
    assert headers["user-agent"] == f"signal-bridge/{bridge.__version__}"
    assert RFC3339_MICROS_Z.fullmatch(headers["x-timestamp"])
    assert client.timestamp() == headers["x-timestamp"]
    assert uuid.UUID(headers["x-idempotency-key"]).version == 4
    assert headers["x-signature"] == build_signature(
        TEST_SECRET, encode_canonical(signal), headers["x-timestamp"], PRODUCER_ID
    )


async def test_attempt_under_a_lease_sends_its_stamp_and_none_without(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A POST made under a shard lease carries X-Signal-Lease; one made without carries none."""
    app, _ = ingest_server
    seen = _capture_headers(app)
    body = encode_canonical(make_signal())
    async with HmacClient(outbound_config) as client:
        stamp = LeaseStamp("signals:{3}", 17)
        await client.attempt(body, idempotency_key=str(uuid.uuid4()), lease=stamp)
        await client.attempt(body, idempotency_key=str(uuid.uuid4()))
    with_lease, without = seen
    assert with_lease["x-signal-lease"] == 'shard="signals:{3}", token=17'
    assert LeaseStamp.parse(with_lease["x-signal-lease"]) == stamp
    assert "x-signal-lease" not in without


async def test_post_signal_sends_a_given_idempotency_key_verbatim(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """An explicit idempotency key is sent as X-Idempotency-Key and stored by the server."""
    app, _ = ingest_server
    key = str(uuid.uuid4())
    async with HmacClient(outbound_config) as client:
        await client.post_signal(make_signal(), idempotency_key=key)
    assert app.keys() == {key}
    assert app.received[0].idempotency_key == key


async def test_post_signal_serializes_json_canonical_order(
    scripted_server: StartScripted,
) -> None:
    """The body on the wire is the canonical encoding: sorted keys, no spaces, signed as sent."""
    server = await scripted_server(_verifying(RawResponse(201, ACCEPTED_BODY)))
    signal = make_signal(comment="\N{EURO SIGN} target", take_profit=None)
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        await client.post_signal(signal)
    [request] = server.requests
    assert (request.method, request.path) == ("POST", INGEST_PATH)
    assert request.body == encode_canonical(signal)
    keys = [k for k, _ in json.loads(request.body, object_pairs_hook=list)]
    assert keys == sorted(keys)
    assert b'"take_profit":null' in request.body
    assert "\N{EURO SIGN}".encode() in request.body
    assert verify_request(request.headers, request.body, {KEY_ID: TEST_SECRET}).ok


@pytest.mark.parametrize("status", [200, 201])
async def test_post_signal_returns_server_response(
    scripted_server: StartScripted, status: int
) -> None:
    """200 and 201 bodies are parsed into an IngestResponse with every field."""
    server = await scripted_server(_verifying(RawResponse(status, ACCEPTED_BODY)))
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        response = await client.post_signal(make_signal())
        assert response is not None
    assert response.signal_id == "srv_scripted_1"
    assert response.status == "received"
    assert response.message == "queued for approval"
    assert response.errors is None
    assert response.server_timestamp.isoformat() == "2025-10-25T14:30:46.000001+00:00"


async def test_each_attempt_is_signed_afresh(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """Two posts of the same body at different clock times carry different timestamps and MACs."""
    app, _ = ingest_server
    seen = _capture_headers(app)
    times = iter([time.time(), time.time() + 1.5])
    signal = make_signal()
    async with HmacClient(outbound_config, clock=lambda: next(times)) as client:
        await client.post_signal(signal)
        await client.post_signal(signal)
    first, second = seen
    assert first["x-timestamp"] != second["x-timestamp"]
    assert first["x-signature"] != second["x-signature"]
    assert first["x-idempotency-key"] != second["x-idempotency-key"]
    assert len(app.received) == 2


async def test_rotated_key_id_is_sent_and_selects_the_key(
    ingest_app: IngestApp, ingest_server: tuple[IngestApp, str]
) -> None:
    """HMAC_PRODUCER_KEY_ID goes out as X-Key-Id; the server verifies with that key."""
    new_secret = b"rotated-secret-2026-0123456789"
    ingest_app.secrets = {KEY_ID: TEST_SECRET, "2026-01": new_secret}
    extra = {"HMAC_PRODUCER_KEY_ID": "2026-01", "HMAC_PRODUCER_SECRET": new_secret.decode()}
    async with HmacClient(make_outbound_config(ingest_server[1], extra)) as client:
        await client.post_signal(make_signal())
    assert [r.key_id for r in ingest_app.received] == ["2026-01"]


async def test_without_key_id_no_header_is_sent_and_any_key_matches(
    ingest_app: IngestApp, ingest_server: tuple[IngestApp, str]
) -> None:
    """With no HMAC_PRODUCER_KEY_ID, X-Key-Id is absent and the server finds the key itself."""
    seen = _capture_headers(ingest_app)
    ingest_app.secrets = {"old": b"previous-secret-0123456789", "current": TEST_SECRET}
    config = make_outbound_config(ingest_server[1], {"HMAC_PRODUCER_KEY_ID": ""})
    assert config.key_id is None
    async with HmacClient(config) as client:
        await client.post_signal(make_signal())
    assert "x-key-id" not in seen[0]
    assert [r.key_id for r in ingest_app.received] == ["current"]


async def test_any_httpx_transport_carries_signed_posts() -> None:
    """Given an httpx transport (MockTransport), posts are signed and answers classified alike."""
    requests: list[httpx.Request] = []
    answers = iter(
        [
            httpx.Response(201, json=ACCEPTED),
            httpx.Response(429, headers={"Retry-After": "3"}, json={"detail": "slow down"}),
            httpx.Response(422, text="plain-text refusal"),
        ]
    )

    def handler(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        return next(answers)

    config = make_outbound_config("https://ingest.example.com")
    async with HmacClient(config, transport=httpx.MockTransport(handler)) as client:
        assert client.max_body_size == 65536
        response = await client.post_signal(make_signal())
        assert response is not None
        with pytest.raises(TransientDeliveryError) as busy:
            await client.post_signal(make_signal())
        with pytest.raises(RejectedError) as refused:
            await client.post_signal(make_signal())
    assert response.signal_id == ACCEPTED["signal_id"]
    assert (busy.value.http_code, busy.value.retry_after_s) == (429, 3.0)
    assert (refused.value.http_code, refused.value.details) == (422, "plain-text refusal")
    for request in requests:
        assert str(request.url) == "https://ingest.example.com/api/v1/signals/ingest"
        verdict = verify_request(request.headers, request.content, {KEY_ID: TEST_SECRET})
        assert verdict.ok, verdict.reason


@pytest.mark.parametrize(
    ("failure", "error_class", "match"),
    [
        (httpx.ReadTimeout("read timed out"), DeliveryTimeoutError, "within 0.5s"),
        (httpx.ConnectTimeout("connect timed out"), DeliveryTimeoutError, "within 0.5s"),
        (httpx.ConnectError("connection refused"), TransientDeliveryError, "cannot connect"),
        (httpx.RemoteProtocolError("illegal status"), TransientDeliveryError, "RemoteProtocol"),
    ],
    ids=["read-timeout", "connect-timeout", "connect-error", "protocol-error"],
)
async def test_httpx_transport_errors_are_translated(
    failure: httpx.HTTPError, error_class: type[DeliveryError], match: str
) -> None:
    """Exceptions from any httpx transport become the matching DeliveryError subclass."""

    def handler(request: httpx.Request) -> httpx.Response:
        raise failure

    config = make_outbound_config("https://ingest.example.com")
    async with HmacClient(config, transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(DeliveryError, match=match) as info:
            await client.post_signal(make_signal(), timeout=0.5)
    assert type(info.value) is error_class
    assert info.value.__cause__ is failure


# --- group 3: validation ---------------------------------------------------------------------


async def test_post_signal_rejects_empty_instrument(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """An empty instrument never becomes a Signal; a hand-made body with one is refused (422)."""
    app, _ = ingest_server
    with pytest.raises(InvalidSignalError, match="instrument") as info:
        make_signal(instrument="  ")
    assert info.value.field == "instrument"
    body = encode_canonical(make_signal()).replace(b'"XAUUSD"', b'""')
    async with HmacClient(outbound_config) as client:
        with pytest.raises(RejectedError) as rejected:
            await client.post_body(body, idempotency_key=str(uuid.uuid4()))
    assert rejected.value.http_code == 422
    assert "instrument" in str(rejected.value.details)
    assert app.received == []


async def test_post_signal_rejects_body_too_large(
    ingest_server: tuple[IngestApp, str],
) -> None:
    """A body over max_body_size raises BodyTooLargeError and the server receives nothing."""
    app, base_url = ingest_server
    config = make_outbound_config(base_url, {"OUTBOUND_MAX_BODY_SIZE": "200"})
    signal = make_signal()
    async with HmacClient(config) as client:
        with pytest.raises(BodyTooLargeError) as info:
            await client.post_signal(signal)
        with pytest.raises(InvalidSignalError, match="over the limit of 200"):
            await client.post_body(b"x" * 201, idempotency_key=str(uuid.uuid4()))
    assert info.value.size == len(encode_canonical(signal))
    assert info.value.limit == 200
    assert app.requests_total == 0


async def test_post_signal_rejects_invalid_side(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A side other than buy/sell never becomes a Signal; such a body is refused by the server."""
    app, _ = ingest_server
    with pytest.raises(InvalidSignalError, match="side") as info:
        make_signal(side="hold")
    assert info.value.field == "side"
    body = encode_canonical(make_signal()).replace(b'"buy"', b'"hold"')
    async with HmacClient(outbound_config) as client:
        with pytest.raises(RejectedError, match="422") as rejected:
            await client.post_body(body, idempotency_key=str(uuid.uuid4()))
    assert rejected.value.outcome is Outcome.PERMANENT
    assert "side" in str(rejected.value.details)
    assert app.received == []


# --- group 4: failures -----------------------------------------------------------------------


async def test_post_signal_handles_network_error(refused_url: str) -> None:
    """Connection refused is a TransientDeliveryError without an HTTP code (retry later)."""
    async with HmacClient(make_outbound_config(refused_url)) as client:
        with pytest.raises(TransientDeliveryError, match="cannot connect") as info:
            await client.post_signal(make_signal())
    assert not isinstance(info.value, DeliveryTimeoutError)
    assert info.value.http_code is None
    assert info.value.outcome is Outcome.TRANSIENT


async def test_post_signal_handles_timeout(scripted_server: StartScripted) -> None:
    """A server that never answers gives DeliveryTimeoutError, which is also a TimeoutError."""
    server = await scripted_server(lambda request: RawResponse(hold=True))
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(TimeoutError) as info:
            await client.post_signal(make_signal(), timeout=0.2)
    assert isinstance(info.value, DeliveryTimeoutError)
    assert info.value.outcome is Outcome.TRANSIENT
    assert info.value.http_code is None
    assert "0.2" in str(info.value)
    assert len(server.requests) == 1


async def test_post_signal_handles_http_400(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A real 400 (non-UUID idempotency key) is a RejectedError carrying the server's details."""
    async with HmacClient(outbound_config) as client:
        with pytest.raises(RejectedError) as info:
            await client.post_signal(make_signal(), idempotency_key="not-a-uuid")
    assert info.value.http_code == 400
    assert info.value.details == {"detail": "X-Idempotency-Key must be a UUID"}
    assert info.value.outcome is Outcome.PERMANENT
    assert info.value.retry_after_s is None


async def test_post_signal_handles_http_500(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A 500 is a TransientDeliveryError with http_code 500 and the server's JSON details."""
    app, _ = ingest_server
    _force_status(app, 500)
    async with HmacClient(outbound_config) as client:
        with pytest.raises(TransientDeliveryError, match="500") as info:
            await client.post_signal(make_signal())
    assert info.value.http_code == 500
    assert info.value.details == {"detail": "fault injected"}
    assert app.received == []


@pytest.mark.parametrize(
    "body",
    [b"{not json", b"", b'{"status":"received"}', b"[]"],
    ids=["broken", "empty", "missing-fields", "wrong-shape"],
)
async def test_post_signal_handles_invalid_response_json(
    scripted_server: StartScripted, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """A 201 whose body is not a valid IngestResponse is still delivered, with a WARNING."""
    server = await scripted_server(_verifying(RawResponse(201, body)))
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        delivery = await client.send_body(
            encode_canonical(make_signal()), idempotency_key=str(uuid.uuid4())
        )
    assert (delivery.http_code, delivery.response) == (201, None)
    assert delivery.warning is not None
    assert len(server.requests) == 1
    [warning] = [r for r in caplog.records if "unexpected answer body" in r.getMessage()]
    assert warning.levelno == logging.WARNING


@pytest.mark.parametrize(
    ("status", "error_class", "outcome"),
    [
        (400, RejectedError, Outcome.PERMANENT),
        (403, AuthError, Outcome.AUTH),
        (404, SystemicError, Outcome.SYSTEMIC),
        (405, SystemicError, Outcome.SYSTEMIC),
        (413, RejectedError, Outcome.PERMANENT),
        (422, RejectedError, Outcome.PERMANENT),
        (401, AuthError, Outcome.AUTH),
        (409, AlreadyReceivedError, Outcome.DUPLICATE),
        (408, TransientDeliveryError, Outcome.TRANSIENT),
        (425, TransientDeliveryError, Outcome.TRANSIENT),
        (429, TransientDeliveryError, Outcome.TRANSIENT),
        (500, TransientDeliveryError, Outcome.TRANSIENT),
        (502, TransientDeliveryError, Outcome.TRANSIENT),
        (503, TransientDeliveryError, Outcome.TRANSIENT),
        (504, TransientDeliveryError, Outcome.TRANSIENT),
    ],
)
async def test_status_codes_are_classified(
    ingest_server: tuple[IngestApp, str],
    outbound_config: OutboundConfig,
    status: int,
    error_class: type[DeliveryError],
    outcome: Outcome,
) -> None:
    """Each HTTP status maps to its error class and outcome, with the code and details kept."""
    _force_status(ingest_server[0], status)
    async with HmacClient(outbound_config) as client:
        with pytest.raises(DeliveryError) as info:
            await client.post_signal(make_signal())
    assert type(info.value) is error_class
    assert info.value.outcome is outcome
    assert info.value.http_code == status
    assert info.value.details == {"detail": "fault injected"}


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (200, None),
        (201, None),
        (100, TransientDeliveryError),
        (202, None),
        (204, None),
        (302, SystemicError),
        (404, SystemicError),
        (401, AuthError),
        (409, AlreadyReceivedError),
        (418, RejectedError),
        (599, TransientDeliveryError),
    ],
)
def test_classify_status_table(code: int, expected: type[DeliveryError] | None) -> None:
    """classify_status maps success to None and other codes to the error class to raise."""
    assert classify_status(code) is expected


async def test_repeated_idempotency_key_is_already_received(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A second post with the same key gets a real 409: AlreadyReceivedError, outcome duplicate."""
    app, _ = ingest_server
    key = str(uuid.uuid4())
    async with HmacClient(outbound_config) as client:
        first = await client.post_signal(make_signal(), idempotency_key=key)
        assert first is not None
        with pytest.raises(AlreadyReceivedError) as info:
            await client.post_signal(make_signal(), idempotency_key=key)
    assert info.value.outcome is Outcome.DUPLICATE
    assert info.value.http_code == 409
    assert isinstance(info.value.details, dict)
    assert info.value.details["signal_id"] == first.signal_id
    assert len(app.received) == 1


async def test_wrong_secret_is_an_auth_error(ingest_server: tuple[IngestApp, str]) -> None:
    """A client with the wrong secret gets a real 401: AuthError, the server's reason in its log."""
    app, base_url = ingest_server
    config = make_outbound_config(base_url, {"HMAC_PRODUCER_SECRET": "the-wrong-secret-000000"})
    async with HmacClient(config) as client:
        with pytest.raises(AuthError, match="signature") as info:
            await client.post_signal(make_signal())
    assert info.value.http_code == 401
    assert info.value.details == {"detail": "invalid signature"}
    assert app.refusals == {"signature mismatch": 1}


@pytest.mark.parametrize("skew_s", [-600.0, 600.0], ids=["clock-behind", "clock-ahead"])
async def test_skewed_client_clock_is_an_auth_error(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig, skew_s: float
) -> None:
    """A client clock ten minutes off makes the server refuse the timestamp (401)."""
    app, _ = ingest_server
    async with HmacClient(outbound_config, clock=lambda: time.time() + skew_s) as client:
        with pytest.raises(AuthError) as info:
            await client.post_signal(make_signal())
    assert info.value.details == {"detail": "invalid signature"}
    assert app.refusals == {"timestamp outside window": 1}


async def test_retry_after_seconds_is_parsed(scripted_server: StartScripted) -> None:
    """A 429 with Retry-After: 7 carries retry_after_s == 7."""
    server = await scripted_server(
        lambda request: RawResponse(429, b'{"detail":"slow down"}', ((b"Retry-After", b"7"),))
    )
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.post_signal(make_signal())
    assert info.value.http_code == 429
    assert info.value.retry_after_s == 7.0
    assert info.value.details == {"detail": "slow down"}


async def test_retry_after_http_date_is_parsed(scripted_server: StartScripted) -> None:
    """A 503 with an HTTP-date Retry-After two minutes ahead carries about 120 seconds."""
    when = email.utils.formatdate(time.time() + 120, usegmt=True).encode()
    server = await scripted_server(
        lambda request: RawResponse(503, b"{}", ((b"Retry-After", when),))
    )
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.post_signal(make_signal())
    assert info.value.retry_after_s is not None
    assert 60.0 < info.value.retry_after_s <= 120.0


async def test_malformed_retry_after_still_gives_a_delivery_error(
    scripted_server: StartScripted,
) -> None:
    """A Retry-After that is not a number or date is ignored; the 503 is still transient."""
    server = await scripted_server(
        lambda request: RawResponse(503, b"{}", ((b"Retry-After", b"\xb2"),))
    )
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.post_signal(make_signal())
    assert info.value.retry_after_s is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("0", 0.0),
        (" 30 ", 30.0),
        ("Thu, 01 Jan 1970 00:02:00 GMT", 120.0),
        ("Thu, 01 Jan 1970 00:02:00 -0000", 120.0),
        ("Wed, 31 Dec 1969 23:00:00 GMT", 0.0),
        ("-5", None),
        ("1.5", None),
        ("soon", None),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    """Retry-After seconds and HTTP dates become seconds from now; past dates 0; junk None."""
    assert parse_retry_after(value, now=0.0) == expected


async def test_non_json_error_body_is_kept_as_bounded_text(
    scripted_server: StartScripted,
) -> None:
    """A 502 with an HTML body keeps the text (at most 2048 chars) as the error's details."""
    html = b"<html>" + b"x" * 5000 + b"</html>"
    server = await scripted_server(lambda request: RawResponse(502, html))
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.post_signal(make_signal())
    assert isinstance(info.value.details, str)
    assert info.value.details.startswith("<html>xxx")
    assert len(info.value.details) == 2048


@pytest.mark.parametrize(
    "raw",
    [b"", b"SMTP ready\r\n\r\n", b"HTTP/1.1 201 Created\r\nContent-Length: 99\r\n\r\n{}"],
    ids=["closed-without-answer", "not-http", "truncated-body"],
)
async def test_broken_responses_are_transient(scripted_server: StartScripted, raw: bytes) -> None:
    """A connection closed early, a non-HTTP answer or a cut-off body is a transient failure."""
    server = await scripted_server(lambda request: RawResponse(raw=raw))
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(TransientDeliveryError, match="ingest request failed") as info:
            await client.post_signal(make_signal())
    assert info.value.http_code is None
    assert len(server.requests) == 1


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"short", "short"),
        ("é" * 10, "é" * 10),
        (b"x" * 2048, "x" * 2048),
    ],
)
def test_cut_detail_keeps_short_text_whole(content: bytes | str, expected: str) -> None:
    """Text within the limit is returned as it is."""
    assert cut_detail(content) == expected


@pytest.mark.parametrize("content", [b"y" * 5_000_000, ("€" * 3000).encode(), b"\xff" * 9000])
def test_cut_detail_bounds_long_text_and_notes_the_size(content: bytes) -> None:
    """Long bodies, JSON or not, become at most 2 KiB of valid UTF-8 noting the original size."""
    text = cut_detail(content)
    assert len(text.encode("utf-8")) <= MAX_DETAIL_BYTES
    assert text.endswith(f"[cut: {len(content)} bytes in all]")


async def test_a_huge_json_error_body_is_cut_in_details_and_the_log(
    scripted_server: StartScripted, caplog: pytest.LogCaptureFixture
) -> None:
    """A 503 with a 600 KB JSON body: details and the DEBUG line carry at most 2 KiB of it."""
    caplog.set_level(logging.DEBUG, logger="bridge.client")
    body = b'{"detail":"' + b"z" * 600_000 + b'"}'
    server = await scripted_server(lambda request: RawResponse(503, body))
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(TransientDeliveryError) as info:
            await client.post_signal(make_signal())
    assert isinstance(info.value.details, str)
    assert info.value.details.endswith(f"[cut: {len(body)} bytes in all]")
    logged = [r for r in caplog.records if r.getMessage() == "Signal post failed"]
    assert len(logged) == 1
    assert len(repr(logged[0].__dict__)) < 8 * 1024


async def test_a_2xx_past_the_body_limit_is_delivered_with_a_warning(
    scripted_server: StartScripted, caplog: pytest.LogCaptureFixture
) -> None:
    """The server has the signal: a Delivery flagged oversized, one WARNING, no retry."""
    server = await scripted_server(lambda request: RawResponse(201, b"[" * 5000))
    config = make_outbound_config(server.base_url, {"OUTBOUND_MAX_RESPONSE_BYTES": "1000"})
    async with HmacClient(config) as client:
        delivery = await client.send_body(b'{"a":1}', idempotency_key=str(uuid.uuid4()))
    assert delivery.http_code == 201
    assert delivery.oversized == "response body over 1000 bytes"
    warnings = [r for r in caplog.records if r.levelname == "WARNING" and r.name == "bridge.client"]
    assert [r.getMessage() for r in warnings] == [
        "ingest server accepted the signal but its answer is past a read limit; "
        "acked without reading it"
    ]
    assert len(server.requests) == 1


async def test_a_non_2xx_past_a_limit_is_transient(scripted_server: StartScripted) -> None:
    """A 409 or 503 past a limit is not trusted: ResponseTooLargeError, a retry."""
    server = await scripted_server(lambda request: RawResponse(409, b"{" * 5000))
    config = make_outbound_config(server.base_url, {"OUTBOUND_MAX_RESPONSE_BYTES": "1000"})
    async with HmacClient(config) as client:
        with pytest.raises(ResponseTooLargeError) as info:
            await client.post_signal(make_signal())
    assert (info.value.http_code, info.value.limit) == (409, "response body over 1000 bytes")
    assert info.value.outcome is Outcome.TRANSIENT


async def test_the_start_line_says_no_proxy_is_used(
    scripted_server: StartScripted, caplog: pytest.LogCaptureFixture
) -> None:
    """Without proxy variables one INFO line says the connection is direct."""
    server = await scripted_server(lambda request: RawResponse(201, ACCEPTED_BODY))
    caplog.set_level("INFO", logger="bridge.client")
    async with HmacClient(make_outbound_config(server.base_url)):
        pass
    assert [r.getMessage() for r in caplog.records if "proxy" in r.getMessage()] == [
        "outbound proxy: none (no proxy variable set)"
    ]


# --- client lifecycle ------------------------------------------------------------------------


async def test_closed_client_cannot_be_reopened(outbound_config: OutboundConfig) -> None:
    """After the context exits, the client refuses to reopen or post; aclose stays harmless."""
    client = HmacClient(outbound_config)
    async with client:
        pass
    with pytest.raises(BridgeError, match="only once"):
        await client.__aenter__()
    with pytest.raises(BridgeError, match="not open"):
        await client.post_signal(make_signal())
    await client.aclose()


async def test_client_can_be_opened_only_once_even_while_open(
    outbound_config: OutboundConfig,
) -> None:
    """Entering an already open client is refused; the open client still works afterwards."""
    async with HmacClient(outbound_config) as client:
        with pytest.raises(BridgeError, match="only once"):
            await client.__aenter__()
        answer = await client.post_signal(make_signal())
        assert answer is not None
        assert answer.status == "received"


# --- tracing ---------------------------------------------------------------------------------


async def test_traceparent_continues_the_active_trace(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig, tracing: Tracing
) -> None:
    """With a trace active, traceparent names the client span; the server span is its child."""
    app, _ = ingest_server
    with tracing.tracer.start_as_current_span("consume") as parent:
        async with HmacClient(outbound_config, tracer=tracing.tracer) as client:
            await client.post_signal(make_signal())
    [client_span] = tracing.spans(SpanKind.CLIENT)
    [server_span] = tracing.spans(SpanKind.SERVER)
    ctx = client_span.context
    assert ctx is not None
    assert client_span.parent is not None
    assert client_span.parent.span_id == parent.get_span_context().span_id
    expected = f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"
    assert app.received[0].traceparent == expected
    assert ctx.trace_flags.sampled
    assert server_span.parent is not None
    assert server_span.parent.span_id == ctx.span_id
    assert server_span.context is not None
    assert server_span.context.trace_id == ctx.trace_id
    attributes = client_span.attributes or {}
    assert attributes["http.request.method"] == "POST"
    assert attributes["http.response.status_code"] == 201
    assert attributes["url.full"] == outbound_config.ingest_url
    assert client_span.status.status_code is StatusCode.UNSET


async def test_failed_post_marks_the_client_span_as_error(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig, tracing: Tracing
) -> None:
    """A 503 answer sets the client span's status to ERROR with error.type 503."""
    _force_status(ingest_server[0], 503)
    async with HmacClient(outbound_config, tracer=tracing.tracer) as client:
        with pytest.raises(TransientDeliveryError):
            await client.post_signal(make_signal())
    [client_span] = tracing.spans(SpanKind.CLIENT)
    assert client_span.status.status_code is StatusCode.ERROR
    assert (client_span.attributes or {})["error.type"] == "503"


async def test_no_traceparent_without_a_recording_tracer(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig, tracing: Tracing
) -> None:
    """With a no-op tracer no traceparent is sent and the server starts a new trace."""
    app, _ = ingest_server
    async with HmacClient(outbound_config, tracer=trace.NoOpTracer()) as client:
        await client.post_signal(make_signal())
    assert app.received[0].traceparent is None
    [server_span] = tracing.spans(SpanKind.SERVER)
    assert server_span.parent is None


# --- group 5: telemetry ----------------------------------------------------------------------


async def test_post_signal_emits_success_metric(
    ingest_server: tuple[IngestApp, str],
    outbound_config: OutboundConfig,
    metrics_capture: MetricsCapture,
) -> None:
    """Each accepted post adds 1 to signals_posted_total{result=success,http_code=201}."""
    async with HmacClient(outbound_config, metrics=metrics_capture.metrics) as client:
        await client.post_signal(make_signal())
        await client.post_signal(make_signal())
    assert _counter_values(metrics_capture) == {("success", "201"): 2}


async def test_post_signal_emits_duration_histogram(
    ingest_server: tuple[IngestApp, str],
    outbound_config: OutboundConfig,
    metrics_capture: MetricsCapture,
) -> None:
    """Each post records its duration in signals_posted_duration_seconds with the plan's buckets."""
    async with HmacClient(outbound_config, metrics=metrics_capture.metrics) as client:
        await client.post_signal(make_signal())
    [point] = metrics_capture.histogram("signals_posted_duration_seconds")
    assert tuple(point.explicit_bounds) == (0.01, 0.05, 0.1, 0.5, 1.0, 2.5, 5.0)
    assert tuple(point.explicit_bounds) == DURATION_BUCKETS_S
    assert point.count == 1
    assert sum(point.bucket_counts) == 1
    assert point.sum > 0
    assert dict(point.attributes or {}) == {"result": "success", "producer_id": PRODUCER_ID}


async def test_post_signal_emits_failure_metric(
    ingest_server: tuple[IngestApp, str],
    scripted_server: StartScripted,
    refused_url: str,
    metrics_capture: MetricsCapture,
) -> None:
    """Failures count by result and code: failure/500, failure/0, timeout/0, duplicate/409."""
    app, base_url = ingest_server
    metrics = metrics_capture.metrics
    key = str(uuid.uuid4())
    async with HmacClient(make_outbound_config(base_url), metrics=metrics) as client:
        await client.post_signal(make_signal(), idempotency_key=key)
        with pytest.raises(AlreadyReceivedError):
            await client.post_signal(make_signal(), idempotency_key=key)
        _force_status(app, 500)
        with pytest.raises(TransientDeliveryError):
            await client.post_signal(make_signal())
    async with HmacClient(make_outbound_config(refused_url), metrics=metrics) as client:
        with pytest.raises(TransientDeliveryError):
            await client.post_signal(make_signal())
    slow = await scripted_server(lambda request: RawResponse(hold=True))
    async with HmacClient(make_outbound_config(slow.base_url), metrics=metrics) as client:
        with pytest.raises(DeliveryTimeoutError):
            await client.post_signal(make_signal(), timeout=0.2)
    assert _counter_values(metrics_capture) == {
        ("success", "201"): 1,
        ("duplicate", "409"): 1,
        ("failure", "500"): 1,
        ("failure", "0"): 1,
        ("timeout", "0"): 1,
    }
    results = {
        str((p.attributes or {})["result"]): p.count
        for p in metrics_capture.histogram("signals_posted_duration_seconds")
    }
    assert results == {"success": 1, "duplicate": 1, "failure": 2, "timeout": 1}


async def test_oversized_signal_counts_as_validation_error(
    ingest_server: tuple[IngestApp, str], metrics_capture: MetricsCapture
) -> None:
    """A refused oversized body counts result=validation_error and records no duration."""
    config = make_outbound_config(ingest_server[1], {"OUTBOUND_MAX_BODY_SIZE": "100"})
    async with HmacClient(config, metrics=metrics_capture.metrics) as client:
        with pytest.raises(BodyTooLargeError):
            await client.post_signal(make_signal())
    assert _counter_values(metrics_capture) == {("validation_error", "0"): 1}
    assert metrics_capture.histogram("signals_posted_duration_seconds") == []


# --- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and its key."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """Return a server-side TLS context presenting the certificate."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """Generate a throw-away self-signed certificate for 127.0.0.1 with the openssl CLI."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl CLI is not on PATH; cannot make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(  # noqa: S603 - fixed argv, no shell, test-only
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return TlsFiles(cert=cert, key=key)


async def test_untrusted_server_certificate_is_an_auth_error(
    scripted_server: StartScripted, tls_files: TlsFiles
) -> None:
    """A server certificate the client does not trust is an AuthError, not a retry."""
    server = await scripted_server(
        _verifying(RawResponse(201, ACCEPTED_BODY)), tls_files.server_context()
    )
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(AuthError, match="TLS verification") as info:
            await client.post_signal(make_signal())
    assert info.value.outcome is Outcome.AUTH
    assert server.requests == []


async def test_ca_bundle_and_client_certificate_are_used(
    scripted_server: StartScripted, tls_files: TlsFiles
) -> None:
    """With OUTBOUND_CA_BUNDLE (and a client certificate) the https post succeeds."""
    server = await scripted_server(
        _verifying(RawResponse(201, ACCEPTED_BODY)), tls_files.server_context()
    )
    extra = {
        "OUTBOUND_CA_BUNDLE": str(tls_files.cert),
        "OUTBOUND_CLIENT_CERT": str(tls_files.cert),
        "OUTBOUND_CLIENT_KEY": str(tls_files.key),
    }
    async with HmacClient(make_outbound_config(server.base_url, extra)) as client:
        response = await client.post_signal(make_signal())
        assert response is not None
    assert response.signal_id == "srv_scripted_1"
    assert len(server.requests) == 1


# --- secrets ---------------------------------------------------------------------------------


def _exception_texts(exc: BaseException) -> list[str]:
    """Return str and repr of an exception and of everything in its cause/context chain."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None:
        texts += [str(seen), repr(seen), repr(getattr(seen, "details", None))]
        seen = seen.__cause__ or seen.__context__
    return texts


async def test_secret_never_leaks_through_deliveries(
    ingest_server: tuple[IngestApp, str],
    scripted_server: StartScripted,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Across 201/401/500/422/timeout/refused the secret is in no log, error, repr or request."""
    caplog.set_level(logging.DEBUG)
    app, base_url = ingest_server
    secret = "known-secret-Zq8!leak-canary-0042"
    forms = [
        secret,
        base64.b64encode(secret.encode()).decode(),
        base64.urlsafe_b64encode(secret.encode()).decode(),
        secret.encode().hex(),
    ]
    app.secrets = {KEY_ID: secret.encode()}
    env = {"HMAC_PRODUCER_SECRET": secret}
    slow = await scripted_server(lambda request: RawResponse(hold=True))
    errors: list[BaseException] = []
    texts: list[str] = []
    async with HmacClient(make_outbound_config(base_url, env)) as client:
        texts.append(repr(client))
        await client.post_signal(make_signal())
        for status in (401, 500, 422):
            _force_status(app, status)
            with pytest.raises(DeliveryError) as info:
                await client.post_signal(make_signal())
            errors.append(info.value)
        app.fault = None
        with pytest.raises(RejectedError) as invalid:
            await client.post_body(b'{"not":"a signal"}', idempotency_key=str(uuid.uuid4()))
        errors.append(invalid.value)
    wrong = make_outbound_config(base_url, {"HMAC_PRODUCER_SECRET": "a-different-secret-99"})
    async with HmacClient(wrong) as client:
        with pytest.raises(AuthError) as auth:
            await client.post_signal(make_signal())
        errors.append(auth.value)
    config = make_outbound_config(slow.base_url, env)
    async with HmacClient(config) as client:
        with pytest.raises(DeliveryTimeoutError) as timeout:
            await client.post_signal(make_signal(), timeout=0.2)
        errors.append(timeout.value)
    with pytest.raises(ConfigError) as short:
        make_outbound_config(base_url, {"HMAC_PRODUCER_SECRET": secret[:10]})
    errors.append(short.value)
    assert [e.http_code for e in errors if isinstance(e, DeliveryError)] == [
        401,
        500,
        422,
        422,
        401,
        None,
    ]
    texts += [repr(config), str(config), repr(load_config(env=outbound_env(base_url, env)))]
    texts += [t for e in errors for t in _exception_texts(e)]
    texts.append(caplog.text)
    for formatter in (JsonFormatter(), TextFormatter()):
        texts += [formatter.format(record) for record in caplog.records]
    texts += [str(r.headers) + r.body.decode("latin-1") for r in slow.requests]
    assert any("Signal post failed" in t for t in texts), "the failures were not logged"
    for text in texts:
        for form in forms:
            assert form not in text
        assert secret[:10] not in text


@pytest.mark.parametrize("status", [301, 308, 404, 405])
async def test_redirects_and_wrong_urls_are_systemic_naming_the_cause(
    scripted_server: StartScripted, status: int
) -> None:
    """A redirect or a wrong URL is a SystemicError with the cause and the Location, no retry."""
    answer = RawResponse(status, b"", ((b"Location", b"https://new.example.com/ingest"),))
    server = await scripted_server(_verifying(answer))
    async with HmacClient(make_outbound_config(server.base_url)) as client:
        with pytest.raises(SystemicError) as info:
            await client.post_signal(make_signal())
    assert info.value.http_code == status
    assert ("redirect" if status < 400 else "wrong URL") in info.value.cause
    assert "https://new.example.com/ingest" in str(info.value)
    assert len(server.requests) == 1
