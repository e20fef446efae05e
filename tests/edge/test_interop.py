"""Stock verifiers (PyPI and npm) against requests the bridge's HmacClient really sent.

Each scheme's requests are captured by a raw HTTP server on loopback, then handed to verifiers
nobody here wrote: ``standardwebhooks`` and ``http-message-signatures`` from PyPI in process,
the npm packages of the same names through ``tests/interop/verify.js``. Every request verifies;
a one-byte change in anything the scheme covers fails every verifier.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Final

import pytest
import standardwebhooks
from cryptography.exceptions import InvalidSignature
from http_message_signatures import (
    HTTPMessageVerifier,
    MappingKeyResolver,
    algorithms,
)
from http_message_signatures.exceptions import HTTPMessageSignaturesException

from bridge.core.ed25519 import (
    Ed25519PrivateKey,
    generate_private_key,
    private_key_pem,
    public_key_b64,
    public_key_fingerprint,
)
from bridge.core.fencing import LEASE_HEADER, LeaseStamp
from bridge.core.signal import encode_canonical
from bridge.core.webhooks import whsec
from bridge.edge.client import HmacClient
from bridge.edge.results import Delivered
from tests.fixtures_ingest import (
    KEY_ID,
    TEST_SECRET,
    RawRequest,
    RawResponse,
    StartScripted,
    make_outbound_config,
    make_signal,
)

INTEROP: Final = Path(__file__).resolve().parent.parent / "interop"
LEASE: Final = LeaseStamp("signals:{0}", 17)
_ANSWER: Final = (
    b'{"signal_id":"srv_1","status":"received","server_timestamp":"2025-10-25T14:30:45Z"}'
)


@dataclass(frozen=True)
class Captured:
    """One request as the server saw it, and the key a verifier needs for it."""

    scheme: str
    method: str
    url: str
    headers: dict[str, str]
    body: bytes
    secret: bytes
    keyid: str
    public_key: str | None


async def _capture(
    scripted_server: StartScripted, tmp_path: Path, scheme: str, key: Ed25519PrivateKey | None
) -> list[Captured]:
    """Send one signal with a lease and one without; return both as the server received them."""
    server = await scripted_server(lambda _: RawResponse(201, _ANSWER))
    extra = {"OUTBOUND_SIGNATURE_SCHEME": scheme}
    if key is not None:
        key_file = tmp_path / f"{scheme}.pem"
        key_file.write_bytes(private_key_pem(key))
        extra["OUTBOUND_ED25519_KEY_FILE"] = str(key_file)
    config = make_outbound_config(server.base_url, extra)
    body = encode_canonical(make_signal())
    async with HmacClient(config) as client:
        for lease in (LEASE, None):
            outcome = await client.attempt(body, idempotency_key=str(uuid.uuid4()), lease=lease)
            assert isinstance(outcome, Delivered), outcome
    return [_captured(scheme, request, key) for request in server.requests]


def _captured(scheme: str, request: RawRequest, key: Ed25519PrivateKey | None) -> Captured:
    url = f"http://{request.headers['host']}{request.path}"
    keyid = KEY_ID if key is None else public_key_fingerprint(key)
    public = None if key is None else public_key_b64(key)
    return Captured(
        scheme, request.method, url, request.headers, request.body, TEST_SECRET, keyid, public
    )


# --- the Python verifiers --------------------------------------------------------------------


@dataclass
class _Message:
    """A request as http-message-signatures reads it."""

    method: str
    url: str
    headers: dict[str, str]


def _python_verifies(c: Captured) -> bool:
    """Run the PyPI verifier of ``c``'s scheme; False on any refusal."""
    if c.scheme == "standard-webhooks":
        if c.public_key is not None:
            return _v1a_verifies(c)
        try:
            standardwebhooks.Webhook(whsec(c.secret)).verify(c.body, c.headers)
        except standardwebhooks.WebhookVerificationError:
            return False
        return True
    if c.public_key is None:
        algorithm: Any = algorithms.HMAC_SHA256
        verify_key: Any = c.secret
    else:
        algorithm = algorithms.ED25519
        verify_key = _public(c.public_key)
    verifier = HTTPMessageVerifier(
        signature_algorithm=algorithm,
        key_resolver=MappingKeyResolver(public_keys={c.keyid: verify_key}, private_keys={}),
    )
    required = ["@method", "@target-uri", "content-type", "content-digest", "x-idempotency-key"]
    if LEASE_HEADER.lower() in c.headers:
        required.append(LEASE_HEADER.lower())
    try:
        verifier.verify(
            _Message(c.method, c.url, c.headers),
            expect_tag="signal-bridge",
            body=c.body,
            require_components=required,
        )
    except HTTPMessageSignaturesException:
        return False
    return True


