"""Which tensors a calibration-free 4-bit preset must give more bits, chosen on one set and reported on
another (issue 23, "uniform presets that are safe").

Every candidate is RTN with MSE clipping and int8 activations per token and group (what `quasr
quantize --bits 4` makes), differing in group size or in a few layers kept at 8 bits. Candidates are
judged on unlabelled LibriSpeech clips against the float model's own transcripts (word disagreement,
clips that stopped early or looped: python/quasr/faults.py) and reported on the labelled English
prompts, which choose nothing.

    HF_HUB_OFFLINE=1 python bench/preset_candidates.py --model whisper-tiny.en --choose 100 --report 177

`--choose-from` / `--report-from` skip that many clips first, so a later check can run on clips no
earlier comparison used (LibriSpeech and the English prompts are both read in manifest order).
"""

from __future__ import annotations

import argparse
import copy
import fnmatch
import json
import time
from pathlib import Path

import torch

from quasr.adapters import get_adapter
from quasr.data import default_data, load_clips
from quasr.evaluate import evaluate, machine_description, transcribe
from quasr.methods import get_method, quantize, with_activations
from quasr.models import load_model
from quasr.plan import model_size_bytes, uniform_plan



def plan_for(model, candidate: str) -> dict:
    """candidate: "g<group>" then any "+8:<glob>[|<glob>...]" (matching layers at 8 bits) or
    "+g<group>:<glob>[|...]" (matching layers in groups of that size), applied in order."""
    base, *overrides = candidate.split("+")
    plan = uniform_plan(model, 4, int(base[1:]))
    for override in overrides:
        what, _, globs = override.partition(":")
        key, value = ("group_size", int(what[1:])) if what.startswith("g") else ("bits", int(what))
        for name, spec in plan["layers"].items():
            if any(fnmatch.fnmatch(name, g) for g in globs.split("|")):
                plan["layers"][name] = {**spec, key: value}
    return with_activations(plan, 8, "group", True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="whisper-tiny.en")
    ap.add_argument("--choose", type=int, default=100, help="LibriSpeech clips that choose (vs float transcripts)")
    ap.add_argument("--choose-from", type=int, default=0, help="skip this many LibriSpeech clips first")
    ap.add_argument("--report", type=int, default=177, help="English prompts reported on (labelled)")
    ap.add_argument("--report-from", type=int, default=0, help="skip this many English prompts first")
    ap.add_argument("--candidates", default="g128,g64,g32,g128+8:proj_out,g128+8:model.decoder.layers.0.*,"
                    "g128+8:*fc2,g128+8:model.encoder.conv*")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--out", default=None, help="append the JSON lines here")
    a = ap.parse_args()
    torch.set_num_threads(2)
    model, processor = load_model(a.model)
    lang = "en"
    prompts = default_data()
    if not prompts:
        raise SystemExit("../shared/speech not found: set QUASR_SPEECH")
    choose = load_clips(Path(prompts).parents[1] / "librispeech")[a.choose_from:a.choose_from + a.choose]
    report = load_clips(prompts, language=lang)[a.report_from:a.report_from + a.report]
    waves = {"choose": [c.waveform() for c in choose], "report": [c.waveform() for c in report]}
    float_hyps = {k: transcribe(model, processor, w, lang, a.batch_size) for k, w in waves.items()}
    float_report = evaluate(model, processor, report, lang, a.batch_size, progress=False)
    print(f"# {a.model}: choose on {len(choose)} LibriSpeech clips (from #{a.choose_from}), report on "
          f"{len(report)} English prompts (from #{a.report_from}); "
          f"{machine_description()}")
    print(f"float: WER {float_report['wer']:.2f}% on the prompts, {model_size_bytes(model) / 1e6:.1f} MB")
    print("| candidate | MB | choose: disagreement % | choose: stopped/looped | report: WER % | "
          "report: disagreement % | report: stopped/looped (vs labels) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for cand in a.candidates.split(","):
        t = time.perf_counter()
        m = copy.deepcopy(model)
        quantize(get_adapter(m, processor), plan_for(m, cand), None, get_method("rtn"), progress=False)
        rc = evaluate(m, processor, choose, lang, a.batch_size, progress=False, against=float_hyps["choose"])
        rr = evaluate(m, processor, report, lang, a.batch_size, progress=False, against=float_hyps["report"])
        vc, vr, fr = rc["vs_float"], rr["vs_float"], rr["faults"]
        row = {"model": a.model, "candidate": cand, "choose_clips": [a.choose_from, a.choose_from + len(choose)],
               "report_clips": [a.report_from, a.report_from + len(report)], "mb": model_size_bytes(m) / 1e6, "choose_disagreement": vc["wer"],
               "choose_faults": [vc["n_truncated"], vc["n_looped"]], "report_wer": rr["wer"],
               "report_disagreement": vr["wer"], "report_faults": [fr["n_truncated"], fr["n_looped"]],
               "report_faulty_clips": fr["truncated"] + fr["looped"], "float_report_wer": float_report["wer"],
               "seconds": time.perf_counter() - t}
        print(f"| {cand} | {row['mb']:.1f} | {vc['wer']:.2f} | {vc['n_truncated']}/{vc['n_looped']} | "
              f"{rr['wer']:.2f} | {vr['wer']:.2f} | {fr['n_truncated']}/{fr['n_looped']} |", flush=True)
        if a.out:
            with open(a.out, "a") as f:
                f.write(json.dumps(row) + "\n")
        del m


if __name__ == "__main__":
    main()
