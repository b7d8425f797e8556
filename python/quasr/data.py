"""Evaluation and calibration data: a jsonl manifest, a folder of audio (+ same-name .txt
transcripts, or a manifest.jsonl inside), or a Hugging Face dataset ("hf:NAME[:CONFIG]:SPLIT")."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, load_audio, prepare_waveform

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif"}


@dataclass
class Clip:
    id: str
    text: str | None
    language: str | None = None
    path: Path | None = None
    speaker: str | None = None
    gender: str | None = None
    duration: float | None = None
    _wave: np.ndarray | None = field(default=None, repr=False)

    def waveform(self) -> np.ndarray:
        return self._wave if self._wave is not None else load_audio(self.path)


def _from_manifest(path: Path) -> list[Clip]:
    clips = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            audio = row["audio"]
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}:{i}: each line must be a JSON object with an 'audio' field ({exc})") from None
        p = Path(audio)
        p = p if p.is_absolute() else path.parent / p
        clips.append(Clip(p.stem, row.get("text"), row.get("language"), p, row.get("speaker"), row.get("gender"), row.get("duration")))
    return clips


def _from_folder(folder: Path) -> list[Clip]:
    if (folder / "manifest.jsonl").exists():
        return _from_manifest(folder / "manifest.jsonl")
    clips = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in AUDIO_SUFFIXES:
            txt = p.with_suffix(".txt")
            clips.append(Clip(p.stem, txt.read_text().strip() if txt.exists() else None, path=p))
    return clips


def _from_hf(spec: str) -> list[Clip]:
    parts = spec[3:].split(":")
    if len(parts) not in (2, 3):
        raise ValueError("Hugging Face datasets are given as hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT")
    try:
        import datasets
    except ImportError:
        raise ImportError("hf: datasets need the 'datasets' package: pip install datasets") from None
    name, split = parts[0], parts[-1]
    ds = datasets.load_dataset(name, parts[1] if len(parts) == 3 else None, split=split)
    text_col = next((c for c in ("text", "sentence", "transcription", "transcript") if c in ds.column_names), None)
    clips = []
    for i, row in enumerate(ds):
        a = row["audio"]
        wave = prepare_waveform(np.asarray(a["array"]), a["sampling_rate"], f"{name}[{i}]")
        clips.append(Clip(str(row.get("id", i)), row.get(text_col) if text_col else None, row.get("language"),
                          duration=len(wave) / SAMPLE_RATE, _wave=wave))
    return clips


def load_clips(source: str | Path, language: str | None = None, limit: int | None = None) -> list[Clip]:
    """Clips from a manifest, a folder or an hf: dataset, optionally filtered by language
    (clips with no language are kept) and cut to the first `limit`."""
    s = str(source)
    if s.startswith("hf:"):
        clips = _from_hf(s)
    else:
        p = Path(s)
        if p.is_dir():
            clips = _from_folder(p)
        elif p.is_file():
            clips = _from_manifest(p)
        else:
            raise FileNotFoundError(f"data not found: {s} (give a manifest .jsonl, a folder of audio, or hf:NAME:SPLIT)")
    if language:
        clips = [c for c in clips if c.language in (None, language)]
    if limit is not None:
        clips = clips[:limit]
    if not clips:
        raise ValueError(f"no clips in {s}" + (f" for language {language!r}" if language else ""))
    return clips
