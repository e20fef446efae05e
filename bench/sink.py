"""Ingest-server stand-ins for the benchmark: a fast sink and a recording, verifying sink.

* Fast sink: nginx when the binary exists (a private config on a free loopback port that answers
  every POST to the ingest path with 201 and a fixed JSON body), else a minimal ASGI app on
  uvicorn that reads the body and answers the same.
* Recording sink (``--mode record``): an ASGI app on uvicorn that stamps ``time.time_ns()`` when a
  request arrives, reads the producer's send time from the body (``comment`` holds
  ``sent_ns=<int>``), verifies the headers, the signature and the canonical body, and serves the
  records on ``GET /stats`` (``POST /reset`` clears them).

Run a uvicorn sink by hand: ``.venv/bin/python -m bench.sink --mode fast --port 8080``.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import http.client
import importlib.util
import json
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from bench.common import INGEST_PATH, SINK_RESPONSE, canonical_json, free_port, sign
from bench.procstat import die_with_parent

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON_HEADERS = [(b"content-type", b"application/json")]
_TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$")
_SENT_RE = re.compile(r"sent_ns=(\d+)")
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
MAX_SKEW_NS = 5_000_000_000


async def _read_body(receive: Receive) -> bytes:
    """Read the whole request body from the ASGI receive channel."""
    chunks: list[bytes] = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _respond(send: Send, status: int, body: bytes) -> None:
    """Send a complete JSON response."""
    await send({"type": "http.response.start", "status": status, "headers": _JSON_HEADERS})
    await send({"type": "http.response.body", "body": body})


_FAST_COUNT = [0]


async def fast_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answer 201 with the fixed JSON to every POST on the ingest path (body read in full)."""
    if scope["type"] != "http":
        return
    await _read_body(receive)
    if scope["method"] == "POST" and scope["path"] == INGEST_PATH:
        _FAST_COUNT[0] += 1
        await _respond(send, 201, SINK_RESPONSE)
    elif scope["method"] == "GET" and scope["path"] == "/count":
        await _respond(send, 200, b'{"count":%d}' % _FAST_COUNT[0])
    elif scope["method"] == "GET" and scope["path"] == "/health":
        await _respond(send, 200, b'{"ok":true}')
    else:
        await _respond(send, 404, b'{"error":"not found"}')


