"""Secrets never leave the process: not in logs, spans, metrics, errors, reprs or command output.

The HMAC secret and a Redis password are known to the test, so every place an operator could
read - log records (raw, JSON and text), span attributes/events/status, metric labels, the
message and repr of every DeliveryError, config and client reprs, dead letters, the output of
``signal-bridge status`` and ``signal-bridge run`` - is searched for them in plain text, base64
and hex. The runs include failures (401, 500, 422, a refused connection, a timeout), since error
paths are where secrets usually slip out.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import signal
import socket
import subprocess
import sys
import traceback
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit, urlunsplit

import msgspec
import pytest
import redis.asyncio as aioredis
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import bridge.devkit.ingest
from bridge.config.loader import BridgeConfig, load_config
from bridge.core.secrets import redact_url
from bridge.delivery.backoff import Backoff
from bridge.delivery.jobs import idempotency_key
from bridge.delivery.worker import Worker
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.errors import ConfigError, DeliveryError
from bridge.streams.deadletters import DeadLetterStore
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish, publish_raw
from bridge.telemetry.logs import JsonFormatter, TextFormatter
from bridge.telemetry.metrics import Metrics
from bridge.telemetry.tracing import get_tracer
from tests.otlp_receiver import OtlpReceiver
from tests.procs import Replicas
from tests.support import KEY_ID, bridge_config, bridge_env, drained, eventually, make_signal

pytestmark = pytest.mark.redis

ROOT: Final = Path(__file__).resolve().parents[2]
SECRET: Final = "Kq7-known-hmac-secret-x9Zt2Lw4"
PASSWORD: Final = "Rp3-redis-password-v8Nc5Qe1"
OTLP_TOKEN: Final = "Tk5-otlp-api-token-h2Jm6Ys0"
FAST: Final = Backoff(0.001, 0.01)
WAIT_S: Final = 15.0


def forms(secret: str) -> list[str]:
    """The secret as plain text, base64 (standard, URL-safe, unpadded) and hex (both cases)."""
    raw = secret.encode()
    b64 = base64.b64encode(raw).decode()
    return [
        secret,
        b64,
        b64.rstrip("="),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
        raw.hex(),
        raw.hex().upper(),
    ]


FORBIDDEN: Final = [*forms(SECRET), *forms(PASSWORD), *forms(OTLP_TOKEN)]


def assert_no_secret(texts: Iterable[str], where: str) -> None:
    """Fail naming the first text that contains any form of a secret."""
    for text in texts:
        found = [secret for secret in FORBIDDEN if secret in text]
        assert not found, f"{where} leaks {found!r}: {text[:2000]}"


def test_the_leak_check_recognises_every_form() -> None:
    """The checker itself catches the secret in plain text, base64 and hex, and passes clean text."""  # noqa: E501
    for leaked in forms(SECRET):
        with pytest.raises(AssertionError):
            assert_no_secret([f"header={leaked};"], "canary")
    assert_no_secret(["nothing to see", SECRET[:-1]], "canary")


# --- fixtures --------------------------------------------------------------------------------


@dataclass
class Server:
    """The reference ingest server (knowing SECRET), its URL, and one-shot/permanent faults."""

    app: IngestApp
    url: str
    once: dict[str, int]
    always: dict[str, int]


@pytest.fixture
def server() -> Iterator[Server]:
    """The reference ingest server on a free loopback port, keyed by idempotency-key faults."""
    once: dict[str, int] = {}
    always: dict[str, int] = {}

    def fault(headers: Mapping[str, str]) -> int | None:
        key = headers.get("x-idempotency-key", "")
        return always.get(key) or once.pop(key, None)

    app = IngestApp(secrets={KEY_ID: SECRET.encode()}, fault=fault)
    with serve_in_thread(app) as url:
        yield Server(app, url, once, always)


@dataclass
class Capture:
    """Spans and metrics of the client, the worker and the server, kept in memory."""

    exporter: InMemorySpanExporter
    tracer: trace.Tracer
    reader: InMemoryMetricReader
    metrics: Metrics

    def texts(self) -> list[str]:
        """Every finished span (name, attributes, events, status, resource) and all metrics."""
        out = [span.to_json() for span in self.exporter.get_finished_spans()]
        data = self.reader.get_metrics_data()
        if data is not None:
            out.append(data.to_json())
        return out


@pytest.fixture
def capture(monkeypatch: pytest.MonkeyPatch) -> Iterator[Capture]:
    """In-memory SDK providers; the reference server's spans go to the same exporter."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(
        bridge.devkit.ingest, "get_tracer", lambda provider_arg=None: get_tracer(provider)
    )
    try:
        yield Capture(exporter, get_tracer(provider), reader, Metrics(meter_provider))
    finally:
        provider.shutdown()
        meter_provider.shutdown()


