"""Bad input: each case exits 2 with one line naming the problem and the fix, no traceback,
and writes nothing (the work folder holds exactly the same files afterwards)."""

from __future__ import annotations

import ast
import json
import os
import pickle
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from rada_export.checkpoint import METADATA_KEY, HeadMetadata, load_head, save_head
from rada_export.cli.app import app
from rada_export.errors import RadaError
from rada_export.head import RAdaHead

TINY = ["--model", "rada-tiny-ViT", "--pretrained", "none"]
runner = CliRunner()


def tree(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size if p.is_file() else -1 for p in root.rglob("*")}


def refused(args: list[str], work: Path, *needles: str, cwd: Path | None = None):
    """Runs the CLI in-process; asserts exit 2, the message, no traceback and an unchanged work folder."""
    before = tree(work)
    old = os.getcwd()
    os.chdir(cwd or work)
    try:
        result = runner.invoke(app, args)
    finally:
        os.chdir(old)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    text = " ".join(result.output.split())
    for needle in needles:
        assert needle in text, text
    assert "error:" in text and "fix:" in text, text
    assert tree(work) == before, "something was written"
    return text


@pytest.fixture(scope="module")
def bundle(shared_tiny_bundle) -> Path:
    return shared_tiny_bundle(classes=["cat", "dog", "bird"], verify=False)


@pytest.fixture
def work(tmp_path) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(tmp_path / "img.png")
    return tmp_path


@pytest.fixture
def image_folder_small(tmp_path) -> Path:
    root = tmp_path / "data"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


# -- --classes --------------------------------------------------------------------------------------


def test_missing_class_file_is_an_error_in_predict(bundle, work):
    refused(["predict", str(work / "img.png"), "--bundle", str(bundle), "--classes", "myclasses.txt"], work,
            "class file 'myclasses.txt' does not exist")


def test_missing_class_file_is_an_error_in_onnx(work):
    refused(["onnx", *TINY, "--classes", "myclasses.txt", "--out", str(work / "b")], work, "'myclasses.txt' does not exist")
    refused(["onnx", *TINY, "--classes", str(work / "lists" / "names"), "--out", str(work / "b")], work, "does not exist")


def test_ten_thousand_classes_hit_the_class_limit_before_any_work(bundle, work):
    names = ",".join(f"class {i}" for i in range(10000))
    text = refused(["predict", str(work / "img.png"), "--bundle", str(bundle), "--classes", names], work, "10000 classes")
    assert "the limit is 3344 classes" in text and "at most 3344" in text


def test_class_limit_in_onnx(work):
    # The duplicate check was quadratic: 15,000 names took minutes before the limit was even reached.
    names = ",".join(f"class {i}" for i in range(15000))
    refused(["onnx", *TINY, "--classes", names, "--out", str(work / "b")], work, "15000 classes", "the limit is 3344")


def test_class_names_equal_in_their_first_77_tokens_are_refused(bundle, work):
    stem = "very " * 80
    names = f"{stem}cat,{stem}dog"
    refused(["predict", str(work / "img.png"), "--bundle", str(bundle), "--classes", names], work, "first 77 tokens")
    refused(["onnx", *TINY, "--no-verify", "--classes", names, "--out", str(work / "b")], work, "first 77 tokens")


def test_one_kilobyte_classes_string(bundle, work):
    # Once an OSError (file name too long) from the file lookup; now one 1 KB name, and one class is too few.
    text = refused(["predict", str(work / "img.png"), "--bundle", str(bundle), "--classes", "x" * 1024], work, "at least two classes")
    assert "File name too long" not in text
    refused(["onnx", *TINY, "--classes", "x" * 1024, "--out", str(work / "b")], work, "at least two classes")


def test_single_class_says_at_least_two(bundle, work):
    refused(["predict", str(work / "img.png"), "--bundle", str(bundle), "--classes", "cat"], work, "at least two classes")
    refused(["onnx", *TINY, "--classes", "cat", "--out", str(work / "b")], work, "at least two classes")


# -- onnx options -----------------------------------------------------------------------------------


@pytest.mark.parametrize("template", ["a photo", "a {} and a {}", "a {0}", "a {name}", "a { photo {}", "{}}"])
def test_templates_need_exactly_one_placeholder(work, template):
    refused(["onnx", *TINY, "--classes", "cat,dog", "--template", template, "--out", str(work / "b")], work, "template")


