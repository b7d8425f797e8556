"""Mixed precision through the CLI, and the personalisation experiments' machinery (splits, metrics,
outputs, resuming), on small random-init models and synthetic manifests."""

import csv
import json

import numpy as np
import pytest

from conftest import tiny_family
from quasr.cli import main
from quasr.data import Clip
from quasr.experiments.personalisation import digit_accuracy, split_groups

pytestmark = pytest.mark.filterwarnings("ignore")


def _model_dir(family, tmp_path):
    model, processor = tiny_family(family, tmp_path)
    src = tmp_path / f"{family}-src"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    return src


def _manifest(tmp_path, n_per_group=6, field="speaker", groups=("a", "b"), text="two"):
    import soundfile as sf

    d = tmp_path / "speech"
    (d / "audio").mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for g in groups:
        for i in range(n_per_group):
            name = f"audio/{g}_{i}.flac"
            sf.write(d / name, rng.normal(0, 0.1, 8000 + 800 * i).astype(np.float32), 16000)
            rows.append({"audio": name, "text": text, "language": "en", "speaker": None, "gender": None, field: g})
    (d / "manifest.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    return d / "manifest.jsonl"


def test_split_groups_is_disjoint_and_deterministic():
    clips = [Clip(f"c{i}", "x", speaker=f"s{i % 3}") for i in range(30)]
    a = split_groups(clips, lambda c: c.speaker, 4, 3, seed=1)
    b = split_groups(clips, lambda c: c.speaker, 4, 3, seed=1)
    assert list(a) == ["s0", "s1", "s2"]
    for g, (cal, ev) in a.items():
        assert len(cal) == 4 and len(ev) == 3 and not {c.id for c in cal} & {c.id for c in ev}
        assert all(c.speaker == g for c in cal + ev)
        assert [c.id for c in cal] == [c.id for c in b[g][0]]
    assert [c.id for c in split_groups(clips, lambda c: c.speaker, 4, 3, seed=2)["s0"][0]] != [c.id for c in a["s0"][0]]
    with pytest.raises(ValueError, match="need more than n_calib"):
        split_groups(clips, lambda c: c.speaker, 10, 3)


def test_digit_accuracy_normalises_spelling():
    assert digit_accuracy(["two", "seven", "zero", "one"], ["Two.", "7", "0", "won"]) == 75.0


@pytest.mark.parametrize("family", ["whisper", "moonshine", "wav2vec2"])
def test_quantize_to_a_budget_through_the_cli(family, tmp_path, capsys):
    src = _model_dir(family, tmp_path)
    manifest = _manifest(tmp_path)
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--avg-bits", "3.5", "--calib", str(manifest), "--calib-limit", "4",
                 "--allocation", "optimal", "--error", "output", "--eval", str(manifest), "--eval-limit", "2",
                 "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["size_mb"] <= r["budget_mb"] and r["n_calibration_clips"] == 4 and r["wer"] is not None
    report = json.loads((out / "allocation.json").read_text())["report"]
    assert report["allocation"] == "optimal" and all(2 <= l["bits"] <= 8 for l in report["layers"])
    assert (out / "bits.png").stat().st_size > 1000
    # the saved model loads back and evaluates at the same size
    assert main(["eval", str(out), "--data", str(manifest), "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size_mb"] == pytest.approx(r["size_mb"])


@pytest.mark.filterwarnings("ignore")
def test_budget_with_a_ptq_method_and_activation_bits_through_the_cli(tmp_path, capsys):
    """--budget-mb composes with --method and --act-bits: the method's transforms fit the budget."""
    src = _model_dir("whisper", tmp_path)
    manifest = _manifest(tmp_path)
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--avg-bits", "4.5", "--method", "quarot", "--act-bits", "8",
                 "--act-granularity", "tensor", "--group-size", "32", "--calib", str(manifest), "--calib-limit", "4",
                 "--out", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["size_mb"] <= r["budget_mb"] and r["method"] == "quarot"
    saved = json.loads((out / "allocation.json").read_text())
    specs = [s for s in saved["plan"]["layers"].values() if s != "keep"]
    assert len({s["bits"] for s in specs}) > 1 and all(s["act_bits"] == 8 for s in specs)
    assert any(s.get("rotate") for s in specs) and saved["report"]["method"] == "quarot"
    assert main(["eval", str(out), "--data", str(manifest), "--limit", "2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["size_mb"] == pytest.approx(r["size_mb"])
    # a fractional --config width is the same thing: mixed precision to that average size
    assert main(["quantize", str(src), "--config", "W3.5A8g32", "--method", "gptq", "--calib", str(manifest),
                 "--calib-limit", "4", "--out", str(tmp_path / "q2"), "--json"]) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["size_mb"] <= r2["budget_mb"] and 3 <= r2["avg_bits"] <= 4
    assert main(["quantize", str(src), "--config", "W3.5A8", "--budget-mb", "1", "--calib", str(manifest),
                 "--out", str(tmp_path / "q3")]) == 2
    assert "sets an average width" in capsys.readouterr().err


def test_cli_budget_errors(tmp_path, capsys):
    src = _model_dir("whisper", tmp_path)
    manifest = _manifest(tmp_path)
    assert main(["quantize", str(src), "--budget-mb", "0.01", "--calib", str(manifest), "--out", str(tmp_path / "o")]) == 2
    assert "below the smallest this model can be" in capsys.readouterr().err
    assert main(["quantize", str(src), "--avg-bits", "3", "--out", str(tmp_path / "o")]) == 2
    assert "needs calibration audio" in capsys.readouterr().err
    assert main(["quantize", str(src), "--bits", "4", "--clip", "hessian", "--out", str(tmp_path / "o")]) == 2
    assert "--clip hessian needs calibration audio" in capsys.readouterr().err
    assert main(["quantize", str(src), "--avg-bits", "3", "--allocation", "uniform", "--out", str(tmp_path / "u"),
                 "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["avg_bits"] == 3


def test_speaker_experiment_writes_tables_and_plot_and_resumes(tmp_path, capsys):
    src = _model_dir("whisper", tmp_path)
    manifest = _manifest(tmp_path, n_per_group=5)
    out = tmp_path / "exp"
    args = ["experiment", "speaker", str(src), "--data", str(manifest), "--out", str(out), "--calib-clips", "3",
            "--eval-clips", "2", "--avg-bits", "4"]
    assert main(args) == 0
    md = capsys.readouterr().out
    assert "digit accuracy" in md and "speaker=a" in md and "uniform (no calibration)" in md
    rows = list(csv.reader((out / "speaker.csv").open()))
    assert rows[0][1:3] == ["a", "b"] and [r[0] for r in rows[1:]] == ["float", "uniform (no calibration)", "speaker=a", "speaker=b"]
    assert all(0 <= float(v) <= 100 for r in rows[1:] for v in r[1:3])
    assert (out / "speaker.png").stat().st_size > 1000
    cells = (out / "speaker_cells.jsonl").read_text().splitlines()
    assert len(cells) == 8 and all(json.loads(c)["n_eval"] == 2 for c in cells)
    assert main(args) == 0  # resumed: nothing recomputed
    assert (out / "speaker_cells.jsonl").read_text().splitlines() == cells


def test_gender_experiment_scores_against_float_transcripts(tmp_path, capsys):
    src = _model_dir("moonshine", tmp_path)
    manifest = _manifest(tmp_path, n_per_group=4, field="gender", groups=("F", "M"), text=None)
    out = tmp_path / "exp"
    assert main(["experiment", "gender", str(src), "--data", str(manifest), "--out", str(out), "--calib-clips", "2",
                 "--eval-clips", "2", "--avg-bits", "5"]) == 0
    assert "WER vs float transcripts" in capsys.readouterr().out
    refs = json.loads((out / "gender_float_transcripts.json").read_text())
    assert set(refs) == {"F", "M"} and all(len(v["texts"]) == 2 for v in refs.values())
    rows = [r[0] for r in csv.reader((out / "gender.csv").open())][1:]
    assert rows == ["uniform (no calibration)", "gender=F", "gender=M"]


def test_sweep_writes_wer_against_size(tmp_path, capsys):
    src = _model_dir("wav2vec2", tmp_path)
    manifest = _manifest(tmp_path, n_per_group=5, groups=("a",), text="hello world")
    out = tmp_path / "sweep"
    assert main(["experiment", "sweep", str(src), "--data", str(manifest), "--out", str(out), "--calib-clips", "2",
                 "--eval-clips", "3", "--sweep-bits", "3", "5", "--allocations", "uniform", "myqasr", "optimal"]) == 0
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert [r["allocation"] for r in rows] == ["float"] + ["uniform"] * 2 + ["myqasr"] * 2 + ["optimal"] * 2
    for r in rows[1:]:
        assert float(r["size_mb"]) <= float(r["budget_mb"])
    assert (out / "sweep.png").stat().st_size > 1000 and "WER vs size budget" in (out / "sweep.md").read_text()


@pytest.mark.filterwarnings("ignore")
def test_method_options_through_the_cli(tmp_path, capsys):
    """--method-option KEY=VALUE reaches the method, uniform and budget paths alike; bad ones are named."""
    src = _model_dir("whisper", tmp_path)
    manifest = _manifest(tmp_path)
    common = ["--method", "omniquant", "--method-option", "let_shift=true", "--method-option", "steps=3",
              "--calib", str(manifest), "--calib-limit", "4"]

    def shifted(plan):
        return sum(bool(s.get("shift")) for s in plan["layers"].values() if s != "keep")

    assert main(["quantize", str(src), "--config", "W4A8g32", *common, "--out", str(tmp_path / "u")]) == 0
    assert shifted(json.loads((tmp_path / "u" / "quasr_plan.json").read_text())["plan"]) > 0
    assert main(["quantize", str(src), "--avg-bits", "4.5", "--act-bits", "8", "--group-size", "32", *common,
                 "--out", str(tmp_path / "b")]) == 0
    assert shifted(json.loads((tmp_path / "b" / "allocation.json").read_text())["plan"]) > 0
    capsys.readouterr()
    for option, message in (("stepz=3", "omniquant does not take options ['stepz']"),
                            ("steps", "give KEY=VALUE"), ("let_shift=maybe", "let_shift must be False, True or 'auto'")):
        assert main(["quantize", str(src), "--config", "W4A8g32", "--method", "omniquant", "--method-option", option,
                     "--calib", str(manifest), "--out", str(tmp_path / "x")]) == 2
        assert message in capsys.readouterr().err
