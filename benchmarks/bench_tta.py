"""What test-time adaptation costs on the device head (numpy, no torch).

Prints, for K classes at D = 512:
- a continual adapt() step as a multiple of one forward-only logits() call (batch 1): the
  amortised cost per frame (the default gathers 16 confident frames per AdamW step), the step
  itself, and a step on every frame (continual_batch = 1);
- an episodic step on 16 views against 16 single logits() calls;
- the resident memory growth over a long run of continual steps (target: under 10 MB).

Every frame is made confident (e_margin = 1), the worst case for cost. Run it with
``python benchmarks/bench_tta.py [--steps N] [--classes 10 100]``; BLAS threads follow the
usual environment variables (OPENBLAS_NUM_THREADS, OMP_NUM_THREADS).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Callable

import numpy as np

from rada_export.runtimes.head import PARAMETER_NAMES, Head
from rada_export.runtimes.tta import TTAConfig

D = 512


def random_head(num_classes: int, tta: TTAConfig, seed: int = 0) -> Head:
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(D)
    weights = {
        name: rng.uniform(-bound, bound, size=(D, D) if name.endswith("weight") else (D,)).astype(np.float32)
        for name in PARAMETER_NAMES
    }
    return Head(weights, unit(rng, num_classes), logit_scale=100.0, tta=tta)


def unit(rng: np.random.Generator, rows: int) -> np.ndarray:
    x = rng.normal(size=(rows, D))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def per_call(fn: Callable[[], object], calls: int, rounds: int = 5) -> float:
    """Median over rounds of the mean seconds per call.

    Not rada_export.timing's median of single calls: continual adapt() takes its AdamW step on
    one frame in 16, and a median of single calls would leave those frames out of the cost.
    """
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def bench_continual(num_classes: int, calls: int) -> None:
    rng = np.random.default_rng(1)
    frames = unit(rng, 256)
    cursor = iter(range(1 << 62))

    def frame() -> np.ndarray:
        i = next(cursor) % len(frames)
        return frames[i : i + 1]

    sure = dict(e_margin=1.0, collapse_share=1.0)
    frozen = random_head(num_classes, TTAConfig(**sure))
    forward = per_call(lambda: frozen.logits(frame()), calls)

    batched = random_head(num_classes, TTAConfig(**sure))
    amortised = per_call(lambda: batched.adapt(frame()), calls)

    # The step alone: gather continual_batch - 1 frames untimed, time the frame that triggers it.
    stepper = random_head(num_classes, TTAConfig(**sure))
    batch = stepper.tta.continual_batch
    step_times = []
    for _ in range(max(3, calls // batch)):
        for _ in range(batch - 1):
            stepper.adapt(frame())
        start = time.perf_counter()
        stepper.adapt(frame())
        step_times.append(time.perf_counter() - start)
    step = statistics.median(step_times)

    every = random_head(num_classes, TTAConfig(continual_batch=1, **sure))
    per_frame = per_call(lambda: every.adapt(frame()), max(3, calls // 4))

    print(f"K={num_classes:<5d} forward-only logits (B=1)          {forward * 1e3:8.3f} ms   1.00 x")
    label = f"continual adapt, amortised ({batch}/step)"
    print(f"        {label:<39s}{amortised * 1e3:8.3f} ms {amortised / forward:6.2f} x")
    print(f"        continual adapt, frame with the step   {step * 1e3:8.3f} ms {step / forward:6.2f} x")
    print(f"        continual adapt, a step every frame    {per_frame * 1e3:8.3f} ms {per_frame / forward:6.2f} x")


def bench_episodic(num_classes: int, views: int, calls: int) -> None:
    rng = np.random.default_rng(2)
    images = unit(rng, views)
    head = random_head(num_classes, TTAConfig(mode="episodic", views=views))
    singles = per_call(lambda: [head.logits(images[i : i + 1]) for i in range(views)], calls)
    episodic = per_call(lambda: head.adapt_episodic(images), calls)
    print(
        f"K={num_classes:<5d} {views} single logits calls              {singles * 1e3:8.3f} ms   1.00 x\n"
        f"        episodic TPT step on {views} views          {episodic * 1e3:8.3f} ms {episodic / singles:6.2f} x"
    )


def bench_memory(num_classes: int, steps: int) -> None:
    import psutil

    process = psutil.Process()
    rng = np.random.default_rng(3)
    frames = unit(rng, 1024)
    head = random_head(num_classes, TTAConfig(e_margin=1.0))
    warmup = min(2000, max(1, steps // 10))
    for i in range(warmup):
        head.adapt(frames[i % len(frames)][None])
    gc.collect()
    before = process.memory_info().rss
    start = time.perf_counter()
    peak = before
    for i in range(steps):
        head.adapt(frames[i % len(frames)][None])
        if i % 1000 == 0:
            peak = max(peak, process.memory_info().rss)
    gc.collect()
    after = process.memory_info().rss
    seconds = time.perf_counter() - start
    print(
        f"K={num_classes:<5d} {steps} continual steps after {warmup} warm-up: RSS {before / 2**20:.1f} -> "
        f"{after / 2**20:.1f} MB (growth {(after - before) / 2**20:+.2f} MB, peak {peak / 2**20:.1f} MB), "
        f"{head.updates} updates, {head.resets} resets, {seconds / steps * 1e3:.2f} ms/frame"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100_000, help="continual steps for the memory check")
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 100], help="values of K to time")
    parser.add_argument("--calls", type=int, default=40, help="calls per timing round")
    parser.add_argument("--views", type=int, default=16, help="views per episodic step")
    args = parser.parse_args()

    print(f"D={D}, float32, numpy {np.__version__}\n")
    for k in args.classes:
        bench_continual(k, args.calls)
    print()
    for k in args.classes:
        bench_episodic(k, args.views, max(3, args.calls // 8))
    print()
    if args.steps > 0:
        bench_memory(min(args.classes), args.steps)


if __name__ == "__main__":
    main()
