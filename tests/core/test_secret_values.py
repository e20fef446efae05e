"""Secret values never show themselves; URLs lose their passwords before they are shown."""

import pickle

import pytest

from bridge.core.secrets import Secret, redact_url


def test_secret_behaves_as_a_value_but_cannot_be_pickled() -> None:
    """Secrets compare and hash by value and know their length, but refuse to be pickled."""
    a, b = Secret(b"0123456789abcdef"), Secret(b"0123456789abcdef")
    assert a == b
    assert hash(a) == hash(b)
    assert a != Secret(b"something-else-entirely")
    assert a != b"0123456789abcdef"
    assert len(a) == 16
    with pytest.raises(TypeError, match="cannot be pickled"):
        pickle.dumps(a)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://:p4ss@redis:6379/0", "redis://:***@redis:6379/0"),
        ("redis://user:p4ss@redis:6379/0", "redis://user:***@redis:6379/0"),
        ("redis://tokenonly@redis", "redis://***@redis"),
        ("redis://:p4ss@[::1]:6379", "redis://:***@[::1]:6379"),
        ("redis://redis:6379/0", "redis://redis:6379/0"),
    ],
)
def test_redact_url_hides_passwords(url: str, expected: str) -> None:
    """redact_url replaces the password (or a lone user token) with ***."""
    assert redact_url(url) == expected
