import json
import re
import sys

import numpy as np
import pytest
import soundfile as sf

from quasr.audio import AudioError, load_audio
from quasr.data import load_clips
from quasr.evaluate import split_long, word_error_rate
from quasr.schema import InputError


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


# -- malformed data: each named with its file (and line) and what to fix, before any model loads ------
def _manifest_after_a_good_line(tmp_path, line: str):
    sf.write(tmp_path / "x.wav", tone(16000), 16000)
    man = tmp_path / "m.jsonl"
    man.write_text(json.dumps({"audio": "x.wav", "text": "ok"}) + "\n" + line + "\n")
    return man


@pytest.mark.parametrize("line,message", [
    ('{"audio": null}', "m.jsonl:2: `audio` must be a non-empty string, got null"),
    ('{"audio": "x.wav", "text": 42}', "m.jsonl:2: `text` must be a string or null, got the number 42"),
    ('{"audio": "x.wav", "language": 1}', "m.jsonl:2: `language` must be a non-empty string or null, got the number 1"),
    ('{"audio": "x.wav", "speaker": ["a"]}', "m.jsonl:2: `speaker` must be a string or null, got a list"),
    ('{"audio": "x.wav", "gender": false}', "m.jsonl:2: `gender` must be a string or null, got false"),
    ('{"audio": "x.wav", "duration": "3s"}',
     "m.jsonl:2: `duration` must be a finite number >= 0 or null, got the string '3s'"),
    ('["x.wav", "hi"]', "m.jsonl:2: the line must be a JSON object with an 'audio' field, got a list"),
    ('"x.wav"', "m.jsonl:2: the line must be a JSON object with an 'audio' field, got the string 'x.wav'"),
    ('{"audio": "x.wav",', "m.jsonl:2: not valid JSON"),
])
def test_malformed_manifest_lines_are_named_with_file_and_line(tmp_path, line, message):
    man = _manifest_after_a_good_line(tmp_path, line)
    with pytest.raises(InputError, match=re.escape(message) + r".*each line is one JSON object such as"):
        load_clips(man)


def test_missing_audio_files_are_named_when_the_manifest_loads(tmp_path):
    man = _manifest_after_a_good_line(tmp_path, '{"audio": "gone.wav"}\n{"audio": "/nowhere/none.flac"}')
    with pytest.raises(InputError, match=re.escape(f"m.jsonl: 2 audio files not found (line 2: {tmp_path / 'gone.wav'}; "
                                                   "line 3: /nowhere/none.flac); fix the `audio` paths")):
        load_clips(man)


def test_unreadable_transcripts_in_a_folder_are_named(tmp_path):
    sf.write(tmp_path / "x.wav", tone(16000), 16000)
    (tmp_path / "x.txt").write_bytes(b"caf\xe9\n")  # Latin-1, not UTF-8
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'x.txt'}: the transcript is not UTF-8 text")):
        load_clips(tmp_path)
    (tmp_path / "x.txt").unlink()
    (tmp_path / "x.txt").mkdir()
    with pytest.raises(InputError, match=re.escape(f"{tmp_path / 'x.txt'}: cannot read the transcript")):
        load_clips(tmp_path)


def test_hf_data_is_checked_and_names_the_missing_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(InputError, match=re.escape("needs the 'datasets' package: pip install datasets")):
        load_clips("hf:openslr/librispeech_asr:clean:test")
    for spec in ("hf:", "hf:name", "hf::test", "hf:a:b:c:d", "hf: name:test"):
        with pytest.raises(InputError, match="give hf:NAME:SPLIT or hf:NAME:CONFIG:SPLIT"):
            load_clips(spec)


def test_audio_file_as_data_and_bad_limits_are_named(tmp_path):
    man = _manifest_after_a_good_line(tmp_path, "")
    with pytest.raises(InputError, match="x.wav is an audio file: give a manifest"):
        load_clips(tmp_path / "x.wav")
    with pytest.raises(InputError, match="clip limit must be a positive whole number, got -1"):
        load_clips(man, limit=-1)  # clips[:-1] would silently drop the last clip
