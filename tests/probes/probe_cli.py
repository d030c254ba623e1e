"""Probe every command with bad option values: each must exit 2 with one clear error line, never a traceback.

Not a test (pytest does not collect it): a tool to look for that class of fault (a traceback or an unclear error).
Run: python tests/probes/probe_cli.py [--bundle BUNDLE] [--only SUBSTRING]
It builds a tiny bundle (rada-tiny-ViT, random weights) unless --bundle is given, and prints one
line per probe: OK (exit 2, or 0 where a probe expects a run, with no traceback) or the fault found.
Besides bad option values it probes tampered copies of the bundle (tampered_bundles): every number,
string and file of a bundle bounded, every graph output checked, the user's files in folders that
onnx --force, demo and calibrate would replace.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image


def probes(work: Path, bundle: Path) -> list[tuple[str, list[str]]]:
    img = work / "img.png"
    folder = work / "folder"
    garbage = work / "garbage.safetensors"
    classes_ok = "cat,dog"
    long = "x" * 1024
    onnx = ["onnx", "--model", "rada-tiny-ViT", "--pretrained", "none", "--no-verify", "-q"]
    train = ["train", "--data", str(work / "data"), "--model", "rada-tiny-ViT", "--pretrained", "none", "-q"]
    p = ["predict", str(img), "--bundle", str(bundle)]
    b = ["bench", "--bundle", str(bundle), "--repeats", "1", "--batch", "1"]
    c = ["calibrate", "--bundle", str(bundle), "--images", str(folder)]
    return [
        # onnx
        ("onnx --classes missing.txt", onnx + ["--classes", str(work / "missing.txt"), "--out", str(work / "o1")]),
        ("onnx --classes 1KB", onnx + ["--classes", long, "--out", str(work / "o2")]),
        ("onnx single class", onnx + ["--classes", "cat", "--out", str(work / "o3")]),
        ("onnx --opset 99", onnx + ["--classes", classes_ok, "--opset", "99", "--out", str(work / "o4")]),
        ("onnx --opset 5", onnx + ["--classes", classes_ok, "--opset", "5", "--out", str(work / "o5")]),
        ("onnx --out .", onnx + ["--classes", classes_ok, "--out", "."]),
        ("onnx --out ..", onnx + ["--classes", classes_ok, "--out", ".."]),
        ("onnx --template no-braces", onnx + ["--classes", classes_ok, "--template", "a photo", "--out", str(work / "o6")]),
        ("onnx --template two braces", onnx + ["--classes", classes_ok, "--template", "{} {}", "--out", str(work / "o7")]),
        ("onnx --template {0}", onnx + ["--classes", classes_ok, "--template", "a {0} {}", "--out", str(work / "o7b")]),
        ("onnx --max-batch 0", onnx + ["--classes", classes_ok, "--max-batch", "0", "--out", str(work / "o8")]),
        ("onnx --exporter bad", onnx + ["--classes", classes_ok, "--exporter", "bad", "--out", str(work / "o9")]),
        ("onnx --ckpt garbage", onnx + ["--ckpt", str(garbage), "--out", str(work / "o10")]),
        ("onnx --ckpt folder", onnx + ["--ckpt", str(folder), "--out", str(work / "o11")]),
        ("onnx --pretrained missing.safetensors", ["onnx", "--model", "rada-tiny-ViT", "--pretrained", str(work / "nope.safetensors"), "--classes", classes_ok, "--out", str(work / "o12")]),
        ("onnx --pretrained garbage", ["onnx", "--model", "rada-tiny-ViT", "--pretrained", str(garbage), "--classes", classes_ok, "--out", str(work / "o13")]),
        ("onnx --model unknown", ["onnx", "--model", "NoSuchModel", "--pretrained", "none", "--classes", classes_ok, "--out", str(work / "o14")]),
        ("onnx --verify-image missing", onnx[:-2] + ["--classes", classes_ok, "--verify-image", str(work / "none.png"), "--out", str(work / "o15")]),
        ("onnx --verify-image garbage", onnx[:-2] + ["--classes", classes_ok, "--verify-image", str(garbage), "--out", str(work / "o16")]),
        ("onnx duplicate 77 tokens", onnx + ["--classes", ("word " * 80) + "a," + ("word " * 80) + "b", "--out", str(work / "o17")]),
        ("onnx 15000 classes", onnx + ["--classes", ",".join(f"c{i}" for i in range(15000)), "--out", str(work / "o18")]),
        ("onnx --out is a file", onnx + ["--classes", classes_ok, "--out", str(img)]),
        # verify
        ("verify missing bundle", ["verify", "--bundle", str(work / "none")]),
        ("verify --bundle file", ["verify", "--bundle", str(img)]),
        ("verify image missing", ["verify", "--bundle", str(bundle), str(work / "none.png")]),
        ("verify image garbage", ["verify", "--bundle", str(bundle), str(garbage)]),
        # predict
        ("predict --classes missing.txt", p + ["--classes", str(work / "missing.txt")]),
        ("predict --classes 1KB", p + ["--classes", long]),
        ("predict --classes 10000", p + ["--classes", ",".join(f"c{i}" for i in range(10000))]),
        ("predict single class", p + ["--classes", "cat"]),
        ("predict --classes ,,", p + ["--classes", ",,"]),
        ("predict --tta bad", p + ["--tta", "bad"]),
        ("predict --views 0", p + ["--tta", "episodic", "--views", "0"]),
        ("predict --views -3", p + ["--tta", "episodic", "--views", "-3"]),
        ("predict --views with tta off", p + ["--views", "4"]),
        ("predict --top 0", p + ["--top", "0"]),
        ("predict --precision bad", p + ["--precision", "int4"]),
        ("predict --backend bad", p + ["--backend", "cuda-graph"]),
        ("predict --device bad", p + ["--device", "tpu"]),
        ("predict garbage image", ["predict", str(garbage), "--bundle", str(bundle)]),
        ("predict missing image", ["predict", str(work / "none.png"), "--bundle", str(bundle)]),
        ("predict empty folder", ["predict", str(work / "empty"), "--bundle", str(bundle)]),
        ("predict missing bundle", ["predict", str(img), "--bundle", str(work / "none")]),
        # train
        ("train --lr nan", train + ["--lr", "nan", "--out", str(work / "t1.safetensors")]),
        ("train --lr -1", train + ["--lr", "-1", "--out", str(work / "t2.safetensors")]),
        ("train --lr inf", train + ["--lr", "inf", "--out", str(work / "t2b.safetensors")]),
        ("train --temperature 0", train + ["--temperature", "0", "--out", str(work / "t3.safetensors")]),
        ("train --temperature nan", train + ["--temperature", "nan", "--out", str(work / "t3b.safetensors")]),
        ("train --alpha -1", train + ["--alpha", "-1", "--out", str(work / "t4.safetensors")]),
        ("train --alpha nan", train + ["--alpha", "nan", "--out", str(work / "t4b.safetensors")]),
        ("train --val-fraction 1.5", train + ["--val-fraction", "1.5", "--out", str(work / "t5.safetensors")]),
        ("train --val-fraction nan", train + ["--val-fraction", "nan", "--out", str(work / "t5b.safetensors")]),
        ("train --shots 0", train + ["--shots", "0", "--out", str(work / "t6.safetensors")]),
        ("train --aug-copies 0", train + ["--aug-copies", "0", "--out", str(work / "t7.safetensors")]),
        ("train --epochs 0", train + ["--epochs", "0", "--out", str(work / "t8.safetensors")]),
        ("train --batch-size 0", train + ["--batch-size", "0", "--out", str(work / "t9.safetensors")]),
        ("train --seed -1", train + ["--seed", "-1", "--out", str(work / "t10.safetensors")]),
        ("train --template x", train + ["--template", "x", "--out", str(work / "t11.safetensors")]),
        ("train --out folder", train + ["--out", str(folder)]),
        ("train --out .", train + ["--out", "."]),
        ("train --data missing", ["train", "--data", str(work / "none"), "--model", "rada-tiny-ViT", "--pretrained", "none", "--out", str(work / "t12.safetensors")]),
        ("train --data file", ["train", "--data", str(img), "--model", "rada-tiny-ViT", "--pretrained", "none", "--out", str(work / "t13.safetensors")]),
        ("train --val missing", train + ["--val", str(work / "none"), "--out", str(work / "t14.safetensors")]),
        ("train --model unknown", ["train", "--data", str(work / "data"), "--model", "Nope", "--pretrained", "none", "--out", str(work / "t15.safetensors")]),
        # bench
        ("bench --batch x", b[:-2] + ["--batch", "x"]),
        ("bench --batch 0", b[:-2] + ["--batch", "0"]),
        ("bench --batch -1", b[:-2] + ["--batch", "-1"]),
        ("bench --repeats 0", b[:-4] + ["--repeats", "0", "--batch", "1"]),
        ("bench --backend bad", b + ["--backend", "bad"]),
        ("bench --plot folder", b + ["--plot", str(folder)]),
        ("bench --plot .txt", b + ["--plot", str(work / "plot.txt")]),
        ("bench --plot missing dir", b + ["--plot", str(work / "nodir" / "sub" / "p.png")]),
        ("bench missing bundle", ["bench", "--bundle", str(work / "none")]),
        # calibrate
        ("calibrate --calib-samples 0", c + ["--calib-samples", "0"]),
        ("calibrate --method bad", c + ["--method", "bad"]),
        ("calibrate --percentile 200", c + ["--method", "percentile", "--percentile", "200"]),
        ("calibrate --percentile nan", c + ["--method", "percentile", "--percentile", "nan"]),
        ("calibrate --graph bad", c + ["--graph", "bad"]),
        ("calibrate --holdout -1", c + ["--holdout", "-1"]),
        ("calibrate --images missing", ["calibrate", "--bundle", str(bundle), "--images", str(work / "none")]),
        ("calibrate --images file", ["calibrate", "--bundle", str(bundle), "--images", str(img)]),
        ("calibrate --cache-dir file", c + ["--cache-dir", str(img)]),
        # trt (no TensorRT here: exits 2 saying so; --json must still print JSON)
        ("trt --precision bad", ["trt", "--bundle", str(bundle), "--precision", "int4"]),
        ("trt --graph bad", ["trt", "--bundle", str(bundle), "--graph", "bad"]),
        ("trt --min-batch 0", ["trt", "--bundle", str(bundle), "--min-batch", "0"]),
        ("trt --workspace nan", ["trt", "--bundle", str(bundle), "--workspace", "nan"]),
        ("trt --json", ["trt", "--bundle", str(bundle), "--json"]),
        # demo
        ("demo --quick --model", ["demo", "--quick", "--model", "ViT-B-32", "--out", str(work / "d1")]),
        ("demo --out .", ["demo", "--out", ".", "--quick"]),
        ("demo --out file", ["demo", "--out", str(img), "--quick"]),
        ("demo --images-per-class 0", ["demo", "--images-per-class", "0", "--out", str(work / "d2")]),
        ("demo --pretrained missing", ["demo", "--pretrained", str(work / "nope.bin"), "--out", str(work / "d3"), "--quick"]),
        # usage errors: with --json, stdout must hold JSON too (checked in main)
        ("predict --top 0 --json", p + ["--top", "0", "--json"]),
        ("predict --no-such-option --json", p + ["--no-such-option", "--json"]),
    ] + tampered_probes(work, bundle, img)


# -- tampered bundles: each a copy of the probe bundle with one thing changed ---------------------------

# Probes where a clean run (exit 0) is the right answer: an engine description Python cannot parse only
# means TensorRT is not used; bench makes a missing folder for its plot, as a user asking for it wants.
EXPECT_RUN = {"predict engine json 5000 digits", "bench --plot missing dir"}


def _edit(bundle: Path, change) -> None:
    path = bundle / "manifest.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data).replace('"BIG"', "9" * 5000))


def _rechecksum(bundle: Path, rel: str) -> None:
    _edit(bundle, lambda m: m["files"].update({rel: hashlib.sha256((bundle / rel).read_bytes()).hexdigest()}))


def _deep(levels: int):
    value: object = 1
    for _ in range(levels):
        value = {"x": value}
    return value


def _logits(bundle: Path, how: str) -> None:
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(bundle / "model.onnx")
    for node in model.graph.node:
        node.output[:] = ["raw" if o == "logits" else o for o in node.output]
    out = next(o for o in model.graph.output if o.name == "logits")
    out.type.tensor_type.shape.dim[1].dim_param = "k"
    if how == "columns":
        model.graph.initializer.extend([numpy_helper.from_array(np.array(v, np.int64), n) for n, v in (("s0", [0]), ("s1", [2]), ("ax", [1]))])
        model.graph.node.append(helper.make_node("Slice", ["raw", "s0", "s1", "ax"], ["logits"]))
    elif how == "nan":
        model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "bad"))
        model.graph.node.append(helper.make_node("Mul", ["raw", "bad"], ["logits"]))
    elif how == "run fails":
        model.graph.initializer.append(numpy_helper.from_array(np.array([7, 7, 7], np.int64), "shape"))
        model.graph.node.append(helper.make_node("Reshape", ["raw", "shape"], ["logits"]))
    else:  # renamed
        model.graph.node.append(helper.make_node("Identity", ["raw"], ["scores"]))
        out.name = "scores"
    onnx.save(model, bundle / "model.onnx")
    _rechecksum(bundle, "model.onnx")


def _panicking_tokenizer(bundle: Path) -> None:
    """A Hugging Face tokenizer.json whose normalizer makes the tokenizers library panic in Rust."""
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "pre_tokenizer": None,
            "post_processor": None, "decoder": None, "normalizer": {"type": "Precompiled", "precompiled_charsmap": "AAAA"},
            "model": {"type": "WordLevel", "vocab": {"a": 0, "[UNK]": 1}, "unk_token": "[UNK]"}}
    (bundle / "tokenizer" / "tokenizer.json").write_text(json.dumps(spec))
    _rechecksum(bundle, "tokenizer/tokenizer.json")
    _edit(bundle, lambda m: m.update(tokenizer={"kind": "hf_tokenizers", "file": "tokenizer/tokenizer.json",
                                                "context_length": m["context_length"], "pad_id": 0}))


def _engine(bundle: Path, description: str) -> None:
    env = bundle / "engines" / "gpu-sm87-trt10.3.0"
    env.mkdir(parents=True)
    (env / "model.fp16.engine").write_bytes(b"engine")
    (env / "model.fp16.json").write_text(description)


def tampered_bundles(work: Path, bundle: Path) -> dict[str, Path]:
    """name -> a copy of ``bundle`` with one change (made once per run)."""
    changes = {
        "integer of 5000 digits": lambda b: _edit(b, lambda m: m.update(max_batch="BIG")),
        "resolved nested 200 deep": lambda b: _edit(b, lambda m: m.update(resolved=_deep(200))),
        "model name 100 KB": lambda b: _edit(b, lambda m: m.update(model="x" * 100_000)),
        "tokenizer context 1e9": lambda b: _edit(b, lambda m: m["tokenizer"].update(context_length=10 ** 9)),
        "tokenizer context a string": lambda b: _edit(b, lambda m: m["tokenizer"].update(context_length="77")),
        "tokenizer context not the graph's": lambda b: _edit(b, lambda m: m["tokenizer"].update(context_length=64)),
        "vocab gzip bomb": lambda b: ((b / "tokenizer/bpe_simple_vocab_16e6.txt.gz").write_bytes(gzip.compress(b"\n" * (80 << 20), 1)),
                                      _rechecksum(b, "tokenizer/bpe_simple_vocab_16e6.txt.gz")),
        "tokenizer.json that panics in Rust": _panicking_tokenizer,
        "logits 2 columns": lambda b: _logits(b, "columns"),
        "logits nan": lambda b: _logits(b, "nan"),
        "session.run fails": lambda b: _logits(b, "run fails"),
        "logits renamed": lambda b: _logits(b, "renamed"),
        "engine json 5000 digits": lambda b: _engine(b, '{"format": ' + "9" * 5000 + "}"),
        "user file in tokenizer/": lambda b: (b / "tokenizer" / "notes.txt").write_text("mine"),
        "user engine in engines/": lambda b: _engine(b, '{"made": "by trtexec"}'),
    }
    out = {}
    for name, change in changes.items():
        copy = work / "tampered" / name.replace(" ", "_").replace("/", "").replace("'", "")
        if not copy.exists():
            shutil.copytree(bundle, copy)
            change(copy)
        out[name] = copy
    return out


def tampered_probes(work: Path, bundle: Path, img: Path) -> list[tuple[str, list[str]]]:
    t = tampered_bundles(work, bundle)
    newclasses = ["--classes", "pear,plum"]
    probes = [(f"predict {name}", ["predict", str(img), str(img), "--bundle", str(t[name]), "--device", "cpu", *newclasses])
              for name in ("integer of 5000 digits", "model name 100 KB", "tokenizer context 1e9", "tokenizer.json that panics in Rust",
                           "tokenizer context a string", "tokenizer context not the graph's", "vocab gzip bomb")]
    probes += [(f"predict --json {name}", ["predict", str(img), str(img), "--bundle", str(t[name]), "--backend", "onnxruntime",
                                           "--device", "cpu", "--json"])
               for name in ("logits 2 columns", "logits nan", "session.run fails", "logits renamed")]
    probes += [
        ("predict engine json 5000 digits", ["predict", str(img), "--bundle", str(t["engine json 5000 digits"])]),
        ("calibrate resolved nested 200 deep", ["calibrate", "--bundle", str(t["resolved nested 200 deep"]), "--images",
                                                str(work / "folder")]),
        ("onnx --force user file in tokenizer/", ["onnx", "--model", "rada-tiny-ViT", "--pretrained", "none", "--classes", "a,b",
                                                  "--no-verify", "--force", "--out", str(t["user file in tokenizer/"])]),
        ("onnx --force user engine in engines/", ["onnx", "--model", "rada-tiny-ViT", "--pretrained", "none", "--classes", "a,b",
                                                  "--no-verify", "--force", "--out", str(t["user engine in engines/"])]),
        ("demo rerun user file in images/x/", ["demo", "--quick", "--out", str(demo_with_user_file(work, bundle))]),
    ]
    return probes


def demo_with_user_file(work: Path, bundle: Path) -> Path:
    """A folder the demo made (its marker lists what it made), with a user's photo in a class folder."""
    out = work / "demo-made"
    if not out.exists():
        (out / "images" / "circle").mkdir(parents=True)
        (out / "images" / "circle" / "000.png").write_bytes((work / "img.png").read_bytes())
        shutil.copytree(bundle, out / "bundle")
        (out / ".rada-export-demo.json").write_text(json.dumps({"signature": "rada-export demo folder v1", "model": "x",
                                                                 "pretrained": "none", "files": ["images/circle/000.png"]}))
        (out / "images" / "my_class").mkdir()
        (out / "images" / "my_class" / "photo.jpg").write_bytes(b"mine")
    return out


