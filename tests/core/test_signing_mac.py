"""The signers' HMAC: OpenSSL's object when hmac.HMAC wraps one, the wrapper otherwise.

Both give the same signatures, byte for byte, as the canonical requests signed in one call.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from bridge.core.fencing import LeaseStamp
from bridge.core.signing import Signer, SignerV2, canonical_request, canonical_request_v2

SECRET = b"test-secret-key-that-is-long-enough"
PRODUCER = "mt5-trader-1"
TIMESTAMP = "2025-10-25T14:30:45.123456Z"
KEY = "6f1c0f4e-8d52-5b8e-9a3c-2f0e4d1b7a99"
BODIES = [b"{}", b'{"instrument":"EURUSD","price":1.08}', bytes(range(256)) * 40]


def _expected(message: bytes) -> str:
    return base64.b64encode(hmac.digest(SECRET, message, hashlib.sha256)).decode("ascii")


def _use_wrapper(signer: Signer | SignerV2) -> None:
    """Make ``signer`` sign through the hmac.HMAC wrapper, as a build without OpenSSL's does."""
    signer._hmac = hmac.new(SECRET, digestmod=hashlib.sha256)


def test_openssl_object_is_used_when_there_is_one() -> None:
    """On this CPython the signer copies OpenSSL's HMAC object, not the Python wrapper."""
    assert not isinstance(Signer(SECRET, PRODUCER)._hmac, hmac.HMAC)


@pytest.mark.parametrize("wrapped", [False, True], ids=["openssl", "wrapper"])
def test_v1_signature_is_the_canonical_requests_hmac(wrapped: bool) -> None:
    """v1 signs the canonical request, repeatedly and for any body, with either HMAC."""
    signer = Signer(SECRET, PRODUCER)
    if wrapped:
        _use_wrapper(signer)
    for body in BODIES * 2:
        expected = _expected(canonical_request(body, TIMESTAMP, PRODUCER))
        assert signer.sign(body, TIMESTAMP) == expected


@pytest.mark.parametrize("wrapped", [False, True], ids=["openssl", "wrapper"])
@pytest.mark.parametrize("lease", [None, LeaseStamp("signals:{0}", 7)], ids=["no-lease", "lease"])
def test_v2_signature_is_the_canonical_requests_hmac(
    wrapped: bool, lease: LeaseStamp | None
) -> None:
    """v2 signs its canonical request (key and lease included) with either HMAC."""
    signer = SignerV2(SECRET, PRODUCER)
    if wrapped:
        _use_wrapper(signer)
    for body in BODIES:
        expected = _expected(canonical_request_v2(body, TIMESTAMP, PRODUCER, KEY, lease))
        assert signer.sign(body, TIMESTAMP, KEY, lease) == expected