class RecordingSink:
    """ASGI app that records arrival time, send time and contract checks of every signal."""

    def __init__(self, secret: bytes, producer_id: str) -> None:
        self.secret = secret
        self.producer_id = producer_id
        self.records: list[dict[str, Any]] = []
        self.problems: Counter[str] = Counter()

    def check(self, headers: dict[str, str], body: bytes, arrival_ns: int) -> list[str]:
        """Return the contract violations of one request (empty when it conforms)."""
        problems: list[str] = []
        if headers.get("content-type", "").split(";")[0].strip() != "application/json":
            problems.append("content-type")
        if headers.get("x-producer-id") != self.producer_id:
            problems.append("producer-id")
        if not headers.get("user-agent"):
            problems.append("user-agent")
        if not _UUID_RE.match(headers.get("x-idempotency-key", "")):
            problems.append("idempotency-key-format")
        stamp = headers.get("x-timestamp", "")
        if not _TS_RE.match(stamp):
            problems.append("timestamp-format")
        else:
            sent = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
            if abs(arrival_ns - int(sent.timestamp() * 1e9)) > MAX_SKEW_NS:
                problems.append("timestamp-skew")
        if "x-signature" in headers:
            expected = sign(self.secret, stamp, headers.get("x-producer-id", ""), body)
            if not hmac.compare_digest(expected, headers.get("x-signature", "")):
                problems.append("signature")
        elif not self._verify_profile(headers, body):
            problems.append("signature")
        return problems

    def _verify_profile(self, headers: dict[str, str], body: bytes) -> bool:
        """Check a standard-webhooks or rfc9421 request with the reference verifier."""
        from bridge.core.ed25519 import (  # noqa: PLC0415 - only these schemes need it
            parse_public_key,
            public_key_fingerprint,
        )
        from bridge.core.verification import verify_request  # noqa: PLC0415 - as above

        keys = {}
        for text in filter(None, os.environ.get("BENCH_SINK_ED25519_PUBLIC_KEYS", "").split(",")):
            key = parse_public_key(text)
            if key is not None:
                keys[public_key_fingerprint(key)] = key
        target = f"http://{headers.get('host', '')}{INGEST_PATH}"
        verdict = verify_request(
            headers, body, {"default": self.secret}, public_keys=keys, target_uri=target
        )
        return verdict.ok

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Route ingest POSTs, GET /stats, POST /reset and GET /health."""
        if scope["type"] != "http":
            return
        arrival_ns = time.time_ns()
        body = await _read_body(receive)
        method, path = scope["method"], scope["path"]
        if method == "POST" and path == INGEST_PATH:
            await self.ingest(scope, body, arrival_ns)
            await _respond(send, 201, SINK_RESPONSE)
        elif method == "GET" and path == "/stats":
            stats = {"count": len(self.records), "problems": self.problems, "records": self.records}
            await _respond(send, 200, json.dumps(stats).encode())
        elif method == "POST" and path == "/reset":
            self.records = []
            self.problems = Counter()
            await _respond(send, 200, b'{"ok":true}')
        elif method == "GET" and path == "/health":
            await _respond(send, 200, b'{"ok":true}')
        else:
            await _respond(send, 404, b'{"error":"not found"}')

    async def ingest(self, scope: Scope, body: bytes, arrival_ns: int) -> None:
        """Verify one signal and store its record."""
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        problems = self.check(headers, body, arrival_ns)
        sent_ns: int | None = None
        try:
            signal = msgspec.json.decode(body)
        except msgspec.DecodeError:
            problems.append("body-json")
        else:
            if canonical_json(signal) != body:
                problems.append("body-not-canonical")
            comment = signal.get("comment") if isinstance(signal, dict) else None
            match = _SENT_RE.search(comment) if isinstance(comment, str) else None
            if match:
                sent_ns = int(match.group(1))
        self.problems.update(problems)
        self.records.append(
            {
                "arrival_ns": arrival_ns,
                "sent_ns": sent_ns,
                "key": headers.get("x-idempotency-key", ""),
                "body_sha256": hashlib.sha256(body).hexdigest(),
                "problems": problems,
            }
        )


# --------------------------------------------------------------------------- process helpers


def _wait_port(port: int, deadline_s: float, proc: subprocess.Popen[bytes]) -> None:
    """Wait until something accepts connections on 127.0.0.1:port (bounded)."""
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"sink process exited with {proc.returncode}")
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"sink did not listen on port {port} within {deadline_s} s")


def _wait_healthy(port: int, deadline_s: float) -> None:
    """Wait until GET /health answers 200 (bounded)."""
    deadline = time.monotonic() + deadline_s
    while http_call(port, "GET", "/health")[0] != 200:
        if time.monotonic() > deadline:
            raise RuntimeError(f"sink on port {port} not healthy within {deadline_s} s")
        time.sleep(0.05)


def http_call(port: int, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    """Make one HTTP request to 127.0.0.1:port and return (status, body)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body else {}
        conn.request(method, path, body=body or None, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def verify_fast_sink(port: int) -> None:
    """Check that a fast sink answers 201 with the fixed JSON to a POST with a body."""
    status, body = http_call(port, "POST", INGEST_PATH, b'{"probe":' + b"1" * 2000 + b"}")
    if status != 201 or json.loads(body) != json.loads(SINK_RESPONSE):
        raise RuntimeError(f"sink answered {status} {body[:200]!r} instead of 201")


def find_nginx() -> str | None:
    """Return the nginx binary's path, if there is one."""
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if Path(p).exists()), None
    )


def install_nginx() -> str | None:
    """Install nginx with apt-get (root only; bounded in time); return its path or None."""
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        print("sink: cannot install nginx (not root or no apt-get)", file=sys.stderr)
        return None
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "nginx"]
    for attempt in range(2):
        if attempt:
            subprocess.run(["apt-get", "update"], env=env, check=False, timeout=300)  # noqa: S607
        done = subprocess.run(cmd, env=env, check=False, timeout=300, capture_output=True)  # noqa: S603
        if done.returncode == 0:
            break
    return find_nginx()


NGINX_CONF = """\
{user}worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    # One 4-byte line (status + newline) per request, buffered: the harness counts by file size.
    log_format bench '$status';
    access_log {tmp}/access.log bench buffer=64k flush=50ms;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    client_body_buffer_size 64k;
    client_max_body_size 1m;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {path} {{
            default_type application/json;
            if ($request_method != POST) {{
                return 405;
            }}
            return 201 '{response}';
        }}
        location /v1/ {{
            # OTLP/HTTP stub for --otlp runs: the bridge's exporters get 200 and move on.
            return 200;
        }}
        location / {{
            return 404;
        }}
    }}
}}
"""


