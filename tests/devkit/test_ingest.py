import asyncio
import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import httpx
import pytest
from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode

from bridge.core.signal import encode_canonical
from bridge.core.signing import INGEST_PATH, build_signature
from bridge.core.timestamps import format_timestamp
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.edge.settings import OutboundConfig
from bridge.telemetry.logs import JsonFormatter
from tests.fixtures_ingest import KEY_ID, PRODUCER_ID, TEST_SECRET, Tracing, make_signal

SERVER_NOW: Final = datetime(2025, 10, 25, 14, 30, 45, 123456, tzinfo=UTC)
BODY: Final = encode_canonical(make_signal())


def _signed(
    body: bytes = BODY,
    *,
    secret: bytes = TEST_SECRET,
    sent_at: datetime | None = None,
    key_id: str | None = KEY_ID,
    idempotency_key: str | None = None,
) -> dict[str, str]:
    """Build the headers a producer would send for ``body`` (independently of HmacClient)."""
    timestamp = format_timestamp(sent_at or datetime.now(UTC))
    headers = {
        "Content-Type": "application/json",
        "X-Producer-Id": PRODUCER_ID,
        "X-Timestamp": timestamp,
        "X-Signature": build_signature(secret, body, timestamp, PRODUCER_ID),
        "X-Idempotency-Key": idempotency_key or str(uuid.uuid4()),
    }
    if key_id is not None:
        headers["X-Key-Id"] = key_id
    return headers


@pytest.fixture
async def http(ingest_server: tuple[IngestApp, str]) -> AsyncIterator[httpx.AsyncClient]:
    """Yield a plain httpx client aimed at the reference server."""
    async with httpx.AsyncClient(base_url=ingest_server[1], timeout=10) as client:
        yield client


@pytest.fixture
def fixed_clock(ingest_app: IngestApp) -> datetime:
    """Freeze the reference server's clock at SERVER_NOW and return it."""
    ingest_app.clock = SERVER_NOW.timestamp
    return SERVER_NOW


async def test_good_request_gets_201_with_an_ingest_response(
    ingest_app: IngestApp, http: httpx.AsyncClient, fixed_clock: datetime
) -> None:
    """A correctly signed canonical signal gets 201 and an IngestResponse, and is stored."""
    headers = _signed(sent_at=fixed_clock)
    response = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert response.status_code == 201
    assert response.headers["content-type"] == "application/json"
    payload: dict[str, Any] = response.json()
    assert payload["status"] == "received"
    assert payload["signal_id"].startswith("srv_")
    assert payload["server_timestamp"] == "2025-10-25T14:30:45.123456Z"
    assert (payload["message"], payload["errors"]) == (None, None)
    [stored] = ingest_app.received
    assert stored.signal == make_signal()
    assert stored.server_signal_id == payload["signal_id"]
    assert (stored.producer_id, stored.key_id) == (PRODUCER_ID, KEY_ID)
    assert stored.idempotency_key == headers["X-Idempotency-Key"]
    assert stored.received_at == fixed_clock.timestamp()
    assert ingest_app.keys() == {headers["X-Idempotency-Key"]}
    assert ingest_app.requests_total == 1


async def test_bad_signature_gets_401(ingest_app: IngestApp, http: httpx.AsyncClient) -> None:
    """A request signed with the wrong secret gets a bare 401 (reason counted), nothing stored."""
    headers = _signed(secret=b"not-the-server-secret-000")
    response = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid signature"}
    assert ingest_app.received == []
    assert ingest_app.refusals == {"signature mismatch": 1}


async def test_tampered_body_gets_401(ingest_app: IngestApp, http: httpx.AsyncClient) -> None:
    """A body changed after signing gets 401."""
    headers = _signed()
    tampered = BODY.replace(b"2000.5", b"2000.6")
    response = await http.post(INGEST_PATH, content=tampered, headers=headers)
    assert response.status_code == 401
    assert ingest_app.received == []