@pytest.fixture
def refused_url() -> Iterator[str]:
    """A loopback URL whose port is bound but not listening: connections are refused."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def silent_url() -> Iterator[str]:
    """A loopback URL that accepts connections (kernel backlog) but never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(8)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
async def redis_user(redis: aioredis.Redis, redis_url: str) -> AsyncIterator[tuple[str, str]]:
    """A Redis ACL user whose password is PASSWORD (removed after); yields (its URL, its name)."""
    name = f"bridge-{uuid.uuid4().hex[:8]}"
    await redis.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{PASSWORD}"],
        categories=["+@all"],
        keys=["*"],
        channels=["*"],
    )
    try:
        yield _with_credentials(redis_url, name, PASSWORD), name
    finally:
        await redis.acl_deluser(name)


def _with_credentials(url: str, user: str, password: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=f"{user}:{password}@{parts.hostname}:{parts.port}"))


def _config(server_url: str, redis_url: str, stream: str, **extra: str) -> BridgeConfig:
    """A config carrying the known secret (and whatever ``extra`` adds)."""
    return bridge_config(server_url, redis_url, stream, HMAC_PRODUCER_SECRET=SECRET, **extra)


def _error_texts(errors: Iterable[BaseException]) -> Iterator[str]:
    """str, repr, details, cause and the formatted traceback of each error."""
    for exc in errors:
        yield str(exc)
        yield repr(exc)
        yield repr(getattr(exc, "details", None))
        yield repr(exc.args)
        yield repr(exc.__cause__)
        yield "".join(traceback.format_exception(exc))


def _record_texts(records: Iterable[logging.LogRecord]) -> Iterator[str]:
    """Each record raw (message, args, extra fields), as a JSON line and as a text line."""
    json_formatter, text_formatter = JsonFormatter(), TextFormatter()
    for record in records:
        yield record.getMessage()
        yield repr(record.__dict__)
        yield json_formatter.format(record)
        yield text_formatter.format(record)


# --- in process ------------------------------------------------------------------------------


