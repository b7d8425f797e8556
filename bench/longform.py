"""Long-form audio: does a quantized model drop whole stretches of a long file, and does quasr say so?

English prompts are joined (0.5 s of silence between them) into one long file, transcribed in 30 s
windows by the float model and by quantized ones, and scored against the joined scripts. Each run
counts the windows `warn_short_windows` flagged (stopped short, or repeating itself): a good
detector flags the windows a model lost or looped on and stays quiet on the float model.

    python bench/longform.py --model whisper-tiny.en --minutes 10 --bits 8 4 3
"""

from __future__ import annotations

import argparse
import copy
import warnings

import numpy as np

from quasr.adapters import get_adapter
from quasr.adapters.base import split_long
from quasr.audio import SAMPLE_RATE
from quasr.data import default_data, load_clips
from quasr.evaluate import word_error_rate
from quasr.models import load_model
from quasr.plan import swap, uniform_plan


def long_file(minutes: float, skip: int):
    clips = load_clips(default_data(), "en")[skip:]
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    waves, texts, total = [], [], 0.0
    for c in clips:
        if total >= minutes * 60:
            break
        w = c.waveform()
        waves += [w, gap]
        texts.append(c.text)
        total += len(w) / SAMPLE_RATE + 0.5
    return np.concatenate(waves), " ".join(texts), len(texts)


def run(label, model, processor, wave, reference):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        hyp = get_adapter(model, processor).transcribe([wave], "en")[0]
    messages = [str(w.message) for w in caught]
    short = [m.split(": the transcript of ")[1].split(",")[0] for m in messages if "stopped early" in m]
    looping = sum("repeating itself" in m for m in messages)
    wer, _, _ = word_error_rate([reference], [hyp], "en")
    print(f"| {label} | {len(hyp.split())} | {wer:.2f} | {len(short)} | {looping} | {'; '.join(short)} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--skip", type=int, default=0, help="start at this English prompt")
    ap.add_argument("--bits", type=int, nargs="+", default=[8, 4])
    ap.add_argument("--group-size", type=int, default=128)
    args = ap.parse_args()
    wave, reference, n = long_file(args.minutes, args.skip)
    print(f"{args.model}: {n} prompts joined, {len(wave) / SAMPLE_RATE / 60:.1f} min in "
          f"{len(split_long(wave))} windows, {len(reference.split())} reference words\n")
    print("| model | words | WER % | windows flagged short | flagged repeating | short ones |\n"
          "|---|---:|---:|---:|---:|---|")
    model, processor = load_model(args.model)
    run("float", model, processor, wave, reference)
    for bits in args.bits:
        q = copy.deepcopy(model)
        swap(q, uniform_plan(q, bits, args.group_size), progress=False)
        run(f"W{bits} g{args.group_size} RTN", q, processor, wave, reference)


if __name__ == "__main__":
    main()
