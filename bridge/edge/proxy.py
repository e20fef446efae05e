"""Which forward proxy reaches the ingest server, chosen from the environment as curl and httpx do.

Pure functions of a URL and a mapping: the loader passes the proxy variables it read.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Final
from urllib.parse import urlsplit

__all__ = ["PROXY_VARIABLES", "is_loopback_host", "select_proxy"]

# The proxy variables curl and httpx read, lower case first (as curl prefers it).
PROXY_VARIABLES: Final = (
    "http_proxy",
    "HTTP_PROXY",
    "https_proxy",
    "HTTPS_PROXY",
    "all_proxy",
    "ALL_PROXY",
    "no_proxy",
    "NO_PROXY",
)


def _env_value(env: Mapping[str, str], name: str) -> tuple[str, str] | None:
    """Return (variable, value) of ``name`` in lower then upper case, if set and non-empty."""
    for variable in (name.lower(), name.upper()):
        value = env.get(variable, "").strip()
        if value:
            return variable, value
    return None


def _no_proxy_matches(entry: str, host: str, port: int) -> bool:
    """Tell whether one NO_PROXY entry (host, .domain, host:port, IP, CIDR or *) covers us."""
    entry = entry.strip().lower()
    if entry == "*":
        return True
    if "/" in entry:
        try:
            network = ipaddress.ip_network(entry.strip("[]"), strict=False)
            return ipaddress.ip_address(host) in network
        except ValueError:
            return False
    want_port: int | None = None
    if entry.startswith("["):  # [v6] or [v6]:port
        address, _, rest = entry[1:].partition("]")
        if rest.startswith(":") and rest[1:].isdigit():
            want_port = int(rest[1:])
        entry = address
    elif entry.count(":") == 1:
        name, _, port_text = entry.partition(":")
        if port_text.isdigit():
            entry, want_port = name, int(port_text)
    if want_port is not None and want_port != port:
        return False
    entry = entry.lstrip(".").rstrip(".")
    host = host.rstrip(".")
    return bool(entry) and (host == entry or host.endswith("." + entry))


def select_proxy(
    target_url: str, explicit: str | None, env: Mapping[str, str]
) -> tuple[str | None, str]:
    """Choose the proxy for ``target_url`` as curl and httpx do; return (url or None, source).

    ``explicit`` is OUTBOUND_PROXY_URL: a URL wins over the environment, ``none`` ignores it.
    Otherwise ``https_proxy`` / ``http_proxy`` (by the target's scheme), then ``all_proxy``,
    either case, unless ``no_proxy`` covers the host.
    """
    if explicit is not None and explicit.strip():
        if explicit.strip().lower() == "none":
            return None, "OUTBOUND_PROXY_URL=none"
        return _with_scheme(explicit.strip()), "OUTBOUND_PROXY_URL"
    parts = urlsplit(target_url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    found = _env_value(env, f"{parts.scheme}_proxy") or _env_value(env, "all_proxy")
    if found is None:
        return None, "no proxy variable set"
    no_proxy = _env_value(env, "no_proxy")
    if no_proxy is not None and any(
        _no_proxy_matches(entry, host, port) for entry in no_proxy[1].split(",") if entry.strip()
    ):
        return None, f"{no_proxy[0]} covers {host}"
    variable, url = found
    return _with_scheme(url), variable


def _with_scheme(url: str) -> str:
    """Read a bare ``host:port`` as ``http://host:port``, as curl does."""
    return url if "://" in url else f"http://{url}"


def is_loopback_host(host: str) -> bool:
    """Tell whether ``host`` is localhost or a loopback address (plain http is fine there)."""
    if host.lower() in ("localhost", "localhost."):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
