"""The numpy head's cost on one thread, and what sharing it between threads gives.

At a real size (D = 512, random weights; no bundle needed), prints median milliseconds per call of:
- logits (batch 1), a continual adapt of one frame that takes an AdamW step each time
  (continual_batch 1: the worst case for the copy-on-write weights), an episodic episode on 16 views;
- the same calls from 1 and from 8 threads sharing one head, as throughput (calls/s) and the ratio
  8 threads / 1 thread, measured in the same run.

The single-thread figures are those to compare across commits (sharing must not slow one thread
down): run it before and after a change, on the same machine.

    python benchmarks/bench_threads.py [--classes 10 100] [--repeats 30] [--threads 8]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
from threadpoolctl import threadpool_limits

from rada_export.runtimes import Head, TTAConfig
from rada_export.timing import time_calls

DIM = 512


def unit(rows: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(rows, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_head(k: int, mode: str) -> Head:
    rng = np.random.default_rng(0)
    names = [f"{p}.{kind}" for p in ("q_proj1", "q_proj2", "q_proj3", "k_proj", "v_proj", "out_proj") for kind in ("weight", "bias")]
    weights = {n: (rng.normal(0, 0.02, (DIM, DIM)) if n.endswith("weight") else rng.normal(0, 0.02, DIM)).astype(np.float32) for n in names}
    tta = TTAConfig(mode=mode, continual_batch=1, e_margin=1.0, views=16) if mode == "continual" else TTAConfig(mode=mode, views=16)
    return Head(weights, unit(k, 1), logit_scale=100.0, tta=tta)


def throughput(fn, threads: int, calls: int) -> float:
    barrier = threading.Barrier(threads + 1)

    def worker():
        barrier.wait()
        for _ in range(calls):
            fn()

    pool = [threading.Thread(target=worker) for _ in range(threads)]
    for t in pool:
        t.start()
    barrier.wait()
    start = time.perf_counter()
    for t in pool:
        t.join()
    return threads * calls / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--classes", type=int, nargs="+", default=[10, 100])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--single", action="store_true", help="Only the one-thread ms per call (to compare commits).")
    args = ap.parse_args()
    frame, views = unit(1, 2), unit(16, 3)
    with threadpool_limits(limits=1, user_api="blas"):  # threads, not BLAS, share the cores
        for k in args.classes:
            cases = {
                "logits (batch 1)": (make_head(k, "continual"), lambda h: h.logits(frame)),
                "continual adapt (1 frame, 1 step)": (make_head(k, "continual"), lambda h: h.adapt(frame)),
                "episodic (16 views)": (make_head(k, "episodic"), lambda h: h.adapt_episodic(views)),
            }
            for name, (head, call) in cases.items():
                times = [1000 * t for t in time_calls(lambda: call(head), args.repeats, 1)]
                one, best = float(np.median(times)), min(times)  # the minimum resists other load on the machine
                if args.single:
                    print(f"K={k:4d} {name:36s} 1 thread {one:8.3f} ms/call (min {best:.3f})", flush=True)
                    continue
                calls = max(2, args.repeats // 2)
                single = throughput(lambda: call(head), 1, calls * args.threads)
                shared = throughput(lambda: call(head), args.threads, calls)
                print(f"K={k:4d} {name:36s} 1 thread {one:8.3f} ms/call (min {best:.3f}) | calls/s 1 thread {single:8.1f}, "
                      f"{args.threads} threads {shared:8.1f} (x{shared / single:.2f})", flush=True)


if __name__ == "__main__":
    main()
