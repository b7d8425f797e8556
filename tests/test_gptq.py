"""GPTQ (one layer): packed output, lower layer-output error than RTN with the same ranges, blocked
sweep equal to the unblocked one, dead inputs, and clear errors."""

import pytest
import torch

from quasr.format import SUPPORTED_BITS, dequantize
from quasr.methods.gptq import gptq_quantize, input_hessian
from quasr.quantize import rtn_quantize


def _layer(n=48, k=200, tokens=512, seed=0):
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=gen) * 0.05
    # correlated inputs with a few loud channels, as real activations have
    mix = torch.randn(k, k, generator=gen) / k**0.5 + torch.eye(k)
    x = torch.randn(tokens, k, generator=gen) @ mix
    x[:, :5] *= 8
    return w, x


def _out_err(x, w, pw):
    return float(((x @ (w - dequantize(pw)).T) ** 2).mean())


@pytest.mark.parametrize("bits", SUPPORTED_BITS)
@pytest.mark.parametrize("act_order", [False, True])
@pytest.mark.parametrize("symmetric", [False, True])
def test_gptq_beats_rtn_on_layer_output(bits, act_order, symmetric):
    w, x = _layer(seed=bits)
    h = input_hessian(x)
    pw = gptq_quantize(w, h, bits, 64, symmetric, act_order=act_order)
    pw.validate()
    assert (pw.bits, pw.group_size, pw.in_features, pw.symmetric) == (bits, 64, 200, symmetric)
    rtn = rtn_quantize(w, bits, 64, symmetric, clip="mse")
    # same static ranges as RTN: only the rounding decisions differ
    assert torch.equal(pw.scales, rtn.scales)
    assert _out_err(x, w, pw) < 0.9 * _out_err(x, w, rtn)


@pytest.mark.parametrize("block_size", [1, 7, 32])
def test_blocked_sweep_matches_unblocked(block_size):
    w, x = _layer(k=96, seed=3)
    h = input_hessian(x)
    ref = dequantize(gptq_quantize(w, h, 3, 32, block_size=96))
    out = dequantize(gptq_quantize(w, h, 3, 32, block_size=block_size))
    # identical up to float reassociation, which can flip a rare exact tie
    assert (out == ref).float().mean() > 0.995


def test_dead_inputs_are_rounded_to_nearest_not_zeroed():
    w, x = _layer(k=64, seed=4)
    x[:, 10] = 0
    pw = gptq_quantize(w, input_hessian(x), 4, 32)
    rtn = rtn_quantize(w, 4, 32, clip="mse")
    torch.testing.assert_close(dequantize(pw)[:, 10], dequantize(rtn)[:, 10])
    assert dequantize(pw)[:, 10].abs().sum() > 0


def test_bad_inputs_name_the_problem():
    w, x = _layer(k=64)
    with pytest.raises(ValueError, match=r"Hessian must be \[64, 64\]"):
        gptq_quantize(w, torch.eye(32), 4)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, -torch.eye(64), 4)
    with pytest.raises(ValueError, match="damp"):
        gptq_quantize(w, input_hessian(x), 4, damp=0)
    bad = input_hessian(x)
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        gptq_quantize(w, bad, 4)
