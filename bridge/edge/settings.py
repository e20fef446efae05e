"""The HTTP edge's settings: how to reach and authenticate to the ingest server.

Each field declares its environment name and bounds once (see :mod:`bridge.core.settings`);
:meth:`OutboundConfig.check` applies them at start, with the rules that need the whole set-up
(the URL, the secret, the outcome lists, the proxy that applies, the TLS files on disk).
"""

from __future__ import annotations

from typing import Annotated, Final, Literal, get_args
from urllib.parse import urlsplit

import msgspec

from bridge.core.ed25519 import Ed25519PrivateKey, read_private_key
from bridge.core.outcome import OutcomeTable
from bridge.core.secrets import Secret, redact_url
from bridge.core.settings import (
    Setting,
    check_bounds,
    parse_secret,
    parse_statuses_setting,
)
from bridge.core.signal import DEFAULT_MAX_BODY_SIZE
from bridge.core.signing import INGEST_PATH
from bridge.core.urls import split_url
from bridge.edge.proxy import is_loopback_host, select_proxy
from bridge.edge.tls import check_tls_files
from bridge.errors import ConfigError

__all__ = ["MIN_SECRET_BYTES", "OutboundConfig", "SignatureScheme"]

MIN_SECRET_BYTES: Final = 16
MIN_TIMEOUT_S: Final = 5.0
_SUCCESS: Final = "OUTBOUND_SUCCESS_STATUSES"
_SYSTEMIC: Final = "OUTBOUND_SYSTEMIC_STATUSES"
_REJECT: Final = "OUTBOUND_REJECT_STATUSES"


SignatureScheme = Literal["hmac", "standard-webhooks", "rfc9421"]
_SCHEMES: Final = get_args(SignatureScheme)


def _parse_scheme(variable: str, raw: str) -> str:
    """Read OUTBOUND_SIGNATURE_SCHEME; anything but a known scheme is refused, naming them."""
    if raw not in _SCHEMES:
        raise ConfigError(
            f"{variable} must be one of {', '.join(_SCHEMES)}, got {raw!r}", variable=variable
        )
    return raw


class OutboundConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How to reach and authenticate to the ingest server."""

    server_url: Annotated[str, Setting("OUTBOUND_SERVER_URL", readme_default="(required)")] = ""
    secret: Annotated[
        Secret | None,
        Setting(
            "HMAC_PRODUCER_SECRET",
            parse=parse_secret,
            sees_blank=True,
            readme_default="(required when enabled)",
        ),
    ] = None
    producer_id: Annotated[str, Setting("PRODUCER_ID", readme_default="host name")] = ""
    enabled: Annotated[bool, Setting("HMAC_PRODUCER_ENABLED")] = True
    timeout_s: Annotated[float, Setting("OUTBOUND_TIMEOUT_SECONDS", ge=MIN_TIMEOUT_S)] = 30.0
    max_body_size: Annotated[int, Setting("OUTBOUND_MAX_BODY_SIZE", positive=True, echo=False)] = (
        DEFAULT_MAX_BODY_SIZE
    )
    key_id: Annotated[str | None, Setting("HMAC_PRODUCER_KEY_ID")] = None
    signature_version: Annotated[
        int, Setting("OUTBOUND_SIGNATURE_VERSION", ge=1, le=2, note="1 or 2")
    ] = 1
    ca_bundle: Annotated[
        str | None, Setting("OUTBOUND_CA_BUNDLE", readme_default="system store")
    ] = None
    client_cert: Annotated[str | None, Setting("OUTBOUND_CLIENT_CERT")] = None
    client_key: Annotated[str | None, Setting("OUTBOUND_CLIENT_KEY")] = None
    max_connections: Annotated[int, Setting("OUTBOUND_MAX_CONNECTIONS", ge=1, echo=False)] = 32
    success_statuses: Annotated[
        list[int] | None,
        Setting(_SUCCESS, parse=parse_statuses_setting, readme_default="`200-299`"),
    ] = None
    systemic_statuses: Annotated[
        list[int] | None,
        Setting(
            _SYSTEMIC,
            parse=parse_statuses_setting,
            readme_default="`300-399,401,403,404,405,407,421,426`",
        ),
    ] = None
    reject_statuses: Annotated[
        list[int] | None,
        Setting(
            _REJECT,
            parse=parse_statuses_setting,
            readme_default="the other 4xx except 408, 409, 425, 429",
        ),
    ] = None
    max_response_bytes: Annotated[int, Setting("OUTBOUND_MAX_RESPONSE_BYTES", positive=True)] = (
        1024 * 1024
    )
    max_response_head_bytes: Annotated[
        int, Setting("OUTBOUND_MAX_RESPONSE_HEAD_BYTES", positive=True)
    ] = 64 * 1024
    max_response_headers: Annotated[
        int, Setting("OUTBOUND_MAX_RESPONSE_HEADERS", positive=True)
    ] = 100
    connect_timeout_s: Annotated[
        float, Setting("OUTBOUND_CONNECT_TIMEOUT_SECONDS", positive=True)
    ] = 10.0
    tcp_user_timeout_s: Annotated[
        float, Setting("OUTBOUND_TCP_USER_TIMEOUT_SECONDS", ge=0, note="0 disables")
    ] = 10.0
    proxy_url: Annotated[
        str | None,
        Setting("OUTBOUND_PROXY_URL", readme_default="from the environment", redact=True),
    ] = None
    proxy_env: dict[str, str] = msgspec.field(default_factory=dict)
    signature_scheme: Annotated[
        SignatureScheme, Setting("OUTBOUND_SIGNATURE_SCHEME", parse=_parse_scheme)
    ] = "hmac"
    ed25519_key_file: Annotated[str | None, Setting("OUTBOUND_ED25519_KEY_FILE")] = None
    ed25519_next_key_file: Annotated[str | None, Setting("OUTBOUND_ED25519_NEXT_KEY_FILE")] = None

    def __repr__(self) -> str:
        # Proxy URLs may carry credentials: show them redacted; the secret is a Secret.
        fields = ", ".join(
            f"{name}={_redacted_field(name, getattr(self, name))}"
            for name in self.__struct_fields__
        )
        return f"OutboundConfig({fields})"

    def proxy(self) -> tuple[str | None, str]:
        """Return the proxy for the ingest URL (None for a direct connection) and its source."""
        return select_proxy(self.ingest_url, self.proxy_url, self.proxy_env)

    @property
    def ingest_url(self) -> str:
        """The full URL of the ingest endpoint."""
        return self.server_url.rstrip("/") + INGEST_PATH

    @property
    def ingest_path(self) -> str:
        """The request path that goes into the canonical request."""
        return urlsplit(self.ingest_url).path

    def secret_bytes(self) -> bytes:
        """Return the HMAC secret; ConfigError when none is configured."""
        if self.secret is None:
            raise ConfigError("HMAC_PRODUCER_SECRET is required", variable="HMAC_PRODUCER_SECRET")
        return self.secret.get()

    def check(self) -> None:
        """Check the settings at start, when delivery is on; the first broken rule is refused.

        The URL, the secret and the header values, the declared bounds, the outcome lists (a
        code has one meaning), then the proxy that applies and the TLS files on disk.
        """
        if not self.enabled:
            return
        self._check_server_url()
        if self.secret is None or len(self.secret) == 0:
            raise ConfigError(
                "HMAC_PRODUCER_SECRET (or HMAC_PRODUCER_SECRET_FILE) is required when "
                "HMAC_PRODUCER_ENABLED is true",
                variable="HMAC_PRODUCER_SECRET",
            )
        if len(self.secret) < MIN_SECRET_BYTES:
            raise ConfigError(
                f"HMAC_PRODUCER_SECRET must be at least {MIN_SECRET_BYTES} bytes",
                variable="HMAC_PRODUCER_SECRET",
            )
        for variable, value in (
            ("PRODUCER_ID", self.producer_id),
            ("HMAC_PRODUCER_KEY_ID", self.key_id),
        ):
            if value is not None and not (value and value.isascii() and value.isprintable()):
                raise ConfigError(
                    f"{variable} must be non-empty printable ASCII (it is sent as a header)",
                    variable=variable,
                )
        check_bounds(self)
        self._check_statuses()
        if self.client_key is not None and self.client_cert is None:
            raise ConfigError(
                "OUTBOUND_CLIENT_KEY needs OUTBOUND_CLIENT_CERT", variable="OUTBOUND_CLIENT_CERT"
            )
        self._check_proxy()
        check_tls_files(self.ca_bundle, self.client_cert, self.client_key)
        self.ed25519_keys()

    def ed25519_keys(self) -> list[Ed25519PrivateKey]:
        """Read the Ed25519 key files (current, then next); refuse one the scheme cannot send.

        ``hmac`` (v1/v2) has no place for an Ed25519 signature, so a key with it is refused
        rather than silently unused; a next key needs a current one.
        """
        if self.ed25519_key_file is None:
            if self.ed25519_next_key_file is not None:
                raise ConfigError(
                    "OUTBOUND_ED25519_NEXT_KEY_FILE needs OUTBOUND_ED25519_KEY_FILE",
                    variable="OUTBOUND_ED25519_KEY_FILE",
                )
            return []
        if self.signature_scheme == "hmac":
            raise ConfigError(
                "OUTBOUND_ED25519_KEY_FILE is set but OUTBOUND_SIGNATURE_SCHEME=hmac cannot carry "
                "an Ed25519 signature: set OUTBOUND_SIGNATURE_SCHEME=standard-webhooks or rfc9421",
                variable="OUTBOUND_ED25519_KEY_FILE",
            )
        keys = [read_private_key("OUTBOUND_ED25519_KEY_FILE", self.ed25519_key_file)]
        if self.ed25519_next_key_file is not None:
            keys.append(
                read_private_key("OUTBOUND_ED25519_NEXT_KEY_FILE", self.ed25519_next_key_file)
            )
        return keys

    def _check_server_url(self) -> None:
        """Refuse a server URL without http(s) and a host, with credentials, or remote over http."""
        if not self.server_url:
            raise ConfigError("OUTBOUND_SERVER_URL is required", variable="OUTBOUND_SERVER_URL")
        url = split_url("OUTBOUND_SERVER_URL", self.server_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ConfigError(
                "OUTBOUND_SERVER_URL must be an http(s) URL with a host, got "
                f"{redact_url(self.server_url)!r}",
                variable="OUTBOUND_SERVER_URL",
            )
        if url.username or url.password:
            raise ConfigError(
                "OUTBOUND_SERVER_URL must not carry credentials", variable="OUTBOUND_SERVER_URL"
            )
        if url.query or url.fragment or self.server_url.endswith(("?", "#")):
            # The bridge POSTs to the server's origin + /api/v1/signals/ingest: a query or a
            # fragment would be dropped, not sent (and may hold a token).
            raise ConfigError(
                "OUTBOUND_SERVER_URL must not have a query or fragment (the bridge posts to "
                f"{INGEST_PATH} on its origin), got {redact_url(self.server_url)!r}",
                variable="OUTBOUND_SERVER_URL",
            )
        if url.scheme == "http" and not is_loopback_host(url.hostname):
            raise ConfigError(
                "OUTBOUND_SERVER_URL must use https (plain http only for loopback hosts)",
                variable="OUTBOUND_SERVER_URL",
            )

    def _check_statuses(self) -> None:
        """Real status codes, and no code in two lists that are set."""
        lists = (
            (_SUCCESS, self.success_statuses),
            (_SYSTEMIC, self.systemic_statuses),
            (_REJECT, self.reject_statuses),
        )
        for variable, codes in lists:
            for code in codes or ():
                if not 100 <= code <= 599:
                    raise ConfigError(
                        f"{variable}: {code} is not an HTTP status code (100-599)",
                        variable=variable,
                    )
        for i, (first, first_codes) in enumerate(lists):
            for second, second_codes in lists[i + 1 :]:
                both = sorted(set(first_codes or ()) & set(second_codes or ()))
                if both:
                    raise ConfigError(
                        f"status {both[0]} is in both {first} and {second}: a code has one meaning",
                        variable=second,
                    )
        OutcomeTable(
            success=self.success_statuses,
            systemic=self.systemic_statuses,
            reject=self.reject_statuses,
        )

    def _check_proxy(self) -> None:
        """Refuse a proxy for the ingest URL that is not an http:// URL with a valid port."""
        proxy, variable = self.proxy()
        if proxy is None:
            return
        parts = split_url(variable, proxy)
        if parts.scheme != "http" or not parts.hostname:
            raise ConfigError(
                f"{variable} must be an http:// proxy URL (https targets go through it with "
                f"CONNECT), got {redact_url(proxy)!r}; set OUTBOUND_PROXY_URL=none to connect "
                "directly",
                variable=variable,
            )


def _redacted_field(name: str, value: object) -> str:
    """Repr one OutboundConfig field, proxy URLs with their credentials redacted."""
    if name == "proxy_url" and isinstance(value, str):
        return repr(redact_url(value))
    if name == "proxy_env" and isinstance(value, dict):
        return repr({k: redact_url(v) for k, v in value.items()})
    return repr(value)
