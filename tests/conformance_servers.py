"""Ingest apps for servers nobody here wrote, and hostile raw-socket servers.

Run by the conformance suite in separate processes:

- ``asgi_app``: the reference :class:`bridge.devkit.ingest.IngestApp` (HMAC verified) for uvicorn
and
  hypercorn, plus ``GET /_keys``; with ``CONFORMANCE_CHUNKED=1`` its answers go out chunked.
- ``wsgi_app``: the same contract, synchronous, for gunicorn and waitress.
- ``python -m tests.conformance_servers http10 PORT``: Python's ``http.server`` as an HTTP/1.0
  server whose answers have no Content-Length (the close of the connection ends the body).
- ``python -m tests.conformance_servers hostile MODE...``: one raw-socket server per mode on
  free ports; prints ``MODE PORT`` lines, then serves until killed.
- ``unshare --net python -m tests.conformance_servers partition SECONDS``: in a private network
  namespace, a server takes a POST and then its loopback goes down (a silent partition); the
  client, with ``tcp_user_timeout_s=SECONDS``, prints how long it took to notice, as JSON.

Secrets come from ``INGEST_SECRETS`` through :func:`bridge.devkit.ingest_keys.load_ingest_secrets`.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from bridge.core.secrets import Secret
from bridge.core.signing import INGEST_PATH
from bridge.core.timestamps import format_timestamp
from bridge.core.verification import verify_request
from bridge.devkit.ingest import IngestApp, Receive, Scope, Send
from bridge.devkit.ingest_keys import load_ingest_secrets
from bridge.edge.client import HmacClient
from bridge.edge.settings import OutboundConfig
from bridge.errors import DeliveryError

__all__ = ["HOSTILE_MODES", "asgi_app", "wsgi_app"]

KEYS_PATH: Final = "/_keys"

# --- the ASGI app (uvicorn, hypercorn) ------------------------------------------------------


class _Asgi:
    """The reference IngestApp behind ``/_keys``, answering chunked when asked to."""

    def __init__(self) -> None:
        self._app: IngestApp | None = None

    @property
    def app(self) -> IngestApp:
        """Build the reference app on first use (the secrets come from the environment)."""
        if self._app is None:
            self._app = IngestApp(secrets=load_ingest_secrets())
        return self._app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve ``/_keys`` here and everything else through the reference app."""
        if scope["type"] == "http" and scope["path"] == KEYS_PATH:
            body = json.dumps(sorted(self.app.keys())).encode()
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [(b"content-length", str(len(body)).encode())],
                }
            )
            await send({"type": "http.response.body", "body": body})
            return
        if os.environ.get("CONFORMANCE_CHUNKED") == "1" and scope["type"] == "http":
            send = _chunking(send)
        await self.app(scope, receive, send)


def _chunking(send: Send) -> Send:
    """Drop Content-Length and send the body in two parts: the server must chunk it."""

    async def chunked(message: MutableMapping[str, Any]) -> None:
        """Pass the start without Content-Length, then the body in two parts."""
        if message["type"] == "http.response.start":
            headers = [(k, v) for k, v in message["headers"] if k.lower() != b"content-length"]
            await send({**message, "headers": headers})
            return
        body = message.get("body", b"")
        half = len(body) // 2
        await send({"type": "http.response.body", "body": body[:half], "more_body": True})
        await send({"type": "http.response.body", "body": body[half:], "more_body": False})

    return chunked


asgi_app = _Asgi()

# --- one synchronous ingest for WSGI servers and http.server ---------------------------------


