"""Big models end to end on this machine: `onnx --fp16`, `calibrate`, `predict`, each step's wall
time and peak memory, with random weights (`--pretrained none`).

Each step is its own `rada-export` process, measured by the kernel (os.wait4's ru_maxrss: the
peak resident set of that process alone), against the model's FP32 weights (all towers).

    nice -n 10 python benchmarks/bench_big_models.py ViT-L-14 ViT-H-14 --work /tmp/big
    nice -n 10 python benchmarks/bench_big_models.py rada-big-wide-ViT --configs tests/big_configs

``--configs`` registers a folder of extra open_clip configurations in each step (the synthetic
over-2-GB one of the tests). Steps after a failed one are skipped; the table says how far each
model got. Uses a few GB of disk per model under ``--work``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

GIB = 1024**3
# Runs the CLI after registering extra open_clip configurations (argv[1], or "" for none).
CLI = ("import sys, open_clip\n"
       "if sys.argv[1]: open_clip.add_model_config(sys.argv[1])\n"
       "sys.argv = ['rada-export'] + sys.argv[2:]\n"
       "from rada_export.cli.app import main\n"
       "main()\n")


@dataclass
class Step:
    name: str
    code: int
    wall_s: float
    peak_bytes: int
    tail: str


def run_step(name: str, args: list[str], configs: Path | None, log: Path) -> Step:
    """One CLI process; its own peak RSS from the kernel's accounting of that child."""
    command = [sys.executable, "-c", CLI, str(configs or ""), *args]
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = log.read_text(errors="replace")[-1500:]
    return Step(name, proc.returncode, wall, usage.ru_maxrss * 1024, tail)


def weights_bytes(model: str, configs: Path | None) -> int:
    """FP32 bytes of every tower's parameters, counted on the meta device (nothing allocated)."""
    code = ("import sys, torch, open_clip\n"
            "if sys.argv[1]: open_clip.add_model_config(sys.argv[1])\n"
            "with torch.device('meta'):\n"
            "    m = open_clip.create_model(sys.argv[2], pretrained=None, device='meta')\n"
            "print(sum(p.numel() * 4 for p in m.parameters()))\n")
    out = subprocess.run([sys.executable, "-c", code, str(configs or ""), model], capture_output=True, text=True, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def make_images(folder: Path, count: int, seed: int = 0) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        # Smooth random colour fields: closer to photographs than per-pixel noise.
        small = rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)
        path = folder / f"{i:03d}.png"
        Image.fromarray(small).resize((320, 240), Image.BICUBIC).save(path)
        paths.append(path)
    return paths


def bench_model(model: str, work: Path, configs: Path | None, calib_samples: int, holdout: int) -> dict:
    root = work / model
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    images = make_images(root / "images", calib_samples + holdout)
    bundle = root / "bundle"
    steps = [
        ("onnx --fp16", ["onnx", "--model", model, "--pretrained", "none", "--classes", "cat,dog,car,tree",
                         "--out", str(bundle), "--fp16", "--quiet"]),
        ("calibrate", ["calibrate", "--bundle", str(bundle), "--images", str(root / "images"), "--graph", "model",
                       "--calib-samples", str(calib_samples), "--holdout", str(holdout), "--accept-degraded",
                       "--cache-dir", str(root / "cache"), "--quiet"]),
        ("predict", ["predict", "--bundle", str(bundle), "--precision", "fp32", "--json", *map(str, images[:2])]),
    ]
    weights = weights_bytes(model, configs)
    results = []
    for name, args in steps:
        step = run_step(name, args, configs, root / f"{name.split()[0]}.log")
        results.append(step)
        line = (f"{model} {name}: exit {step.code}, {step.wall_s:.0f} s, peak {step.peak_bytes / GIB:.1f} GiB "
                f"({step.peak_bytes / weights:.1f}x the FP32 weights)")
        print(line, flush=True)
        if step.code != 0:
            print(step.tail, flush=True)
            break
    sizes = {p.name: p.stat().st_size for p in bundle.glob("*.onnx*")} if bundle.is_dir() else {}
    return {"model": model, "weights_bytes": weights, "files": sizes,
            "steps": [{"step": s.name, "exit": s.code, "wall_s": round(s.wall_s, 1), "peak_gib": round(s.peak_bytes / GIB, 2),
                       "peak_over_weights": round(s.peak_bytes / weights, 2)} for s in results]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--work", type=Path, default=Path("/tmp/rada-big-models"))
    parser.add_argument("--configs", type=Path, default=None, help="a folder of extra open_clip model configs")
    parser.add_argument("--calib-samples", type=int, default=16)
    parser.add_argument("--holdout", type=int, default=8)
    parser.add_argument("--keep", action="store_true", help="keep each model's bundle (a few GB each)")
    args = parser.parse_args()
    report = []
    for model in args.models:
        report.append(bench_model(model, args.work, args.configs.resolve() if args.configs else None,
                                  args.calib_samples, args.holdout))
        if not args.keep:
            shutil.rmtree(args.work / model / "bundle", ignore_errors=True)
    print("\n| model | FP32 weights | step | exit | wall | peak RSS | x weights |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for entry in report:
        for step in entry["steps"]:
            print(f"| {entry['model']} | {entry['weights_bytes'] / GIB:.2f} GiB | {step['step']} | {step['exit']} | "
                  f"{step['wall_s']:.0f} s | {step['peak_gib']:.1f} GiB | {step['peak_over_weights']:.1f} |")
    print(json.dumps(report))


if __name__ == "__main__":
    main()
