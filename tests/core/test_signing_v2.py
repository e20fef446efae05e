"""Signature v2 (the idempotency key and the lease signed) and the canonical-base64 rule.

The known answers in ``vectors/signing_v2.json`` are recomputed here with the ``openssl`` CLI
over canonical requests this test assembles from each case's fields, not with our code.
"""

import base64
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any, Final

import pytest

from bridge.core.fencing import LeaseStamp
from bridge.core.signing import (
    SIGNATURE_VERSION_HEADER,
    Signer,
    SignerV2,
    build_signature,
    canonical_request_v2,
)
from bridge.core.timestamps import parse_timestamp
from bridge.core.verification import Verification, verify_request, verify_signature

VECTORS: Final[dict[str, Any]] = json.loads(
    (Path(__file__).parent / "vectors" / "signing_v2.json").read_text(encoding="utf-8")
)
CASES: Final[list[dict[str, Any]]] = VECTORS["cases"]
BY_NAME: Final = {c["name"]: c for c in CASES}
OPENSSL: Final = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(
    OPENSSL is None, reason="the openssl CLI is not on PATH; cannot cross-check independently"
)
case_params = pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])


def _secret(case: dict[str, Any]) -> bytes:
    """Return the case's secret bytes from hex (the authoritative form)."""
    return bytes.fromhex(case["secret_hex"])


def _body(case: dict[str, Any]) -> bytes:
    """Return the case's body bytes from base64 (the authoritative form)."""
    return base64.b64decode(case["body_base64"], validate=True)


def _lease(case: dict[str, Any]) -> LeaseStamp | None:
    """Return the case's lease, or None in parallel mode."""
    if case["lease_shard"] is None:
        return None
    return LeaseStamp(case["lease_shard"], case["lease_token"])


def _lines_from_fields(case: dict[str, Any], body_sha256: str) -> bytes:
    """Assemble the eight v2 lines from the case's fields, independently of bridge.core."""
    lines = [
        f"METHOD:{case['method']}",
        f"ENDPOINT:{case['path']}",
        f"TIMESTAMP:{case['timestamp']}",
        f"PRODUCER_ID:{case['producer_id']}",
        f"BODY_SHA256:{body_sha256}",
        f"IDEMPOTENCY_KEY:{case['idempotency_key']}",
        f"LEASE_SHARD:{case['lease_shard'] or ''}",
        f"LEASE_TOKEN:{case['lease_token'] or ''}",
    ]
    return "\n".join(lines).encode("utf-8")


def _openssl(args: list[str], data: bytes) -> bytes:
    """Run the openssl CLI with ``args`` on ``data`` and return its binary output."""
    assert OPENSSL is not None
    result = subprocess.run(  # noqa: S603 - fixed argv, no shell, test-only
        [OPENSSL, *args], input=data, capture_output=True, check=True, timeout=30
    )
    return result.stdout


def _verify(case: dict[str, Any], **changes: Any) -> Verification:
    """Verify the case's request at its own time, with headers, body, key or request changed."""
    headers = {**case["headers"], **changes.pop("headers", {})}
    for name in changes.pop("drop", ()):
        del headers[name]
    return verify_request(
        headers,
        changes.pop("body", _body(case)),
        {case["key_id"] or "only": changes.pop("secret", _secret(case))},
        now=parse_timestamp(case["timestamp"]),
        method=changes.pop("method", case["method"]),
        path=changes.pop("path", case["path"]),
        **changes,
    )


def test_v2_vectors_cover_leases_keys_and_paths() -> None:
    """The v2 file holds cases with and without a lease, several key ids, producers and paths."""
    assert (VECTORS["format_version"], VECTORS["signature_version"]) == (1, 2)
    assert len(CASES) >= 6
    assert any(c["lease_shard"] is None for c in CASES)
    assert any(c["lease_shard"] is not None for c in CASES)
    assert len({c["key_id"] for c in CASES}) >= 3
    assert len({c["producer_id"] for c in CASES}) >= 3
    assert len({c["path"] for c in CASES}) >= 2
    for case in CASES:
        assert case["headers"][SIGNATURE_VERSION_HEADER] == "2"
        assert case["headers"]["X-Signature"] == case["signature"]
        assert case["headers"]["X-Idempotency-Key"] == case["idempotency_key"]
        lease = _lease(case)
        assert case["headers"].get("X-Signal-Lease") == (lease.header_value() if lease else None)


