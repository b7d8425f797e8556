"""Microbenchmark: quasr's packed qlinear (auto kernel choice) at every bit width against
torch.matmul in fp32 and torch's int4 CPU kernel (_weight_int4pack_mm_for_cpu).

    python bench/gemm.py [--quick] [--out bench/gemm.md]

Times are the median of repeated calls (each call ~>= 0.2 s of total work); ratios are
fp32 time / kernel time, measured in the same run (>1 = faster than fp32).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from quasr import ops
from quasr.format import PackedWeight, pack_codes, resolve_group_size

SHAPES = [(384, 1536), (1536, 384), (4096, 4096)]  # K x N
MS = [1, 8, 64, 1500]
BITS = [2, 3, 4, 5, 6, 7, 8]


def timeit(fn, budget=0.2, max_reps=50) -> float:
    fn()
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    reps = max(3, min(max_reps, int(budget / max(one, 1e-6))))
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def packed_weight(n, k, bits, group=128, seed=0) -> PackedWeight:
    gen = torch.Generator().manual_seed(seed)
    g, kp = resolve_group_size(group, k)
    codes = torch.randint(0, 1 << bits, (n, kp), generator=gen)
    return PackedWeight(pack_codes(codes, bits), (torch.rand(n, kp // g, generator=gen) * 0.01).half(),
                        (torch.rand(n, kp // g, generator=gen) * (1 << bits)).round().half(), bits, g, k)


def int4pack(n, k, group=128):
    w = torch.randint(0, 16, (n, k), dtype=torch.int32)
    packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(w, 1)
    sz = torch.rand(k // group, n, 2).to(torch.bfloat16)
    return packed, sz


def run(quick: bool) -> list[dict]:
    rows = []
    shapes = SHAPES[:2] if quick else SHAPES
    for k, n in shapes:
        weights = {b: packed_weight(n, k, b) for b in BITS}
        w32 = torch.randn(n, k)
        p4, sz = int4pack(n, k)
        for m in MS:
            x = torch.randn(m, k)
            xb = x.to(torch.bfloat16)
            row = {"K": k, "N": n, "M": m, "fp32_ms": timeit(lambda: x @ w32.T) * 1e3}
            row["int4pack_bf16_ms"] = timeit(lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(xb, p4, 128, sz)) * 1e3
            if m <= 8:  # the fp32-activation path of torch's int4 kernel is scalar: slow, shown for small M only
                row["int4pack_fp32_ms"] = timeit(
                    lambda: torch.ops.aten._weight_int4pack_mm_for_cpu(x, p4, 128, sz.float())) * 1e3
            for b in BITS:
                row[f"q{b}_ms"] = timeit(lambda: ops.qlinear(x, weights[b])) * 1e3
            rows.append(row)
            print(fmt_row(row), flush=True)
    return rows


HEADER = ("| K×N | M | fp32 matmul ms | torch int4 (bf16 act) ms | torch int4 (fp32 act) ms | "
          + " | ".join(f"quasr {b}-bit ms (×fp32)" for b in BITS) + " |")


def fmt_row(r: dict) -> str:
    f = r["fp32_ms"]
    cells = [f"{r['K']}×{r['N']}", str(r["M"]), f"{f:.3f}",
             f"{r['int4pack_bf16_ms']:.3f} ({f / r['int4pack_bf16_ms']:.2f}×)",
             f"{r['int4pack_fp32_ms']:.3f} ({f / r['int4pack_fp32_ms']:.2f}×)" if "int4pack_fp32_ms" in r else "—"]
    cells += [f"{r[f'q{b}_ms']:.3f} ({f / r[f'q{b}_ms']:.2f}×)" for b in BITS]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="skip the 4096x4096 shape")
    ap.add_argument("--out", default=None, help="also write the markdown table here")
    args = ap.parse_args()
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"# {machine}; {ops.native_status()}\n")
    print(HEADER)
    print("|" + "---|" * (5 + len(BITS)))
    rows = run(args.quick)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(f"{machine}; {ops.native_status()}\n\n{HEADER}\n|{'---|' * (5 + len(BITS))}\n")
            fh.write("\n".join(fmt_row(r) for r in rows) + "\n")


if __name__ == "__main__":
    main()