@pytest.mark.parametrize("opset", ["99", "16", "21"])
def test_opset_outside_what_the_exporter_writes(work, opset):
    refused(["onnx", *TINY, "--classes", "cat,dog", "--opset", opset, "--out", str(work / "b")], work, "--opset")


def test_unreadable_verify_images_are_refused_before_the_export(work):
    (work / "bad.png").write_bytes(b"not a png at all")
    refused(["onnx", *TINY, "--classes", "cat,dog", "--verify-image", str(work / "bad.png"), "--out", str(work / "b")],
            work, "is not a readable image")
    refused(["onnx", *TINY, "--classes", "cat,dog", "--verify-image", str(work / "none.png"), "--out", str(work / "b")],
            work, "is not an existing file")


@pytest.mark.parametrize("out", [".", "..", "~"])
def test_out_must_be_a_folder_of_its_own(work, out):
    (work / "sub").mkdir()
    refused(["onnx", *TINY, "--classes", "cat,dog", "--out", out, "--force"], work, "cannot be an output folder", cwd=work / "sub")


# -- weights and checkpoints ------------------------------------------------------------------------


def _pickle_file(path: Path) -> Path:
    with open(path, "wb") as fh:  # a reference to os.system: weights_only loading must refuse it, never call it
        pickle.dump({"state_dict": {"x": os.system}}, fh)
    return path


@pytest.mark.parametrize("kind", ["garbage", "pickle"])
def test_bad_weights_files(work, kind):
    path = work / "weights.safetensors"
    if kind == "garbage":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    else:
        _pickle_file(path)
    refused(["onnx", "--model", "rada-tiny-ViT", "--pretrained", str(path), "--classes", "cat,dog", "--out", str(work / "b")],
            work, "weights file")
    refused(["onnx", "--ckpt", str(path), *TINY, "--classes", "cat,dog", "--out", str(work / "b")], work, str(path))


def _tiny_checkpoint(path: Path, **meta_overrides) -> Path:
    torch.manual_seed(0)
    save_head(path, RAdaHead(64, logit_scale=100.0), HeadMetadata(embed_dim=64, model="rada-tiny-ViT", pretrained="none",
                                                                  class_names=["cat", "dog"]))
    if meta_overrides:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = json.loads(f.metadata()[METADATA_KEY])
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        raw = meta_overrides.pop("_raw", None)
        meta.update(meta_overrides)
        save_file(tensors, str(path), metadata={METADATA_KEY: raw if raw is not None else json.dumps(meta)})
    return path


@pytest.mark.parametrize("overrides, needle", [
    ({"num_heads": 0}, "num_heads"), ({"num_heads": 7}, "num_heads 7 does not divide"), ({"num_heads": "eight"}, "num_heads"),
    ({"temperature": 0}, "temperature"), ({"temperature": float("nan")}, "temperature"),
    ({"format_version": 99}, "format_version 99"), ({"_raw": "[1, 2]"}, "not an object"), ({"_raw": "{oops"}, "not JSON"),
    ({"class_names": "cat"}, "class_names"), ({"logit_scale": -1}, "logit_scale"),
])
def test_bad_checkpoint_metadata(work, overrides, needle):
    path = _tiny_checkpoint(work / "head.safetensors", **overrides)
    with pytest.raises(RadaError, match=needle.split()[0]) as info:
        load_head(path)
    assert needle in info.value.problem and info.value.fix
    refused(["onnx", "--ckpt", str(path), *TINY, "--out", str(work / "b")], work, needle)


def test_zero_dimensional_tensors_in_a_checkpoint(work):
    path = work / "head.safetensors"
    names = [f"{n}.{p}" for n in ("q_proj1", "q_proj2", "q_proj3", "k_proj", "v_proj", "out_proj") for p in ("weight", "bias")]
    save_file({n: torch.tensor(1.0) for n in names}, str(path))
    refused(["onnx", "--ckpt", str(path), *TINY, "--out", str(work / "b")], work, "has shape ()")


