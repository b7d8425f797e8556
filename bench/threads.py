"""quasr's CPU kernels at 1 and 2 threads, in one run: does the second core help?

    python bench/threads.py

Until the extension was built with -fopenmp, at::parallel_for's pragma was compiled out of it and
every quasr kernel ran on one thread whatever torch.set_num_threads said (BLAS, called by the
`blas` path, threaded itself); 1 thread here is that old behaviour. Median µs per call.
"""

from __future__ import annotations

import sys

import torch

sys.path.insert(0, __import__("os").path.dirname(__import__("os").path.abspath(__file__)))
from gemm import packed_weight, timeit  # noqa: E402

from quasr import ops  # noqa: E402
from quasr.evaluate import machine_description  # noqa: E402

SHAPES = [(4096, 4096), (384, 1536), (2048, 512)]  # K x N
MS = [1, 8, 64, 1500]
BITS = [2, 3, 4, 8]


def main() -> None:
    print(f"# {machine_description()}; {ops.native_status()}; torch {torch.__version__}\n")
    print("| K | N | M | bits | 1 thread µs | 2 threads µs | speed-up |")
    print("|---|---|---|---|---:|---:|---:|")
    for k, n in SHAPES:
        for m in MS:
            if k * n > 4096 * 1536 and m == 1500:
                continue
            x = torch.randn(m, k)
            for bits in BITS:
                pw = packed_weight(n, k, bits)
                t = {}
                for threads in (1, 2):
                    torch.set_num_threads(threads)
                    t[threads] = timeit(lambda: ops.qlinear(x, pw), budget=0.2) * 1e6
                print(f"| {k} | {n} | {m} | {bits} | {t[1]:.0f} | {t[2]:.0f} | {t[1] / t[2]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
