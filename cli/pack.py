"""`rada-export pack`: a device bundle with only the precisions and graphs a device runs."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .common import console, handle_errors, make_table, print_json


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@handle_errors(fields={"precisions": "--precision", "graphs": "--graph"})
def pack(
    bundle: Path = typer.Option(..., "--bundle", help="The bundle to pack (left as it is)."),
    out: Path = typer.Option(..., "--out", help="The device bundle's folder (new, empty, or a bundle to replace with --force)."),
    precision: Optional[str] = typer.Option(None, "--precision", metavar="LIST",
                                            help="Precisions to keep, comma-separated: fp32, fp16, int8 (default: all the "
                                                 "bundle has). The text encoder is kept in FP32, the only one it runs in."),
    graph: Optional[str] = typer.Option(None, "--graph", metavar="LIST",
                                        help="Graphs to keep, comma-separated: model, image_encoder, text_encoder, head "
                                             "(default: all). Without text_encoder, set_classes cannot run on the device."),
    force: bool = typer.Option(False, "--force", help="Replace --out when it is a bundle of ours (never other files)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress lines."),
):
    """Write a device bundle holding only the graphs it runs, with its own manifest and checksums.

    Example: rada-export pack --bundle bundle/ --out device/ --precision fp16

    Example: rada-export pack --bundle bundle/ --out device/ --precision int8 --graph model,image_encoder,text_encoder
    """
    from rada_export.runtimes.bundle.layout import GRAPH_NAMES, PRECISIONS
    from rada_export.runtimes.bundle.pack import PackRequest, pack_bundle, parse_list

    request = PackRequest(bundle=bundle, out=out, precisions=parse_list(precision, PRECISIONS, "precisions"),
                          graphs=parse_list(graph, GRAPH_NAMES, "graphs"), force=force)
    show = None if (quiet or json_out) else (lambda rel: console.print(f"packed {rel}"))
    result = pack_bundle(request, progress=show)
    if json_out:
        print_json(result.to_dict())
        return
    rows = [["graphs kept", ", ".join(result.graphs)], ["graphs left out", ", ".join(result.dropped) or "none"],
            ["engines carried", ", ".join(result.engines) or "none"], ["files", str(result.files)], ["size", f"{_mb(result.bytes)} (source {_mb(result.source_bytes)})"]]
    console.print(make_table(f"device bundle {result.out}", ["", ""], rows))
