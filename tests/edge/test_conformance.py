"""The HTTP client against servers and a proxy nobody here wrote, and against hostile servers.

Every server runs in its own process on loopback, started here: uvicorn (h11 and httptools),
hypercorn, gunicorn's sync worker, waitress, Python's ``http.server`` as HTTP/1.0 with
close-delimited answers, nginx as a TLS reverse proxy with ``keepalive_requests 3`` and chunked
answers, proxy.py as a forward proxy (absolute form and CONNECT), and raw-socket servers that
misbehave. Deliveries are counted at the server (``GET /_keys``), never by the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx
import pytest
import redis.asyncio as aioredis
import trustme

from bridge.delivery.jobs import idempotency_key
from bridge.edge.client import HmacClient
from bridge.edge.settings import OutboundConfig
from bridge.errors import (
    AlreadyReceivedError,
    AuthError,
    DeliveryTimeoutError,
    ResponseTooLargeError,
    SystemicError,
    TransientDeliveryError,
)
from bridge.streams.producer import publish
from tests import support
from tests.fixtures_ingest import KEY_ID, TEST_SECRET, make_outbound_config, make_signal
from tests.procs import ROOT
from tests.support import bridge_config, eventually, running

SERVER_ENV: Final = {"INGEST_SECRETS": f"{KEY_ID}={TEST_SECRET.decode()}"}
START_TIMEOUT_S: Final = 60.0
# The client process may grow by this much at most while a hostile server floods it.
MEMORY_BOUND: Final = 16 * 1024 * 1024
PY: Final = sys.executable


def _free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _accepts(port: int) -> bool:
    """Tell whether something accepts TCP connections on ``port`` of 127.0.0.1."""
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass(frozen=True)
class Command:
    """A server to start: its command line, the port it will accept on, extra environment."""

    argv: Sequence[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)


@contextlib.contextmanager
def _serving(folder: Path, *commands: Command) -> Iterator[None]:
    """Start every command at once, wait (bounded) until each accepts; kill and reap after."""
    procs: list[tuple[Command, subprocess.Popen[bytes], Path]] = []
    try:
        for command in commands:
            log = folder / f"server-{command.port}.log"
            with log.open("wb") as out:
                proc = subprocess.Popen(  # noqa: S603 - fixed argv built by the tests
                    list(command.argv),
                    cwd=ROOT,
                    env={**os.environ, **SERVER_ENV, **command.env},
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    # Its own process group: servers that fork workers (proxy.py's acceptors)
                    # are ended whole, not left running after the test.
                    start_new_session=True,
                )
            procs.append((command, proc, log))
        deadline = time.monotonic() + START_TIMEOUT_S
        for command, proc, log in procs:
            while not _accepts(command.port):
                if proc.poll() is not None or time.monotonic() > deadline:
                    output = log.read_text(errors="replace")
                    pytest.fail(f"{command.argv[:4]} did not start:\n{output}")
                time.sleep(0.05)
        yield
    finally:
        for _, proc, _ in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for _, proc, _ in procs:
            proc.wait(timeout=10)


def _server_keys(base_url: str, ca: Path | None = None) -> set[str]:
    """Ask the server which idempotency keys it accepted."""
    verify = ssl.create_default_context(cafile=str(ca)) if ca is not None else True
    response = httpx.get(f"{base_url}/_keys", verify=verify, trust_env=False, timeout=10)
    return set(json.loads(response.content))


async def _deliver_all(config: OutboundConfig, count: int = 7) -> set[str]:
    """Post ``count`` signals one by one and four at once, then one again (a 409)."""
    keys = [str(uuid.uuid4()) for _ in range(count + 4)]
    async with HmacClient(config) as client:
        for i, key in enumerate(keys[:count]):
            answer = await client.post_signal(make_signal(signal_id=f"s{i}"), key)
            assert answer is not None
            assert answer.status == "received"
        await asyncio.gather(
            *(
                client.post_signal(make_signal(signal_id=f"c{i}"), key)
                for i, key in enumerate(keys[count:])
            )
        )
        with pytest.raises(AlreadyReceivedError):
            await client.post_signal(make_signal(signal_id="s0"), keys[0])
    return set(keys)


# --- real servers ----------------------------------------------------------------------------

_ASGI: Final = "tests.conformance_servers:asgi_app"
_WSGI: Final = "tests.conformance_servers:wsgi_app"
_UVICORN: Final = [PY, "-m", "uvicorn", _ASGI, "--lifespan", "off", "--no-access-log"]
# name -> the command line that serves the ingest app on a port of 127.0.0.1.
SERVERS: Final[dict[str, Callable[[int], list[str]]]] = {
    "uvicorn-h11": lambda port: [*_UVICORN, "--http", "h11", "--port", str(port)],
    "uvicorn-httptools": lambda port: [*_UVICORN, "--http", "httptools", "--port", str(port)],
    "hypercorn": lambda port: [PY, "-m", "hypercorn", "--bind", f"127.0.0.1:{port}", _ASGI],
    "gunicorn-sync": lambda port: [
        *(PY, "-m", "gunicorn", "--worker-class", "sync", "--workers", "1"),
        *("--bind", f"127.0.0.1:{port}", _WSGI),
    ],
    "waitress": lambda port: [PY, "-m", "waitress", f"--listen=127.0.0.1:{port}", _WSGI],
    "http.server-1.0": lambda port: [PY, "-m", "tests.conformance_servers", "http10", str(port)],
}


@pytest.fixture(scope="module")
def real_servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Every server of SERVERS, started together; yields name -> base URL."""
    ports = {name: _free_port() for name in SERVERS}
    commands = [Command(SERVERS[name](port), port) for name, port in ports.items()]
    with _serving(tmp_path_factory.mktemp("servers"), *commands):
        yield {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}


