"""Which signature scheme the client signs with, chosen once from the outbound settings.

``OUTBOUND_SIGNATURE_VERSION`` 1 (the default) is the seed's canonical request; 2 also signs the
idempotency key and the shard lease (see :mod:`bridge.core.signing`).
"""

from __future__ import annotations

from bridge.core.signing import RequestSigner, Signer, SignerV2
from bridge.edge.settings import OutboundConfig

__all__ = ["signer_for"]


def signer_for(config: OutboundConfig) -> RequestSigner:
    """Return the signer of the configured scheme, its HMAC key schedule computed once."""
    if config.signature_version == 2:
        return SignerV2(config.secret_bytes(), config.producer_id, path=config.ingest_path)
    return Signer(config.secret_bytes(), config.producer_id, path=config.ingest_path)
