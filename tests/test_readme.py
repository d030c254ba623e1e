"""The README's and the docs' commands are the ones that run: set-up, workflow, and every command shown."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
DOCS = {path.relative_to(REPO).as_posix(): path.read_text(encoding="utf-8") for path in sorted((REPO / "docs").glob("*.md"))}
EXPECTED_EXIT = re.compile(r"#\s*exits (\d+)")
README_LIMIT = 16 * 1024  # a front page: the reference lives in docs/

# The README's workflow uses ViT-B-32, what users should see; run as written it takes over four minutes on
# 2 cores. The test swaps in the tiny ViT of the same family so that the default run takes every line
# through the same code paths (train, export, verify, calibrate, trt's refusal, predict, bench) in about a minute.
README_WORKFLOW_MODEL = "--model ViT-B-32"
TEST_WORKFLOW_MODEL = "--model rada-tiny-ViT"


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def shown_commands(text: str) -> list[str]:
    """Every `rada-export ...` invocation in the text's bash blocks (also after `&&`, `;` or a pipe)."""
    commands = []
    for block in bash_blocks(text):
        for line in block.splitlines():
            for part in re.split(r"&&|;|\|", line.split(" #")[0]):
                words = part.split()
                if "rada-export" in words:
                    commands.append(" ".join(words[words.index("rada-export"):]))
    return commands


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    blocks = bash_blocks(section("Set up"))
    assert [b.strip() for b in blocks] == ["pip install -e '.[export,cpu]' && rada-export demo",
                                           "pip install -e '.[dev]' && pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^pip install -e '\.\[dev\]' && pytest$", ci, re.M), "CI must run the README's test command as written"


def test_readme_is_a_front_page():
    size = len(README.encode("utf-8"))
    assert size <= README_LIMIT, f"README.md is {size} bytes (limit {README_LIMIT}): move reference material to docs/"


@pytest.mark.parametrize("name", ["README.md"] + list(DOCS))
def test_every_command_is_a_registered_cli_command_with_those_options(name):
    from typer.main import get_command

    from rada_export.cli.app import app

    cli = get_command(app)
    text = README if name == "README.md" else DOCS[name]
    # README: any line that starts with the command too, as before the docs existed.
    lines = shown_commands(text) + (re.findall(r"^rada-export .*$", README, re.M) if name == "README.md" else [])
    assert lines or name != "README.md", "the README shows no rada-export command"
    for line in lines:
        words = shlex.split(line.split(" #")[0])
        if len(words) > 1 and words[1] in ("--help", "--version"):
            continue
        assert len(words) > 1, f"{name}: bare `rada-export` without a command: {line}"
        command = cli.commands.get(words[1])
        assert command is not None, f"{name} uses unknown command: {line}"
        known = {opt for param in command.params for opt in list(param.opts) + list(getattr(param, "secondary_opts", []))}
        used = {w.split("=")[0] for w in words[2:] if w.startswith("--")} - {"--help"}
        assert used <= known, f"{name} line uses unknown option(s) {used - known}: {line}"


def test_outputs_shown_in_the_readme_are_filled_in():
    for name, text in [("README.md", README), *DOCS.items()]:
        assert "<!-- output:" not in text, f"an output placeholder in {name} was never filled with real output"


def test_workflow_commands_run_as_written(tmp_path):
    lines = [l for block in bash_blocks(section("Workflow")) for l in block.splitlines() if l.strip()]
    assert len(lines) >= 8
    assert lines[0].startswith("rada-export demo --quick"), "the workflow starts from the quick demo's images"
    assert sum(README_WORKFLOW_MODEL in l for l in lines) == 1, f"the workflow's train line names {README_WORKFLOW_MODEL}"
    for line in lines:
        run = line.replace(README_WORKFLOW_MODEL, TEST_WORKFLOW_MODEL)
        expected = int(EXPECTED_EXIT.search(line).group(1)) if EXPECTED_EXIT.search(line) else 0
        result = subprocess.run(run, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert result.returncode == expected, f"{run}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    bundle = tmp_path / "bundle"
    assert (bundle / "model.int8.onnx").is_file() and (bundle / "model.fp16.onnx").is_file()
    assert '"rada-tiny-ViT"' in (bundle / "manifest.json").read_text(), "the bundle was not made from the tiny model"
