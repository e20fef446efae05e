import base64
import hashlib
import hmac
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Final

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bridge.core.signing import (
    DEFAULT_TOLERANCE_S,
    INGEST_PATH,
    Signer,
    body_sha256,
    build_signature,
    canonical_request,
)
from bridge.core.timestamps import parse_timestamp
from bridge.core.verification import verify_request, verify_signature
from bridge.errors import SigningError

SECRET: Final = b"my-secret-key-0123456789"
BODY: Final = b'{"instrument":"GOLD","side":"buy"}'
TIMESTAMP: Final = "2025-10-25T14:30:45.123456Z"
PRODUCER: Final = "mt5-trader-1"
SENT_AT: Final = datetime(2025, 10, 25, 14, 30, 45, 123456, tzinfo=UTC)


def _independent_signature(
    secret: bytes, body: bytes, timestamp: str, producer: str, path: str = INGEST_PATH
) -> str:
    """Compute the documented algorithm with the stdlib only, as a server team would."""
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    message = (
        f"METHOD:POST\nENDPOINT:{path}\nTIMESTAMP:{timestamp}\n"
        f"PRODUCER_ID:{producer}\nBODY_SHA256:{digest}"
    )
    return base64.b64encode(hmac.new(secret, message.encode(), hashlib.sha256).digest()).decode()


def _headers(
    signature: str | None = None,
    timestamp: str = TIMESTAMP,
    producer: str = PRODUCER,
    key_id: str | None = None,
) -> dict[str, str]:
    """Build the signature headers of a request signed with SECRET over BODY."""
    headers = {
        "X-Producer-Id": producer,
        "X-Timestamp": timestamp,
        "X-Signature": signature or build_signature(SECRET, BODY, timestamp, producer),
    }
    if key_id is not None:
        headers["X-Key-Id"] = key_id
    return headers


# --- the plan's 13 signing tests --------------------------------------------------------------


def test_build_signature_happy_path() -> None:
    """build_signature returns base64(HMAC-SHA256) of the five-line canonical request."""
    signature = build_signature(SECRET, BODY, TIMESTAMP, PRODUCER)
    assert len(base64.b64decode(signature, validate=True)) == 32
    assert signature == _independent_signature(SECRET, BODY, TIMESTAMP, PRODUCER)


def test_build_signature_deterministic() -> None:
    """The same inputs always give the same signature."""
    first = build_signature(SECRET, BODY, TIMESTAMP, PRODUCER)
    assert all(build_signature(SECRET, BODY, TIMESTAMP, PRODUCER) == first for _ in range(5))


def test_build_signature_sensitive_to_body() -> None:
    """Changing one byte of the body changes the signature."""
    other = BODY.replace(b"buy", b"buY")
    assert build_signature(SECRET, BODY, TIMESTAMP, PRODUCER) != build_signature(
        SECRET, other, TIMESTAMP, PRODUCER
    )


def test_build_signature_sensitive_to_timestamp() -> None:
    """Changing the timestamp by one microsecond changes the signature."""
    later = "2025-10-25T14:30:45.123457Z"
    assert build_signature(SECRET, BODY, TIMESTAMP, PRODUCER) != build_signature(
        SECRET, BODY, later, PRODUCER
    )


def test_build_signature_sensitive_to_producer_id() -> None:
    """Changing the producer id changes the signature."""
    assert build_signature(SECRET, BODY, TIMESTAMP, PRODUCER) != build_signature(
        SECRET, BODY, TIMESTAMP, "mt5-trader-2"
    )


def test_verify_signature_valid() -> None:
    """A signature made by build_signature verifies with the same inputs."""
    signature = build_signature(SECRET, BODY, TIMESTAMP, PRODUCER)
    assert verify_signature(SECRET, BODY, TIMESTAMP, PRODUCER, signature) is True


