"""HTTPS to the ingest server: verification, private CA, mutual TLS, and refusals that pause.

A real uvicorn TLS server runs the reference ingest app on 127.0.0.1 with certificates made by
trustme. The client must verify the server against the system store by default or against
OUTBOUND_CA_BUNDLE, present OUTBOUND_CLIENT_CERT / OUTBOUND_CLIENT_KEY when the server asks,
and treat a certificate that fails verification as a systemic error (AuthError, outcome
"auth"): the worker pauses with the entry pending, never downgrading or dead-lettering it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest
import redis.asyncio as aioredis
import trustme
import uvicorn

from bridge.config.loader import BridgeConfig
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.devkit.ingest import IngestApp
from bridge.edge.client import HmacClient
from bridge.edge.results import IngestResponse
from bridge.edge.settings import OutboundConfig
from bridge.errors import AuthError, DeliveryError, Outcome
from bridge.streams.producer import publish
from tests.support import KEY_ID, SECRET, bridge_config, eventually, make_signal, running

# Redis is never reached by the client-level tests; the config only has to be valid.
UNUSED_REDIS: Final = "redis://127.0.0.1:9/0"
SERVER_START_TIMEOUT_S: Final = 10.0


@dataclass(frozen=True)
class Pki:
    """PEM files in a temporary directory: a server CA, a client CA, an unrelated CA, leaves."""

    ca: Path
    other_ca: Path
    server_cert: Path
    server_key: Path
    wrong_host_cert: Path
    wrong_host_key: Path
    expired_cert: Path
    expired_key: Path
    client_ca: Path
    client_cert: Path
    client_key: Path
    client_combined: Path
    stranger_cert: Path
    stranger_key: Path


def _write_leaf(leaf: trustme.LeafCert, directory: Path, name: str) -> tuple[Path, Path]:
    cert = directory / f"{name}.pem"
    key = directory / f"{name}.key"
    cert.write_bytes(b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(key))
    return cert, key


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """Certificates for every case, made once for the module."""
    directory = tmp_path_factory.mktemp("pki")
    server_ca = trustme.CA()
    client_ca = trustme.CA()
    other_ca = trustme.CA()
    (directory / "ca.pem").write_bytes(server_ca.cert_pem.bytes())
    (directory / "other-ca.pem").write_bytes(other_ca.cert_pem.bytes())
    (directory / "client-ca.pem").write_bytes(client_ca.cert_pem.bytes())
    server_cert, server_key = _write_leaf(
        server_ca.issue_cert("127.0.0.1", "localhost"), directory, "server"
    )
    wrong_cert, wrong_key = _write_leaf(
        server_ca.issue_cert("ingest.example.com"), directory, "wrong-host"
    )
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=2)
    expired_cert, expired_key = _write_leaf(
        server_ca.issue_cert("127.0.0.1", not_before=past, not_after=past + dt.timedelta(days=1)),
        directory,
        "expired",
    )
    client_leaf = client_ca.issue_cert("bridge-client@test", common_name="signal-bridge")
    client_cert, client_key = _write_leaf(client_leaf, directory, "client")
    combined = directory / "client-combined.pem"
    combined.write_bytes(client_leaf.private_key_and_cert_chain_pem.bytes())
    stranger_cert, stranger_key = _write_leaf(
        other_ca.issue_cert("bridge-client@test"), directory, "stranger"
    )
    return Pki(
        ca=directory / "ca.pem",
        other_ca=directory / "other-ca.pem",
        server_cert=server_cert,
        server_key=server_key,
        wrong_host_cert=wrong_cert,
        wrong_host_key=wrong_key,
        expired_cert=expired_cert,
        expired_key=expired_key,
        client_ca=directory / "client-ca.pem",
        client_cert=client_cert,
        client_key=client_key,
        client_combined=combined,
        stranger_cert=stranger_cert,
        stranger_key=stranger_key,
    )


@contextmanager
def serve_tls(
    app: IngestApp, certfile: Path, keyfile: Path, *, client_ca: Path | None = None
) -> Iterator[str]:
    """Run ``app`` on uvicorn over TLS on 127.0.0.1 in a thread; yield the https base URL.

    With ``client_ca`` the server requires a client certificate issued by that CA (mTLS).
    Mirrors ``bridge.devkit.ingest.serve_in_thread``: a pre-bound socket, a bounded start, a join.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        log_level="critical",
        access_log=False,
        lifespan="off",
        ssl_certfile=str(certfile),
        ssl_keyfile=str(keyfile),
        ssl_ca_certs=str(client_ca) if client_ca is not None else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if client_ca is not None else ssl.CERT_NONE,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(
        target=server.run, kwargs={"sockets": [sock]}, name="tls-ingest", daemon=True
    )
    thread.start()
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise AssertionError("TLS ingest server did not start")
            time.sleep(0.01)
        yield f"https://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
        assert not thread.is_alive(), "TLS ingest server thread did not stop"