@needs_openssl
@case_params
def test_v2_vector_recomputed_with_openssl(case: dict[str, Any]) -> None:
    """The openssl CLI's SHA-256 and HMAC over the lines built here give every pinned answer."""
    secret, body = _secret(case), _body(case)
    body_sha256 = base64.b64encode(_openssl(["dgst", "-sha256", "-binary"], body)).decode()
    assert body_sha256 == case["body_sha256"]
    message = _lines_from_fields(case, body_sha256)
    assert message == case["canonical_request"].encode("utf-8")
    hexkey = f"hexkey:{secret.hex()}"
    by_dgst = _openssl(["dgst", "-sha256", "-mac", "HMAC", "-macopt", hexkey, "-binary"], message)
    by_mac = _openssl(["mac", "-digest", "SHA256", "-macopt", hexkey, "-binary", "HMAC"], message)
    assert base64.b64encode(by_dgst).decode() == case["signature"]
    assert by_mac == by_dgst
    if case["secret_utf8"] is not None:
        by_text = _openssl(["dgst", "-sha256", "-hmac", case["secret_utf8"], "-binary"], message)
        assert by_text == by_dgst


@case_params
def test_v2_vector_recomputed_with_bridge_signing(case: dict[str, Any]) -> None:
    """canonical_request_v2 and SignerV2 give every pinned line set, signature and header."""
    secret, body, lease = _secret(case), _body(case), _lease(case)
    assert canonical_request_v2(
        body,
        case["timestamp"],
        case["producer_id"],
        case["idempotency_key"],
        lease,
        method=case["method"],
        path=case["path"],
    ) == case["canonical_request"].encode("utf-8")
    signer = SignerV2(secret, case["producer_id"], method=case["method"], path=case["path"])
    headers = signer.signature_headers(body, case["timestamp"], 0.0, case["idempotency_key"], lease)
    assert headers == {"X-Signature": case["signature"], SIGNATURE_VERSION_HEADER: "2"}


@case_params
def test_v2_vector_verifies_as_a_request(case: dict[str, Any]) -> None:
    """verify_request accepts each v2 vector at its own time and says it was version 2."""
    verdict = _verify(case)
    assert verdict.ok, verdict.reason
    assert (verdict.version, verdict.producer_id) == (2, case["producer_id"])


def _one_byte(text: str, index: int = -1) -> str:
    """Return ``text`` with one character changed (an ASCII letter or digit stays one)."""
    old = text[index]
    new = "1" if old == "0" else ("0" if old.isdigit() else ("b" if old != "b" else "c"))
    position = index % len(text)
    return text[:position] + new + text[position + 1 :]


LEASED: Final = BY_NAME["seed-example-with-lease"]
CHANGES: Final[dict[str, dict[str, Any]]] = {
    "body": {"body": _body(LEASED).replace(b"2000.5", b"2000.6")},
    "secret key": {"secret": _secret(LEASED)[:-1] + b"X"},
    "idempotency key": {"headers": {"X-Idempotency-Key": _one_byte(LEASED["idempotency_key"])}},
    "lease shard": {"headers": {"X-Signal-Lease": 'shard="signals:{1}", token=17'}},
    "lease token": {"headers": {"X-Signal-Lease": 'shard="signals:{0}", token=18'}},
    "lease dropped": {"drop": ["X-Signal-Lease"]},
    "method": {"method": "PUST"},
    "path": {"path": _one_byte(LEASED["path"])},
    "timestamp": {"headers": {"X-Timestamp": "2025-10-25T14:30:45.123457Z"}},
    "producer": {"headers": {"X-Producer-Id": "mt5-trader-2"}},
}


@pytest.mark.parametrize("change", list(CHANGES), ids=list(CHANGES))
def test_a_one_byte_change_fails_v2_verification(change: str) -> None:
    """Changing one byte of anything v2 covers (or dropping the lease) fails verification."""
    assert _verify(LEASED).ok
    verdict = _verify(LEASED, **CHANGES[change])
    assert not verdict.ok
    assert verdict.check == "signature"


def test_v1_does_not_cover_the_idempotency_key_but_v2_does() -> None:
    """The residual risk of v1, pinned: a rewritten key still verifies under v1, not under v2."""
    secret, body, timestamp = b"k" * 32, b'{"x":1}', "2025-10-25T14:30:45.123456Z"
    v1 = Signer(secret, "p1").signature_headers(body, timestamp, 0.0, "key-a", None)
    v2 = SignerV2(secret, "p1").signature_headers(body, timestamp, 0.0, "key-a", None)
    for signed, verifies_with_key_b in ((v1, True), (v2, False)):
        headers = {
            **signed,
            "X-Producer-Id": "p1",
            "X-Timestamp": timestamp,
            "X-Idempotency-Key": "key-b",
        }
        verdict = verify_request(headers, body, {"k": secret}, now=parse_timestamp(timestamp))
        assert verdict.ok is verifies_with_key_b


