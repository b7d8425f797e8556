"""Does quasr's bf16 encoder attention change what a quantized model transcribes? The `--bits 4` preset of
each model with torch's float32 attention (QUASR_ATTENTION=exact) and with the bf16 attention the default
picks on this CPU (quasr::attention, or torch's SDPA on bf16 operands on AMX-BF16 CPUs), on the same
clips: WER on the labelled English sets, and on unlabelled LibriSpeech the word disagreement of the bf16
transcripts with the exact ones, plus early stops and loops (python/quasr/faults.py). The control row is
torch's eager float32 attention: exact too, only its sums run in another order, so its disagreement
with SDPA's transcripts is how much a quantized model moves under perturbations that change nothing.

    HF_HUB_OFFLINE=1 python bench/attention_wer.py --models whisper-tiny.en,whisper-base,moonshine-base
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quasr.plan import default_group_size  # noqa: E402
from e2e import quantized  # noqa: E402

from quasr.data import load_clips  # noqa: E402
from quasr.evaluate import machine_description, normalizer, transcribe, word_error_rate  # noqa: E402
from quasr.faults import summarise  # noqa: E402
from quasr.integrations import attention  # noqa: E402
from quasr.models import load_model  # noqa: E402

SPEECH = Path(__file__).resolve().parents[1] / ".." / "shared" / "speech"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="whisper-tiny.en,whisper-base,moonshine-base")
    p.add_argument("--speech", default=str(SPEECH))
    p.add_argument("--unlabelled", type=int, default=100, help="LibriSpeech clips compared against the exact transcripts")
    p.add_argument("--batch", type=int, default=8)
    a = p.parse_args()
    torch.set_num_threads(2)
    if not attention.auto_uses_bf16():
        raise SystemExit("the default attention here is torch's float32 SDPA (no bf16 engine measured faster on this "
                         "CPU; `quasr info` says why): nothing to compare")
    speech = Path(a.speech)
    labelled = {"prompts (en)": load_clips(speech / "prompts", language="en"),
                "clips (en)": load_clips(speech / "clips", language="en")}
    unlabelled = load_clips(speech / "librispeech", limit=a.unlabelled)
    norm = normalizer("en")
    print(f"{machine_description()}; bf16 attention engine: {attention.bf16_engine()}; `quasr --bits 4` preset "
          f"(RTN g{default_group_size(4)}, int8 activations), greedy, batch {a.batch}\n")
    print("| model | set | clips | WER: SDPA fp32 / bf16 / eager fp32 % | word disagreement with SDPA: bf16 / eager % "
          "| stopped early / looped: SDPA; bf16; eager | seconds SDPA / bf16 |")
    print("|---|---|---:|---|---|---|---|")
    for name in a.models.split(","):
        base, processor = load_model(name)
        model = quantized(base, processor, "preset", (4, default_group_size(4)), None)
        for label, clips in (*labelled.items(), ("LibriSpeech (no labels)", unlabelled)):
            waves = [c.waveform() for c in clips]
            hyps, secs = {}, {}
            for mode in ("exact", "auto", "eager"):
                attention.enable(model, "exact" if mode == "eager" else mode)
                if mode == "eager":
                    model.set_attn_implementation("eager")
                t = time.perf_counter()
                hyps[mode] = transcribe(model, processor, waves, "en", a.batch)
                secs[mode] = time.perf_counter() - t
            model.set_attn_implementation("sdpa")
            ids = [c.id for c in clips]
            dis = [f"{word_error_rate(hyps['exact'], hyps[m], 'en')[0]:.2f}" for m in ("auto", "eager")]
            refs = [c.text for c in clips] if clips[0].text is not None else hyps["exact"]
            faults = [summarise(ids, refs, hyps[m], norm) for m in hyps]
            fault_text = "; ".join(f"{f['n_truncated']} / {f['n_looped']}" for f in faults)
            wers = (" / ".join(f"{word_error_rate(refs, hyps[m], 'en')[0]:.2f}" for m in hyps)
                    if clips[0].text is not None else "(no labels; faults against SDPA's transcripts)")
            print(f"| {name} | {label} | {len(clips)} | {wers} | {' / '.join(dis)} | {fault_text} "
                  f"| {secs['exact']:.1f} / {secs['auto']:.1f} |", flush=True)
        del model, base


if __name__ == "__main__":
    main()