@pytest.mark.parametrize(
    "provided",
    [
        build_signature(b"another-secret-0123456789", BODY, TIMESTAMP, PRODUCER),
        build_signature(SECRET, BODY, TIMESTAMP, PRODUCER)[:-4] + "AAA=",
        "not base64 at all!",
        base64.b64encode(b"short").decode(),
        base64.b64encode(b"\x00" * 33).decode(),
        "",
        "\u00e9" * 44,
    ],
    ids=[
        "wrong-secret",
        "flipped-bits",
        "not-base64",
        "too-short",
        "too-long",
        "empty",
        "non-ascii",
    ],
)
def test_verify_signature_invalid_signature(provided: str) -> None:
    """A wrong or malformed signature gives False, never an exception."""
    assert verify_signature(SECRET, BODY, TIMESTAMP, PRODUCER, provided) is False


@pytest.mark.parametrize(
    "timestamp",
    ["2025-10-25 14:30:45Z", "2025-10-25T14:30:45", "1761402645", "", "2025-02-30T00:00:00Z"],
)
def test_verify_signature_invalid_timestamp_format(timestamp: str) -> None:
    """A non-RFC 3339 timestamp makes verification fail (False), even with a matching MAC."""
    message = canonical_request(BODY, timestamp, PRODUCER)
    mac = base64.b64encode(hmac.new(SECRET, message, hashlib.sha256).digest()).decode()
    assert verify_signature(SECRET, BODY, timestamp, PRODUCER, mac) is False


def test_verify_signature_timing_safe_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    """The MAC comparison goes through hmac.compare_digest (constant time), for good and bad."""
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    good = build_signature(SECRET, BODY, TIMESTAMP, PRODUCER)
    bad = build_signature(SECRET, BODY, TIMESTAMP, "someone-else")
    assert verify_signature(SECRET, BODY, TIMESTAMP, PRODUCER, good) is True
    assert verify_signature(SECRET, BODY, TIMESTAMP, PRODUCER, bad) is False
    assert [pair[1] for pair in calls] == [base64.b64decode(good), base64.b64decode(bad)]
    assert verify_request(_headers(), BODY, {"k": SECRET}, now=SENT_AT).ok
    assert len(calls) == 3


def test_build_signature_empty_secret_raises() -> None:
    """An empty secret is a SigningError, which is a ValueError."""
    with pytest.raises(ValueError, match="secret must not be empty") as info:
        build_signature(b"", BODY, TIMESTAMP, PRODUCER)
    assert isinstance(info.value, SigningError)


def test_build_signature_empty_body_raises() -> None:
    """An empty body is a SigningError, which is a ValueError."""
    with pytest.raises(ValueError, match="body must not be empty") as info:
        build_signature(SECRET, b"", TIMESTAMP, PRODUCER)
    assert isinstance(info.value, SigningError)


@pytest.mark.parametrize(
    "timestamp",
    [
        "2025-10-25 14:30:45.123456Z",
        "2025-10-25T14:30:45.123456",
        "25-10-25T14:30:45Z",
        "2025-10-25T14:30:45.1234567890Z",
        "2025-13-01T00:00:00Z",
        "2025-10-25T25:00:00Z",
        "2025-10-25T14:30:45+2:00",
        "yesterday",
    ],
)
def test_build_signature_invalid_timestamp_format_raises(timestamp: str) -> None:
    """A timestamp that is not an RFC 3339 date-time is a SigningError naming the timestamp."""
    with pytest.raises(SigningError, match="timestamp"):
        build_signature(SECRET, BODY, timestamp, PRODUCER)


def test_build_signature_large_body_handled() -> None:
    """A 1 MiB body is signed, verified, and still sensitive to its last byte."""
    body = b"x" * (1 << 20)
    signature = build_signature(SECRET, body, TIMESTAMP, PRODUCER)
    assert signature == _independent_signature(SECRET, body, TIMESTAMP, PRODUCER)
    assert verify_signature(SECRET, body, TIMESTAMP, PRODUCER, signature)
    assert not verify_signature(SECRET, body[:-1] + b"y", TIMESTAMP, PRODUCER, signature)


