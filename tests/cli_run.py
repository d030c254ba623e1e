"""The CLI through Typer's test runner, and the helpers its tests share."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from rada_export.cli.app import app


def invoke(*args, env: dict | None = None):
    """``rada-export ARGS`` in this process; ``env``: extra environment (e.g. a wider terminal)."""
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def flat(text: str) -> str:
    """``text`` with every run of whitespace as one space: Rich wraps long messages."""
    return " ".join(text.split())


def random_image(path: Path, size: tuple[int, int] = (40, 50), seed: int = 0) -> Path:
    """A seeded random RGB PNG at ``path``."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
    return path