class _SyncIngest:
    """The ingest contract, synchronous: verify, remember the key, 201 or 409."""

    def __init__(self) -> None:
        self._secrets: Mapping[str, bytes] | None = None
        self._keys: dict[str, str] = {}
        self._lock = threading.Lock()

    def handle(
        self, method: str, path: str, headers: Mapping[str, str], body: bytes
    ) -> tuple[int, bytes]:
        """Answer one request: (status, JSON body)."""
        if path == KEYS_PATH:
            with self._lock:
                return 200, json.dumps(sorted(self._keys)).encode()
        if (method, path) != ("POST", INGEST_PATH):
            return 404, b'{"detail":"not found"}'
        if self._secrets is None:
            self._secrets = load_ingest_secrets()
        verdict = verify_request(headers, body, self._secrets)
        if not verdict.ok:
            return 401, json.dumps({"detail": verdict.reason}).encode()
        key = headers.get("x-idempotency-key", "")
        with self._lock:
            existing = self._keys.get(key)
            if existing is None:
                self._keys[key] = f"srv_{uuid.uuid4().hex[:16]}"
        if existing is not None:
            return 409, json.dumps({"detail": "duplicate", "signal_id": existing}).encode()
        now = format_timestamp(datetime.now(UTC))
        answer = {"signal_id": self._keys[key], "status": "received", "server_timestamp": now}
        return 201, json.dumps(answer).encode()


_SYNC = _SyncIngest()
_REASONS: Final = {
    200: "OK",
    201: "Created",
    401: "Unauthorized",
    404: "Not Found",
    409: "Conflict",
}


def wsgi_app(
    environ: dict[str, Any], start_response: Callable[[str, list[tuple[str, str]]], Any]
) -> Iterable[bytes]:
    """WSGI entry point for gunicorn and waitress."""
    length = int(environ.get("CONTENT_LENGTH") or 0)
    body = environ["wsgi.input"].read(length) if length else b""
    headers = {
        key[5:].lower().replace("_", "-"): value
        for key, value in environ.items()
        if key.startswith("HTTP_")
    }
    status, answer = _SYNC.handle(environ["REQUEST_METHOD"], environ["PATH_INFO"], headers, body)
    start_response(
        f"{status} {_REASONS.get(status, 'Error')}",
        [("Content-Type", "application/json"), ("Content-Length", str(len(answer)))],
    )
    return [answer]


# --- http.server as HTTP/1.0, close-delimited ------------------------------------------------


class _Http10Handler(BaseHTTPRequestHandler):
    """HTTP/1.0 answers without Content-Length: the close of the connection ends the body."""

    protocol_version = "HTTP/1.0"

    def do_POST(self) -> None:
        """Answer a POST through the synchronous ingest."""
        self._answer(self.rfile.read(int(self.headers.get("Content-Length") or 0)))

    def do_GET(self) -> None:
        """Answer ``/_keys``."""
        self._answer(b"")

    def _answer(self, body: bytes) -> None:
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer = _SYNC.handle(self.command, self.path, headers, body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: Any) -> None:
        """Keep the test output quiet."""


def _serve_http10(port: int) -> None:
    """Serve the HTTP/1.0 handler on ``port`` (0: a free one), printing the port."""
    server = ThreadingHTTPServer(("127.0.0.1", port), _Http10Handler)
    print(server.server_address[1], flush=True)
    server.serve_forever()


# --- hostile raw-socket servers --------------------------------------------------------------

_MIB: Final = b"x" * (1024 * 1024)
_HOSTILE_LIFETIME_S: Final = 120.0


