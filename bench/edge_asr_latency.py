# End-to-end transcription latency of the Edge-ASR configurations on this CPU (docs/RESULTS.md,
# Edge-ASR section). The sweep's own `seconds`/`rtf` columns were taken beside other jobs; this
# script is the controlled measurement: one process, the machine otherwise idle (it prints the load
# average and refuses a busy machine unless --force), every variant quantized up front and timed
# round-robin `--repeats` times on the same clips, median reported. Latency depends on the kernel
# path (weight bits, activation fake-quant, online rotation), not on how the weights were chosen,
# so the variants are calibration-free (RTN; QuaRot with RTN weights for the rotation's cost).
# Decoder steps differ when a variant's transcripts differ, so time per generated token is shown too.
# --batch 1 transcribes one clip at a time, as a single-stream edge device does (decoder steps then
# run the M = 1 GEMV); --variants picks a subset, e.g. --variants float,rtn:W4A16.
# Run: HF_HUB_OFFLINE=1 python bench/edge_asr_latency.py whisper-base --clips 8 --repeats 3
import argparse
import copy
import os
import statistics
import time

import torch

from quasr.evaluate import transcribe
from quasr.methods import config_plan, get_method, quantize
from quasr.adapters import get_adapter
from quasr.audio import SAMPLE_RATE
from quasr.data import load_clips
from quasr.models import load_model

VARIANTS = [("float", ""), ("rtn", "W8A16"), ("rtn", "W4A16"), ("rtn", "W8A8"), ("rtn", "W4A8"), ("rtn", "W4A4"),
            ("quarot", "W4A4")]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=8, help="clips per transcribe call")
    p.add_argument("--variants", default=None, help="comma-separated METHOD:CONFIG (float for the float model)")
    p.add_argument("--force", action="store_true", help="run even if the machine is busy")
    a = p.parse_args()
    variants = VARIANTS
    if a.variants:
        names = {f"{m}:{c}" if c else m: (m, c) for m, c in VARIANTS}
        unknown = [v for v in a.variants.split(",") if v not in names]
        if unknown:
            raise SystemExit(f"unknown variants {unknown}; choose from {sorted(names)}")
        variants = [names[v] for v in a.variants.split(",")]
        if ("float", "") not in variants:
            variants = [("float", "")] + variants  # the baseline every row is divided by
    load = os.getloadavg()[0]
    print(f"load average (1 min) before: {load:.2f}")
    if load > 0.5 and not a.force:
        raise SystemExit("the machine is busy (load average > 0.5): timings would measure the other jobs; "
                         "stop them or pass --force")
    torch.set_num_threads(a.threads)
    clips = load_clips("../shared/speech/prompts/manifest.jsonl", "en", a.clips)
    waves = [c.waveform() for c in clips]
    audio_s = sum(len(w) for w in waves) / SAMPLE_RATE
    base, processor = load_model(a.model)
    models = {}
    for method, config in variants:
        m = copy.deepcopy(base)
        if method != "float":
            opts = {"weights": "rtn"} if method == "quarot" else {}
            quantize(get_adapter(m, processor), config_plan(m, config), None, get_method(method, **opts), progress=False)
        models[(method, config)] = m
    times = {k: [] for k in models}
    tokens = {}
    for _ in range(a.repeats):
        for k, m in models.items():
            t = time.perf_counter()
            hyps = transcribe(m, processor, waves, "en", a.batch, False)
            times[k].append(time.perf_counter() - t)
            tokens[k] = sum(len(processor.tokenizer(h).input_ids) for h in hyps)
    print(f"load average (1 min) after: {os.getloadavg()[0]:.2f}")
    f = statistics.median(times[("float", "")])
    print(f"\n{a.model}, {len(clips)} clips ({audio_s:.1f} s of audio), batch {a.batch}, {a.threads} threads, "
          f"median of {a.repeats}\n")
    print("| variant | seconds | RTF | x float | output tokens | ms per token |")
    print("|---|---:|---:|---:|---:|---:|")
    for (method, config), ts in times.items():
        s = statistics.median(ts)
        name = method if not config else f"{method} {config}"
        print(f"| {name} | {s:.2f} | {s / audio_s:.3f} | {s / f:.2f} | {tokens[(method, config)]} | "
              f"{1000 * s / max(tokens[(method, config)], 1):.1f} |")


if __name__ == "__main__":
    main()