# --- canonical request, Signer, timestamps ----------------------------------------------------


def test_canonical_request_is_five_lines_without_trailing_newline() -> None:
    """The canonical request is exactly METHOD, ENDPOINT, TIMESTAMP, PRODUCER_ID, BODY_SHA256."""
    digest = base64.b64encode(hashlib.sha256(BODY).digest()).decode()
    assert body_sha256(BODY) == digest
    assert (
        canonical_request(BODY, TIMESTAMP, PRODUCER)
        == (
            "METHOD:POST\nENDPOINT:/api/v1/signals/ingest\n"
            f"TIMESTAMP:{TIMESTAMP}\nPRODUCER_ID:{PRODUCER}\nBODY_SHA256:{digest}"
        ).encode()
    )


def test_signature_binds_method_and_path() -> None:
    """A signature made for another path or method does not verify for the ingest endpoint."""
    other_path = build_signature(SECRET, BODY, TIMESTAMP, PRODUCER, path="/api/v2/signals/ingest")
    other_method = build_signature(SECRET, BODY, TIMESTAMP, PRODUCER, method="PUT")
    assert other_path == _independent_signature(
        SECRET, BODY, TIMESTAMP, PRODUCER, path="/api/v2/signals/ingest"
    )
    assert not verify_signature(SECRET, BODY, TIMESTAMP, PRODUCER, other_path)
    assert not verify_signature(SECRET, BODY, TIMESTAMP, PRODUCER, other_method)
    assert verify_signature(SECRET, BODY, TIMESTAMP, PRODUCER, other_method, method="PUT")


def test_signer_matches_build_signature_and_hides_the_secret() -> None:
    """Signer.sign equals build_signature for many bodies, and its repr never shows the key."""
    signer = Signer(SECRET, PRODUCER)
    for i in range(3):
        body = BODY + str(i).encode()
        assert signer.sign(body, TIMESTAMP) == build_signature(SECRET, body, TIMESTAMP, PRODUCER)
    assert SECRET.decode() not in repr(signer)
    assert repr(signer) == f"Signer(producer_id={PRODUCER!r}, path={INGEST_PATH!r})"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Signer(b"", PRODUCER), "secret must not be empty"),
        (lambda: Signer(SECRET, ""), "producer_id must not be empty"),
        (lambda: Signer(SECRET, PRODUCER).sign(b"", TIMESTAMP), "body must not be empty"),
    ],
    ids=["empty-secret", "empty-producer", "empty-body"],
)
def test_signer_refuses_unusable_inputs(make: Callable[[], object], message: str) -> None:
    """Signer raises SigningError for an empty secret, producer id or body."""
    with pytest.raises(SigningError, match=message):
        make()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2025-10-25T14:30:45Z", datetime(2025, 10, 25, 14, 30, 45, tzinfo=UTC)),
        ("2025-10-25t14:30:45.5z", datetime(2025, 10, 25, 14, 30, 45, 500000, tzinfo=UTC)),
        ("2025-10-25T16:30:45.123456+02:00", SENT_AT),
        ("2025-10-25T14:30:45.123456789Z", SENT_AT),
        ("2025-10-25T09:30:45.123456-05:00", SENT_AT),
    ],
)
def test_parse_timestamp_accepts_rfc3339(text: str, expected: datetime) -> None:
    """RFC 3339 forms (Z or offset, 0-9 fraction digits, any case) parse to the same instant."""
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() is not None


# --- verify_request ---------------------------------------------------------------------------


def test_verify_request_accepts_a_good_request() -> None:
    """A correctly signed, fresh request verifies and reports producer, key and time."""
    verdict = verify_request(_headers(), BODY, {"k1": SECRET}, now=SENT_AT)
    assert verdict.ok
    assert verdict.reason == "ok"
    assert (verdict.producer_id, verdict.key_id, verdict.timestamp) == (PRODUCER, "k1", SENT_AT)


