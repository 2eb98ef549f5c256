"""The README and docs/ are self-contained: every relative link resolves inside the repository."""

import re
from pathlib import Path

import pytest
from auglocal.launch.cli import EPILOG

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower()).replace("_", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = FENCE.sub("", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(page: Path) -> list[str]:
    return LINK.findall(FENCE.sub("", page.read_text(encoding="utf-8")))


def test_the_docs_exist_and_link_each_other():
    names = {p.name for p in PAGES}
    assert {"README.md", "method.md", "run-folder.md", "metrics.md"} <= names
    readme_links = links(REPO / "README.md")
    for page in ("docs/method.md", "docs/run-folder.md", "docs/metrics.md"):
        assert any(link.split("#")[0] == page for link in readme_links), f"README does not link {page}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves_inside_the_repository(page):
    for link in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link):          # http:, https:, mailto: leave the repo on purpose
            continue
        path, _, anchor = link.partition("#")
        assert not path.startswith("/"), f"{page.name}: absolute link {link!r}"
        target = (page.parent / path).resolve() if path else page
        assert target == REPO or REPO in target.parents, f"{page.name}: {link!r} points outside the repository"
        assert target.exists(), f"{page.name}: {link!r} names a missing file"
        if anchor:
            assert target.suffix == ".md" and anchor in anchors(target), \
                f"{page.name}: {link!r}: no heading with that anchor in {target.name}"


def test_slugs_follow_github():
    assert slug("4.2 Optimiser, schedule, batch, epochs") == "42-optimiser-schedule-batch-epochs"
    assert slug("9. The paper's tables and our figures") == "9-the-papers-tables-and-our-figures"
    assert slug("`metrics.jsonl`") == "metricsjsonl"


def test_nothing_points_at_files_a_clone_lacks():
    """The method spec the project started from lives outside the repository; nothing may cite its path."""
    sources = PAGES + sorted(p for d in ("engine", "workers", "launch", "benchmarks", "tests")
                             for p in (REPO / d).rglob("*.py"))
    offenders = [str(p.relative_to(REPO)) for p in sources
                 if "shared/docs" in p.read_text(encoding="utf-8") and p.name != "test_docs.py"]
    assert offenders == []


def test_help_names_docs_that_exist():
    named = re.findall(r"^\s+((?:docs/)?[\w./-]+\.md)\s", EPILOG, re.M)
    assert {"README.md", "docs/method.md", "docs/run-folder.md", "docs/metrics.md"} <= set(named)
    for name in named:
        assert (REPO / name).is_file(), name


def test_readme_is_a_first_page_with_two_set_up_commands():
    """A newcomer's page: at most 12 KB; one command installs and runs the main job, one runs the tests."""
    text = (REPO / "README.md").read_text()
    assert len(text.encode()) <= 12_000
    block = re.search(r"## Two commands\n\n```bash\n(.*?)```", text, re.S)
    assert block, "README has no 'Two commands' block"
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert "pip install" in commands[0] and "auglocal-launch" in commands[0]
    assert commands[1].strip() == "python3 -m pytest"