def _public(b64: str) -> Any:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (  # noqa: PLC0415 - one use
        Ed25519PublicKey,
    )

    return Ed25519PublicKey.from_public_bytes(base64.b64decode(b64))


def _v1a_verifies(c: Captured) -> bool:
    """Check a v1a entry with cryptography's Ed25519 (the PyPI package verifies v1 only)."""
    if not standardwebhooks_window_ok(c.headers["webhook-timestamp"]):
        return False
    content = f"{c.headers['webhook-id']}.{c.headers['webhook-timestamp']}.".encode() + c.body
    key = _public(c.public_key or "")
    for entry in c.headers["webhook-signature"].split(" "):
        version, _, encoded = entry.partition(",")
        if version != "v1a":
            continue
        try:
            key.verify(base64.b64decode(encoded), content)
        except (InvalidSignature, ValueError):
            continue
        return True
    return False


def standardwebhooks_window_ok(timestamp: str) -> bool:
    """The 5-minute window every Standard Webhooks verifier applies."""
    import time  # noqa: PLC0415 - one use

    return abs(time.time() - int(timestamp)) <= 300


# --- the npm verifiers -----------------------------------------------------------------------


def _node() -> str:
    """Return the node binary with the interop packages installed, or skip (fail under CI)."""
    binary = shutil.which("node")
    message = ""
    if binary is None:
        message = "node is not installed (scripts/test.sh installs nodejs and npm under CI)"
    elif not (INTEROP / "node_modules" / "standardwebhooks").is_dir():
        message = "tests/interop has no node_modules: run `npm ci --prefix tests/interop`"
    if message:
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    assert binary is not None
    return binary


def _node_verifies(cases: list[Captured]) -> list[bool]:
    """Run the npm verifiers over every case in one node process."""
    payload = [
        {
            "scheme": c.scheme,
            "method": c.method,
            "url": c.url,
            "headers": c.headers,
            "body": base64.b64encode(c.body).decode(),
            "secret": base64.b64encode(c.secret).decode(),
            "keyid": c.keyid,
            "publicKey": c.public_key,
        }
        for c in cases
    ]
    done = subprocess.run(  # noqa: S603 - our script, our input
        [_node(), str(INTEROP / "verify.js")],
        input=json.dumps(payload).encode(),
        capture_output=True,
        timeout=60,
        check=True,
    )
    return [bool(result["ok"]) for result in json.loads(done.stdout)]


# --- one-byte changes ------------------------------------------------------------------------


def _flip(text: str, index: int = -2) -> str:
    """Change one character of ``text`` (a digit to the next digit, anything else to 'A'/'B')."""
    at = index % len(text)
    char = text[at]
    new = str((int(char) + 1) % 10) if char.isdigit() else ("B" if char == "A" else "A")
    return text[:at] + new + text[at + 1 :]


def _header(name: str, change: Callable[[str], str]) -> Callable[[Captured], Captured]:
    def mutate(c: Captured) -> Captured:
        return replace(c, headers={**c.headers, name: change(c.headers[name])})

    return mutate


def _body(c: Captured) -> Captured:
    index = c.body.index(b"2000.5")
    return replace(c, body=c.body[:index] + b"3" + c.body[index + 1 :])