async def test_deliveries_and_failures_never_expose_the_hmac_secret(
    server: Server,
    capture: Capture,
    caplog: pytest.LogCaptureFixture,
    refused_url: str,
    silent_url: str,
) -> None:
    """Deliveries with 500, 401, 422, refused and timed-out POSTs leak the secret nowhere an operator looks."""  # noqa: E501
    caplog.set_level(logging.DEBUG)
    stream_name = f"test:{uuid.uuid4().hex[:12]}"
    errors: list[DeliveryError] = []
    config = _config(server.url, "redis://127.0.0.1:1/0", stream_name)
    server.once[idempotency_key(stream_name, "", "once-500")] = 500
    server.once[idempotency_key(stream_name, "", "once-401")] = 401
    server.always[idempotency_key(stream_name, "", "refuse-me")] = 422
    async with HmacClient(
        config.outbound, metrics=capture.metrics, tracer=capture.tracer
    ) as client:
        for signal_id in ("once-500", "once-401", "refuse-me"):
            key = idempotency_key(stream_name, "", signal_id)
            with pytest.raises(DeliveryError) as caught:
                await client.post_signal(make_signal(1, signal_id=signal_id), idempotency_key=key)
            errors.append(caught.value)
            # The one-shot faults pass on the retry: the signed request is accepted.
            if signal_id != "refuse-me":
                await client.post_signal(make_signal(1, signal_id=signal_id), idempotency_key=key)
        client_repr = repr(client)
    for url, timeout in ((refused_url, None), (silent_url, 0.3)):
        other = _config(url, "redis://127.0.0.1:1/0", stream_name).outbound
        async with HmacClient(other, metrics=capture.metrics, tracer=capture.tracer) as client:
            with pytest.raises(DeliveryError) as caught:
                await client.post_signal(make_signal(2), timeout=timeout)
            errors.append(caught.value)

    assert [e.http_code for e in errors] == [500, 401, 422, None, None]
    assert type(errors[-1]).__name__ == "DeliveryTimeoutError"
    assert len(server.app.received) == 2, "the secret signs requests the server accepts"
    failures = [r for r in caplog.records if r.getMessage() == "Signal post failed"]
    assert len(failures) == 5, "every failure was logged (so the check below is not vacuous)"
    assert_no_secret(_record_texts(caplog.records), "a log record")
    assert_no_secret([caplog.text], "the captured log")
    assert_no_secret(capture.texts(), "a span or metric")
    assert_no_secret(_error_texts(errors), "a DeliveryError")
    assert_no_secret(
        [
            client_repr,
            repr(config),
            str(config),
            repr(config.outbound),
            repr(config.outbound.secret),
        ],
        "a repr",
    )


async def test_a_worker_run_with_failures_never_exposes_the_hmac_secret(
    server: Server,
    capture: Capture,
    caplog: pytest.LogCaptureFixture,
    redis: aioredis.Redis,
    redis_url: str,
) -> None:
    """A worker delivering through 500, 401 and 422 answers leaks the secret in no log, span, dead letter or repr."""  # noqa: E501
    caplog.set_level(logging.DEBUG)
    stream_name = f"test:{uuid.uuid4().hex[:12]}"
    config = _config(server.url, redis_url, stream_name)
    server.once[idempotency_key(stream_name, "", "sig-1")] = 500
    server.once[idempotency_key(stream_name, "", "sig-2")] = 401
    server.always[idempotency_key(stream_name, "", "refuse-me")] = 422
    for i in range(3):
        await publish(redis, make_signal(i), stream=stream_name)
    await publish(redis, make_signal(3, signal_id="refuse-me"), stream=stream_name)
    await publish_raw(redis, {"signal": b'{"instrument": 1}'}, stream=stream_name)
    cfg = config.stream
    stream = SignalStream(
        redis, stream=cfg.stream, group=cfg.group, consumer=cfg.consumer, dlq_stream=cfg.dlq_stream
    )
    async with HmacClient(
        config.outbound, metrics=capture.metrics, tracer=capture.tracer
    ) as client:
        worker = Worker(
            stream, client, cfg, metrics=capture.metrics, tracer=capture.tracer, backoff=FAST
        )
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: drained(redis, stream_name), timeout_s=WAIT_S, what="drained")
        finally:
            worker.stop()
            await asyncio.wait_for(task, 30)
        reprs = [repr(client), repr(worker.stream), repr(config), repr(config.stream)]

    assert len(server.app.received) == 3
    assert worker.stats.retries == 2
    letters = await DeadLetterStore.of(stream).letters()
    assert sorted(e.field("dlq_reason") or "" for e in letters) == ["invalid", "rejected"]
    messages = {r.getMessage() for r in caplog.records}
    assert {"signal delivered", "delivery failed, will retry", "signal dead-lettered"} <= messages
    assert_no_secret(_record_texts(caplog.records), "a log record")
    assert_no_secret(capture.texts(), "a span or metric")
    assert_no_secret(
        (repr(e.fields) for e in letters), "a dead letter (what `signal-bridge dlq list` shows)"
    )
    assert_no_secret(reprs, "a repr")


