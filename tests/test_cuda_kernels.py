"""The CUDA backend (csrc/cuda, quasr._C_cuda) on a GPU: the device re-tiling equals the host one,
the fp16 GEMV / split-K / GEMM and the int8 tensor-core path match the plain-torch reference for
every width, group size and zero-point kind, the activation quantization is bit-exact with the
host check, and the seam's op and the dispatcher route CUDA layers here (a mixed-precision model on
it: tests/test_cuda_triton.py). Skipped without a GPU and the built extension (CI verifies the same layout
and integer math on the host: tests/test_cuda_host.py); run by bench/gpu_check.sh."""

import numpy as np
import pytest
import torch

from quasr import ops
from quasr.kernels import BACKENDS, choose, forced, reference
from quasr.kernels.reference import ActQuant
from test_cuda_host import _quantize_rows, tile
from test_cuda_simt import random_packed as host_packed, rel_err

CUDA = BACKENDS["cuda"]
pytestmark = [pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
              pytest.mark.skipif(torch.cuda.is_available() and not CUDA.available(),
                                 reason=f"CUDA kernels not usable: {CUDA.status()}"),
              pytest.mark.filterwarnings("ignore")]
BITS = [2, 3, 4, 5, 6, 7, 8]


def random_packed(n, k, bits, group, zeros_kind, seed):
    pw = host_packed(n, k, bits, group, zeros_kind, seed)
    return type(pw)(pw.packed.cuda(), pw.scales.cuda(), None if pw.zeros is None else pw.zeros.cuda(), bits,
                    pw.group_size, k)


@pytest.mark.parametrize("bits", BITS)
def test_device_tiling_equals_the_host_tiling(cuda_host_lib, bits):
    pw = random_packed(70, 224, bits, 32, "int", bits)
    words = torch.ops.quasr_cuda.tile(pw.packed, bits).cpu().numpy().view(np.uint32)
    assert np.array_equal(words, tile(cuda_host_lib, pw.packed.cpu(), bits))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group,zeros", [(32, "int"), (128, None), (-1, "int"), (64, "frac")])
@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_fp16_paths_match_the_reference(bits, group, zeros, path):
    for n, k in ((40, 200), (384, 512), (1000, 96)):
        pw = random_packed(n, k, bits, group, zeros, bits * 31 + n)
        layout = CUDA.repack(pw)
        bias = torch.randn(n, device="cuda")
        for m in ((1, 3, 8, 16) if path == "gemv" else (1, 17, 100, 600)):
            x = torch.randn(m, k, device="cuda").half()
            want = reference.qlinear(x.float(), pw, bias)
            got = CUDA.qlinear(x, pw, bias, None, None, path, layout)
            assert got.dtype == torch.float16 and got.shape == (m, n)
            assert rel_err(got, want) < 5e-3, (n, k, m)


@pytest.mark.parametrize("splits", [1, 2, 5, 16])
def test_split_k_sums_every_slice_once(splits):
    pw = random_packed(384, 1536, 4, 128, "int", 7)
    layout = CUDA.repack(pw)
    x = torch.randn(4, 1536, device="cuda").half()
    got = torch.ops.quasr_cuda.qlinear_f16(x, layout.words, layout.f16_params, layout.frac_zeros, None, 4, 128, 1536,
                                           384, 1, splits)
    assert rel_err(got, reference.qlinear(x.float(), pw)) < 5e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_other_activation_dtypes_come_back_in_their_dtype(dtype):
    pw = random_packed(64, 128, 4, 32, "int", 1)
    x = torch.randn(2, 5, 128, device="cuda", dtype=dtype)
    got = CUDA.qlinear(x, pw, None, None, None, "gemv")
    assert got.dtype == dtype and got.shape == (2, 5, 64)
    assert rel_err(got, reference.qlinear(x.float(), pw)) < 1e-2


