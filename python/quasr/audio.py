"""Audio loading: any file soundfile reads, mixed down to mono, resampled to 16 kHz."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
# Peak amplitude below which a clip counts as digital silence (about -80 dBFS).
SILENCE_PEAK = 1e-4


class AudioError(ValueError):
    pass


def load_audio(path: str | Path) -> np.ndarray:
    """float32 mono waveform at 16 kHz. Stereo/multichannel is averaged; other rates are resampled
    (polyphase, scipy). Missing, unreadable or empty files raise AudioError naming the file."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # soundfile raises LibsndfileError/RuntimeError for corrupt data
        raise AudioError(f"cannot decode audio file {path}: {exc}") from None
    return prepare_waveform(data, rate, str(path))


def prepare_waveform(data: np.ndarray, rate: int, name: str = "audio") -> np.ndarray:
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1)  # [frames, channels] -> mono
    if data.size == 0:
        raise AudioError(f"{name} is empty (0 samples)")
    if not np.isfinite(data).all():
        raise AudioError(f"{name} contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        from scipy.signal import resample_poly

        g = gcd(int(rate), SAMPLE_RATE)
        data = resample_poly(data, SAMPLE_RATE // g, int(rate) // g).astype(np.float32)
    return data


def is_silent(wave: np.ndarray) -> bool:
    return wave.size == 0 or float(np.abs(wave).max()) < SILENCE_PEAK