def test_config_reprs_and_errors_hide_secrets_and_passwords() -> None:
    """Config reprs and config errors show neither the HMAC secret, the Redis password nor OTLP headers."""  # noqa: E501
    redis_with_password = f"redis://bridge:{PASSWORD}@127.0.0.1:6390/0"
    env = bridge_env(
        "http://127.0.0.1:8000",
        redis_with_password,
        "signals",
        HMAC_PRODUCER_SECRET=SECRET,
        OTEL_EXPORTER_OTLP_HEADERS=f"authorization=Bearer {OTLP_TOKEN}",
    )
    config = load_config(env=env)
    assert config.outbound.secret_bytes() == SECRET.encode()
    assert config.stream.redis_url == redis_with_password
    texts = [
        repr(config),
        str(config),
        repr(config.outbound),
        repr(config.stream),
        repr(config.telemetry),
        str(config.outbound.secret),
        f"{config.outbound.secret}",
    ]
    assert_no_secret(texts, "a config repr")
    assert "redis://bridge:***@127.0.0.1:6390/0" in repr(config.stream)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in repr(config.telemetry)

    bad_settings = [
        {"BRIDGE_REDIS_URL": f"http://bridge:{PASSWORD}@127.0.0.1:6390/0"},
        {"OUTBOUND_SERVER_URL": f"http://bridge:{PASSWORD}@127.0.0.1:8000"},
        {"OUTBOUND_SERVER_URL": f"ftp://bridge:{PASSWORD}@127.0.0.1:8000"},
        {"HMAC_PRODUCER_SECRET": SECRET[:10]},  # too short
    ]
    for bad in bad_settings:
        with pytest.raises(ConfigError) as caught:
            load_config(env={**env, **bad})
        assert_no_secret([str(caught.value), repr(caught.value)], f"the error for {sorted(bad)}")
        assert SECRET[:10] not in str(caught.value)


def test_redact_url_hides_passwords_and_lone_tokens() -> None:
    """redact_url masks a password or a bare user token and keeps everything else readable."""
    cases = {
        f"redis://:{PASSWORD}@127.0.0.1:6379/0": "redis://:***@127.0.0.1:6379/0",
        f"rediss://bridge:{PASSWORD}@redis.internal:6380/2": "rediss://bridge:***@redis.internal:6380/2",
        f"redis://{PASSWORD}@127.0.0.1:6379": "redis://***@127.0.0.1:6379",
        f"redis://bridge:{PASSWORD}@[::1]:6379/0": "redis://bridge:***@[::1]:6379/0",
        "redis://127.0.0.1:6379/0": "redis://127.0.0.1:6379/0",
        "unix:///run/redis.sock": "unix:///run/redis.sock",
    }
    for url, expected in cases.items():
        assert redact_url(url) == expected


# --- child processes -------------------------------------------------------------------------


