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
    for key in ("seconds", "rtf", "audio_seconds", "avg_bits", "load_avg_1min"):
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
    assert main(["quantize", "whisper-tiny.en", "--bits", "x", "--out", str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith("quasr: error: argument --bits")
    assert main(["quantize", "whisper-tiny.en", "--bits", "9", "--out", str(tmp_path / "o")]) == 2
    assert "argument --bits: invalid choice: 9" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("family", ["whisper", "moonshine", "wav2vec2"])
def test_every_family_through_the_cli(family, tmp_path, capsys):
    """quantize -> save -> eval -> transcribe from local HF directories of each family."""
    from conftest import tiny_family, write_clips

    model, processor = tiny_family(family, tmp_path)
    src = tmp_path / "src"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    data = write_clips(tmp_path / "data")
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--bits", "4", "--group-size", "32", "--out", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["avg_bits"] == 4
    assert main(["eval", str(out), "--data", str(data), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["n_clips"] == 2 and r["wer"] is not None and r["avg_bits"] == 4
    assert main(["transcribe", str(out), str(data / "c0.wav"), "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)[0]["text"], str)


def test_device_option_errors_name_the_problem():
    import torch

    from quasr.models import resolve_device

    assert resolve_device(None).type == "cpu"
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        resolve_device("gpu0")
    with pytest.raises(ValueError, match="cpu or cuda"):
        resolve_device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="sees no CUDA GPU"):
            resolve_device("cuda")


@pytest.mark.filterwarnings("ignore")
def test_default_group_follows_the_width(tmp_path, capsys):
    """--bits 2-4 and --config W4A16 get group 64, 5-8 bits 128 (docs/RESULTS.md, "A safe 4-bit preset");
    an explicit --group-size wins, and one that contradicts --config is refused, not ignored."""
    from conftest import tiny_family

    model, processor = tiny_family("whisper", tmp_path)
    src = tmp_path / "src"
    model.save_pretrained(src)
    processor.save_pretrained(src)

    def groups(*argv):
        out = tmp_path / f"q{len(list(tmp_path.iterdir()))}"
        assert main(["quantize", str(src), *argv, "--out", str(out), "--json"]) == 0
        reported = json.loads(capsys.readouterr().out)["group_size"]
        plan = json.loads((out / "quasr_plan.json").read_text())["plan"]["layers"]
        # the plan stores each layer's effective group: a row narrower than the group is one group
        return reported, max(spec["group_size"] for spec in plan.values() if isinstance(spec, dict))

    assert groups("--bits", "4") == (64, 64)
    assert groups("--bits", "3") == (64, 64)
    assert groups("--bits", "6") == (128, 128)
    assert groups("--bits", "4", "--group-size", "128") == (128, 128)
    assert groups("--config", "W4A16") == (64, 64)
    assert groups("--config", "W4A16g128") == (128, 128)
    assert main(["quantize", str(src), "--config", "W4A16", "--group-size", "32", "--out", str(tmp_path / "bad")]) == 2
    assert "--config W4A16 sets group 64 but --group-size says 32" in capsys.readouterr().err
