"""Checkpoints that are incomplete, corrupt or foreign never load as a model; outputs are written
all or nothing; bad arguments get one clear line. Each test is a case that once gave a wrong result
with exit 0."""

import json
import os
import stat
import warnings

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import tiny_family, write_clips
from quasr.cli import main
from quasr.format import resolve_group_size
from quasr.integrity import json_digest, tensor_digest
from quasr.models import load_model
from quasr.outputs import OutputError, OutputFolder
from quasr.plan import swap, uniform_plan
from quasr.serialize import CheckpointError, load_quantized, save_quantized


def _quantized(tmp_path, family="whisper"):
    model, processor = tiny_family(family, tmp_path)
    swap(model, uniform_plan(model, 4, 32), progress=False)
    out = tmp_path / "q"
    save_quantized(model, processor, out)
    return out


def _hf_folder(tmp_path, family="whisper"):
    model, processor = tiny_family(family, tmp_path)
    src = tmp_path / "src"
    model.save_pretrained(src)
    processor.save_pretrained(src)
    return src


def _rewrite(folder, info=None, state=None):
    """Rewrite a checkpoint as an attacker who knows the format would: digests made to match."""
    info = info or json.loads((folder / "quasr_plan.json").read_text())
    state = state if state is not None else load_file(str(folder / "model.safetensors"))
    info["sha256"] = {k: tensor_digest(v) for k, v in state.items()}
    save_file(state, str(folder / "model.safetensors"), metadata={"quasr_plan_sha256": json_digest(info)})
    (folder / "quasr_plan.json").write_text(json.dumps(info))
    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config:  # the plan is also in config.json, for transformers' loader
        config["quantization_config"]["plan"] = info["plan"]
        (folder / "config.json").write_text(json.dumps(config))


