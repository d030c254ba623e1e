"""`rada-export trt --dry-run`, the build's plan without TensorRT, on every bundle kind; and the parity inputs.

Runs where TensorRT and a GPU are missing (as here): the dry run lists them and goes on, and `trt`
itself stops with exactly that missing-TensorRT error.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import calibrate_for_tests
from trt_cli import run_trt_without_tensorrt
from rada_export.runtimes.manifest import read_manifest
from rada_export.tensorrt.dry_run import DEVICE_COMPONENTS, dry_run
from rada_export.tensorrt.plan import VARIANT_GRAPHS, BuildRequest, plan_build
from rada_export.tensorrt.verify import (
    PARITY_SAMPLES, TOP1_MARGIN, clear_margin_rows, make_feeds, parity_tokens, run_in_chunks, sizes_to_check, textured_images,
    verify_engine,
)

CLASSES = ["cat", "dog", "bird"]
GRAPHS = ("model", "image_encoder", "text_encoder", "head")
DEVICE_ONLY = {"TensorRT", "CUDA runtime", "NVIDIA driver", "NVIDIA GPU"}


@pytest.fixture(scope="module")
def calibrated(shared_tiny_bundle, tmp_path_factory):
    """Calibrated copies of the plain and the frames (--embed-preprocess) FP16 bundles: {"plain": path, "frames": path}."""
    out = {}
    for kind, frames in (("plain", False), ("frames", True)):
        work = tmp_path_factory.mktemp(kind)
        bundle = work / "bundle"
        shutil.copytree(shared_tiny_bundle(classes=CLASSES, fp16=True, embed_preprocess=frames), bundle)
        calibrate_for_tests(bundle, work)
        out[kind] = bundle
    return out


@pytest.mark.parametrize("kind", ["plain", "frames"])
def test_dry_run_on_every_graph_precision_and_dla_setting(calibrated, kind, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # the dry run never imports it
    bundle = calibrated[kind]
    manifest = read_manifest(bundle)
    for graph in GRAPHS:
        for precision in ("fp32", "fp16", "int8"):
            for dla in (None, 0):
                result = dry_run(BuildRequest(bundle, graph=graph, precision=precision, dla_core=dla))
                has_graph = precision == "fp32" or manifest.graph_key(graph, precision) in manifest.graphs
                # DLA: FP16 only (FP32 it cannot run; INT8 it takes from a calibration cache, not Q/DQ: refused)
                expected = has_graph and not (dla is not None and precision in ("fp32", "int8"))
                where = f"{kind} {graph} {precision} dla={dla}: {result.reasons}"
                assert result.would_build == expected, where
                if not expected:
                    assert result.reasons and not result.plan, where
                    continue
                assert {m.component for m in result.missing_here} <= DEVICE_COMPONENTS, where
                assert "TensorRT" in {m.component for m in result.missing_here}, where
                plan = result.plan
                built = plan_build(BuildRequest(bundle, graph=graph, precision=precision, dla_core=dla), jetson=lambda: True)
                # What the dry run shows is what the build is made from: the same plan, the same engine JSON.
                assert plan["onnx_file"] == built.entry.file and plan["metadata"] == built.planned_meta()
                assert plan["metadata"]["onnx_sha256"] == manifest.files[built.entry.file]
                assert "engine_sha256" in plan["metadata"]  # the build fills in the engine file's own sha256
                assert set(plan["inputs"]) == set(built.entry.inputs) and plan["lint"]["findings"] == []
                assert plan["engine"]["file"] == f"{graph}.{precision}.engine"
                frames = kind == "frames" and graph == "model"
                assert ("frame_height" in plan["ranges"]) == frames, where
                if dla is not None:
                    assert "DLA" in plan["typing"] and plan["dla"]["batch"] == 1
                    assert "weakly typed" in plan["typing"] and "OBEY_PRECISION_CONSTRAINTS" in plan["typing"]
                    assert all(len(set(r)) == 1 for r in plan["ranges"].values())  # DLA: fixed shapes
                else:
                    assert plan["typing"].startswith("strongly typed")
                assert plan["parity"]["checks"][0]["rows"] >= PARITY_SAMPLES or graph == "head"


def test_dry_run_cli_prints_the_frame_profile_and_exits_0(calibrated, monkeypatch):
    bundle = calibrated["frames"]
    for precision in ("fp16", "int8"):
        code, out = run_trt_without_tensorrt(["--bundle", bundle, "--precision", precision, "--dry-run"], monkeypatch)
        assert code == 0, out
        flat = " ".join(out.split())
        assert "uint8 [batch, frame_height, frame_width, frame_channels]" in flat
        assert "min 1x1x1x1, opt 1x1080x1920x3, max 4x2160x3840x4" in flat  # the default profile an Orin Nano builds
        assert "missing here" in flat and "TensorRT" in flat and "a build would start" in flat
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--graph", "model", "--precision", "int8", "--dry-run", "--json"], monkeypatch)
    data = json.loads(out)
    assert code == 0 and data["would_build"] and data["onnx_file"] == "model.int8_fp16.onnx"
    assert data["inputs"]["frames"]["max"] == [4, 2160, 3840, 4] and data["metadata"]["profiles"][0]["frames"]["opt"] == [1, 1080, 1920, 3]
    assert data["parity"]["checks"][0]["chunk"] == 4 and "uint8 frames" in data["parity"]["inputs"]


# A Python where the onnx package is not installed, through the real import system: every finder
# answers "not found" for onnx (as on a device installed without it), then `rada-export ARGS` runs.
WITHOUT_ONNX = """
import sys

