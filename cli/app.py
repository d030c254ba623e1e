"""The Typer application: one command per step of the workflow."""

from __future__ import annotations

from typing import Optional

import typer

from rada_export import __version__

from . import bench as bench_cmd
from . import calibrate as calibrate_cmd
from . import demo as demo_cmd
from . import onnx as onnx_cmd
from . import pack as pack_cmd
from . import predict as predict_cmd
from . import train as train_cmd
from . import trt as trt_cmd
from .common import Command

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


app.command("demo", cls=Command)(demo_cmd.demo)
app.command("train", cls=Command)(train_cmd.train)
app.command("onnx", cls=Command)(onnx_cmd.onnx)
app.command("verify", cls=Command)(onnx_cmd.verify)
app.command("predict", cls=Command)(predict_cmd.predict)
app.command("calibrate", cls=Command)(calibrate_cmd.calibrate)
app.command("trt", cls=Command)(trt_cmd.trt)
app.command("bench", cls=Command)(bench_cmd.bench)
app.command("pack", cls=Command)(pack_cmd.pack)


def main() -> None:
    """The console script. Usage errors (an unknown option, a value Click refuses) print as Click
    prints them; with ``--json`` anywhere on the line they also print a JSON error on stdout, as
    every other error does (cli/common.py), so a caller that parses stdout always gets JSON."""
    import sys

    from .common import print_json

    args = sys.argv[1:]
    try:
        code = app(args=args, prog_name="rada-export", standalone_mode=False)
    except typer.Abort:
        typer.echo("Aborted!", err=True)
        sys.exit(1)
    except Exception as err:
        # Click's own errors (Typer vendors Click, so they are matched by what they carry): a usage
        # error has exit code 2 and shows itself.
        show, exit_code = getattr(err, "show", None), getattr(err, "exit_code", None)
        if show is None or not isinstance(exit_code, int):
            raise
        if exit_code == 2 and "--json" in args:
            print_json({"error": err.format_message(), "fix": "see `rada-export --help` (or COMMAND --help)",
                        "exit_code": exit_code})
        try:
            from typer import rich_utils

            rich_utils.rich_format_error(err)  # as Typer shows it when it handles the error itself
        except ImportError:
            show()
        sys.exit(exit_code)
    sys.exit(code if isinstance(code, int) else 0)

if __name__ == "__main__":
    main()
