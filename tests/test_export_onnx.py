"""Export to ONNX Runtime (issue 25): MatMulNBits inputs hold quasr's codes exactly for every bit
width, group size and zero point; the exported nodes (with rotation, shift, smoothing and activation
fake-quant in front) compute what quasr's layers compute; Whisper (encoder + decoder with KV cache)
Moonshine (the same, with the audio's padding mask) and Wav2Vec2 exports transcribe as the quasr
model does; bad requests are refused by name."""

import copy
import json
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from conftest import tiny_family
from quasr.export.onnx_layers import (ORT_BITS, OnnxExportError, OrtLinear, block_size_for, ort_dequantize, ort_weight,
                                      to_ort_modules, translation_table)
from quasr.format import PackedWeight, dequantize
from quasr.plan import swap, uniform_plan

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")


def _layer(bits, group, symmetric, k=200, n=24, seed=0, **spec):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(k, n))
    plan = uniform_plan(model, bits, group, symmetric)
    plan["layers"]["0"] = dict(plan["layers"]["0"], **spec)
    swap(model, plan, progress=False)
    return model[0]


def _reference_weight(w):
    return w.float_weight if w.bits == 0 else ort_dequantize(w.b, w.scales, w.zero_points, w.k, w.n, w.bits, w.block_size)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group", [32, 96, 128, None])
@pytest.mark.parametrize("symmetric", [False, True])
def test_matmulnbits_inputs_hold_quasr_codes_exactly(bits, group, symmetric):
    q = _layer(bits, group, symmetric)
    w = ort_weight(q.packed_weight())
    assert w.bits == ORT_BITS[bits] and w.block_size == block_size_for(q.group_size)
    assert q.group_size % w.block_size == 0 and w.block_size & (w.block_size - 1) == 0 and w.block_size >= 16
    assert torch.equal(_reference_weight(w), q.dequantized_weight()[:, :200])
    assert w.b.shape == (24, -(-200 // w.block_size), w.block_size * w.bits // 8)
    assert (w.zero_points is None) == (symmetric and ORT_BITS[bits] == bits)
    assert ("exact" in w.note) == (ORT_BITS[bits] != bits)


@pytest.mark.parametrize("bits", range(2, 9))
def test_fractional_zero_points(bits):
    q = _layer(bits, 32, False)
    pw = q.packed_weight()
    zeros = (pw.zeros.float() + torch.rand(pw.zeros.shape, generator=torch.Generator().manual_seed(bits)) * 0.5).half()
    pw = PackedWeight(pw.packed, pw.scales, zeros, bits, pw.group_size, pw.in_features)
    w = ort_weight(pw)
    assert torch.equal(_reference_weight(w), dequantize(pw)[:, :200])
    if ORT_BITS[bits] == 8:  # ORT's CPU kernel has no 8-bit float zero points: a float MatMul, said so
        assert w.bits == 0 and "float MatMul" in w.note
    else:
        assert w.zero_points.dtype == torch.float32 and "float" in w.note


def test_block_sizes():
    assert [block_size_for(g) for g in (32, 64, 96, 128, 384, 1536)] == [32, 64, 32, 128, 128, 512]


def _export_and_run(module, x, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(module, (x,), None, dynamo=True, input_names=["x"],
                                    custom_translation_table=translation_table(), opset_version=18)
    program.save(str(tmp_path / "m.onnx"), external_data=False)
    import onnx

    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x.numpy()}), graph


class _Fanout(nn.Module):
    def __init__(self, layers):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x):
        return tuple(m(x) for m in self.layers)


