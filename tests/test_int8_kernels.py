"""The CPU int8-activation path (csrc/cpu/qgemm_i8.*): its runtime layout decoded independently here
from docs/FORMAT.md, and every instruction set this CPU runs against the plain-torch reference on
random shapes, every weight width and every activation mode."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from quasr import ops
from quasr.format import PackedWeight, pack_codes, unpack_codes
from quasr.kernels import BACKENDS
from quasr.kernels.dispatch import choose, forced
from quasr.kernels.reference import ActQuant
from test_kernels import random_packed

pytestmark = pytest.mark.skipif(not ops.NATIVE_CPU, reason="native extension not built")
CPU = BACKENDS["cpu"]
ISAS = CPU.int8_isas() if ops.NATIVE_CPU else ()
PARTS = {8: (8,), 7: (4, 2, 1), 6: (4, 2), 5: (4, 1), 4: (4,), 3: (2, 1), 2: (2,)}


def decode_layout(layout, bits, n, kp, g):
    """Codes [n, kp] and (s, s*z, Wsum) [n, groups] from the i8 layout, written from FORMAT.md:
    [block of 16 columns][group][octet of 32 k][chunk][64 bytes], byte 4*col + k%4 of step (k%32)/4,
    part p of width w in chunks shift_p + j // (8/w), at bit (j % (8/w)) * w."""
    blocks, groups = -(-n // 64) * 4, kp // g
    raw = layout.codes.view(blocks, groups, g // 32, bits, 64).to(torch.int32)
    codes = torch.zeros(blocks, groups, g // 32, 8, 16, 4, dtype=torch.int32)  # [.., step, col, k%4]
    shift = 0
    for w in PARTS[bits]:
        per = 8 // w
        for j in range(8):
            chunk = raw[:, :, :, shift + j // per].view(blocks, groups, g // 32, 16, 4)
            codes[:, :, :, j] |= ((chunk >> ((j % per) * w)) & ((1 << w) - 1)) << shift
        shift += w
    codes = codes.permute(0, 4, 1, 2, 3, 5).reshape(blocks * 16, kp)[:n]
    params = layout.params.view(blocks, groups, 3, 16).permute(0, 3, 1, 2).reshape(blocks * 16, groups, 3)[:n]
    return codes, params


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("n,k,group,sym", [(70, 200, 32, False), (16, 128, 128, True), (129, 96, -1, False)])
def test_repack_layout_holds_the_codes_and_group_terms(bits, n, k, group, sym):
    gen = torch.Generator().manual_seed(bits * 100 + n)
    pw = random_packed(n, k, bits, group, sym, gen)
    kp, g = pw.padded_in_features, pw.group_size
    codes, params = decode_layout(CPU.repack(pw), bits, n, kp, g)
    want = unpack_codes(pw.packed, bits)
    assert torch.equal(codes, want)
    s = pw.scales.float()
    z = torch.full_like(s, float(1 << (bits - 1))) if sym else pw.zeros.float()
    torch.testing.assert_close(params[..., 0], s)
    torch.testing.assert_close(params[..., 1], s * z)
    wsum = (s * (want.view(n, kp // g, g).sum(-1).float() - g * z))
    torch.testing.assert_close(params[..., 2], wsum, rtol=1e-5, atol=1e-4)


def check(y, ref):
    scale = ref.abs().max().clamp(min=1e-3)
    # s*D - s*z*A in float32 cancels more than the reference's one matmul does
    assert ((y.float() - ref.float()).abs().max() / scale) < 1e-4


ACTS = {
    "group-sym8": ActQuant(8, True, per_group=True),
    "group-asym8": ActQuant(8, False, per_group=True),
    "token-sym8": ActQuant(8, True),
    "token-asym8": ActQuant(8, False),
    "token-asym4": ActQuant(4, False),
    "token-sym6": ActQuant(6, True),
    "tensor-asym8": ActQuant(8, False, 0.02, 131.0),
    "tensor-sym8": ActQuant(8, True, 0.03, 128.0),
    "group-asym3": ActQuant(3, False, per_group=True),
}


@settings(max_examples=120, deadline=None)
@given(bits=st.integers(2, 8), group=st.sampled_from([32, 64, 128, -1]), sym=st.booleans(),
       m=st.sampled_from([1, 2, 3, 4, 5, 6, 9, 33]), n=st.integers(1, 140), k=st.integers(1, 300),
       act=st.sampled_from(sorted(ACTS)), isa=st.sampled_from(ISAS or ("scalar",)), seed=st.integers(0, 2**31 - 1),
       bias=st.booleans(), mul=st.booleans())
def test_int8_path_matches_reference(bits, group, sym, m, n, k, act, isa, seed, bias, mul):
    gen = torch.Generator().manual_seed(seed)
    pw = random_packed(n, k, bits, group, sym, gen)
    x = torch.randn(m, k, generator=gen) * 2
    b = torch.randn(n, generator=gen) if bias else None
    input_mul = torch.rand(k, generator=gen) + 0.5 if mul else None
    q = ACTS[act]
    want = ops.reference_qlinear(x, pw, b, input_mul=input_mul, act=q)
    check(CPU.qlinear_int8(x, pw, b, input_mul, q, isa=isa), want)


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("bits", range(2, 9))
def test_every_isa_every_width_large_and_small_m(isa, bits):
    """The register-tile path (M <= 4) and the decoded-panel path (M > 4) with every tail of rows
    (the panel's row tile is 6 on AVX-512 and 3 on AVX2)."""
    gen = torch.Generator().manual_seed(bits)
    pw = random_packed(200, 520, bits, 128, False, gen)
    layout = CPU.repack(pw)
    for m in (1, 3, 4, 5, 7, 8, 9, 10, 11, 12):
        x = torch.randn(m, 520, generator=gen)
        for q in (ACTS["group-sym8"], ACTS["token-asym8"]):
            check(CPU.qlinear_int8(x, pw, None, None, q, layout, isa=isa), ops.reference_qlinear(x, pw, act=q))


def test_extreme_codes_do_not_saturate():
    """All codes 255 against activations at -128 and 127: vpmaddubsw's int16 pair sums would
    saturate without the 8-bit split on AVX2 / AVX-512BW."""
    n, k = 64, 256
    pw = PackedWeight(pack_codes(torch.full((n, k), 255), 8), torch.full((n, 2), 0.01).half(),
                      torch.zeros(n, 2).half(), 8, 128, k)
    x = torch.where(torch.arange(k) % 2 == 0, -1.0, 1.0).repeat(3, 1) * 5
    x[1] = 5.0
    x[2] = -5.0
    q = ActQuant(8, False)
    for isa in ISAS:
        check(CPU.qlinear_int8(x, pw, None, None, q, isa=isa), ops.reference_qlinear(x, pw, act=q))


def test_layers_that_quantize_activations_run_the_int8_path():
    assert choose("cpu", 4, 128, 1, 64, 64, True).path == "int8"
    assert choose("cpu", 4, 128, 1, 64, 64, False).path != "int8"
    with forced("cpu", "gemv"):  # a forced float path keeps the exact fake-quant + float kernel
        assert choose("cpu", 4, 128, 1, 64, 64, True).path == "gemv"
    gen = torch.Generator().manual_seed(0)
    pw = random_packed(8, 64, 4, 32, False, gen)
    with forced("cpu", "int8"), pytest.raises(ValueError, match="needs a layer with act_bits"):
        ops.qlinear(torch.randn(1, 64), pw)


def test_fractional_static_zero_falls_back_to_the_float_path():
    gen = torch.Generator().manual_seed(1)
    pw = random_packed(30, 64, 4, 32, False, gen)
    x = torch.randn(3, 64, generator=gen)
    q = ActQuant(8, False, 0.02, 127.5)
    assert not CPU.int8_supported(pw, q)
    with forced("cpu", "int8"):
        check(ops.qlinear(x, pw, act=q), ops.reference_qlinear(x, pw, act=q))


def test_isa_override(monkeypatch):
    monkeypatch.setenv("QUASR_CPU_ISA", "scalar")
    assert CPU.int8_isa() == "scalar"
    monkeypatch.setenv("QUASR_CPU_ISA", "neon")
    with pytest.raises(ValueError, match="choose one of scalar, avx2, avx512bw, avx512-vnni"):
        CPU.int8_isa()
    monkeypatch.delenv("QUASR_CPU_ISA")
    assert CPU.int8_isa() == ISAS[-1]
    assert CPU.int8_isa() in ops.native_status()


def test_int8_op_has_a_fake_kernel():
    gen = torch.Generator().manual_seed(2)
    pw = random_packed(20, 96, 4, 32, False, gen)
    layout = CPU.repack(pw)
    x = torch.randn(2, 3, 96, generator=gen)
    args = (x, layout.codes, layout.params, None, 4, 32, 96, 20, None, 8, 2, True, 0.0, 0.0, -1)
    torch.library.opcheck(torch.ops.quasr_cpu.qlinear_i8.default, args)
    torch.library.opcheck(torch.ops.quasr_cpu.repack_i8.default, (pw.packed, pw.scales, pw.zeros, 4, 32))


def test_module_makes_the_layout_only_for_quantized_activations():
    from quasr.nn import QuantLinear
    from quasr.quantize import rtn_quantize

    lin = torch.nn.Linear(96, 40)
    plain = QuantLinear.from_float(lin, rtn_quantize(lin.weight.detach(), 4, 32))
    plain.prepare_runtime()
    assert plain._runtime.layout_bytes() == 0
    act = QuantLinear.from_float(lin, rtn_quantize(lin.weight.detach(), 4, 32))
    act.set_transforms(act={"act_bits": 8, "act_granularity": "group", "act_symmetric": True})
    act.prepare_runtime()
    assert act._runtime.layout_bytes() > 0
    x = torch.randn(5, 96)
    want = ops.reference_qlinear(x, act.packed_weight(), act.bias, act=ActQuant(8, True, per_group=True))
    check(act(x), want)


def test_module_binds_the_int8_call_and_rebinds_when_anything_changes(monkeypatch):
    """A layer with dynamic int8 activations binds its kernel call once (ops.bound_qlinear); the
    bound call gives the full path's output, and a changed override, ISA, device move or loaded state
    dict makes a new one (or none)."""
    from quasr.nn import QuantLinear
    from quasr.quantize import rtn_quantize

    gen = torch.Generator().manual_seed(3)
    lin = torch.nn.Linear(96, 40)
    layer = QuantLinear.from_float(lin, rtn_quantize(lin.weight.detach(), 4, 32))
    layer.set_transforms(act={"act_bits": 8, "act_granularity": "group", "act_symmetric": True})
    x = torch.randn(3, 96, generator=gen)
    want = ops.reference_qlinear(x, layer.packed_weight(), layer.bias, act=ActQuant(8, True, per_group=True))
    check(layer(x), want)
    first = layer._bound[2]
    assert first is not None and layer(x) is not None and layer._bound[2] is first  # reused
    torch.testing.assert_close(first(x), layer._linear(x, layer.packed_weight(), layer.bias), rtol=0, atol=0)
    with forced("cpu", "gemv"):  # an override: no bound call, the forced path runs
        check(layer(x), want)
        assert layer._bound[2] is None
    monkeypatch.setenv("QUASR_CPU_ISA", ISAS[0])
    check(layer(x), want)
    assert layer._bound[2] not in (None, first)
    monkeypatch.delenv("QUASR_CPU_ISA")
    other = QuantLinear.from_float(torch.nn.Linear(96, 40), rtn_quantize(torch.randn(40, 96, generator=gen), 4, 32))
    other.set_transforms(act={"act_bits": 8, "act_granularity": "group", "act_symmetric": True})
    layer(x)
    layer.load_state_dict(other.state_dict())  # same buffers, new values: the old layout must go
    want = ops.reference_qlinear(x, other.packed_weight(), other.bias, act=ActQuant(8, True, per_group=True))
    check(layer(x), want)
    static = QuantLinear.from_float(lin, rtn_quantize(lin.weight.detach(), 4, 32))
    static.set_transforms(act={"act_bits": 8, "act_granularity": "tensor"})
    assert static._bound_call(x) is None  # static ranges take the full path
