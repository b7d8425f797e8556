"""The CUDA kernels' own code run on the host: csrc/cuda/tests/simt_check.cpp compiles the kernel
headers with g++ against a warp simulator (one OS thread per CUDA thread; mma.sync, ldmatrix and
shfl evaluated from the PTX ISA's fragment tables) and runs every kernel (re-tiling, GEMV with
split-K, the fp16 GEMM's cp.async pipeline, activation quantization and prologue, the int8 GEMM's
group folds) on small shapes, checked against the plain-torch reference. No GPU needed; what it
cannot see (timing, asynchronous-copy ordering, the real PTX) is left to tests/test_cuda_kernels.py
on a GPU."""

import ctypes
import shutil
import subprocess

import numpy as np
import pytest
import torch

from quasr.format import PackedWeight, pack_codes, resolve_group_size
from quasr.kernels import cuda_layout, reference
from quasr.kernels.reference import ActQuant
from test_cuda_host import ROOT, tile

SOURCE = ROOT / "csrc" / "cuda" / "tests" / "simt_check.cpp"
PTR = ctypes.c_void_p
I, F = ctypes.c_int, ctypes.c_float


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    cxx = shutil.which("g++")
    if cxx is None:
        pytest.skip("no g++")
    out = tmp_path_factory.mktemp("simt") / "simt.so"
    subprocess.run([cxx, "-O1", "-std=c++20", "-pthread", "-shared", "-fPIC", "-Wall", "-Wno-unknown-pragmas",
                    "-Werror", "-o", str(out), str(SOURCE)], check=True)
    lib = ctypes.CDLL(str(out))
    lib.sim_tile.argtypes = [PTR, ctypes.c_int64, ctypes.c_int64, I, PTR]
    lib.sim_gemv.argtypes = [PTR, I, PTR, PTR, I, I, I, I, I, PTR, PTR, PTR, I]
    lib.sim_gemm_f16.argtypes = [PTR, I, PTR, PTR, I, I, I, I, I, PTR, PTR, I]
    lib.sim_act_quant.argtypes = [PTR, I, I, I, I, PTR, I, I, F, F, PTR, PTR, PTR, PTR]
    lib.sim_act_prologue.argtypes = [PTR, I, I, I, PTR, I, I, F, F, PTR]
    lib.sim_gemm_i8.argtypes = [PTR, PTR, PTR, PTR, I, PTR, PTR, I, I, I, I, PTR, PTR, I]
    return lib


