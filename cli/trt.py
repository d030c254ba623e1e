"""`rada-export trt`: a TensorRT engine for this GPU or Jetson, from a bundle, with its parity table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import console, err_console, handle_errors, make_table, print_json, reporter
from .flags import CommandFlags

# BuildRequest fields (and calibration's, for --calib-images) whose option is spelled otherwise.
FIELDS = {"workspace_gb": "--workspace", "verify=False": "--no-verify", "images": "--calib-images"}


@handle_errors(fields=FIELDS)
def trt(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder (rada-export onnx --out)."),
    precision: str = typer.Option("fp16", "--precision", help="fp16 (the bundle's FP16 graph), int8 (its Q/DQ graph) or fp32."),
    graph: str = typer.Option("model", "--graph", help="model (fused), image_encoder, text_encoder or head."),
    min_batch: int = typer.Option(1, "--min-batch", help="Smallest batch the engine accepts."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="Batch TensorRT tunes for (default 8, within min..max)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest batch (default: the bundle's max_batch)."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="Builder workspace limit in GB (default: TensorRT's)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file: read if present, updated after the build (faster rebuilds)."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Jetson AGX Orin / Orin NX: build for this DLA core (fixed batch)."),
    gpu_fallback: bool = typer.Option(False, "--gpu-fallback", help="With --dla-core: run layers the DLA cannot on the GPU."),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", help="INT8: calibrate on these images first when the bundle has no Q/DQ graph."),
    max_classes: Optional[int] = typer.Option(None, "--max-classes", help="Head engines: most classes per call (default max(K, 256))."),
    max_texts: Optional[int] = typer.Option(None, "--max-texts", help="Text-encoder engines: most prompts per call (default max(K x templates, 256))."),
    tf32: Optional[bool] = typer.Option(None, "--tf32/--no-tf32", help="Allow TF32 in FP32 layers (default: off for fp32 engines, on otherwise)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the parity check against ONNX Runtime (not recommended)."),
    check: bool = typer.Option(False, "--check", help="Only lint every graph against TensorRT's parser rules (no TensorRT or GPU needed); exit 2 when one would be rejected."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the build's plan (profiles, flags, lint, parity inputs, engine path, its JSON) without TensorRT: TensorRT, the GPU and DLA cores missing here are listed, not fatal; exit 2 only when the build would not start for another reason."),
    trt_version: Optional[str] = typer.Option(None, "--trt-version", help="With --check: the TensorRT release to check against (default 10.3, JetPack 6.1/6.2)."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
):
    """Build a TensorRT engine for this GPU (or Jetson) from a bundle and check it against ONNX Runtime FP32.

    The engine goes to BUNDLE/engines/<gpu>-sm<cc>-trt<version>/<graph>.<precision>.engine, with a
    JSON beside it (TensorRT version, GPU, profiles, flags, the ONNX file's sha256). Engines only run
    where they were built: run this command on the target device.

    Example: rada-export trt --bundle bundle/ --precision fp16 --max-batch 8 --timing-cache trt.cache

    `--check` lints every graph of the bundle against the documented rules of TensorRT's ONNX parser
    (one line per finding: graph, node, rule, fix) without TensorRT or a GPU; the build runs the same
    lint on the graph it builds.

    `--dry-run` prints the plan the build would follow, made by the same code, and runs on a host:
    TensorRT, a GPU and DLA cores it does not find are listed as "missing here" (exit 0); it exits 2
    with the reasons when the build would not start for anything else (options, bundle, lint, onnx,
    onnxruntime).
    """
    from rada_export.errors import RadaError

    if check:
        if dry_run:
            raise RadaError("--check and --dry-run are two different reports", "pass one of them")
        return _check(bundle, trt_version, json_out)
    if trt_version is not None:
        raise RadaError("--trt-version only applies with --check (a build uses the installed TensorRT)",
                        "add --check, or drop --trt-version")
    from rada_export.errors import VerificationError
    from rada_export.runtimes.parity import ParityReport
    from rada_export.tensorrt.plan import BuildRequest, plan_build

    req = BuildRequest(
        bundle=bundle, graph=graph, precision=precision, min_batch=min_batch, opt_batch=opt_batch, max_batch=max_batch,
        workspace_gb=workspace, timing_cache=timing_cache, dla_core=dla_core, gpu_fallback=gpu_fallback, tf32=tf32,
        max_classes=max_classes, max_texts=max_texts, calib_images=calib_images, verify=not no_verify,
    )
    if dry_run:
        return _dry_run(req, json_out)
    from rada_export.tensorrt.build import build_engine

    from .onnx import print_report

    plan = plan_build(req)  # the plan --dry-run shows; the build runs from it
    title = f"parity: TensorRT {precision} against ONNX Runtime FP32 (CPU)"
    try:
        # build_engine checks the request, the ONNX file's checksum and its operators before it
        # imports TensorRT, then every prerequisite at once (TensorRT, libcudart, driver, GPU, onnxruntime), then builds.
        result = build_engine(req, reporter=reporter(quiet or json_out), plan=plan)
    except VerificationError as err:  # RadaError (exit 2) is handle_errors' job
        engine_parity = isinstance(err.report, ParityReport)  # else: calibration's own report (--calib-images)
        if json_out:
            print_json({"engine": None, "verification": err.report.to_dict() if hasattr(err.report, "to_dict") else None})
        elif engine_parity:
            print_report(err.report, title)
        err_console.print(f"[bold red]verification failed:[/bold red] {escape(str(err))}")
        raise typer.Exit(1) from None

    flags = CommandFlags(trt, FIELDS)  # the notes name request fields, as errors do: shown as this command's flags
    warnings = [flags.text(w) for w in result.warnings]
    if json_out:
        print_json({**result.to_dict(), "warnings": warnings})
        return
    if result.report is not None:
        print_report(result.report, title)
    meta = result.meta
    profile = "; ".join(f"{name} {p['min']}..{p['max']} (opt {p['opt']})" for name, p in meta["profiles"][0].items())
    rows = [
        ["engine", str(result.engine_path)],
        ["size", f"{meta['engine_size'] / 2**20:.1f} MiB"],
        ["TensorRT", meta["tensorrt_version"]],
        ["GPU", f"{meta['gpu_name']} (sm {meta['compute_capability']})"],
        ["precision", f"{meta['precision']} ({'strongly' if meta['build_flags']['strongly_typed'] else 'weakly'} typed"
                      f"{', TF32' if meta['build_flags']['tf32'] else ''})"],
        ["profile", profile],
        ["build time", f"{result.build_seconds:.1f} s" + (" (timing cache reused)" if meta["build_flags"]["timing_cache_reused"] else "")],
    ]
    verification = meta.get("verification") or {}
    rows.append(["parity", str(verification.get("status", "parity not checked"))
                 + (f" ({flags.text(str(verification['reason']))})" if verification.get("reason") else "")])
    if meta.get("dla_core") is not None:
        rows.append(["DLA", f"core {meta['dla_core']}" + (", GPU fallback" if meta["build_flags"]["gpu_fallback"] else "")])
    console.print(make_table(f"TensorRT engine: {meta['graph']}", ["", ""], [[k, escape(v)] for k, v in rows]))
    for warning in warnings:
        err_console.print(f"[yellow]note:[/yellow] {escape(warning)}")


def _check(bundle: Path, trt_version: Optional[str], json_out: bool) -> None:
    from rada_export.tensorrt.lint import lint_bundle
    from rada_export.tensorrt.ops import DEFAULT_TARGET

    report = lint_bundle(bundle, trt_version or DEFAULT_TARGET)
    if json_out:
        print_json(report.to_dict())
    else:
        for finding in report.findings:
            console.print(escape(finding.line()), soft_wrap=True)
        for note in report.notes:
            err_console.print(f"[yellow]note:[/yellow] {escape(note)}")
        verdict = "passes" if report.ok else f"would be rejected ({len(report.findings)} finding{'s' if len(report.findings) != 1 else ''})"
        console.print(f"TensorRT {report.target} check of {len(report.graphs)} graph(s) in {escape(str(bundle))}: {verdict}", soft_wrap=True)
    if not report.ok:
        raise typer.Exit(2)


def _dry_run(req, json_out: bool) -> None:
    from rada_export.tensorrt.dry_run import dry_run

    result = dry_run(req)
    flags = CommandFlags(trt, FIELDS)
    if json_out:
        print_json(result.to_dict())
    else:
        plan = result.plan
        rows = []
        if plan:
            rows += [["graph", f"{plan['graph']} ({plan['precision']}) from {plan['onnx_file'] or 'the graph calibration will make'}"]]
            for name, p in plan["inputs"].items():
                shape = {k: "x".join(map(str, p[k])) for k in ("min", "opt", "max")}
                rows += [[f"input {name}", f"{p['dtype']} [{', '.join(map(str, p['dims']))}]"],
                         [f"profile {name}", f"min {shape['min']}, opt {shape['opt']}, max {shape['max']}"]]
            rows += [["typing", plan["typing"]], ["TF32", "on" if plan["build_flags"]["tf32"] else "off"]]
            if plan["dla"]:
                rows.append(["DLA", f"core {plan['dla']['core']}, fixed batch {plan['dla']['batch']}"
                                    + (", GPU fallback" if plan["dla"]["gpu_fallback"] else "")])
            lint = plan["lint"]
            rows.append(["lint", lint["skipped"] and f"skipped: {lint['skipped']}"
                         or f"TensorRT {lint['target']}: {len(lint['findings'])} finding(s)"])
            parity = plan["parity"]
            if parity:
                rows.append(["parity", f"{parity['inputs']}; "
                                       + ", ".join(f"{c['label']}: {c['rows']} in chunks of {c['chunk']}" for c in parity["checks"])
                                       + f"; {parity['thresholds']}" + (f"; top-1 {parity['top1']}" if parity["top1"] else "")])
            else:
                rows.append(["parity", "not checked (--no-verify)"])
            rows.append(["engine", f"{plan['bundle']}/{plan['engine']['folder']}/{plan['engine']['file']} (+ {plan['engine']['json']})"])
        rows += [["found", item] for item in result.found]
        rows += [["missing here", f"{m.component}: {m.detail}"] for m in result.missing_here]
        if plan:
            console.print(make_table("TensorRT build plan (dry run)", ["", ""], [[k, escape(flags.text(str(v)))] for k, v in rows]))
        for note in (plan.get("notes") or []):
            err_console.print(f"[yellow]note:[/yellow] {escape(flags.text(note))}")
        for reason in result.reasons:
            err_console.print(f"[bold red]would not build:[/bold red] {escape(flags.text(reason))}", soft_wrap=True)
        verdict = "a build would start" + (" on a device with what is missing here" if result.missing_here else "")
        console.print(verdict if result.would_build else "the build would not start", soft_wrap=True)
    if not result.would_build:
        raise typer.Exit(2)
