"""Redis over TLS (rediss://) and ACL credentials in the URL; the password is never shown.

One private ``redis-server`` per module listens on two loopback ports: plain TCP and TLS (server
certificate from a trustme CA), both behind an ACL user ``bridge`` with a password; the default
user is off. The worker must deliver through ``redis://bridge:<password>@...`` and
``rediss://bridge:<password>@...?ssl_ca_certs=<ca.pem>``, refuse a TLS server it cannot verify,
and never put the password into a log line, ``status`` output, an error message or a span.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Final
from urllib.parse import quote

import pytest
import redis.asyncio as aioredis
import trustme
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from bridge.config.loader import BridgeConfig
from bridge.core.secrets import redact_url
from bridge.delivery.backoff import Backoff
from bridge.delivery.worker import Worker
from bridge.devkit.embedded import free_port
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.errors import StreamError
from bridge.streams.connection import connect
from bridge.streams.group import SignalStream
from bridge.streams.producer import publish
from bridge.telemetry.logs import JsonFormatter
from tests.cluster_support import redis_process
from tests.procs import ROOT, Replicas
from tests.support import KEY_ID, SECRET, bridge_config, bridge_env, eventually, make_signal

pytestmark = pytest.mark.redis

USER: Final = "bridge"
PASSWORD: Final = "Pw-7f3c9e-s3cret"
WRONG_PASSWORD: Final = "Wrong-9d2b-s3cret"
FAST: Final = Backoff(0.001, 0.02)
COMMAND_TIMEOUT_S: Final = 30.0
# Settings a developer's shell might carry; a child gets only the ones the test gives it.
_SETTING_PREFIXES: Final = ("HMAC_PRODUCER_", "OUTBOUND_", "BRIDGE_", "PRODUCER_ID", "INGEST_")


@dataclass(frozen=True)
class SecureRedis:
    """The module's redis-server: its plain and TLS ports, and the CA files to trust (or not)."""

    port: int
    tls_port: int
    ca: Path
    other_ca: Path

    def url(self, password: str = PASSWORD) -> str:
        """A redis:// URL with the ACL user and ``password``."""
        return f"redis://{USER}:{password}@127.0.0.1:{self.port}/0"

    def tls_url(self, password: str = PASSWORD, *, ca: Path | None = None) -> str:
        """A rediss:// URL with the ACL user, ``password`` and ``ssl_ca_certs`` (when given)."""
        query = "" if ca is None else f"?ssl_ca_certs={quote(str(ca), safe='/')}"
        return f"rediss://{USER}:{password}@127.0.0.1:{self.tls_port}/0{query}"


@pytest.fixture(scope="module")
def secure_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureRedis]:
    """A redis-server with an ACL user and a TLS port, on 127.0.0.1, for this module."""
    directory = tmp_path_factory.mktemp("secure-redis")
    ca = trustme.CA()
    other = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    (directory / "ca.pem").write_bytes(ca.cert_pem.bytes())
    (directory / "other-ca.pem").write_bytes(other.cert_pem.bytes())
    (directory / "server.pem").write_bytes(b"".join(b.bytes() for b in leaf.cert_chain_pems))
    leaf.private_key_pem.write_to_path(str(directory / "server.key"))
    port = free_port()
    tls_port = free_port()
    while tls_port == port:
        tls_port = free_port()
    args = [
        "--port",
        str(port),
        "--tls-port",
        str(tls_port),
        "--tls-cert-file",
        str(directory / "server.pem"),
        "--tls-key-file",
        str(directory / "server.key"),
        "--tls-ca-cert-file",
        str(directory / "ca.pem"),
        "--tls-auth-clients",
        "no",
        "--user",
        USER,
        "on",
        f">{PASSWORD}",
        "~*",
        "&*",
        "+@all",
        "--user",
        "default",
        "off",
    ]
    with redis_process(directory, "redis", args, listen_port=tls_port):
        yield SecureRedis(port, tls_port, directory / "ca.pem", directory / "other-ca.pem")


