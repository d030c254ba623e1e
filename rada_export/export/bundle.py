"""`rada-export onnx`: a head plus its open_clip model in, a verified bundle folder out.

Everything is written to a temporary folder beside the target and renamed at the end, so a failed
export leaves nothing half-written.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..checkpoint import HeadCheckpoint, HeadMetadata, load_head, save_head, tool_versions
from ..clip import LoadedClip, check_rebuild, load_clip
from ..errors import RadaError, VerificationError
from ..head import RAdaHead, attention_bytes_per_image
from ..progress import SILENT, Reporter
from ..prompts import parse_class_names, text_features, validate_templates
from ..runtimes import manifest as mf
from . import fp16 as fp16_mod
from . import reparam
from .modules import FusedModel, HeadGraph, ImageEncoder, TextEncoder
from .onnx_io import DEFAULT_OPSET, MIN_OPSET, TWO_GB, GraphSpec, export_module, graph_io, load_graph, save_graph, check_graph
from .verify import VerificationReport, verify_bundle

# Refuse heads whose attention maps alone would exceed this per image (FP32), warn from WARN_CLASSES.
MAX_ATTENTION_BYTES = 1 << 30
WARN_CLASSES = 1000


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
    exporter: str = "torchscript"
    force: bool = False
    verify: bool = True
    verify_images: Sequence[Path] = ()
    external_data_threshold: int = TWO_GB


@dataclass
class ExportResult:
    bundle: Path
    manifest: mf.Manifest
    report: VerificationReport | None
    warnings: list[str] = field(default_factory=list)


def _check_request(req: ExportRequest) -> None:
    if req.max_batch < 1:
        raise RadaError(f"--max-batch must be at least 1, got {req.max_batch}", "pass --max-batch 32 (the engine profile's largest batch)")
    if req.opset < MIN_OPSET:
        raise RadaError(f"--opset {req.opset} is too old", f"use opset {MIN_OPSET} or newer (one LayerNormalization node)")
    if req.exporter not in ("torchscript", "dynamo"):
        raise RadaError(f"unknown exporter {req.exporter!r}", "use --exporter torchscript or --exporter dynamo")
    out = Path(req.out)
    if out.exists() and not out.is_dir():
        raise RadaError(f"--out {out} is a file", "give a folder path for the bundle")
    if out.is_dir() and any(out.iterdir()) and not req.force:
        raise RadaError(f"bundle folder {out} already exists and is not empty", "pass --force to replace it, or choose another --out")


def _resolve_head(req: ExportRequest) -> tuple[HeadCheckpoint | None, str, str | None, str | None]:
    ckpt = load_head(req.ckpt) if req.ckpt is not None else None
    meta = ckpt.metadata if ckpt else None
    model = req.model or (meta.model if meta else None)
    if model is None:
        raise RadaError(
            "no model name: the checkpoint does not record one",
            "pass --model (the open_clip architecture the head was trained on, e.g. ViT-B-16)",
        )
    if meta and meta.model and req.model and req.model != meta.model:
        raise RadaError(
            f"the checkpoint was trained on {meta.model}, but --model says {req.model}",
            f"drop --model, or pass --model {meta.model}",
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
    raise RadaError("no class names: the checkpoint has none and --classes was not given",
                    "pass --classes classes.txt (one name a line) or --classes 'cat,dog'")


def check_class_count(num_classes: int, num_heads: int) -> str | None:
    """Raises for heads whose attention would not fit; returns a warning for large ones."""
    needed = attention_bytes_per_image(num_classes, num_heads)
    if needed > MAX_ATTENTION_BYTES:
        limit = int((MAX_ATTENTION_BYTES / (3 * num_heads * 4)) ** 0.5)
        raise RadaError(
            f"{num_classes} classes need {needed / 2**30:.1f} GiB of head attention maps per image (FP32)",
            f"use at most {limit} classes per bundle (split the label set, or pre-filter with zero-shot CLIP)",
        )
    if num_classes >= WARN_CLASSES:
        return (f"{num_classes} classes: the head's attention maps take {needed / 2**20:.0f} MiB per image and the "
                f"head adds roughly {100 * num_classes / 5000:.0f} % to a ViT-B/16 image pass")
    return None


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
    frames = torch.randint(0, 256, (batch, height, width, 3), dtype=torch.uint8)
    tokens = clip.tokenizer(["a photo of a cat.", "a dog"]).to(torch.int64)
    feats = torch.nn.functional.normalize(torch.randn(batch, dim), dim=-1)
    fused_input = "frames" if req.embed_preprocess else "pixels"
    # Folded for export only (MobileCLIP's branches); verification compares against clip.model as built.
    model, _ = reparam.for_export(clip.model)
    jobs = [
        (mf.FUSED, FusedModel(model, head, text, clip.preprocess_config if req.embed_preprocess else None),
         (frames if req.embed_preprocess else pixels,),
         GraphSpec((fused_input,), ("logits", "image_features"),
                   {fused_input: {0: "batch"}, "logits": {0: "batch"}, "image_features": {0: "batch"}})),
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
            path = root / f"{name}.onnx"
            data = export_module(module.eval(), args, path, spec, req.opset, req.exporter, req.external_data_threshold)
            entries[name] = _graph_entry(path, root, "fp32", data)
            advance(1)
        if req.fp16:
            for name in (mf.FUSED, mf.IMAGE_ENCODER):
                path16 = root / f"{name}.fp16.onnx"
                data = save_graph(fp16_mod.to_fp16(load_graph(root / f"{name}.onnx")), path16, req.external_data_threshold)
                check_graph(path16)
                entries[f"{name}.fp16"] = _graph_entry(
                    path16, root, "fp16", data,
                    notes="FP16 with LayerNorm, Softmax, L2 normalisation, preprocessing and the RAda head in FP32 (casts in the graph)")
                advance(1)
    return entries


def _copy_tokenizer(clip: LoadedClip, root: Path) -> dict:
    import open_clip

    if isinstance(clip.tokenizer, open_clip.tokenizer.SimpleTokenizer):
        target = root / "tokenizer" / "bpe_simple_vocab_16e6.txt.gz"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(open_clip.tokenizer.default_bpe(), target)
        return {"kind": "clip_bpe", "vocab": target.relative_to(root).as_posix(), "context_length": clip.context_length}
    if isinstance(clip.tokenizer, open_clip.tokenizer.HFTokenizer):
        from .hf_tokenizer import write_hf_tokenizer

        return write_hf_tokenizer(clip.tokenizer, clip.model_name, root)
    return {"kind": type(clip.tokenizer).__name__, "context_length": clip.context_length,
            "note": "not supported by the torch-free runtime: set_classes needs the host"}


def export_bundle(req: ExportRequest, reporter: Reporter = SILENT, clip: LoadedClip | None = None) -> ExportResult:
    """Exports, checks and verifies the bundle; raises VerificationError (nothing kept) when parity fails."""
    _check_request(req)
    ckpt, model_name, pretrained, pretrained_cfg = _resolve_head(req)
    class_names = _class_names(req, ckpt)
    templates = validate_templates(req.templates or (ckpt.metadata.templates if ckpt else None))
    if clip is None:
        clip = load_clip(model_name, pretrained, pretrained_cfg=pretrained_cfg)
    if ckpt is not None and ckpt.metadata.resolved and req.pretrained is None:
        check_rebuild(clip, ckpt.metadata.resolved, f"checkpoint {req.ckpt}")
    if ckpt is not None and ckpt.head.embed_dim != clip.embed_dim:
        raise RadaError(
            f"the checkpoint's head has embedding size {ckpt.head.embed_dim}, {model_name} has {clip.embed_dim}",
            "pass the --model the head was trained on",
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
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        with torch.no_grad():
            text = text_features(clip, class_names, templates)
        entries = _export_graphs(clip, head, text, req, tmp, reporter)
        np.save(tmp / "text_features.npy", text.numpy().astype(np.float32))
        (tmp / "classes.txt").write_text("\n".join(class_names) + "\n", encoding="utf-8")
        save_head(tmp / "head.safetensors", head, HeadMetadata(
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
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(bundle=out, manifest=manifest, report=report, warnings=warnings)


def _replace_dir(src: Path, dst: Path) -> None:
    """Moves src to dst; an existing dst is moved aside first and removed only once src is in place."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(src, 0o777 & ~umask)  # mkdtemp makes the folder private; a bundle is meant to be shared
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
