"""``signal-bridge check``: prove a set-up works before traffic flows (CI/CD, init containers).

Given settings that already loaded and validated, it connects to Redis (auth, TLS, cluster as
configured), looks at each stream and its group, opens a TCP (and TLS, verified as the client
verifies it) connection to the ingest server, and prints what it found, the secret's fingerprint
and the effective settings with secrets hidden. Nothing is written to Redis or sent to the server,
except with ``--signed-probe``: one signed request the server answers without storing
(:mod:`bridge.edge.probe`). A server URL that already holds the ingest path fails the check.

The route to the ingest server is one hop today (straight to its host and port); a forward proxy
is a different first hop plus a CONNECT, which slots into :func:`_first_hop` / :func:`_open`.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit

from bridge.config.loader import BridgeConfig, effective_settings
from bridge.core.ed25519 import public_key_b64, public_key_fingerprint
from bridge.core.outcome import DEFAULT_TABLE
from bridge.core.secrets import key_fingerprint, redact_url
from bridge.core.signing import INGEST_PATH
from bridge.edge.client import build_ssl_context
from bridge.edge.probe import PROBE_HEADER, signed_probe
from bridge.edge.settings import OutboundConfig
from bridge.errors import BridgeError, ConfigError, StreamError
from bridge.ops.dlq import plural
from bridge.streams.connection import connect, probe_database
from bridge.streams.group import signal_streams
from bridge.streams.receipts import receipts_key_error
from bridge.streams.settings import redis_db

__all__ = ["CheckFailedError", "run_check"]

STEP_TIMEOUT_S: Final = 10.0
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class CheckFailedError(BridgeError):
    """A part of the set-up (``redis``, ``stream``, ``ingest``) does not work; exit code 1."""

    def __init__(self, part: str, message: str) -> None:
        super().__init__(f"check failed: {part}: {message}")
        self.part = part


Print = Callable[[str], None]


async def run_check(config: BridgeConfig, out: Print = print, *, signed_probe: bool = False) -> int:
    """Run every check, printing one line per part; return 0, or raise CheckFailedError.

    ``signed_probe`` also sends one signed request the server answers without storing
    (``X-Signal-Probe: 1``), so a wrong secret, key id or clock fails here, not in ``run``.
    """
    out("settings  ok")
    secret = config.outbound.secret
    if secret is not None and len(secret):
        out(f"secret    sha256 fingerprint {key_fingerprint(secret.get())} (first 8 hex digits)")
    else:
        out("secret    not set (HMAC_PRODUCER_ENABLED is false)")
    if config.outbound.enabled:
        out(f"scheme    {config.outbound.signature_scheme}")
        for key in config.outbound.ed25519_keys():
            out(
                f"ed25519   public key {public_key_b64(key)} "
                f"(fingerprint {public_key_fingerprint(key)})"
            )
    await _check_redis(config, out)
    if config.outbound.enabled:
        _check_ingest_url(config.outbound)
        await _check_ingest(config.outbound, out)
        if signed_probe:
            await _check_signed_probe(config.outbound, out)
    else:
        out("ingest    skipped: HMAC_PRODUCER_ENABLED is false (nothing will be delivered)")
    out("effective settings:")
    width = max(len(name) for name, _ in effective_settings(config))
    for name, value in effective_settings(config):
        out(f"  {name:<{width}}  {value}")
    out("check passed")
    return 0


async def _check_redis(config: BridgeConfig, out: Print) -> None:
    """PING (auth, TLS, the database), then each stream's length and its group."""
    cfg = config.stream
    where = redact_url(cfg.redis_url) + (" (cluster)" if cfg.cluster else "")
    if cfg.redis_password is not None:
        where += " (password from BRIDGE_REDIS_PASSWORD_FILE)"
    async with connect(cfg.redis_url, cluster=cfg.cluster, password=cfg.redis_password) as redis:
        started = time.perf_counter()
        try:
            await asyncio.wait_for(probe_database(redis, redis_db(cfg.redis_url)), STEP_TIMEOUT_S)
        except StreamError as exc:
            raise CheckFailedError("redis", f"{where}: {exc}") from None
        except TimeoutError:
            raise CheckFailedError(
                "redis", f"{where}: no answer within {STEP_TIMEOUT_S:g}s"
            ) from None
        out(f"redis     ok: {where}, PING {1000 * (time.perf_counter() - started):.1f} ms")
        for stream in signal_streams(cfg, redis):
            name = stream.stream
            try:
                status = await asyncio.wait_for(stream.status(), STEP_TIMEOUT_S)
                present = await asyncio.wait_for(stream.group_exists(), STEP_TIMEOUT_S)
            except (StreamError, TimeoutError) as exc:
                raise CheckFailedError("stream", f"{name}: {exc or 'no answer'}") from None
            if status.dead_letter_error:
                raise CheckFailedError("stream", f"{name}: {status.dead_letter_error}")
            if cfg.receipts and (error := await receipts_key_error(redis, name)):
                raise CheckFailedError("stream", f"{name}: {error}")
            if present:
                group = (
                    f"group {cfg.group} present, lag "
                    f"{'unknown' if status.lag is None else status.lag}, pending {status.pending}"
                )
            else:
                group = (
                    f"group {cfg.group} not created yet (run creates it at "
                    f"BRIDGE_START_ID={cfg.start_id})"
                )
            out(
                f"stream    {name}: {status.length} entries; {group}; "
                f"{plural(status.dead_letters, 'dead letter')} in {cfg.dlq_for(name)}"
            )