@pytest.fixture
def ingest() -> Iterator[tuple[IngestApp, str]]:
    """The reference ingest server over plain HTTP on 127.0.0.1."""
    app = IngestApp(secrets={KEY_ID: SECRET.encode()})
    with serve_in_thread(app) as url:
        yield app, url


@dataclass
class Capture:
    """Spans and log records captured while a worker runs in-process."""

    exporter: InMemorySpanExporter
    tracer_provider: TracerProvider

    def span_text(self) -> str:
        """Every finished span as JSON, concatenated."""
        return "\n".join(s.to_json() for s in self.exporter.get_finished_spans())


@pytest.fixture
def capture() -> Iterator[Capture]:
    """An SDK tracer provider writing into memory."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    try:
        yield Capture(exporter, provider)
    finally:
        provider.shutdown()


@asynccontextmanager
async def _worker(config: BridgeConfig, capture: Capture) -> AsyncIterator[Worker]:
    """Run a Worker over its own connection from the config's URL; stop it at the end."""
    tracer = capture.tracer_provider.get_tracer("tests")
    async with connect(config.stream.redis_url) as redis:
        stream = SignalStream(
            redis,
            stream=config.stream.stream,
            group=config.stream.group,
            consumer=config.stream.consumer,
            dlq_stream=config.stream.dlq_stream,
        )
        async with HmacClient(config.outbound, tracer=tracer) as client:
            worker = Worker(
                stream, client, config.stream, tracer=tracer, backoff=FAST, redis_backoff=FAST
            )
            task = asyncio.create_task(worker.run())
            try:
                yield worker
            finally:
                worker.stop()
                await asyncio.wait_for(task, 30)


def _log_text(caplog: pytest.LogCaptureFixture) -> str:
    """Captured records as pytest shows them (tracebacks included) and as JSON log lines."""
    formatter = JsonFormatter()
    return caplog.text + "\n".join(formatter.format(r) for r in caplog.records)