def test_non_finite_weights_in_a_checkpoint(work):
    path = _tiny_checkpoint(work / "head.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["k_proj.weight"][0, 0] = float("nan")
    save_file(tensors, str(path), metadata=meta)
    refused(["onnx", "--ckpt", str(path), *TINY, "--out", str(work / "b")], work, "k_proj.weight is not a finite")


# -- train ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("option, value, needle", [
    ("--lr", "nan", "--lr must be a finite number"), ("--lr", "-1", "--lr must be positive"), ("--lr", "inf", "--lr"),
    ("--temperature", "0", "--temperature must be positive"), ("--alpha", "nan", "--alpha"),
    ("--val-fraction", "1.5", "--val-fraction"), ("--val-fraction", "nan", "--val-fraction"), ("--shots", "0", "--shots"),
    ("--aug-copies", "0", "--aug-copies"), ("--seed", "-1", "--seed"), ("--template", "a photo", "template"),
])
def test_train_options_fail_before_any_work(work, image_folder_small, option, value, needle):
    refused(["train", "--data", str(image_folder_small), *TINY, "--out", str(work / "h.safetensors"), option, value], work, needle)


def test_train_out_folder(work, image_folder_small):
    refused(["train", "--data", str(image_folder_small), *TINY, "--out", str(work)], work, "is a folder")


# -- bench, demo, trt, the runtime API -----------------------------------------------------------------


def test_bench_plot_naming_a_folder_or_a_bad_suffix(bundle, work):
    refused(["bench", "--bundle", str(bundle), "--plot", str(work), "--repeats", "1", "--batch", "1"], work, "is a folder")
    refused(["bench", "--bundle", str(bundle), "--plot", str(work / "p.txt"), "--repeats", "1", "--batch", "1"], work, ".png")


def test_bench_plot_into_a_folder_not_made_yet(bundle, work):
    result = runner.invoke(app, ["bench", "--bundle", str(bundle), "--backend", "onnxruntime-cpu", "--repeats", "1",
                                 "--batch", "1", "--plot", str(work / "new" / "sub" / "latency.png"), "--quiet"])
    assert result.exit_code == 0, result.output  # once a FileNotFoundError traceback after the runs
    assert (work / "new" / "sub" / "latency.png").stat().st_size > 0


def test_quick_with_model_is_refused(work):
    refused(["demo", "--quick", "--model", "ViT-B-32", "--out", str(work / "d")], work, "--quick", "--model ViT-B-32")


def test_views_without_episodic_tta_is_refused(bundle, work):
    refused(["predict", str(work / "img.png"), "--bundle", str(bundle), "--views", "4"], work, "--views 4 applies only")


def test_json_commands_print_their_error_as_json(bundle, work):
    """`trt --json` printed nothing on stdout when it failed; a --json caller now gets the error as JSON."""
    result = runner.invoke(app, ["trt", "--bundle", str(work / "missing"), "--json"])
    assert result.exit_code == 2
    data = json.loads(result.stdout)
    assert data["exit_code"] == 2 and data["error"] and data["fix"]
    result = runner.invoke(app, ["predict", str(work / "img.png"), "--bundle", str(bundle), "--classes", "cat", "--json"])
    assert result.exit_code == 2 and "at least two" in json.loads(result.stdout)["error"]


@pytest.mark.parametrize("batch_size", [2.5, 0, True, "4"])
def test_predict_batch_size_must_be_a_positive_integer(bundle, batch_size):
    from rada_export.runtimes import load_bundle

    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    with pytest.raises(RadaError, match="batch_size must be"):
        rt.predict([image, image], batch_size=batch_size)


def test_runtime_set_classes_refuses_one_class_and_the_class_limit(bundle):
    from rada_export.runtimes import load_bundle

    rt = load_bundle(bundle, backend="onnxruntime", device="cpu")
    with pytest.raises(RadaError, match="at least two"):
        rt.set_classes(["cat"])
    with pytest.raises(RadaError, match="the limit is"):
        rt.set_classes([f"c{i}" for i in range(4000)])
    with pytest.raises(RadaError, match="placeholder"):
        rt.set_classes(["cat", "dog"], ["{} and {}"])
    assert rt.classes == ["cat", "dog", "bird"]


# -- read-only output folders (root ignores permission bits: the CLI runs without CAP_DAC_OVERRIDE) --


