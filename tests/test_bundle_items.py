"""The bundle owner through the real CLI and the real runtime: nothing of the user's is deleted at
any depth (demo, onnx --force, calibrate), readers change nothing, a loaded runtime runs the bytes it
verified, every graph output is checked, and small inputs cannot ask for huge work or a traceback.

Shared bundles are read only; every test that changes a bundle copies it to tmp_path first.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rada_export import RadaError
from rada_export.runtimes import load_bundle
from rada_export.runtimes.bundle import swap
from rada_export.runtimes.manifest import read_manifest
from cli_run import invoke, flat, random_image

from test_bundle_ownership import ENGINE_BYTES, ENV, engine_json, make_unlistable, read_deep

TINY = "rada-tiny-ViT"
SIX = ["red", "green", "blue", "cyan", "magenta", "yellow"]


def snapshot(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() and not p.is_symlink() else b"/")
            for p in sorted(root.rglob("*"))}


def refused(result, *needles: str) -> str:
    text = flat(result.output)
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # one message, no traceback
    for needle in needles:
        assert needle in text, (needle, text)
    return text


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data).replace('"BIG"', "9" * 5000))  # json.dumps refuses such an integer itself


def rechecksum(bundle: Path, *rels: str) -> None:
    edit_manifest(bundle, lambda m: m["files"].update({r: hashlib.sha256((bundle / r).read_bytes()).hexdigest() for r in rels}))


def add_recorded_engine(bundle: Path) -> Path:
    env = bundle / ENV
    env.mkdir(parents=True)
    (env / "model.fp16.engine").write_bytes(ENGINE_BYTES)
    (env / "model.fp16.json").write_bytes(engine_json())
    return env


@pytest.fixture(scope="module")
def three(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False)


@pytest.fixture(scope="module")
def six(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=SIX, verify=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return random_image(tmp_path_factory.mktemp("img") / "a.png")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """Enough images for calibrate to get past its own checks (to where it would assemble the bundle)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(1)
    for i in range(8):
        Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def copy(src: Path, tmp_path: Path, name: str = "bundle") -> Path:
    dst = tmp_path / name
    shutil.copytree(src, dst, symlinks=True)
    return dst


# -- 1. demo re-run -----------------------------------------------------------------------------


def demo_folder(tmp_path: Path, bundle: Path) -> Path:
    """A folder as the demo leaves it: its marker listing the images and head it made, the bundle,
    and an engine `trt` built and recorded."""
    from rada_export.demo import DemoConfig, _made_under, _write_marker
    from rada_export.synthetic import make_image_folder

    out = tmp_path / "demo"
    out.mkdir()
    make_image_folder(out / "images", images_per_class=2, seed=0)
    (out / "head.safetensors").write_bytes(b"head")
    shutil.copytree(bundle, out / "bundle")
    add_recorded_engine(out / "bundle")
    _write_marker(out, DemoConfig(out=out), _made_under(out, "images") + ["head.safetensors"])
    return out


@pytest.mark.parametrize("user_file", ["images/my_class/photo.jpg", "bundle/NOTES.md", f"bundle/{ENV}/my_trtexec.engine",
                                       "images/circle/extra.png"])
def test_demo_rerun_keeps_user_files_at_any_depth(tmp_path, three, user_file):
    out = demo_folder(tmp_path, three)
    (out / user_file).parent.mkdir(parents=True, exist_ok=True)
    (out / user_file).write_bytes(b"mine")
    before = snapshot(out)
    refused(invoke("demo", "--quick", "--out", out), "files the demo did not make", user_file)
    assert snapshot(out) == before


def test_demo_rerun_replaces_exactly_what_it_made(tmp_path, three):
    from rada_export.demo import MARKER, DemoConfig, _prepare_out

    out = demo_folder(tmp_path, three)
    _prepare_out(out, DemoConfig(out=out))  # what a re-run does first: the recorded engine is the demo's too
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == [MARKER]


# -- 2. onnx --force ------------------------------------------------------------------------------


FORCE = ["onnx", "--model", TINY, "--pretrained", "none", "--classes", "a,b", "--no-verify", "-q", "--force", "--out"]


