"""docs/observability.md's alerts table stays equal to config/alerts.yml, with first commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import yaml

ROOT: Final = Path(__file__).resolve().parents[2]
RULES: Final = ROOT / "config" / "alerts.yml"
PAGE: Final = ROOT / "docs" / "observability.md"
HEADER: Final = "| alert | fires when | for | severity | first command |"


def _rules() -> dict[str, dict[str, Any]]:
    """Each alert rule of config/alerts.yml by name."""
    data: dict[str, Any] = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return {
        rule["alert"]: rule
        for group in data["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def _table() -> dict[str, list[str]]:
    """Each row of the page's alerts table by alert name: its cells after the name."""
    lines = PAGE.read_text(encoding="utf-8").splitlines()
    start = lines.index(HEADER)
    rows: dict[str, list[str]] = {}
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        rows[cells[0].strip("`")] = cells[1:]
    return rows


def test_every_alert_is_in_the_table_and_no_other() -> None:
    """The table names exactly the alerts config/alerts.yml defines."""
    assert sorted(_table()) == sorted(_rules())


def test_each_row_gives_the_rules_duration_and_severity() -> None:
    """A row's `for` and severity cells are the rule's (`-` when it has no `for`)."""
    rules = _rules()
    wrong = {
        name: (cells[1], cells[2])
        for name, cells in _table().items()
        if (cells[1], cells[2]) != (rules[name].get("for", "-"), rules[name]["labels"]["severity"])
    }
    assert not wrong, f"rows whose for / severity differ from config/alerts.yml: {wrong}"


def test_each_alert_has_a_first_command() -> None:
    """Every row's last cell starts with the signal-bridge command to run first."""
    missing = [
        name for name, cells in _table().items() if not cells[3].startswith("`signal-bridge ")
    ]
    assert not missing, f"alerts without a first command: {missing}"