def _as_user(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    exe = shutil.which("rada-export") or pytest.skip("rada-export is not on PATH")
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv") or pytest.skip("running as root without setpriv: cannot make a folder read-only")
        drop = "-dac_override,-dac_read_search"
        prefix = [setpriv, "--bounding-set", drop, "--inh-caps", drop]
    return subprocess.run([*prefix, exe, *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.fixture
def readonly(tmp_path, image_folder_small) -> Path:
    """A work folder whose 'locked' sub-folder is read-only."""
    (tmp_path / "locked").mkdir()
    os.chmod(tmp_path / "locked", 0o555)
    yield tmp_path
    os.chmod(tmp_path / "locked", 0o755)


@pytest.mark.parametrize("command", [
    ["onnx", *TINY, "--classes", "cat,dog", "--no-verify", "--out", "locked/bundle"],
    ["train", "--data", "data", *TINY, "--epochs", "1", "--out", "locked/head.safetensors"],
    ["demo", "--quick", "--out", "locked/demo"],
], ids=["onnx", "train", "demo"])
def test_read_only_output_is_refused_before_work(readonly, command):
    result = _as_user(command, readonly)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert "cannot write in" in result.stderr and "locked" in result.stderr
    assert "encoding" not in result.stderr and "training" not in result.stderr  # no work started
    assert list((readonly / "locked").iterdir()) == []


def test_read_only_plot_folder_is_refused_before_the_runs(readonly, bundle):
    result = _as_user(["bench", "--bundle", str(bundle), "--plot", "locked/latency.png", "--repeats", "1"], readonly)
    if "Permission denied" in result.stderr and "manifest" in result.stderr:
        pytest.skip("the test bundle is not readable by an unprivileged user here")
    assert result.returncode == 2, result.stderr
    assert "cannot write in" in result.stderr and "Traceback" not in result.stderr
    assert list((readonly / "locked").iterdir()) == []


# -- library errors name fields, the CLI names flags ------------------------------------------------


REPO = Path(__file__).resolve().parents[1]
LIBRARY = ("rada_export", "calibration", "runtimes")
# A `rada-export ...` command in backticks tells a Python caller which command to run: its flags belong to it.
# So do the flags of another tool's command in backticks (`v4l2-ctl --list-devices`).
COMMAND = re.compile(r"`(?:rada-export|docker|ffmpeg|v4l2-ctl|trtexec) [^`]*`")
# Another tool's flags outside backticks, word for word: docker's, in the fix for a container started without the GPU.
OTHER_TOOLS = ("docker run --gpus all / --runtime nvidia",)
FLAG = re.compile(r"--[a-z]")


def _names_a_flag(text: str) -> bool:
    text = COMMAND.sub("", text)
    for other in OTHER_TOOLS:
        text = text.replace(other, "")
    return bool(FLAG.search(text))


def _texts(node: ast.AST):
    """The string literals under ``node``; an f-string as one text with {} for its fields."""
    if isinstance(node, ast.JoinedStr):
        yield "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
        for value in node.values:
            if isinstance(value, ast.FormattedValue):
                yield from _texts(value.value)
    elif isinstance(node, ast.Constant) and isinstance(node.value, str):
        yield node.value
    else:
        for child in ast.iter_child_nodes(node):
            yield from _texts(child)


def flag_naming_sites(path: Path) -> list[tuple[int, str]]:
    """(line, text) of RadaError messages and validate.* field names in ``path`` that name a CLI flag.

    A message handed over in a variable (``problem = ...; raise RadaError(problem, fix)``) is read
    from that variable's assignments in the same file.
    """
    tree = ast.parse(path.read_text(encoding="utf-8"))
    assigned: dict[str, list[ast.AST]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    assigned.setdefault(target.id, []).append(node.value)
    sites = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name == "RadaError":
            for arg in [*node.args, *(k.value for k in node.keywords)]:
                for value in assigned.get(arg.id, []) if isinstance(arg, ast.Name) else [arg]:
                    sites += [(node.lineno, text) for text in _texts(value) if _names_a_flag(text)]
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "validate":
            sites += [(node.lineno, arg.value) for arg in node.args[:1]
                      if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and FLAG.search(arg.value)]
    return sites


def test_library_errors_name_no_cli_flags():
    """A Python caller of export_bundle() has no --out: library messages name fields, the CLI adds flags."""
    found = []
    for package in LIBRARY:
        for path in sorted((REPO / package).rglob("*.py")):
            rel = path.relative_to(REPO).as_posix()
            found += [f"{rel}:{line}: {text}" for line, text in flag_naming_sites(path)]
    assert not found, "\n".join(found)


def test_the_flag_scan_finds_flags_in_messages(tmp_path):
    source = tmp_path / "m.py"
    source.write_text('problem = f"--out {out} is a file"\n'
                      'raise RadaError(problem, "pass e.g. `rada-export onnx --out x`")\n'
                      'validate.integer("--max-batch", 0, 1)\n'
                      'raise RadaError(f"repeats must be positive, got {n}", "pass --repeats 20", field="repeats")\n'
                      'raise RadaError("no GPU", "start it with the GPU (docker run --gpus all / --runtime nvidia)")\n'
                      'raise RadaError("no GPU", "start it with docker run --gpus all")\n'
                      'raise RadaError("no camera", "list them with `v4l2-ctl --list-devices`", field="source")\n'
                      'raise RadaError("bad", "pass `--max-classes N`")\n')
    assert flag_naming_sites(source) == [(2, "--out {} is a file"), (3, "--max-batch"), (4, "pass --repeats 20"),
                                         (6, "start it with docker run --gpus all"), (8, "pass `--max-classes N`")]


def test_a_library_error_carries_its_field_and_names_no_flag(tmp_path):
    from rada_export.export.bundle import ExportRequest, export_bundle
    from rada_export.train import TrainConfig

    target = tmp_path / "a-file"
    target.write_text("mine")
    with pytest.raises(RadaError) as info:
        export_bundle(ExportRequest(out=target, model="rada-tiny-ViT", pretrained="none", classes=["a", "b"]))
    assert info.value.field == "out" and str(target) in info.value.problem
    assert not FLAG.search(str(info.value)), str(info.value)
    (tmp_path / "bundle").mkdir()
    (tmp_path / "bundle" / "notes.txt").write_text("mine")
    with pytest.raises(RadaError) as info:
        export_bundle(ExportRequest(out=tmp_path / "bundle", model="rada-tiny-ViT", pretrained="none", classes=["a", "b"]))
    assert info.value.field == "out" and "force=True" in info.value.fix and not FLAG.search(str(info.value))
    with pytest.raises(RadaError) as info:
        TrainConfig(lr=-1.0)
    assert info.value.field == "lr" and info.value.problem == "lr must be positive, got -1"
    assert target.read_text() == "mine" and (tmp_path / "bundle" / "notes.txt").read_text() == "mine"


def test_the_cli_names_the_flag_of_the_field(work):
    text = refused(["onnx", *TINY, "--classes", "a,b", "--out", str(work / "img.png")], work, "--out", "is a file")
    assert f"--out: output folder {work / 'img.png'} is a file" in text
    (work / "b").mkdir()
    (work / "b" / "notes.txt").write_text("mine")
    text = refused(["onnx", *TINY, "--classes", "a,b", "--out", str(work / "b")], work, "pass --force to replace it")
    assert "force=True" not in text


def test_every_field_override_names_a_real_option():
    """A command's field -> flag overrides must name options it has, as click itself builds them."""
    from typer.main import get_command

    from rada_export.cli.flags import check_overrides, declared_options

    group = get_command(app)
    for info in app.registered_commands:
        name = info.name or info.callback.__name__
        command = group.commands[name]
        real = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts) if opt.startswith("--")}
        assert set(declared_options(info.callback)) == real, name
        assert check_overrides(info.callback, getattr(info.callback, "field_flags", {})) == [], name


def test_keywords_become_flags_only_where_the_command_has_them():
    from rada_export.cli.flags import CommandFlags
    from rada_export.cli.onnx import onnx

    flags = CommandFlags(onnx, {"verify=False": "--no-verify", "templates": "--template"})
    err = RadaError("max_batch must be at least 1, got 0", "pass e.g. max_batch=8, force=True, classes='cat,dog', "
                    "classes='my classes.txt', verify=False, fp16=False, seed=3 or templates=['a {}']", field="max_batch")
    problem, fix = flags.message(err)
    assert problem == "--max-batch must be at least 1, got 0"
    assert fix == ("pass e.g. --max-batch 8, --force, --classes cat,dog, --classes 'my classes.txt', --no-verify, "
                   "fp16=False, seed=3 or --template 'a {}'")
    assert flags.message(RadaError("output folder x is a file", field="out")) == ("--out: output folder x is a file", None)
    assert flags.message(RadaError("no such thing", "pass widget=3", field="widget")) == ("no such thing", "pass widget=3")