def _check_ingest_url(cfg: OutboundConfig) -> None:
    """Fail when OUTBOUND_SERVER_URL already holds the ingest path the bridge appends."""
    url = urlsplit(cfg.server_url)
    if INGEST_PATH in url.path:
        origin = f"{url.scheme}://{url.netloc}{url.path[: url.path.index(INGEST_PATH)]}"
        raise CheckFailedError(
            "ingest",
            f"OUTBOUND_SERVER_URL {redact_url(cfg.server_url)} already holds the ingest path; "
            f"the bridge appends {INGEST_PATH}, so it would post to {cfg.ingest_url} (404): "
            f"set OUTBOUND_SERVER_URL to {redact_url(origin)}",
        )


async def _check_signed_probe(cfg: OutboundConfig, out: Print) -> None:
    """Send the signed probe; fail naming the likely cause unless the server accepts it."""
    answer = await signed_probe(cfg, timeout_s=min(cfg.timeout_s, STEP_TIMEOUT_S))
    if answer.understood:
        out(
            f"probe     ok: the server verified a signed {PROBE_HEADER} request "
            f"(producer {cfg.producer_id}, key id {cfg.key_id or '-'}); nothing was stored"
        )
        return
    status = answer.status
    if status == 0:
        why = f"no answer: {answer.detail}"
    elif status in (401, 403):
        why = f"refused the signature ({status}): {DEFAULT_TABLE.for_status(status).cause}"
    elif status in (400, 422) or 200 <= status < 300:
        why = (
            f"the server does not know the signed probe ({PROBE_HEADER}: 1): it answered "
            f"{status} to the probe's body instead; only a server that answers the probe "
            "(the reference server does) proves the secret before run"
        )
    else:
        verdict = DEFAULT_TABLE.for_status(status)
        why = f"answered {status}" + (f": {verdict.cause}" if verdict.cause else "")
    raise CheckFailedError("ingest", f"signed probe to {cfg.ingest_url}: {why} ({answer.detail})")


def _first_hop(cfg: OutboundConfig) -> tuple[str, int]:
    """Where the TCP connection goes: the ingest server itself (a proxy would go here)."""
    url = urlsplit(cfg.server_url)
    if url.hostname is None:  # validated at load; kept for the type checker
        raise ConfigError("OUTBOUND_SERVER_URL has no host", variable="OUTBOUND_SERVER_URL")
    return url.hostname, url.port or _DEFAULT_PORTS[url.scheme]


async def _open(cfg: OutboundConfig) -> str:
    """Open TCP, then TLS when the URL is https (verified as the client does); describe it."""
    host, port = _first_hop(cfg)
    https = urlsplit(cfg.server_url).scheme == "https"
    context = build_ssl_context(cfg) if https else None
    _, writer = await asyncio.open_connection(
        host, port, ssl=context, server_hostname=host if https else None
    )
    try:
        tls = writer.get_extra_info("ssl_object")
        if isinstance(tls, ssl.SSLObject):
            return f"TLS to {host}:{port} ({tls.version()}, certificate verified for {host})"
        return f"TCP to {host}:{port} (plain http, loopback)"
    finally:
        writer.close()
        await writer.wait_closed()


async def _check_ingest(cfg: OutboundConfig, out: Print) -> None:
    """Connect to the ingest server (TCP, TLS) within the timeout; nothing is sent."""
    timeout_s = min(cfg.timeout_s, STEP_TIMEOUT_S)
    try:
        described = await asyncio.wait_for(_open(cfg), timeout_s)
    except ssl.SSLCertVerificationError as exc:
        raise CheckFailedError(
            "ingest",
            f"{cfg.server_url}: the server's TLS certificate is not trusted "
            f"({exc.verify_message}); check OUTBOUND_CA_BUNDLE",
        ) from None
    except ssl.SSLError as exc:
        raise CheckFailedError(
            "ingest", f"{cfg.server_url}: TLS handshake failed ({exc.reason or exc})"
        ) from None
    except TimeoutError:
        raise CheckFailedError(
            "ingest", f"{cfg.server_url}: no connection within {timeout_s:g}s"
        ) from None
    except OSError as exc:
        raise CheckFailedError(
            "ingest", f"{cfg.server_url}: cannot connect ({exc.strerror or exc})"
        ) from None
    out(f"ingest    ok: {described}")
