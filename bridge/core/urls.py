"""A setting's URL split once, or refused in one line naming the variable.

``urlsplit`` raises on an unbalanced ``[`` and ``SplitResult.port`` on a port that is not a
number in 0-65535, each as a bare ``ValueError`` (a traceback at start). :func:`split_url` turns
both into a :class:`~bridge.errors.ConfigError` naming the variable and showing the URL
redacted, so every URL setting fails the same way: one line, exit 2.
"""

from __future__ import annotations

from urllib.parse import SplitResult, urlsplit

from bridge.core.secrets import redact_url
from bridge.errors import ConfigError

__all__ = ["split_url"]


def split_url(variable: str, url: str) -> SplitResult:
    """Split ``url`` and check its port; a ConfigError naming ``variable`` if either fails."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ConfigError(
            f"{variable} is not a valid URL ({exc}): {redact_url(url)!r}", variable=variable
        ) from None
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(
            f"{variable} has an invalid port ({exc}): {redact_url(url)!r}", variable=variable
        ) from None
    return parts