@pytest.mark.parametrize(
    ("offset_s", "status", "word"),
    [
        (-301.0, 401, "old"),
        (301.0, 401, "in the future"),
        (-3600.0, 401, "old"),
        (-299.0, 201, ""),
        (299.0, 201, ""),
    ],
)
async def test_stale_and_future_timestamps_get_401(
    http: httpx.AsyncClient,
    fixed_clock: datetime,
    *,
    ingest_app: IngestApp,
    caplog: pytest.LogCaptureFixture,
    offset_s: float,
    status: int,
    word: str,
) -> None:
    """Timestamps over 300 s off the server clock get a bare 401 (the log says why); others pass."""
    caplog.set_level(logging.WARNING, logger="bridge.ingest")
    headers = _signed(sent_at=fixed_clock + timedelta(seconds=offset_s))
    response = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert response.status_code == status
    if status == 401:
        assert response.json() == {"detail": "invalid signature"}
        assert ingest_app.refusals == {"timestamp outside window": 1}
        [line] = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
        assert (line["check"], line["http_code"]) == ("window", 401)
        assert word in line["reason"]


async def test_tolerance_is_configurable(
    ingest_app: IngestApp, http: httpx.AsyncClient, fixed_clock: datetime
) -> None:
    """With tolerance_s=10 a request 11 s old is refused and one 9 s old accepted."""
    ingest_app.tolerance_s = 10
    old = await http.post(
        INGEST_PATH, content=BODY, headers=_signed(sent_at=fixed_clock - timedelta(seconds=11))
    )
    fresh = await http.post(
        INGEST_PATH, content=BODY, headers=_signed(sent_at=fixed_clock - timedelta(seconds=9))
    )
    assert (old.status_code, fresh.status_code) == (401, 201)


@pytest.mark.parametrize("missing", ["X-Producer-Id", "X-Timestamp", "X-Signature"])
async def test_missing_signature_headers_get_401(
    ingest_app: IngestApp, http: httpx.AsyncClient, missing: str
) -> None:
    """A request without one of the signature headers gets 401 "invalid request", nothing stored."""
    headers = _signed()
    del headers[missing]
    response = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert response.status_code == 401
    assert response.json() == {"detail": "invalid request"}
    assert ingest_app.refusals == {f"missing header {missing}": 1}
    assert ingest_app.received == []


async def test_key_rotation_without_key_id(ingest_app: IngestApp, http: httpx.AsyncClient) -> None:
    """Without X-Key-Id the server tries every key: old and new secrets are both accepted."""
    new_secret = b"next-quarter-secret-0123456789"
    ingest_app.secrets = {"old": TEST_SECRET, "new": new_secret}
    for secret in (TEST_SECRET, new_secret):
        response = await http.post(
            INGEST_PATH, content=BODY, headers=_signed(secret=secret, key_id=None)
        )
        assert response.status_code == 201
    assert [r.key_id for r in ingest_app.received] == ["old", "new"]


async def test_invalid_signal_body_gets_422(ingest_app: IngestApp, http: httpx.AsyncClient) -> None:
    """A correctly signed body that is not a valid signal gets 422 with the error listed."""
    body = BODY.replace(b'"buy"', b'"hold"')
    response = await http.post(INGEST_PATH, content=body, headers=_signed(body))
    assert response.status_code == 422
    payload = response.json()
    assert "side" in payload["detail"]
    assert payload["errors"] == [payload["detail"]]
    assert ingest_app.received == []


async def test_signature_is_checked_before_json_parsing(http: httpx.AsyncClient) -> None:
    """A non-JSON body passes the signature check (then 422); badly signed it gets 401."""
    body = b"\x00\xffnot json"
    good = await http.post(INGEST_PATH, content=body, headers=_signed(body))
    bad = await http.post(INGEST_PATH, content=body, headers=_signed(body, secret=b"x" * 16))
    assert good.status_code == 422
    assert "not valid JSON" in good.json()["detail"]
    assert bad.status_code == 401


async def test_out_of_range_timestamp_in_body_gets_422(http: httpx.AsyncClient) -> None:
    """A signed body whose timestamp cannot be converted to UTC is an invalid signal (422)."""
    body = BODY.replace(b"2025-10-25T14:30:45.123456Z", b"0001-01-01T00:00:00+05:00")
    response = await http.post(INGEST_PATH, content=body, headers=_signed(body))
    assert response.status_code == 422


async def test_repeated_idempotency_key_gets_409(
    ingest_app: IngestApp, http: httpx.AsyncClient
) -> None:
    """The second request with an idempotency key gets 409 naming the first signal id."""
    key = str(uuid.uuid4())
    first = await http.post(INGEST_PATH, content=BODY, headers=_signed(idempotency_key=key))
    again = await http.post(INGEST_PATH, content=BODY, headers=_signed(idempotency_key=key))
    assert first.status_code == 201
    assert again.status_code == 409
    assert again.json() == {
        "detail": "duplicate idempotency key",
        "signal_id": first.json()["signal_id"],
    }
    assert len(ingest_app.received) == 1


