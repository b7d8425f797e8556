import pytest
import torch

from quasr.format import dequantize
from quasr.quantize import rtn_quantize


def err(w, pw):
    return ((dequantize(pw) - w) ** 2).mean().item()


def test_error_falls_with_bits():
    w = torch.randn(64, 256)
    errors = [err(w, rtn_quantize(w, b, 64)) for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[-1] < 1e-4


@pytest.mark.parametrize("sym", [False, True])
@pytest.mark.parametrize("bits", [2, 3, 4])
def test_mse_clip_never_worse_than_minmax(bits, sym):
    w = torch.randn(32, 384) * torch.rand(32, 1)
    w[0, 0] = 12.0  # an outlier: clipping helps
    e_mse, e_mm = err(w, rtn_quantize(w, bits, 128, sym, "mse")), err(w, rtn_quantize(w, bits, 128, sym, "minmax"))
    assert e_mse <= e_mm + 1e-9


def test_minmax_round_trip_error_bound():
    w = torch.randn(16, 128)
    pw = rtn_quantize(w, 4, 32, clip="minmax")
    scale = pw.scales.float().repeat_interleave(32, 1)
    assert ((dequantize(pw) - w).abs() <= scale / 2 + 1e-6).all()


def test_padding_when_group_does_not_divide_k():
    w = torch.randn(20, 240)
    pw = rtn_quantize(w, 4, 128)
    assert pw.padded_in_features == 256 and pw.in_features == 240
    assert dequantize(pw).shape == (20, 240)
    assert err(w, pw) < err(w, rtn_quantize(w, 2, 128))


def test_non_finite_weights_rejected():
    w = torch.randn(4, 64)
    w[1, 3] = float("nan")
    with pytest.raises(ValueError, match="non-finite.*keep"):
        rtn_quantize(w, 4, 32, name="enc.fc1")


def test_zero_group_is_exact():
    w = torch.zeros(3, 64)
    assert torch.equal(dequantize(rtn_quantize(w, 3, 32)), w)


def test_bad_clip():
    with pytest.raises(ValueError, match="clip must be"):
        rtn_quantize(torch.randn(2, 32), 4, 32, clip="max")
