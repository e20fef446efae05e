"""CPU cost of signing one POST, per signature scheme, in-process (microseconds per signature).

Each scheme's signer (what ``signer_for`` builds from the settings) signs a canonical sample
signal of the usual size with a fresh idempotency key and a shard lease, as the client does per
attempt: ``hmac`` v1 and v2 (``X-Signature``), ``standard-webhooks`` (v1 HMAC, then with one Ed25519
key), ``rfc9421`` (HMAC, then Ed25519). A second table gives the reference verifier's cost per
request (``verify_request``), what the server pays. Process CPU time, best of ``--repeat``
alternated runs.

    .venv/bin/python -m bench.signing_cost                # 20,000 signatures per scheme
    .venv/bin/python -m bench.signing_cost -n 5000 --repeat 3
"""

from __future__ import annotations

import argparse
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Final

from bridge.core.ed25519 import generate_private_key, public_key_fingerprint
from bridge.core.fencing import LeaseStamp
from bridge.core.rfc9421 import Rfc9421Signer
from bridge.core.signal import Signal, encode_canonical
from bridge.core.signing import RequestSigner, Signer, SignerV2
from bridge.core.timestamps import format_timestamp
from bridge.core.verification import verify_request
from bridge.core.webhooks import StandardWebhooksSigner

__all__ = ["main"]

SECRET: Final = b"bench-secret-0123456789abcdef"
PRODUCER: Final = "bench-producer"
URL: Final = "http://127.0.0.1:8000/api/v1/signals/ingest"
LEASE: Final = LeaseStamp("signals:{0}", 17)
KEY: Final = generate_private_key()
BODY: Final = encode_canonical(
    Signal(
        instrument="XAUUSD",
        side="buy",
        entry_price=2000.5,
        take_profit=2010.0,
        stop_loss=1990.25,
        risk_percent=1.5,
        comment="breakout above the Asian range",
        strategy_name="gold-breakout",
        timestamp=datetime(2025, 10, 25, 14, 30, 45, 123456, tzinfo=UTC),
        signal_id="sig_abc123",
    )
)


def schemes() -> dict[str, RequestSigner]:
    """Return the signers measured, by row name."""
    return {
        "hmac v1": Signer(SECRET, PRODUCER),
        "hmac v2": SignerV2(SECRET, PRODUCER),
        "standard-webhooks (HMAC)": StandardWebhooksSigner(SECRET),
        "standard-webhooks (HMAC + Ed25519)": StandardWebhooksSigner(SECRET, [KEY]),
        "rfc9421 hmac-sha256": Rfc9421Signer(URL, PRODUCER, secret=SECRET),
        "rfc9421 ed25519": Rfc9421Signer(URL, PRODUCER, ed25519_keys=[KEY]),
    }


def _sign_loop(name: str, signer: RequestSigner, keys: Sequence[str]) -> float:
    """Sign once per key; return process CPU seconds."""
    del name
    at = time.time()
    stamp = format_timestamp(at)
    started = time.process_time()
    for key in keys:
        signer.signature_headers(BODY, stamp, at, key, LEASE)
    return time.process_time() - started


def _verify_loop(name: str, signer: RequestSigner, keys: Sequence[str]) -> float:
    """Verify one signed request per key as the reference server does; return CPU seconds."""
    at = time.time()
    stamp = format_timestamp(at)
    public = {public_key_fingerprint(KEY): KEY.public_key()}
    requests = []
    for key in keys:
        headers = {
            "Host": "127.0.0.1:8000",
            "Content-Type": "application/json",
            "X-Producer-Id": PRODUCER,
            "X-Timestamp": stamp,
            "X-Idempotency-Key": key,
            "X-Signal-Lease": LEASE.header_value(),
            **signer.signature_headers(BODY, stamp, at, key, LEASE),
        }
        requests.append(headers)
    # A server of an Ed25519 row holds only the public key, so that is what it checks.
    secrets = {} if "d25519" in name else {"default": SECRET}
    started = time.process_time()
    for headers in requests:
        verdict = verify_request(headers, BODY, secrets, public_keys=public, target_uri=URL)
        assert verdict.ok, verdict.reason
    return time.process_time() - started


def _best(
    run: Callable[[str, RequestSigner, Sequence[str]], float], n: int, repeat: int
) -> list[float]:
    """Best-of-``repeat`` microseconds per call for each scheme, runs alternated."""
    signers = schemes()
    keys = [str(uuid.uuid4()) for _ in range(n)]
    best = {name: float("inf") for name in signers}
    for _ in range(repeat):
        for name, signer in signers.items():
            best[name] = min(best[name], run(name, signer, keys) / n * 1e6)
    return [best[name] for name in signers]


def main(argv: list[str] | None = None) -> int:
    """Print a Markdown table of microseconds per signature and per verification."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("-n", type=int, default=20_000, help="signatures per scheme and run")
    parser.add_argument("--repeat", type=int, default=5, help="alternated runs (best reported)")
    args = parser.parse_args(argv)
    signed = _best(_sign_loop, args.n, args.repeat)
    verified = _best(_verify_loop, max(1, args.n // 4), args.repeat)
    print(f"body {len(BODY)} bytes, {args.n} signatures per run, best of {args.repeat}\n")
    print("| scheme | sign, µs | verify (reference verifier), µs |")
    print("| --- | ---: | ---: |")
    for name, sign_us, verify_us in zip(schemes(), signed, verified, strict=True):
        print(f"| {name} | {sign_us:.1f} | {verify_us:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
