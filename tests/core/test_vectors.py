import base64
import binascii
import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from bridge.core.signal import decode_signal, encode_canonical
from bridge.core.signing import Signer, body_sha256, build_signature, canonical_request
from bridge.core.timestamps import parse_timestamp
from bridge.core.verification import verify_request, verify_signature

VECTORS_PATH: Final = Path(__file__).parent / "vectors" / "signing.json"
VECTORS: Final[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))
CASES: Final[list[dict[str, Any]]] = VECTORS["cases"]
SIGNAL_CASES: Final = [c for c in CASES if c["body_is_canonical_signal"]]
OPENSSL: Final = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl CLI is not on PATH; cannot cross-check independently"
)


def _secret(case: dict[str, Any]) -> bytes:
    """Return the case's secret bytes from hex (the authoritative form)."""
    return bytes.fromhex(case["secret_hex"])


def _body(case: dict[str, Any]) -> bytes:
    """Return the case's body bytes from base64 (the authoritative form)."""
    return base64.b64decode(case["body_base64"], validate=True)


def _openssl(args: list[str], data: bytes) -> bytes:
    """Run ``openssl dgst ... -binary`` on ``data`` and return the raw digest."""
    assert OPENSSL is not None
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell, test-only
        [OPENSSL, "dgst", "-sha256", *args, "-binary"],
        input=data,
        capture_output=True,
        check=True,
        timeout=30,
    )
    return result.stdout


case_params = pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])


def test_vector_file_covers_the_promised_variety() -> None:
    """The vector file holds at least six cases spanning unicode, size, producers, keys, paths."""
    assert VECTORS["format_version"] == 1
    assert len(CASES) >= 6
    assert len({c["name"] for c in CASES}) == len(CASES)
    bodies = [_body(c) for c in CASES]
    assert any(any(byte >= 0x80 for byte in b) for b in bodies), "no non-ASCII body"
    assert max(len(b) for b in bodies) >= 60_000, "no large body"
    assert len({c["producer_id"] for c in CASES}) >= 3
    assert len({c["path"] for c in CASES}) >= 2
    assert len({c["key_id"] for c in CASES}) >= 3
    assert any(c["secret_utf8"] is None for c in CASES), "no non-text secret"
    assert any(parse_timestamp(c["timestamp"]).microsecond not in (0,) for c in CASES)


@case_params
def test_vector_encodings_agree(case: dict[str, Any]) -> None:
    """Each case's text, hex and base64 forms of the secret and body describe the same bytes."""
    secret, body = _secret(case), _body(case)
    assert base64.b64decode(case["secret_base64"], validate=True) == secret
    if case["secret_utf8"] is not None:
        assert case["secret_utf8"].encode("utf-8") == secret
    else:
        with pytest.raises(UnicodeDecodeError):
            secret.decode("utf-8")
    if case["body_utf8"] is not None:
        assert case["body_utf8"].encode("utf-8") == body
    assert case["body_length"] == len(body)
    assert binascii.unhexlify(case["signature_hex"]) == base64.b64decode(case["signature"])
    assert case["headers"]["X-Signature"] == case["signature"]
    assert case["headers"]["X-Timestamp"] == case["timestamp"]
    assert case["headers"]["X-Producer-Id"] == case["producer_id"]
    assert case["headers"].get("X-Key-Id") == case["key_id"]


@case_params
def test_vector_recomputed_with_bridge_signing(case: dict[str, Any]) -> None:
    """bridge.core.signing reproduces every pinned body hash, canonical request and signature."""
    secret, body = _secret(case), _body(case)
    method, path = case["method"], case["path"]
    assert body_sha256(body) == case["body_sha256"]
    assert canonical_request(
        body, case["timestamp"], case["producer_id"], method=method, path=path
    ) == case["canonical_request"].encode("utf-8")
    assert (
        build_signature(
            secret, body, case["timestamp"], case["producer_id"], method=method, path=path
        )
        == case["signature"]
    )
    signer = Signer(secret, case["producer_id"], method=method, path=path)
    assert signer.sign(body, case["timestamp"]) == case["signature"]
    assert verify_signature(
        secret,
        body,
        case["timestamp"],
        case["producer_id"],
        case["signature"],
        method=method,
        path=path,
    )


@case_params
def test_vector_verifies_as_a_request(case: dict[str, Any]) -> None:
    """verify_request accepts each vector's headers and body at the vector's own time."""
    secret, body = _secret(case), _body(case)
    secrets = {case["key_id"] or "only": secret, "unrelated": b"some-other-secret-0000"}
    verdict = verify_request(
        case["headers"],
        body,
        secrets,
        now=parse_timestamp(case["timestamp"]),
        method=case["method"],
        path=case["path"],
    )
    assert verdict.ok, verdict.reason
    assert verdict.producer_id == case["producer_id"]
    assert verdict.key_id == (case["key_id"] or "only")


@pytest.mark.parametrize("case", SIGNAL_CASES, ids=[c["name"] for c in SIGNAL_CASES])
def test_vector_canonical_signal_bodies_are_pinned(case: dict[str, Any]) -> None:
    """Bodies marked as canonical signals decode and re-encode to the very same bytes."""
    body = _body(case)
    assert encode_canonical(decode_signal(body)) == body


@needs_openssl
@case_params
def test_vector_recomputed_with_openssl(case: dict[str, Any]) -> None:
    """The openssl CLI, independently of Python's hmac, gives every pinned hash and signature."""
    secret, body = _secret(case), _body(case)
    message = case["canonical_request"].encode("utf-8")
    assert base64.b64encode(_openssl([], body)).decode() == case["body_sha256"]
    by_hexkey = _openssl(["-mac", "HMAC", "-macopt", f"hexkey:{secret.hex()}"], message)
    assert base64.b64encode(by_hexkey).decode() == case["signature"]
    if case["secret_utf8"] is not None:
        by_text_key = _openssl(["-hmac", case["secret_utf8"]], message)
        assert base64.b64encode(by_text_key).decode() == case["signature"]


@needs_openssl
def test_openssl_agrees_with_bridge_on_a_fresh_request() -> None:
    """A signature made now by core.signing matches openssl's HMAC over its canonical request."""
    secret, body = b"fresh-secret-\x00\xffbinary", '{"note":"héllo"}'.encode()
    timestamp, producer = "2030-02-03T04:05:06.789012Z", "mt5-fresh"
    message = canonical_request(body, timestamp, producer)
    expected = _openssl(["-mac", "HMAC", "-macopt", f"hexkey:{secret.hex()}"], message)
    assert build_signature(secret, body, timestamp, producer) == base64.b64encode(expected).decode()
    assert hashlib.sha256(body).digest() == _openssl([], body)
