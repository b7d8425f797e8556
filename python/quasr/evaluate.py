"""Transcription and evaluation: WER (jiwer, after Whisper's normalisers), size, latency, RTF, and the
efficiency metrics of docs/METRICS.md (MACs, BOPs, memory I/O per second of audio)."""

from __future__ import annotations

import functools
import json
import os
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .adapters import get_adapter, split_long  # noqa: F401  (split_long re-exported)
from .audio import SAMPLE_RATE
from .data import Clip
from .plan import average_bits, model_size_bytes


def transcribe(model, processor, waves: list[np.ndarray], language: str | None = None, batch_size: int = 8,
               progress: bool = False) -> list[str]:
    """Greedy transcripts of 16 kHz mono waveforms with the model family's adapter; long audio is
    chunked at pauses, silence gives ""."""
    return get_adapter(model, processor).transcribe(waves, language, batch_size, progress)


def normalizer(language: str | None, model_dir: str | Path | None = None):
    """Whisper's normalisers from transformers: English for en (spelling map from the model's
    normalizer.json when present), otherwise the basic one with diacritics removed."""
    from transformers.models.whisper.english_normalizer import BasicTextNormalizer, EnglishTextNormalizer

    if language in (None, "en", "english"):
        mapping = {}
        if model_dir and (Path(model_dir) / "normalizer.json").exists():
            mapping = json.loads((Path(model_dir) / "normalizer.json").read_text())
        return EnglishTextNormalizer(mapping)
    return BasicTextNormalizer(remove_diacritics=True)


def word_error_rate(refs: list[str], hyps: list[str], language: str | None = None) -> tuple[float, int, int]:
    """(WER in percent, words in the references, pairs skipped because the reference normalised to
    nothing)."""
    import jiwer

    norm = normalizer(language)
    pairs = [(norm(r), norm(h)) for r, h in zip(refs, hyps)]
    kept = [(r, h) for r, h in pairs if r.strip()]
    if not kept:
        raise ValueError("no reference transcript has any words after normalisation")
    out = jiwer.process_words([r for r, _ in kept], [h for _, h in kept])
    n_words = sum(len(r.split()) for r, _ in kept)
    errors = out.substitutions + out.deletions + out.insertions
    return 100.0 * errors / n_words, n_words, len(pairs) - len(kept)


@functools.cache
def _cpu_description() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} CPUs, {torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}"


def machine_description(device: torch.device | str | None = None) -> str:
    """What the timings of a row were measured on (hosts behind one name differ: the same 2-core box
    has been an AVX2 EPYC one day and an AVX-512 Xeon the next, and fp32 BLAS follows)."""
    desc = _cpu_description()
    if device is not None and torch.device(device).type == "cuda":
        desc += f", {torch.cuda.get_device_name(device)}"
    return desc


def evaluate(model, processor, clips: list[Clip], language: str | None = None, batch_size: int = 8,
             progress: bool = True, against: list[str] | None = None) -> dict:
    """WER on clips with transcripts, plus size, wall time and real-time factor, and the clips whose
    transcript stopped early or looped (`faults`, against the labels). `against`: the float
    model's transcripts of the same clips; then `vs_float` has the word error rate against them
    (disagreement) and the faults judged against them (every clip, labelled or not)."""
    waves = [c.waveform() for c in tqdm(clips, desc="loading audio", disable=not progress, leave=False)]
    audio_seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    from .metrics import EfficiencyCounter

    start = time.perf_counter()
    with EfficiencyCounter(model) as counter:  # hooks cost microseconds per layer call
        hyps = transcribe(model, processor, waves, language, batch_size, progress)
    seconds = time.perf_counter() - start
    labelled = [(c.text, h) for c, h in zip(clips, hyps) if c.text]
    result = {
        "wer": None,
        "n_clips": len(clips),
        "n_scored": 0,
        "n_words": 0,
        "size_mb": model_size_bytes(model) / 1e6,
        "avg_bits": average_bits(model),
        "seconds": seconds,
        "audio_seconds": audio_seconds,
        "rtf": seconds / audio_seconds if audio_seconds else None,
        "latency_per_clip_s": seconds / len(clips),
        "n_threads": torch.get_num_threads(),
        # other jobs on the machine inflate the timings: a reader can tell a quiet run from a busy one
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "machine": machine_description(next(model.parameters()).device),
        **counter.counts.per_second(audio_seconds),
    }
    from .faults import summarise

    norm = normalizer(language)
    if labelled:
        wer, n_words, skipped = word_error_rate([r for r, _ in labelled], [h for _, h in labelled], language)
        result.update(wer=wer, n_scored=len(labelled) - skipped, n_words=n_words)
        result["faults"] = summarise([c.id for c in clips], [c.text for c in clips], hyps, norm)
    if against is not None:
        if len(against) != len(clips):
            raise ValueError(f"{len(against)} float transcripts for {len(clips)} clips")
        judged = [(r, h) for r, h in zip(against, hyps) if norm(r).strip()]
        result["vs_float"] = {
            "wer": word_error_rate([r for r, _ in judged], [h for _, h in judged], language)[0] if judged else None,
            **summarise([c.id for c in clips], against, hyps, norm),
        }
    result["transcripts"] = [{"id": c.id, "ref": c.text, "hyp": h, **({"float": f} if against else {})}
                             for c, h, f in zip(clips, hyps, against or [None] * len(clips))]
    return result
