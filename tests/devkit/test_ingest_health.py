"""The reference server's /healthz: what the compose health check asks, answered quietly."""

from __future__ import annotations

import urllib.request

from bridge.devkit.ingest import HEALTH_PATH
from tests.fixtures_ingest import Server


def test_healthz_answers_200_without_counting_or_storing(server: Server) -> None:
    """GET /healthz is 200 {"status": "ok"}; no request counted, nothing stored."""
    with urllib.request.urlopen(f"{server.url}{HEALTH_PATH}", timeout=5) as answer:  # noqa: S310 - loopback http
        assert answer.status == 200
        assert answer.read() == b'{"status":"ok"}'
    assert server.app.requests_total == 0
    assert server.app.received == []
