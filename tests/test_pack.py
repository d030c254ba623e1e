"""Device bundles (`rada-export pack`) and the lazy verification of a load: a graph's bytes are
hashed when its runner is made, the small files at load, and what runs is what was verified."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rada_export import RadaError
from rada_export.cli.app import app
from rada_export.runtimes import load_bundle
from rada_export.runtimes.bundle.manifest import read_manifest, verify_checksums
from rada_export.runtimes.bundle.pack import PackRequest, pack_bundle, select_graphs

CLASSES = ["cat", "dog", "bird"]


@pytest.fixture(scope="module")
def source(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=CLASSES, fp16=True, verify=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("img") / "img.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(path)
    return path


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def invoke(*args) -> tuple[int, str]:
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, " ".join(result.output.split())


def test_pack_fp16_keeps_only_fp16_graphs_and_the_fp32_text_encoder(source, image, tmp_path):
    before = snapshot(source)
    out = tmp_path / "device"
    code, text = invoke("pack", "--bundle", source, "--out", out, "--precision", "fp16", "--json")
    assert code == 0, text
    result = json.loads(text)
    assert result["graphs"] == ["image_encoder.fp16", "model.fp16", "text_encoder"]
    assert "model" in result["dropped"] and "head" in result["dropped"]
    manifest = read_manifest(out)
    assert sorted(manifest.graphs) == result["graphs"]
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert files == set(manifest.files) | {"manifest.json"}  # nothing but what its manifest lists
    assert not any(name in files for name in ("model.onnx", "image_encoder.onnx", "head.onnx"))
    verify_checksums(out, manifest)
    assert result["bytes"] == sum((out / f).stat().st_size for f in files) < result["source_bytes"]
    assert snapshot(source) == before  # the source is read, never written

    packed = load_bundle(out, backend="onnxruntime", device="cpu")
    assert packed.precision == "fp16" and packed.precisions == {"model": "fp16", "image_encoder": "fp16", "text_encoder": "fp32"}
    full = load_bundle(source, backend="onnxruntime", device="cpu", precision="fp16")
    np.testing.assert_array_equal(packed.predict([str(image)]).logits, full.predict([str(image)]).logits)
    packed.set_classes(["pear", "plum"])  # the FP32 text encoder came along
    full.set_classes(["pear", "plum"])
    np.testing.assert_array_equal(packed.predict([str(image)]).logits, full.predict([str(image)]).logits)


def test_pack_graph_selection_and_library_api(source, image, tmp_path):
    manifest = read_manifest(source)
    assert select_graphs(manifest, ["fp32"], ["model"]) == ["model"]
    assert select_graphs(manifest, ["fp16"], ["model", "text_encoder"]) == ["model.fp16", "text_encoder"]
    result = pack_bundle(PackRequest(bundle=source, out=tmp_path / "fused", precisions=("fp32",), graphs=("model",)))
    assert result.graphs == ("model",) and result.files == len(read_manifest(result.out).files) + 1
    rt = load_bundle(result.out, backend="onnxruntime", device="cpu")
    assert rt.predict([str(image)]).label in CLASSES
    with pytest.raises(RadaError, match="text_encoder"):  # no text encoder packed: said by name
        rt.set_classes(["pear", "plum"])


def test_pack_refusals_leave_everything_as_it_was(source, tmp_path):
    user = tmp_path / "user"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    code, text = invoke("pack", "--bundle", source, "--out", user, "--force")
    assert code == 2 and "not a rada-export bundle" in text and (user / "notes.txt").read_text() == "mine"
    code, text = invoke("pack", "--bundle", source, "--out", user)
    assert code == 2 and "already exists and is not empty" in text and "--force" in text

    out = tmp_path / "device"
    assert invoke("pack", "--bundle", source, "--out", out, "--precision", "fp32")[0] == 0
    code, text = invoke("pack", "--bundle", source, "--out", out, "--precision", "fp16")
    assert code == 2 and "already exists" in text and "model" in read_manifest(out).graphs
    code, text = invoke("pack", "--bundle", source, "--out", out, "--precision", "fp16", "--force")
    assert code == 0, text
    assert sorted(read_manifest(out).graphs) == ["image_encoder.fp16", "model.fp16", "text_encoder"]
    assert not (out / "model.onnx").exists()
    (out / "mine.txt").write_text("mine")  # a bundle holding a user's file is not replaced, even with --force
    code, text = invoke("pack", "--bundle", source, "--out", out, "--force")
    assert code == 2 and "mine.txt" in text and (out / "mine.txt").exists()

    for args, needle in ((["--precision", "fp8"], "unknown precision 'fp8'"), (["--graph", "vision"], "unknown graph 'vision'"),
                         (["--precision", "int8"], "no image graph in the precisions and graphs asked for")):
        code, text = invoke("pack", "--bundle", source, "--out", tmp_path / "never", *args)
        assert code == 2 and needle in text and "Traceback" not in text, text
        assert not (tmp_path / "never").exists()
    code, text = invoke("pack", "--bundle", source, "--out", source / "inside")
    assert code == 2 and "inside the bundle it packs" in text
    assert [p.name for p in tmp_path.iterdir() if ".rada-" in p.name] == []  # no staging folder left behind


def test_recorded_engines_of_kept_graphs_come_along(source, tmp_path):
    import hashlib

    bundle = tmp_path / "src"
    shutil.copytree(source, bundle)
    folder = bundle / "engines" / "orin-sm87-trt10.3.0"
    folder.mkdir(parents=True)
    for graph, onnx_file in (("model", "model.fp16.onnx"), ("image_encoder", "image_encoder.onnx")):
        data = f"{graph} engine bytes".encode()
        (folder / f"{graph}.fp16.engine").write_bytes(data)
        (folder / f"{graph}.fp16.json").write_text(json.dumps({
            "format": 1, "graph": graph, "precision": "fp16", "engine_file": f"{graph}.fp16.engine",
            "engine_sha256": hashlib.sha256(data).hexdigest(), "tensorrt_version": "10.3.0", "gpu_name": "Orin",
            "compute_capability": "8.7", "onnx_file": onnx_file}))
    (folder / "trtexec.engine").write_bytes(b"not recorded")  # not ours: stays behind
    result = pack_bundle(PackRequest(bundle=bundle, out=tmp_path / "device", precisions=("fp16",)))
    # the model engine was built from a kept graph; the image encoder's from the FP32 graph, left out
    assert result.engines == ("engines/orin-sm87-trt10.3.0/model.fp16.engine",)
    assert sorted(p.name for p in (result.out / "engines" / "orin-sm87-trt10.3.0").iterdir()) == \
        ["model.fp16.engine", "model.fp16.json"]
    assert (result.out / result.engines[0]).read_bytes() == b"model engine bytes"
    # the packed bundle is ours, engines included: --force may replace it
    assert invoke("pack", "--bundle", bundle, "--out", result.out, "--precision", "fp32", "--force")[0] == 0
    assert sorted(p.name for p in (result.out / "engines" / "orin-sm87-trt10.3.0").iterdir()) == \
        ["image_encoder.fp16.engine", "image_encoder.fp16.json"]  # built from image_encoder.onnx, now kept


def test_pack_refuses_a_corrupt_source_graph_and_writes_nothing(source, tmp_path):
    bundle = tmp_path / "src"
    shutil.copytree(source, bundle)
    with open(bundle / "model.fp16.onnx", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00" * 8)
    code, text = invoke("pack", "--bundle", bundle, "--out", tmp_path / "device", "--precision", "fp16")
    assert code == 2 and "checksum mismatch" in text and "model.fp16.onnx" in text
    assert not (tmp_path / "device").exists() and [p.name for p in tmp_path.iterdir()] == ["src"]
    # The FP32 graphs are intact: a pack of those is fine.
    assert invoke("pack", "--bundle", bundle, "--out", tmp_path / "device", "--precision", "fp32")[0] == 0


# -- lazy verification: a load hashes what it opens, when it opens it --------------------------------


def test_load_checks_only_what_runs(source, image, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    (bundle / "model.fp16.onnx").unlink()  # a graph the device never runs
    with open(bundle / "image_encoder.fp16.onnx", "r+b") as fh:
        fh.seek(200)
        fh.write(b"\x00" * 8)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    assert rt.predict([str(image)]).label in CLASSES  # the fused FP32 graph, verified when its runner was made

    fp16 = load_bundle(bundle, backend="onnxruntime", device="cpu", precision="fp16")  # loads: graphs are not read yet
    with pytest.raises(RadaError, match="missing: model.fp16.onnx"):
        fp16.predict([str(image)])
    with pytest.raises(RadaError, match="checksum mismatch.*image_encoder.fp16.onnx"):
        fp16.encode(np.zeros((1, 3, 32, 32), np.float32))


def test_the_small_files_are_still_checked_at_load(source, tmp_path):
    bundle = tmp_path / "bundle"
    shutil.copytree(source, bundle)
    (bundle / "classes.txt").write_text("cat\ndog\nbird\nextra\n")
    with pytest.raises(RadaError, match="checksum mismatch.*classes.txt"):
        load_bundle(bundle, backend="onnxruntime", device="cpu")