@pytest.mark.parametrize("name", list(SERVERS))
async def test_every_signal_lands_once_on_real_servers(
    name: str, real_servers: dict[str, str]
) -> None:
    """Each server gets every signal (sequential and concurrent), and a repeat is a 409."""
    url = real_servers[name]
    sent = await _deliver_all(make_outbound_config(url))
    assert _server_keys(url) == sent


@dataclass(frozen=True)
class Tls:
    """A private CA's bundle and a server certificate for localhost / 127.0.0.1."""

    ca: Path
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """Certificates from a throw-away CA (trustme)."""
    folder = tmp_path_factory.mktemp("conformance-tls")
    ca = trustme.CA()
    leaf = ca.issue_cert("localhost", "127.0.0.1")
    files = Tls(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    ca.cert_pem.write_to_path(str(files.ca))
    leaf.private_key_pem.write_to_path(str(files.key))
    for blob in leaf.cert_chain_pems:
        blob.write_to_path(str(files.cert), append=True)
    return files


def _nginx_conf(folder: Path, tls: Tls, plain: int, secure: int, upstream: int) -> Path:
    """Write an nginx.conf: TLS and plain listeners proxying to uvicorn, keepalive_requests 3."""
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = " ".join(
        f"{kind}_temp_path {folder / kind};" for kind in ("client_body", "proxy", "fastcgi")
    )
    conf = folder / "nginx.conf"
    conf.write_text(
        f"""{user}worker_processes 1;
daemon off;
pid {folder / "nginx.pid"};
error_log {folder / "error.log"} warn;
events {{ worker_connections 128; }}
http {{
    access_log off;
    {temp} uwsgi_temp_path {folder / "uwsgi"}; scgi_temp_path {folder / "scgi"};
    upstream app {{ server 127.0.0.1:{upstream}; keepalive 4; }}
    server {{
        listen 127.0.0.1:{plain};
        listen 127.0.0.1:{secure} ssl;
        ssl_certificate {tls.cert};
        ssl_certificate_key {tls.key};
        keepalive_requests 3;
        location / {{
            proxy_pass http://app;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
        }}
    }}
}}
"""
    )
    return conf


@pytest.fixture(scope="module")
def nginx(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Nginx in front of uvicorn (chunked answers); yields (http URL, https URL)."""
    binary = shutil.which("nginx", path=f"{os.environ.get('PATH', '')}:/usr/sbin")
    if binary is None:
        message = "nginx is not installed (scripts/test.sh installs it with apt-get under CI)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    upstream, plain, secure = _free_port(), _free_port(), _free_port()
    folder = tmp_path_factory.mktemp("nginx")
    conf = _nginx_conf(folder, tls, plain, secure, upstream)
    with _serving(
        folder,
        Command(SERVERS["uvicorn-httptools"](upstream), upstream, {"CONFORMANCE_CHUNKED": "1"}),
        Command([binary, "-p", str(folder), "-c", str(conf)], plain),
    ):
        yield f"http://127.0.0.1:{plain}", f"https://localhost:{secure}"


async def test_nginx_reverse_proxy_with_keepalive_requests_3_and_chunked_answers(
    nginx: tuple[str, str],
) -> None:
    """Through nginx (a new connection every 3 requests, chunked bodies) nothing is lost."""
    url, _ = nginx
    sent = await _deliver_all(make_outbound_config(url))
    assert sent <= _server_keys(url)


async def test_nginx_tls_with_a_private_ca(nginx: tuple[str, str], tls: Tls) -> None:
    """Over TLS to nginx, verified against the private CA, every signal lands once."""
    _, url = nginx
    sent = await _deliver_all(make_outbound_config(url, {"OUTBOUND_CA_BUNDLE": str(tls.ca)}))
    assert sent <= _server_keys(url, ca=tls.ca)


# --- a real forward proxy (proxy.py) ---------------------------------------------------------

PROXY_USER: Final = "bridge"
PROXY_PASSWORD: Final = "pr0xy-s3cret"


@pytest.fixture(scope="module")
def forward_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """proxy.py on loopback with basic auth; yields its port."""
    port = _free_port()
    argv = [PY, "-m", "proxy", "--hostname", "127.0.0.1", "--port", str(port)]
    argv += ["--basic-auth", f"{PROXY_USER}:{PROXY_PASSWORD}", "--num-acceptors", "1"]
    with _serving(tmp_path_factory.mktemp("proxy"), Command(argv, port)):
        yield port


@pytest.fixture(scope="module")
def origin(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """Uvicorn on plain http and on TLS; yields (http URL, https URL)."""
    plain, secure = _free_port(), _free_port()
    ssl_args = ["--ssl-certfile", str(tls.cert), "--ssl-keyfile", str(tls.key)]
    with _serving(
        tmp_path_factory.mktemp("origin"),
        Command(SERVERS["uvicorn-httptools"](plain), plain),
        Command(SERVERS["uvicorn-httptools"](secure) + ssl_args, secure),
    ):
        yield f"http://127.0.0.1:{plain}", f"https://localhost:{secure}"


async def test_http_target_through_a_forward_proxy_from_the_environment(
    forward_proxy: int, origin: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    """HTTP_PROXY with credentials: every signal lands, the INFO line hides the password."""
    url, _ = origin
    proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{forward_proxy}"
    config = make_outbound_config(url, {"HTTP_PROXY": proxy})
    caplog.set_level("INFO", logger="bridge.client")
    sent = await _deliver_all(config)
    assert sent <= _server_keys(url)
    lines = [r.getMessage() for r in caplog.records if "outbound proxy" in r.getMessage()]
    assert lines == [
        f"outbound proxy: http://{PROXY_USER}:***@127.0.0.1:{forward_proxy} (from HTTP_PROXY)"
    ]
    assert PROXY_PASSWORD not in caplog.text


async def test_https_target_through_connect_verifies_the_origin(
    forward_proxy: int, origin: tuple[str, str], tls: Tls
) -> None:
    """HTTPS_PROXY: a CONNECT tunnel, TLS to the origin inside it, verified by the private CA."""
    _, url = origin
    proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{forward_proxy}"
    env = {"https_proxy": proxy, "OUTBOUND_CA_BUNDLE": str(tls.ca)}
    sent = await _deliver_all(make_outbound_config(url, env))
    assert sent <= _server_keys(url, ca=tls.ca)


async def test_https_through_connect_still_refuses_an_unknown_certificate(
    forward_proxy: int, origin: tuple[str, str]
) -> None:
    """Through the tunnel the origin's certificate is checked: the system store refuses it."""
    _, url = origin
    proxy = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{forward_proxy}"
    async with HmacClient(make_outbound_config(url, {"HTTPS_PROXY": proxy})) as client:
        with pytest.raises(AuthError, match="TLS verification"):
            await client.post_signal(make_signal(), str(uuid.uuid4()))


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_wrong_proxy_credentials_are_systemic(
    forward_proxy: int, origin: tuple[str, str], tls: Tls, scheme: str
) -> None:
    """A 407 from the proxy is systemic like a 401 (never a dead letter); no password shown."""
    url = origin[0] if scheme == "http" else origin[1]
    proxy = f"http://{PROXY_USER}:wrong-password@127.0.0.1:{forward_proxy}"
    env = {"OUTBOUND_PROXY_URL": proxy, "OUTBOUND_CA_BUNDLE": str(tls.ca)}
    async with HmacClient(make_outbound_config(url, env)) as client:
        with pytest.raises(SystemicError, match="407") as caught:
            await client.post_signal(make_signal(), str(uuid.uuid4()))
    assert "wrong-password" not in repr(caught.value) + str(caught.value)


async def test_no_proxy_and_none_bypass_the_proxy(origin: tuple[str, str]) -> None:
    """NO_PROXY covering the host, or OUTBOUND_PROXY_URL=none, connect directly."""
    url, _ = origin
    dead_proxy = f"http://127.0.0.1:{_free_port()}"
    for env in (
        {"HTTP_PROXY": dead_proxy, "NO_PROXY": "example.com,127.0.0.0/8"},
        {"HTTP_PROXY": dead_proxy, "OUTBOUND_PROXY_URL": "none"},
    ):
        async with HmacClient(make_outbound_config(url, env)) as client:
            await client.post_signal(make_signal(), str(uuid.uuid4()))


# --- hostile servers -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile() -> Iterator[dict[str, str]]:
    """One raw-socket server per hostile mode, in a child process; yields mode -> URL."""
    from tests.conformance_servers import HOSTILE_MODES  # noqa: PLC0415 - the child's module

    proc = subprocess.Popen(  # noqa: S603 - fixed argv
        [PY, "-m", "tests.conformance_servers", "hostile", *HOSTILE_MODES],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        urls = {}
        for _ in HOSTILE_MODES:
            mode, port = proc.stdout.readline().decode().split()
            urls[mode] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


def _max_rss() -> int:
    """Peak RSS of this process so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def _post_measured(url: str, timeout_s: float = 3.0) -> tuple[object, int]:
    """POST once; return (Delivery or the error raised, peak Python allocation in bytes)."""
    config = make_outbound_config(url)
    outcome: object
    rss_before = _max_rss()
    tracemalloc.start()
    try:
        async with HmacClient(config) as client:
            try:
                outcome = await client.send_body(
                    b'{"x":1}', idempotency_key=str(uuid.uuid4()), timeout=timeout_s
                )
            except TransientDeliveryError as exc:
                outcome = exc
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert _max_rss() - rss_before < MEMORY_BOUND * 4, "the process's peak RSS grew"
    return outcome, peak


@pytest.mark.parametrize("mode", ["endless-201", "big-200", "million-headers"])
async def test_a_2xx_flood_is_acked_as_oversized_with_bounded_memory(
    hostile: dict[str, str], mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A 2xx whose body or head never ends: stop at the limit, ack with a WARNING."""
    outcome, peak = await _post_measured(hostile[mode])
    assert getattr(outcome, "oversized", None), outcome
    assert peak < MEMORY_BOUND
    assert any(
        r.levelname == "WARNING" and "past a read limit" in r.getMessage() for r in caplog.records
    )


async def test_a_non_2xx_flood_is_transient_with_bounded_memory(hostile: dict[str, str]) -> None:
    """A 503 whose body never ends is a retry, not an ack, and memory stays bounded."""
    outcome, peak = await _post_measured(hostile["endless-503"])
    assert isinstance(outcome, ResponseTooLargeError)
    assert outcome.http_code == 503
    assert peak < MEMORY_BOUND


@pytest.mark.parametrize(
    ("mode", "error"),
    [
        ("one-byte-a-second", DeliveryTimeoutError),
        ("never-answers", DeliveryTimeoutError),
        ("malformed-status", TransientDeliveryError),
        ("reset-mid-body", TransientDeliveryError),
    ],
)
async def test_broken_answers_are_never_acked(
    hostile: dict[str, str], mode: str, error: type[Exception]
) -> None:
    """Slow, silent, malformed or reset answers are transient: the entry stays for a retry."""
    started = time.monotonic()
    outcome, _ = await _post_measured(hostile[mode], timeout_s=2.0)
    assert isinstance(outcome, error), outcome
    assert time.monotonic() - started < 5.0


async def test_a_connect_that_hangs_has_its_own_timeout_and_message() -> None:
    """A SYN nobody answers fails after OUTBOUND_CONNECT_TIMEOUT_SECONDS, saying so."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue: further SYNs are dropped
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        await asyncio.sleep(0.1)
        config = make_outbound_config(
            f"http://127.0.0.1:{port}", {"OUTBOUND_CONNECT_TIMEOUT_SECONDS": "0.5"}
        )
        async with HmacClient(config) as client:
            started = time.monotonic()
            with pytest.raises(DeliveryTimeoutError, match="OUTBOUND_CONNECT_TIMEOUT_SECONDS"):
                await client.post_signal(make_signal(), str(uuid.uuid4()), timeout=10)
            assert time.monotonic() - started < 3.0
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


def test_a_silently_dead_connection_is_noticed_by_tcp_user_timeout(tmp_path: Path) -> None:
    """A partition after the request is sent: noticed after ~2 s, not after the 30 s timeout.

    Runs in a private network namespace (``unshare --net``) whose loopback goes down once the
    server has the request, so no FIN or RST ever comes, as in a real partition.
    """
    unshare, ip = shutil.which("unshare"), shutil.which("ip", path=f"{os.environ['PATH']}:/sbin")
    if unshare is None or ip is None:
        pytest.skip("needs unshare (util-linux) and ip (iproute2) for a private network")
    probe = subprocess.run(  # noqa: S603 - fixed argv
        [unshare, "--net", "true"], check=False, capture_output=True, timeout=10
    )
    if probe.returncode != 0:
        pytest.skip(f"cannot make a network namespace here: {probe.stderr.decode().strip()}")
    done = subprocess.run(  # noqa: S603 - fixed argv
        [unshare, "--net", PY, "-m", "tests.conformance_servers", "partition", "2"],
        cwd=ROOT,
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
    result = json.loads(done.stdout.decode().strip().splitlines()[-1])
    assert "connection died: nothing acknowledged within 2s" in result["error"]
    assert result["elapsed_s"] < 8


# --- the whole bridge: acked only what the server has ----------------------------------------


@pytest.mark.redis
async def test_worker_acks_close_delimited_answers_once(
    redis: aioredis.Redis, redis_url: str, stream_name: str, tmp_path: Path
) -> None:
    """Against http.server as HTTP/1.0, every entry is acked after exactly one POST."""
    port = _free_port()
    env = {"INGEST_SECRETS": f"{support.KEY_ID}={support.SECRET}"}
    with _serving(tmp_path, Command(SERVERS["http.server-1.0"](port), port, env)):
        url = f"http://127.0.0.1:{port}"
        signals = [support.make_signal(i) for i in range(6)]
        published = [(await publish(redis, s, stream=stream_name), s) for s in signals]
        async with running(redis, bridge_config(url, redis_url, stream_name)) as worker:
            await eventually(lambda: worker.stats.delivered == 6, timeout_s=20, what="acks")
            assert worker.stats.retries == 0
        groups = await redis.xinfo_groups(stream_name)
        assert groups[0]["pending"] == 0
        expected = {idempotency_key(stream_name, eid, s.signal_id) for eid, s in published}
        assert _server_keys(url) == expected


@pytest.mark.redis
@pytest.mark.parametrize(
    "case", [("endless-201", True), ("endless-503", False)], ids=["201", "503"]
)
async def test_worker_acks_a_flood_only_behind_a_2xx(
    redis: aioredis.Redis,
    redis_url: str,
    stream_name: str,
    hostile: dict[str, str],
    case: tuple[str, bool],
) -> None:
    """A 201 flood is acked (the server has it); a 503 flood leaves the entries pending."""
    mode, acked = case
    for i in range(3):
        await publish(redis, support.make_signal(i), stream=stream_name)
    config = bridge_config(hostile[mode], redis_url, stream_name)
    async with running(redis, config) as worker:
        if acked:
            await eventually(lambda: worker.stats.delivered == 3, timeout_s=20, what="acks")
        else:
            await eventually(lambda: worker.stats.retries >= 3, timeout_s=20, what="retries")
            assert worker.stats.delivered == 0
    groups = await redis.xinfo_groups(stream_name)
    assert groups[0]["pending"] == (0 if acked else 3)
    assert await redis.xlen(f"{stream_name}:dlq") == 0
