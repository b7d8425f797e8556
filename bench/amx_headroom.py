"""What a CPU's float units offer against quasr's int8 kernels at Whisper's encoder rows (M = 1500):
torch's float32 matmul, torch's matmul on bf16 operands (oneDNN runs it on AMX tiles where the CPU
has AMX-BF16; the casts of x and the result counted, the weight cast once as a bf16 copy would be)
and quasr's 4-bit int8-activation qlinear (group 64, activations int8 per token and group: the
`--bits 4` preset's layers), on the real layer shapes of whisper-tiny.en and whisper-base.

    python bench/amx_headroom.py [--m 1500] [--threads 2] [--seconds 1]

Each cell is the fastest call in --seconds (as bench/int8_groups.py). This is headroom, not a quasr
path: quasr has no AMX GEMM yet (bench/RESULTS.md, issue 22).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from gemm import packed_weight  # noqa: E402
from int8_groups import SHAPES, fastest  # noqa: E402

from quasr import ops  # noqa: E402
from quasr.evaluate import machine_description  # noqa: E402
from quasr.integrations.attention import cpu_flags  # noqa: E402
from quasr.kernels import BACKENDS  # noqa: E402
from quasr.kernels.reference import ActQuant  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--m", type=int, default=1500)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=1.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cpu, act = BACKENDS["cpu"], ActQuant(8, symmetric=True, per_group=True)
    print(f"{machine_description()}; AMX-BF16 {'yes' if 'amx_bf16' in cpu_flags() else 'no'}; "
          f"{ops.native_status()}; {args.threads} threads, M = {args.m}\n")
    print("| K×N | torch fp32 ms | torch bf16 ms (incl. casts) | quasr W4 g64 int8 ms | fp32 / bf16 | fp32 / quasr |")
    print("|---|---:|---:|---:|---:|---:|")
    sums = [0.0, 0.0, 0.0]
    for k, n in SHAPES:
        x, w = torch.randn(args.m, k), torch.randn(n, k)
        wb = w.bfloat16()
        pw = packed_weight(n, k, 4, group=64)
        layout = cpu.repack(pw)
        qcall = ops.bound_qlinear(pw, None, None, act, lambda b, p, lay=layout: lay, torch.device("cpu"))
        if qcall is None:
            raise SystemExit(f"quasr's int8 path is not bound here ({ops.native_status()})")
        times = [fastest(lambda: x @ w.t(), args.seconds), fastest(lambda: (x.bfloat16() @ wb.t()).float(), args.seconds),
                 fastest(lambda: qcall(x), args.seconds)]
        sums = [a + b for a, b in zip(sums, times)]
        f32, b16, q = (t * 1e3 for t in times)
        print(f"| {k}×{n} | {f32:.2f} | {b16:.2f} | {q:.2f} | {f32 / b16:.2f} | {f32 / q:.2f} |", flush=True)
    f32, b16, q = (t * 1e3 for t in sums)
    print(f"| all {len(SHAPES)} shapes | {f32:.2f} | {b16:.2f} | {q:.2f} | {f32 / b16:.2f} | {f32 / q:.2f} |")


if __name__ == "__main__":
    main()
