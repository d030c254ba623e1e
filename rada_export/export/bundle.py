"""`rada-export onnx`: a head plus its open_clip model in, a verified bundle folder out.

Everything is written to a temporary folder beside the target and renamed at the end, so a failed
export leaves nothing half-written.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoint import HeadCheckpoint, HeadMetadata, load_clip_for_checkpoint, load_head, save_head, tool_versions
from ..clip import LoadedClip, check_rebuild
from ..errors import RadaError, VerificationError
from ..head import RAdaHead
from ..progress import SILENT, Reporter
from ..prompts import parse_class_names, text_features, validate_templates
from ..runtimes.bundle import layout
from ..runtimes.bundle import manifest as mf
from ..runtimes.bundle import swap as replace
from ..runtimes.bundle.ownership import bundle_verdict
from ..runtimes.bundle.tokenizers import CLIP_BPE_VOCAB, KIND_CLIP_BPE
from ..runtimes.parity import ParityReport
from . import fp16 as fp16_mod
from .frames import CHANNEL_ORDERS, FramesConfig, prepend_frames
from . import reparam
from .modules import FusedModel, HeadGraph, ImageEncoder, TextEncoder
from ..memory import parameter_bytes
from .onnx_io import DEFAULT_OPSET, TWO_GB, GraphSpec, export_module, graph_io, load_graph, save_graph, check_graph
from .verify import verify_bundle

ENGINES_DIR = layout.ENGINES_DIR  # TensorRT engines built into a bundle (rada-export trt)
MAX_FRAME_SIDE = mf.MAX_FRAME_SIDE


@dataclass
class ExportRequest:
    out: Path
    ckpt: Path | None = None
    model: str | None = None
    pretrained: str | None = None
    pretrained_cfg: str | None = None
    classes: Sequence[str] | str | Path | None = None
    templates: Sequence[str] | None = None
    opset: int = DEFAULT_OPSET
    max_batch: int = 32
    fp16: bool = False
    embed_preprocess: bool = False
    frame_size: tuple[int, int] | None = None  # (height, width) of the camera frames, with embed_preprocess
    channel_order: str = "rgb"  # of the frames, with embed_preprocess: rgb or bgr
    exporter: str = "torchscript"
    force: bool = False
    verify: bool = True
    verify_images: Sequence[Path] = ()
    external_data_threshold: int = TWO_GB


@dataclass
class ExportResult:
    bundle: Path
    manifest: mf.Manifest
    report: ParityReport | None
    warnings: list[str] = field(default_factory=list)
    weights_bytes: int | None = None  # the model's FP32 weights, against which peak memory is judged


def _check_request(req: ExportRequest) -> None:
    from .. import validate

    validate.integer("max_batch", req.max_batch, 1)
    validate.opset(req.opset, req.exporter)
    if req.exporter not in ("torchscript", "dynamo"):
        raise RadaError(f"exporter {req.exporter!r} is unknown", "use exporter='torchscript' or exporter='dynamo'",
                        field="exporter")
    _check_frames(req)
    out = Path(req.out)
    if out.exists() and not out.is_dir():
        raise RadaError(f"output folder {out} is a file", "give a folder path for the bundle", field="out")
    if out.is_dir() and any(out.iterdir()):
        if not req.force:
            raise RadaError(f"bundle folder {out} already exists and is not empty",
                            "pass force=True to replace it, or choose another output folder", field="out")
        check_replaceable(out)


def check_replaceable(out: Path) -> None:
    """``force`` replaces a bundle and nothing else: the bundle owner's verdict (runtimes/bundle/
    ownership.py) must find only the files its manifest lists and engines ``trt`` recorded, at any depth."""
    verdict = bundle_verdict(out)
    if verdict is None:
        raise RadaError(f"output folder {out} is not a rada-export bundle (no {mf.MANIFEST_NAME} of ours), "
                        "so force=True will not replace it",
                        "choose another output folder; force=True only replaces a bundle folder that an export wrote",
                        field="out")
    if not verdict.replaceable:
        raise RadaError(f"output folder {out} holds files that are not part of its bundle ({verdict.describe()}), so "
                        "force=True will not replace it", "move those files out of the folder, or choose another output folder",
                        field="out")


def _check_frames(req: ExportRequest) -> None:
    if req.channel_order not in CHANNEL_ORDERS:
        raise RadaError(f"unknown channel order {req.channel_order!r}",
                        "use channel_order='rgb' (PIL, most decoders) or channel_order='bgr' (OpenCV)", field="channel_order")
    if not req.embed_preprocess and (req.frame_size is not None or req.channel_order != "rgb"):
        raise RadaError("a frame size and a channel order describe the camera frames that a graph exported with "
                        "embed_preprocess=True takes", "pass embed_preprocess=True, or leave frame size and channel order out",
                        field="frame_size" if req.frame_size is not None else "channel_order")
    if req.frame_size is not None:
        height, width = req.frame_size
        if not all(isinstance(v, int) and 1 <= v <= MAX_FRAME_SIDE for v in (height, width)):
            raise RadaError(f"frame size {width}x{height} (width x height) is out of range",
                            f"give sides from 1 to {MAX_FRAME_SIDE}, e.g. 1920x1080", field="frame_size")


def parse_frame_size(text: str) -> tuple[int, int]:
    """'1920x1080' (width x height, as cameras name them) -> (height, width)."""
    parts = text.lower().replace(" ", "").split("x")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise RadaError(f"frame_size {text!r} is not WIDTHxHEIGHT", "write it as width x height, e.g. 1920x1080",
                        field="frame_size")
    return int(parts[1]), int(parts[0])


def _resolve_head(req: ExportRequest) -> tuple[HeadCheckpoint | None, str, str | None, str | None]:
    ckpt = load_head(req.ckpt) if req.ckpt is not None else None
    meta = ckpt.metadata if ckpt else None
    model = req.model or (meta.model if meta else None)
    if model is None:
        problem = "no model name: the checkpoint does not record one" if ckpt else "no model name and no checkpoint"
        raise RadaError(problem, "pass model='ViT-B-32' or whichever open_clip architecture the head was trained on",
                        field="model")
    if meta and meta.model and req.model and req.model != meta.model:
        raise RadaError(
            f"the checkpoint was trained on {meta.model}, but model={req.model!r}",
            f"leave model out, or pass model={meta.model!r}", field="model",
        )
    if req.pretrained is not None:
        return ckpt, model, req.pretrained, req.pretrained_cfg
    # The checkpoint's own record: the same weights and the same settings tag rebuild the same model.
    pretrained = (meta.pretrained or None) if meta else None
    return ckpt, model, pretrained, req.pretrained_cfg or (meta.pretrained_cfg if meta else None)


def _class_names(req: ExportRequest, ckpt: HeadCheckpoint | None) -> list[str]:
    if req.classes is not None and not (isinstance(req.classes, (list, tuple)) and not req.classes):
        return parse_class_names(req.classes)
    if ckpt and ckpt.metadata.class_names:
        return list(ckpt.metadata.class_names)
    raise RadaError("no class names: " + ("the checkpoint has none and none were given" if ckpt else "none were given (and no checkpoint)"),
                    "pass classes='classes.txt' (one name a line) or classes='cat,dog'", field="classes")


def check_class_count(num_classes: int, num_heads: int) -> str | None:
    """Raises for heads whose attention would not fit; returns a warning for large ones (shared with the runtime)."""
    from .. import validate

    return validate.class_count(num_classes, num_heads)


def _graph_entry(path: Path, root: Path, precision: str, data: Path | None, notes: str = "") -> mf.GraphEntry:
    inputs, outputs, dtypes = graph_io(load_graph(path, with_weights=False))
    return mf.GraphEntry(
        file=path.relative_to(root).as_posix(), precision=precision, inputs=inputs, outputs=outputs,
        input_dtypes=dtypes, external_data=data.relative_to(root).as_posix() if data else None, notes=notes,
    )


def _export_graphs(
    clip: LoadedClip, head: RAdaHead, text: torch.Tensor, req: ExportRequest, root: Path, reporter: Reporter,
) -> dict[str, mf.GraphEntry]:
    height, width = clip.preprocess_config.size
    dim = clip.embed_dim
    batch = 2
    pixels = torch.randn(batch, 3, height, width)
    tokens = clip.tokenizer(["a photo of a cat.", "a dog"]).to(torch.int64)
    feats = torch.nn.functional.normalize(torch.randn(batch, dim), dim=-1)
    # Folded for export only (MobileCLIP's branches); verification compares against clip.model as built.
    model, _ = reparam.for_export(clip.model)
    # The fused graph is exported on pixels; with embedded preprocessing the frames graph (built in
    # ONNX, see frames.py) is put in front of it afterwards.
    jobs = [
        (mf.FUSED, FusedModel(model, head, text), (pixels,),
         GraphSpec(("pixels",), ("logits", "image_features"),
                   {"pixels": {0: "batch"}, "logits": {0: "batch"}, "image_features": {0: "batch"}})),
        (mf.IMAGE_ENCODER, ImageEncoder(model), (pixels,),
         GraphSpec(("pixels",), ("image_features",), {"pixels": {0: "batch"}, "image_features": {0: "batch"}})),
        (mf.TEXT_ENCODER, TextEncoder(model), (tokens,),
         GraphSpec(("token_ids",), ("text_features",), {"token_ids": {0: "num_texts"}, "text_features": {0: "num_texts"}})),
        (mf.HEAD, HeadGraph(head), (feats, text[:2] if len(text) > 1 else text),
         GraphSpec(("image_features", "text_features"), ("logits",),
                   {"image_features": {0: "batch"}, "text_features": {0: "num_classes"}, "logits": {0: "batch", 1: "num_classes"}})),
    ]
    entries: dict[str, mf.GraphEntry] = {}
    steps = len(jobs) + (2 if req.fp16 else 0)
    with reporter.task("exporting ONNX graphs", steps) as advance:
        for name, module, args, spec in jobs:
            path = root / layout.graph_file(name)
            data = export_module(module.eval(), args, path, spec, req.opset, req.exporter, req.external_data_threshold)
            if name == mf.FUSED and req.embed_preprocess:
                frames = FramesConfig(req.channel_order, req.frame_size)
                # The structure only: prepend_frames copies the model, which must not copy the weights too.
                data = save_graph(prepend_frames(load_graph(path, with_weights=False), clip.preprocess_config, frames), path,
                                  req.external_data_threshold, base_dir=path.parent)
                check_graph(path)
            entries[name] = _graph_entry(path, root, "fp32", data)
            advance(1)
        if req.fp16:
            for name in (mf.FUSED, mf.IMAGE_ENCODER):
                path16 = root / layout.graph_file(name, "fp16")
                data = fp16_mod.convert_file(root / layout.graph_file(name), path16, req.external_data_threshold)  # checks it
                entries[layout.graph_key(name, "fp16")] = _graph_entry(
                    path16, root, "fp16", data,
                    notes=fp16_mod.FP16_NOTES)
                advance(1)
    return entries


def _copy_tokenizer(clip: LoadedClip, root: Path) -> dict:
    import open_clip

    if isinstance(clip.tokenizer, open_clip.tokenizer.SimpleTokenizer):
        target = root / CLIP_BPE_VOCAB
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(open_clip.tokenizer.default_bpe(), target)
        return {"kind": KIND_CLIP_BPE, "vocab": CLIP_BPE_VOCAB, "context_length": clip.context_length}
    if isinstance(clip.tokenizer, open_clip.tokenizer.HFTokenizer):
        from .hf_tokenizer import write_hf_tokenizer

        return write_hf_tokenizer(clip.tokenizer, clip.model_name, root)
    return {"kind": type(clip.tokenizer).__name__, "context_length": clip.context_length,
            "note": "not supported by the torch-free runtime: set_classes needs the host"}


def export_bundle(req: ExportRequest, reporter: Reporter = SILENT, clip: LoadedClip | None = None) -> ExportResult:
    """Exports, checks and verifies the bundle; raises VerificationError (nothing kept) when parity fails.

    The bundle is written beside ``req.out`` and swapped in at the end (runtimes/replace.py): a
    crash at any point leaves the old bundle or the new one at the path.
    """
    replace.recover(req.out)  # leftovers of a killed run
    _check_request(req)
    ckpt, model_name, pretrained, pretrained_cfg = _resolve_head(req)
    class_names = _class_names(req, ckpt)
    templates = validate_templates(req.templates or (ckpt.metadata.templates if ckpt else None))
    if clip is None:
        # A fine-tuned checkpoint's own image encoder, else the open_clip build (load_clip).
        clip = load_clip_for_checkpoint(ckpt, model_name, pretrained, pretrained_cfg=pretrained_cfg, origin=f"checkpoint {req.ckpt}")
    if ckpt is not None and ckpt.metadata.resolved and req.pretrained is None:
        check_rebuild(clip, ckpt.metadata.resolved, f"checkpoint {req.ckpt}")
    if ckpt is not None and ckpt.head.embed_dim != clip.embed_dim:
        raise RadaError(
            f"the checkpoint's head has embedding size {ckpt.head.embed_dim}, {model_name} has {clip.embed_dim}",
            "pass the model the head was trained on", field="model",
        )
    warnings = list(clip.source.warnings) if clip.source else []
    if clip.random_weights:
        warnings.append("random CLIP weights (--pretrained none): the bundle's predictions are meaningless; "
                        "pass --pretrained openai or a weights file for a real model")
    if ckpt is None:
        head = RAdaHead(clip.embed_dim, logit_scale=clip.logit_scale)
        meta = HeadMetadata(embed_dim=clip.embed_dim, model=model_name, pretrained=clip.pretrained, source="fresh (zero-shot)")
    else:
        head, meta = ckpt.head, ckpt.metadata
        head.logit_scale = clip.logit_scale  # s is the CLIP model's constant, not a trained value
    head.eval()
    big = check_class_count(len(class_names), head.num_heads)
    if big:
        warnings.append(big)
    for w in warnings:
        reporter.log(f"[yellow]warning:[/yellow] {w}")

    out = Path(req.out)
    tmp = replace.new_staging(out)
    try:
        with torch.no_grad():
            text = text_features(clip, class_names, templates)
        entries = _export_graphs(clip, head, text, req, tmp, reporter)
        np.save(tmp / layout.TEXT_FEATURES, text.numpy().astype(np.float32))
        (tmp / layout.CLASSES_FILE).write_text("\n".join(class_names) + "\n", encoding="utf-8")
        save_head(tmp / layout.HEAD_FILE, head, HeadMetadata(
            **{**meta.__dict__, "model": model_name, "pretrained": clip.pretrained, "pretrained_cfg": clip.pretrained_cfg,
               "resolved": clip.resolved(), "class_names": class_names,
               "templates": templates, "logit_scale": clip.logit_scale}))
        tokenizer = _copy_tokenizer(clip, tmp)
        versions = {**tool_versions(), "onnx": __import__("onnx").__version__}
        manifest = mf.Manifest(
            model=model_name, pretrained=clip.pretrained, embed_dim=clip.embed_dim,
            preprocess=mf.Preprocess(**clip.preprocess_config.to_dict()), logit_scale=clip.logit_scale,
            head=mf.HeadConfig(clip.embed_dim, head.num_heads, head.temperature, clip.logit_scale),
            class_names=class_names, templates=templates, context_length=clip.context_length,
            opset=req.opset, max_batch=req.max_batch, graphs=entries, embed_preprocess=req.embed_preprocess,
            frames=FramesConfig(req.channel_order, req.frame_size).manifest_entry() if req.embed_preprocess else None,
            tokenizer=tokenizer, versions=versions, pretrained_cfg=clip.pretrained_cfg,
            resolved={**clip.resolved(), "reparameterized": reparam.has_branches(clip.model)},
            logit_bias=clip.logit_bias, probability="softmax" if clip.logit_bias is None else "sigmoid",
        )
        files = [p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file() and p.name != mf.MANIFEST_NAME]
        manifest.files = mf.checksum_files(tmp, files)
        mf.write_manifest(tmp, manifest)
        report = None
        if req.verify:
            report = verify_bundle(tmp, req.verify_images, clip=clip, reporter=reporter)
            if not report.passed:
                raise VerificationError(report)
        replace.replace_dir(tmp, out)
    except Exception as err:
        replace.discard(tmp)
        if not _write_failure(err):
            raise
        # disk full (ENOSPC), a file too large for the filesystem (EFBIG), permissions
        raise RadaError(f"could not write the bundle beside {out} ({getattr(err, 'strerror', None) or str(err)[:200]})",
                        "free disk space (or pick a filesystem that takes files over 4 GB) and rerun; "
                        "nothing was replaced", field="out") from None
    except BaseException:  # Ctrl-C: nothing half-written stays
        replace.discard(tmp)
        raise
    return ExportResult(bundle=out, manifest=manifest, report=report, warnings=warnings, weights_bytes=parameter_bytes(clip.model))



def _write_failure(err: BaseException) -> bool:
    """An error of the filesystem under the staging folder: OSError, or safetensors' own error type,
    which carries the OS error only in its message."""
    return isinstance(err, OSError) or (type(err).__name__ == "SafetensorError" and "Os {" in str(err))
