"""`rada-export trt`: a TensorRT engine for this GPU or Jetson, from a bundle, with its parity table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from .common import console, err_console, handle_errors, make_table, print_json, reporter
from .flags import CommandFlags

# BuildRequest fields (and calibration's, for --calib-images) whose option is spelled otherwise.
FIELDS = {"workspace_gb": "--workspace", "verify=False": "--no-verify", "images": "--images", "calib_images": "--images"}


@handle_errors(fields=FIELDS)
def trt(
    bundle: Path = typer.Option(..., "--bundle", help="Bundle folder (rada-export onnx --out)."),
    precision: str = typer.Option("fp16", "--precision", help="fp16 (the bundle's FP16 graph), int8 (its Q/DQ graph) or fp32."),
    graph: str = typer.Option("all", "--graph", help="all (the graphs the runtime runs: model, image_encoder for test-time adaptation, text_encoder for set_classes), or comma-separated names among model, image_encoder, text_encoder, head."),
    min_batch: int = typer.Option(1, "--min-batch", help="Smallest batch the engine accepts."),
    opt_batch: Optional[int] = typer.Option(None, "--opt-batch", help="Batch TensorRT tunes its kernels for (default 1, a camera's; pass e.g. 8 for batch work)."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Largest batch (default: the bundle's max_batch)."),
    workspace: Optional[float] = typer.Option(None, "--workspace", help="Builder workspace limit in GB (default: TensorRT's)."),
    timing_cache: Optional[Path] = typer.Option(None, "--timing-cache", help="Timing cache file: read if present, updated after the build (faster rebuilds)."),
    dla_core: Optional[int] = typer.Option(None, "--dla-core", help="Jetson AGX Orin / Orin NX: build for this DLA core (fixed batch; FP16 only: INT8 on the DLA needs a calibration cache, not Q/DQ)."),
    gpu_fallback: bool = typer.Option(False, "--gpu-fallback", help="With --dla-core: run layers the DLA cannot on the GPU."),
    images: Optional[Path] = typer.Option(None, "--images", help="INT8: calibrate on these images (a folder) first when the bundle has no Q/DQ graph."),
    calib_images: Optional[Path] = typer.Option(None, "--calib-images", hidden=True, help="The former spelling of --images."),
    max_classes: Optional[int] = typer.Option(None, "--max-classes", help="Head engines: most classes per call (default max(K, 256))."),
    max_texts: Optional[int] = typer.Option(None, "--max-texts", help="Text-encoder engines: most prompts per call (default max(K x templates, 256))."),
    tf32: Optional[bool] = typer.Option(None, "--tf32/--no-tf32", help="Allow TF32 in FP32 layers (default: off for fp32 engines, on otherwise)."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Skip the parity check against ONNX Runtime (not recommended)."),
    check: bool = typer.Option(False, "--check", help="Only lint every graph against TensorRT's parser rules (no TensorRT or GPU needed); exit 2 when one would be rejected."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only print the build's plan (profiles, flags, lint, parity inputs, engine path, its JSON) without TensorRT: TensorRT, the GPU and DLA cores missing here are listed, not fatal; exit 2 only when the build would not start for another reason."),
    trt_version: Optional[str] = typer.Option(None, "--trt-version", help="With --check: the TensorRT release to check against (default 10.3, JetPack 6.1/6.2)."),
    trust_engine: Optional[Path] = typer.Option(None, "--trust-engine", help="Only record ENGINE (with its JSON) as one this device may load: an engine you built yourself on an identical device and copied here. Engines are executable code: the runtime loads only those built here or recorded so."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors and the result."),
):
    """Build TensorRT engines for this GPU (or Jetson) from a bundle and check them against ONNX Runtime FP32.

    By default (--graph all) an engine for every graph the runtime runs: the fused model (predict),
    the image encoder (test-time adaptation, predict after set_classes) and the text encoder
    (set_classes); graphs the bundle has in FP32 only get an FP32 engine. Each engine goes to
    BUNDLE/engines/<gpu>-sm<cc>-trt<version>/<graph>.<precision>.engine, with a JSON beside it
    (TensorRT version, GPU, profiles, flags, the ONNX file's and the engine's sha256). Engines only
    run where they were built: run this command on the target device. It ends with the
    `rada-export predict` command and the `load_bundle(...)` line that run on them.

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

    if images is not None and calib_images is not None and images != calib_images:
        raise RadaError("--images and --calib-images (its former spelling) name different folders", "pass --images once")
    calib_images = images if images is not None else calib_images
    if trust_engine is not None:
        return _trust(trust_engine, json_out)
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
    builds = _graph_builds(req, graph)
    flags = CommandFlags(trt, FIELDS)  # the notes name request fields, as errors do: shown as this command's flags
    notes = [flags.text(b.note) for b in builds if b.note]
    requests = [b.request for b in builds if not b.skipped]
    if dry_run:
        return _dry_run(requests, json_out, several=len(builds) > 1, notes=notes)
    if not json_out:
        for note in notes:
            err_console.print(f"[yellow]note:[/yellow] {escape(note)}")
    from rada_export.tensorrt.build import build_engine

    from .onnx import print_report

    plans = [plan_build(r) for r in requests]  # every graph's plan (what --dry-run shows) before the first build
    results, failed = [], []
    for request, plan in zip(requests, plans):
        title = f"parity: TensorRT {request.precision} {request.graph} against ONNX Runtime FP32 (CPU)"
        try:
            # build_engine checks the request, the ONNX file's checksum and its operators before it
            # imports TensorRT, then every prerequisite at once (TensorRT, libcudart, driver, GPU, onnxruntime), then builds.
            result = build_engine(request, reporter=reporter(quiet or json_out), plan=plan)
        except VerificationError as err:  # RadaError (exit 2) is handle_errors' job
            engine_parity = isinstance(err.report, ParityReport)  # else: calibration's own report (--calib-images)
            failed.append({"graph": request.graph, "precision": request.precision, "error": str(err),
                           "verification": err.report.to_dict() if hasattr(err.report, "to_dict") else None})
            if not json_out:
                if engine_parity:
                    print_report(err.report, title)
                err_console.print(f"[bold red]verification failed:[/bold red] {escape(str(err))}")
            continue
        results.append(result)
        if not json_out:
            if result.report is not None:
                print_report(result.report, title)
            _print_engine(result, flags)
    _finish(bundle, precision, results, failed, flags, json_out, notes)


