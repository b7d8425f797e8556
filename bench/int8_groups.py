"""What a smaller weight group costs the int8 kernels: quasr's 4-bit int8-activation qlinear at group
128 and group 64 on the real layer shapes of whisper-tiny.en and whisper-base, per ISA path.

    python bench/int8_groups.py [--m 1,8,1500] [--isa avx512-vnni,avx2] [--bits 4] [--threads N] [--seconds S] [--out FILE]

Each cell is the fastest of all calls made in --seconds (the minimum: on a shared 2-core machine
medians moved by 10% between runs, the minimum by a few percent) of the bound call packed modules
make (ops.bound_qlinear: no Python dispatch), activations int8 per token and group, symmetric (the
default). The group applies its scales once per group: a smaller group means more of that work
per multiply-add, the cost this table shows.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gemm import packed_weight  # noqa: E402

from quasr import ops  # noqa: E402
from quasr.kernels import BACKENDS  # noqa: E402
from quasr.kernels.reference import ActQuant  # noqa: E402
from quasr.kernels.registry import ISA_ENV  # noqa: E402

SHAPES = [(384, 384), (384, 1536), (1536, 384), (512, 512), (512, 2048), (2048, 512)]  # K x N
GROUPS = (128, 64)


def fastest(fn, seconds: float) -> float:
    fn()
    best, end = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def measure(isa: str, ms: list[int], bits: int, seconds: float) -> list[dict]:
    cpu, act, rows = BACKENDS["cpu"], ActQuant(8, symmetric=True, per_group=True), []
    os.environ[ISA_ENV] = isa  # read when a call is bound
    try:
        for k, n in SHAPES:
            calls = {}
            for g in GROUPS:
                pw = packed_weight(n, k, bits, group=g)
                layout = cpu.repack(pw)
                calls[g] = ops.bound_qlinear(pw, None, None, act, lambda b, p, lay=layout: lay, torch.device("cpu"))
                if calls[g] is None:
                    raise RuntimeError(f"the int8 path is not bound for ISA {isa} ({ops.native_status()})")
            for m in ms:
                x = torch.randn(m, k)
                row = {"isa": isa, "K": k, "N": n, "M": m}
                row.update({f"g{g}_us": fastest(lambda: calls[g](x), seconds) * 1e6 for g in GROUPS})
                rows.append(row)
                print(fmt(row), flush=True)
    finally:
        os.environ.pop(ISA_ENV, None)
    return rows


HEADER = "| ISA | K×N | M | group 128 µs | group 64 µs | group 64 / group 128 |\n|---|---|---:|---:|---:|---:|"


def fmt(r: dict) -> str:
    return (f"| {r['isa']} | {r['K']}×{r['N']} | {r['M']} | {r['g128_us']:.1f} | {r['g64_us']:.1f} | "
            f"{r['g64_us'] / r['g128_us']:.2f} |")


def totals(rows: list[dict]) -> str:
    out = []
    for isa in dict.fromkeys(r["isa"] for r in rows):
        for m in dict.fromkeys(r["M"] for r in rows):
            sel = [r for r in rows if r["isa"] == isa and r["M"] == m]
            a, b = sum(r["g128_us"] for r in sel), sum(r["g64_us"] for r in sel)
            out.append(f"| {isa} | all {len(sel)} shapes | {m} | {a:.1f} | {b:.1f} | {b / a:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--m", default="1,8,1500")
    ap.add_argument("--isa", default=None, help="comma-separated ISA paths (default: the best this CPU runs)")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seconds", type=float, default=1.0, help="time spent on each cell")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    ms = [int(v) for v in args.m.split(",")]
    isas = args.isa.split(",") if args.isa else [BACKENDS["cpu"].int8_isa()]
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"
    print(f"# {machine}; {ops.native_status()}; {args.bits}-bit\n\n{HEADER}")
    rows = [r for isa in isas for r in measure(isa, ms, args.bits, args.seconds)]
    print(totals(rows))
    if args.out:
        Path(args.out).write_text(f"{machine}; {ops.native_status()}; {args.bits}-bit\n\n{HEADER}\n"
                                  + "\n".join(fmt(r) for r in rows) + "\n" + totals(rows) + "\n")


if __name__ == "__main__":
    main()
