import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

import pytest
from http_message_signatures import HTTPMessageSigner, MappingKeyResolver, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.core.ed25519 import generate_private_key, public_key_fingerprint
from bridge.core.fencing import LeaseStamp
from bridge.core.rfc9421 import Rfc9421Signer, content_digest, verify_rfc9421
from bridge.core.verification import verify_request
from bridge.errors import SigningError

SECRET: Final = b"rfc9421-secret-0123456789"
BODY: Final = b'{"instrument":"XAUUSD","side":"buy"}'
URL: Final = "https://ingest.example.com/api/v1/signals/ingest"
AT: Final = 1_761_402_645.5
NOW: Final = datetime.fromtimestamp(AT, UTC)
LEASE: Final = LeaseStamp("signals:{0}", 17)


def _request(signer: Rfc9421Signer, lease: LeaseStamp | None = LEASE) -> dict[str, str]:
    """The headers a bridge POST carries, lower-cased as a server reads them."""
    key = str(uuid.uuid4())
    headers = {
        "host": "ingest.example.com",
        "content-type": "application/json",
        "x-idempotency-key": key,
        "x-producer-id": "desk-1",
    }
    if lease is not None:
        headers["x-signal-lease"] = lease.header_value()
    signed = signer.signature_headers(BODY, "", AT, key, lease)
    return {**headers, **{k.lower(): v for k, v in signed.items()}}


def test_content_digest_is_rfc9530_sha256() -> None:
    """Content-Digest is sha-256 as a byte sequence: RFC 9530's example value."""
    assert content_digest(b'{"hello": "world"}') == (
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
    )


def test_the_signature_input_names_every_covered_component_and_parameter() -> None:
    """sig1 covers method, URI, type, digest, key, producer and lease, with the four parameters."""
    headers = _request(Rfc9421Signer(URL, "desk-1", secret=SECRET, hmac_key_id="k1"))
    assert headers["signature-input"] == (
        'sig1=("@method" "@target-uri" "content-type" "content-digest" "x-idempotency-key" '
        '"x-producer-id" "x-signal-lease");created=1761402645;keyid="k1";alg="hmac-sha256";'
        'tag="signal-bridge"'
    )
    assert headers["signature"].startswith("sig1=:")


def test_the_reference_verifier_accepts_hmac_and_ed25519() -> None:
    """verify_request (dispatching on Signature-Input) accepts both algorithms with the lease."""
    hmac_headers = _request(Rfc9421Signer(URL, "desk-1", secret=SECRET, hmac_key_id="k1"))
    verdict = verify_request(hmac_headers, BODY, {"k1": SECRET}, now=NOW)
    assert (verdict.ok, verdict.key_id, verdict.producer_id) == (True, "k1", "desk-1")
    key = generate_private_key()
    fingerprint = public_key_fingerprint(key)
    ed_headers = _request(Rfc9421Signer(URL, "desk-1", ed25519_keys=[key]))
    verdict = verify_request(
        ed_headers, BODY, {}, now=NOW, public_keys={fingerprint: key.public_key()}
    )
    assert (verdict.ok, verdict.key_id) == (True, fingerprint)


def test_during_a_rotation_a_server_with_either_public_key_accepts() -> None:
    """With two keys the POST carries sig1 and sig2; a server knowing only one still accepts."""
    old, new = generate_private_key(), generate_private_key()
    headers = _request(Rfc9421Signer(URL, "desk-1", ed25519_keys=[old, new]))
    assert headers["signature"].count(":") == 4
    for key in (old, new):
        keys = {public_key_fingerprint(key): key.public_key()}
        assert verify_rfc9421(headers, BODY, {}, keys, target_uri=URL, now=NOW).ok


@dataclass
class _Message:
    method: str
    url: str
    headers: dict[str, str]


def _stock_signed(covered: tuple[str, ...]) -> dict[str, str]:
    """Sign with the PyPI library, covering ``covered`` only."""
    key = str(uuid.uuid4())
    headers = {
        "host": "ingest.example.com",
        "content-type": "application/json",
        "x-idempotency-key": key,
        "x-producer-id": "desk-1",
        "content-digest": content_digest(BODY),
    }
    message = _Message("POST", URL, headers)
    HTTPMessageSigner(
        signature_algorithm=algorithms.HMAC_SHA256,
        key_resolver=MappingKeyResolver(public_keys={}, private_keys={"k1": SECRET}),
    ).sign(
        message,
        key_id="k1",
        label="sig1",
        tag="signal-bridge",
        covered_component_ids=covered,
        created=NOW,
        use_existing_digest=True,
    )
    return {k.lower(): v for k, v in message.headers.items()}


def test_a_signature_made_by_the_stock_library_is_accepted() -> None:
    """Our verifier accepts what http-message-signatures signs over the same components."""
    covered = (
        "@method",
        "@target-uri",
        "content-type",
        "content-digest",
        "x-idempotency-key",
        "x-producer-id",
    )
    assert verify_rfc9421(_stock_signed(covered), BODY, {"k1": SECRET}, target_uri=URL, now=NOW).ok


