"""The reference server's replay cache, producer-scoped keys and bare 401s (issue 19).

Requests go over real HTTP on loopback to :class:`IngestApp`; the bridge's own client signs
where a test needs a producer as deployed.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any, Final

import httpx
import pytest

from bridge.core.signal import encode_canonical
from bridge.core.signing import INGEST_PATH, build_signature
from bridge.core.timestamps import format_timestamp
from bridge.devkit.ingest import IngestApp
from bridge.devkit.ingest_keys import load_ingest_keys, load_required_version
from bridge.devkit.replay import ReplayCache
from bridge.edge.client import HmacClient
from bridge.errors import AlreadyReceivedError, AuthError, ConfigError
from bridge.telemetry.logs import JsonFormatter
from tests.fixtures_ingest import (
    KEY_ID,
    PRODUCER_ID,
    TEST_SECRET,
    make_outbound_config,
    make_signal,
)

BODY: Final = encode_canonical(make_signal())
ALPHABET: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"


@pytest.fixture
async def http(ingest_server: tuple[IngestApp, str]) -> AsyncIterator[httpx.AsyncClient]:
    """Yield a plain httpx client aimed at the reference server."""
    async with httpx.AsyncClient(base_url=ingest_server[1], timeout=10) as client:
        yield client


def _captured() -> dict[str, str]:
    """The headers of one v1 request as a wire observer would capture them."""
    timestamp = format_timestamp(datetime.now(UTC))
    return {
        "Content-Type": "application/json",
        "X-Producer-Id": PRODUCER_ID,
        "X-Key-Id": KEY_ID,
        "X-Timestamp": timestamp,
        "X-Signature": build_signature(TEST_SECRET, BODY, timestamp, PRODUCER_ID),
        "X-Idempotency-Key": str(uuid.uuid4()),
    }


def _spellings(signature: str) -> list[str]:
    """The four base64 spellings of a 32-byte value: its last character's two spare bits."""
    base = ALPHABET.index(signature[-2]) & ~0b11
    return [signature[:-2] + ALPHABET[base + spare] + "=" for spare in range(4)]


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The reference server's log lines, as the JSON objects it writes."""
    formatter = JsonFormatter()
    return [json.loads(formatter.format(r)) for r in caplog.records if r.name == "bridge.ingest"]


