"""The README's settings table against the declared settings: names and defaults may not drift."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from bridge.config.loader import declared_settings, setting_names
from bridge.edge.proxy import PROXY_VARIABLES

README: Final = Path(__file__).resolve().parents[2] / "README.md"
# Read outside config's table (a file path, the secret's file, the reference server's keys).
OTHER_VARIABLES: Final = (
    "BRIDGE_CONFIG",
    "HMAC_PRODUCER_SECRET_FILE",
    "INGEST_SECRETS",
    "INGEST_SECRET_FILE",
    # The proxy variables curl and httpx read (either case; the table names the upper case).
    *(name for name in PROXY_VARIABLES if name.isupper()),
)


def _table_defaults() -> dict[str, str]:
    """Each variable named in the README's settings table -> its row's default cell."""
    lines = README.read_text(encoding="utf-8").splitlines()
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
    """The variable names in the first column of the README's settings table."""
    return set(_table_defaults())


def test_every_setting_is_in_the_readme_table() -> None:
    """Each variable of config's table (and those read beside it) has a row in the README."""
    missing = [n for n in [*setting_names(), *OTHER_VARIABLES] if n not in _settings_table()]
    assert not missing, f"add these to the README's settings table: {missing}"


def test_the_readme_table_names_no_unknown_variable() -> None:
    """Every row of the README's table is a variable the code reads (no stale rows)."""
    known = {*setting_names(), *OTHER_VARIABLES, "OTEL_*"}
    unknown = sorted(_settings_table() - known)
    assert not unknown, f"the README's settings table lists variables the code ignores: {unknown}"


def test_the_readme_table_shows_each_declared_default() -> None:
    """Each declared setting's default cell is its declared default (or declared wording)."""
    table = _table_defaults()
    wrong = {
        variable: (table.get(variable), item.readme_default())
        for variable, (_, item) in declared_settings().items()
        if table.get(variable) != item.readme_default()
    }
    assert not wrong, f"README default cell vs declaration (README, declared): {wrong}"
