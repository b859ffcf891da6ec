"""Other multi-threaded work on the machine, started and stopped by a benchmark.

Two subprocesses, each using every core with the libraries' own defaults (active OpenMP spin
waiting, all threads), as another user's job would: a torch matmul loop and a FAISS search loop.
A plain single-threaded busy loop does not reproduce the slowdown of issue 16 (measured 1.15x);
these two do (1.34-2.4x with the old defaults).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from contextlib import contextmanager

TORCH_LOOP = """
import torch
a = torch.randn(384, 384); b = torch.randn(384, 384)
while True:
    a = (a @ b).clamp_(-1, 1)
"""
FAISS_LOOP = """
import faiss, numpy as np
rng = np.random.default_rng(0)
index = faiss.IndexFlatL2(128); index.add(rng.random((50000, 128), dtype=np.float32))
queries = rng.random((64, 128), dtype=np.float32)
while True:
    index.search(queries, 10)
"""
LOOPS = {"torch-matmul": TORCH_LOOP, "faiss-search": FAISS_LOOP}


def _foreign_env() -> dict[str, str]:
    """The environment of a job that is not ours: none of our passive-waiting settings."""
    from descriptors.threads import PASSIVE_WAIT_ENV

    env = {k: v for k, v in os.environ.items() if k not in PASSIVE_WAIT_ENV}
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env.pop(name, None)
    return env


@contextmanager
def background_load(names=("torch-matmul", "faiss-search"), warmup_s: float = 3.0):
    """Run the named loops while the block runs; they are killed (by their pids) on exit."""
    procs = [
        subprocess.Popen([sys.executable, "-c", LOOPS[name]], env=_foreign_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for name in names
    ]
    try:
        time.sleep(warmup_s)  # imports + index construction, then steady load
        for proc in procs:
            if proc.poll() is not None:
                raise RuntimeError(f"background load exited early with code {proc.returncode}")
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
