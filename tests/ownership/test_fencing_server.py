"""The server-enforced fence: the lease header, the reference server's rule, the bridge's answer.

The reference ingest server keeps per (producer, shard) the highest lease token it accepted and
refuses a lower one with 409 problem+json of type ``stale-lease``; the client turns that answer
into a ``Fenced`` value, distinct from the idempotency 409. Real server on loopback, no Redis.
"""

from __future__ import annotations

from typing import Final

import httpx
import pytest

from bridge.core.fencing import (
    PROBLEM_CONTENT_TYPE,
    STALE_LEASE_TYPE,
    LeaseStamp,
    stale_lease_token,
)
from bridge.core.outcome import DEFAULT_TABLE, Action
from bridge.core.signal import encode_canonical
from bridge.devkit.fences import Fences, fencing_from_env
from bridge.devkit.ingest import IngestApp
from bridge.edge.client import HmacClient
from bridge.edge.results import Delivered, Duplicate, Fenced, Rejected
from bridge.edge.settings import OutboundConfig
from bridge.errors import ConfigError, Outcome
from tests.fixtures_ingest import make_signal

SHARD: Final = "signals:{0}"
KEY_A: Final = "1b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"
KEY_B: Final = "2b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"
KEY_C: Final = "3b9d6bcd-bbfd-4b2d-9b5d-ab8dfbbd4bed"


async def _post(
    config: OutboundConfig, key: str, token: int | None, signal_id: str, shard: str = SHARD
) -> Delivered | Duplicate | Rejected | Fenced | object:
    body = encode_canonical(make_signal(signal_id=signal_id))
    lease = None if token is None else LeaseStamp(shard, token)
    async with HmacClient(config) as client:
        return await client.attempt(body, idempotency_key=key, lease=lease)