def ptr(t):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def random_packed(n, k, bits, group, zeros_kind, seed):
    gen = torch.Generator().manual_seed(seed)
    g, kp = resolve_group_size(group, k)
    codes = torch.randint(0, 1 << bits, (n, kp), generator=gen, dtype=torch.int32)
    scales = (torch.rand(n, kp // g, generator=gen) * 0.02 + 0.002).half()
    zeros = {"int": lambda: torch.randint(0, 1 << bits, (n, kp // g), generator=gen).half(),
             "frac": lambda: (torch.rand(n, kp // g, generator=gen) * ((1 << bits) - 1)).half(),
             None: lambda: None}[zeros_kind]()
    return PackedWeight(pack_codes(codes, bits), scales, zeros, bits, g, k)


def layout(sim, pw):
    n, kp = pw.out_features, pw.padded_in_features
    words = torch.zeros(-(-n // 32) * 32 * kp * pw.bits // 32, dtype=torch.int32)
    sim.sim_tile(ptr(pw.packed), n, kp, pw.bits, ptr(words))
    params, frac = cuda_layout.f16_params(pw)
    return words, params, frac


def rel_err(got, want):
    return float((got.float() - want.float()).abs().max() / want.float().abs().max().clamp(min=1e-6))


@pytest.mark.parametrize("bits", [2, 3, 5, 8])
def test_the_tiling_kernel_writes_the_host_layout(sim, cuda_host_lib, bits):
    pw = random_packed(40, 96, bits, 32, "int", bits)
    words, _, _ = layout(sim, pw)
    assert np.array_equal(words.numpy().view(np.uint32), tile(cuda_host_lib, pw.packed, bits))


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
@pytest.mark.parametrize("group,zeros,splits", [(32, "int", 1), (-1, None, 3), (64, "frac", 2)])
def test_gemv_matches_the_reference(sim, bits, group, zeros, splits):
    n, k = 40, 200
    pw = random_packed(n, k, bits, group, zeros, bits * 10 + splits)
    words, params, frac = layout(sim, pw)
    kp = pw.padded_in_features
    bias = torch.randn(n)
    for m in (1, 5, 16):
        x = torch.nn.functional.pad(torch.randn(m, k), (0, kp - k)).half()
        out = torch.zeros(m, n, dtype=torch.float16)
        ws = torch.zeros(m, n)
        assert sim.sim_gemv(ptr(x), m, ptr(words), ptr(params), int(frac), n, kp, pw.group_size, bits, ptr(bias),
                            ptr(out), ptr(ws), splits) == 0
        assert rel_err(out, reference.qlinear(x[:, :k].float(), pw, bias)) < 5e-3, m


@pytest.mark.parametrize("bits,m_tiles,group,zeros", [(2, 2, 32, "int"), (3, 4, 64, None), (4, 2, -1, "frac"),
                                                      (5, 2, 32, None), (6, 4, 32, "int"), (7, 2, 64, "int"),
                                                      (8, 2, 32, "int")])
def test_fp16_gemm_matches_the_reference(sim, bits, m_tiles, group, zeros):
    n, k = 150, 200  # 7 super-tiles of K: the last pipeline stage is half empty; N not a multiple of 128
    pw = random_packed(n, k, bits, group, zeros, bits)
    words, params, frac = layout(sim, pw)
    kp = pw.padded_in_features
    bias = torch.randn(n)
    for m in (3, 70):
        x = torch.nn.functional.pad(torch.randn(m, k), (0, kp - k)).half()
        out = torch.zeros(m, n, dtype=torch.float16)
        assert sim.sim_gemm_f16(ptr(x), m, ptr(words), ptr(params), int(frac), n, kp, pw.group_size, bits, ptr(bias),
                                ptr(out), m_tiles) == 0
        assert rel_err(out, reference.qlinear(x[:, :k].float(), pw, bias)) < 5e-3, m


def act_quant(sim, x, kp, group, act, mul=None):
    m, k = x.shape
    e = torch.zeros(m, kp, dtype=torch.int8)
    sx, c = torch.zeros(m), torch.zeros(m)
    esum = torch.zeros(m, kp // group, dtype=torch.int32)
    scale, zero = (0.0, 0.0) if act.dynamic else (act.scale, act.zero)
    assert sim.sim_act_quant(ptr(x), m, k, kp, group, ptr(mul), act.bits, int(act.symmetric), scale, zero, ptr(e),
                             ptr(sx), ptr(c), ptr(esum)) == 0
    return e, sx, c, esum


@pytest.mark.parametrize("act", [ActQuant(8), ActQuant(8, symmetric=True), ActQuant(8, scale=0.04, zero=126.0)])
def test_activation_kernels_match_the_host_check_and_the_reference(sim, cuda_host_lib, act):
    from test_cuda_host import _quantize_rows

    x = torch.randn(3, 300) * 2
    mul = torch.rand(300) + 0.5
    e, sx, c, esum = act_quant(sim, x, 320, 64, act, mul)
    he, hsx, hc, hesum = _quantize_rows(cuda_host_lib, x * mul, 320, 64, act)
    assert np.array_equal(e.numpy(), he) and np.array_equal(esum.numpy(), hesum)
    assert np.array_equal(sx.numpy(), hsx) and np.array_equal(c.numpy(), hc)
    out = torch.zeros(3, 320, dtype=torch.float16)
    scale, zero = (0.0, 0.0) if act.dynamic else (act.scale, act.zero)
    sim.sim_act_prologue(ptr(x), 3, 300, 320, ptr(mul), act.bits, int(act.symmetric), scale, zero, ptr(out))
    assert torch.equal(out[:, :300], reference.input_transform(x, mul, act).half()) and torch.all(out[:, 300:] == 0)


@pytest.mark.parametrize("bits,group,zeros,act", [
    (2, 32, "int", ActQuant(8)), (3, -1, None, ActQuant(8, symmetric=True)), (4, 64, "int", ActQuant(8)),
    (5, 32, None, ActQuant(8, scale=0.03, zero=128.0)), (6, 128, "int", ActQuant(8)), (7, 32, "int", ActQuant(8)),
    (8, -1, "int", ActQuant(8))])
def test_int8_gemm_matches_the_reference(sim, bits, group, zeros, act):
    n, k = 150, 200
    pw = random_packed(n, k, bits, group, zeros, bits)
    words, _, _ = layout(sim, pw)
    params = cuda_layout.i8_params(pw).contiguous()
    kp, g = pw.padded_in_features, pw.group_size
    bias = torch.randn(n)
    for m, m_tiles in ((5, 2), (70, 4)):
        x = torch.randn(m, k)
        e, sx, c, esum = act_quant(sim, x, kp, g, act)
        out = torch.zeros(m, n, dtype=torch.float16)
        assert sim.sim_gemm_i8(ptr(e), ptr(sx), ptr(c), ptr(esum), m, ptr(words), ptr(params), n, kp, g, bits,
                               ptr(bias), ptr(out), m_tiles) == 0
        assert rel_err(out, reference.qlinear(x, pw, bias, act=act)) < 2e-3, m
