import json

import pytest

from quasr.cli import main


@pytest.mark.slow
def test_quantize_eval_transcribe(tmp_path, speech_dir, capsys, whisper_tiny_en):
    out = tmp_path / "q"
    assert main(["quantize", "whisper-tiny.en", "--bits", "6", "--group-size", "64", "--out", str(out), "--json"]) == 0
    q = json.loads(capsys.readouterr().out)
    assert q["avg_bits"] == 6 and q["size_mb"] < 40
    assert main(["eval", str(out), "--data", str(speech_dir / "prompts"), "--language", "en", "--limit", "3", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_clips"] == 3 and 0 <= r["wer"] < 50 and r["size_mb"] == pytest.approx(q["size_mb"])
    for key in ("seconds", "rtf", "audio_seconds", "avg_bits"):
        assert key in r
    jfk = str(speech_dir / "clips" / "audio" / "jfk__jfk.flac")
    assert main(["transcribe", str(out), jfk, "--json"]) == 0
    assert "country" in json.loads(capsys.readouterr().out)[0]["text"]


def test_bad_input_gives_clear_errors(tmp_path, capsys):
    assert main(["transcribe", "whisper-tiny.en", str(tmp_path / "missing.wav")]) == 2
    assert "audio file not found" in capsys.readouterr().err
    assert main(["eval", "no-such-model", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no clips" in err or "unknown model" in err
    with pytest.raises(SystemExit):
        main(["quantize", "whisper-tiny.en", "--bits", "x", "--out", str(tmp_path)])
    assert main(["quantize", "whisper-tiny.en", "--bits", "9", "--out", str(tmp_path / "o")]) == 2
    assert "bits must be" in capsys.readouterr().err
