"""scripts/demo.sh installs the service and the demo's own group, not the test and bench tools."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_group_holds_what_the_demo_imports_and_dev_includes_it() -> None:
    """The "demo" group is fakeredis with Lua (the fallback Redis); "dev" includes it."""
    groups = tomllib.loads((ROOT / "pyproject.toml").read_text())["dependency-groups"]
    assert [re.split(r"[<>=]", item)[0] for item in groups["demo"]] == ["fakeredis[lua]"]
    assert {"include-group": "demo"} in groups["dev"]
    embedded = (ROOT / "bridge" / "devkit" / "embedded.py").read_text()
    assert "from fakeredis import" in embedded


def test_demo_sh_syncs_only_the_demo_group_and_test_sh_syncs_all() -> None:
    """demo.sh asks bootstrap for no default groups plus "demo"; bare bootstrap syncs them all."""
    demo = (ROOT / "scripts" / "demo.sh").read_text()
    assert "bash scripts/bootstrap.sh --no-default-groups --group demo" in demo
    test = (ROOT / "scripts" / "test.sh").read_text()
    assert re.search(r"^bash scripts/bootstrap\.sh$", test, flags=re.M)
    bootstrap = (ROOT / "scripts" / "bootstrap.sh").read_text()
    assert 'SYNC_GROUPS=("$@" --inexact)' in bootstrap
    assert "SYNC_GROUPS=(--all-groups)" in bootstrap