def _read_request(conn: socket.socket) -> bool:
    """Read one request head and its Content-Length body; False when the client left."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    while len(rest) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return False
        rest += chunk
    return True


def _endless(conn: socket.socket, status: bytes) -> None:
    """Answer ``status`` with a chunked body that never ends."""
    conn.sendall(b"HTTP/1.1 " + status + b"\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n" % len(_MIB) + _MIB + b"\r\n"
    while True:
        conn.sendall(chunk)


def _big(conn: socket.socket) -> None:
    """Answer 200 with a 200 MB body."""
    size = 200 * len(_MIB)
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % size)
    for _ in range(200):
        conn.sendall(_MIB)


def _headers(conn: socket.socket) -> None:
    """Answer 201 with a million header lines."""
    conn.sendall(b"HTTP/1.1 201 Created\r\n")
    line = b"X-Filler: 0123456789\r\n"
    batch = line * 1000
    for _ in range(1000):  # a million header lines
        conn.sendall(batch)
    conn.sendall(b"Content-Length: 0\r\n\r\n")


def _slow(conn: socket.socket) -> None:
    """Answer 201, one byte a second."""
    for byte in b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}":
        conn.sendall(bytes([byte]))
        time.sleep(1.0)


def _reset(conn: socket.socket) -> None:
    """Answer 201 with a tenth of the body announced, then reset the connection."""
    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 1000\r\n\r\n" + b"{" * 100)
    # SO_LINGER 0: close() sends a RST instead of a FIN.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


_HOSTILE: Final[dict[str, Callable[[socket.socket], None]]] = {
    "endless-201": lambda conn: _endless(conn, b"201 Created"),
    "endless-503": lambda conn: _endless(conn, b"503 Service Unavailable"),
    "big-200": _big,
    "million-headers": _headers,
    "one-byte-a-second": _slow,
    "malformed-status": lambda conn: conn.sendall(b"HTTP/1.1 20I Created\r\n\r\n"),
    "reset-mid-body": _reset,
    "never-answers": lambda conn: time.sleep(_HOSTILE_LIFETIME_S),
}
HOSTILE_MODES: Final = tuple(_HOSTILE)


def _serve_hostile(mode: str, listener: socket.socket) -> None:
    """Accept forever; each connection reads one request and gets ``mode``'s answer."""

    def one(conn: socket.socket) -> None:
        """Serve one connection, then close it."""
        try:
            if _read_request(conn):
                _HOSTILE[mode](conn)
        except OSError:
            pass  # the client gave up: that is what these servers are for
        finally:
            conn.close()

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=one, args=(conn,), daemon=True).start()


async def _loopback(state: str) -> None:
    """Set this network namespace's loopback ``up`` or ``down``."""
    proc = await asyncio.create_subprocess_exec("ip", "link", "set", "lo", state)
    if await proc.wait() != 0:
        raise RuntimeError(f"ip link set lo {state} failed")


async def _partition(user_timeout_s: float) -> dict[str, object]:
    """POST to a server whose network dies silently after the request; time the client."""
    await _loopback("up")

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        # From now on nothing reaches anyone and nothing says so: no FIN, no RST.
        await _loopback("down")
        await asyncio.sleep(_HOSTILE_LIFETIME_S)
        writer.close()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    config = OutboundConfig(
        server_url=f"http://127.0.0.1:{port}",
        secret=Secret(b"partition-test-secret-0123456789"),
        producer_id="partition-probe",
        tcp_user_timeout_s=user_timeout_s,
    )
    started = time.monotonic()
    async with HmacClient(config) as client:
        try:
            await client.send_body(b'{"x":1}', idempotency_key=str(uuid.uuid4()), timeout=30)
            error = ""
        except DeliveryError as exc:
            error = str(exc)
    server.close()
    return {"elapsed_s": round(time.monotonic() - started, 2), "error": error}


def _main(argv: list[str]) -> None:
    """Run ``http10 [PORT]``, ``hostile MODE...`` or ``partition SECONDS``."""
    if argv[0] == "http10":
        _serve_http10(int(argv[1]) if len(argv) > 1 else 0)
        return
    if argv[0] == "partition":
        print(json.dumps(asyncio.run(_partition(float(argv[1])))), flush=True)
        return
    for mode in argv[1:]:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        threading.Thread(target=_serve_hostile, args=(mode, listener), daemon=True).start()
        print(mode, listener.getsockname()[1], flush=True)
    time.sleep(_HOSTILE_LIFETIME_S)  # the parent kills us sooner; this bounds a leak


if __name__ == "__main__":
    _main(sys.argv[1:])