def _graph_builds(req, graph: str):
    """The engines this call builds (``--graph all``: the runtime's graphs); the plan refuses a missing bundle."""
    from dataclasses import replace

    from rada_export.runtimes.manifest import read_manifest
    from rada_export.tensorrt.graphs import GraphBuild, parse_graphs, plan_graphs

    names = parse_graphs(graph)  # the option first: a bad name is refused before the bundle is read
    if not Path(req.bundle).is_dir():
        return [GraphBuild(replace(req, graph=names[0]))]
    return plan_graphs(req, graph, read_manifest(req.bundle))


def _print_engine(result, flags: CommandFlags) -> None:
    meta = result.meta
    profile = "; ".join(f"{name} {p['min']}..{p['max']} (opt {p['opt']})" for name, p in meta["profiles"][0].items())
    rows = [
        ["engine", str(result.engine_path)],
        ["size", f"{meta['engine_size'] / 2**20:.1f} MiB"],
        ["TensorRT", meta["tensorrt_version"]],
        ["GPU", f"{meta['gpu_name']} (sm {meta['compute_capability']})"],
        ["precision", precision_label(meta["precision"], meta["build_flags"])],
        ["profile", profile],
        ["build time", f"{result.build_seconds:.1f} s" + (" (timing cache reused)" if meta["build_flags"]["timing_cache_reused"] else "")],
    ]
    verification = meta.get("verification") or {}
    rows.append(["parity", str(verification.get("status", "parity not checked"))
                 + (f" ({flags.text(str(verification['reason']))})" if verification.get("reason") else "")])
    if meta.get("dla_core") is not None:
        rows.append(["DLA", f"core {meta['dla_core']}" + (", GPU fallback" if meta["build_flags"]["gpu_fallback"] else "")])
    console.print(make_table(f"TensorRT engine: {meta['graph']}", ["", ""], [[k, escape(v)] for k, v in rows]))
    for warning in result.warnings:
        err_console.print(f"[yellow]note:[/yellow] {escape(flags.text(warning))}")


