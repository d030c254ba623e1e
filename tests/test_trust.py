"""Trust boundaries: a bundle is untrusted input, and a user's files are sacred.

Every test tampers with a real bundle (or a real user folder), runs the real commands, and checks
the exit code, the message, and that nothing outside the bundle (or of the user's) changed.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from rada_export import RadaError
from rada_export.cli.app import app
from rada_export.runtimes import load_bundle
from rada_export.runtimes import replace
from rada_export.runtimes.manifest import read_manifest, sha256_file
from cli_run import flat, random_image

TINY = "rada-tiny-ViT"  # tests/conftest.py's tiny open_clip config

SECRET = b"TOP-SECRET-BYTES-0123456789"
COMMANDS = ("predict", "verify", "calibrate", "bench", "trt")


def snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under root (links not followed) with its bytes and mtime."""
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            out[path.relative_to(root).as_posix()] = (path.read_bytes(), path.stat().st_mtime_ns)
        elif path.is_symlink():
            out[path.relative_to(root).as_posix()] = (os.readlink(path).encode(), 0)
        else:
            out[path.relative_to(root).as_posix() + "/"] = (b"", 0)
    return out


@pytest.fixture(scope="module")
def pristine(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return random_image(tmp_path_factory.mktemp("img") / "a.png")


@pytest.fixture
def world(tmp_path, pristine):
    """A copy of the bundle, and an 'outside' folder beside it holding a secret and a copy of a graph."""
    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_bytes(SECRET)
    shutil.copyfile(bundle / "model.onnx", outside / "model.onnx")
    (outside / "model.int8.onnx").write_bytes(b"not ours")
    return bundle, outside


def edit_manifest(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def invoke(command: str, bundle: Path, image: Path, tmp_path: Path):
    args = {
        "predict": ["predict", "--bundle", str(bundle), str(image)],
        "verify": ["verify", "--bundle", str(bundle)],
        "calibrate": ["calibrate", "--bundle", str(bundle), "--images", str(image.parent), "--cache-dir", str(tmp_path / "cache")],
        "bench": ["bench", "--bundle", str(bundle), "--backend", "onnxruntime-cpu", "--batch", "1", "--repeats", "1"],
        "trt": ["trt", "--bundle", str(bundle)],
    }[command]
    return CliRunner().invoke(app, args)


def assert_refused(result, *needles: str) -> None:
    text = flat(result.output)
    assert result.exit_code == 2, (result.exit_code, text, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception  # one line, no traceback
    assert "Traceback" not in text and SECRET.decode() not in text
    for needle in needles:
        assert needle in text, (needle, text)


# ---------------------------------------------------------------------------------------------
# Paths the manifest names


def _absolute_graph(bundle, outside):
    def change(m):
        m["graphs"]["model"]["file"] = str(outside / "model.onnx")
        m["files"][str(outside / "model.onnx")] = sha256_file(outside / "model.onnx")
    return change, "graphs['model'].file", "absolute path"


def _dotdot_graph(bundle, outside):
    def change(m):
        m["graphs"]["model"]["file"] = "../outside/model.onnx"
        m["files"]["../outside/model.onnx"] = sha256_file(outside / "model.onnx")
    return change, "graphs['model'].file", "'..'"


def _symlinked_graph(bundle, outside):
    (bundle / "model.onnx").unlink()
    (bundle / "model.onnx").symlink_to(outside / "model.onnx")
    return (lambda m: None), "model.onnx", "symbolic link"


def _symlinked_head(bundle, outside):
    (bundle / "head.safetensors").unlink()
    (bundle / "head.safetensors").symlink_to(outside / "secret.txt")
    return (lambda m: None), "head.safetensors", "symbolic link"


def _vocab_outside(bundle, outside):
    def change(m):
        m["tokenizer"]["vocab"] = str(outside / "secret.txt")
        m["files"][str(outside / "secret.txt")] = sha256_file(outside / "secret.txt")
    return change, "tokenizer.vocab", "absolute path"


def _external_data_dotdot(bundle, outside):
    def change(m):
        m["graphs"]["model"]["external_data"] = "../outside/secret.txt"
    return change, "graphs['model'].external_data", "'..'"


def _files_entry_outside(bundle, outside):
    def change(m):
        m["files"]["../outside/secret.txt"] = "0" * 64
    return change, "files entry '../outside/secret.txt'", "'..'"


def _vocab_symlinked_dir(bundle, outside):
    shutil.rmtree(bundle / "tokenizer")
    (bundle / "tokenizer").symlink_to(outside)
    return (lambda m: None), "tokenizer", "symbolic link"


TAMPERS = [_absolute_graph, _dotdot_graph, _symlinked_graph, _symlinked_head, _vocab_outside, _external_data_dotdot,
           _files_entry_outside, _vocab_symlinked_dir]


@pytest.mark.parametrize("tamper", TAMPERS, ids=lambda f: f.__name__.strip("_"))
def test_paths_outside_the_bundle_are_refused_by_every_command(world, tamper, image, tmp_path):
    bundle, outside = world
    change, entry, why = tamper(bundle, outside)
    edit_manifest(bundle, change)
    before_outside, before_bundle = snapshot(outside), snapshot(bundle)
    with pytest.raises(RadaError, match="outside the bundle|absolute path|'\\.\\.'") as err:
        load_bundle(bundle)
    assert entry in err.value.problem and why in err.value.problem and SECRET.decode() not in str(err.value)
    for command in COMMANDS:
        assert_refused(invoke(command, bundle, image, tmp_path), entry, why)
    assert snapshot(outside) == before_outside and snapshot(bundle) == before_bundle


def _graph_with_external_data(bundle: Path, location: str) -> None:
    """Rewrites model.onnx so that its weights name ``location`` as their external data, and makes
    the manifest's checksums agree (a consistent, malicious bundle)."""
    import onnx

    model = onnx.load(str(bundle / "model.onnx"))
    tensor = max(model.graph.initializer, key=lambda t: len(t.raw_data))
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    tensor.external_data.add(key="location", value=location)
    onnx.save_model(model, str(bundle / "model.onnx"))
    edit_manifest(bundle, lambda m: m["files"].update({"model.onnx": sha256_file(bundle / "model.onnx")}))


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "symlink"])
def test_external_data_named_inside_a_graph_is_confined(world, kind, image, tmp_path):
    bundle, outside = world
    if kind == "symlink":
        # The link itself is refused, whoever names it; the graph-level check alone is tested below.
        (bundle / "weights.bin").symlink_to(outside / "secret.txt")
    location = {"absolute": str(outside / "secret.txt"), "dotdot": "../outside/secret.txt", "symlink": "weights.bin"}[kind]
    _graph_with_external_data(bundle, location)
    before = snapshot(outside)
    named = "weights.bin" if kind == "symlink" else "graph model.onnx reads external data"
    with pytest.raises(RadaError) as err:  # graphs are opened (and checked) when first run, links at load
        load_bundle(bundle, backend="onnxruntime").predict(np.zeros((64, 64, 3), np.uint8))
    assert named in err.value.problem and SECRET.decode() not in str(err.value)
    assert_refused(invoke("predict", bundle, image, tmp_path), named)
    assert snapshot(outside) == before


def test_graph_external_data_check_alone(tmp_path, pristine):
    """The ONNX-level check by itself (what protects graphs ONNX Runtime < 1.24 would follow)."""
    from rada_export.runtimes.paths import check_graph_external_data, external_data_locations

    bundle = tmp_path / "b"
    shutil.copytree(pristine, bundle)
    (tmp_path / "secret.txt").write_bytes(SECRET)
    _graph_with_external_data(bundle, "../secret.txt")
    assert external_data_locations(bundle / "model.onnx") == ["../secret.txt"]
    with pytest.raises(RadaError, match=r"external-data location inside model.onnx climbs out of the bundle"):
        check_graph_external_data(bundle / "model.onnx", "model.onnx")


def test_onnx_subset_field_numbers_match_onnx():
    """The field numbers paths.py parses graphs with are onnx.proto's."""
    import onnx

    from rada_export.runtimes.paths import ONNX_SUBSET

    real = {"Entry": onnx.StringStringEntryProto, "Tensor": onnx.TensorProto, "Sparse": onnx.SparseTensorProto,
            "Attribute": onnx.AttributeProto, "Node": onnx.NodeProto, "Graph": onnx.GraphProto,
            "Function": onnx.FunctionProto, "Model": onnx.ModelProto}
    for message, fields in ONNX_SUBSET.items():
        by_name = real[message].DESCRIPTOR.fields_by_name
        for name, number, _, repeated in fields:
            assert by_name[name].number == number, (message, name)


def test_calibrate_never_deletes_outside_files(world, image, tmp_path):
    """The int8 entry pointed outside; calibrate used to delete it as a stale INT8 file."""
    bundle, outside = world

    def change(m):
        m["graphs"]["model.int8"] = {**m["graphs"]["model"], "file": "../outside/model.int8.onnx", "precision": "int8"}
        m["files"]["../outside/model.int8.onnx"] = sha256_file(outside / "model.int8.onnx")
    edit_manifest(bundle, change)
    before_outside, before_bundle = snapshot(outside), snapshot(bundle)
    assert_refused(invoke("calibrate", bundle, image, tmp_path), "graphs['model.int8'].file", "'..'")
    assert snapshot(outside) == before_outside and snapshot(bundle) == before_bundle


# ---------------------------------------------------------------------------------------------
# Values checked against each other, and types


def _set(path: str, value):
    def change(m):
        *parents, last = path.split(".")
        node = m
        for key in parents:
            node = node[key]
        node[last] = value
    return change


VALUE_TAMPERS = {
    "graphs null": (_set("graphs", None), "manifest.graphs should be an object, got null"),
    "graphs list": (_set("graphs", []), "manifest.graphs should be an object"),
    "graph entry null": (_set("graphs.model", None), "manifest.graphs['model'] should be an object"),
    "file not a string": (_set("graphs.model.file", 3), "manifest.graphs['model'].file should be a string"),
    "preprocess null": (_set("preprocess", None), "manifest.preprocess should be an object"),
    "huge size": (_set("preprocess.size", [100000, 100000]), "preprocess.size is 100000"),
    "size vs graph": (_set("preprocess.size", [96, 96]), "preprocess.size is [96, 96] but graphs"),
    "num_heads text": (_set("head.num_heads", "eight"), "manifest.head.num_heads should be an integer"),
    "num_heads 7": (_set("head.num_heads", 7), "head.num_heads (7) must be a positive divisor"),
    "temperature 0": (_set("head.temperature", 0), "head.temperature must be a positive finite number"),
    "classes vs features": (_set("class_names", ["cat", "dog"]), "holds 3 x"),
    "classes missing": (lambda m: m.pop("class_names"), "manifest has no 'class_names'"),
    "precision vs key": (_set("graphs.model.precision", "int8"), "graphs['model'].precision is 'int8'"),
    "unknown graph key": (lambda m: m["graphs"].update(evil=m["graphs"]["model"]), "unknown key 'evil'"),
    "not an object": (lambda m: m.clear() or m.update(schema_version=1, x=[1]), "manifest has no 'model'"),
    "max_batch huge": (_set("max_batch", 10**12), "max_batch is 1000000000000"),
}


@pytest.mark.parametrize("name", list(VALUE_TAMPERS))
def test_manifest_values_are_checked_at_load(world, name, image, tmp_path):
    bundle, _ = world
    change, needle = VALUE_TAMPERS[name]
    edit_manifest(bundle, change)
    before = snapshot(bundle)
    with pytest.raises(RadaError) as err:
        load_bundle(bundle)
    assert needle in err.value.problem
    for command in COMMANDS:
        assert_refused(invoke(command, bundle, image, tmp_path), needle)
    assert snapshot(bundle) == before


def test_manifest_that_is_not_json_or_not_an_object(world):
    bundle, _ = world
    for text, needle in (("[1, 2]", "not a JSON object"), ("{" * 100000, "not a valid manifest"), ("\xff", "not a valid manifest")):
        (bundle / "manifest.json").write_bytes(text.encode("latin-1"))
        with pytest.raises(RadaError, match=needle):
            read_manifest(bundle)


# ---------------------------------------------------------------------------------------------
# Precision: say what ran


def test_a_missing_precision_says_fp32_ran(world, image):
    bundle, _ = world
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", precision="int8")
    assert rt.precision == "fp32" and rt.requested_precision == "int8"
    assert "FP32 ran" in rt.description and rt.description.count("int8") == 2  # "int8 requested ... no int8 graph"
    result = CliRunner().invoke(app, ["predict", "--bundle", str(bundle), "--precision", "int8", "--json", str(image)])
    assert result.exit_code == 0 and json.loads(result.stdout.splitlines()[-1])["summary"]["precision"] == "fp32"
    result = CliRunner().invoke(app, ["predict", "--bundle", str(bundle), "--precision", "fp16", str(image)])
    assert result.exit_code == 0 and "FP32 ran" in flat(result.output) and "fp16 requested" in flat(result.output)


# ---------------------------------------------------------------------------------------------
# A user's files


def _user_folder(root: Path) -> Path:
    root.mkdir()
    (root / "notes.txt").write_text("mine")
    (root / "src").mkdir()
    (root / "src" / "main.py").write_text("print('hi')\n")
    return root


@pytest.mark.parametrize("kind", ["user files", "foreign manifest", "bundle plus user file"])
def test_onnx_force_replaces_only_a_bundle(tmp_path, pristine, kind):
    if kind == "bundle plus user file":
        out = tmp_path / "out"
        shutil.copytree(pristine, out)
        (out / "notes.txt").write_text("mine")
        needle = "holds files that are not part of its bundle (notes.txt)"
    else:
        out = _user_folder(tmp_path / "out")
        needle = "is not a rada-export bundle"
        if kind == "foreign manifest":
            (out / "manifest.json").write_text('{"name": "my web app", "icons": []}')
    before = snapshot(out)
    result = CliRunner().invoke(app, ["onnx", "--model", TINY, "--pretrained", "none", "--classes", "a,b",
                                      "--out", str(out), "--force", "--no-verify", "-q"])
    assert_refused(result, needle)
    assert snapshot(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging left beside it


def test_demo_replaces_only_its_own_folder(tmp_path):
    from rada_export.demo import MARKER, DemoConfig, _prepare_out, _write_marker

    out = _user_folder(tmp_path / "out")
    (out / "demo.json").write_text('{"model": "ViT-B-32"}')  # looks like the old marker: not ours any more
    before = snapshot(out)
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(out)])
    assert_refused(result, "--out: output folder", "was not made by the demo")
    assert snapshot(out) == before

    ours = tmp_path / "ours"
    _prepare_out(ours, DemoConfig(out=ours))
    (ours / "images").mkdir()
    (ours / "images" / "x.png").write_bytes(b"x")
    _write_marker(ours, DemoConfig(out=ours), ["images/x.png"])  # as the demo records what it made
    (ours / "src").mkdir()  # the user's, added later
    before = snapshot(ours)
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(ours)])
    assert_refused(result, "files the demo did not make (src/)")
    assert snapshot(ours) == before

    shutil.rmtree(ours / "src")
    _prepare_out(ours, DemoConfig(out=ours))  # only the demo's own entries: replaced
    assert sorted(p.name for p in ours.iterdir()) == [MARKER]


