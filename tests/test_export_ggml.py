"""Export to whisper.cpp (issue 25): ggml blocks hold quasr's codes exactly where the type allows,
re-quantization follows ggml's rounding, the file has exactly the tensors whisper.cpp's loader
creates, and pywhispercpp transcribes a mixed-precision export like quasr does."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from quasr.export.ggml import (BLOCK, TYPES, _exact_blocks, _pack_blocks, _requantize, choose_type, dequantize_blocks,
                               expected_tensors, export_ggml, read_ggml)
from quasr.plan import swap, uniform_plan


def _layer(bits, group, symmetric, hqq_zeros=False, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(256, 48))
    swap(model, uniform_plan(model, bits, group, symmetric), progress=False)
    q = model[0]
    if hqq_zeros and q.zeros is not None:  # fractional zero points, as HQQ makes
        q.zeros = q.zeros + torch.rand_like(q.zeros) * 0.5
    return q


# which ggml types hold which quasr codes exactly (RTN: integer zeros)
FITS = {(2, False): "q4_0", (3, False): "q4_0", (4, True): "q4_0", (4, False): "q4_1", (5, True): "q5_0",
        (5, False): "q5_1", (6, False): "q8_0", (7, False): "q8_0", (8, True): "q8_0"}


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("symmetric", [False, True])
@pytest.mark.parametrize("group", [32, 128])
def test_blocks_hold_quasr_codes(bits, symmetric, group):
    q = _layer(bits, group, symmetric)
    ref = q.dequantized_weight().numpy()
    fitting = [k for k in TYPES if _exact_blocks(k, q) is not None]
    for kind in fitting:
        codes, d, m = _exact_blocks(kind, q)
        got = dequantize_blocks(kind, _pack_blocks(kind, codes, d, m), *codes.shape)
        if TYPES[kind][3] is not None:  # (q - c)·d: exact
            np.testing.assert_array_equal(got, ref)
        else:  # q·d + m: m = -zero·scale rounded to fp16
            assert np.abs(got - ref).max() <= np.abs(ref).max() * 2e-3
    expected = FITS.get((bits, symmetric))
    if expected is None and symmetric:
        expected = {2: "q4_0", 3: "q4_0", 6: "q8_0", 7: "q8_0"}[bits]
    if expected is not None:
        assert fitting and min(fitting, key=lambda k: TYPES[k][4]) == expected, fitting
    else:  # 8-bit asymmetric: (code - zero) spans more than int8
        assert "q8_0" not in fitting
    assert all(TYPES[k][2] >= bits for k in fitting if TYPES[k][3] is None)


def test_fractional_zeros_only_fit_offset_types():
    q = _layer(3, 64, False, hqq_zeros=True)
    assert _exact_blocks("q4_0", q) is None and _exact_blocks("q8_0", q) is None
    assert _exact_blocks("q4_1", q) is not None


@pytest.mark.parametrize("kind", list(TYPES))
def test_requantize_rounds_to_nearest_level(kind):
    w = np.random.default_rng(0).normal(0, 0.05, (16, 128)).astype(np.float32)
    codes, d, m = _requantize(kind, w)
    got = dequantize_blocks(kind, _pack_blocks(kind, codes, d, m), *w.shape)
    step = np.repeat(d.astype(np.float32), BLOCK, axis=1)
    # within half a step (plus the fp16 rounding of d and m); q4_0/q5_0 put the largest magnitude at
    # level 0, so the opposite end (level 2c) is clipped to 2c - 1: one step there, as in ggml
    reach = 1.0 if kind in ("q4_0", "q5_0") else 0.5
    assert (np.abs(got - w) <= reach * np.abs(step) + np.abs(w).max() * 4e-3).all()
    assert np.median(np.abs(got - w) / np.abs(step)) < 0.3


def _whisper_plan(model):
    """A mixed plan: 4-bit g128 with two 5-bit layers, one 3-bit layer and one float layer."""
    plan = uniform_plan(model, 4, 128)
    layers = plan["layers"]
    layers["model.decoder.layers.0.fc2"] = dict(layers["model.decoder.layers.0.fc2"], bits=5)
    layers["model.encoder.layers.3.fc1"] = dict(layers["model.encoder.layers.3.fc1"], bits=5, group_size=64)
    layers["model.encoder.layers.1.fc2"] = dict(layers["model.encoder.layers.1.fc2"], bits=3, group_size=32)
    layers["model.decoder.layers.2.encoder_attn.q_proj"] = "keep"
    return plan


@pytest.mark.slow
def test_mixed_whisper_exports_and_runs_in_whisper_cpp(tmp_path, whisper_tiny_en, speech_dir):
    pywhispercpp = pytest.importorskip("pywhispercpp.model")
    from quasr.adapters import get_adapter
    from quasr.data import load_clips
    from quasr.evaluate import word_error_rate

    model, processor = whisper_tiny_en
    q = swap(copy.deepcopy(model), _whisper_plan(model), progress=False)
    assert choose_type(q) == "q5_1"
    report = export_ggml(q, processor, tmp_path / "m.bin")
    assert report.ggml_type == "q5_1" and report.requantized() == ["decoder.blocks.2.cross_attn.query.weight"]
    parsed = read_ggml(tmp_path / "m.bin")
    hp = parsed["hparams"]
    assert hp["ftype"] % 1000 == 9 and hp["n_vocab"] == model.config.vocab_size and len(parsed["vocab"]) == 50256
    want = expected_tensors(hp)
    assert set(parsed["tensors"]) == set(want)
    type_ids = {"w": TYPES["q5_1"][0], "f16": 1, "f32": 0}
    for name, (kind, shape) in want.items():
        ttype, got_shape, _ = parsed["tensors"][name]
        assert (ttype, got_shape) == (type_ids[kind], shape), name
    # the codes of a 4-bit layer, decoded as whisper.cpp does, are quasr's
    ttype, shape, data = parsed["tensors"]["encoder.blocks.0.mlp.0.weight"]
    ref = q.model.encoder.layers[0].fc1.dequantized_weight().numpy()
    assert np.abs(dequantize_blocks("q5_1", data, *shape) - ref).max() <= np.abs(ref).max() * 2e-3

    clips = [c for c in load_clips(speech_dir / "prompts", "en", None)][:4]
    waves = [c.waveform() for c in clips]
    ours = get_adapter(q, processor).transcribe(waves)
    engine = pywhispercpp.Model(str(tmp_path / "m.bin"), n_threads=2, print_realtime=False, print_progress=False)
    theirs = [" ".join(s.text for s in engine.transcribe(w)) for w in waves]
    assert all(t.strip() for t in theirs)
    refs = [c.text for c in clips]
    assert abs(word_error_rate(refs, theirs, "en")[0] - word_error_rate(refs, ours, "en")[0]) <= 5.0, (ours, theirs)