def _transformed(seed, rotate=False, smooth=False, shift=False, **act):
    """A 256-input layer with random input transforms (rotation signs and factors, shift, smoothing, static range)."""
    q = _layer(4, 64, False, k=256, n=40, seed=seed)
    q.set_transforms(rotate=rotate, smooth=smooth, shift=shift, act=act)
    g = torch.Generator().manual_seed(seed)
    if q.rotation_left is not None:  # learned factors: any orthogonal matrices
        q.rotation_left = torch.linalg.qr(torch.randn(q.rotation_left.shape, generator=g))[0]
        q.rotation_right = torch.linalg.qr(torch.randn(q.rotation_right.shape, generator=g))[0]
    if q.rotation_signs is not None:
        q.rotation_signs = torch.where(torch.rand(256, generator=g) < 0.5, -1, 1).to(torch.int8)
    if q.input_mul is not None:
        q.input_mul = torch.rand(256, generator=g) + 0.5
    if q.input_shift is not None:
        q.input_shift = torch.randn(256, generator=g) * 0.1
    if q.act_qparams is not None:
        q.act_qparams = torch.tensor([0.02, 128.0])
    return q


def test_exported_nodes_compute_what_quasr_layers_compute(tmp_path):
    """Every bit width (2-bit, widened 3/5/6/7, 4, 8), fractional zeros, and each input transform, in
    one graph: onnxruntime's outputs against the quasr modules' own (native kernels)."""
    layers = [_layer(b, g, s, seed=b) for b, g, s in [(2, 32, False), (3, 64, True), (4, 128, False), (5, 32, False),
                                                      (6, None, True), (7, 96, False), (8, 32, True)]]
    hqq = _layer(4, 32, False, seed=9)
    hqq.zeros = hqq.zeros + torch.rand(hqq.zeros.shape, generator=torch.Generator().manual_seed(0)).half() * 0.5
    hqq8 = _layer(8, 64, False, seed=10)
    hqq8.zeros = hqq8.zeros + 0.25
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    plain = [hqq, hqq8] + layers
    want = [m(x) for m in plain]
    got, graph = _export_and_run(_Fanout([OrtLinear(m, m.packed_weight(), m.bias) for m in plain]), x, tmp_path)
    nodes = [n for n in graph.node if n.op_type == "MatMulNBits"]
    assert len(nodes) == len(plain) - 1 and all(n.domain == "com.microsoft" for n in nodes)  # hqq8: a float MatMul
    for m, g, w in zip(plain, got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=1e-4 * float(w.abs().max()), err_msg=str(m))

    transformed = [_transformed(1, rotate=True), _transformed(2, smooth=True, shift=True),
                   _transformed(3, act_bits=8, act_granularity="token"),
                   _transformed(4, act_bits=8, act_granularity="group", act_symmetric=True),
                   _transformed(5, act_bits=6, act_granularity="tensor", smooth=True, rotate="learned")]
    x = torch.randn(3, 256, generator=torch.Generator().manual_seed(1))
    want = [m(x) for m in transformed]
    exact = [OrtLinear(m, m.packed_weight(), m.bias, accuracy_level=0) for m in transformed]
    got, graph = _export_and_run(_Fanout(exact), x, tmp_path)
    for m, g, w in zip(transformed, got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-4, atol=2e-4 * float(w.abs().max()), err_msg=str(m))
    # auto: ORT's int8 kernel where quasr has int8 activations, float elsewhere
    auto = [OrtLinear(m, m.packed_weight(), m.bias) for m in transformed]
    assert [m.accuracy_level for m in auto] == [0, 0, 4, 4, 0]
    got, _ = _export_and_run(_Fanout(auto), x, tmp_path)
    for g, w in zip(got, want):
        assert np.abs(g - w.numpy()).max() <= 0.03 * float(w.abs().max())


def _mixed_plan(model):
    plan = uniform_plan(model, 4, 32)
    layers = plan["layers"]
    for i, name in enumerate(sorted(n for n, s in layers.items() if isinstance(s, dict))):
        layers[name] = dict(layers[name], bits=(2, 3, 4, 5, 8)[i % 5], symmetric=i % 3 == 0)
    return plan


def _noise(seconds=(1, 2, 3)):
    rng = np.random.default_rng(0)
    return [rng.normal(0, 0.1, int(16000 * s)).astype(np.float32) for s in seconds]