@pytest.mark.parametrize("user_file", ["tokenizer/notes.txt", f"{ENV}/my_trtexec.engine", "engines/README.md", "deep/er/x"])
def test_onnx_force_keeps_user_files_in_subfolders(tmp_path, three, user_file):
    bundle = copy(three, tmp_path)
    add_recorded_engine(bundle)
    (bundle / user_file).parent.mkdir(parents=True, exist_ok=True)
    (bundle / user_file).write_text("mine")
    before = snapshot(bundle)
    refused(invoke(*FORCE, bundle), "holds files that are not part of its bundle", user_file)
    assert snapshot(bundle) == before


def test_onnx_force_replaces_a_bundle_with_its_recorded_engines(tmp_path, three):
    bundle = copy(three, tmp_path)
    add_recorded_engine(bundle)
    result = invoke(*FORCE, bundle)
    assert result.exit_code == 0, result.output
    assert read_manifest(bundle).class_names == ["a", "b"] and not (bundle / "engines").exists()


# -- 3. calibrate, and readers ----------------------------------------------------------------------


def calibrate_args(bundle: Path, images: Path, tmp_path: Path) -> list:
    return ["calibrate", "--bundle", bundle, "--images", images, "--graph", "model", "--calib-samples", "4", "--holdout", "2",
            "--accept-degraded", "--cache-dir", tmp_path / "cache", "-q"]


def test_calibrate_refuses_a_folder_it_cannot_read(tmp_path, three, images):
    """A sub-folder the process may not list (mode 000, run without root's permission override): the
    old walk skipped it, so the user's file was left out of the new bundle."""
    setpriv = shutil.which("setpriv")
    if setpriv is None or os.geteuid() != 0:
        pytest.skip("needs root and setpriv to run a process that root's permission override does not cover")
    bundle = copy(three, tmp_path)
    (bundle / "notes").mkdir()
    (bundle / "notes" / "todo.txt").write_text("mine")
    (bundle / "notes").chmod(0)
    try:
        drop = "-dac_override,-dac_read_search"
        run = subprocess.run([setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}", sys.executable, "-m", "rada_export.cli.app",
                              *map(str, calibrate_args(bundle, images, tmp_path))], capture_output=True, text=True, timeout=600)
    finally:
        (bundle / "notes").chmod(0o755)
    assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr[-2000:]
    assert "cannot list" in flat(run.stderr) and "its files would be left out" in flat(run.stderr)
    assert (bundle / "notes" / "todo.txt").read_text() == "mine" and "model.int8" not in read_manifest(bundle).graphs


def test_calibrate_refuses_a_folder_whose_path_is_too_long(tmp_path, three, images):
    bundle = copy(three, tmp_path)
    chain = make_unlistable(bundle / "notes")
    before = read_manifest(bundle).graphs.keys()
    refused(invoke(*calibrate_args(bundle, images, tmp_path)), "cannot list", "its files would be left out")
    assert read_deep(chain) == b"mine" and read_manifest(bundle).graphs.keys() == before
    assert [p.name for p in tmp_path.iterdir() if ".rada-" in p.name] == []


def dead_leftover(bundle: Path) -> Path:
    """A complete staging folder beside the bundle, left by a process that died."""
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    staging = swap.new_staging(bundle)
    shutil.rmtree(staging)
    shutil.copytree(bundle, staging)
    marker = staging.with_name(staging.name + ".owned")
    record = json.loads(marker.read_text())
    marker.write_text(json.dumps({**record, "pid": int(proc.stdout), "state": "complete"}))
    return staging


def test_readers_leave_an_interrupted_swap_to_writers(tmp_path, three, image):
    bundle = copy(three, tmp_path)
    leftover = dead_leftover(bundle)
    before = snapshot(tmp_path)
    read_manifest(bundle)
    load_bundle(bundle, backend="onnxruntime", device="cpu").predict([str(image)])
    assert invoke("predict", "--bundle", bundle, image).exit_code == 0
    assert snapshot(tmp_path) == before and leftover.is_dir()
    assert swap.recover(bundle) and not leftover.exists()  # the next writer finishes it


