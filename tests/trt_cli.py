"""`rada-export trt` through Typer's test runner, where TensorRT cannot be imported."""

from __future__ import annotations

import sys

import typer
from typer.testing import CliRunner


def _app() -> typer.Typer:
    from rada_export.cli import trt as trt_cmd

    app = typer.Typer()

    @app.callback()  # a group, so that the command is invoked by name as under `rada-export`
    def _root():
        pass

    app.command("trt")(trt_cmd.trt)
    return app


def run_trt_without_tensorrt(args, monkeypatch) -> tuple[int, str]:
    """(exit code, output) of `rada-export trt ARGS` with `import tensorrt` failing, as where TensorRT
    is not installed."""
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result = CliRunner().invoke(_app(), ["trt", *map(str, args)])
    return result.exit_code, result.output
