"""``signal-bridge ingest-server``: the reference ingest server in the foreground.

It runs with JSON logs and OpenTelemetry like the bridge, and exits 0 after a SIGTERM once
uvicorn has shut down and telemetry is flushed; 2 for a bad option or secret, or a port it
cannot listen on (checked before it says "ready").
"""

from __future__ import annotations

import argparse
import errno
import logging
import signal as os_signal
import socket

from bridge import __version__
from bridge.errors import UsageError
from bridge.telemetry.logs import configure_logging, log_fields
from bridge.telemetry.otel_env import otel_environment, validate_otel_endpoints
from bridge.telemetry.setup import setup_telemetry

__all__ = ["run_ingest_server"]

log = logging.getLogger("bridge")


def _check_port(host: str, port: int) -> None:
    """Refuse a port that cannot be listened on (busy, privileged) as a usage error: exit 2.

    uvicorn would log "ready", fail to bind and exit 3; the bridge's health port gives 2 too.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            reasons = {
                errno.EADDRINUSE: "is already in use",
                errno.EACCES: "is not allowed (ports below 1024 need privileges)",
            }
            why = reasons.get(exc.errno or 0, f"cannot be listened on: {exc.strerror or exc}")
            raise UsageError(f"--host/--port: {host}:{port} {why}") from None


def run_ingest_server(args: argparse.Namespace) -> int:
    """Run the reference ingest server in the foreground, with JSON logs and OpenTelemetry."""
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    from bridge.devkit.ingest import IngestApp  # noqa: PLC0415 - server side only
    from bridge.devkit.ingest_guard import ServerLimits, uvicorn_config  # noqa: PLC0415 - ditto
    from bridge.devkit.ingest_keys import (  # noqa: PLC0415 - server side only
        load_ingest_keys,
        load_ingest_public_keys,
        load_required_version,
    )

    configure_logging("INFO", "auto")
    _check_port(args.host, args.port)
    keys = load_ingest_keys()
    secrets = keys.secrets
    public_keys = load_ingest_public_keys()
    required_version = load_required_version()
    otel_env = otel_environment()
    validate_otel_endpoints(otel_env)  # a malformed endpoint: one line, exit 2
    telemetry = setup_telemetry(
        otel_env,
        instance_id=f"{args.host}:{args.port}",
        prometheus=False,
        service_name="signal-bridge-ingest",
    )
    from bridge.devkit.fences import Fences, fencing_from_env  # noqa: PLC0415 - server side only

    app = IngestApp(
        secrets=secrets,
        producers=keys.producers,
        required_version=required_version,
        public_keys=public_keys,
        tolerance_s=args.tolerance,
        max_stored=args.max_stored,
        fences=Fences(enabled=fencing_from_env()),
    )
    limits = ServerLimits(
        max_header_bytes=args.max_header_bytes,
        max_headers=args.max_headers,
        header_timeout_s=args.header_timeout,
        body_timeout_s=args.body_timeout,
        max_connections=args.max_connections,
        max_concurrent_requests=args.max_concurrent_requests,
    )
    log.info(
        "ingest server starting",
        extra=log_fields(
            version=__version__,
            host=args.host,
            port=args.port,
            tls=bool(args.ssl_certfile),
            key_ids=sorted(secrets),
            ed25519_key_ids=sorted(public_keys),
            tolerance_s=args.tolerance,
            required_signature_version=required_version,
            max_header_bytes=limits.max_header_bytes,
            max_headers=limits.max_headers,
            header_timeout_s=limits.header_timeout_s,
            body_timeout_s=limits.body_timeout_s,
            max_connections=limits.max_connections,
            max_concurrent_requests=limits.max_concurrent_requests,
            max_stored=args.max_stored,
            fencing=app.fences.enabled,
        ),
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found: make
    # that a no-op, so telemetry is flushed and the exit code is 0 rather than death by signal.
    stopped_by: list[str] = []
    previous = os_signal.signal(
        os_signal.SIGTERM, lambda sig, frame: stopped_by.append(os_signal.Signals(sig).name)
    )
    try:
        config = uvicorn_config(
            app,
            limits,
            host=args.host,
            port=args.port,
            lifespan="auto",
            keep_log_config=True,  # keep our one-JSON-object-per-line handler
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
        uvicorn.Server(config).run()
    finally:
        os_signal.signal(os_signal.SIGTERM, previous)
        telemetry.shutdown()
    log.info(
        "ingest server stopped", extra=log_fields(signal=stopped_by[0] if stopped_by else None)
    )
    return 0
