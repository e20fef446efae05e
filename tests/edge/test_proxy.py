"""Proxy selection for the ingest URL, as curl and httpx read the proxy variables."""

from typing import Final

import pytest

from bridge.edge.proxy import select_proxy

HTTPS_TARGET: Final = "https://ingest.example.com/api/v1/signals/ingest"
HTTP_TARGET: Final = "http://127.0.0.1:8080/api/v1/signals/ingest"


@pytest.mark.parametrize(
    ("target", "explicit", "env", "expected"),
    [
        (HTTPS_TARGET, None, {}, None),
        (HTTPS_TARGET, None, {"HTTPS_PROXY": "http://p:3128"}, "http://p:3128"),
        (
            HTTPS_TARGET,
            None,
            {"https_proxy": "http://low:1", "HTTPS_PROXY": "http://up:2"},
            "http://low:1",
        ),
        (HTTPS_TARGET, None, {"HTTP_PROXY": "http://p:3128"}, None),
        (HTTP_TARGET, None, {"http_proxy": "http://p:3128"}, "http://p:3128"),
        (HTTP_TARGET, None, {"HTTP_PROXY": "http://p:3128"}, "http://p:3128"),
        (HTTPS_TARGET, None, {"ALL_PROXY": "http://all:1"}, "http://all:1"),
        (
            HTTPS_TARGET,
            None,
            {"all_proxy": "http://all:1", "HTTPS_PROXY": "http://p:2"},
            "http://p:2",
        ),
        (HTTPS_TARGET, None, {"HTTPS_PROXY": "p:3128"}, "http://p:3128"),
        (HTTPS_TARGET, "http://explicit:1", {"HTTPS_PROXY": "http://p:2"}, "http://explicit:1"),
        (HTTPS_TARGET, "explicit:1", {}, "http://explicit:1"),
        (HTTPS_TARGET, "none", {"HTTPS_PROXY": "http://p:2"}, None),
        (HTTPS_TARGET, "NONE", {"ALL_PROXY": "http://p:2"}, None),
    ],
)
def test_proxy_selection_follows_curl_and_httpx(
    target: str, explicit: str | None, env: dict[str, str], expected: str | None
) -> None:
    """Scheme-specific variables first, lower case first, then ALL_PROXY; explicit wins."""
    assert select_proxy(target, explicit, env)[0] == expected


@pytest.mark.parametrize(
    ("no_proxy", "bypassed"),
    [
        ("*", True),
        ("ingest.example.com", True),
        ("example.com", True),
        (".example.com", True),
        ("other.com, example.com", True),
        ("ample.com", False),
        ("ingest.example.com:443", True),
        ("ingest.example.com:8443", False),
        ("10.0.0.0/8", False),
        ("", False),
    ],
)
def test_no_proxy_hosts_domains_and_ports(no_proxy: str, bypassed: bool) -> None:
    """NO_PROXY (either case) matches the host, its parent domains, and host:port."""
    for variable in ("NO_PROXY", "no_proxy"):
        env = {"HTTPS_PROXY": "http://p:3128", variable: no_proxy}
        assert (select_proxy(HTTPS_TARGET, None, env)[0] is None) is bypassed


@pytest.mark.parametrize(
    ("target", "no_proxy", "bypassed"),
    [
        ("http://10.1.2.3:80/x", "10.0.0.0/8", True),
        ("http://10.1.2.3:80/x", "192.168.0.0/16", False),
        ("http://10.1.2.3:80/x", "10.1.2.3", True),
        ("http://[::1]:8080/x", "::1/128", True),
        ("http://[::1]:8080/x", "[::1]:8080", True),
        ("http://[::1]:8080/x", "[::1]:9", False),
    ],
)
def test_no_proxy_addresses_and_cidrs(target: str, no_proxy: str, bypassed: bool) -> None:
    """IP addresses and CIDR blocks in NO_PROXY cover literal-address targets."""
    env = {"ALL_PROXY": "http://p:3128", "NO_PROXY": no_proxy}
    assert (select_proxy(target, None, env)[0] is None) is bypassed
