"""The README's commands are the ones that run: set-up, workflow, and the outputs shown."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")
EXPECTED_EXIT = re.compile(r"#\s*exits (\d+)")


def section(title: str) -> str:
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, re.S)


def test_exactly_two_setup_commands_and_ci_runs_the_test_one():
    blocks = bash_blocks(section("Set up"))
    assert [b.strip() for b in blocks] == ["pip install -e '.[export,cpu]' && rada-export demo",
                                           "pip install -e '.[dev]' && pytest"]
    ci = (REPO / ".ci" / "run").read_text()
    assert re.search(r"^pip install -e '\.\[dev\]' && pytest$", ci, re.M), "CI must run the README's test command as written"


def test_every_command_is_a_registered_cli_command_with_those_options():
    from typer.main import get_command

    from rada_export.cli.app import app

    cli = get_command(app)
    for line in re.findall(r"^rada-export .*$", README, re.M):
        words = shlex.split(line.split("#")[0])
        command = cli.commands.get(words[1])
        assert command is not None, f"README uses unknown command: {line}"
        known = {opt for param in command.params for opt in getattr(param, "opts", [])}
        used = {w.split("=")[0] for w in words[2:] if w.startswith("--")}
        assert used <= known, f"README line uses unknown option(s) {used - known}: {line}"


def test_outputs_shown_in_the_readme_are_filled_in():
    assert "<!-- output:" not in README, "a README output placeholder was never filled with real output"


@pytest.mark.slow
def test_workflow_commands_run_as_written(tmp_path):
    lines = [l for block in bash_blocks(section("Workflow")) for l in block.splitlines() if l.strip()]
    assert len(lines) >= 8
    for line in lines:
        expected = int(EXPECTED_EXIT.search(line).group(1)) if EXPECTED_EXIT.search(line) else 0
        result = subprocess.run(line, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=1200)
        assert result.returncode == expected, f"{line}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert (tmp_path / "bundle" / "model.int8.onnx").is_file()
