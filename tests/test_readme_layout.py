"""README's "Where things live" table names files that exist."""

from __future__ import annotations

import re

from helpers.config import ROOT

OUTSIDE_PACKAGE = ("src/", "conf/", "scripts/", "tests/", "docs/")


def _layout_rows() -> list[list[str]]:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Where things live", 1)[1].split("\n## ", 1)[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ")]
    return rows[1:]  # without the header row


def test_every_file_in_the_layout_table_exists():
    rows = _layout_rows()
    assert len(rows) >= 10
    paths = [p for row in rows for p in re.findall(r"`([^`]+)`", row[1])]
    assert "src/predict.py" in paths and "inference/predict_images.py" in paths
    missing = [
        p for p in paths if not (ROOT / p if p.startswith(OUTSIDE_PACKAGE) else ROOT / "src" / "maskrcnn" / p).exists()
    ]
    assert not missing, f"README 'Where things live' names files that do not exist: {missing}"