def _app() -> IngestApp:
    return IngestApp(secrets={KEY_ID: SECRET.encode()})


def _config(url: str, redis_url: str = UNUSED_REDIS, stream: str = "s", **env: str) -> BridgeConfig:
    return bridge_config(url, redis_url, stream, **env)


def _outbound(url: str, **env: str) -> OutboundConfig:
    return _config(url, **env).outbound


async def _post_once(config: OutboundConfig) -> IngestResponse:
    async with HmacClient(config) as client:
        answer = await client.post_signal(make_signal(1))
    assert answer is not None
    return answer


def _assert_tls_auth_error(exc: AuthError, *needles: str) -> None:
    """The refusal is systemic, says it is TLS, names the setting to check and the cause."""
    message = str(exc)
    assert exc.outcome is Outcome.AUTH
    assert "TLS" in message
    assert "certificate" in message.lower()
    assert "OUTBOUND_CA_BUNDLE" in message
    for needle in needles:
        assert needle in message, f"{needle!r} not in {message!r}"
    cause: BaseException | None = exc
    chain: list[BaseException] = []
    while cause is not None and len(chain) < 8:
        chain.append(cause)
        cause = cause.__cause__ or cause.__context__
    assert any(isinstance(c, ssl.SSLCertVerificationError) for c in chain), chain


# --- the client against a real TLS server ---------------------------------------------------


async def test_private_ca_bundle_verifies_the_server(pki: Pki) -> None:
    """With OUTBOUND_CA_BUNDLE naming the private CA, a signal is delivered over HTTPS."""
    app = _app()
    with serve_tls(app, pki.server_cert, pki.server_key) as url:
        response = await _post_once(_outbound(url, OUTBOUND_CA_BUNDLE=str(pki.ca)))
    assert response.status == "received"
    assert [r.signal.signal_id for r in app.received] == ["sig-1"]


async def test_keep_alive_connection_is_reused_over_tls(pki: Pki) -> None:
    """Several signals over one client are all delivered through the verified TLS pool."""
    app = _app()
    with serve_tls(app, pki.server_cert, pki.server_key) as url:
        async with HmacClient(_outbound(url, OUTBOUND_CA_BUNDLE=str(pki.ca))) as client:
            for i in range(5):
                await client.post_signal(make_signal(i))
    assert sorted(str(r.signal.signal_id) for r in app.received) == [f"sig-{i}" for i in range(5)]


async def test_system_store_default_refuses_an_unknown_private_ca(pki: Pki) -> None:
    """Without OUTBOUND_CA_BUNDLE the system store is used, and it does not know a trustme CA."""
    app = _app()
    with serve_tls(app, pki.server_cert, pki.server_key) as url:
        config = _outbound(url)
        assert config.ca_bundle is None
        with pytest.raises(AuthError) as caught:
            await _post_once(config)
    _assert_tls_auth_error(caught.value, "certificate verify failed")
    assert app.requests_total == 0, "nothing may be sent over an unverified connection"


