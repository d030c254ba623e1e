"""The Typer application: one command per step of the workflow."""

from __future__ import annotations

from typing import Optional

import typer

from rada_export import __version__

from . import bench as bench_cmd
from . import calibrate as calibrate_cmd
from . import demo as demo_cmd
from . import onnx as onnx_cmd
from . import predict as predict_cmd
from . import train as train_cmd
from . import trt as trt_cmd

app = typer.Typer(
    name="rada-export",
    help="Train, export and deploy CLIP + RAda heads: ONNX, FP16/INT8, TensorRT, and a torch-free runtime.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"rada-export {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


app.command("demo")(demo_cmd.demo)
app.command("train")(train_cmd.train)
app.command("onnx")(onnx_cmd.onnx)
app.command("verify")(onnx_cmd.verify)
app.command("predict")(predict_cmd.predict)
app.command("calibrate")(calibrate_cmd.calibrate)
app.command("trt")(trt_cmd.trt)
app.command("bench")(bench_cmd.bench)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
