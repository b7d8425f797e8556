"""How far quasr's bf16 attention moves a quantized encoder's output, beside perturbations that change
nothing mathematically: torch's eager float32 attention (the same attention, its sums in another
order) and 1e-6 relative noise on the input features. whisper-tiny.en `--bits 4` preset, the first
LibriSpeech clips; relative L2 distance of the encoder's last hidden state from SDPA's (bench/RESULTS.md,
issue 22).

    HF_HUB_OFFLINE=1 python bench/attention_noise.py [--clips 4]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quasr.plan import default_group_size  # noqa: E402
from e2e import quantized  # noqa: E402

from quasr.adapters import get_adapter  # noqa: E402
from quasr.data import load_clips  # noqa: E402
from quasr.evaluate import machine_description  # noqa: E402
from quasr.integrations import attention  # noqa: E402
from quasr.models import load_model  # noqa: E402

SPEECH = Path(__file__).resolve().parents[1] / ".." / "shared" / "speech"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="whisper-tiny.en")
    p.add_argument("--clips", type=int, default=4)
    a = p.parse_args()
    torch.set_num_threads(2)
    base, processor = load_model(a.model)
    model = quantized(base, processor, "preset", (4, default_group_size(4)), None)
    ad = get_adapter(model, processor)
    clips = load_clips(SPEECH / "librispeech", limit=a.clips)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        feats = [ad.preprocess([c.waveform()])["input_features"] for c in clips]
        attention.enable(model, "exact")
        ref = [model.model.encoder(f).last_hidden_state for f in feats]

        def distance(run):
            return " ".join(f"{((run(f) - r).norm() / r.norm()).item():.2e}" for f, r in zip(feats, ref))

        encode = lambda f: model.model.encoder(f).last_hidden_state  # noqa: E731
        rows = {}
        attention.enable(model, "bf16")
        rows["quasr bf16 attention"] = distance(encode)
        attention.enable(model, "exact")
        model.set_attn_implementation("eager")
        rows["torch eager fp32 attention"] = distance(encode)
        model.set_attn_implementation("sdpa")
        rows["1e-6 relative noise on the features"] = distance(
            lambda f: encode(f + 1e-6 * f.abs().mean() * torch.randn(f.shape, generator=g)))
        rows["the float model's encoder"] = distance(lambda f: base.model.encoder(f).last_hidden_state)
    print(f"{machine_description()}; {a.model} --bits 4 preset, {a.clips} LibriSpeech clips\n")
    print("| against SDPA fp32 attention | relative L2 distance of the encoder output, per clip |")
    print("|---|---|")
    for k, v in rows.items():
        print(f"| {k} | {v} |")


if __name__ == "__main__":
    main()
