"""Eight threads that start together on one shared object: the camera-app pattern the runtime must survive."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

THREADS = 8


def in_threads(fn, jobs: list) -> list:
    """Runs fn(job) for every job on THREADS threads that start together; results in job order."""
    barrier = threading.Barrier(THREADS)
    shares = [jobs[t::THREADS] for t in range(THREADS)]

    def worker(share):
        barrier.wait()
        return [fn(job) for job in share]

    with ThreadPoolExecutor(THREADS) as pool:
        done = list(pool.map(worker, shares))
    out = [None] * len(jobs)
    for t, results in enumerate(done):
        for k, result in enumerate(results):
            out[t + k * THREADS] = result
    return out
