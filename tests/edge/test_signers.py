"""OUTBOUND_SIGNATURE_SCHEME, _VERSION and the Ed25519 key files: what loads, is refused, lands."""

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import httpx
import pytest

from bridge.config.loader import effective_settings, load_config
from bridge.core.ed25519 import (
    generate_private_key,
    private_key_pem,
    public_key_fingerprint,
)
from bridge.core.fencing import LeaseStamp
from bridge.core.rfc9421 import Rfc9421Signer
from bridge.core.signal import encode_canonical
from bridge.core.signing import Signer
from bridge.core.timestamps import format_timestamp
from bridge.core.verification import verify_request
from bridge.core.webhooks import StandardWebhooksSigner
from bridge.devkit.ingest import IngestApp, serve_in_thread
from bridge.edge.client import HmacClient
from bridge.edge.results import Delivered, Failed
from bridge.edge.signers import signer_for
from bridge.errors import ConfigError
from tests.fixtures_ingest import (
    KEY_ID,
    TEST_SECRET,
    make_outbound_config,
    make_signal,
    outbound_env,
)

URL: Final = "http://127.0.0.1:9"


def _key_file(tmp_path: Path, name: str = "ed25519.pem", *, raw: bool = False) -> Path:
    key = generate_private_key()
    path = tmp_path / name
    if raw:
        from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - one use

        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )
    else:
        path.write_bytes(private_key_pem(key))
    return path


@pytest.mark.parametrize(
    ("scheme", "kind"),
    [
        (None, Signer),
        ("hmac", Signer),
        ("standard-webhooks", StandardWebhooksSigner),
        ("rfc9421", Rfc9421Signer),
    ],
)
def test_the_scheme_picks_the_signer(scheme: str | None, kind: type) -> None:
    """The default and `hmac`, `standard-webhooks` and `rfc9421` each give their signer."""
    extra = {} if scheme is None else {"OUTBOUND_SIGNATURE_SCHEME": scheme}
    config = load_config(env=outbound_env(URL, extra)).outbound
    assert isinstance(signer_for(config), kind)


def test_an_unknown_scheme_is_refused_naming_the_variable() -> None:
    """A misspelt scheme stops the start naming OUTBOUND_SIGNATURE_SCHEME."""
    with pytest.raises(ConfigError) as info:
        load_config(env=outbound_env(URL, {"OUTBOUND_SIGNATURE_SCHEME": "svix"}))
    assert info.value.variable == "OUTBOUND_SIGNATURE_SCHEME"
    assert "hmac, standard-webhooks, rfc9421" in str(info.value)


def test_an_ed25519_key_with_the_hmac_scheme_is_refused_in_one_line(tmp_path: Path) -> None:
    """The hmac scheme cannot carry an Ed25519 signature: the key is refused, not unused."""
    with pytest.raises(ConfigError) as info:
        load_config(env=outbound_env(URL, {"OUTBOUND_ED25519_KEY_FILE": str(_key_file(tmp_path))}))
    assert info.value.variable == "OUTBOUND_ED25519_KEY_FILE"
    assert "OUTBOUND_SIGNATURE_SCHEME=hmac" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_next_key_without_a_current_one_is_refused(tmp_path: Path) -> None:
    """OUTBOUND_ED25519_NEXT_KEY_FILE alone is refused."""
    env = {
        "OUTBOUND_SIGNATURE_SCHEME": "rfc9421",
        "OUTBOUND_ED25519_NEXT_KEY_FILE": str(_key_file(tmp_path)),
    }
    with pytest.raises(ConfigError, match="needs OUTBOUND_ED25519_KEY_FILE"):
        load_config(env=outbound_env(URL, env))


@pytest.mark.parametrize(
    "content", [b"", b"not a key\n", b"x" * 31, b"-----BEGIN PRIVATE KEY-----\n"]
)
def test_a_file_that_is_no_ed25519_key_is_refused_without_showing_it(
    tmp_path: Path, content: bytes
) -> None:
    """A file that is no key stops the start naming the variable and the path, not the bytes."""
    path = tmp_path / "bad.pem"
    path.write_bytes(content)
    env = {"OUTBOUND_SIGNATURE_SCHEME": "rfc9421", "OUTBOUND_ED25519_KEY_FILE": str(path)}
    with pytest.raises(ConfigError) as info:
        load_config(env=outbound_env(URL, env))
    assert info.value.variable == "OUTBOUND_ED25519_KEY_FILE"
    assert str(path) in str(info.value)
    if content:
        assert content.decode().strip() not in str(info.value)


@pytest.mark.parametrize("raw", [False, True])
def test_pem_and_raw_key_files_load_and_stay_hidden(tmp_path: Path, raw: bool) -> None:
    """A PEM or raw 32-byte key loads; repr and check show the path, never the key."""
    path = _key_file(tmp_path, raw=raw)
    env = {"OUTBOUND_SIGNATURE_SCHEME": "standard-webhooks", "OUTBOUND_ED25519_KEY_FILE": str(path)}
    config = load_config(env=outbound_env(URL, env))
    keys = config.outbound.ed25519_keys()
    assert len(keys) == 1
    shown = repr(config) + repr(signer_for(config.outbound)) + repr(effective_settings(config))
    secret_text = path.read_bytes().decode("latin-1")
    assert secret_text not in shown
    assert str(path) in shown


