"""The alert rules fire when they should: `promtool test rules` over tests/alerts_test.yml."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "config" / "alerts.yml"
CASES = ROOT / "tests" / "alerts_test.yml"


def _promtool() -> str:
    """Path of promtool; skip outside CI when it is missing (scripts/test.sh installs it in CI)."""
    path = shutil.which("promtool")
    if path is None:
        message = (
            "promtool not installed (apt-get install prometheus); scripts/test.sh installs it "
            "when run as root"
        )
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return path


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - promtool with fixed arguments
        [_promtool(), *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def test_rules_are_valid_and_every_case_passes() -> None:
    """`promtool check rules` accepts the file and every firing / quiet case in the tests holds."""
    checked = _run("check", "rules", str(RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = _run("test", "rules", str(CASES))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_has_a_case_where_it_fires() -> None:
    """No rule goes untested: each alert name is expected to fire in at least one case."""
    rules: dict[str, Any] = yaml.safe_load(RULES.read_text())
    cases: dict[str, Any] = yaml.safe_load(CASES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    firing = {
        check["alertname"]
        for case in cases["tests"]
        for check in case.get("alert_rule_test", [])
        if check.get("exp_alerts")
    }
    quiet = {
        check["alertname"]
        for case in cases["tests"]
        for check in case.get("alert_rule_test", [])
        if not check.get("exp_alerts")
    }
    assert alerts - firing == set(), "alerts without a firing case"
    assert alerts - quiet == set(), "alerts without a quiet case"
