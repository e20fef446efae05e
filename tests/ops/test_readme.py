"""The README and docs/ against the code: the settings table and Python examples may not drift."""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final, cast

import pytest
import redis

from bridge.config.loader import declared_settings, setting_names
from bridge.core.signal import decode_signal
from bridge.core.signing import Signer
from bridge.core.timestamps import format_timestamp
from bridge.edge.proxy import PROXY_VARIABLES

ROOT: Final = Path(__file__).resolve().parents[2]
# The settings table lives in docs/settings.md; the examples in the README and its docs/ pages.
SETTINGS: Final = ROOT / "docs" / "settings.md"
EXAMPLE_PAGES: Final = (
    ROOT / "README.md",
    ROOT / "docs" / "producers.md",
    ROOT / "docs" / "signing.md",
)
# Read outside config's table (a file path, the secret's file, the reference server's keys).
OTHER_VARIABLES: Final = (
    "BRIDGE_CONFIG",
    "HMAC_PRODUCER_SECRET_FILE",
    "BRIDGE_REDIS_PASSWORD_FILE",
    "INGEST_SECRETS",
    "INGEST_SECRET_FILE",
    "INGEST_FENCING",
    "INGEST_REQUIRE_SIGNATURE_VERSION",
    "INGEST_ED25519_PUBLIC_KEYS",
    # The proxy variables curl and httpx read (either case; the table names the upper case).
    *(name for name in PROXY_VARIABLES if name.isupper()),
)


def _table_defaults() -> dict[str, str]:
    """Each variable named in docs/settings.md's table -> its row's default cell."""
    lines = SETTINGS.read_text(encoding="utf-8").splitlines()
    start = lines.index("| variable | default | meaning |")
    defaults: dict[str, str] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = line.split("|")
        for name in re.findall(r"`([A-Z][A-Z0-9_]*\*?)`", cells[1]):
            defaults[name] = cells[2].strip()
    return defaults


def _settings_table() -> set[str]:
    """The variable names in the first column of the settings table."""
    return set(_table_defaults())


def test_every_setting_is_in_the_readme_table() -> None:
    """Each variable of config's table (and those read beside it) has a row in docs/settings.md."""
    missing = [n for n in [*setting_names(), *OTHER_VARIABLES] if n not in _settings_table()]
    assert not missing, f"add these to the settings table (docs/settings.md): {missing}"


def test_the_readme_table_names_no_unknown_variable() -> None:
    """Every row of the settings table is a variable the code reads (no stale rows)."""
    known = {*setting_names(), *OTHER_VARIABLES, "OTEL_*"}
    unknown = sorted(_settings_table() - known)
    assert not unknown, f"docs/settings.md's table lists variables the code ignores: {unknown}"


def _python_examples() -> list[str]:
    """The source of every ```python block in the README and the pages with examples, in order."""
    return [
        block
        for page in EXAMPLE_PAGES
        for block in re.findall(
            r"^```python\n(.*?)^```$",
            page.read_text(encoding="utf-8"),
            flags=re.MULTILINE | re.DOTALL,
        )
    ]


def _example(marker: str) -> str:
    """The one README example that contains ``marker``."""
    found = [block for block in _python_examples() if marker in block]
    assert len(found) == 1, f"expected one README example with {marker!r}, found {len(found)}"
    return found[0]


def _run(source: str, **names: object) -> dict[str, Any]:
    """Execute an example as a module whose reader-supplied names are ``names``."""
    namespace: dict[str, Any] = {"__name__": "readme_example", **names}
    exec(compile(source, "readme_example", "exec"), namespace)  # noqa: S102 - our own docs' code
    return namespace


_PRODUCER_MARKER: Final = "bridge.publish(redis, signal"
_SERVER_MARKER: Final = "verify_request(headers"


def test_every_python_example_is_run_by_a_test() -> None:
    """Each ```python block of the README and docs/ is one of the examples tests below execute."""
    markers = (_PRODUCER_MARKER, _SERVER_MARKER)
    blocks = _python_examples()
    assert len(blocks) == len(markers)
    assert all(any(m in block for block in blocks) for m in markers)


def test_the_producer_example_publishes_a_signal(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The producer example XADDs its signal, canonical and decodable, to ``signals``."""
    # A database of its own: the example writes to the README's stream name, "signals".
    url = urllib.parse.urlsplit(redis_url)._replace(path="/9").geturl()
    monkeypatch.setenv("BRIDGE_REDIS_URL", url)
    client = redis.Redis.from_url(url)
    try:
        client.delete("signals")
        _run(_example(_PRODUCER_MARKER))
        entry_id = capsys.readouterr().out.split()[-1]
        entries = cast("list[tuple[bytes, dict[bytes, bytes]]]", client.xrange("signals"))
        [(stored_id, fields)] = entries
        assert stored_id.decode() == entry_id
        signal = decode_signal(fields[b"signal"])
        assert (signal.instrument, signal.side, signal.signal_id) == ("XAUUSD", "buy", "order-77")
    finally:
        client.delete("signals")
        client.close()


def test_the_server_example_accepts_the_bridges_request_and_refuses_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The verifier example lets a signed request through (either key) and answers 401 else."""
    new_secret, old_secret = b"new-secret", b"old-secret"
    example = _run(_example(_SERVER_MARKER), new_secret=new_secret, old_secret=old_secret)
    authenticate: Callable[[Mapping[str, str], bytes], int | None] = example["authenticate"]
    body = b'{"instrument":"XAUUSD"}'

    def headers(secret: bytes, key_id: str) -> dict[str, str]:
        """The headers the bridge sends for ``body`` signed with ``secret``."""
        timestamp = format_timestamp(time.time())
        return {
            "X-Producer-Id": "mt5-trader-1",
            "X-Timestamp": timestamp,
            "X-Signature": Signer(secret, "mt5-trader-1").sign(body, timestamp),
            "X-Key-Id": key_id,
        }

    assert authenticate(headers(new_secret, "2026-11"), body) is None
    assert authenticate(headers(old_secret, "2026-05"), body) is None
    with caplog.at_level(logging.WARNING, logger="ingest"):
        assert authenticate(headers(new_secret, "2026-11"), body + b" ") == 401
    assert "refused: signature mismatch" in caplog.text


def test_the_readme_table_shows_each_declared_default() -> None:
    """Each declared setting's default cell is its declared default (or declared wording)."""
    table = _table_defaults()
    wrong = {
        variable: (table.get(variable), item.readme_default())
        for variable, (_, item) in declared_settings().items()
        if table.get(variable) != item.readme_default()
    }
    assert not wrong, f"docs/settings.md default cell vs declaration (docs, declared): {wrong}"
