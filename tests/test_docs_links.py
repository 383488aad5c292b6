"""The README and docs/ link to files and headings that exist, and every page of docs/ is reachable from the README."""

from __future__ import annotations

import re
from pathlib import Path

from helpers.config import ROOT

README = ROOT / "README.md"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def _pages() -> list[Path]:
    return [README, *sorted((ROOT / "docs").rglob("*.md"))]


def _text_outside_code(page: Path) -> str:
    """The page without fenced code blocks, where ``](`` is code, not a link."""
    return re.sub(r"^```.*?^```", "", page.read_text(encoding="utf-8"), flags=re.M | re.S)


def github_anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation dropped, spaces as hyphens."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", _text_outside_code(page), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchor, n = slug, 0
        while anchor in anchors:
            n += 1
            anchor = f"{slug}-{n}"
        anchors.add(anchor)
    return anchors


def _local_links(page: Path) -> list[tuple[Path, str]]:
    links = []
    for target in LINK.findall(_text_outside_code(page)):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        links.append(((page.parent / path).resolve() if path else page, anchor))
    return links


def test_every_link_points_at_an_existing_file_and_heading():
    broken = []
    for page in _pages():
        for target, anchor in _local_links(page):
            if not target.exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target} (no such file)")
            elif anchor and target.suffix == ".md" and anchor not in github_anchors(target):
                broken.append(f"{page.relative_to(ROOT)} -> {target.relative_to(ROOT)}#{anchor} (no such heading)")
    assert not broken, "broken links:\n" + "\n".join(broken)


def test_every_docs_page_is_reachable_from_the_readme():
    seen, todo = {README}, [README]
    while todo:
        for target, _ in _local_links(todo.pop()):
            if target.suffix == ".md" and target.exists() and target not in seen:
                seen.add(target)
                todo.append(target)
    unreachable = [str(p.relative_to(ROOT)) for p in _pages() if p not in seen]
    assert not unreachable, f"docs pages no link leads to from README.md: {unreachable}"
