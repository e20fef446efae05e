"""Ingest-server fixtures: the reference server on a loopback port, and client configs.

Besides the reference :class:`bridge.devkit.ingest.IngestApp` this module offers a *scripted* raw
HTTP/1.1 server (plain asyncio on 127.0.0.1) for the answers the reference server cannot give:
a malformed 201, a ``Retry-After`` header, a response that never comes, TLS.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import pytest
from opentelemetry import trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import (
    HistogramDataPoint,
    InMemoryMetricReader,
    NumberDataPoint,
)
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import bridge.devkit.ingest
from bridge.config.loader import load_config
from bridge.core.signal import Signal
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.settings import OutboundConfig
from bridge.telemetry.metrics import Metrics
from tests import support

__all__ = [
    "KEY_ID",
    "PRODUCER_ID",
    "TEST_SECRET",
    "MetricsCapture",
    "RawRequest",
    "RawResponse",
    "ScriptedServer",
    "StartScripted",
    "Tracing",
    "make_outbound_config",
    "make_signal",
    "outbound_env",
]

TEST_SECRET: Final = b"test-hmac-secret-0123456789abcdef"
PRODUCER_ID: Final = "mt5-trader-1"
KEY_ID: Final = "k1"
# A scripted "slow" response is held at most this long, so a broken test cannot hang the run.
HOLD_LIMIT_S: Final = 10.0


def make_signal(**overrides: Any) -> Signal:
    """Build a valid buy signal; keyword arguments replace single fields."""
    fields: dict[str, Any] = {
        "instrument": "XAUUSD",
        "side": "buy",
        "entry_price": 2000.5,
        "take_profit": 2010.0,
        "stop_loss": 1990.25,
        "risk_percent": 1.5,
        "comment": "breakout",
        "strategy_name": "gold-breakout",
        "timestamp": datetime(2025, 10, 25, 14, 30, 45, 123456, tzinfo=UTC),
        "signal_id": "sig_abc123",
    }
    fields.update(overrides)
    return Signal(**fields)


def outbound_env(base_url: str, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return a complete, valid environment for ``load_config`` pointing at ``base_url``."""
    env = {
        "HMAC_PRODUCER_SECRET": TEST_SECRET.decode(),
        "HMAC_PRODUCER_KEY_ID": KEY_ID,
        "PRODUCER_ID": PRODUCER_ID,
        "OUTBOUND_SERVER_URL": base_url,
    }
    env.update(extra or {})
    return env


def make_outbound_config(base_url: str, extra: Mapping[str, str] | None = None) -> OutboundConfig:
    """Load an OutboundConfig through ``load_config`` from a test environment (no file)."""
    return load_config(env=outbound_env(base_url, extra)).outbound


@pytest.fixture
def ingest_app() -> IngestApp:
    """Return a reference ingest app that knows TEST_SECRET under KEY_ID."""
    return IngestApp(secrets={KEY_ID: TEST_SECRET})


@pytest.fixture
def ingest_server(ingest_app: IngestApp) -> Iterator[tuple[IngestApp, str]]:
    """Run ``ingest_app`` on uvicorn on 127.0.0.1 and yield (app, base_url)."""
    with serve_in_thread(ingest_app, host="127.0.0.1") as base_url:
        yield ingest_app, base_url


@pytest.fixture
def outbound_config(ingest_server: tuple[IngestApp, str]) -> OutboundConfig:
    """Return an OutboundConfig, built by load_config, aimed at the reference server."""
    return make_outbound_config(ingest_server[1])