async def test_the_four_base64_spellings_of_one_captured_request_store_one_signal(
    ingest_app: IngestApp, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    """One captured request resent in all four spellings under fresh keys stores one signal."""
    caplog.set_level(logging.INFO, logger="bridge.ingest")
    captured = _captured()
    statuses = []
    spellings = _spellings(captured["X-Signature"])
    for spelling in spellings:
        headers = {**captured, "X-Signature": spelling, "X-Idempotency-Key": str(uuid.uuid4())}
        response = await http.post(INGEST_PATH, content=BODY, headers=headers)
        statuses.append(response.status_code)
        if response.status_code == 401:
            assert response.json() == {"detail": "invalid signature"}
    assert statuses == [201 if s == captured["X-Signature"] else 401 for s in spellings]
    fresh = {**captured, "X-Idempotency-Key": str(uuid.uuid4())}
    replayed = await http.post(INGEST_PATH, content=BODY, headers=fresh)
    assert replayed.json() == {"detail": "invalid signature"}
    assert len(ingest_app.received) == 1
    checks = [line["check"] for line in _lines(caplog) if line["http_code"] == 401]
    assert checks == ["signature", "signature", "signature", "replayed_signature"]


async def test_a_replayed_signature_is_refused_inside_the_window_and_after_it(
    ingest_app: IngestApp, http: httpx.AsyncClient
) -> None:
    """Resent under a new key a signature is 401 in the window (replay) and after it (stale)."""
    captured = _captured()
    first = await http.post(INGEST_PATH, content=BODY, headers=captured)
    again = {**captured, "X-Idempotency-Key": str(uuid.uuid4())}
    replayed = await http.post(INGEST_PATH, content=BODY, headers=again)
    assert (first.status_code, replayed.status_code) == (201, 401)
    sent_at = datetime.fromisoformat(captured["X-Timestamp"]).timestamp()
    ingest_app.clock = lambda: sent_at + ingest_app.tolerance_s + 1
    late = await http.post(INGEST_PATH, content=BODY, headers=again)
    assert late.status_code == 401  # now outside the window: refused by the timestamp check
    assert ingest_app.refusals == {"replayed signature": 1, "timestamp outside window": 1}
    assert len(ingest_app.received) == 1


def test_the_replay_cache_forgets_a_signature_when_its_window_ends() -> None:
    """Entries live until their own expiry, then go: memory holds the live window only."""
    cache = ReplayCache()
    for n in range(1000):
        assert cache.first_use(n.to_bytes(32, "big"), until=100.0 + n % 10, now=0.0)
    assert len(cache) == 1000
    assert not cache.first_use((5).to_bytes(32, "big"), until=200.0, now=50.0)
    assert cache.first_use(b"late" * 8, until=400.0, now=105.5)
    assert len(cache) == 1 + 1000 // 10 * 4  # expiries 106..109 remain, plus the new one
    assert cache.first_use(b"later" * 8, until=500.0, now=450.0)
    assert len(cache) == 1


async def test_producer_b_with_producer_a_signal_id_is_stored_too(
    ingest_server: tuple[IngestApp, str],
) -> None:
    """Two producers' different signals with one signal_id (one idempotency key): both stored."""
    app, base_url = ingest_server
    key = str(uuid.uuid5(uuid.NAMESPACE_URL, "sig_abc123"))
    for producer, price in (("producer-a", 2000.5), ("producer-b", 2005.0)):
        config = make_outbound_config(base_url, {"PRODUCER_ID": producer})
        async with HmacClient(config) as client:
            await client.post_signal(make_signal(entry_price=price), idempotency_key=key)
    stored = sorted((r.producer_id, r.idempotency_key, r.signal.entry_price) for r in app.received)
    assert stored == [("producer-a", key, 2000.5), ("producer-b", key, 2005.0)]
    config = make_outbound_config(base_url, {"PRODUCER_ID": "producer-b"})
    async with HmacClient(config) as client:
        with pytest.raises(AlreadyReceivedError):  # its own repeated key is still a duplicate
            await client.post_signal(make_signal(), idempotency_key=key)
    assert len(app.received) == 2


@pytest.mark.parametrize("version", ["1", "2"])
async def test_a_key_bound_to_another_producer_is_refused_401(
    ingest_app: IngestApp,
    ingest_server: tuple[IngestApp, str],
    caplog: pytest.LogCaptureFixture,
    version: str,
) -> None:
    """A key bound to producer A signs for A only: B's correctly signed request gets 401."""
    caplog.set_level(logging.WARNING, logger="bridge.ingest")
    ingest_app.producers = {KEY_ID: frozenset({"producer-a"})}
    env = {"PRODUCER_ID": "producer-a", "OUTBOUND_SIGNATURE_VERSION": version}
    async with HmacClient(make_outbound_config(ingest_server[1], env)) as bound:
        await bound.post_signal(make_signal())
    env["PRODUCER_ID"] = "producer-b"
    async with HmacClient(make_outbound_config(ingest_server[1], env)) as other:
        with pytest.raises(AuthError) as refused:
            await other.post_signal(make_signal())
    assert (refused.value.http_code, refused.value.details) == (
        401,
        {"detail": "invalid signature"},
    )
    [line] = [line for line in _lines(caplog) if line["http_code"] == 401]
    assert (line["check"], line["producer_id"]) == ("producer", "producer-b")
    assert [r.producer_id for r in ingest_app.received] == ["producer-a"]


async def test_required_version_two_refuses_a_v1_bridge_and_stores_a_v2_one(
    ingest_app: IngestApp, ingest_server: tuple[IngestApp, str], caplog: pytest.LogCaptureFixture
) -> None:
    """With required_version=2 a v1 bridge gets 401 (log: 'version'), a v2 bridge gets 201."""
    caplog.set_level(logging.WARNING, logger="bridge.ingest")
    ingest_app.required_version = 2
    async with HmacClient(make_outbound_config(ingest_server[1])) as v1:
        with pytest.raises(AuthError) as refused:
            await v1.post_signal(make_signal())
    assert refused.value.details == {"detail": "invalid signature"}
    v2_config = make_outbound_config(ingest_server[1], {"OUTBOUND_SIGNATURE_VERSION": "2"})
    async with HmacClient(v2_config) as v2:
        await v2.post_signal(make_signal())
    assert [line["check"] for line in _lines(caplog)] == ["version"]
    assert len(ingest_app.received) == 1


async def test_unbound_keys_get_one_warning_at_start(caplog: pytest.LogCaptureFixture) -> None:
    """At startup one WARNING lists the key ids bound to no producer; none when all are bound."""
    caplog.set_level(logging.INFO, logger="bridge.ingest")
    secrets = {"k1": TEST_SECRET, "k2": TEST_SECRET}
    await _start_and_stop(IngestApp(secrets=secrets, producers={"k2": frozenset({"p"})}))
    both = {"k1": frozenset({"p"}), "k2": frozenset({"q"})}
    await _start_and_stop(IngestApp(secrets=secrets, producers=both))
    warnings = [line for line in _lines(caplog) if line["level"] == "WARNING"]
    assert [line["key_ids"] for line in warnings] == [["k1"]]


async def _start_and_stop(app: IngestApp) -> None:
    """Drive one ASGI lifespan (startup, shutdown) through ``app``."""
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: Any) -> None:
        return None

    await app({"type": "lifespan"}, receive, send)


