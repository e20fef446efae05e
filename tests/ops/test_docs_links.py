"""Each local link in README, docs/, ARCHITECTURE.md and bench/README.md reaches its target."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

import pytest

ROOT: Final = Path(__file__).resolve().parents[2]
PAGES: Final = sorted(
    [
        ROOT / "README.md",
        ROOT / "ARCHITECTURE.md",
        ROOT / "bench" / "README.md",
        *(ROOT / "docs").glob("*.md"),
    ]
)
_LINK: Final = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
_FENCE: Final = re.compile(r"^(```|~~~).*?^\1", flags=re.MULTILINE | re.DOTALL)
_CODE: Final = re.compile(r"`[^`\n]*`")


def github_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation dropped, spaces -> '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip()).lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (duplicates numbered as GitHub does)."""
    seen: dict[str, int] = {}
    found: set[str] = set()
    text = _FENCE.sub("", page.read_text(encoding="utf-8"))
    for match in re.finditer(r"^#{1,6} (.+)$", text, flags=re.MULTILINE):
        base = github_anchor(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return found


def local_links(page: Path) -> list[str]:
    """The link targets of a page that are not URLs (code blocks and spans left out)."""
    text = _CODE.sub("", _FENCE.sub("", page.read_text(encoding="utf-8")))
    return [t for t in _LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t)]


def broken_links(page: Path) -> list[str]:
    """The local links of ``page`` whose file or #anchor does not exist."""
    broken = []
    for target in local_links(page):
        path_part, _, fragment = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        missing_anchor = fragment and dest.suffix == ".md" and fragment not in anchors(dest)
        if not dest.exists() or missing_anchor:
            broken.append(target)
    return broken


def test_the_anchor_rule_is_githubs() -> None:
    """Headings become GitHub's anchors: lowercase, punctuation dropped, spaces to hyphens."""
    assert github_anchor("Signing (for the server team)") == "signing-for-the-server-team"
    assert github_anchor("Version 2: the idempotency key") == "version-2-the-idempotency-key"
    assert github_anchor("Telemetry's cost") == "telemetrys-cost"


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    """A link to a missing file or a missing anchor is reported; a good one is not."""
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[ok](other.md#a-section) [self](#title) [gone](missing.md) "
        "[no anchor](other.md#nope) `[code](missing.md)`\n",
        encoding="utf-8",
    )
    assert broken_links(page) == ["missing.md", "other.md#nope"]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_local_link_resolves(page: Path) -> None:
    """Each relative link and #anchor in the page points at a file and heading that exist."""
    assert not broken_links(page), f"{page.relative_to(ROOT)}: broken links {broken_links(page)}"