class SinkProcess:
    """A running sink (nginx or uvicorn) on a loopback port; ``stop()`` ends it."""

    def __init__(self, kind: str, port: int, proc: subprocess.Popen[bytes], tmp: Path) -> None:
        self.kind = kind
        self.port = port
        self.proc = proc
        self.tmp = tmp

    @property
    def url(self) -> str:
        """Base URL of the sink."""
        return f"http://127.0.0.1:{self.port}"

    def request_count(self) -> int:
        """Return how many requests the sink has answered so far (nginx: may lag by 50 ms)."""
        if self.kind == "nginx":
            try:
                return (self.tmp / "access.log").stat().st_size // 4
            except FileNotFoundError:
                return 0
        status, body = http_call(
            self.port, "GET", "/count" if self.kind == "uvicorn-fast" else "/stats"
        )
        if status != 200:
            raise RuntimeError(f"sink answered {status} to its request count")
        count: int = json.loads(body)["count"]
        return count

    def stop(self) -> None:
        """Terminate the sink (SIGTERM, bounded wait, then SIGKILL) and remove its temp dir."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.tmp, ignore_errors=True)


def start_nginx(nginx: str) -> SinkProcess:
    """Start nginx with a private config on a free loopback port and verify it answers 201."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-nginx-"))
    port = free_port()
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    conf = NGINX_CONF.format(
        user=user, tmp=tmp, port=port, path=INGEST_PATH, response=SINK_RESPONSE.decode()
    )
    (tmp / "nginx.conf").write_text(conf)
    log = (tmp / "stderr.log").open("wb")
    proc = subprocess.Popen(  # noqa: S603
        [nginx, "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log")],
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - the harness has no threads
    )
    sink = SinkProcess("nginx", port, proc, tmp)
    try:
        _wait_port(port, 10, proc)
        verify_fast_sink(port)
    except Exception:
        sink.stop()
        raise
    return sink


def start_uvicorn_sink(
    mode: str, log_dir: Path, secret: str = "", producer_id: str = ""
) -> SinkProcess:
    """Start ``python -m bench.sink`` (fast or record mode) and wait until it is healthy."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench-sink-{mode}-"))
    port = free_port()
    log = (log_dir / f"sink-{mode}.log").open("ab")
    cmd = [sys.executable, "-m", "bench.sink", "--mode", mode, "--port", str(port)]
    env = {**os.environ, "BENCH_SINK_SECRET": secret, "BENCH_SINK_PRODUCER_ID": producer_id}
    root = Path(__file__).resolve().parent.parent
    proc = subprocess.Popen(  # noqa: S603
        cmd,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        cwd=root,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - the harness has no threads
    )
    sink = SinkProcess(f"uvicorn-{mode}", port, proc, tmp)
    try:
        _wait_port(port, 20, proc)
        _wait_healthy(port, 10)
        if mode == "fast":
            verify_fast_sink(port)
    except Exception:
        sink.stop()
        raise
    return sink


def start_fast_sink(log_dir: Path, *, allow_install: bool, force_uvicorn: bool) -> SinkProcess:
    """Start nginx when available (installing it if allowed), else the uvicorn fast sink."""
    if not force_uvicorn:
        nginx = find_nginx() or (install_nginx() if allow_install else None)
        if nginx:
            return start_nginx(nginx)
        print("sink: nginx not found (pass --install-nginx to install it); using uvicorn")
    return start_uvicorn_sink("fast", log_dir)


def uvicorn_http_impl() -> str:
    """Return the fastest HTTP implementation uvicorn can use here."""
    return "httptools" if importlib.util.find_spec("httptools") else "h11"


def uvicorn_loop_impl() -> str:
    """Return the event loop uvicorn uses here."""
    return "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"


def uvicorn_impl() -> str:
    """Describe the uvicorn sinks' HTTP parser and loop, e.g. ``httptools+uvloop``."""
    return f"{uvicorn_http_impl()}+{uvicorn_loop_impl()}"


def main(argv: list[str] | None = None) -> None:
    """Serve the fast or the recording sink on uvicorn."""
    import uvicorn  # noqa: PLC0415 - only the server process needs it

    parser = argparse.ArgumentParser(description="Bench ingest sink on uvicorn.")
    parser.add_argument("--mode", choices=["fast", "record"], default="fast")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--secret", default=os.environ.get("BENCH_SINK_SECRET", ""))
    parser.add_argument("--producer-id", default=os.environ.get("BENCH_SINK_PRODUCER_ID", ""))
    ns = parser.parse_args(argv)
    app: Callable[[Scope, Receive, Send], Awaitable[None]] = (
        fast_app if ns.mode == "fast" else RecordingSink(ns.secret.encode(), ns.producer_id)
    )
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=ns.port,
        http=uvicorn_http_impl(),
        loop=uvicorn_loop_impl(),
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_keep_alive=300,
        backlog=4096,
    )


if __name__ == "__main__":
    main()
