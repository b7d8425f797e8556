"""Whisper's encoder on a CPU, a batch of clips at once against one clip at a time (quasr --bits 4).

The encoder always sees 30 s windows (1500 frames), so a batch of 8 holds 8 x 1500 rows per matmul:
its activations no longer fit the caches. This times both ways on the same features, and the
profile of each, for the adapters' choice (WhisperAdapter.cpu_encoder_chunk).

    HF_HUB_OFFLINE=1 python bench/encoder_batching.py --models whisper-tiny.en,whisper-base
"""
import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import quantized  # noqa: E402

from quasr.adapters import get_adapter  # noqa: E402
from quasr.data import default_data, load_clips  # noqa: E402
from quasr.evaluate import machine_description  # noqa: E402
from quasr.models import load_model  # noqa: E402
from quasr.plan import default_group_size  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="whisper-tiny.en,whisper-base")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(machine_description())
    print(f"\n| model | {a.batch} clips batched s | one at a time s | in pairs s | batched / one at a time |")
    print("|---|---:|---:|---:|---:|")
    waves = [c.waveform() for c in load_clips(default_data(), "en", a.batch)]
    for name in a.models.split(","):
        base, processor = load_model(name)
        model = quantized(base, processor, "preset", (4, default_group_size(4)), None)
        feats = get_adapter(model, processor).preprocess(waves)["input_features"]
        encoder = model.model.encoder
        ways = {"batched": lambda: encoder(feats),
                "one": lambda: [encoder(feats[i: i + 1]) for i in range(len(feats))],
                "pairs": lambda: [encoder(feats[i: i + 2]) for i in range(0, len(feats), 2)]}
        times = {k: [] for k in ways}
        with torch.inference_mode():
            encoder(feats[:2])  # warm-up
            for _ in range(a.repeats):
                for k, run in ways.items():
                    t = time.perf_counter()
                    run()
                    times[k].append(time.perf_counter() - t)
        med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
        print(f"| {name} | {med['batched']:.2f} | {med['one']:.2f} | {med['pairs']:.2f} | "
              f"{med['batched'] / med['one']:.2f} |", flush=True)


if __name__ == "__main__":
    sys.exit(main())