# -- all-or-nothing outputs ----------------------------------------------------------------------
def test_an_interrupted_save_leaves_no_folder_and_keeps_the_old_one(tmp_path, monkeypatch):
    model, processor = tiny_family("whisper", tmp_path)
    swap(model, uniform_plan(model, 4, 32), progress=False)
    out = tmp_path / "q"

    def killed(*args, **kwargs):
        raise KeyboardInterrupt  # as if the run were stopped after the weights were written

    monkeypatch.setattr(type(processor), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(model, processor, out)
    assert not out.exists() and not list(tmp_path.glob(".q.*"))
    monkeypatch.undo()
    save_quantized(model, processor, out)
    before = (out / "model.safetensors").read_bytes()
    monkeypatch.setattr(type(processor), "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt):
        save_quantized(model, processor, out)
    assert (out / "model.safetensors").read_bytes() == before  # the earlier output is untouched
    load_quantized(out)


def test_outputs_are_published_with_ordinary_permissions(tmp_path):
    out = _quantized(tmp_path)
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~mask
    for f in out.iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o666 & ~mask, f.name


def test_output_targets_are_checked_before_any_work(tmp_path):
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="did not write.*--overwrite"):
        OutputFolder(foreign)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        OutputFolder(a_file)
    with pytest.raises(OutputError, match="empty"):
        OutputFolder("")
    from quasr.models import cache_root

    with pytest.raises(OutputError, match="model cache"):
        OutputFolder(cache_root() / "whisper-tiny.en")
    with OutputFolder(foreign, overwrite=True) as stage:
        (stage / "quasr_plan.json").write_text("{}")
    assert sorted(p.name for p in foreign.iterdir()) == ["quasr_plan.json"]  # replaced, not merged into


def test_two_runs_cannot_write_one_folder(tmp_path):
    with OutputFolder(tmp_path / "q") as stage:
        (stage / "quasr_plan.json").write_text("{}")
        with pytest.raises(OutputError, match="another quasr process"):
            with OutputFolder(tmp_path / "q"):
                pass
    assert (tmp_path / "q" / "quasr_plan.json").exists()
    with OutputFolder(tmp_path / "q"):  # the lock is released, and no lock file is left
        pass
    assert sorted(p.name for p in tmp_path.iterdir()) == ["q"]


def test_unwritable_output_is_refused_up_front(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who may write anywhere (root)")
        with pytest.raises(OutputError, match="permission denied"):
            OutputFolder(ro / "q")
    finally:
        ro.chmod(0o700)


# -- integrity of stored tensors ------------------------------------------------------------------
def test_flipped_bytes_fail_the_digest(tmp_path):
    out = _quantized(tmp_path)
    raw = bytearray((out / "model.safetensors").read_bytes())
    raw[-100] ^= 0x40  # inside the last tensor's data
    (out / "model.safetensors").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match="sha256"):
        load_quantized(out)


def test_an_edited_plan_does_not_load(tmp_path):
    out = _quantized(tmp_path)
    info = json.loads((out / "quasr_plan.json").read_text())
    info["method"] = "gptq"
    (out / "quasr_plan.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="does not belong to model.safetensors"):
        load_quantized(out)
    (out / "quasr_plan.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="JSON object"):
        load_quantized(out)


@pytest.mark.parametrize("tensor", ["scales", "norm", "bias"])
def test_nan_tensors_do_not_load_even_with_matching_digests(tmp_path, tensor):
    out = _quantized(tmp_path)
    state = load_file(str(out / "model.safetensors"))
    key = {"scales": "model.encoder.layers.0.fc1.scales", "norm": "model.decoder.layer_norm.weight",
           "bias": "model.encoder.layers.0.fc1.bias"}[tensor]
    state[key] = state[key].clone()
    state[key].view(-1)[0] = float("nan")
    _rewrite(out, state=state)
    with pytest.raises(CheckpointError, match=f"NaN or infinite values in .*{key}"):
        load_quantized(out)


def test_aliases_only_fill_what_is_absent(tmp_path):
    out = _quantized(tmp_path)
    info = json.loads((out / "quasr_plan.json").read_text())
    info["aliases"]["model.decoder.layer_norm.weight"] = "model.encoder.layer_norm.weight"
    _rewrite(out, info)
    with pytest.raises(CheckpointError, match="would replace a stored tensor"):
        load_quantized(out)
    state = load_file(str(out / "model.safetensors"))
    del state["model.decoder.embed_positions.weight"]
    info["aliases"] = {"model.decoder.embed_positions.weight": "no.such.tensor"}
    _rewrite(out, info, state)
    with pytest.raises(CheckpointError, match="not stored"):
        load_quantized(out)


def test_a_config_that_does_not_match_the_weights_is_named(tmp_path):
    out = _quantized(tmp_path)
    cfg = json.loads((out / "config.json").read_text())
    cfg["vocab_size"] = 512
    (out / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="does not match"):
        load_quantized(out)


def test_missing_tokenizer_is_an_error_at_load(tmp_path):
    out = _quantized(tmp_path)
    (out / "tokenizer.json").unlink()
    with pytest.raises(CheckpointError, match="tokenizer"):
        load_quantized(out)
    src = _hf_folder(tmp_path)
    (src / "tokenizer.json").unlink()
    with pytest.raises(ValueError, match="tokenizer"):
        load_model(str(src))


# -- Hugging Face folders ------------------------------------------------------------------------
def test_hf_folder_missing_tensors_does_not_load(tmp_path):
    src = _hf_folder(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    del state["model.encoder.layers.1.fc2.weight"]
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['model.encoder.layers.1.fc2.weight'\]"):
        load_model(str(src))


def test_hf_wav2vec2_folder_may_leave_out_what_only_training_uses(tmp_path):
    src = _hf_folder(tmp_path, "wav2vec2")
    state = load_file(str(src / "model.safetensors"))
    del state["wav2vec2.masked_spec_embed"]  # as facebook/wav2vec2-base-960h does
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    load_model(str(src))
    del state["lm_head.weight"]  # a pretraining-only checkpoint: no CTC head, nothing to transcribe with
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing \['lm_head.weight'\]"):
        load_model(str(src))


def test_hf_folder_with_a_foreign_tensor_or_a_wrong_config_does_not_load(tmp_path):
    src = _hf_folder(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    state["model.encoder.extra.weight"] = torch.zeros(3)
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="unexpected"):
        load_model(str(src))
    src = _hf_folder(tmp_path / "b")
    cfg = json.loads((src / "config.json").read_text())
    cfg["vocab_size"] = 512
    (src / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="do not match"):
        load_model(str(src))


def test_hf_folder_with_only_a_pickle_is_refused(tmp_path):
    src = _hf_folder(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    torch.save(state, src / "pytorch_model.bin")
    (src / "model.safetensors").unlink()
    with pytest.raises(OSError, match="does not unpickle"):
        load_model(str(src))


def test_hf_folder_with_a_nan_norm_does_not_load(tmp_path):
    src = _hf_folder(tmp_path)
    state = load_file(str(src / "model.safetensors"))
    state["model.encoder.layer_norm.weight"][3] = float("nan")
    save_file(state, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match="model.encoder.layer_norm.weight"):
        load_model(str(src))


# -- swap ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("where", ["model.encoder.layers.0.fc1.bias", "model.decoder.layer_norm.weight"])
def test_swap_refuses_nan_biases_and_norms(where):
    model, _ = tiny_family("whisper")
    with torch.no_grad():
        model.get_parameter(where)[0] = float("nan")
    with pytest.raises(ValueError, match=where):
        swap(model, uniform_plan(model, 4, 32), progress=False)


def test_methods_refuse_a_nan_norm_once_before_the_first_block():
    from quasr.adapters import get_adapter
    from quasr.methods import quantize

    model, processor = tiny_family("whisper")
    with torch.no_grad():
        model.get_parameter("model.decoder.layer_norm.weight")[0] = float("nan")
    with pytest.raises(ValueError, match="quantize: NaN or infinite values in 1 tensor.*model.decoder.layer_norm"):
        quantize(get_adapter(model, processor), uniform_plan(model, 4, 32), None, "rtn", progress=False)


def test_group_wider_than_a_layer_is_per_channel():
    assert resolve_group_size(4096, 384) == (384, 384)
    assert resolve_group_size(1024, 80) == (96, 96)
    assert resolve_group_size(128, 384) == (128, 384)
    model, _ = tiny_family("whisper")
    swap(model, uniform_plan(model, 4, 4096), progress=False)
    fc1 = model.model.encoder.layers[0].fc1
    assert fc1.group_size == 64 and tuple(fc1.packed.shape) == (128, 64 * 4 // 8)


# -- the CLI -------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore")
def test_requantizing_a_quantized_folder_is_refused(tmp_path, capsys):
    src = _hf_folder(tmp_path)
    assert main(["quantize", str(src), "--bits", "4", "--group-size", "32", "--out", str(tmp_path / "w4")]) == 0
    capsys.readouterr()
    assert main(["quantize", str(tmp_path / "w4"), "--bits", "2", "--out", str(tmp_path / "w2")]) == 2
    err = capsys.readouterr().err
    assert "already quantized (avg 4.00 bits)" in err and str(src) in err
    assert not (tmp_path / "w2").exists()


@pytest.mark.filterwarnings("ignore")
def test_a_second_quantize_replaces_the_first_output_whole(tmp_path, capsys):
    src = _hf_folder(tmp_path)
    out = tmp_path / "q"
    assert main(["quantize", str(src), "--avg-bits", "4", "--calib", str(write_clips(tmp_path / "data")), "--group-size", "32",
                 "--out", str(out)]) == 0
    assert (out / "allocation.json").exists() and (out / "bits.png").exists()
    assert main(["quantize", str(src), "--bits", "8", "--group-size", "32", "--out", str(out)]) == 0
    assert not (out / "allocation.json").exists() and not (out / "bits.png").exists()  # nothing stale left
    (out / "quasr_plan.json").unlink()
    (out / "notes.txt").write_text("not quasr's")
    assert main(["quantize", str(src), "--bits", "8", "--out", str(out)]) == 2
    assert "did not write" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["eval", "whisper-tiny.en", "--limit", "-1"], "argument --limit: must be at least 1, got -1"),
    (["eval", "whisper-tiny.en", "--limit", "0"], "argument --limit: must be at least 1"),
    (["eval", "whisper-tiny.en", "--batch-size", "0"], "argument --batch-size: must be at least 1"),
    (["eval", "whisper-tiny.en", "--batch-size", "-3"], "argument --batch-size: must be at least 1"),
    (["quantize", "whisper-tiny.en", "--out", ""], "argument --out: is empty"),
    (["quantize", "whisper-tiny.en", "--out", "x", "--budget-mb", "nan"], "argument --budget-mb: must be a finite"),
    (["quantize", "whisper-tiny.en", "--out", "x", "--budget-mb", "inf"], "argument --budget-mb: must be a finite"),
    (["quantize", "whisper-tiny.en", "--out", "x", "--budget-mb", "-5"], "argument --budget-mb: must be a finite"),
    (["quantize", "whisper-tiny.en", "--out", "x", "--avg-bits", "12"], "argument --avg-bits: an average width"),
    (["quantize", "whisper-tiny.en", "--out", "x", "--group-size", "100"], "argument --group-size: 100 is not"),
    (["quantize", "whisper-tiny.en", "--out", "x", "--act-bits", "12"], "argument --act-bits: invalid choice"),
])
def test_absurd_arguments_get_one_line(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"quasr: error: {message}") and err.count("\n") == 1, err


# -- long-form audio -----------------------------------------------------------------------------
def test_a_window_whose_transcript_stops_short_is_reported():
    from quasr.adapters.base import warn_short_windows

    rng = np.random.default_rng(0)
    windows = [rng.normal(0, 0.1, 16000 * 30).astype(np.float32) for _ in range(3)]
    full = " ".join(["word"] * 75)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_short_windows(0, windows, [full, " ".join(["word"] * 30), full]) == [1]
    assert len(caught) == 1 and "30-60 s has 30 words" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_short_windows(0, windows, [full, full, full]) == []
        quiet = [np.zeros(16000 * 30, np.float32)]  # no speech, no words: nothing lost
        assert warn_short_windows(0, quiet, [""]) == []
    with pytest.warns(UserWarning, match="0-30 s has 2 words"):
        warn_short_windows(0, windows[:1], ["two words"])
    looping = " ".join(["four"] * 400)  # 13 words a second: a decoder repeating itself
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_short_windows(0, windows, [full, looping, looping]) == [1, 2]  # loops do not make `full` short
    assert [str(w.message).split(" s has")[0][-5:] for w in caught] == ["30-60", "60-90"]
    assert all("400 words" in str(w.message) and "repeating itself" in str(w.message) for w in caught)
