"""Transcription and evaluation: WER (jiwer, after Whisper's normalisers), size, latency, RTF."""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio import SAMPLE_RATE, is_silent
from .data import Clip
from .plan import average_bits, model_size_bytes

CHUNK_SECONDS = 30.0  # Whisper's window
# Generation cap: fast read speech is ~3-4 words/s; a looping low-bit model stops here instead of
# running to 448 tokens (its WER still counts the garbage it produced up to the cap).
TOKENS_PER_SECOND, TOKEN_MARGIN = 8, 16


def split_long(wave: np.ndarray, max_seconds: float = CHUNK_SECONDS) -> list[np.ndarray]:
    """Cut audio longer than the window at the quietest 100 ms within the window's last 10 s."""
    limit = int(max_seconds * SAMPLE_RATE)
    pieces = []
    while len(wave) > limit:
        frame = SAMPLE_RATE // 10
        lo = limit - 10 * SAMPLE_RATE
        energies = [float(np.square(wave[s : s + frame]).mean()) for s in range(lo, limit - frame + 1, frame)]
        cut = lo + int(np.argmin(energies)) * frame + frame // 2
        pieces.append(wave[:cut])
        wave = wave[cut:]
    pieces.append(wave)
    return pieces


def _is_multilingual(model) -> bool:
    return bool(getattr(model.generation_config, "is_multilingual", False))


def transcribe(model, processor, waves: list[np.ndarray], language: str | None = None, batch_size: int = 8,
               progress: bool = False) -> list[str]:
    """Greedy transcripts of 16 kHz mono waveforms; long audio is chunked, silence gives ""."""
    if language and not _is_multilingual(model) and language != "en":
        raise ValueError(f"this model is English-only; it cannot transcribe language {language!r}")
    pieces: list[tuple[int, np.ndarray]] = []
    for i, w in enumerate(waves):
        if is_silent(w):
            warnings.warn(f"clip {i} is silent (peak < -80 dBFS): its transcript is empty", stacklevel=2)
            continue
        pieces.extend((i, p) for p in split_long(w))
    texts: list[list[str]] = [[] for _ in waves]
    kw = {"language": language, "task": "transcribe"} if _is_multilingual(model) and language else {}
    order = sorted(range(len(pieces)), key=lambda j: len(pieces[j][1]))  # similar lengths batch together
    batches = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    results: dict[int, str] = {}
    for batch in tqdm(batches, desc="transcribing", disable=not progress, leave=False):
        audio = [pieces[j][1] for j in batch]
        feats = processor.feature_extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
        longest = max(len(a) for a in audio) / SAMPLE_RATE
        max_new = min(int(longest * TOKENS_PER_SECOND) + TOKEN_MARGIN, 440)
        with torch.inference_mode():
            out = model.generate(feats.to(next(model.parameters()).dtype), max_new_tokens=max_new, **kw)
        for j, text in zip(batch, processor.batch_decode(out, skip_special_tokens=True)):
            results[j] = text.strip()
    for j, (i, _) in enumerate(pieces):
        texts[i].append(results[j])
    return [" ".join(t).strip() for t in texts]


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


def evaluate(model, processor, clips: list[Clip], language: str | None = None, batch_size: int = 8,
             progress: bool = True) -> dict:
    """WER on clips with transcripts, plus size, wall time and real-time factor."""
    waves = [c.waveform() for c in tqdm(clips, desc="loading audio", disable=not progress, leave=False)]
    audio_seconds = sum(len(w) for w in waves) / SAMPLE_RATE
    start = time.perf_counter()
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
    }
    if labelled:
        wer, n_words, skipped = word_error_rate([r for r, _ in labelled], [h for _, h in labelled], language)
        result.update(wer=wer, n_scored=len(labelled) - skipped, n_words=n_words)
    result["transcripts"] = [{"id": c.id, "ref": c.text, "hyp": h} for c, h in zip(clips, hyps)]
    return result