async def test_wrong_ca_is_a_systemic_tls_error(pki: Pki) -> None:
    """A server certificate from a CA other than OUTBOUND_CA_BUNDLE raises AuthError."""
    app = _app()
    with serve_tls(app, pki.server_cert, pki.server_key) as url, pytest.raises(AuthError) as caught:
        await _post_once(_outbound(url, OUTBOUND_CA_BUNDLE=str(pki.other_ca)))
    _assert_tls_auth_error(caught.value, "certificate verify failed")
    assert app.requests_total == 0, "no downgrade: the request must never be sent"


async def test_hostname_mismatch_fails_verification(pki: Pki) -> None:
    """A certificate from the trusted CA but for another name is refused like an unknown CA."""
    app = _app()
    with (
        serve_tls(app, pki.wrong_host_cert, pki.wrong_host_key) as url,
        pytest.raises(AuthError) as caught,
    ):
        await _post_once(_outbound(url, OUTBOUND_CA_BUNDLE=str(pki.ca)))
    _assert_tls_auth_error(caught.value, "mismatch")
    assert app.requests_total == 0


async def test_expired_server_certificate_fails_verification(pki: Pki) -> None:
    """An expired certificate from the trusted CA is refused as a TLS verification failure."""
    app = _app()
    with (
        serve_tls(app, pki.expired_cert, pki.expired_key) as url,
        pytest.raises(AuthError) as caught,
    ):
        await _post_once(_outbound(url, OUTBOUND_CA_BUNDLE=str(pki.ca)))
    _assert_tls_auth_error(caught.value, "expired")
    assert app.requests_total == 0


async def test_mutual_tls_with_client_certificate_passes(pki: Pki) -> None:
    """A server that requires a client certificate accepts OUTBOUND_CLIENT_CERT/KEY."""
    app = _app()
    with serve_tls(app, pki.server_cert, pki.server_key, client_ca=pki.client_ca) as url:
        config = _outbound(
            url,
            OUTBOUND_CA_BUNDLE=str(pki.ca),
            OUTBOUND_CLIENT_CERT=str(pki.client_cert),
            OUTBOUND_CLIENT_KEY=str(pki.client_key),
        )
        response = await _post_once(config)
    assert response.status == "received"
    assert len(app.received) == 1


async def test_mutual_tls_with_key_inside_the_certificate_file(pki: Pki) -> None:
    """OUTBOUND_CLIENT_CERT alone works when the PEM holds the key and the chain."""
    app = _app()
    with serve_tls(app, pki.server_cert, pki.server_key, client_ca=pki.client_ca) as url:
        config = _outbound(
            url,
            OUTBOUND_CA_BUNDLE=str(pki.ca),
            OUTBOUND_CLIENT_CERT=str(pki.client_combined),
        )
        assert config.client_key is None
        response = await _post_once(config)
    assert response.status == "received"


async def test_mutual_tls_without_client_certificate_fails(pki: Pki) -> None:
    """When the server requires a client certificate and none is configured, nothing is stored."""
    app = _app()
    with (
        serve_tls(app, pki.server_cert, pki.server_key, client_ca=pki.client_ca) as url,
        pytest.raises(DeliveryError) as caught,
    ):
        await _post_once(_outbound(url, OUTBOUND_CA_BUNDLE=str(pki.ca)))
    assert caught.value.outcome is not Outcome.SUCCESS
    assert app.received == []
    assert app.requests_total == 0


async def test_mutual_tls_with_untrusted_client_certificate_fails(pki: Pki) -> None:
    """A client certificate from a CA the server does not trust is refused; nothing is stored."""
    app = _app()
    with serve_tls(app, pki.server_cert, pki.server_key, client_ca=pki.client_ca) as url:
        config = _outbound(
            url,
            OUTBOUND_CA_BUNDLE=str(pki.ca),
            OUTBOUND_CLIENT_CERT=str(pki.stranger_cert),
            OUTBOUND_CLIENT_KEY=str(pki.stranger_key),
        )
        with pytest.raises(DeliveryError) as caught:
            await _post_once(config)
    assert caught.value.outcome is not Outcome.SUCCESS
    assert app.received == []
    assert app.requests_total == 0