# ---------------------------------------------------------------------------------------------
# Crash safety: a real rada-export process killed at each step of the replacement

EXCHANGE_STEPS = [(step, False) for step in replace.STEPS_EXCHANGE]
RENAME_STEPS = [pytest.param(step, True, marks=pytest.mark.slow) for step in replace.STEPS_RENAMES if step != "staged"]
# Which bundle a crash at each step must leave at the path (after recovery): the old or the new one.
AFTER = {"staged": "old", "old-marked": "old", "swapped": "new", "old-aside": "new", "new-placed": "new", "old-removed": "new"}


def _killed(args: list[str], step: str, renames: bool) -> None:
    env = {**os.environ, replace.KILL_ENV: step}
    if renames:
        env[replace.NO_EXCHANGE_ENV] = "1"
    exe = Path(sys.executable).with_name("rada-export")
    proc = subprocess.run([str(exe), *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr[-2000:])


def _leftovers(bundle: Path) -> list[str]:
    return sorted(p.name for p in bundle.parent.iterdir() if p.name != bundle.name and ".rada-" in p.name)


def _after_crash(bundle: Path, step: str, image: Path, expect_classes: list[str]) -> None:
    """The bundle at the path loads and predicts without changing anything (readers never recover:
    where the path is empty they say which command finishes the swap); the next writer finishes the
    swap and leaves nothing behind."""
    from rada_export.runtimes.bundle import swap

    before = (_leftovers(bundle), snapshot(bundle) if bundle.exists() else None)
    if bundle.exists():
        rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
        assert rt.classes == expect_classes
        result = CliRunner().invoke(app, ["predict", "--bundle", str(bundle), str(image)])
        assert result.exit_code == 0, result.output
    else:  # the two-rename path killed between its renames
        result = CliRunner().invoke(app, ["predict", "--bundle", str(bundle), str(image)])
        assert_refused(result, "a replacement of it was stopped half-way", "rerun the command that was replacing it")
    assert (_leftovers(bundle), snapshot(bundle) if bundle.exists() else None) == before
    swap.recover(bundle)  # what every writer (onnx, calibrate, demo) does first
    assert load_bundle(bundle, backend="onnxruntime", device="cpu").classes == expect_classes
    assert _leftovers(bundle) == []


@pytest.mark.parametrize("step,renames", EXCHANGE_STEPS + RENAME_STEPS)
def test_onnx_force_killed_at_each_step(tmp_path, pristine, image, step, renames):
    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    (tmp_path / "neighbour.txt").write_text("mine")
    _killed(["onnx", "--model", TINY, "--pretrained", "none", "--classes", "red,green", "--out", str(bundle), "--force",
             "--no-verify", "-q"], step, renames)
    if step != "staged":
        assert _leftovers(bundle), "the kill left nothing to recover: the step was not reached"
    _after_crash(bundle, step, image, ["cat", "dog", "bird"] if AFTER[step] == "old" else ["red", "green"])
    assert (tmp_path / "neighbour.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def calibration_images(tmp_path_factory) -> Path:
    from PIL import Image

    root = tmp_path_factory.mktemp("calib")
    rng = np.random.default_rng(1)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, size=(48, 64, 3), dtype=np.uint8)).save(root / f"{i}.png")
    return root