@pytest.fixture
def refused_url() -> Iterator[str]:
    """Yield a loopback URL whose port is bound but not listening: connections are refused."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


# --- tracing and metrics -------------------------------------------------------------------


@dataclass
class Tracing:
    """An SDK tracer provider whose finished spans land in ``exporter``."""

    provider: TracerProvider
    exporter: InMemorySpanExporter
    tracer: trace.Tracer

    def spans(self, kind: trace.SpanKind | None = None) -> list[ReadableSpan]:
        """Return the finished spans, optionally only those of one kind."""
        spans = list(self.exporter.get_finished_spans())
        return [s for s in spans if kind is None or s.kind is kind]


@pytest.fixture
def tracing(monkeypatch: pytest.MonkeyPatch) -> Iterator[Tracing]:
    """Give the client a tracer, and make the reference server trace into the same exporter.

    IngestApp takes its tracer from ``bridge.telemetry.tracing.get_tracer()`` (the global
    provider); the
    global provider can be set only once per process, so the server's lookup is patched instead.
    """
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("tests")

    def server_tracer(provider_arg: trace.TracerProvider | None = None) -> trace.Tracer:
        del provider_arg
        return provider.get_tracer("signal-bridge-ingest")

    monkeypatch.setattr(bridge.devkit.ingest, "get_tracer", server_tracer)
    try:
        yield Tracing(provider=provider, exporter=exporter, tracer=tracer)
    finally:
        provider.shutdown()


def metric_points(reader: InMemoryMetricReader, name: str) -> list[Any]:
    """Collect now and return the data points of the metric ``name``."""
    data = reader.get_metrics_data()
    found: list[Any] = []
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == name:
                    found.extend(metric.data.data_points)
    return found


@dataclass
class Server:
    """The reference ingest server running in a thread, and its URL."""

    app: IngestApp
    url: str


@pytest.fixture
def server() -> Iterator[Server]:
    """The reference ingest server on a free loopback port, knowing the support key."""
    app = IngestApp(secrets={support.KEY_ID: support.SECRET.encode()})
    with serve_in_thread(app) as url:
        yield Server(app, url)


@dataclass
class MetricsCapture:
    """Metrics wired to an in-memory reader, with lookups by instrument name."""

    metrics: Metrics
    reader: InMemoryMetricReader

    def _points(self, name: str) -> list[Any]:
        return metric_points(self.reader, name)

    def counter(self, name: str) -> list[NumberDataPoint]:
        """Return the data points of a counter (one per attribute set)."""
        return [p for p in self._points(name) if isinstance(p, NumberDataPoint)]

    def histogram(self, name: str) -> list[HistogramDataPoint]:
        """Return the data points of a histogram (one per attribute set)."""
        return [p for p in self._points(name) if isinstance(p, HistogramDataPoint)]


@pytest.fixture
def metrics_capture() -> Iterator[MetricsCapture]:
    """Build bridge Metrics on an SDK MeterProvider read by an InMemoryMetricReader."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        yield MetricsCapture(metrics=Metrics(provider), reader=reader)
    finally:
        provider.shutdown()


# --- the scripted raw HTTP server -----------------------------------------------------------


@dataclass(frozen=True)
class RawRequest:
    """One request as the scripted server read it; header names are lower-case."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class RawResponse:
    """What the scripted server answers.

    ``hold`` never answers (until the test ends); ``raw`` is written instead of an HTTP response
    (``b""`` just closes the connection).
    """

    status: int = 201
    body: bytes = b""
    headers: tuple[tuple[bytes, bytes], ...] = ()
    hold: bool = False
    raw: bytes | None = None


Responder = Callable[[RawRequest], RawResponse]


@dataclass
class ScriptedServer:
    """A minimal HTTP/1.1 server on 127.0.0.1: one request per connection, scripted answers."""

    responder: Responder
    requests: list[RawRequest] = field(default_factory=list)
    base_url: str = ""
    _server: asyncio.Server | None = None
    _release: asyncio.Event = field(default_factory=asyncio.Event)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> str:
        """Listen on a free loopback port; return the base URL."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0, ssl=ssl_context)
        port = self._server.sockets[0].getsockname()[1]
        scheme = "https" if ssl_context is not None else "http"
        self.base_url = f"{scheme}://127.0.0.1:{port}"
        return self.base_url

    async def aclose(self) -> None:
        """Release held responses, stop listening and wait for every connection to finish."""
        self._release.set()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            request = await _read_request(reader)
            self.requests.append(request)
            response = self.responder(request)
            if response.hold:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._release.wait(), HOLD_LIMIT_S)
                return
            writer.write(_encode_response(response) if response.raw is None else response.raw)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError, ssl.SSLError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)


async def _read_request(reader: asyncio.StreamReader) -> RawRequest:
    """Read one HTTP/1.1 request with a Content-Length body."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    method, path, _ = lines[0].split(" ", 2)
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return RawRequest(method=method, path=path, headers=headers, body=body)


def _encode_response(response: RawResponse) -> bytes:
    """Serialise a scripted response with Content-Length and Connection: close."""
    lines = [
        f"HTTP/1.1 {response.status} Scripted".encode(),
        b"Content-Type: application/json",
        f"Content-Length: {len(response.body)}".encode(),
        b"Connection: close",
        *(name + b": " + value for name, value in response.headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + response.body


StartScripted = Callable[..., Awaitable[ScriptedServer]]


@pytest.fixture
async def scripted_server() -> AsyncIterator[StartScripted]:
    """Yield ``start(responder, ssl_context=None)`` that runs a ScriptedServer for this test."""
    servers: list[ScriptedServer] = []

    async def start(
        responder: Responder, ssl_context: ssl.SSLContext | None = None
    ) -> ScriptedServer:
        server = ScriptedServer(responder)
        servers.append(server)
        await server.start(ssl_context)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.aclose()
