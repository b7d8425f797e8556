"""Microbenchmark: quasr's packed qlinear (auto kernel choice) at every bit width against
torch.matmul in fp32 and torch's int4 CPU kernel (_weight_int4pack_mm_for_cpu).

    python bench/gemm.py [--quick] [--out bench/gemm.md]

Times are the median of repeated calls (each call ~>= 0.2 s of total work); ratios are
fp32 time / kernel time, measured in the same run (>1 = faster than fp32).

The first table calls one layer again and again, so its weights stay in cache: at small M that
flatters fp32, whose weights are 4-16x larger. The second ("model-sized") walks M = 1 through
WALK_LAYERS distinct layers of one shape, as a decoder step walks a model, so every layer's weights
come from memory (fp32: 192 MB for whisper-base's fc1 shape, far beyond the L3).
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
WALK_SHAPES = [(512, 2048), (2048, 512)]  # whisper-base's fc1 and fc2
WALK_LAYERS = 48
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


def run_walk() -> list[dict]:
    rows = []
    for k, n in WALK_SHAPES:
        x = torch.randn(1, k)
        w32 = [torch.randn(n, k) for _ in range(WALK_LAYERS)]
        row = {"K": k, "N": n, "fp32_us": timeit(lambda: [x @ w.T for w in w32]) / WALK_LAYERS * 1e6}
        for b in BITS:
            pws = [packed_weight(n, k, b, seed=i) for i in range(WALK_LAYERS)]
            row[f"q{b}_us"] = timeit(lambda: [ops.qlinear(x, p) for p in pws]) / WALK_LAYERS * 1e6
        rows.append(row)
        print(fmt_walk(row), flush=True)
    return rows


WALK_HEADER = ("| K×N | fp32 µs per layer | " + " | ".join(f"quasr {b}-bit µs (×fp32)" for b in BITS) + " |")


def fmt_walk(r: dict) -> str:
    f = r["fp32_us"]
    cells = [f"{r['K']}×{r['N']}", f"{f:.0f}"] + [f"{r[f'q{b}_us']:.0f} ({f / r[f'q{b}_us']:.2f}×)" for b in BITS]
    return "| " + " | ".join(cells) + " |"


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
    walk_title = f"\nM = 1 through {WALK_LAYERS} distinct layers (model-sized working set), time per layer:\n"
    print(walk_title)
    print(WALK_HEADER)
    print("|" + "---|" * (2 + len(BITS)))
    walk = run_walk()
    if args.out:
        with open(args.out, "w") as fh:
            fh.write(f"{machine}; {ops.native_status()}\n\n{HEADER}\n|{'---|' * (5 + len(BITS))}\n")
            fh.write("\n".join(fmt_row(r) for r in rows) + "\n")
            fh.write(f"{walk_title}\n{WALK_HEADER}\n|{'---|' * (2 + len(BITS))}\n")
            fh.write("\n".join(fmt_walk(r) for r in walk) + "\n")


if __name__ == "__main__":
    main()