@pytest.mark.parametrize("family", ["whisper", "moonshine", "wav2vec2"])
def test_export_transcribes_as_quasr_does(family, tmp_path):
    from quasr.evaluate import transcribe
    from quasr.export import OnnxModel, export_onnx

    model, processor = tiny_family(family, tmp_path)
    swap(model, _mixed_plan(model), progress=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = export_onnx(model, processor, tmp_path / "onnx")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is not touched
    assert all(d < 1e-4 for d in report.check.values()), report.check
    text = "\n".join(report.lines())
    assert "3 bits -> MatMulNBits 4-bit" in text and "5 bits -> MatMulNBits 8-bit" in text
    manifest = json.loads((tmp_path / "onnx" / "quasr_onnx.json").read_text())
    assert manifest["family"] == family and len(manifest["layers"]) == len(report.layers)
    runner = OnnxModel(tmp_path / "onnx", threads=1)
    waves = _noise()
    assert runner.transcribe(waves) == transcribe(model, processor, waves)
    assert runner.size_bytes() == report.bytes

    import onnx

    graphs = {g["file"]: onnx.load(str(tmp_path / "onnx" / g["file"])) for g in manifest["graphs"].values()}
    nodes = sum(1 for g in graphs.values() for n in g.graph.node if n.op_type == "MatMulNBits")
    assert nodes >= len(report.layers)  # a grouped conv is one node per group
    if family == "whisper":  # the tied embedding is read from proj_out's codes, not stored again in float
        vocab, width = model.config.vocab_size, model.config.d_model
        assert not [i.name for i in graphs["decoder.onnx"].graph.initializer if list(i.dims) == [vocab, width]]

        export_onnx(model, processor, tmp_path / "onnx")  # quasr's own output folder is replaced


def test_whisper_decoder_cache_steps_match_one_pass(tmp_path):
    """Feeding the prompt, then one token at a time with present_kv, gives the logits of one pass over all tokens."""
    from quasr.export import export_onnx

    model, processor = tiny_family("whisper")
    swap(model, uniform_plan(model, 4, 32), progress=False)
    export_onnx(model, processor, tmp_path / "onnx")
    enc = ort.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx"))
    dec = ort.InferenceSession(str(tmp_path / "onnx" / "decoder.onnx"))
    cfg = model.config
    feats = np.random.default_rng(0).normal(size=(1, cfg.num_mel_bins, 3000)).astype(np.float32)
    cross = enc.run(None, {"input_features": feats})[0]
    heads = cfg.decoder_attention_heads
    empty = np.zeros((cfg.decoder_layers, 2, 1, heads, 0, cfg.d_model // heads), np.float32)
    ids = np.array([[1, 5, 9, 17, 33]], np.int64)
    whole, _ = dec.run(None, {"input_ids": ids, "past_kv": empty, "cross_kv": cross})
    _, past = dec.run(None, {"input_ids": ids[:, :2], "past_kv": empty, "cross_kv": cross})
    for t in range(2, 5):
        logits, past = dec.run(None, {"input_ids": ids[:, t: t + 1], "past_kv": past, "cross_kv": cross})
    assert past.shape[4] == 5
    np.testing.assert_allclose(logits, whole, rtol=1e-4, atol=1e-4)


def test_refusals(tmp_path):
    from quasr.export import export_onnx

    model, processor = tiny_family("wav2vec2", tmp_path)
    processor.feature_extractor.return_attention_mask = True
    with pytest.raises(OnnxExportError, match="takes an attention mask"):
        export_onnx(model, processor, tmp_path / "m")
    assert not (tmp_path / "m").exists()
    model, processor = tiny_family("whisper")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="non-empty folder that quasr did not write"):
        export_onnx(model, processor, foreign)
    assert (foreign / "notes.txt").read_text() == "keep me"
    q = _layer(4, 32, False)
    with pytest.raises(OnnxExportError, match="accuracy_level must be one of"):
        OrtLinear(q, q.packed_weight(), q.bias, accuracy_level=7)


def test_a_folder_that_is_not_a_whole_export_is_refused(tmp_path):
    from quasr.export import OnnxModel

    with pytest.raises(ValueError, match="not a `quasr export --format onnx` folder"):
        OnnxModel(tmp_path)
    (tmp_path / "quasr_onnx.json").write_text("{broken")
    with pytest.raises(ValueError, match="is corrupt"):
        OnnxModel(tmp_path)
    (tmp_path / "quasr_onnx.json").write_text(json.dumps({"format": "quasr-onnx", "format_version": 99, "graphs": {}}))
    with pytest.raises(ValueError, match="version 99, this quasr reads"):
        OnnxModel(tmp_path)
    (tmp_path / "quasr_onnx.json").write_text(json.dumps(
        {"format": "quasr-onnx", "format_version": 1, "family": "whisper", "graphs": {"encoder": {"file": "encoder.onnx"}}}))
    with pytest.raises(ValueError, match="encoder.onnx missing; copy the whole export folder"):
        OnnxModel(tmp_path)


def test_to_ort_modules_replaces_every_packed_layer():
    from quasr.nn import _Packed

    model, _ = tiny_family("wav2vec2")
    swap(model, uniform_plan(model, 4, 32), progress=False)
    work = copy.deepcopy(model)
    done = to_ort_modules(work)
    assert not [n for n, m in work.named_modules() if isinstance(m, _Packed)]
    assert set(done) == {n for n, m in model.named_modules() if isinstance(m, _Packed)}


def test_cli_export_onnx(tmp_path, capsys):
    from quasr.cli import main
    from quasr.serialize import save_quantized

    model, processor = tiny_family("whisper")
    swap(model, uniform_plan(model, 3, 32), progress=False)
    save_quantized(model, processor, tmp_path / "q")
    assert main(["export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "encoder.onnx" in out and "3 bits -> MatMulNBits 4-bit" in out
    assert main(["export", str(tmp_path / "q"), "--format", "onnx", "--out", str(tmp_path / "o2"), "--ggml-type", "q4_0"]) == 2
    assert "--ggml-type is for --format ggml" in capsys.readouterr().err


@pytest.mark.slow
def test_mixed_whisper_exports_and_transcribes_real_speech_in_onnxruntime(tmp_path, whisper_tiny_en, speech_dir):
    from quasr.adapters import get_adapter
    from quasr.data import load_clips
    from quasr.evaluate import word_error_rate
    from quasr.export import OnnxModel, export_onnx

    model, processor = whisper_tiny_en
    plan = uniform_plan(model, 4, 128)
    layers = plan["layers"]
    layers["model.decoder.layers.0.fc2"] = dict(layers["model.decoder.layers.0.fc2"], bits=5)
    layers["model.encoder.layers.1.fc2"] = dict(layers["model.encoder.layers.1.fc2"], bits=3, group_size=32)
    layers["model.encoder.layers.2.fc1"] = dict(layers["model.encoder.layers.2.fc1"], bits=8, symmetric=True)
    layers["model.decoder.layers.2.encoder_attn.q_proj"] = "keep"
    q = swap(copy.deepcopy(model), plan, progress=False)
    report = export_onnx(q, processor, tmp_path / "onnx")
    assert report.bytes < 0.45 * sum(p.numel() * 4 for p in model.parameters())
    clips = [c for c in load_clips(speech_dir / "prompts", "en", None)][:6]
    waves = [c.waveform() for c in clips]
    ours = get_adapter(q, processor).transcribe(waves)
    theirs = OnnxModel(tmp_path / "onnx").transcribe(waves)
    refs = [c.text for c in clips]
    assert all(t.strip() for t in theirs)
    assert abs(word_error_rate(refs, theirs, "en")[0] - word_error_rate(refs, ours, "en")[0]) <= 0.5, (ours, theirs)
