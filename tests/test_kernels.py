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


@pytest.mark.parametrize("group", [96, 160, -1])  # groups straddling the GEMM's 256-wide k-blocks
@pytest.mark.parametrize("m", [6, 7, 8, 11, 12, 13, 19, 127])  # x split into equal blocks of <= 6 rows
def test_gemm_k_blocks_and_row_blocks(group, m):
    gen = torch.Generator().manual_seed(m)
    for bits in (3, 4):
        pw = random_packed(40, 900, bits, group, False, gen)
        x = torch.randn(m, 900, generator=gen)
        b = torch.randn(40, generator=gen)
        check(ops.qlinear(x, pw, b, kernel="gemm"), ops.reference_qlinear(x, pw, b))


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


# ---- online rotation (quasr::rotate, csrc/cpu/rotate.cpp) against rotation.Rotation.reference_apply

ROTATION_WIDTHS = [8, 12, 20, 24, 40, 64, 288, 384, 416, 512, 768, 1024, 1280, 1536, 1664, 2048]


@pytest.mark.parametrize("k", ROTATION_WIDTHS)
@pytest.mark.parametrize("learned", [False, True])
@pytest.mark.parametrize("path", [0, 3])  # auto (AVX2 where available), portable scalar
def test_rotate_matches_reference(k, learned, path):
    from quasr.rotation import Rotation, random_signs, rotation_factors

    gen = torch.Generator().manual_seed(k)
    a, b = rotation_factors(k)
    factors = (torch.linalg.qr(torch.randn(a, a, generator=gen))[0], torch.linalg.qr(torch.randn(b, b, generator=gen))[0])
    r = Rotation(random_signs(k, k), *(factors if learned else (None, None)))
    x = torch.randn(2, 37, k, generator=gen) * 3
    orders, dense, scale = r.native_factors()
    y = torch.ops.quasr.rotate(x, r.signs, orders, dense, scale, path)
    torch.testing.assert_close(y, r.reference_apply(x), rtol=0, atol=2e-5 * x.abs().max().item())
    one = x[0, :1]  # a decoder step: every factor on the per-row path (no BLAS for the last one)
    torch.testing.assert_close(torch.ops.quasr.rotate(one, r.signs, orders, dense, scale, path), r.reference_apply(one),
                               rtol=0, atol=2e-5 * x.abs().max().item())
    torch.testing.assert_close(r.apply(x.half()).float(), r.reference_apply(x.half()), rtol=0, atol=1e-4 * x.abs().max().item())


@settings(max_examples=40, deadline=None)
@given(axes=st.lists(st.tuples(st.sampled_from([1, 2, 3, 4, 8, 16, 5, 12]), st.booleans()), min_size=1, max_size=4),
       m=st.sampled_from([0, 1, 3, 17]), signs=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_rotate_any_kronecker_chain(axes, m, signs, seed):
    """Random chains of Sylvester (power-of-two) and dense factors, checked against the dense kron."""
    gen = torch.Generator().manual_seed(seed)
    orders, dense, full = [], [], torch.ones(1, 1)
    for n, is_dense in axes:
        if not is_dense and n & (n - 1):
            is_dense = True  # only powers of two have a Sylvester factor
        mat = torch.randn(n, n, generator=gen) if is_dense else None
        from quasr.rotation import hadamard

        full = torch.kron(full, mat if is_dense else hadamard(n).float())
        orders.append(n)
        dense.append(mat)
    k = full.shape[0]
    s = (torch.randint(0, 2, (k,), generator=gen) * 2 - 1).to(torch.int8) if signs else None
    x = torch.randn(m, k, generator=gen)
    want = ((x * s.float()) if signs else x) @ full * 0.5
    for path in (0, 3):
        y = torch.ops.quasr.rotate(x, s, orders, dense, 0.5, path)
        torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-4 * max(1.0, want.abs().amax().item() if m else 1.0))


def test_rotate_rejects_bad_factors():
    x = torch.randn(3, 12)
    with pytest.raises(RuntimeError, match="multiply to 8 but rows have 12"):
        torch.ops.quasr.rotate(x, None, [8], [None], 1.0)
    with pytest.raises(RuntimeError, match="power-of-two order, got 12"):
        torch.ops.quasr.rotate(x, None, [12], [None], 1.0)
    with pytest.raises(RuntimeError, match=r"dense factor 0 must be float32 \[12, 12\]"):
        torch.ops.quasr.rotate(x, None, [12], [torch.randn(4, 4)], 1.0)
    with pytest.raises(RuntimeError, match="signs must have 12 elements"):
        torch.ops.quasr.rotate(x, torch.ones(8), [12], [torch.randn(12, 12)], 1.0)


def test_rotation_gradients_take_the_reference_path():
    """SpinQuant trains its factors through Rotation.apply: gradients must flow (the native op has none)."""
    from quasr.rotation import Rotation, random_signs

    left = torch.eye(16, requires_grad=True)
    right = torch.eye(32, requires_grad=True)
    r = Rotation(random_signs(512, 0), left, right)
    r.apply(torch.randn(4, 512)).square().sum().backward()
    assert left.grad is not None and right.grad is not None
    with torch.no_grad():  # inference: the native op, same values
        torch.testing.assert_close(r.apply(torch.ones(2, 512)), r.reference_apply(torch.ones(2, 512)))