async def test_a_lower_token_is_refused_as_stale_with_the_current_token(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """Token 7 accepted, then token 5 for the same shard: 409 stale-lease naming 7; not stored."""
    app, _ = ingest_server
    assert isinstance(await _post(outbound_config, KEY_A, 7, "s-a"), Delivered)
    refused = await _post(outbound_config, KEY_B, 5, "s-b")
    assert isinstance(refused, Fenced)
    assert refused.status == 409
    assert refused.cause.current_token == 7
    assert refused.cause.outcome is Outcome.FENCED
    assert [r.signal.signal_id for r in app.received] == ["s-a"]
    assert app.fences.highest[("mt5-trader-1", SHARD)] == 7


async def test_an_equal_or_higher_token_is_accepted_and_becomes_the_highest(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """The same token goes on; a higher one is accepted and then a lower one is refused."""
    app, _ = ingest_server
    assert isinstance(await _post(outbound_config, KEY_A, 3, "s-a"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_B, 3, "s-b"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_C, 9, "s-c"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_A, 3, "s-a"), Fenced)
    assert app.fences.highest[("mt5-trader-1", SHARD)] == 9


async def test_shards_are_fenced_apart_and_no_header_is_never_fenced(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """A token counts only for its own shard; a POST without the header (parallel) goes on."""
    assert isinstance(await _post(outbound_config, KEY_A, 9, "s-a"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_B, 1, "s-b", shard="signals:{1}"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_C, None, "s-c"), Delivered)


async def test_a_stale_retry_of_a_stored_key_is_fenced_not_a_duplicate(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """The stale owner learns it is stale even for a key the server has: fenced, not acked."""
    assert isinstance(await _post(outbound_config, KEY_A, 4, "s-a"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_A, 5, "s-a"), Duplicate)
    assert isinstance(await _post(outbound_config, KEY_A, 4, "s-a"), Fenced)


async def test_the_stale_lease_answer_is_problem_json_distinct_from_the_idempotency_409(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """On the wire: 409, application/problem+json, type ...stale-lease, current_token."""
    app, _ = ingest_server
    assert isinstance(await _post(outbound_config, KEY_A, 8, "s-a"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_A, 8, "s-a"), Duplicate)
    captured: list[httpx.Response] = []

    async def keep(response: httpx.Response) -> None:
        await response.aread()
        captured.append(response)

    transport = httpx.AsyncHTTPTransport()
    body = encode_canonical(make_signal(signal_id="s-b"))
    http = httpx.AsyncClient(transport=transport, event_hooks={"response": [keep]})
    async with http, HmacClient(outbound_config, transport=_Forward(http)) as client:
        await client.attempt(body, idempotency_key=KEY_B, lease=LeaseStamp(SHARD, 2))
    (response,) = captured
    assert response.status_code == 409
    assert response.headers["content-type"] == PROBLEM_CONTENT_TYPE
    problem = response.json()
    assert problem["type"] == STALE_LEASE_TYPE
    assert problem["current_token"] == 8
    assert problem["token"] == 2
    assert app.refusals["stale lease"] == 1


class _Forward(httpx.AsyncBaseTransport):
    """Send through another client, whose hooks see the raw answer."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self._http = http

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._http.send(request)
        return httpx.Response(
            response.status_code, headers=response.headers, content=response.content
        )


def test_a_lease_header_the_fence_cannot_read_is_malformed_and_records_nothing() -> None:
    """An unreadable lease header is malformed (the server answers 400): never stale or fresh."""
    fences = Fences()
    verdict = fences.check("p", {"x-signal-lease": "token=abc"})
    assert verdict.malformed
    fences.record("p", verdict)
    assert fences.highest == {}
    assert fences.check("p", {}).stamp is None


async def test_with_fencing_off_the_stale_write_lands(
    ingest_server: tuple[IngestApp, str], outbound_config: OutboundConfig
) -> None:
    """INGEST_FENCING=false: the reference server ignores the token (the residual risk)."""
    app, _ = ingest_server
    app.fences = Fences(enabled=False)
    assert isinstance(await _post(outbound_config, KEY_A, 7, "s-a"), Delivered)
    assert isinstance(await _post(outbound_config, KEY_B, 5, "s-b"), Delivered)
    assert len(app.received) == 2


def test_ingest_fencing_reads_booleans_and_refuses_anything_else() -> None:
    """INGEST_FENCING defaults to true, reads true/false, and names itself when wrong."""
    assert fencing_from_env({}) is True
    assert fencing_from_env({"INGEST_FENCING": "false"}) is False
    assert fencing_from_env({"INGEST_FENCING": " TRUE "}) is True
    with pytest.raises(ConfigError, match="INGEST_FENCING"):
        fencing_from_env({"INGEST_FENCING": "sometimes"})


@pytest.mark.parametrize(
    ("content_type", "details", "token"),
    [
        (PROBLEM_CONTENT_TYPE, {"type": STALE_LEASE_TYPE, "current_token": 4}, 4),
        ("application/problem+json; charset=utf-8", {"type": "/p/stale-lease"}, 0),
        ("application/json", {"type": STALE_LEASE_TYPE, "current_token": 4}, None),
        (PROBLEM_CONTENT_TYPE, {"type": "about:blank"}, None),
        (PROBLEM_CONTENT_TYPE, {"detail": "duplicate idempotency key"}, None),
        (PROBLEM_CONTENT_TYPE, "stale-lease", None),
        (PROBLEM_CONTENT_TYPE, {"type": STALE_LEASE_TYPE, "current_token": True}, 0),
    ],
)
def test_only_a_problem_json_of_type_stale_lease_is_a_stale_lease_answer(
    content_type: str, details: object, token: int | None
) -> None:
    """The media type and the problem type both have to say it; anything else is not fenced."""
    assert stale_lease_token(content_type, details) == token


def test_the_outcome_table_fences_409_and_412_only_with_the_stale_lease_body() -> None:
    """409/412 with the stale-lease body: fenced; 409 without it stays a duplicate."""
    assert DEFAULT_TABLE.for_answer(409, stale_lease=True).action is Action.FENCED
    assert DEFAULT_TABLE.for_answer(412, stale_lease=True).action is Action.FENCED
    assert DEFAULT_TABLE.for_answer(409, stale_lease=False).action is Action.ACK_DUPLICATE
    assert DEFAULT_TABLE.for_answer(400, stale_lease=True).action is Action.DEAD_LETTER