def test_a_signature_that_leaves_the_idempotency_key_out_is_refused() -> None:
    """A valid signature that does not cover x-idempotency-key does not count."""
    covered = ("@method", "@target-uri", "content-type", "content-digest", "x-producer-id")
    verdict = verify_rfc9421(_stock_signed(covered), BODY, {"k1": SECRET}, target_uri=URL, now=NOW)
    assert (verdict.ok, verdict.reason) == (False, "signature does not cover the request")


def test_a_lease_header_added_after_signing_is_refused() -> None:
    """A lease the signature does not cover (added by a relay) makes the request invalid."""
    headers = _request(Rfc9421Signer(URL, "desk-1", secret=SECRET, hmac_key_id="k1"), lease=None)
    assert verify_rfc9421(headers, BODY, {"k1": SECRET}, target_uri=URL, now=NOW).ok
    headers["x-signal-lease"] = LEASE.header_value()
    assert not verify_rfc9421(headers, BODY, {"k1": SECRET}, target_uri=URL, now=NOW).ok


@pytest.mark.parametrize(
    ("change", "check"),
    [
        ({"content-digest": content_digest(b"other")}, "signature"),
        ({"x-idempotency-key": str(uuid.uuid4())}, "signature"),
        ({"x-signal-lease": 'shard="signals:{0}", token=18'}, "signature"),
        ({"signature-input": "sig1=garbage"}, "headers"),
        ({"signature": "sig1=:%%%:"}, "headers"),
        ({"signature": ""}, "headers"),
    ],
)
def test_changed_or_broken_headers_are_refused(change: dict[str, str], check: str) -> None:
    """Each change is a refusal naming the failed check; nothing raises."""
    headers = {**_request(Rfc9421Signer(URL, "desk-1", secret=SECRET, hmac_key_id="k1")), **change}
    verdict = verify_rfc9421(headers, BODY, {"k1": SECRET}, target_uri=URL, now=NOW)
    assert (verdict.ok, verdict.check) == (False, check)


def test_unknown_keyid_wrong_uri_and_old_signatures_are_refused() -> None:
    """An unknown keyid is 'key', another URI 'signature', a created past the window 'window'."""
    headers = _request(Rfc9421Signer(URL, "desk-1", secret=SECRET, hmac_key_id="k1"))
    unknown = verify_rfc9421(headers, BODY, {"k2": SECRET}, target_uri=URL, now=NOW)
    other = verify_rfc9421(headers, BODY, {"k1": SECRET}, target_uri=URL + "x", now=NOW)
    late = verify_rfc9421(
        headers, BODY, {"k1": SECRET}, target_uri=URL, now=NOW + timedelta(seconds=302)
    )
    assert [v.check for v in (unknown, other, late)] == ["key", "signature", "window"]


def test_verify_request_builds_the_target_uri_from_host() -> None:
    """Without target_uri the reference verifier assumes https://<Host><path>."""
    headers = _request(Rfc9421Signer(URL, "desk-1", secret=SECRET, hmac_key_id="k1"))
    assert verify_request(headers, BODY, {"k1": SECRET}, now=NOW).ok
    headers["host"] = "elsewhere.example.com"
    assert not verify_request(headers, BODY, {"k1": SECRET}, now=NOW).ok


def test_the_signer_needs_a_key_and_shows_none() -> None:
    """No secret and no Ed25519 key is refused; repr names the URI and alg, never a key."""
    with pytest.raises(SigningError):
        Rfc9421Signer(URL, "desk-1")
    shown = repr(Rfc9421Signer(URL, "desk-1", secret=SECRET))
    assert shown == f"Rfc9421Signer(target_uri={URL!r}, alg='hmac-sha256')"


@settings(max_examples=300, deadline=None)
@given(
    signature_input=st.text(
        alphabet=st.sampled_from('sig1=()";, :*-abcdkeyltg0123456789\\@'), max_size=200
    ),
    signature=st.text(alphabet=st.sampled_from("sig1=:, AB+/=x"), max_size=120),
    webhook=st.text(max_size=80),
)
def test_hostile_signature_headers_never_raise(
    signature_input: str, signature: str, webhook: str
) -> None:
    """Any text in the signature headers of either profile is a refusal, never an exception."""
    rfc = {"signature-input": signature_input, "signature": signature, "content-digest": "x"}
    assert not verify_request(rfc, BODY, {"k1": SECRET}, now=NOW).ok
    hooks = {"webhook-id": "a", "webhook-timestamp": str(int(AT)), "webhook-signature": webhook}
    assert not verify_request(hooks, BODY, {"k1": SECRET}, now=NOW).ok


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_a_valid_request_with_any_splice_never_raises(data: st.DataObject) -> None:
    """Any run of characters spliced into a valid header is verified or refused, never raised."""
    headers = _request(Rfc9421Signer(URL, "desk-1", secret=SECRET, hmac_key_id="k1"))
    name = data.draw(st.sampled_from(["signature-input", "signature", "content-digest"]))
    value = headers[name]
    start = data.draw(st.integers(0, len(value)))
    end = data.draw(st.integers(start, len(value)))
    junk = data.draw(st.text(max_size=12))
    headers[name] = value[:start] + junk + value[end:]
    verdict = verify_rfc9421(headers, BODY, {"k1": SECRET}, target_uri=URL, now=NOW)
    assert verdict.ok is (headers[name].strip() == value)  # edge whitespace is no change
