import json

import numpy as np
import pytest
import soundfile as sf

from quasr.audio import AudioError, load_audio
from quasr.data import load_clips
from quasr.evaluate import split_long, word_error_rate


def tone(rate, seconds=1.0, channels=1):
    t = np.arange(int(rate * seconds)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t).astype(np.float32)
    return np.stack([x] * channels, 1) if channels > 1 else x


def test_resample_and_mixdown(tmp_path):
    sf.write(tmp_path / "a.wav", tone(8000, 1.0, 2), 8000)
    wave = load_audio(tmp_path / "a.wav")
    assert wave.dtype == np.float32 and wave.ndim == 1 and len(wave) == 16000
    spectrum = np.abs(np.fft.rfft(wave))
    assert abs(np.argmax(spectrum) - 440) <= 1  # the tone survives at 16 kHz


def test_missing_empty_corrupt(tmp_path):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "nope.wav")
    sf.write(tmp_path / "empty.wav", np.zeros(0, np.float32), 16000)
    with pytest.raises(AudioError, match="empty"):
        load_audio(tmp_path / "empty.wav")
    (tmp_path / "bad.flac").write_bytes(b"fLaC not really")
    with pytest.raises(AudioError, match="cannot decode"):
        load_audio(tmp_path / "bad.flac")


def test_folder_and_manifest(tmp_path):
    sf.write(tmp_path / "x.wav", tone(16000), 16000)
    (tmp_path / "x.txt").write_text("hello world\n")
    sf.write(tmp_path / "y.flac", tone(16000), 16000)
    clips = load_clips(tmp_path)
    assert [(c.id, c.text) for c in clips] == [("x", "hello world"), ("y", None)]
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"audio": "x.wav", "text": "hi", "language": "fr"}) + "\n")
    assert load_clips(man)[0].path == tmp_path / "x.wav"
    with pytest.raises(ValueError, match="no clips"):
        load_clips(man, language="en")
    man.write_text('{"text": "no audio"}\n')
    with pytest.raises(ValueError, match="'audio' field"):
        load_clips(man)
    with pytest.raises(FileNotFoundError, match="data not found"):
        load_clips(tmp_path / "missing.jsonl")


def test_split_long_audio():
    wave = np.random.default_rng(0).standard_normal(16000 * 70).astype(np.float32)
    wave[16000 * 25 : 16000 * 25 + 1600] = 0  # a pause inside the last 10 s of the first window
    pieces = split_long(wave)
    assert sum(len(p) for p in pieces) == len(wave) and all(len(p) <= 16000 * 30 for p in pieces)
    assert abs(len(pieces[0]) - (16000 * 25 + 800)) <= 800


def test_wer_uses_whisper_normaliser():
    wer, n, skipped = word_error_rate(["Press 1 to continue."], ["press one to continue"], "en")
    assert wer == 0 and n == 4 and skipped == 0
    wer, _, _ = word_error_rate(["número uno"], ["numero uno"], "es")
    assert wer == 0
