"""The signed probe: one signed POST that a server answers without storing anything.

``signal-bridge check --signed-probe`` sends it so that a wrong secret, key id, producer id or
clock is found before ``run``. The request is signed exactly as a delivery is (same signer, same
static headers) and carries ``X-Signal-Probe: 1`` with a body that is not a signal
(``{"probe":true}``): a server that knows the probe verifies the signature and answers 200
``{"probe": "ok"}``; one that does not know it judges the body and refuses it (400 or 422), so
nothing is ever stored.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Final
from urllib.parse import urlsplit

import httpx
import msgspec

from bridge import __version__
from bridge.core.timestamps import format_timestamp
from bridge.edge.client import build_ssl_context
from bridge.edge.settings import OutboundConfig
from bridge.edge.signers import signer_for

__all__ = ["PROBE_BODY", "PROBE_HEADER", "ProbeAnswer", "signed_probe"]

PROBE_HEADER: Final = "X-Signal-Probe"
PROBE_BODY: Final = b'{"probe":true}'
_MAX_DETAIL: Final = 300


@dataclass(frozen=True, slots=True)
class ProbeAnswer:
    """The server's answer to the probe (``status`` 0 when there was none) and what it said."""

    status: int
    detail: str
    understood: bool  # the server answered as one that knows the probe


async def signed_probe(config: OutboundConfig, *, timeout_s: float) -> ProbeAnswer:
    """Send one signed probe to the ingest URL and return the answer; never raises for I/O."""
    signer = signer_for(config)
    at = time.time()
    timestamp = format_timestamp(at)
    key = str(uuid.uuid4())
    headers = {
        "Content-Type": "application/json",
        "User-Agent": f"signal-bridge/{__version__}",
        "X-Producer-Id": config.producer_id,
        "X-Timestamp": timestamp,
        "X-Idempotency-Key": key,
        PROBE_HEADER: "1",
    }
    if config.key_id is not None:
        headers["X-Key-Id"] = config.key_id
    headers.update(signer.signature_headers(PROBE_BODY, timestamp, at, key, None))
    https = urlsplit(config.ingest_url).scheme == "https"
    proxy, _ = config.proxy()
    try:
        async with httpx.AsyncClient(
            verify=build_ssl_context(config) if https else True,
            proxy=proxy,
            trust_env=False,
            timeout=timeout_s,
        ) as client:
            response = await client.post(config.ingest_url, content=PROBE_BODY, headers=headers)
    except httpx.HTTPError as exc:
        return ProbeAnswer(0, f"{type(exc).__name__}: {exc}"[:_MAX_DETAIL], understood=False)
    text = response.text[:_MAX_DETAIL]
    understood = False
    if response.status_code == 200:
        try:
            understood = msgspec.json.decode(response.content).get("probe") == "ok"
        except (msgspec.DecodeError, AttributeError):
            understood = False
    return ProbeAnswer(response.status_code, text, understood=understood)