def test_a_reader_names_the_writer_that_finishes_a_swap(tmp_path, three, image):
    bundle = copy(three, tmp_path)
    leftover = dead_leftover(bundle)
    shutil.rmtree(bundle)  # killed between the two renames: the path is empty
    before = snapshot(tmp_path)
    refused(invoke("predict", "--bundle", bundle, image), "stopped half-way", "rerun the command that was replacing it")
    assert snapshot(tmp_path) == before
    swap.recover(bundle)
    assert bundle.is_dir() and not leftover.exists()


# -- 4. a replacement after load_bundle --------------------------------------------------------------


def test_replaced_after_load_the_runtime_runs_what_it_verified(tmp_path, three, image):
    bundle = copy(three, tmp_path)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")  # no graph opened yet
    reference = load_bundle(three, backend="onnxruntime", device="cpu")
    result = invoke("onnx", "--model", TINY, "--pretrained", "none", "--classes", "a,b,c,d,e", "--no-verify", "-q",
                    "--force", "--out", bundle)
    assert result.exit_code == 0, result.output
    assert read_manifest(bundle).class_names == ["a", "b", "c", "d", "e"]

    got, want = rt.predict([str(image)] * 2), reference.predict([str(image)] * 2)
    assert got.classes == ["cat", "dog", "bird"] and got.logits.shape == (2, 3)
    np.testing.assert_allclose(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    encoded = rt.encode(np.zeros((1, 3, *read_manifest(three).preprocess.size), np.float32))  # the image encoder, opened now
    np.testing.assert_allclose(encoded, reference.encode(np.zeros_like(encoded, shape=(1, 3, *read_manifest(three).preprocess.size))),
                               rtol=1e-5, atol=1e-5)
    rt.set_classes(["pear", "plum"])  # tokenizer and text encoder, opened now, from the verified bytes
    reference.set_classes(["pear", "plum"])
    np.testing.assert_allclose(rt.predict([str(image)]).logits, reference.predict([str(image)]).logits, rtol=1e-5, atol=1e-5)
    assert load_bundle(bundle, backend="onnxruntime", device="cpu").classes == ["a", "b", "c", "d", "e"]


def test_a_file_changed_in_place_after_load_is_refused(tmp_path, three, image):
    bundle = copy(three, tmp_path)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    with open(bundle / "model.onnx", "r+b") as fh:  # same inode, other bytes: no rada-export command does this
        fh.seek(100)
        fh.write(b"\x00" * 16)
    with pytest.raises(RadaError, match="checksum mismatch.*model.onnx"):
        rt.predict([str(image)])


# -- 6. graph outputs ------------------------------------------------------------------------------


def tamper_logits(bundle: Path, how: str) -> None:
    """Rewrites the fused graph's logits (and re-checksums it, so the bundle is consistent)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(bundle / "model.onnx")
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["logits_raw" if o == "logits" else o for o in node.output]
        node.input[:] = ["logits_raw" if i == "logits" else i for i in node.input]
    out = next(o for o in graph.output if o.name == "logits")
    out.type.tensor_type.shape.dim[1].dim_param = "k"
    if how == "3 of 6 columns":
        graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
                                  (("s0", [0]), ("s1", [3]), ("ax", [1]))])
        graph.node.append(helper.make_node("Slice", ["logits_raw", "s0", "s1", "ax"], ["logits"]))
    elif how in ("nan", "inf"):
        graph.initializer.append(numpy_helper.from_array(np.array(float(how), np.float32), "bad"))
        graph.node.append(helper.make_node("Mul", ["logits_raw", "bad"], ["logits"]))
    elif how == "fails in run":  # a fixed batch of 1: ONNX Runtime raises for 2 images
        graph.initializer.append(numpy_helper.from_array(np.array([1, len(SIX)], np.int64), "shape"))
        graph.node.append(helper.make_node("Reshape", ["logits_raw", "shape"], ["logits"]))
    elif how == "renamed output":
        graph.node.append(helper.make_node("Identity", ["logits_raw"], ["scores"]))
        out.name = "scores"
    onnx.save(model, bundle / "model.onnx")
    rechecksum(bundle, "model.onnx")


@pytest.mark.parametrize("how,needle", [("3 of 6 columns", "returned logits of shape 2 x 3"),
                                        ("nan", "non-finite"), ("inf", "non-finite"),
                                        ("fails in run", "ONNX Runtime on model.onnx failed while running"),
                                        ("renamed output", "must return logits, image_features (missing: logits)")])
def test_every_graph_output_is_checked(tmp_path, six, image, how, needle):
    bundle = copy(six, tmp_path)
    tamper_logits(bundle, how)
    result = invoke("predict", image, image, "--bundle", bundle, "--backend", "onnxruntime", "--device", "cpu", "--json")
    text = refused(result, needle)
    assert "Traceback" not in text
    payload = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"{c} in --json output"))
    assert needle in flat(payload["error"])


# -- 8. small inputs that asked for huge work, or gave a traceback ------------------------------------------


def bomb(bundle: Path) -> None:
    vocab = "tokenizer/bpe_simple_vocab_16e6.txt.gz"
    (bundle / vocab).write_bytes(gzip.compress(b"\n" * (80 << 20), compresslevel=1))  # 80 KB that expands to 80 MB
    rechecksum(bundle, vocab)


def deep(value, levels: int):
    for _ in range(levels):
        value = {"x": value}
    return value


MANIFEST_EDITS = {
    "tokenizer context_length 1e9": (lambda m: m["tokenizer"].update(context_length=10 ** 9), "context_length is 1000000000"),
    "tokenizer context_length a string": (lambda m: m["tokenizer"].update(context_length="77"), "'context_length' must be int"),
    "tokenizer vocab a number": (lambda m: m["tokenizer"].update(vocab=7), "'vocab' must be str"),
    "tokenizer context_length not the graph's": (lambda m: m["tokenizer"].update(context_length=64),
                                                 "context_length is 64 but the bundle's context_length"),
    "an integer of 5000 digits": (lambda m: m.update(max_batch="BIG"), "not a valid manifest"),
    "resolved nested 200 deep": (lambda m: m.update(resolved=deep(1, 200)), "nests deeper than 32 levels"),
    "a model name of 100 KB": (lambda m: m.update(model="x" * 100_000), "more than 4096"),
}


@pytest.mark.parametrize("case", list(MANIFEST_EDITS))
def test_manifest_bounds(tmp_path, three, image, case):
    bundle = copy(three, tmp_path)
    change, needle = MANIFEST_EDITS[case]
    edit_manifest(bundle, change)
    refused(invoke("predict", image, "--bundle", bundle, "--classes", "pear,plum"), needle)
    if case == "resolved nested 200 deep":  # calibrate refuses before any work, not after it
        refused(invoke("calibrate", "--bundle", bundle, "--images", image.parent, "--cache-dir", tmp_path / "c"), needle)


def test_a_vocabulary_that_expands_to_gigabytes_is_not_read(tmp_path, three, image):
    bundle = copy(three, tmp_path)
    bomb(bundle)
    refused(invoke("predict", image, "--bundle", bundle, "--classes", "pear,plum"), "expands to more than 64 MiB")


PANICS = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "pre_tokenizer": None,
          "post_processor": None, "decoder": None, "normalizer": {"type": "Precompiled", "precompiled_charsmap": "AAAA"},
          "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}}


@pytest.mark.parametrize("content", ['{"model": {"type": "NoSuchModel"}}', json.dumps(PANICS)], ids=["malformed", "rust panic"])
def test_a_broken_hugging_face_tokenizer_is_one_error(tmp_path, three, image, content):
    """A tokenizer.json the library refuses, and one it panics on in Rust (PanicException is a
    BaseException, which an ``except Exception`` lets through as a traceback)."""
    bundle = copy(three, tmp_path)
    (bundle / "tokenizer" / "tokenizer.json").write_text(content)
    rechecksum(bundle, "tokenizer/tokenizer.json")
    edit_manifest(bundle, lambda m: m.update(tokenizer={"kind": "hf_tokenizers", "file": "tokenizer/tokenizer.json",
                                                        "context_length": m["context_length"], "pad_id": 0}))
    refused(invoke("predict", image, "--bundle", bundle, "--classes", "pear,plum"), "not a usable tokenizer.json")


def test_an_engine_description_python_cannot_parse_leaves_predict_working(tmp_path, three, image):
    bundle = copy(three, tmp_path)
    env = add_recorded_engine(bundle)
    (env / "model.fp16.json").write_text('{"format": ' + "9" * 5000 + "}")
    result = invoke("predict", image, "--bundle", bundle)
    assert result.exit_code == 0, result.output


def test_usage_errors_with_json_print_json(tmp_path, three, image):
    run = subprocess.run([sys.executable, "-m", "rada_export.cli.app", "predict", str(image), "--bundle", str(three),
                          "--top", "0", "--json"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert "--top" in json.loads(run.stdout)["error"]


@pytest.mark.slow
def test_a_full_disk_during_onnx_is_one_error(tmp_path):
    """A real write limit (RLIMIT_FSIZE, with SIGXFSZ ignored: writes fail with EFBIG as on a full or
    FAT32 disk); the export stops with one line and leaves nothing beside the target."""
    script = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
              "resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000)); "
              "from rada_export.cli.app import main; sys.argv = ['rada-export'] + sys.argv[1:]; main()")
    out = tmp_path / "out"
    run = subprocess.run([sys.executable, "-c", script, "onnx", "--model", TINY, "--pretrained", "none", "--classes", "a,b",
                          "--no-verify", "-q", "--out", str(out)], capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode == 2, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and "could not write the bundle" in flat(run.stderr)
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.slow
def test_demo_reruns_over_its_own_folder_and_nothing_else(tmp_path):
    """Two real quick demos in one folder: the second replaces everything the first made (its marker
    lists all of it); a photo of the user's then makes a third refuse."""
    out = tmp_path / "demo"
    for _ in range(2):
        result = invoke("demo", "--quick", "--out", out, "-q")
        assert result.exit_code == 0, result.output
    (out / "images" / "my_class").mkdir()
    (out / "images" / "my_class" / "photo.jpg").write_bytes(b"mine")
    refused(invoke("demo", "--quick", "--out", out, "-q"), "images/my_class/photo.jpg")
    assert (out / "images" / "my_class" / "photo.jpg").read_bytes() == b"mine"


# -- external data: checksummed, owned, and given to ONNX Runtime from memory ------------------------------


def test_graphs_with_external_data_run_from_verified_memory(tmp_path, shared_tiny_bundle, six, image):
    """Every graph keeps its weights in <graph>.onnx.data: the manifest checksums those files, they
    are ours for --force, and a runtime loaded before a replacement keeps running its verified bytes."""
    external = shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False, external_data_threshold=0)
    manifest = read_manifest(external)
    assert manifest.graphs["model"].external_data == "model.onnx.data" and "model.onnx.data" in manifest.files
    bundle = copy(external, tmp_path)
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    (tmp_path / "bundle").rename(tmp_path / "aside")  # replaced: another bundle, six classes, no external data
    shutil.copytree(six, bundle)
    want = load_bundle(external, backend="onnxruntime", device="cpu").predict([str(image)])
    np.testing.assert_allclose(rt.predict([str(image)]).logits, want.logits, rtol=1e-5, atol=1e-5)
    shutil.rmtree(bundle)
    (tmp_path / "aside").rename(bundle)
    result = invoke(*FORCE, bundle)  # .data files are the manifest's: --force may replace them
    assert result.exit_code == 0, result.output


def test_a_graph_naming_external_data_the_manifest_does_not_checksum_is_refused(tmp_path, shared_tiny_bundle, image):
    external = shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False, external_data_threshold=0)
    bundle = copy(external, tmp_path)
    edit_manifest(bundle, lambda m: m["files"].pop("model.onnx.data"))
    edit_manifest(bundle, lambda m: m["graphs"]["model"].update(external_data=None))
    # Graphs are checked when they are opened: predict runs the fused graph, and refuses it.
    refused(invoke("predict", image, "--bundle", bundle), "reads external data from model.onnx.data",
            "which the manifest does not checksum")
