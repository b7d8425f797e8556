"""Evaluation and calibration data: a jsonl manifest, a folder of audio (+ same-name .txt
transcripts, or a manifest.jsonl inside), or a Hugging Face dataset ("hf:NAME[:CONFIG]:SPLIT")."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .audio import SAMPLE_RATE, load_audio, prepare_waveform
from .schema import (NON_NEGATIVE, POSITIVE_INT, STRING, TEXT, Fields, InputError, read_json_lines, read_text,
                     shown)

AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif"}


def default_data() -> str:
    """The default speech set's manifest (English prompts): $QUASR_SPEECH/prompts, else
    ../shared/speech/prompts beside the working directory or the checkout; "" if there is none."""
    env = os.environ.get("QUASR_SPEECH")
    if env:
        return str(Path(env) / "prompts" / "manifest.jsonl")
    for base in (Path.cwd(), Path(__file__).resolve().parents[2]):
        cand = base.parent / "shared" / "speech" / "prompts" / "manifest.jsonl"
        if cand.exists():
            return str(cand)
    return ""


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


# One manifest line; other keys (license, origin, ...) are the manifest's own business.
MANIFEST_ROW = Fields(
    "a JSON object with an 'audio' field",
    required={"audio": TEXT},
    optional={"text": STRING.or_null(), "language": TEXT.or_null(), "speaker": STRING.or_null(),
              "gender": STRING.or_null(), "duration": NON_NEGATIVE.or_null()},
    other_keys=True)
MANIFEST_FIX = ('each line is one JSON object such as {"audio": "clip.flac", "text": "...", "language": "en"}, '
                "the audio path relative to the manifest's folder")


def _from_manifest(path: Path) -> list[Clip]:
    if path.suffix.lower() in AUDIO_SUFFIXES:
        raise InputError(f"{path} is an audio file: give a manifest .jsonl, a folder of audio, or hf:NAME:SPLIT "
                         "(`quasr transcribe` takes audio files)")
    clips, missing = [], []
    for n, row in read_json_lines(path, MANIFEST_ROW, "manifest", MANIFEST_FIX):
        p = Path(row["audio"])
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():  # found now, before a model loads, rather than at the first batch
            missing.append(f"line {n}: {shown(str(p))}")
        clips.append(Clip(p.stem, row.get("text"), row.get("language"), p, row.get("speaker"), row.get("gender"),
                          row.get("duration")))
    if missing:
        listed = "; ".join(missing[:3]) + (f"; and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise InputError(f"{path}: {len(missing)} audio file{'s' * (len(missing) > 1)} not found ({listed}); fix the "
                         f"`audio` paths (relative ones are read from {path.resolve().parent})")
    return clips


def _from_folder(folder: Path) -> list[Clip]:
    if (folder / "manifest.jsonl").exists():
        return _from_manifest(folder / "manifest.jsonl")
    clips = []
    for p in sorted(folder.rglob("*")):
        if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file():
            txt = p.with_suffix(".txt")
            text = read_text(txt, "transcript").strip() if txt.exists() else None
            clips.append(Clip(p.stem, text, path=p))
    return clips


HF_SPEC = "hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT (e.g. hf:openslr/librispeech_asr:clean:test)"


def _parse_hf(spec: str) -> tuple[str, str | None, str]:
    """(name, config or None, split) of "hf:NAME[:CONFIG]:SPLIT"."""
    parts = spec[3:].split(":")
    if len(parts) not in (2, 3) or any(not p or p != p.strip() for p in parts):
        raise InputError(f"bad Hugging Face data {spec!r}: give {HF_SPEC}")
    return parts[0], parts[1] if len(parts) == 3 else None, parts[-1]


def _from_hf(spec: str) -> list[Clip]:
    name, config, split = _parse_hf(spec)
    try:
        import datasets
    except ImportError:
        raise InputError(f"{shown(spec)}: Hugging Face data needs the 'datasets' package: pip install datasets") from None
    ds = datasets.load_dataset(name, config, split=split)
    if "audio" not in ds.column_names:
        raise InputError(f"{shown(spec)}: the dataset has no 'audio' column (it has {', '.join(ds.column_names)}); "
                         "give a speech dataset")
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
    if limit is not None and not POSITIVE_INT.accepts(limit):
        raise InputError(f"the clip limit must be a positive whole number, got {limit!r}")
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
        raise InputError(f"no clips in {s}" + (f" for language {language!r}" if language else ""))
    return clips