class NotInstalled:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "onnx" or name.startswith("onnx."):
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, name):
        return getattr(self.finder, name)

sys.meta_path[:] = [NotInstalled(f) for f in sys.meta_path]
sys.modules["tensorrt"] = None
from rada_export.cli.app import main
sys.argv = ["rada-export", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize("mode", ["--check", "--dry-run"])
def test_check_and_dry_run_without_onnx_give_one_clean_error_naming_it_and_the_extra(calibrated, mode):
    import subprocess

    done = subprocess.run([sys.executable, "-c", WITHOUT_ONNX, "trt", "--bundle", str(calibrated["frames"]), mode],
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    assert done.returncode == 2, out
    assert "Traceback" not in out and out.startswith("error: ") and out.count("error: ") == 1, out
    flat = " ".join(out.split())
    assert "the onnx package, which is not installed" in flat and "'rada-export[jetson]' on a Jetson" in flat, out


def test_dry_run_exits_2_with_the_reasons_when_a_build_would_not_start(calibrated, monkeypatch):
    code, out = run_trt_without_tensorrt(["--bundle", calibrated["plain"], "--graph", "head", "--precision", "fp16", "--dry-run"], monkeypatch)
    assert code == 2 and "would not build" in out and "no FP16 head graph" in " ".join(out.split())
    code, out = run_trt_without_tensorrt(["--bundle", calibrated["plain"], "--graph", "model", "--precision", "fp32", "--dla-core", "0",
                                          "--dry-run", "--json"], monkeypatch)
    data = json.loads(out)
    assert code == 2 and not data["would_build"] and "DLA runs FP16 and INT8 only" in data["reasons"][0]


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_trt_on_a_calibrated_frames_bundle_stops_only_for_tensorrt_and_the_gpu(calibrated, precision, monkeypatch):
    code, out = run_trt_without_tensorrt(["--bundle", calibrated["frames"], "--precision", precision], monkeypatch)
    assert code == 2, out
    flat = " ".join(out.split())
    named = flat.split("missing ", 1)[1].split(" - ")[0].strip()
    assert "TensorRT" in named and {n.strip() for n in named.split(",")} <= DEVICE_ONLY, flat
    assert "cannot parse" not in flat and "dynamic-dims" not in flat


# Parity inputs (pure functions, checked against ONNX Runtime where it matters).

def test_textured_images_have_structure_and_differ_between_images():
    images = textured_images(np.random.default_rng(0), 6, 48, 64)
    assert images.shape == (6, 48, 64, 3) and images.dtype == np.uint8
    x = images.astype(np.float32)
    # neighbours are correlated (uniform noise: ~0), and the images are not one picture repeated
    neighbour = np.mean([np.corrcoef(x[i, :, 1:].ravel(), x[i, :, :-1].ravel())[0, 1] for i in range(6)])
    assert neighbour > 0.5
    assert np.abs(x.mean(axis=(1, 2))[:, None] - x.mean(axis=(1, 2))[None]).max() > 20
    np.testing.assert_array_equal(images, textured_images(np.random.default_rng(0), 6, 48, 64))  # seeded


def test_top1_is_judged_only_where_the_reference_margin_is_clear():
    logits = np.array([[5.0, 1.0, 0.0], [2.0, 1.99, 0.0], [0.0, 0.0, 3.0]], np.float32)
    assert clear_margin_rows(logits, 0.5).tolist() == [True, False, True]
    assert clear_margin_rows(logits[:, :1], 0.5).all()  # one class: nothing to tie with
    assert TOP1_MARGIN == 0.02


def test_parity_uses_32_samples_in_chunks_of_the_engines_max_batch(calibrated):
    from rada_export.runtimes.ort_session import create_session

    bundle = calibrated["plain"]
    manifest = read_manifest(bundle)
    ranges = {"batch": (1, 4, 4), "num_classes": (1, 3, 256), "num_texts": (1, 3, 256)}
    checks = sizes_to_check(ranges, "model", 3, 4)
    assert checks[0][1]["batch"] == PARITY_SAMPLES and checks[1][1]["batch"] == 1
    engine = create_session(bundle / "model.fp16.onnx", "cpu", "fp32")  # stands in for the engine: the FP16 graph
    names = [o.name for o in engine.get_outputs()]
    seen = []

    def run_engine(feeds):
        seen.append(len(feeds["pixels"]))
        return dict(zip(names, engine.run(names, feeds)))

    report = verify_engine(bundle, manifest, "model", "fp16", run_engine, ranges)
    assert max(seen) <= 4 and sum(seen) == PARITY_SAMPLES + 1
    assert report.passed, report.to_dict()
    assert any("top-1 judged on" in note for note in report.notes)
    feeds = make_feeds(bundle, manifest, "model", checks[0][1])
    whole = create_session(bundle / "model.onnx", "cpu", "fp32")
    one = dict(zip(names, whole.run(names, feeds)))
    chunked = run_in_chunks(lambda f: dict(zip(names, whole.run(names, f))), feeds, ("pixels",), 5)
    np.testing.assert_allclose(chunked["logits"], one["logits"], rtol=1e-4, atol=1e-4)


# SigLIP: the text engine's parity feeds come from the bundle's own tokenizer.

@pytest.fixture(scope="module")
def siglip_bundle(tmp_path_factory):
    from _hfcache import add_t5_style_tokenizer, use_cache
    from rada_export.export.bundle import ExportRequest, export_bundle

    cache = tmp_path_factory.mktemp("hub")
    add_t5_style_tokenizer(cache, "timm/ViT-B-16-SigLIP")
    with pytest.MonkeyPatch.context() as mp:
        use_cache(mp, cache)
        out = tmp_path_factory.mktemp("siglip") / "bundle"
        export_bundle(ExportRequest(out=out, model="rada-tiny-SigLIP", pretrained="none", classes=CLASSES, verify=False))
    return out


def test_siglip_text_parity_ids_come_from_the_bundles_tokenizer(siglip_bundle):
    from rada_export.runtimes.tokenizer import load_tokenizer
    from rada_export.tensorrt.verify import parity_prompts, text_vocab_size

    manifest = read_manifest(siglip_bundle)
    plan = plan_build(BuildRequest(siglip_bundle, graph="text_encoder", precision="fp32"))
    count = plan.ranges["num_texts"][1]
    feeds = make_feeds(siglip_bundle, manifest, "text_encoder", {"num_texts": count})
    ids = next(iter(feeds.values()))
    vocab = text_vocab_size(siglip_bundle / manifest.graphs["text_encoder"].file)
    assert vocab is not None and vocab < 49406  # CLIP's start/end ids would lie outside it
    assert ids.min() >= 0 and ids.max() < vocab
    expected = load_tokenizer(siglip_bundle, manifest.tokenizer)(parity_prompts(manifest, count), context_length=ids.shape[1])
    np.testing.assert_array_equal(ids, expected)
    assert parity_tokens(siglip_bundle, manifest, 2, ids.shape[1])[1] == "HFTokenizer"
    assert "HFTokenizer" in dry_run(BuildRequest(siglip_bundle, graph="text_encoder", precision="fp32")).plan["parity"]["inputs"]


def test_variant_graphs_are_the_image_graphs():
    assert set(VARIANT_GRAPHS) == {"model", "image_encoder"} and Path(__file__).name == "test_trt_dry_run.py"


# ---------------------------------------------------------------------------------------------
# Every graph the runtime runs: --graph all (the default), lists, and what is left on ONNX Runtime


def test_graph_all_is_every_graph_the_runtime_runs_and_fp32_only_graphs_get_fp32_engines(calibrated):
    from rada_export.tensorrt.graphs import parse_graphs, plan_graphs

    manifest = read_manifest(calibrated["frames"])
    assert parse_graphs("all") == ["model", "image_encoder", "text_encoder"]
    assert parse_graphs("text_encoder, model,model") == ["text_encoder", "model"]
    for precision in ("fp16", "int8"):
        builds = plan_graphs(BuildRequest(calibrated["frames"], precision=precision), "all", manifest)
        assert [(b.request.graph, b.request.precision) for b in builds] == [
            ("model", precision), ("image_encoder", precision), ("text_encoder", "fp32")]
        assert "FP32 only" in builds[2].note and not builds[0].note
    # one named graph keeps the precision asked for: the plan then says why it cannot be built
    (head,) = plan_graphs(BuildRequest(calibrated["frames"], precision="fp16"), "head", manifest)
    assert head.request.precision == "fp16"
    # DLA: the FP32-only text encoder is left to a GPU build, and it is said
    dla = plan_graphs(BuildRequest(calibrated["frames"], precision="fp16", dla_core=0), "all", manifest)
    assert [b.request.graph for b in dla if not b.skipped] == ["model", "image_encoder"]
    assert dla[2].skipped and "DLA cannot run" in dla[2].note


def test_dry_run_plans_every_runtime_graph_by_default_and_names_what_a_single_graph_leaves_out(calibrated, monkeypatch):
    bundle = calibrated["frames"]
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--precision", "fp16", "--dry-run", "--json"], monkeypatch)
    data = json.loads(out)
    assert code == 0 and data["would_build"] and data["without_engine"] == []
    assert {g: d["precision"] for g, d in data["graphs"].items()} == {"model": "fp16", "image_encoder": "fp16", "text_encoder": "fp32"}
    assert data["graphs"]["model"]["inputs"]["frames"]["max"] == [4, 2160, 3840, 4]
    code, out = run_trt_without_tensorrt(["--bundle", bundle, "--graph", "model", "--dry-run"], monkeypatch)
    flat = " ".join(out.split())
    assert code == 0
    assert "without a image_encoder engine, test-time adaptation (continual and episodic)" in flat
    assert "without a text_encoder engine, set_classes" in flat and "runs on ONNX Runtime" in flat


def test_runtime_paths_left_on_onnxruntime_are_named(calibrated, tmp_path):
    """After a build, the paths whose graph has no fitting engine (here: an engine for model only)."""
    from rada_export.runtimes import engine_layout as layout
    from rada_export.runtimes.engine_selection import paths_without_engine, select_engines

    bundle = tmp_path / "bundle"
    shutil.copytree(calibrated["frames"], bundle)
    manifest = read_manifest(bundle)
    here = layout.EngineEnvironment("10.3.0", "Orin", "8.7")
    engine = bundle / "engines" / here.dir_name / "model.fp16.engine"
    engine.parent.mkdir(parents=True)
    engine.write_bytes(b"engine")
    layout.meta_path(engine).write_text(json.dumps({
        "tensorrt_version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", "graph": "model", "precision": "fp16",
        "onnx_file": "model.fp16.onnx", "onnx_sha256": manifest.files["model.fp16.onnx"], "verification": {"passed": True}}))
    lines = paths_without_engine(select_engines(manifest, layout.scan_engines(bundle), here, "fp16"))
    assert len(lines) == 2
    assert lines[0].startswith("test-time adaptation (continual and episodic) and predict after set_classes runs the image_encoder")
    assert lines[1].startswith("set_classes (new class names on the device) runs the text_encoder graph on ONNX Runtime")
    assert "`rada-export trt --graph text_encoder`" in lines[1]


def test_trt_ends_with_the_predict_command_and_load_bundle_line_that_use_the_engines(tmp_path):
    from rada_export.tensorrt.graphs import usage_lines

    predict, load = usage_lines(tmp_path / "my bundle", "fp16")
    assert predict == f"rada-export predict --bundle '{tmp_path / 'my bundle'}' --precision fp16 IMAGE ..."
    assert load == f"rt = load_bundle({str(tmp_path / 'my bundle')!r}, precision='fp16')"