def test_verify_request_reads_headers_case_insensitively() -> None:
    """Lower-case header names (as ASGI servers deliver them) verify too."""
    lowered = {k.lower(): v for k, v in _headers(key_id="k1").items()}
    assert verify_request(lowered, BODY, {"k1": SECRET}, now=SENT_AT).ok


@pytest.mark.parametrize(
    "offset_s", [-DEFAULT_TOLERANCE_S, -1.0, 0.0, 1.0, DEFAULT_TOLERANCE_S], ids=str
)
def test_verify_request_accepts_timestamps_inside_the_window(offset_s: float) -> None:
    """Timestamps up to 300 s in the past or future (inclusive) are accepted."""
    now = SENT_AT + timedelta(seconds=offset_s)
    assert verify_request(_headers(), BODY, {"k": SECRET}, now=now).ok


@pytest.mark.parametrize(
    ("offset", "word"),
    [
        (timedelta(seconds=DEFAULT_TOLERANCE_S, microseconds=1), "old"),
        (timedelta(hours=1), "old"),
        (-timedelta(seconds=DEFAULT_TOLERANCE_S, microseconds=1), "in the future"),
        (-timedelta(days=1), "in the future"),
    ],
    ids=["just-stale", "hour-stale", "just-future", "day-future"],
)
def test_verify_request_rejects_timestamps_outside_the_window(offset: timedelta, word: str) -> None:
    """A timestamp outside the window, past or future, is refused with a reason saying which."""
    verdict = verify_request(_headers(), BODY, {"k": SECRET}, now=SENT_AT + offset)
    assert not verdict.ok
    assert word in verdict.reason
    assert "window" in verdict.reason
    assert verdict.timestamp == SENT_AT


def test_verify_request_honours_a_custom_tolerance() -> None:
    """tolerance_s narrows the window: 10 s late passes at 30 s and fails at 5 s."""
    now = SENT_AT + timedelta(seconds=10)
    assert verify_request(_headers(), BODY, {"k": SECRET}, now=now, tolerance_s=30).ok
    assert not verify_request(_headers(), BODY, {"k": SECRET}, now=now, tolerance_s=5).ok


def test_verify_request_uses_the_current_time_by_default() -> None:
    """Without ``now`` a request signed just now verifies and one signed an hour ago does not."""
    fresh = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    stale = (datetime.now(UTC) - timedelta(hours=1)).isoformat().replace("+00:00", "Z")
    assert verify_request(_headers(timestamp=fresh), BODY, {"k": SECRET}).ok
    assert not verify_request(_headers(timestamp=stale), BODY, {"k": SECRET}).ok


def test_verify_request_hashes_the_body_before_parsing_json() -> None:
    """A body that is not JSON at all verifies when its signature is right."""
    body = b"\xff\xfenot json {"
    headers = {
        "X-Producer-Id": PRODUCER,
        "X-Timestamp": TIMESTAMP,
        "X-Signature": build_signature(SECRET, body, TIMESTAMP, PRODUCER),
    }
    assert verify_request(headers, body, {"k": SECRET}, now=SENT_AT).ok
    assert not verify_request(headers, body + b" ", {"k": SECRET}, now=SENT_AT).ok


def _drop(name: str) -> dict[str, str]:
    """Return good headers without ``name``."""
    return {k: v for k, v in _headers().items() if k != name}


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        (_drop("X-Producer-Id"), BODY, "missing header X-Producer-Id"),
        (_drop("X-Timestamp"), BODY, "missing header X-Timestamp"),
        (_drop("X-Signature"), BODY, "missing header X-Signature"),
        (_headers(), b"", "empty body"),
        ({**_headers(), "X-Timestamp": "yesterday"}, BODY, "malformed X-Timestamp"),
        ({**_headers(), "X-Signature": "%%%"}, BODY, "malformed X-Signature"),
        ({**_headers(), "X-Signature": "AAAA"}, BODY, "malformed X-Signature"),
        (_headers(key_id="nope"), BODY, "unknown X-Key-Id"),
        ({**_headers(), "X-Producer-Id": "mt5-impostor"}, BODY, "signature mismatch"),
        (_headers(), BODY + b"tampered", "signature mismatch"),
    ],
    ids=[
        "no-producer",
        "no-timestamp",
        "no-signature",
        "empty-body",
        "bad-timestamp",
        "bad-base64",
        "short-mac",
        "unknown-key",
        "wrong-producer",
        "tampered-body",
    ],
)
def test_verify_request_refusals_carry_a_reason(
    headers: dict[str, str], body: bytes, reason: str
) -> None:
    """Every refusal returns ok=False with a specific reason instead of raising."""
    verdict = verify_request(headers, body, {"k1": SECRET}, now=SENT_AT)
    assert not verdict.ok
    assert verdict.reason == reason
    assert verdict.key_id is None


