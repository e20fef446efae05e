import base64
import uuid
from datetime import UTC, datetime, timedelta
from typing import Final

import pytest
import standardwebhooks

from bridge.core.ed25519 import generate_private_key, public_key_fingerprint
from bridge.core.fencing import LeaseStamp
from bridge.core.verification import verify_request
from bridge.core.webhooks import StandardWebhooksSigner, signed_content, verify_webhook, whsec
from bridge.errors import SigningError

SECRET: Final = b"webhooks-secret-0123456789"
BODY: Final = b'{"instrument":"XAUUSD","side":"buy"}'
AT: Final = 1_761_402_645.25
NOW: Final = datetime.fromtimestamp(AT, UTC)


def _signed(signer: StandardWebhooksSigner, key: str | None = None) -> dict[str, str]:
    key = key or str(uuid.uuid4())
    headers = signer.signature_headers(BODY, "", AT, key, LeaseStamp("signals:{0}", 3))
    return {**headers, "x-idempotency-key": key, "x-producer-id": "desk-1"}


def test_the_v1_entry_is_what_the_stock_library_computes() -> None:
    """The v1 entry equals standardwebhooks' own sign() for the same id, second and body."""
    headers = _signed(StandardWebhooksSigner(SECRET), "msg-1")
    stock = standardwebhooks.Webhook(whsec(SECRET)).sign(
        "msg-1", datetime.fromtimestamp(int(AT), UTC), BODY
    )
    assert headers["webhook-signature"] == stock
    assert headers["webhook-id"] == "msg-1"
    assert headers["webhook-timestamp"] == "1761402645"


def test_whsec_is_the_prefix_and_base64_of_the_secret() -> None:
    """whsec() is what a Standard Webhooks verifier is configured with."""
    assert whsec(b"\x00\xff") == "whsec_AP8="


def test_each_ed25519_key_adds_a_v1a_entry_that_verifies() -> None:
    """With two keys (a rotation) the header holds v1 and two v1a entries, each key's own."""
    keys = [generate_private_key(), generate_private_key()]
    headers = _signed(StandardWebhooksSigner(SECRET, keys))
    entries = headers["webhook-signature"].split(" ")
    assert [e.split(",")[0] for e in entries] == ["v1", "v1a", "v1a"]
    content = signed_content(headers["webhook-id"], int(AT), BODY)
    for key, entry in zip(keys, entries[1:], strict=True):
        key.public_key().verify(base64.b64decode(entry[4:]), content)


def test_the_reference_verifier_accepts_either_key_kind() -> None:
    """verify_request accepts the v1 entry by secret and the v1a entry by public key alone."""
    key = generate_private_key()
    headers = _signed(StandardWebhooksSigner(SECRET, [key]))
    by_secret = verify_request(headers, BODY, {"k1": SECRET}, now=NOW)
    assert (by_secret.ok, by_secret.key_id, by_secret.producer_id) == (True, "k1", "desk-1")
    fingerprint = public_key_fingerprint(key)
    by_key = verify_request(
        headers,
        BODY,
        {"k1": b"another-secret-0123456"},
        now=NOW,
        public_keys={fingerprint: key.public_key()},
    )
    assert (by_key.ok, by_key.key_id) == (True, fingerprint)


def test_a_rewritten_idempotency_key_is_refused() -> None:
    """X-Idempotency-Key must equal the signed webhook-id: a relay cannot swap it."""
    headers = _signed(StandardWebhooksSigner(SECRET))
    headers["x-idempotency-key"] = str(uuid.uuid4())
    verdict = verify_webhook(headers, BODY, {"k1": SECRET}, now=NOW)
    assert (verdict.ok, verdict.check) == (False, "headers")


@pytest.mark.parametrize(
    ("shift_s", "ok"), [(-300, True), (300, True), (-301, False), (301, False)]
)
def test_the_window_is_applied_to_webhook_timestamp(shift_s: int, ok: bool) -> None:
    """A timestamp more than the tolerance from now (either way) is refused as 'window'."""
    headers = _signed(StandardWebhooksSigner(SECRET))
    verdict = verify_webhook(
        headers, BODY, {"k1": SECRET}, now=NOW.replace(microsecond=0) + timedelta(seconds=shift_s)
    )
    assert verdict.ok is ok
    assert verdict.check == ("" if ok else "window")


def test_other_base64_spellings_of_the_same_signature_are_refused() -> None:
    """Only the canonical base64 spelling counts, so a capture has one valid form."""
    headers = _signed(StandardWebhooksSigner(SECRET))
    encoded = headers["webhook-signature"][3:]
    last = encoded[-2]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    sibling = alphabet[alphabet.index(last) ^ 1]  # the same 6 bits but the unused low ones
    headers["webhook-signature"] = f"v1,{encoded[:-2]}{sibling}="
    assert base64.b64decode(encoded) == base64.b64decode(headers["webhook-signature"][3:])
    assert not verify_webhook(headers, BODY, {"k1": SECRET}, now=NOW).ok


@pytest.mark.parametrize(
    "change",
    [
        {"webhook-timestamp": "not-a-number"},
        {"webhook-timestamp": "9" * 40},
        {"webhook-signature": "v1,%%%"},
        {"webhook-signature": "v2,AAAA " * 100},
        {"webhook-id": ""},
    ],
)
def test_hostile_headers_are_refused_without_raising(change: dict[str, str]) -> None:
    """Garbage in any webhook-* header is a refusal, never an exception."""
    headers = {**_signed(StandardWebhooksSigner(SECRET)), **change}
    assert not verify_webhook(headers, BODY, {"k1": SECRET}, now=NOW).ok


def test_the_signer_needs_a_secret_and_shows_no_key() -> None:
    """An empty secret is refused; repr names only the number of Ed25519 keys."""
    with pytest.raises(SigningError):
        StandardWebhooksSigner(b"")
    assert repr(StandardWebhooksSigner(SECRET, [generate_private_key()])) == (
        "StandardWebhooksSigner(ed25519_keys=1)"
    )