# --- the worker: a refused certificate pauses, the entry stays pending ----------------------


@asynccontextmanager
async def _running(
    redis: aioredis.Redis, config: BridgeConfig, *, consumer: str = "c1"
) -> AsyncIterator[Worker]:
    """Run a Worker (consumer ``consumer``) in the background; stop it and wait at the end."""
    async with running(redis, config, consumer=consumer) as worker:
        yield worker


async def _pending(redis: aioredis.Redis, stream: str) -> int:
    summary = await redis.xpending(stream, "g")
    return int(summary["pending"])


@pytest.mark.redis
async def test_worker_pauses_on_untrusted_certificate_then_delivers_with_right_ca(
    pki: Pki,
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Wrong CA: the breaker opens, entries stay pending, no dead letter; the right CA delivers."""
    caplog.set_level(logging.INFO, logger="bridge")
    app = _app()
    signals = [make_signal(i) for i in range(3)]
    ids = [await publish(redis, s, stream=stream_name) for s in signals]
    with serve_tls(app, pki.server_cert, pki.server_key) as url:
        wrong = _config(url, redis_url, stream_name, OUTBOUND_CA_BUNDLE=str(pki.other_ca))
        async with _running(redis, wrong) as worker:
            await eventually(lambda: worker.breaker.is_open, timeout_s=10, what="breaker open")
            assert worker.breaker.reason == "auth"
            assert not worker.ready()
            await eventually(
                lambda: worker.stats.retries >= 3, timeout_s=10, what="probes while paused"
            )
            # Reading is paused: a read already blocked when the breaker opened ends within
            # BRIDGE_BLOCK_MS (50 ms); an entry published after that is not read.
            await asyncio.sleep(0.2)
            late = make_signal(3)
            ids.append(await publish(redis, late, stream=stream_name))
            signals.append(late)
            await asyncio.sleep(0.3)
            assert await _lag(redis, stream_name) == 1, "no new entry is read while paused"
            assert await _pending(redis, stream_name) == len(signals) - 1
            assert worker.stats.delivered == 0
            assert worker.stats.dead_lettered == {}
        assert await redis.xlen(f"{stream_name}:dlq") == 0
        assert await _pending(redis, stream_name) == len(signals) - 1, "entries stay pending"
        assert app.requests_total == 0
        refusals = [
            r for r in caplog.records if r.name == "bridge.worker" and r.levelname == "ERROR"
        ]
        texts = [f"{r.getMessage()} {getattr(r, 'fields', {})}" for r in refusals]
        [text] = texts  # one ERROR for the whole refusal, naming TLS trust as the cause
        assert "refuses every signal alike" in text, text
        assert "TLS trust" in text, text
        assert any(
            "circuit breaker open" in r.getMessage()
            for r in caplog.records
            if r.name == "bridge.worker" and r.levelname == "INFO"
        )

        right = _config(url, redis_url, stream_name, OUTBOUND_CA_BUNDLE=str(pki.ca))
        async with _running(redis, right) as worker:
            await eventually(
                lambda: worker.stats.delivered == len(signals), timeout_s=15, what="delivery"
            )
            await eventually(
                lambda: _pending_is_zero(redis, stream_name), timeout_s=10, what="acks"
            )
            assert not worker.breaker.is_open
    assert app.keys() == {
        idempotency_key(stream_name, entry_id, s.signal_id)
        for entry_id, s in zip(ids, signals, strict=True)
    }
    assert await redis.xlen(f"{stream_name}:dlq") == 0


async def _lag(redis: aioredis.Redis, stream: str) -> int:
    groups = await redis.xinfo_groups(stream)
    return int(next(g["lag"] for g in groups if g["name"] == b"g"))


async def _pending_is_zero(redis: aioredis.Redis, stream: str) -> bool:
    return await _pending(redis, stream) == 0
