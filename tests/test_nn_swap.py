import json

import pytest
import torch
import torch.nn.functional as F

from conftest import tiny_whisper
from quasr.format import dequantize
from quasr.nn import QuantConv1d, QuantLinear, QuantTiedEmbedding
from quasr.plan import current_plan, model_size_bytes, swap, uniform_plan, validate_plan
from quasr.quantize import rtn_quantize
from quasr.serialize import CheckpointError, load_quantized, save_quantized


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_quant_linear_equals_dequantized_linear(bits):
    lin = torch.nn.Linear(200, 33)
    pw = rtn_quantize(lin.weight, bits, 64)
    q = QuantLinear.from_float(lin, pw)
    x = torch.randn(4, 7, 200)
    assert torch.allclose(q(x), F.linear(x, dequantize(pw), lin.bias), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cin,k,stride,pad", [(80, 3, 1, 1), (64, 3, 2, 1), (1, 127, 64, 0), (16, 7, 3, 0)])
def test_quant_conv1d_equals_conv(cin, k, stride, pad):
    conv = torch.nn.Conv1d(cin, 48, k, stride=stride, padding=pad)
    pw = rtn_quantize(conv.weight.reshape(48, -1), 8, 32)
    q = QuantConv1d.from_float(conv, pw)
    x = torch.randn(2, cin, 300)
    ref = F.conv1d(x, dequantize(pw).view_as(conv.weight), conv.bias, stride, pad)
    assert torch.allclose(q(x), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("cin,cout,k,pad,groups", [(64, 64, 16, 8, 16), (12, 6, 5, 2, 3), (32, 32, 128, 64, 4)])
def test_quant_grouped_conv1d_equals_conv(bits, cin, cout, k, pad, groups):
    """Wav2Vec2's positional conv: grouped, long kernel, same padding, weight-normed."""
    conv = torch.nn.utils.parametrizations.weight_norm(torch.nn.Conv1d(cin, cout, k, padding=pad, groups=groups), dim=2)
    w = conv.weight.detach().reshape(cout, -1)
    pw = rtn_quantize(w, bits, 32)
    q = QuantConv1d.from_float(conv, pw)
    assert q.groups == groups and q.packed_in_features == cin // groups * k
    x = torch.randn(2, cin, 150)
    ref = F.conv1d(x, dequantize(pw).view(cout, cin // groups, k), conv.bias, 1, pad, groups=groups)
    assert torch.allclose(q(x), ref, atol=1e-4, rtol=1e-4)


def test_unsupported_conv_is_refused():
    conv = torch.nn.Conv1d(8, 8, 3, dilation=2)
    with pytest.raises(ValueError, match="dilation=2.*keep this layer"):
        QuantConv1d.from_float(conv, rtn_quantize(conv.weight.reshape(8, -1), 4, 32))


def test_swap_plan_tied_embedding_and_size():
    model = tiny_whisper()
    float_size = model_size_bytes(model)
    plan = uniform_plan(model, 4, 32, keep=("model.encoder.conv1",))
    quantized = [m for n, m in model.named_modules() if plan["layers"].get(n, "keep") != "keep"]
    float_weight_bytes = sum(m.weight.numel() * 4 for m in quantized)  # tied table counted once (proj_out)
    assert json.loads(json.dumps(plan)) == plan  # JSON-able
    swap(model, plan, progress=False)
    assert isinstance(model.model.encoder.conv2, QuantConv1d)
    assert isinstance(model.model.encoder.conv1, torch.nn.Conv1d)
    assert isinstance(model.proj_out, QuantLinear)
    emb = model.model.decoder.embed_tokens
    assert isinstance(emb, QuantTiedEmbedding) and emb.source is model.proj_out
    ids = torch.tensor([[1, 5, 299]])
    assert torch.allclose(emb(ids)[0], model.proj_out.dequantized_weight()[ids[0]])
    assert current_plan(model) == plan
    packed = [m for m in model.modules() if isinstance(m, (QuantLinear, QuantConv1d))]
    packed_bytes = sum(m.packed_weight().nbytes for m in packed)
    assert model_size_bytes(model) == float_size - float_weight_bytes + packed_bytes
    # 4 bits + fp16 scale and zero per 32 weights = 5 bits per weight
    assert packed_bytes == pytest.approx(float_weight_bytes * 5 / 32, rel=0.02)
    feats = torch.randn(1, 80, 3000)
    out = model(input_features=feats, decoder_input_ids=torch.tensor([[1, 3]]))
    assert torch.isfinite(out.logits).all()


def test_bad_plans():
    model = tiny_whisper()
    with pytest.raises(ValueError, match="does not have"):
        validate_plan(model, {"layers": {"nope": {"bits": 4}}})
    with pytest.raises(ValueError, match="bits must be"):
        validate_plan(model, {"layers": {"proj_out": {"bits": 9}}})
    with pytest.raises(ValueError, match="unknown keys"):
        validate_plan(model, {"layers": {"proj_out": {"bits": 4, "gs": 3}}})
    with pytest.raises(ValueError, match="'layers'"):
        validate_plan(model, {"proj_out": 4})


def _save_tiny(tmp_path, bits=4):
    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from conftest import _word_tokenizer

    model = tiny_whisper()
    swap(model, uniform_plan(model, bits, 64), progress=False)
    save_quantized(model, WhisperProcessor(feature_extractor=WhisperFeatureExtractor(), tokenizer=_word_tokenizer(300)),
                   tmp_path)
    return model


def test_save_load_round_trip(tmp_path):
    model = _save_tiny(tmp_path)
    loaded, _ = load_quantized(tmp_path)
    feats, ids = torch.randn(1, 80, 3000), torch.tensor([[1, 7, 9]])
    assert torch.equal(model(input_features=feats, decoder_input_ids=ids).logits,
                       loaded(input_features=feats, decoder_input_ids=ids).logits)
    assert model_size_bytes(loaded) == model_size_bytes(model)
    assert isinstance(loaded.model.decoder.embed_tokens, QuantTiedEmbedding)


def test_corrupt_checkpoint(tmp_path):
    _save_tiny(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="missing or corrupt"):
        load_quantized(tmp_path)


def test_mismatched_checkpoint(tmp_path):
    _save_tiny(tmp_path)
    info = json.loads((tmp_path / "quasr_plan.json").read_text())
    info["plan"]["layers"]["proj_out"]["bits"] = 3  # plan says 3 bits, tensors hold 4
    (tmp_path / "quasr_plan.json").write_text(json.dumps(info))
    with pytest.raises(CheckpointError, match="does not belong"):  # the plan's digest no longer matches, then
        load_quantized(tmp_path)                                    # (re-signed) its shapes do not either
    from safetensors.torch import load_file

    from test_checkpoints import _rewrite

    _rewrite(tmp_path, info, load_file(str(tmp_path / "model.safetensors")))
    with pytest.raises(CheckpointError, match="checkpoint does not match its plan"):
        load_quantized(tmp_path)
    (tmp_path / "quasr_plan.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_quantized(tmp_path)