def setup(work: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(work / "img.png")
    (work / "folder").mkdir()
    (work / "empty").mkdir()
    (work / "garbage.safetensors").write_bytes(os.urandom(2048))
    for cls in ("a", "b"):
        (work / "data" / cls).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(work / "data" / cls / f"{i}.png")
    for i in range(3):
        (work / "folder" / f"{i}.png").write_bytes((work / "img.png").read_bytes())


def _is_json(text: str) -> bool:
    try:
        json.loads(text, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
        return True
    except ValueError:
        return False


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bundle", type=Path)
    ap.add_argument("--only", default="", help="Run only the probes whose name holds this text.")
    ap.add_argument("--start", default="", help="Skip the probes before the first whose name holds this text.")
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="rada-probe-"))
    setup(work)
    bundle = args.bundle
    if bundle is None:
        bundle = work / "bundle"
        subprocess.run(["rada-export", "onnx", "--model", "rada-tiny-ViT", "--pretrained", "none", "--classes", "cat,dog,bird",
                        "--out", str(bundle), "-q", "--no-verify"], check=True, capture_output=True)
    faults = 0
    started = not args.start
    for name, argv in probes(work, bundle):
        started = started or args.start in name
        if not started or (args.only and args.only not in name):
            continue
        try:
            run = subprocess.run(["rada-export", *argv], capture_output=True, text=True, timeout=args.timeout, cwd=work)
        except subprocess.TimeoutExpired:
            print(f"{name:40s} FAULT ran over {args.timeout:.0f} s", flush=True)
            faults += 1
            continue
        err = run.stderr.strip().splitlines()
        first = next((line for line in err if line.startswith("error:")), next((line for line in err if line.strip()), ""))
        json_broken = "--json" in argv and run.returncode == 2 and not _is_json(run.stdout)
        if "Traceback" in run.stderr:
            verdict = "FAULT traceback: " + (err[-1][:150] if err else "")
        elif json_broken:
            verdict = "FAULT --json printed no JSON on stdout: " + first[:120]
        elif name in EXPECT_RUN and run.returncode == 0:
            verdict = "OK    ran (exit 0)"
        elif run.returncode == 2 and first:
            verdict = "OK    " + first[:150]
        else:
            verdict = f"FAULT exit {run.returncode}: " + (first or run.stdout.strip().splitlines()[0] if run.stdout.strip() else first)[:150]
        faults += verdict.startswith("FAULT")
        print(f"{name:40s} {verdict}", flush=True)
    print(f"{faults} fault(s)")
    return 1 if faults else 0


if __name__ == "__main__":
    sys.exit(main())