async def test_concurrent_duplicates_are_accepted_once(
    ingest_app: IngestApp, http: httpx.AsyncClient
) -> None:
    """Ten concurrent requests with one idempotency key give exactly one 201 and nine 409s."""
    key = str(uuid.uuid4())
    responses = await asyncio.gather(
        *(
            http.post(INGEST_PATH, content=BODY, headers=_signed(idempotency_key=key))
            for _ in range(10)
        )
    )
    assert sorted(r.status_code for r in responses) == [201] + [409] * 9
    assert len(ingest_app.received) == 1


@pytest.mark.parametrize("key", ["not-a-uuid", "", "1234"])
async def test_non_uuid_idempotency_key_gets_400(
    ingest_app: IngestApp, http: httpx.AsyncClient, key: str
) -> None:
    """An idempotency key that is missing or not a UUID gets 400."""
    headers = _signed()
    headers["X-Idempotency-Key"] = key
    response = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert response.status_code == 400
    assert response.json() == {"detail": "X-Idempotency-Key must be a UUID"}
    assert ingest_app.received == []


@pytest.mark.parametrize("path", ["/", "/api/v1/signals", "/api/v1/signals/ingest/"])
async def test_wrong_path_gets_404(
    ingest_app: IngestApp, http: httpx.AsyncClient, path: str
) -> None:
    """Any path other than the ingest endpoint gets 404."""
    response = await http.post(path, content=BODY, headers=_signed())
    assert response.status_code == 404
    assert ingest_app.received == []


async def test_wrong_method_gets_405(http: httpx.AsyncClient) -> None:
    """GET on the ingest endpoint gets 405."""
    response = await http.get(INGEST_PATH)
    assert response.status_code == 405


async def test_too_large_body_gets_413(ingest_app: IngestApp, http: httpx.AsyncClient) -> None:
    """A body over 65536 bytes gets 413 before any verification."""
    body = b"{" + b" " * 65536 + b"}"
    response = await http.post(INGEST_PATH, content=body, headers=_signed(body))
    assert response.status_code == 413
    assert response.json() == {"detail": "body too large"}
    assert ingest_app.refusals == {"body too large": 1}


async def test_body_limit_applies_to_chunked_uploads(
    ingest_app: IngestApp, http: httpx.AsyncClient
) -> None:
    """A chunked body is reassembled when small and refused (413) once past max_body_size."""
    ingest_app.max_body_size = len(BODY)

    async def chunks(data: bytes) -> AsyncIterator[bytes]:
        for start in range(0, len(data), 50):
            yield data[start : start + 50]

    fits = await http.post(INGEST_PATH, content=chunks(BODY), headers=_signed())
    body = BODY + b" "
    too_big = await http.post(INGEST_PATH, content=chunks(body), headers=_signed(body))
    assert (fits.status_code, too_big.status_code) == (201, 413)


async def test_fault_hook_forces_a_status(ingest_app: IngestApp, http: httpx.AsyncClient) -> None:
    """A fault hook sees the headers and forces its status; returning None serves normally."""
    seen: list[str] = []

    def fault(headers: Any) -> int | None:
        seen.append(headers["x-producer-id"])
        return 503 if len(seen) == 1 else None

    ingest_app.fault = fault
    forced = await http.post(INGEST_PATH, content=BODY, headers=_signed())
    normal = await http.post(INGEST_PATH, content=BODY, headers=_signed())
    assert (forced.status_code, normal.status_code) == (503, 201)
    assert forced.json() == {"detail": "fault injected"}
    assert seen == [PRODUCER_ID, PRODUCER_ID]


# --- tracing ---------------------------------------------------------------------------------


