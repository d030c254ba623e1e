"""`rada-export onnx` / `verify`: graphs, FP16 casts, the bundle, parity, and bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from typer.testing import CliRunner

from rada_export import RadaError
from rada_export.checkpoint import HeadMetadata, save_head
from rada_export.cli.app import app
from rada_export.export.bundle import ExportRequest, export_bundle
from rada_export.export.fp16 import attention_softmax_nodes, node_compute_types
from rada_export.export.verify import verify_bundle
from rada_export.head import RAdaHead
from rada_export.runtimes.manifest import read_manifest
from rada_export.runtimes.ort_session import create_session
from cli_run import flat

runner = CliRunner()
CLASSES = ["red circle", "green square", "blue triangle", "yellow star", "purple ring"]


@pytest.fixture(scope="module")
def head_ckpt(tmp_path_factory, tiny_clip) -> Path:
    """A head with non-zero random weights (so the head graph is not the identity on CLIP logits)."""
    torch.manual_seed(0)
    head = RAdaHead(tiny_clip.embed_dim, logit_scale=tiny_clip.logit_scale)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05)
    path = tmp_path_factory.mktemp("ckpt") / "head.safetensors"
    save_head(path, head, HeadMetadata(embed_dim=tiny_clip.embed_dim, model="rada-tiny-ViT", pretrained="none",
                                       class_names=CLASSES, templates=["a photo of a {}.", "a drawing of a {}."]))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, head_ckpt, tiny_clip):
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = export_bundle(ExportRequest(out=out, ckpt=head_ckpt, fp16=True, max_batch=16), clip=tiny_clip)
    return result


def run(bundle_dir: Path, key: str, feeds: dict) -> list[np.ndarray]:
    manifest = read_manifest(bundle_dir)
    entry = manifest.graphs[key]
    return create_session(bundle_dir / entry.file, "cpu", entry.precision).run(None, feeds)


def test_every_graph_passes_parity(bundle):
    report = bundle.report
    assert report.passed
    checked = {(r.graph, r.precision) for r in report.results}
    assert checked == {("model", "fp32"), ("model", "fp16"), ("image_encoder", "fp32"), ("image_encoder", "fp16"),
                       ("text_encoder", "fp32"), ("head", "fp32")}
    for r in report.results:
        if r.precision == "fp32":
            assert r.min_cosine >= 0.99999 and r.top1_agreement in (None, 1.0)
        else:
            assert r.mean_cosine >= 0.999 and r.min_cosine >= 0.99


def test_manifest_records_what_a_device_needs(bundle, tiny_clip):
    m = read_manifest(bundle.bundle)
    assert m.model == "rada-tiny-ViT" and m.pretrained == "none" and m.embed_dim == 64
    assert m.preprocess.size == [64, 64] and m.preprocess.interpolation == "bicubic"
    assert m.preprocess.mean == list(tiny_clip.preprocess_config.mean)
    assert m.logit_scale == pytest.approx(tiny_clip.logit_scale)
    assert m.class_names == CLASSES and m.templates == ["a photo of a {}.", "a drawing of a {}."]
    assert m.opset >= 17 and m.max_batch == 16
    assert {"torch", "open_clip", "onnx"} <= set(m.versions)
    files = {p.relative_to(bundle.bundle).as_posix() for p in bundle.bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(m.files) == files
    assert (bundle.bundle / "classes.txt").read_text().splitlines() == CLASSES
    assert np.load(bundle.bundle / "text_features.npy").shape == (5, 64)
    assert m.tokenizer["kind"] == "clip_bpe" and (bundle.bundle / m.tokenizer["vocab"]).is_file()


def test_graphs_are_checked_and_use_one_layernorm_node(bundle):
    m = read_manifest(bundle.bundle)
    for key, entry in m.graphs.items():
        path = bundle.bundle / entry.file
        onnx.checker.check_model(str(path), full_check=True)
        model = onnx.load(str(path))
        assert max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) >= 17
        ops = {n.op_type for n in model.graph.node}
        if key.split(".")[0] in ("model", "image_encoder", "text_encoder"):
            assert "LayerNormalization" in ops and "ReduceMean" not in ops, key
    names = {k: (list(e.inputs), list(e.outputs)) for k, e in m.graphs.items()}
    assert names["model"] == (["pixels"], ["logits", "image_features"])
    assert names["image_encoder"] == (["pixels"], ["image_features"])
    assert names["text_encoder"] == (["token_ids"], ["text_features"])
    assert names["head"] == (["image_features", "text_features"], ["logits"])


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_in_every_graph(bundle, batch, tiny_clip):
    rng = np.random.default_rng(batch)
    pixels = rng.standard_normal((batch, 3, 64, 64)).astype(np.float32)
    for key in ("model", "model.fp16"):
        logits, feats = run(bundle.bundle, key, {"pixels": pixels})
        assert logits.shape == (batch, 5) and feats.shape == (batch, 64) and logits.dtype == np.float32
    for key in ("image_encoder", "image_encoder.fp16"):
        (feats,) = run(bundle.bundle, key, {"pixels": pixels})
        assert feats.shape == (batch, 64)
        assert np.allclose(np.linalg.norm(feats, axis=1), 1, atol=1e-3)
    tokens = tiny_clip.tokenizer([f"text {i}" for i in range(batch)]).numpy()
    (text,) = run(bundle.bundle, "text_encoder", {"token_ids": tokens})
    assert text.shape == (batch, 64)


@pytest.mark.parametrize("k", [1, 3, 11])
def test_dynamic_k_in_head_graph_matches_pytorch(bundle, k, head_ckpt):
    from rada_export.checkpoint import load_head

    head = load_head(bundle.bundle / "head.safetensors").head
    g = torch.Generator().manual_seed(k)
    f = torch.nn.functional.normalize(torch.randn(7, 64, generator=g), dim=-1)
    t = torch.nn.functional.normalize(torch.randn(k, 64, generator=g), dim=-1)
    (logits,) = run(bundle.bundle, "head", {"image_features": f.numpy(), "text_features": t.numpy()})
    with torch.no_grad():
        ref = head(f, t).numpy()
    assert logits.shape == (7, k)
    assert np.abs(logits - ref).max() <= 1e-4 * max(1.0, np.abs(ref).max())


def test_fused_graph_equals_encoder_then_head(bundle):
    pixels = np.random.default_rng(3).standard_normal((4, 3, 64, 64)).astype(np.float32)
    fused_logits, fused_feats = run(bundle.bundle, "model", {"pixels": pixels})
    (feats,) = run(bundle.bundle, "image_encoder", {"pixels": pixels})
    text = np.load(bundle.bundle / "text_features.npy")
    (chained,) = run(bundle.bundle, "head", {"image_features": feats, "text_features": text})
    assert np.abs(fused_logits - chained).max() <= 1e-4
    assert np.abs(fused_feats - feats).max() <= 1e-5


def test_fp16_keeps_fragile_ops_in_fp32(bundle):
    for key in ("model.fp16", "image_encoder.fp16"):
        model = onnx.load(str(bundle.bundle / read_manifest(bundle.bundle).graphs[key].file))
        types = node_compute_types(model)
        by_op = {}
        for node in model.graph.node:
            by_op.setdefault(node.op_type, set()).add(types.get(node.name))
        for op in ("LayerNormalization", "ReduceL2"):
            assert by_op.get(op) == {"float32"}, (key, op, by_op.get(op))
        # Attention's Softmax stays FP16 so that TensorRT can fuse attention (see fp16.py); any
        # other Softmax (the head's joint one) stays FP32.
        attention = set(attention_softmax_nodes(model))
        softmax = {n.name: types.get(n.name) for n in model.graph.node if n.op_type == "Softmax"}
        assert attention and all("/attn/" in name for name in attention)
        assert {t for name, t in softmax.items() if name in attention} == {"float16"}
        assert {t for name, t in softmax.items() if name not in attention} <= {"float32"}
        assert "float16" in by_op["MatMul"] | by_op.get("Gemm", set())  # the bulk really is FP16
        head_nodes = [n for n in model.graph.node if n.name.startswith("/head/")]
        assert (not head_nodes) == (key.startswith("image_encoder"))
        assert {types.get(n.name) for n in head_nodes if n.name in types} <= {"float32"}
        assert [i.type.tensor_type.elem_type for i in model.graph.input] == [onnx.TensorProto.FLOAT]
        assert all(o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT for o in model.graph.output)


def test_embed_preprocess_equals_open_clip_preprocessing(tmp_path, head_ckpt, tiny_clip):
    from PIL import Image

    result = export_bundle(ExportRequest(out=tmp_path / "b", ckpt=head_ckpt, embed_preprocess=True, fp16=True), clip=tiny_clip)
    m = read_manifest(result.bundle)
    assert m.embed_preprocess and m.graphs["model"].input_dtypes == {"frames": "uint8"}
    assert m.graphs["model"].inputs["frames"] == ["batch", "frame_height", "frame_width", "frame_channels"]
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)
    with torch.no_grad():
        ref = torch.cat([tiny_clip.model.encode_image(tiny_clip.preprocess(Image.fromarray(f))[None]) for f in frames])
        ref = torch.nn.functional.normalize(ref, dim=-1).numpy()
    for key in ("model", "model.fp16"):
        _, feats = run(result.bundle, key, {"frames": frames})
        assert np.abs(feats - ref).max() <= 1e-3, key


def test_external_data_graphs_are_carried_and_checked(tmp_path, head_ckpt, tiny_clip):
    result = export_bundle(ExportRequest(out=tmp_path / "ext", ckpt=head_ckpt, fp16=True, external_data_threshold=0), clip=tiny_clip)
    m = read_manifest(result.bundle)
    for entry in m.graphs.values():
        assert entry.external_data == entry.file + ".data"
        assert entry.external_data in m.files
    assert result.report.passed
    moved = tmp_path / "moved"
    result.bundle.rename(moved)  # a bundle is relocatable: data files are found beside their graphs
    assert verify_bundle(moved, clip=tiny_clip).passed


@pytest.mark.slow  # the default exporter is verified throughout the default run
def test_dynamo_exporter_also_verifies(tmp_path, head_ckpt, tiny_clip):
    result = export_bundle(ExportRequest(out=tmp_path / "dyn", ckpt=head_ckpt, exporter="dynamo"), clip=tiny_clip)
    assert result.report.passed


def test_fresh_head_without_checkpoint_is_zero_shot(tmp_path, tiny_clip):
    result = export_bundle(ExportRequest(out=tmp_path / "zs", model="rada-tiny-ViT", pretrained="none", classes=["a", "b", "c"]), clip=tiny_clip)
    pixels = np.random.default_rng(0).standard_normal((2, 3, 64, 64)).astype(np.float32)
    logits, feats = run(result.bundle, "model", {"pixels": pixels})
    text = np.load(result.bundle / "text_features.npy")
    assert np.abs(logits - tiny_clip.logit_scale * feats @ text.T).max() <= 1e-4


def test_cli_onnx_and_verify(tmp_path, head_ckpt, bundle):
    from PIL import Image

    out = tmp_path / "cli-bundle"
    result = runner.invoke(app, ["onnx", "--ckpt", str(head_ckpt), "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    assert "pass" in result.output and "FAIL" not in result.output
    image = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (90, 120, 4), dtype=np.uint8), "RGBA").save(image)
    result = runner.invoke(app, ["verify", "--bundle", str(bundle.bundle), str(image), "--json", "--quiet"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["passed"] and report["results"][0]["samples"] == 9  # 8 seeded inputs + the image


def test_verify_refuses_a_modified_bundle(tmp_path, bundle):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(bundle.bundle, copy)
    path = copy / "head.onnx"
    path.write_bytes(path.read_bytes()[:-100])
    result = runner.invoke(app, ["verify", "--bundle", str(copy)])
    assert result.exit_code == 2 and "head.onnx" in flat(result.output) and "checksum" in flat(result.output)


def _onnx(args, tmp_path):
    return runner.invoke(app, ["onnx", "--quiet", *args])


def test_bad_input_embedding_size_mismatch(tmp_path):
    path = tmp_path / "h.safetensors"
    save_head(path, RAdaHead(32), HeadMetadata(embed_dim=32, class_names=["a", "b"]))
    out = tmp_path / "b"
    result = _onnx(["--ckpt", str(path), "--model", "rada-tiny-ViT", "--pretrained", "none", "--out", str(out)], tmp_path)
    assert result.exit_code == 2 and "embedding size 32" in flat(result.output) and not out.exists()


def test_bad_input_missing_and_corrupt_checkpoint(tmp_path):
    out = tmp_path / "b"
    result = _onnx(["--ckpt", str(tmp_path / "none.safetensors"), "--out", str(out)], tmp_path)
    assert result.exit_code == 2 and "does not exist" in flat(result.output)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    result = _onnx(["--ckpt", str(bad), "--model", "rada-tiny-ViT", "--out", str(out)], tmp_path)
    assert result.exit_code == 2 and "safetensors" in flat(result.output)
    assert not out.exists()


@pytest.mark.parametrize("classes,message", [
    ([], "class"), (["cat,dog,Cat"], "duplicate class names"), ([",, ,"], "empty"),
])
def test_bad_input_class_lists(tmp_path, classes, message):
    out = tmp_path / "b"
    args = ["--model", "rada-tiny-ViT", "--pretrained", "none", "--out", str(out)]
    for c in classes:
        args += ["--classes", c]
    result = _onnx(args, tmp_path)
    assert result.exit_code == 2 and message in flat(result.output).lower(), result.output
    assert not out.exists()


def test_bad_input_empty_class_file(tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n\n")
    result = _onnx(["--model", "rada-tiny-ViT", "--pretrained", "none", "--classes", str(classes), "--out", str(tmp_path / "b")], tmp_path)
    assert result.exit_code == 2 and "empty" in flat(result.output)


def test_bad_input_output_is_a_file_and_max_batch_zero(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    base = ["--model", "rada-tiny-ViT", "--pretrained", "none", "--classes", "a,b"]
    result = _onnx([*base, "--out", str(target)], tmp_path)
    assert result.exit_code == 2 and "is a file" in flat(result.output) and target.read_text() == "x"
    result = _onnx([*base, "--out", str(tmp_path / "b"), "--max-batch", "0"], tmp_path)
    assert result.exit_code == 2 and "--max-batch" in flat(result.output) and not (tmp_path / "b").exists()


def test_existing_bundle_needs_force(tmp_path, tiny_clip):
    out = tmp_path / "b"
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=["a", "b"], verify=False), clip=tiny_clip)
    with pytest.raises(RadaError, match="force=True") as err:
        export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=["c", "d"]), clip=tiny_clip)
    assert err.value.field == "out"
    assert read_manifest(out).class_names == ["a", "b"]
    export_bundle(ExportRequest(out=out, model="rada-tiny-ViT", pretrained="none", classes=["c", "d"], force=True, verify=False), clip=tiny_clip)
    assert read_manifest(out).class_names == ["c", "d"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folders left


def test_too_many_classes_is_refused_with_the_figure(tmp_path):
    from rada_export.export.bundle import check_class_count

    assert check_class_count(100, 8) is None
    assert "MiB" in check_class_count(1000, 8)
    with pytest.raises(RadaError) as err:
        check_class_count(5000, 8)
    assert "GiB" in err.value.problem and "at most 3344 classes" in err.value.fix
    names = tmp_path / "many.txt"
    names.write_text("\n".join(f"class {i}" for i in range(4000)))
    result = _onnx(["--model", "rada-tiny-ViT", "--pretrained", "none", "--classes", str(names), "--out", str(tmp_path / "b")], tmp_path)
    assert result.exit_code == 2 and "4000 classes" in flat(result.output) and not (tmp_path / "b").exists()


def test_full_size_architecture_vit_b_32(vit_b32_bundle):
    assert vit_b32_bundle.report.passed
    checked = {(r.graph, r.precision) for r in vit_b32_bundle.report.results}
    assert checked == {("model", "fp32"), ("model", "fp16"), ("image_encoder", "fp32"), ("image_encoder", "fp16"),
                       ("text_encoder", "fp32"), ("head", "fp32")}
    m = read_manifest(vit_b32_bundle.bundle)
    assert m.embed_dim == 512 and m.preprocess.size == [224, 224]
    assert {"model", "image_encoder", "text_encoder", "head", "model.fp16", "image_encoder.fp16"} <= set(m.graphs)


def test_cli_exports_a_reference_checkpoint(tmp_path):
    """The paper's torch checkpoints (mha.* keys) export once --model/--pretrained/--classes fill the gaps."""
    torch.manual_seed(3)
    head = RAdaHead(64)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.05)
    ckpt = tmp_path / "model-best.pth.tar"
    torch.save({"state_dict": {f"mha.{k}": v for k, v in head.state_dict().items()}, "epoch": 5}, ckpt)
    out = tmp_path / "b"
    result = _onnx(["--ckpt", str(ckpt), "--out", str(out)], tmp_path)
    assert result.exit_code == 2 and "--model" in flat(result.output)  # the pickle records no model
    result = _onnx(["--ckpt", str(ckpt), "--model", "rada-tiny-ViT", "--pretrained", "none", "--classes", "cat,dog,bird", "--out", str(out)], tmp_path)
    assert result.exit_code == 0, result.output
    from rada_export.checkpoint import load_head

    exported = load_head(out / "head.safetensors").head
    for (name, a), (_, b) in zip(head.state_dict().items(), exported.state_dict().items()):
        assert torch.equal(a, b), name
    assert read_manifest(out).class_names == ["cat", "dog", "bird"]