def _post(app: IngestApp, env: dict[str, str]) -> tuple[Delivered | Failed, IngestApp]:
    import asyncio  # noqa: PLC0415 - one use

    async def go(url: str) -> Delivered | Failed:
        config = load_config(env=outbound_env(url, env)).outbound
        async with HmacClient(config) as client:
            outcome = await client.attempt(
                encode_canonical(make_signal()), idempotency_key=str(uuid.uuid4())
            )
        assert isinstance(outcome, Delivered | Failed)
        return outcome

    with serve_in_thread(app) as url:
        return asyncio.run(go(url)), app


@pytest.mark.parametrize("scheme", ["standard-webhooks", "rfc9421"])
def test_the_reference_server_stores_each_scheme(scheme: str) -> None:
    """The reference ingest server verifies and stores a POST signed in each scheme."""
    outcome, app = _post(
        IngestApp(secrets={KEY_ID: TEST_SECRET}), {"OUTBOUND_SIGNATURE_SCHEME": scheme}
    )
    assert isinstance(outcome, Delivered)
    assert outcome.http_code == 201
    assert [r.producer_id for r in app.received] == ["mt5-trader-1"]


@pytest.mark.parametrize("scheme", ["standard-webhooks", "rfc9421"])
def test_a_server_holding_only_the_public_key_stores_an_ed25519_post(
    tmp_path: Path, scheme: str
) -> None:
    """With an unrelated HMAC secret the server still stores the POST by the Ed25519 key."""
    path = _key_file(tmp_path)
    env = {"OUTBOUND_SIGNATURE_SCHEME": scheme, "OUTBOUND_ED25519_KEY_FILE": str(path)}
    key = load_config(env=outbound_env(URL, env)).outbound.ed25519_keys()[0]
    app = IngestApp(
        secrets={"other": b"an-unrelated-secret-0123"},
        public_keys={public_key_fingerprint(key): key.public_key()},
    )
    outcome, app = _post(app, env)
    assert isinstance(outcome, Delivered)
    assert [r.key_id for r in app.received] == [public_key_fingerprint(key)]


@pytest.mark.parametrize("scheme", ["standard-webhooks", "rfc9421"])
def test_a_relay_that_rewrites_the_idempotency_key_is_refused(scheme: str) -> None:
    """The signed POST is stored; the same POST under another X-Idempotency-Key is 401."""
    import asyncio  # noqa: PLC0415 - one use

    captured: list[httpx.Request] = []

    async def record(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(201, json={"signal_id": "x", "status": "received"})

    async def sign_one(url: str) -> None:
        config = load_config(env=outbound_env(url, {"OUTBOUND_SIGNATURE_SCHEME": scheme})).outbound
        async with HmacClient(config, transport=httpx.MockTransport(record)) as client:
            await client.attempt(encode_canonical(make_signal()), idempotency_key=str(uuid.uuid4()))

    app = IngestApp(secrets={KEY_ID: TEST_SECRET})
    with serve_in_thread(app) as url:
        asyncio.run(sign_one(url))
        sent = captured[0]
        headers = {k: v for k, v in sent.headers.items() if k.lower() != "host"}
        first = httpx.post(str(sent.url), content=sent.content, headers=headers)
        headers["x-idempotency-key"] = str(uuid.uuid4())
        rewritten = httpx.post(str(sent.url), content=sent.content, headers=headers)
    assert (first.status_code, rewritten.status_code) == (201, 401)
    assert len(app.received) == 1


@pytest.mark.parametrize(("version", "header"), [("1", None), ("2", "2"), (None, None)])
def test_the_setting_picks_the_signer_and_the_server_verifies_it(
    version: str | None, header: str | None
) -> None:
    """v1 (the default) sends no version header; v2 sends '2'; both verify at the server."""
    extra = {"OUTBOUND_SIGNATURE_VERSION": version} if version else {}
    config = make_outbound_config("http://127.0.0.1:9", extra)
    timestamp = format_timestamp(datetime.now(UTC))
    lease = LeaseStamp("signals:{0}", 17)
    signed = signer_for(config).signature_headers(b"{}", timestamp, 0.0, "key-1", lease)
    assert signed.get("X-Signature-Version") == header
    headers = {
        **signed,
        "X-Producer-Id": config.producer_id,
        "X-Timestamp": timestamp,
        "X-Idempotency-Key": "key-1",
        "X-Signal-Lease": lease.header_value(),
    }
    verdict = verify_request(headers, b"{}", {KEY_ID: TEST_SECRET})
    assert (verdict.ok, verdict.version) == (True, 2 if header else 1)


@pytest.mark.parametrize("value", ["0", "3", "two"])
def test_an_unknown_signature_version_stops_the_start(value: str) -> None:
    """OUTBOUND_SIGNATURE_VERSION other than 1 or 2 is refused, naming the variable."""
    with pytest.raises(ConfigError) as refused:
        make_outbound_config("http://127.0.0.1:9", {"OUTBOUND_SIGNATURE_VERSION": value})
    assert refused.value.variable == "OUTBOUND_SIGNATURE_VERSION"
