"""OUTBOUND_SIGNATURE_VERSION picks the client's signer (edge/signers.signer_for)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bridge.core.fencing import LeaseStamp
from bridge.core.signing import verify_request
from bridge.core.timestamps import format_timestamp
from bridge.edge.signers import signer_for
from bridge.errors import ConfigError
from tests.fixtures_ingest import KEY_ID, TEST_SECRET, make_outbound_config


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