def test_verify_request_key_id_selects_the_key() -> None:
    """With X-Key-Id only that key is tried, even if another configured key would match."""
    secrets = {"old": SECRET, "new": b"the-new-rotated-secret-000"}
    assert verify_request(_headers(key_id="old"), BODY, secrets, now=SENT_AT).key_id == "old"
    verdict = verify_request(_headers(key_id="new"), BODY, secrets, now=SENT_AT)
    assert not verdict.ok
    assert verdict.reason == "signature mismatch"


def test_verify_request_key_rotation_accepts_old_and_new_keys() -> None:
    """Without X-Key-Id every key is tried: requests signed with the old or new key both pass."""
    new_secret = b"the-new-rotated-secret-000"
    secrets = {"2025-old": SECRET, "2026-new": new_secret}
    old_sig = _headers()
    new_sig = _headers(signature=build_signature(new_secret, BODY, TIMESTAMP, PRODUCER))
    assert verify_request(old_sig, BODY, secrets, now=SENT_AT).key_id == "2025-old"
    assert verify_request(new_sig, BODY, secrets, now=SENT_AT).key_id == "2026-new"
    assert not verify_request(new_sig, BODY, {"2025-old": SECRET}, now=SENT_AT).ok


# --- properties -------------------------------------------------------------------------------


@given(
    secret=st.binary(min_size=1, max_size=64),
    body=st.binary(min_size=1, max_size=512),
    producer=st.text(min_size=1, max_size=40).filter(lambda s: "\n" not in s),
    micros=st.integers(min_value=0, max_value=999_999),
)
def test_sign_then_verify_round_trips(
    secret: bytes, body: bytes, producer: str, micros: int
) -> None:
    """For any secret, body and producer, what build_signature makes verify_request accepts."""
    timestamp = f"2025-10-25T14:30:45.{micros:06d}Z"
    signature = build_signature(secret, body, timestamp, producer)
    assert signature == _independent_signature(secret, body, timestamp, producer)
    headers = {"X-Producer-Id": producer, "X-Timestamp": timestamp, "X-Signature": signature}
    verdict = verify_request(headers, body, {"k": secret}, now=parse_timestamp(timestamp))
    assert verdict.ok


_header_values = st.one_of(st.none(), st.text(max_size=60))


@given(
    producer=_header_values,
    timestamp=st.one_of(_header_values, st.just(TIMESTAMP)),
    signature=_header_values,
    key_id=_header_values,
    body=st.binary(max_size=64),
)
def test_verify_request_never_raises_on_hostile_input(
    producer: str | None,
    timestamp: str | None,
    signature: str | None,
    key_id: str | None,
    body: bytes,
) -> None:
    """Arbitrary header values and bodies give a refusal with a reason, never an exception."""
    headers = {
        name: value
        for name, value in (
            ("X-Producer-Id", producer),
            ("X-Timestamp", timestamp),
            ("X-Signature", signature),
            ("X-Key-Id", key_id),
        )
        if value is not None
    }
    verdict = verify_request(headers, body, {"k": SECRET}, now=SENT_AT)
    assert not verdict.ok
    assert verdict.reason
    assert verify_signature(SECRET, body, timestamp or "", producer or "", signature or "") is False
