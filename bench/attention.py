"""Encoder self-attention: quasr::attention (bf16 operands, csrc/cpu/attention.h) against torch's float32
SDPA on the heads of the three models, in one run (bench/RESULTS.md, issue 22).

    python bench/attention.py [--threads 2] [--repeats 20]

Shapes (batch, heads, frames, head size): whisper-tiny 1 x 6 x 1500 x 64, whisper-base 1 x 8 x 1500 x 64,
batch 8 of tiny, moonshine-base 8 heads of 52 over 10 s of audio (about 415 frames). Inputs are
[B, T, H, D] projections viewed as [B, H, T, D], as transformers passes them. Then a Whisper decoder
step's cross-attention: one query row per head against 1500 keys and values packed once per clip
(quasr_cpu::attention_pack / attention_packed, as adapters/whisper_greedy.py runs it). Beside them,
torch's SDPA on bf16 operands: what integrations/attention.py runs on CPUs with AMX-BF16."""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

import quasr  # noqa: F401  (registers torch.ops.quasr.*)
from quasr.evaluate import machine_description
from quasr.kernels.registry import BACKENDS

SHAPES = {"whisper-tiny": (1, 6, 1500, 64), "whisper-base": (1, 8, 1500, 64), "whisper-tiny, batch 8": (8, 6, 1500, 64),
          "moonshine-base, 10 s": (1, 8, 415, 52)}


def timed(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=20)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if not BACKENDS["cpu"].has_bf16_attention():
        raise SystemExit("this CPU has no AVX-512 BF16: quasr::attention runs only its portable path here; nothing to time")
    print(f"{machine_description()}; AVX-512 BF16 yes (quasr::attention runs its SIMD path)")
    print(f"{a.threads} threads, median of {a.repeats}\n")
    print("| heads | torch fp32 SDPA ms | quasr bf16 ms | speed-up | relative error | torch SDPA on bf16 ms "
          "(the AMX-BF16 engine; incl. casts) | its speed-up | its relative error |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    g = torch.Generator().manual_seed(0)
    for name, (b, h, t, d) in SHAPES.items():
        q, k, v = (torch.randn(b, t, h, d, generator=g).transpose(1, 2) for _ in range(3))
        scale = d ** -0.5
        exact = F.scaled_dot_product_attention(q, k, v, scale=scale)
        ours = torch.ops.quasr.attention(q, k, v, scale, 0)
        err = ((ours - exact).norm() / exact.norm()).item()
        t_sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v, scale=scale), a.repeats)
        t_ours = timed(lambda: torch.ops.quasr.attention(q, k, v, scale, 0), a.repeats)

        def sdpa_bf16():  # what integrations.attention runs on AMX-BF16 CPUs
            return F.scaled_dot_product_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), scale=scale).float()

        err_bf16 = ((sdpa_bf16() - exact).norm() / exact.norm()).item()
        t_bf16 = timed(sdpa_bf16, a.repeats)
        print(f"| {name}: {b} x {h} x {t} x {d} | {t_sdpa:.2f} | {t_ours:.2f} | {t_sdpa / t_ours:.2f} | {err:.1e} "
              f"| {t_bf16:.2f} | {t_sdpa / t_bf16:.2f} | {err_bf16:.1e} |")
    # A decoder step's cross-attention: one query row per head against keys and values packed once per clip.
    for name, (b, h, d) in {"whisper-tiny decoder step": (1, 6, 64), "whisper-base decoder step": (1, 8, 64),
                            "whisper-tiny decoder step, batch 8": (8, 6, 64)}.items():
        q = torch.randn(b, h, 1, d, generator=g)
        k, v = (torch.randn(b, h, 1500, d, generator=g) for _ in range(2))
        pack = torch.ops.quasr_cpu.attention_pack(k, v)
        exact = F.scaled_dot_product_attention(q, k, v, scale=d ** -0.5)
        ours = torch.ops.quasr_cpu.attention_packed(q, pack, 1500, d ** -0.5)
        err = ((ours - exact).norm() / exact.norm()).item()
        t_sdpa = timed(lambda: F.scaled_dot_product_attention(q, k, v, scale=d ** -0.5), a.repeats * 10)
        t_ours = timed(lambda: torch.ops.quasr_cpu.attention_packed(q, pack, 1500, d ** -0.5), a.repeats * 10)
        print(f"| {name}: {b} x {h} x 1 x {d} against 1500 packed keys | {t_sdpa:.3f} | {t_ours:.3f} "
              f"| {t_sdpa / t_ours:.2f} | {err:.1e} | | | |")


if __name__ == "__main__":
    main()