async def test_server_span_continues_the_client_trace(
    ingest_app: IngestApp, outbound_config: OutboundConfig, tracing: Tracing
) -> None:
    """The SERVER span's parent is the HmacClient's CLIENT span, in the same trace."""
    async with HmacClient(outbound_config, tracer=tracing.tracer) as client:
        await client.post_signal(make_signal())
    [client_span] = tracing.spans(SpanKind.CLIENT)
    [server_span] = tracing.spans(SpanKind.SERVER)
    assert server_span.parent is not None
    assert client_span.context is not None
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.parent.trace_id == client_span.context.trace_id
    assert server_span.name == f"POST {INGEST_PATH}"
    attributes = server_span.attributes or {}
    assert attributes["http.request.method"] == "POST"
    assert attributes["url.path"] == INGEST_PATH
    assert attributes["http.response.status_code"] == 201


async def test_server_span_from_a_raw_traceparent(
    ingest_app: IngestApp, http: httpx.AsyncClient, tracing: Tracing
) -> None:
    """A traceparent injected by hand is continued, stored with the signal and echoed in spans."""
    headers = _signed()
    with tracing.tracer.start_as_current_span("producer") as producer:
        propagate.inject(headers)
    response = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert response.status_code == 201
    [server_span] = tracing.spans(SpanKind.SERVER)
    assert server_span.parent is not None
    assert server_span.parent.span_id == producer.get_span_context().span_id
    assert ingest_app.received[0].traceparent == headers["traceparent"]


async def test_server_span_marks_5xx_as_error(
    ingest_app: IngestApp, http: httpx.AsyncClient, tracing: Tracing
) -> None:
    """A 5xx answer sets the SERVER span status to ERROR; a 4xx leaves it unset."""
    statuses = iter([500, 422])
    ingest_app.fault = lambda headers: next(statuses)
    await http.post(INGEST_PATH, content=BODY, headers=_signed())
    await http.post(INGEST_PATH, content=BODY, headers=_signed())
    codes = {
        (s.attributes or {})["http.response.status_code"]: s.status.status_code
        for s in tracing.spans(SpanKind.SERVER)
    }
    assert codes == {500: StatusCode.ERROR, 422: StatusCode.UNSET}


async def test_server_span_without_traceparent_starts_a_trace(
    http: httpx.AsyncClient, tracing: Tracing
) -> None:
    """A request without traceparent gets a root SERVER span."""
    await http.post(INGEST_PATH, content=BODY, headers=_signed())
    [server_span] = tracing.spans(SpanKind.SERVER)
    assert server_span.parent is None


# --- ASGI details and the thread runner ------------------------------------------------------


async def test_lifespan_is_acknowledged_and_other_scopes_ignored() -> None:
    """Lifespan startup/shutdown are acknowledged; a websocket scope gets no answer."""
    app = IngestApp(secrets={KEY_ID: TEST_SECRET})
    incoming: list[dict[str, Any]] = [
        {"type": "lifespan.startup"},
        {"type": "lifespan.shutdown"},
    ]
    sent: list[str] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        sent.append(message["type"])

    await app({"type": "lifespan"}, receive, send)
    await app({"type": "websocket", "path": INGEST_PATH}, receive, send)
    assert sent == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.requests_total == 0


def test_serve_in_thread_serves_and_stops() -> None:
    """serve_in_thread yields a loopback URL that answers, and the port is closed afterwards."""
    app = IngestApp(secrets={KEY_ID: TEST_SECRET})
    with serve_in_thread(app) as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url, timeout=10) as client:
            assert client.get("/health").status_code == 404
    with httpx.Client(base_url=base_url, timeout=10) as client, pytest.raises(httpx.ConnectError):
        client.get("/health")
    assert app.requests_total == 1


async def test_a_captured_request_cannot_be_replayed_under_a_new_key(
    ingest_app: IngestApp, http: httpx.AsyncClient
) -> None:
    """The same signature with another idempotency key is refused: no second trade."""
    headers = _signed()
    first = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert first.status_code == 201
    again = await http.post(INGEST_PATH, content=BODY, headers=headers)
    assert again.status_code == 409
    replay = {**headers, "X-Idempotency-Key": str(uuid.uuid4())}
    replayed = await http.post(INGEST_PATH, content=BODY, headers=replay)
    assert replayed.status_code == 401
    assert replayed.json() == {"detail": "invalid signature"}
    assert ingest_app.refusals["replayed signature"] == 1
    assert len(ingest_app.received) == 1


def test_the_reference_server_repr_hides_its_secrets(ingest_app: IngestApp) -> None:
    """repr(IngestApp) never shows a secret."""
    assert TEST_SECRET.decode() not in repr(ingest_app)
