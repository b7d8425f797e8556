"""Microbenchmark: the online input rotation of QuaRot/SpinQuant layers, native (quasr::rotate: fast
Walsh-Hadamard transform for the power-of-two part, small dense matrices for the rest) against the
plain-torch reference (two batched matmuls on the [a, b] view, what quasr ran before), and against
the W4A4 quantized GEMM that follows it in the layer.

    python bench/rotation.py [--threads N] [--out bench/rotation.md]

Widths are the rotated input widths of Whisper tiny/base and Moonshine base; N is the layer's output
width. Times are medians (bench/gemm.py's timeit); ratios are measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import platform

import torch

from gemm import packed_weight, timeit
from quasr import ops
from quasr.rotation import Rotation, random_signs, rotation_factors

# (model, K, N): the rotated layer inputs (attention/FFN in, FFN out)
LAYERS = [("whisper-tiny.en", 384, 1536), ("whisper-tiny.en", 1536, 384), ("whisper-base", 512, 2048),
          ("whisper-base", 2048, 512), ("moonshine-base", 416, 1664), ("moonshine-base", 1664, 416)]
MS = [1, 1500]  # a decoder step, a 30 s Whisper encoder pass


def run() -> list[dict]:
    rows = []
    for model, k, n in LAYERS:
        a, b = rotation_factors(k)
        gen = torch.Generator().manual_seed(k)
        learned = Rotation(random_signs(k, 1), torch.linalg.qr(torch.randn(a, a, generator=gen))[0],
                           torch.linalg.qr(torch.randn(b, b, generator=gen))[0])
        variants = {"hadamard": Rotation(random_signs(k, 0)), "learned": learned}
        pw = packed_weight(n, k, 4)
        act = ops.ActQuant(4)
        for m in MS:
            x = torch.randn(m, k)
            gemm = timeit(lambda: ops.qlinear(x, pw, act=act))
            for kind, r in variants.items():
                native = timeit(lambda: r.apply(x))
                ref = timeit(lambda: r.reference_apply(x))
                rows.append({"model": model, "K": k, "N": n, "M": m, "rotation": kind,
                             "factors": "x".join(map(str, r.native_factors()[0])) + ("" if r.learned else " (FWHT/dense)"),
                             "native_us": native * 1e6, "reference_us": ref * 1e6, "speedup": ref / native,
                             "w4a4_gemm_us": gemm * 1e6, "share_of_layer": native / (native + gemm)})
    return rows


def render(rows: list[dict], threads: int) -> str:
    out = [f"Machine: {platform.processor() or platform.machine()}, {threads} thread(s), torch {torch.__version__}, "
           f"{ops.native_status()}", "",
           "| model | K -> N | M | rotation | axes | native us | reference us | speedup | W4A4 GEMM us | rotation share |",
           "|---|---|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['model']} | {r['K']} -> {r['N']} | {r['M']} | {r['rotation']} | {r['factors']} | "
                   f"{r['native_us']:.1f} | {r['reference_us']:.1f} | {r['speedup']:.2f}x | {r['w4a4_gemm_us']:.1f} | "
                   f"{100 * r['share_of_layer']:.0f}% |")
    return "\n".join(out) + "\n"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the markdown table here")
    args = p.parse_args()
    if not ops.NATIVE_CPU:
        raise SystemExit(f"bench/rotation.py needs the native extension: {ops.native_status()}")
    torch.set_num_threads(args.threads)
    text = render(run(), args.threads)
    print(f"load average (1 min): {os.getloadavg()[0]:.2f}\n")
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