@pytest.mark.parametrize("step,renames", EXCHANGE_STEPS + RENAME_STEPS)
def test_calibrate_killed_at_each_step(tmp_path, pristine, image, calibration_images, step, renames):
    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    _killed(["calibrate", "--bundle", str(bundle), "--images", str(calibration_images), "--graph", "model",
             "--calib-samples", "8", "--holdout", "2", "--accept-degraded", "--cache-dir", str(tmp_path / "cache"), "-q"],
            step, renames)
    _after_crash(bundle, step, image, ["cat", "dog", "bird"])
    has_int8 = "model.int8" in read_manifest(bundle).graphs
    assert has_int8 == (AFTER[step] == "new")
    rt = load_bundle(bundle, backend="onnxruntime", device="cpu", precision="int8")
    assert rt.precision == ("int8" if has_int8 else "fp32")
    rt.predict([str(image)])


def test_recovery_touches_only_marked_folders(tmp_path, pristine):
    """Folders that look like our leftovers but carry no marker of ours (or a live process's) stay."""
    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    lookalike = tmp_path / ".bundle.rada-0123abcd"
    lookalike.mkdir()
    (lookalike / "mine.txt").write_text("mine")
    fake = tmp_path / ".bundle.rada-89abcdef"
    fake.mkdir()
    (tmp_path / ".bundle.rada-89abcdef.owned").write_text('{"signature": "something else"}')
    live = replace.new_staging(bundle)  # this process is alive: its staging is in progress
    assert replace.recover(bundle) == []
    assert (lookalike / "mine.txt").read_text() == "mine" and fake.is_dir() and live.is_dir()
    replace.discard(live)
    assert not live.exists() and not Path(str(live) + ".owned").exists()


