"""`check` finds the commonest mistakes before `run`: a doubled ingest path and a wrong secret.

Real Redis, the reference ingest server on loopback; a plain HTTP server stands for an ingest
server that does not know the signed probe.
"""

from __future__ import annotations

import http.server
import logging
import os
import threading
from collections.abc import Iterator

import pytest

from bridge.core.signing import INGEST_PATH
from bridge.ops.cli import main
from tests.fixtures_ingest import Server
from tests.support import bridge_env

_PREFIXES = ("BRIDGE_", "HMAC_", "OUTBOUND_", "OTEL_", "INGEST_", "PRODUCER_ID")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No settings from the developer's shell; the root logger restored after main() set it."""
    for name in list(os.environ):
        if name.startswith(_PREFIXES):
            monkeypatch.delenv(name)
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])


def _env(monkeypatch: pytest.MonkeyPatch, redis_url: str, server_url: str, **extra: str) -> None:
    for name, value in bridge_env(server_url, redis_url, "check-probe", **extra).items():
        monkeypatch.setenv(name, value)


@pytest.mark.redis
def test_check_fails_naming_ingest_when_the_url_already_holds_the_ingest_path(
    server: Server,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """OUTBOUND_SERVER_URL ending in the ingest path: exit 1, naming ingest and the fix."""
    _env(monkeypatch, redis_url, server.url + INGEST_PATH)
    assert main(["check"]) == 1
    err = capsys.readouterr().err
    assert "check failed: ingest: " in err
    assert "already holds the ingest path" in err
    assert f"set OUTBOUND_SERVER_URL to {server.url}" in err


@pytest.mark.redis
def test_signed_probe_passes_with_the_right_secret_and_stores_nothing(
    server: Server,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The reference server verifies the probe and answers it; nothing is stored."""
    _env(monkeypatch, redis_url, server.url)
    assert main(["check", "--signed-probe"]) == 0
    out = capsys.readouterr().out
    assert "probe     ok: the server verified a signed X-Signal-Probe request" in out
    assert out.rstrip().endswith("check passed")
    assert server.app.received == []
    assert server.app.requests_total == 1


@pytest.mark.redis
def test_signed_probe_fails_on_a_wrong_secret_naming_the_credentials(
    server: Server,
    redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A secret the server does not hold: exit 1, 401, the credentials named; plain check passes."""
    _env(monkeypatch, redis_url, server.url, HMAC_PRODUCER_SECRET="wrong-secret-0123456789abcdef")
    assert main(["check"]) == 0, "without the probe nothing is signed, so nothing can tell"
    capsys.readouterr()
    assert main(["check", "--signed-probe"]) == 1
    err = capsys.readouterr().err
    assert "check failed: ingest: signed probe" in err
    assert "refused the signature (401)" in err
    assert "HMAC_PRODUCER_SECRET" in err
    assert "wrong-secret" not in err


class _PlainIngest(http.server.BaseHTTPRequestHandler):
    """An ingest server that knows no probe: it judges the body and refuses it with 422."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        body = b'{"detail":"invalid signal"}'
        self.send_response(422)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output quiet."""


@pytest.mark.redis
def test_signed_probe_says_so_when_the_server_does_not_know_it(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A server without the probe answers 422 to its body: exit 1 saying it does not know it."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PlainIngest)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        _env(monkeypatch, redis_url, f"http://127.0.0.1:{httpd.server_address[1]}")
        assert main(["check", "--signed-probe"]) == 1
    finally:
        httpd.shutdown()
        httpd.server_close()
    err = capsys.readouterr().err
    assert "does not know the signed probe (X-Signal-Probe: 1)" in err
    assert "answered 422" in err
