"""quasr sweep: config validation, resumable cells, tables and plots, Ray (local instance)."""

import json
import re

import numpy as np
import pytest
import soundfile as sf

from conftest import tiny_family
from quasr.cli import main
from quasr.experiments.sweep import Sweep, SweepConfig


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A tiny Whisper saved as a model directory, and a manifest of 6 synthetic clips with texts."""
    d = tmp_path_factory.mktemp("sweep")
    model, proc = tiny_family("whisper")
    model.save_pretrained(d / "tiny")
    proc.save_pretrained(d / "tiny")
    rng = np.random.default_rng(0)
    lines = []
    for i in range(6):
        sf.write(d / f"c{i}.wav", (rng.standard_normal(16000) * 0.1).astype(np.float32), 16000)
        lines.append(json.dumps({"audio": f"c{i}.wav", "text": "w5 w6 w7", "language": "en"}))
    (d / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    return d


def _config(d, **extra):
    cfg = {"models": [str(d / "tiny")], "methods": ["rtn", "gptq"], "configs": ["W4A16", "W8A8"],
           "datasets": [{"name": "synth", "data": str(d / "manifest.jsonl"), "language": "en", "limit": 2}],
           "calibration": {"limit": 3}, "batch_size": 4, **extra}
    path = d / f"sweep{len(extra)}.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    return path


def test_sweep_runs_resumes_and_renders(setup, tmp_path):
    out = tmp_path / "out"
    assert main(["sweep", str(_config(setup)), "--out", str(out)]) == 0
    rows = [json.loads(l) for l in (out / "cells.jsonl").read_text().splitlines()]
    assert len(rows) == 1 + 2 * 2
    by = {(r["method"], r["config"]): r for r in rows}
    assert by[("float", "")]["a_bits"] == 32 and by[("gptq", "W8A8")]["a_bits"] == 8
    for r in rows:
        assert r["n_clips"] == 2 and r["wer"] is not None
        assert "transcripts" not in r and "CPUs" in r["machine"]
        if r["method"] != "float":
            assert r["n_calibration_clips"] == 3  # the 4 clips not evaluated, capped at 3
    # every cell's per-clip transcripts sit beside the rows, one line per cell
    tr = [json.loads(l) for l in (out / "transcripts.jsonl").read_text().splitlines()]
    assert sorted(t["cell"] for t in tr) == sorted(f"{r['model']}|{r['method']}|{r['config']}|synth" for r in rows)
    assert all(len(t["transcripts"]) == 2 and t["transcripts"][0]["ref"] == "w5 w6 w7"
               and isinstance(t["transcripts"][0]["hyp"], str) for t in tr)
    assert by[("gptq", "W8A8")]["method_options"] == {"clip": "hessian", "act_range": "mse", "act_order": True,
                                                      "damp": "auto", "block_size": 128}
    # BOPs follow the bit widths: W4A16 is a quarter of float's, W8A8 a quarter too (8*8 vs 16*16)
    f = by[("float", "")]
    assert by[("rtn", "W4A16")]["gbops_per_audio_s"] < f["gbops_per_audio_s"] * 0.3
    assert by[("rtn", "W4A16")]["size_mb"] < f["size_mb"]
    for name in ("table.md", "table.csv", "wer_pivot.md", "wer_vs_size.png", "wer_vs_bops.png"):
        assert (out / name).stat().st_size > 0
    pivot = (out / "wer_pivot.md").read_text()
    assert "| config | rtn | gptq |" in pivot and f"| W8A8 | {by[('rtn', 'W8A8')]['wer']:.2f} |" in pivot
    assert "| gptq | W8A8 |" in (out / "table.md").read_text()
    # resume: nothing reruns; a removed cell is recomputed
    before = (out / "cells.jsonl").read_text()
    Sweep(SweepConfig.load(_config(setup)), out).run()
    assert (out / "cells.jsonl").read_text() == before
    (out / "cells.jsonl").write_text("\n".join(before.splitlines()[:-1]) + "\n")
    Sweep(SweepConfig.load(_config(setup)), out).run()
    assert len((out / "cells.jsonl").read_text().splitlines()) == 5


@pytest.mark.filterwarnings("ignore")
def test_fractional_widths_sweep_mixed_precision_with_the_method(setup, tmp_path, monkeypatch):
    import quasr.allocation.mixed as mixed
    from quasr.allocation.allocate import MB, SizeModel
    from quasr.models import load_model

    passes = []
    real = mixed.collect_statistics
    monkeypatch.setattr(mixed, "collect_statistics", lambda *a, **k: passes.append(1) or real(*a, **k))
    out = tmp_path / "mixed"
    assert main(["sweep", str(_config(setup, methods=["awq", "quarot"], configs=["W3.5A8g32"], include_float=False)),
                 "--out", str(out)]) == 0
    rows = [json.loads(l) for l in (out / "cells.jsonl").read_text().splitlines()]
    model, _ = load_model(str(setup / "tiny"))
    sm = SizeModel(model, group_size=32)
    assert sorted(r["method"] for r in rows) == ["awq", "quarot"]
    for r in rows:
        assert len(r["bits_histogram"]) > 1 and 3 <= r["avg_bits"] <= 4 and r["a_bits"] == 8
        # between the uniform 3- and 4-bit RTN sizes (a method's transforms are reserved inside the budget)
        assert sm.uniform_bytes(3) / MB < r["size_mb"] < sm.uniform_bytes(4) / MB
    assert "| quarot | W3.5A8g32 |" in (out / "table.md").read_text()
    assert len(passes) == 1  # the float model's sensitivity is measured once for both methods


def test_sweep_on_local_ray(setup, tmp_path):
    pytest.importorskip("ray")
    import ray

    out = tmp_path / "ray"
    try:
        assert main(["sweep", str(_config(setup, methods=["hqq"], configs=["W4A8"])), "--out", str(out),
                     "--ray", "local"]) == 0
    finally:
        ray.shutdown()
    rows = [json.loads(l) for l in (out / "cells.jsonl").read_text().splitlines()]
    assert sorted(r["method"] for r in rows) == ["float", "hqq"]


@pytest.mark.parametrize("bad,match", [
    ({"models": []}, "at least `models"),
    ({"models": ["x"], "methods": ["gtpq"]}, "unknown method 'gtpq'"),
    ({"models": ["x"], "configs": ["W9A16"]}, "bits must be"),
    ({"models": ["x"], "bogus": 1}, "unknown keys"),
    ({"models": ["x"], "datasets": [{"name": "a"}]}, "needs `name` and `data`"),
])
def test_bad_sweep_configs_are_named(tmp_path, bad, match):
    import yaml

    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(bad))
    with pytest.raises(ValueError, match=match):
        SweepConfig.load(p)


def test_shared_calibration_quantizes_once_for_every_dataset(setup, tmp_path, monkeypatch):
    """With `calibration: {data: ...}` every dataset calibrates on the same clips, so each method x
    config is quantized once and evaluated on each dataset; by default each dataset calibrates anew."""
    import quasr.methods as methods
    from quasr.experiments.sweep import Cell, quantization_groups

    # a second dataset: the same clips under another manifest (same ids, so the same WER)
    (setup / "copy").mkdir(exist_ok=True)
    lines = (setup / "manifest.jsonl").read_text().splitlines()[:4]
    (setup / "copy" / "manifest.jsonl").write_text(
        "\n".join(l.replace('"c', '"../c') for l in lines) + "\n")
    datasets = [{"name": "a", "data": str(setup / "manifest.jsonl"), "language": "en", "limit": 2},
                {"name": "b", "data": str(setup / "copy" / "manifest.jsonl"), "language": "en", "limit": 2}]
    calls = []
    real = methods.quantize
    monkeypatch.setattr(methods, "quantize", lambda *a, **k: calls.append(1) or real(*a, **k))

    shared = _config(setup, datasets=datasets, methods=["rtn"], configs=["W4A16"],
                     calibration={"data": str(setup / "manifest.jsonl"), "limit": 3})
    cfg = SweepConfig.load(shared)
    assert [len(g) for g in quantization_groups(cfg, cfg.cells())] == [2, 2]  # float, rtn: both datasets
    out = tmp_path / "shared"
    rows = Sweep(cfg, out).run()
    assert len(calls) == 1
    q = {r["dataset"]: r for r in rows if r["method"] == "rtn"}
    assert q["a"]["wer"] == q["b"]["wer"] and q["a"]["quantize_seconds"] == q["b"]["quantize_seconds"]
    assert q["a"]["calibration_data"] == str(setup / "manifest.jsonl") and q["a"]["n_calibration_clips"] == 3
    by_dataset = (out / "wer_by_dataset.md").read_text()
    assert "| method | config | a (2) | b (2) |" in by_dataset
    assert f"| rtn | W4A16 | {q['a']['wer']:.2f} | {q['b']['wer']:.2f} |" in by_dataset

    # default: each dataset calibrates on its own source, so each quantizes anew
    own = SweepConfig.load(_config(setup, datasets=datasets, methods=["rtn"], configs=["W4A16"]))
    groups = quantization_groups(own, [c for c in own.cells() if c.method != "float"])
    assert groups == [[Cell(own.models[0], "rtn", "W4A16", "a")], [Cell(own.models[0], "rtn", "W4A16", "b")]]


def test_sweep_with_no_calibration_clips_left_is_named(setup):
    from quasr.experiments.sweep import quantization_groups

    cfg = SweepConfig.load(_config(setup, datasets=[{"name": "all", "data": str(setup / "manifest.jsonl")}]))
    with pytest.raises(ValueError, match="no calibration clips left for dataset 'all'.*lower the datasets' `limit`"):
        quantization_groups(cfg, cfg.cells())


def test_misused_sweep_internals_are_named(setup):
    """Sharing measurements across unlike calibrators, or one quantization across unlike cells, is
    refused with the reason."""
    from quasr.adapters import get_adapter
    from quasr.allocation.mixed import Calibrator
    from quasr.experiments.sweep import Cell, run_group

    model, proc = tiny_family("whisper")
    batches = get_adapter(model, proc).calibration_batches([np.zeros(16000, np.float32) + 0.01 * np.sin(
        np.arange(16000, dtype=np.float32))])
    a, b = Calibrator(model, proc, batches, group_size=32), Calibrator(model, proc, batches, group_size=64)
    with pytest.raises(ValueError, match="differ in group size"):
        b.reuse(a)
    assert Calibrator(model, proc, batches, group_size=32).reuse(a)._scores is a._scores
    cfg = SweepConfig.load(_config(setup))
    cells = [Cell(cfg.models[0], "rtn", "W4A16", "synth"), Cell(cfg.models[0], "gptq", "W4A16", "synth")]
    with pytest.raises(ValueError, match="do not share a model, method and config"):
        next(run_group(cfg, cells))


def test_rows_counted_before_rotation_bops_get_todays_accounting(tmp_path):
    """Old rows counted every online rotation at 16 x 16 bits; reading them recounts QuaRot's Hadamard
    factors at 1 x 16 (exactly, from the recorded rotation MACs) and leaves SpinQuant's, new rows and
    rotation-free rows alone."""
    base = {"model": "m", "config": "W4A4", "dataset": "en", "wer": 1.0, "size_mb": 1.0, "n_clips": 1,
            "mem_io_mb_per_audio_s": 1.0, "rtf": 0.1}
    old_quarot = {**base, "method": "quarot", "gbops_per_audio_s": 100.0 + 2.0 * 256, "rotation_gmacs_per_audio_s": 2.0}
    old_spin = {**base, "method": "spinquant", "gbops_per_audio_s": 100.0 + 2.0 * 256, "rotation_gmacs_per_audio_s": 2.0}
    new = {**base, "method": "quarot", "config": "W4A8", "gbops_per_audio_s": 132.0, "rotation_gmacs_per_audio_s": 2.0,
           "rotation_gbops_per_audio_s": 32.0}
    plain = {**base, "method": "rtn", "gbops_per_audio_s": 100.0, "rotation_gmacs_per_audio_s": 0.0}
    (tmp_path / "cells.jsonl").write_text("".join(json.dumps(r) + "\n" for r in (old_quarot, old_spin, new, plain)))
    rows = Sweep(SweepConfig(models=["m"]), tmp_path).finished()
    assert rows["m|quarot|W4A4|en"]["gbops_per_audio_s"] == pytest.approx(100.0 + 2.0 * 16)
    assert rows["m|quarot|W4A4|en"]["rotation_gbops_per_audio_s"] == pytest.approx(32.0)
    assert rows["m|spinquant|W4A4|en"]["gbops_per_audio_s"] == pytest.approx(100.0 + 2.0 * 256)
    assert rows["m|quarot|W4A8|en"] == new
    assert rows["m|rtn|W4A4|en"]["gbops_per_audio_s"] == 100.0


# -- malformed configs and cells.jsonl: named with the file, the key or line, and what to fix ---------
@pytest.mark.parametrize("text,message", [
    ("models: whisper-tiny.en\n",
     "`models` must be a list of model names, got the string 'whisper-tiny.en' (write one item as ['whisper-tiny.en'])"),
    ("models: [m]\nmethods: rtn\n", "`methods` must be a list of method names, got the string 'rtn'"),
    ("models: [m]\nkeep: [1]\n", "`keep[0]` must be a non-empty string, got the number 1"),
    ("models: [m]\ndatasets: [en]\n", "`datasets[0]` must be a mapping that needs `name` and `data`, got the string 'en'"),
    ("models: [m]\ndatasets: [{name: a, data: x, limit: -1}]\n",
     "`datasets[0].limit` must be a positive whole number or null, got the number -1"),
    ("models: [m]\ndatasets: [{name: a, data: x}, {name: a, data: y}]\n",
     "`datasets[1].name` 'a' is given twice: dataset names must differ"),
    ("models: [m]\ncalibration: {limit: 0}\n", "`calibration.limit` must be a positive whole number, got the number 0"),
    ("models: [m]\nbatch_size: '8'\n", "`batch_size` must be a positive whole number, got the string '8'"),
    ("models: [m]\ninclude_float: 'no'\n", "`include_float` must be true or false, got the string 'no'"),
    ("models: [m]\nmethod_options: [gptq]\n", "`method_options` must be a mapping of method: {option: value}, got a list"),
    ("models: [m]\nmethod_options: {gptq: 3}\n", "`method_options.gptq` must be a mapping of option: value, got the number 3"),
    ("models: [m]\nmethod_options: {gptq: {dmp: 1}}\n", "`method_options.gptq` is invalid: gptq does not take options ['dmp']"),
    ("models: [m]\nonly: {m: {methods: [gtpq]}}\n", "`only.m.methods[0]` is an unknown method 'gtpq'"),
    ("models: [m]\nonly: {n: {}}\n", "`only.n` is not one of `models`"),
    ("models: [m]\n1: x\n", "the config has a key that is not a name (a string): the number 1"),
    ("- models\n- [m]\n", "a sweep config is a mapping with at least `models: [...]`; got a list"),
    ("3\n", "a sweep config is a mapping with at least `models: [...]`; got the number 3"),
    ("", "a sweep config is a mapping with at least `models: [...]`; the file is empty"),
    ("models: [m\n", "not valid YAML at line 2, column 1: while parsing a flow sequence, expected ',' or ']'"),
])
def test_sweep_config_shapes_are_named_with_the_key(tmp_path, text, message):
    from quasr.schema import InputError

    p = tmp_path / "c.yaml"
    p.write_text(text)
    with pytest.raises(InputError, match=re.escape(f"{p}: {message}")):
        SweepConfig.load(p)


def _fail_on_model_load(monkeypatch):
    import quasr.models

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the sweep's input was checked")

    monkeypatch.setattr(quasr.models, "load_model", refuse)


def test_sweep_data_is_checked_before_a_model_loads(setup, tmp_path, capsys, monkeypatch):
    _fail_on_model_load(monkeypatch)
    (tmp_path / "m.jsonl").write_text('{"audio": "gone.wav", "text": "hi"}\n')
    cfg = _config(setup, datasets=[{"name": "x", "data": str(tmp_path / "m.jsonl")}])
    assert main(["sweep", str(cfg), "--out", str(tmp_path / "out")]) == 2
    assert "m.jsonl: 1 audio file not found (line 1:" in capsys.readouterr().err


def test_a_truncated_last_cells_line_is_dropped_and_its_cell_rerun(setup, tmp_path):
    """A run killed while writing its last row leaves part of a line: the rerun warns, drops it, reruns
    that cell, and leaves a clean file."""
    out = tmp_path / "out"
    out.mkdir()
    model = str(setup / "tiny")
    (out / "cells.jsonl").write_text(json.dumps({"model": model, "method": "float", "config": "", "dataset": "synth",
                                                 "wer": 50.0})[:-9])
    cfg = _config(setup, methods=[], configs=[])
    with pytest.warns(UserWarning, match="cells.jsonl:1: dropped a truncated last line"):
        assert main(["sweep", str(cfg), "--out", str(out)]) == 0
    rows = [json.loads(l) for l in (out / "cells.jsonl").read_text().splitlines()]
    assert [(r["model"], r["method"]) for r in rows] == [(model, "float")] and rows[0]["n_clips"] == 2


def test_a_corrupt_cells_line_is_named_with_file_and_line(setup, tmp_path, capsys, monkeypatch):
    _fail_on_model_load(monkeypatch)
    out = tmp_path / "out"
    out.mkdir()
    row = {"model": "m", "method": "rtn", "config": "W4A16", "dataset": "synth", "wer": 1.0, "n_clips": 2,
           "size_mb": 1.0, "gbops_per_audio_s": 1.0, "mem_io_mb_per_audio_s": 1.0, "rtf": 0.1}
    (out / "cells.jsonl").write_text(json.dumps(row) + '\n{"model": "m", "met{"model": "m"}\n' + json.dumps(row) + "\n")
    assert main(["sweep", str(_config(setup)), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"quasr: error: {out / 'cells.jsonl'}:2: not valid JSON")
    assert "delete it and rerun to redo that cell" in err[0]
    (out / "cells.jsonl").write_text(json.dumps(row) + "\n" + json.dumps({**row, "n_clips": "2"}) + "\n")
    assert main(["sweep", str(_config(setup)), "--out", str(out)]) == 2
    assert "cells.jsonl:2: `n_clips` must be a whole number >= 0, got the string '2'" in capsys.readouterr().err


def test_cells_appends_stay_one_row_a_line(tmp_path):
    """Each row is appended whole (one write, synced); a file whose last row lost its newline (edited
    by hand) gets one first instead of the next row being glued to it."""
    row = {"model": "m", "method": "rtn", "config": "W4A16", "dataset": "a", "wer": 1.0, "n_clips": 2,
           "size_mb": 1.0, "gbops_per_audio_s": 1.0, "mem_io_mb_per_audio_s": 1.0, "rtf": 0.1}
    (tmp_path / "cells.jsonl").write_text(json.dumps(row))
    sweep = Sweep(SweepConfig(models=["m"]), tmp_path, log=lambda m: None)
    sweep._record({**row, "dataset": "b", "transcripts": [{"ref": "a", "hyp": "b"}]})
    assert [json.loads(l)["dataset"] for l in (tmp_path / "cells.jsonl").read_text().splitlines()] == ["a", "b"]
    assert set(sweep.finished()) == {"m|rtn|W4A16|a", "m|rtn|W4A16|b"}
    assert json.loads((tmp_path / "transcripts.jsonl").read_text())["cell"] == "m|rtn|W4A16|b"


def test_without_speech_data_a_config_mistake_is_named_first_then_the_missing_data(tmp_path, monkeypatch):
    from quasr import data
    from quasr.schema import InputError

    monkeypatch.setattr(data, "default_data", lambda: "")  # a checkout without ../shared/speech
    p = tmp_path / "c.yaml"
    p.write_text("models: [m]\nonly: {n: {}}\n")
    with pytest.raises(InputError, match=re.escape("`only.n` is not one of `models`")):
        SweepConfig.load(p)
    p.write_text("models: [m]\nonly: {m: {datasets: [en]}}\n")
    with pytest.raises(InputError, match="no `datasets` given and ../shared/speech not found: add datasets"):
        SweepConfig.load(p)
