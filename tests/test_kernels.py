"""Every kernel path against the plain-torch reference, on random shapes and all bit widths."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quasr import ops
from quasr.format import PackedWeight, pack_codes, resolve_group_size

pytestmark = pytest.mark.skipif(not ops.NATIVE_CPU, reason="native extension not built")
PATHS = ["gemv", "gemm", "blas", "scalar", "auto"]


def random_packed(n, k, bits, group, sym, gen):
    g, kp = resolve_group_size(group, k)
    codes = torch.randint(0, 1 << bits, (n, kp), generator=gen)
    scales = (torch.rand(n, kp // g, generator=gen) * 0.05 + 0.001).half()
    zeros = None if sym else (torch.rand(n, kp // g, generator=gen) * ((1 << bits) - 1)).half()
    return PackedWeight(pack_codes(codes, bits), scales, zeros, bits, g, k)


def check(y, ref):
    scale = ref.abs().max().clamp(min=1e-3)
    assert ((y.float() - ref.float()).abs().max() / scale) < 2e-5


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(2, 8), group=st.sampled_from([32, 64, 128, -1]), sym=st.booleans(),
       m=st.sampled_from([1, 2, 3, 4, 5, 7, 13, 64, 130]), n=st.integers(1, 70), k=st.integers(1, 400),
       path=st.sampled_from(PATHS), seed=st.integers(0, 2**31 - 1), bias=st.booleans())
def test_qlinear_matches_reference(bits, group, sym, m, n, k, path, seed, bias):
    gen = torch.Generator().manual_seed(seed)
    pw = random_packed(n, k, bits, group, sym, gen)
    x = torch.randn(m, k, generator=gen)
    b = torch.randn(n, generator=gen) if bias else None
    check(ops.qlinear(x, pw, b, kernel=path), ops.reference_qlinear(x, pw, b))


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("path", PATHS)
def test_every_bit_width_every_path(bits, path):
    gen = torch.Generator().manual_seed(bits)
    pw = random_packed(100, 384, bits, 128, False, gen)
    x = torch.randn(2, 9, 384, generator=gen)  # leading dims are kept
    y = ops.qlinear(x, pw, kernel=path)
    assert y.shape == (2, 9, 100)
    check(y, ops.reference_qlinear(x, pw))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    gen = torch.Generator().manual_seed(0)
    pw = random_packed(48, 256, 4, 64, True, gen)
    x = torch.randn(5, 256, generator=gen).to(dtype)
    y = ops.qlinear(x, pw)
    assert y.dtype == dtype
    ref = ops.reference_qlinear(x.float(), pw)
    assert ((y.float() - ref).abs().max() / ref.abs().max()) < 1e-2


@pytest.mark.parametrize("bits", range(2, 9))
def test_native_dequantize(bits):
    gen = torch.Generator().manual_seed(bits)
    pw = random_packed(37, 240, bits, 32, bits % 2 == 0, gen)
    from quasr.format import dequantize

    assert torch.equal(ops.dequantize_weight(pw), dequantize(pw))


def test_wrong_input_width():
    pw = random_packed(8, 64, 4, 32, False, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="input has 63 features"):
        ops.qlinear(torch.randn(1, 63), pw)


def test_empty_batch():
    pw = random_packed(8, 64, 4, 32, False, torch.Generator().manual_seed(0))
    assert ops.qlinear(torch.randn(0, 64), pw).shape == (0, 8)


def test_fake_impl_and_compile():
    from torch._subclasses.fake_tensor import FakeTensorMode

    from quasr.nn import QuantLinear
    from quasr.quantize import rtn_quantize

    lin = torch.nn.Linear(96, 40)
    q = QuantLinear.from_float(lin, rtn_quantize(lin.weight, 4, 32))
    x = torch.randn(3, 96)
    with FakeTensorMode() as mode:
        fx = mode.from_tensor(x)
        fake_out = torch.ops.quasr.qlinear(fx, mode.from_tensor(q.packed), mode.from_tensor(q.scales),
                                           mode.from_tensor(q.zeros), None, 4, 32, 96)
        assert fake_out.shape == (3, 40)
    torch._dynamo.reset()
    compiled = torch.compile(q, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), q(x))