async def _deliver_through(
    url: str,
    ingest: tuple[IngestApp, str],
    stream_name: str,
    capture: Capture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Publish three signals over ``url``, run a worker on ``url``, check all arrive, no leak."""
    caplog.set_level(logging.DEBUG)
    app, server_url = ingest
    config = bridge_config(server_url, url, stream_name)
    async with connect(url) as redis:
        for i in range(3):
            await publish(redis, make_signal(i), stream=stream_name)
        async with _worker(config, capture) as worker:
            await eventually(lambda: worker.stats.delivered == 3, timeout_s=15, what="delivery")
            await eventually(lambda: _no_pending(redis, stream_name), timeout_s=10, what="acks")
    assert sorted(str(r.signal.signal_id) for r in app.received) == ["sig-0", "sig-1", "sig-2"]
    spans = capture.span_text()
    assert f"process {stream_name}" in spans, "the spans to check were recorded"
    for shown in (spans, _log_text(caplog), repr(config), str(config.stream)):
        assert PASSWORD not in shown


async def _no_pending(redis: aioredis.Redis, stream: str) -> bool:
    summary = await redis.xpending(stream, "g")
    return int(summary["pending"]) == 0


async def test_worker_delivers_with_acl_user_and_password_in_url(
    secure_redis: SecureRedis,
    ingest: tuple[IngestApp, str],
    stream_name: str,
    capture: Capture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """redis://bridge:<password>@... authenticates the worker; logs and spans omit the password."""
    await _deliver_through(secure_redis.url(), ingest, stream_name, capture, caplog)


async def test_worker_delivers_over_tls_with_private_ca(
    secure_redis: SecureRedis,
    ingest: tuple[IngestApp, str],
    stream_name: str,
    capture: Capture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """rediss://...?ssl_ca_certs=<ca.pem> reaches the TLS-only port; nothing shows the password."""
    url = secure_redis.tls_url(ca=secure_redis.ca)
    await _deliver_through(url, ingest, stream_name, capture, caplog)


async def test_plain_connection_to_the_tls_port_does_not_work(secure_redis: SecureRedis) -> None:
    """The TLS port really speaks TLS: a redis:// client on it gets no answer."""
    url = f"redis://{USER}:{PASSWORD}@127.0.0.1:{secure_redis.tls_port}/0?socket_timeout=2"
    async with connect(url) as redis:
        stream = SignalStream(redis, stream="s", group="g", consumer="c", dlq_stream="s:dlq")
        with pytest.raises(StreamError) as caught:
            await stream.ping()
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("trust", ["other-ca", "system-store"])
async def test_tls_server_that_fails_verification_is_refused(
    secure_redis: SecureRedis, trust: str
) -> None:
    """rediss:// refuses a server whose certificate the given CA (or the system) cannot verify."""
    ca = secure_redis.other_ca if trust == "other-ca" else None
    async with connect(secure_redis.tls_url(ca=ca)) as redis:
        stream = SignalStream(redis, stream="s", group="g", consumer="c", dlq_stream="s:dlq")
        with pytest.raises(StreamError) as caught:
            await stream.ping()
    assert "certificate verify failed" in str(caught.value)
    assert PASSWORD not in str(caught.value)


async def test_refused_credentials_are_reported_without_the_password(
    secure_redis: SecureRedis,
    ingest: tuple[IngestApp, str],
    stream_name: str,
    capture: Capture,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A wrong password at start is logged as an error that never contains that password."""
    caplog.set_level(logging.DEBUG)
    config = bridge_config(ingest[1], secure_redis.url(WRONG_PASSWORD), stream_name)

    def refusal_logged() -> bool:
        return any(
            r.levelno >= logging.WARNING and "invalid username-password pair" in _fields_text(r)
            for r in caplog.records
        )

    async with _worker(config, capture) as worker:
        # Bounded: with a 1-20 ms backoff the worker has retried many times by then.
        with contextlib.suppress(AssertionError):
            await eventually(refusal_logged, timeout_s=3, what="the refused-login log line")
        logged_while_retrying = refusal_logged()
        assert not worker.group_ready
        assert not worker.ready()
    text = _log_text(caplog)
    assert WRONG_PASSWORD not in text
    assert WRONG_PASSWORD not in capture.span_text()
    assert logged_while_retrying, (
        "a Redis login refused at start-up must be logged (WARNING or above): "
        "Worker._redis_down only logs when redis_ok was True, so start-up failures are silent"
    )


def _fields_text(record: logging.LogRecord) -> str:
    return f"{record.getMessage()} {getattr(record, 'fields', '')}"


# --- the command line: status and run as child processes ------------------------------------


def _child_env(env: Mapping[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}
    return {**base, **env}


def _bridge_command(args: list[str], env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - the interpreter running the tests, fixed arguments
        [sys.executable, "-m", "bridge", *args],
        env=_child_env(env),
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT_S,
        check=False,
    )


async def _group_with_consumer(url: str, stream: str) -> None:
    """Give the stream an entry, the group ``g`` and a consumer holding the entry."""
    async with connect(url) as redis:
        await publish(redis, make_signal(7), stream=stream)
        await redis.xgroup_create(stream, "g", id="0", mkstream=True)
        await redis.xreadgroup("g", "holder", {stream: ">"}, count=1)


@pytest.mark.parametrize("tls", [False, True], ids=["acl", "tls"])
async def test_status_output_never_shows_the_password(
    secure_redis: SecureRedis, stream_name: str, tls: bool
) -> None:
    """``signal-bridge status`` (text and --json) over a URL with a password does not print it."""
    url = secure_redis.tls_url(ca=secure_redis.ca) if tls else secure_redis.url()
    await _group_with_consumer(url, stream_name)
    env = {"BRIDGE_REDIS_URL": url, "BRIDGE_STREAM": stream_name, "BRIDGE_GROUP": "g"}
    for args in (["status"], ["status", "--json"]):
        result = _bridge_command(args, env)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert stream_name in result.stdout
        assert "holder" in result.stdout
        assert PASSWORD not in output


@pytest.mark.parametrize("case", ["wrong-password", "bad-scheme", "untrusted-tls"])
async def test_status_errors_never_show_the_password(
    secure_redis: SecureRedis, stream_name: str, case: str
) -> None:
    """When status fails (refused login, invalid URL, TLS refused) the password is not printed."""
    urls = {
        "wrong-password": secure_redis.url(WRONG_PASSWORD),
        "bad-scheme": f"http://{USER}:{WRONG_PASSWORD}@127.0.0.1:{secure_redis.port}/0",
        "untrusted-tls": secure_redis.tls_url(WRONG_PASSWORD, ca=secure_redis.other_ca),
    }
    result = _bridge_command(
        ["status"], {"BRIDGE_REDIS_URL": urls[case], "BRIDGE_STREAM": stream_name}
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "signal-bridge:" in result.stderr
    assert WRONG_PASSWORD not in output
    if case == "bad-scheme":
        assert "BRIDGE_REDIS_URL" in result.stderr
        assert f"{USER}:***@" in result.stderr


async def test_check_over_tls_with_an_acl_user_never_shows_the_password(
    secure_redis: SecureRedis, ingest: tuple[IngestApp, str], stream_name: str
) -> None:
    """`check` logs in over TLS as the ACL user (exit 0); a refused login fails naming redis."""
    url = secure_redis.tls_url(ca=secure_redis.ca)
    await _group_with_consumer(url, stream_name)
    env = bridge_env(ingest[1], url, stream_name)
    result = _bridge_command(["check"], env)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"redis     ok: rediss://{USER}:***@127.0.0.1:{secure_redis.tls_port}/0" in output
    assert f"stream    {stream_name}: 1 entries; group g present, lag 0, pending 1" in output
    assert PASSWORD not in output
    refused = _bridge_command(
        ["check"],
        {**env, "BRIDGE_REDIS_URL": secure_redis.tls_url(WRONG_PASSWORD, ca=secure_redis.ca)},
    )
    output = refused.stdout + refused.stderr
    assert refused.returncode == 1, output
    assert "check failed: redis: " in refused.stderr
    assert WRONG_PASSWORD not in output


@pytest.mark.slow
async def test_run_logs_and_spans_never_show_the_password(
    secure_redis: SecureRedis,
    ingest: tuple[IngestApp, str],
    stream_name: str,
    tmp_path: Path,
) -> None:
    """``signal-bridge run`` at DEBUG with console spans shows user:*** and never the password."""
    app, server_url = ingest
    url = secure_redis.tls_url(ca=secure_redis.ca)
    env = bridge_env(
        server_url,
        url,
        stream_name,
        BRIDGE_LOG_LEVEL="DEBUG",
        BRIDGE_CONSUMER="run-1",
        OTEL_TRACES_EXPORTER="console",
        OTEL_METRICS_EXPORTER="none",
        OTEL_LOGS_EXPORTER="none",
    )
    async with connect(url) as redis:
        for i in range(3):
            await publish(redis, make_signal(i), stream=stream_name)
    with Replicas(tmp_path) as replicas:
        replica = replicas.start("run-1", env)
        await eventually(
            lambda: len(app.received) == 3 or not replica.alive,
            timeout_s=30,
            what="delivery by the replica",
        )
        assert replica.alive, replica.output()
        replica.send(signal.SIGTERM)
        code = await replica.wait(15)
        assert code == 0, replica.output()
        stdout = replica.stdout()
        stderr = replica.stderr_path.read_text(encoding="utf-8", errors="replace")
    assert PASSWORD not in stdout
    assert PASSWORD not in stderr
    start = next(line for line in stdout.splitlines() if "signal-bridge starting" in line)
    assert redact_url(url) in start
    assert f"{USER}:***@" in start
    assert f'"name": "process {stream_name}"' in stderr, "the console spans went to stderr"
    assert '"name": "process' not in stdout, "no span in the JSON log stream"
    assert '"level":"DEBUG"' in stdout, "DEBUG lines were written"
