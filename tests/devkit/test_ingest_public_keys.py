import pytest

from bridge.core.ed25519 import generate_private_key, public_key_b64, public_key_fingerprint
from bridge.devkit.ingest_keys import load_ingest_public_keys
from bridge.errors import ConfigError


def test_public_keys_are_read_by_their_fingerprint() -> None:
    """INGEST_ED25519_PUBLIC_KEYS lists base64 keys; each is keyed by its fingerprint."""
    keys = [generate_private_key(), generate_private_key()]
    value = " , ".join(public_key_b64(key) for key in keys) + ","
    loaded = load_ingest_public_keys({"INGEST_ED25519_PUBLIC_KEYS": value})
    assert sorted(loaded) == sorted(public_key_fingerprint(key) for key in keys)
    assert load_ingest_public_keys({}) == {}


@pytest.mark.parametrize(
    "value", ["not-base64!", "AAAA", public_key_b64(generate_private_key()) + "AA"]
)
def test_a_value_that_is_no_public_key_is_refused(value: str) -> None:
    """Anything but base64 of 32 bytes stops the server naming the variable."""
    with pytest.raises(ConfigError) as info:
        load_ingest_public_keys({"INGEST_ED25519_PUBLIC_KEYS": value})
    assert info.value.variable == "INGEST_ED25519_PUBLIC_KEYS"
