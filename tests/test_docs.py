"""The docs stay true: the CLI reference matches the CLI, links resolve, and measured figures say where they come from."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rada_export.cli.reference import REGENERATE, render

REPO = Path(__file__).resolve().parents[1]
CLI_PAGE = REPO / "docs" / "cli.md"
RESULTS = REPO / "benchmarks" / "RESULTS.md"
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md")), RESULTS]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def names(paths) -> list[str]:
    return [p.relative_to(REPO).as_posix() for p in paths]


def test_cli_reference_is_current():
    assert CLI_PAGE.is_file(), f"docs/cli.md is missing: generate it with `{REGENERATE}`"
    assert CLI_PAGE.read_text(encoding="utf-8") == render(), (
        f"docs/cli.md is out of date with the CLI's commands and options: regenerate it with `{REGENERATE}`")


def test_cli_reference_lists_every_command_and_option():
    from typer.main import get_command

    from rada_export.cli.app import app

    page = render()
    for name, command in get_command(app).commands.items():
        assert f"\n## {name}\n" in page
        for param in command.params:
            if getattr(param, "hidden", False):  # former spellings kept working, not documented
                continue
            for opt in param.opts:
                if opt.startswith("--"):
                    assert f"`{opt}`" in page, f"{name} {opt} is missing from the reference"


def test_cli_reference_does_not_depend_on_the_terminal(monkeypatch):
    monkeypatch.setenv("COLUMNS", "40")
    monkeypatch.setenv("TERM", "dumb")
    narrow = render()
    monkeypatch.setenv("COLUMNS", "300")
    assert render() == narrow


def anchors(text: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens, repeats numbered."""
    seen: dict[str, int] = {}
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", text), re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        if count:
            seen[f"{slug}-{count}"] = 1
    return set(seen)


@pytest.mark.parametrize("page", PAGES, ids=names(PAGES))
def test_links_resolve(page):
    text = page.read_text(encoding="utf-8")
    for target in LINK.findall(FENCE.sub("", text)):
        if re.match(r"[a-z]+:", target):  # https:, mailto:: not checked offline
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link to a missing file: {target}"
        if anchor:
            assert anchor in anchors(resolved.read_text(encoding="utf-8")), f"{page.name}: no heading for #{anchor} in {target}"


@pytest.mark.parametrize("page", PAGES, ids=names(PAGES))
def test_no_references_to_work_tickets(page):
    """Readers cannot follow a tracker's numbers or a work log; the docs state facts and link to results."""
    text = page.read_text(encoding="utf-8")
    for pattern in (r"\bissues? \d+", r"\bthis session\b", r"\bper defect\b"):
        match = re.search(pattern, text, re.I)
        assert match is None, f"{page.name} mentions {match.group(0)!r}"


def test_every_measured_result_says_when_where_and_at_which_commit():
    text = RESULTS.read_text(encoding="utf-8")
    sections = re.split(r"^## ", FENCE.sub("", text), flags=re.M)[1:]
    assert sections, "benchmarks/RESULTS.md has no sections"
    for body in sections:
        title = body.splitlines()[0]
        assert re.search(r"Date: \d{4}-\d{2}-\d{2}", body), f"RESULTS '{title}' gives no date"
        assert re.search(r"Commits?: [0-9a-f]{7}", body), f"RESULTS '{title}' gives no commit"
        assert "Machine:" in body, f"RESULTS '{title}' does not say which machine"