@pytest.mark.parametrize("act", [ActQuant(8), ActQuant(8, symmetric=True), ActQuant(6), ActQuant(8, scale=0.05, zero=120.0)])
def test_activation_quantization_is_bit_exact_with_the_host(cuda_host_lib, act):
    x = torch.randn(37, 300) * 2
    kp, group = 320, 64
    e, sx, c, esum = torch.ops.quasr_cuda.act_quant(x.cuda(), None, kp, group, act.bits, act.symmetric,
                                                    act.scale if not act.dynamic else 0.0, act.zero)
    he, hsx, hc, hesum = _quantize_rows(cuda_host_lib, x, kp, group, act)
    assert np.array_equal(e.cpu().numpy(), he) and np.array_equal(esum.cpu().numpy(), hesum)
    assert np.array_equal(sx.cpu().numpy(), hsx) and np.array_equal(c.cpu().numpy(), hc)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group,zeros", [(32, "int"), (128, None), (-1, "int")])
@pytest.mark.parametrize("act", [ActQuant(8), ActQuant(8, symmetric=True), ActQuant(8, scale=0.03, zero=128.0)])
def test_int8_tensor_core_path_matches_the_reference(bits, group, zeros, act):
    n, k = 300, 520
    pw = random_packed(n, k, bits, group, zeros, bits)
    layout = CUDA.repack(pw)
    mul = torch.rand(k, device="cuda") + 0.5
    for m in (1, 9, 130, 700):
        x = torch.randn(m, k, device="cuda").half()
        want = reference.qlinear(x.float(), pw, None, mul, act)
        got = CUDA.qlinear(x, pw, None, mul, act, "int8", layout)
        assert rel_err(got, want) < 2e-3, m


@pytest.mark.parametrize("act", [None, ActQuant(8), ActQuant(4, symmetric=True), ActQuant(8, scale=0.02, zero=100.5)])
def test_the_fp16_prologue_is_the_reference_input_transform(act):
    x = torch.randn(6, 250, device="cuda").half()
    mul = torch.rand(250, device="cuda") + 0.5
    scale, zero = (0.0, 0.0) if act is None or act.dynamic else (act.scale, act.zero)
    got = torch.ops.quasr_cuda.act_prologue(x, mul, 256, act.bits if act else 0, bool(act and act.symmetric),
                                            scale, zero)
    want = reference.input_transform(x, mul, act).half()
    assert torch.equal(got[:, :250], want) and torch.all(got[:, 250:] == 0)


@pytest.mark.parametrize("m", [1, 12, 40])
def test_smoothing_and_fractional_static_zeros_run_fused(m):
    pw = random_packed(200, 250, 3, 32, "int", 5)
    mul = torch.rand(250, device="cuda") + 0.5
    x = torch.randn(m, 250, device="cuda")
    for act in (None, ActQuant(8, scale=0.02, zero=100.5)):
        got = CUDA.qlinear(x, pw, None, mul, act, "int8" if act else "gemv")
        assert got.dtype == torch.float32
        assert rel_err(got, reference.qlinear(x, pw, None, mul, act)) < 5e-3


def test_unfused_activation_modes_fall_back_to_fake_quant():
    pw = random_packed(64, 256, 4, 64, "int", 3)
    x = torch.randn(5, 256, device="cuda").half()
    for act in (ActQuant(8, per_group=True), ActQuant(4, scale=0.1, zero=7.5)):
        assert not CUDA.int8_supported(pw, act)
        got = CUDA.qlinear(x, pw, None, None, act, "int8")
        assert rel_err(got, reference.qlinear(x.float(), pw, act=act)) < 5e-3


def test_the_dispatcher_and_the_seam_op_route_cuda_layers_here():
    assert choose("cuda", 4, 128, 1, 512, 512).backend in ("cuda", "triton")  # the table may prefer Triton
    for m in (1, 64):  # activation-quantizing layers take the CUDA int8 path at every M
        choice = choose("cuda", 4, 128, m, 512, 512, True)
        assert (choice.backend, choice.path) == ("cuda", "int8")
    pw = random_packed(96, 200, 5, 32, "int", 2)
    x = torch.randn(3, 200, device="cuda").half()
    got = torch.ops.quasr.qlinear(x, pw.packed, pw.scales, pw.zeros, None, 5, 32, 200)
    assert rel_err(got, reference.qlinear(x.float(), pw)) < 5e-3
    with forced("cuda", "gemm"):
        assert rel_err(ops.qlinear(x, pw), reference.qlinear(x.float(), pw)) < 5e-3