def test_calibrate_keeps_every_file_it_did_not_make(tmp_path, pristine, calibration_images):
    """A manifest whose int8 entry names one of the bundle's own files (head.safetensors) and a user's
    file in the bundle: calibrate replaces the int8 entry and keeps both files."""
    from rada_export.calibration.bundle import CalibrateRequest, calibrate_bundle

    bundle = tmp_path / "bundle"
    shutil.copytree(pristine, bundle)
    (bundle / "notes.txt").write_text("mine")
    edit_manifest(bundle, lambda m: m["graphs"].update({"model.int8": {**m["graphs"]["model"], "file": "head.safetensors",
                                                                         "precision": "int8"}}))
    head = (bundle / "head.safetensors").read_bytes()
    calibrate_bundle(CalibrateRequest(bundle=bundle, images=calibration_images, samples=8, holdout=2, graph="model",
                                      accept_degraded=True, force=True, cache_dir=tmp_path / "cache"))
    assert (bundle / "head.safetensors").read_bytes() == head and (bundle / "notes.txt").read_text() == "mine"
    manifest = read_manifest(bundle)
    assert manifest.graphs["model.int8"].file == "model.int8.onnx" and "head.safetensors" in manifest.files
    load_bundle(bundle, backend="onnxruntime", device="cpu")
    assert _leftovers(bundle) == []