def _spellings(signature: str) -> list[str]:
    """Return the four base64 spellings of a 32-byte signature (its last char's two spare bits)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    base = alphabet.index(signature[-2]) & ~0b11
    return [signature[:-2] + alphabet[base + spare] + "=" for spare in range(4)]


@pytest.mark.parametrize("version", [1, 2])
def test_only_the_canonical_base64_spelling_verifies(version: int) -> None:
    """Of the four spellings that decode to the same 32 bytes, only the canonical one passes."""
    case = BY_NAME["seed-example"]
    signature, drop = case["signature"], []
    if version == 1:
        signature = build_signature(_secret(case), _body(case), case["timestamp"], "mt5-trader-1")
        drop = [SIGNATURE_VERSION_HEADER]
    spellings = _spellings(signature)
    assert len({base64.b64decode(s) for s in spellings}) == 1
    assert signature in spellings
    results = {s: _verify(case, headers={"X-Signature": s}, drop=drop).ok for s in spellings}
    assert results == {s: s == signature for s in spellings}


def test_verify_signature_refuses_a_non_canonical_spelling() -> None:
    """verify_signature, too, accepts the canonical spelling only."""
    secret, body, timestamp = b"s" * 32, b"{}", "2025-10-25T14:30:45.123456Z"
    signature = build_signature(secret, body, timestamp, "p")
    for spelling in _spellings(signature):
        assert verify_signature(secret, body, timestamp, "p", spelling) is (spelling == signature)


@pytest.mark.parametrize(
    ("lease", "reason"),
    [
        ("", "malformed X-Signal-Lease"),
        ("shard=signals:{0}, token=17", "malformed X-Signal-Lease"),
        ('shard="signals:{0}", token=0', "malformed X-Signal-Lease"),
    ],
)
def test_v2_refuses_a_lease_header_that_does_not_parse(lease: str, reason: str) -> None:
    """A present but malformed X-Signal-Lease is refused, never read as "no lease"."""
    case = BY_NAME["seed-example"]  # signed without a lease: empty lines would verify
    verdict = _verify(case, headers={"X-Signal-Lease": lease})
    assert (verdict.ok, verdict.reason, verdict.check) == (False, reason, "headers")
    assert verdict.answer == "invalid request"


def test_v2_needs_the_idempotency_key_header() -> None:
    """A v2 request without X-Idempotency-Key is refused as an invalid request."""
    verdict = _verify(BY_NAME["seed-example"], drop=["X-Idempotency-Key"])
    assert (verdict.ok, verdict.reason, verdict.answer) == (
        False,
        "missing header X-Idempotency-Key",
        "invalid request",
    )


@pytest.mark.parametrize("value", ["3", "", "v2", "02"])
def test_an_unknown_signature_version_is_refused(value: str) -> None:
    """Only versions 1 and 2 are known; anything else in X-Signature-Version is refused."""
    verdict = _verify(BY_NAME["seed-example"], headers={SIGNATURE_VERSION_HEADER: value})
    assert (verdict.ok, verdict.check) == (False, "headers")


def test_required_version_two_refuses_v1_and_accepts_v2() -> None:
    """required_version=2 refuses a valid v1 request (check 'version') and takes a v2 one."""
    case = BY_NAME["seed-example"]
    v1_headers = {k: v for k, v in case["headers"].items() if k != SIGNATURE_VERSION_HEADER}
    v1_headers["X-Signature"] = build_signature(
        _secret(case), _body(case), case["timestamp"], case["producer_id"]
    )
    assert _verify(case, headers=v1_headers, drop=[SIGNATURE_VERSION_HEADER]).ok
    refused = _verify(case, headers=v1_headers, drop=[SIGNATURE_VERSION_HEADER], required_version=2)
    assert (refused.ok, refused.check, refused.answer) == (False, "version", "invalid signature")
    assert _verify(case, required_version=2).ok


def test_a_key_bound_to_producers_signs_for_those_only() -> None:
    """A key bound to other producers is refused ('producer'); bound or unbound keys pass."""
    case = BY_NAME["seed-example"]
    assert _verify(case, producers={"k1": frozenset({"mt5-trader-1", "x"})}).ok
    assert _verify(case, producers={"other": frozenset({"x"})}).ok
    refused = _verify(case, producers={"k1": frozenset({"mt5-trader-2"})})
    assert (refused.ok, refused.check, refused.key_id) == (False, "producer", "k1")
    assert refused.answer == "invalid signature"
