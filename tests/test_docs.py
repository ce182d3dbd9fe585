"""Docs that stay true: what they list is checked against the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scripts_readme_lists_every_script_in_scripts() -> None:
    readme = (ROOT / "scripts" / "README.md").read_text()
    table = readme.split("\n\n## ", 1)[0]  # the first section: one row per file
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE))
    present = {p.name for p in (ROOT / "scripts").iterdir() if p.is_file()}
    assert present - listed == set(), "add a row to the table at the top of scripts/README.md"