def test_ingest_secrets_bind_keys_to_producers_before_the_first_equals_sign() -> None:
    """``id@a:b=secret`` binds id to a and b; base64 secret text (+, /, =) is kept whole."""
    base64_secret = "c2VjcmV0LXRleHQ+Pz8/Pz8/c2VjcmV0LXRleHQ=="
    keys = load_ingest_keys(
        {"INGEST_SECRETS": f"k1@mt5-a:mt5-b={base64_secret},k2=plain-secret-0123456789"}
    )
    assert keys.secrets == {"k1": base64_secret.encode(), "k2": b"plain-secret-0123456789"}
    assert keys.producers == {"k1": frozenset({"mt5-a", "mt5-b"})}
    assert base64_secret not in repr(keys)


@pytest.mark.parametrize(
    "value", ["k1@=secret-0123456789abcdef", "k1@a::b=secret-0123456789abcdef", "@a=s" * 2]
)
def test_a_malformed_producer_binding_is_refused(value: str) -> None:
    """An empty producer list or name, or a missing key id, stops the start naming the spelling."""
    with pytest.raises(ConfigError, match="key_id\\[@producer"):
        load_ingest_keys({"INGEST_SECRETS": value})


@pytest.mark.parametrize(("raw", "expected"), [("", None), ("2", 2)])
def test_require_signature_version_reads_two_or_unset(raw: str, expected: int | None) -> None:
    """INGEST_REQUIRE_SIGNATURE_VERSION is 2 or unset."""
    assert load_required_version({"INGEST_REQUIRE_SIGNATURE_VERSION": raw}) == expected


@pytest.mark.parametrize("raw", ["1", "3", "v2"])
def test_require_signature_version_refuses_other_values(raw: str) -> None:
    """Any other INGEST_REQUIRE_SIGNATURE_VERSION stops the start naming the variable."""
    with pytest.raises(ConfigError) as refused:
        load_required_version({"INGEST_REQUIRE_SIGNATURE_VERSION": raw})
    assert refused.value.variable == "INGEST_REQUIRE_SIGNATURE_VERSION"
