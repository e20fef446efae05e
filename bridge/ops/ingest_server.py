"""``signal-bridge ingest-server``: the reference ingest server in the foreground.

It runs with JSON logs and OpenTelemetry like the bridge, and exits 0 after a SIGTERM once
uvicorn has shut down and telemetry is flushed.
"""

from __future__ import annotations

import argparse
import logging
import signal as os_signal

from bridge import __version__
from bridge.telemetry.logs import configure_logging, log_fields
from bridge.telemetry.otel_env import otel_environment
from bridge.telemetry.setup import setup_telemetry

__all__ = ["run_ingest_server"]

log = logging.getLogger("bridge")


def run_ingest_server(args: argparse.Namespace) -> int:
    """Run the reference ingest server in the foreground, with JSON logs and OpenTelemetry."""
    import uvicorn  # noqa: PLC0415 - only this command needs the server

    from bridge.devkit.ingest import IngestApp  # noqa: PLC0415 - server side only
    from bridge.devkit.ingest_keys import (  # noqa: PLC0415 - server side only
        load_ingest_keys,
        load_ingest_public_keys,
        load_required_version,
    )

    configure_logging("INFO", "json")
    keys = load_ingest_keys()
    secrets = keys.secrets
    public_keys = load_ingest_public_keys()
    required_version = load_required_version()
    telemetry = setup_telemetry(
        otel_environment(),
        instance_id=f"{args.host}:{args.port}",
        prometheus=False,
        service_name="signal-bridge-ingest",
    )
    app = IngestApp(
        secrets=secrets,
        producers=keys.producers,
        required_version=required_version,
        public_keys=public_keys,
        tolerance_s=args.tolerance,
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
        ),
    )
    # uvicorn shuts down gracefully on SIGTERM, then re-raises it to the handler it found: make
    # that a no-op, so telemetry is flushed and the exit code is 0 rather than death by signal.
    stopped_by: list[str] = []
    previous = os_signal.signal(
        os_signal.SIGTERM, lambda sig, frame: stopped_by.append(os_signal.Signals(sig).name)
    )
    try:
        uvicorn.run(
            app,
            host=args.host,
            port=args.port,
            log_level="warning",
            log_config=None,  # keep our one-JSON-object-per-line handler
            access_log=False,
            date_header=False,  # the app sends Date from its own clock
            ssl_certfile=args.ssl_certfile,
            ssl_keyfile=args.ssl_keyfile,
        )
    finally:
        os_signal.signal(os_signal.SIGTERM, previous)
        telemetry.shutdown()
    log.info(
        "ingest server stopped", extra=log_fields(signal=stopped_by[0] if stopped_by else None)
    )
    return 0