def _finish(bundle: Path, precision: str, results, failed, flags: CommandFlags, json_out: bool, notes: list[str]) -> None:
    """After the builds: the runtime paths still on ONNX Runtime, and the lines that use the engines."""
    from rada_export.runtimes.engine_layout import EngineEnvironment, is_trusted_engine, scan_engines
    from rada_export.runtimes.engine_selection import paths_without_engine, select_engines
    from rada_export.runtimes.manifest import read_manifest
    from rada_export.tensorrt.graphs import usage_lines

    uncovered: list[str] = []
    if results:
        meta = results[0].meta
        here = EngineEnvironment(str(meta["tensorrt_version"]), str(meta["gpu_name"]), str(meta["compute_capability"]))
        placements = select_engines(read_manifest(bundle), scan_engines(bundle), here, precision, trusted=is_trusted_engine)
        uncovered = paths_without_engine(placements)
    predict_line, load_line = usage_lines(bundle, precision)
    if json_out:
        print_json({"engines": [{**r.to_dict(), "warnings": [flags.text(w) for w in r.warnings]} for r in results], "notes": notes,
                    "failed": failed, "without_engine": uncovered, "predict": predict_line, "load_bundle": load_line})
    else:
        for line in uncovered:
            err_console.print(f"[yellow]warning:[/yellow] {escape(line)}", soft_wrap=True)
        if results:
            console.print("use them:", soft_wrap=True)
            console.print(f"  {escape(predict_line)}", soft_wrap=True)
            console.print(f"  {escape(load_line)}", soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def precision_label(precision: str, build_flags: dict) -> str:
    """'fp16 (strongly typed, TF32)', or for a DLA engine of TensorRT 10.x what its weak typing was held to."""
    pinned = build_flags.get("dla_fp32_pinned_layers")
    if build_flags.get("strongly_typed"):
        typing = "strongly typed"
    elif pinned is not None:
        typing = f"weakly typed for the DLA, OBEY_PRECISION_CONSTRAINTS: {pinned} FP32 layers pinned"
    else:
        typing = "weakly typed"
    return f"{precision} ({typing}{', TF32' if build_flags.get('tf32') else ''})"


def _trust(engine: Path, json_out: bool) -> None:
    from rada_export.runtimes.engine_layout import trust_engine_file

    digest, where = trust_engine_file(engine)
    if json_out:
        print_json({"engine": str(engine), "sha256": digest, "trusted_engines": str(where)})
    else:
        console.print(f"recorded {escape(str(engine))} (sha256 {digest[:12]}...) in {escape(str(where))}: this device may load it",
                      soft_wrap=True)


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


def _dry_run(requests, json_out: bool, several: bool, notes: list[str]) -> None:
    """One plan per graph; exit 2 when any build would not start."""
    from rada_export.runtimes.engine_selection import RUNTIME_GRAPHS, RUNTIME_PATHS
    from rada_export.tensorrt.dry_run import dry_run

    results = [(request.graph, dry_run(request)) for request in requests]
    would_build = bool(results) and all(r.would_build for _, r in results)
    planned = {graph for graph, _ in results}
    unplanned = [g for g in RUNTIME_GRAPHS if g not in planned]
    if json_out:
        if several:
            print_json({"would_build": would_build, "graphs": {graph: r.to_dict() for graph, r in results}, "notes": notes,
                        "without_engine": [f"{RUNTIME_PATHS[g]} ({g})" for g in unplanned]})
        else:
            print_json(results[0][1].to_dict())
    else:
        flags = CommandFlags(trt, FIELDS)
        for note in notes:
            err_console.print(f"[yellow]note:[/yellow] {escape(note)}")
        for index, (graph, result) in enumerate(results):
            _print_plan(graph, result, flags, device=index == 0)
        for graph in unplanned:  # a path of the runtime this call leaves on ONNX Runtime
            err_console.print(f"[yellow]note:[/yellow] without a {graph} engine, {RUNTIME_PATHS[graph]} runs on ONNX Runtime",
                              soft_wrap=True)
        verdict = "a build would start" + (" on a device with what is missing here"
                                           if any(r.missing_here for _, r in results) else "")
        console.print(verdict if would_build else "the build would not start", soft_wrap=True)
    if not would_build:
        raise typer.Exit(2)


def _print_plan(graph: str, result, flags: CommandFlags, device: bool) -> None:
    """One graph's plan as a table; what is found and missing on this machine only with the first."""
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
    if device:
        rows += [["found", item] for item in result.found]
        rows += [["missing here", f"{m.component}: {m.detail}"] for m in result.missing_here]
    if plan:
        console.print(make_table(f"TensorRT build plan (dry run): {graph}", ["", ""],
                                 [[k, escape(flags.text(str(v)))] for k, v in rows]))
    for note in (plan.get("notes") or []):
        err_console.print(f"[yellow]note:[/yellow] {escape(flags.text(note))}")
    for reason in result.reasons:
        err_console.print(f"[bold red]would not build ({graph}):[/bold red] {escape(flags.text(reason))}", soft_wrap=True)