def _key(c: Captured) -> Captured:
    if c.public_key is None:
        return replace(c, secret=c.secret[:-1] + b"!")
    return replace(c, public_key=public_key_b64(generate_private_key()))


def _method(c: Captured) -> Captured:
    return replace(c, method="PUT")


def _path(c: Captured) -> Captured:
    return replace(c, url=c.url.replace("/ingest", "/ingesT"))


def _created(c: Captured) -> Captured:
    value = c.headers["signature-input"]
    start = value.index("created=") + len("created=")
    return replace(c, headers={**c.headers, "signature-input": _flip(value, start + 9)})


def _lease_token(value: str) -> str:
    return value.replace("token=17", "token=18")


# Per scheme, what a one-byte change may touch: the scheme covers exactly these.
MUTATIONS: Final[dict[str, dict[str, Callable[[Captured], Captured]]]] = {
    "standard-webhooks": {
        "body": _body,
        "key": _key,
        "timestamp": _header("webhook-timestamp", _flip),
        "idempotency key": _header("webhook-id", _flip),
    },
    "rfc9421": {
        "body": _body,
        "key": _key,
        "timestamp": _created,
        "method": _method,
        "path": _path,
        "idempotency key": _header("x-idempotency-key", _flip),
        "producer id": _header("x-producer-id", lambda v: v + "x"),
        "lease field": _header("x-signal-lease", _lease_token),
    },
}

SCHEMES: Final = [
    ("standard-webhooks", False),
    ("standard-webhooks", True),
    ("rfc9421", False),
    ("rfc9421", True),
]


@pytest.fixture(params=SCHEMES, ids=lambda p: f"{p[0]}-{'ed25519' if p[1] else 'hmac'}")
async def captured(
    request: pytest.FixtureRequest, scripted_server: StartScripted, tmp_path: Path
) -> list[Captured]:
    """The requests the bridge sent in one scheme (with an Ed25519 key or the HMAC secret)."""
    scheme, ed25519 = request.param
    key = generate_private_key() if ed25519 else None
    return await _capture(scripted_server, tmp_path, scheme, key)


def _variants(requests: list[Captured]) -> Iterator[tuple[str, Captured, bool]]:
    """Each captured request as sent (must verify), then each one-byte change (must not)."""
    for c in requests:
        leased = "x-signal-lease" in c.headers
        label = "with lease" if leased else "without lease"
        yield f"{label}: as sent", c, True
        for name, mutate in MUTATIONS[c.scheme].items():
            if name == "lease field" and not leased:
                continue
            yield f"{label}: {name}", mutate(c), False


async def test_the_pypi_verifiers_accept_each_request_and_refuse_each_change(
    captured: list[Captured],
) -> None:
    """The PyPI verifier accepts every request the bridge sent and refuses each one-byte change."""
    verdicts = {name: _python_verifies(c) for name, c, _ in _variants(captured)}
    expected = {name: ok for name, _, ok in _variants(captured)}
    assert verdicts == expected


async def test_the_npm_verifiers_accept_each_request_and_refuse_each_change(
    captured: list[Captured],
) -> None:
    """The npm verifier accepts every request the bridge sent and refuses each one-byte change."""
    variants = list(_variants(captured))
    verdicts = _node_verifies([c for _, c, _ in variants])
    assert dict(zip([n for n, _, _ in variants], verdicts, strict=True)) == {
        name: ok for name, _, ok in variants
    }


async def test_standard_webhooks_leaves_the_lease_unsigned(
    scripted_server: StartScripted, tmp_path: Path
) -> None:
    """A changed lease still verifies under Standard Webhooks: the format cannot cover it."""
    sent = await _capture(scripted_server, tmp_path, "standard-webhooks", None)
    leased = next(c for c in sent if "x-signal-lease" in c.headers)
    assert _python_verifies(_header("x-signal-lease", _lease_token)(leased))
