"""Which signature scheme the client signs with, chosen once from the outbound settings.

``OUTBOUND_SIGNATURE_SCHEME=hmac`` (the default) is the canonical request of
:mod:`bridge.core.signing`: ``OUTBOUND_SIGNATURE_VERSION`` 1 is the seed's, 2 also signs the
idempotency key and the shard lease. ``standard-webhooks`` (:mod:`bridge.core.webhooks`) and
``rfc9421`` (:mod:`bridge.core.rfc9421`) are the profiles stock libraries verify, with Ed25519
keys when ``OUTBOUND_ED25519_KEY_FILE`` is set. The client builds one signer at start and asks
it per attempt.
"""

from __future__ import annotations

from bridge.core.rfc9421 import DEFAULT_HMAC_KEY_ID, Rfc9421Signer
from bridge.core.signing import RequestSigner, Signer, SignerV2
from bridge.core.webhooks import StandardWebhooksSigner
from bridge.edge.settings import OutboundConfig

__all__ = ["signer_for"]


def signer_for(config: OutboundConfig) -> RequestSigner:
    """Build the signer the settings choose; the key files are read here, once."""
    secret = config.secret_bytes()
    if config.signature_scheme == "standard-webhooks":
        return StandardWebhooksSigner(secret, config.ed25519_keys())
    if config.signature_scheme == "rfc9421":
        return Rfc9421Signer(
            config.ingest_url,
            config.producer_id,
            secret=secret,
            hmac_key_id=config.key_id or DEFAULT_HMAC_KEY_ID,
            ed25519_keys=config.ed25519_keys(),
        )
    if config.signature_version == 2:
        return SignerV2(secret, config.producer_id, path=config.ingest_path)
    return Signer(secret, config.producer_id, path=config.ingest_path)
