"""README is the front door (short, pointing into docs/), and every link between the documents
lands on a file and a heading that exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infra.stack_files import ROOT

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^a-z0-9 _-]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#{1,6} (.+)$", path.read_text(), re.M)}


def broken_links(path: Path) -> list[str]:
    broken = []
    for target in LINK.findall(path.read_text()):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        where = (path.parent / file).resolve() if file else path
        if not where.exists() or anchor and where.suffix == ".md" and anchor not in anchors(where):
            broken.append(target)
    return broken


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) < 250
    assert "make plan STACK=staging" in text and "make test" in text
    linked = set(re.findall(r"\]\((docs/[a-z-]+\.md)\)", text))
    assert linked == {f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")}, "every docs page is linked"


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: p.name)
def test_every_relative_link_lands(document):
    assert broken_links(document) == []


def test_a_broken_link_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## Two words\n\n[ok](#two-words) [gone](#three) [file](b.md#top)\n")
    (tmp_path / "b.md").write_text("# Other\n")
    assert broken_links(tmp_path / "a.md") == ["#three", "b.md#top"]