def _status(env: Mapping[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m bridge status`` with ``env`` (bounded); return its result."""
    base = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("HMAC_PRODUCER_", "OUTBOUND_", "BRIDGE_", "PRODUCER_ID", "OTEL_"))
    }
    return subprocess.run(  # noqa: S603 - fixed argv: this interpreter, -m bridge
        [sys.executable, "-m", "bridge", "status", *args],
        env={**base, **env},
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def test_status_command_never_prints_the_redis_password_or_the_secret(
    redis: aioredis.Redis, redis_user: tuple[str, str], stream_name: str
) -> None:
    """`signal-bridge status` with a password in BRIDGE_REDIS_URL prints the status, never the password or secret."""  # noqa: E501
    url, _ = redis_user
    for i in range(2):
        await publish(redis, make_signal(i), stream=stream_name)
    await redis.xgroup_create(stream_name, "g", id="0")
    env = bridge_env("http://127.0.0.1:8000", url, stream_name, HMAC_PRODUCER_SECRET=SECRET)
    plain, as_json = await asyncio.gather(
        asyncio.to_thread(_status, env), asyncio.to_thread(_status, env, "--json")
    )
    assert plain.returncode == 0, plain.stderr
    assert f"stream        {stream_name} (2 entries)" in plain.stdout
    assert as_json.returncode == 0, as_json.stderr
    assert msgspec.json.decode(as_json.stdout)[0]["length"] == 2
    wrong = {**env, "BRIDGE_REDIS_URL": url.replace(PASSWORD, PASSWORD[::-1])}
    refused = await asyncio.to_thread(_status, wrong)
    assert refused.returncode != 0
    assert "signal-bridge:" in refused.stderr, "a readable error, not a traceback"
    assert_no_secret(
        [plain.stdout, plain.stderr, as_json.stdout, as_json.stderr],
        "`signal-bridge status` output",
    )
    assert PASSWORD[::-1] not in refused.stdout + refused.stderr
    assert_no_secret([refused.stdout, refused.stderr], "`signal-bridge status` error output")


async def test_run_logs_and_exports_neither_the_secret_nor_the_redis_password(
    monkeypatch: pytest.MonkeyPatch,
    server: Server,
    redis: aioredis.Redis,
    redis_user: tuple[str, str],
    tmp_path: Path,
) -> None:
    """`signal-bridge run` at DEBUG, through 500/401/422 answers, shows a redacted Redis URL and no secret in logs or OTLP data."""  # noqa: E501
    url, user = redis_user
    stream_name = f"test:{uuid.uuid4().hex[:12]}"
    server.once[idempotency_key(stream_name, "", "sig-1")] = 500
    server.once[idempotency_key(stream_name, "", "sig-2")] = 401
    server.always[idempotency_key(stream_name, "", "refuse-me")] = 422
    for i in range(3):
        await publish(redis, make_signal(i), stream=stream_name)
    await publish(redis, make_signal(3, signal_id="refuse-me"), stream=stream_name)
    for name in list(os.environ):
        if name.startswith("OTEL_"):
            monkeypatch.delenv(name)
    with OtlpReceiver() as receiver, Replicas(tmp_path) as replicas:
        env = bridge_env(
            server.url,
            url,
            stream_name,
            HMAC_PRODUCER_SECRET=SECRET,
            BRIDGE_LOG_LEVEL="DEBUG",
            BRIDGE_LOG_FORMAT="text",
            OTEL_EXPORTER_OTLP_ENDPOINT=receiver.endpoint,
            OTEL_EXPORTER_OTLP_HEADERS=f"x-api-key={OTLP_TOKEN}",
            OTEL_BSP_SCHEDULE_DELAY="100",
            OTEL_METRIC_EXPORT_INTERVAL="500",
        )
        child = replicas.start("c1", env)

        async def alive_and_drained() -> bool:
            if not child.alive:
                raise AssertionError(f"the bridge exited early\n{child.output()}")
            return await drained(redis, stream_name)

        await eventually(alive_and_drained, timeout_s=30, interval_s=0.05, what="drained")
        child.send(signal.SIGTERM)
        assert await child.wait(WAIT_S) == 0, child.output()

    assert len(server.app.received) == 3
    # All of stdout, not only the tail output() keeps: strict mode's DEBUG lines (lease scripts
    # on more connections) push the start-up line out of the tail.
    output = f"{child.stdout()}\n{child.output()}"
    assert f"redis=redis://{user}:***@" in output, child.output()
    assert "delivery failed, will retry" in output
    assert "signal dead-lettered" in output
    assert receiver.spans(), "the run exported spans (so the check below is not vacuous)"
    assert_no_secret([output], "`signal-bridge run` output")
    assert_no_secret(
        [repr(receiver.spans()), *(repr(m.metric) for m in receiver.metrics())],
        "OTLP data",
    )
