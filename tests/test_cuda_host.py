"""The CUDA kernels' layout, decode and integer math verified on the host: csrc/cuda/tile_layout.cuh
and act_quant.cuh (the functions every kernel runs) compiled with g++ into a small library
(csrc/cuda/tests/host_check.cpp), checked bit for bit against quasr.format and the PTX fragment
layouts of mma.m16n8k16 / m16n8k32, every width, group size and zero-point kind. No GPU needed."""

import ctypes
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from quasr.format import PackedWeight, pack_codes, resolve_group_size
from quasr.grid import fake_quant, fake_quant_tokens
from quasr.kernels import cuda_layout, reference
from quasr.kernels.reference import ActQuant

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "csrc" / "cuda" / "tests" / "host_check.cpp"
BITS = [2, 3, 4, 5, 6, 7, 8]
P_U32, P_U8, P_I8, P_F32, P_I32 = (np.ctypeslib.ndpointer(t, flags="C") for t in
                                    (np.uint32, np.uint8, np.int8, np.float32, np.int32))
I64 = ctypes.c_int64


def build_host_library(outdir: Path):
    """host_check.cpp built into outdir with g++, its functions typed for ctypes (the conftest
    fixture `cuda_host_lib` builds it once per session)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    out = outdir / "host_check.so"
    subprocess.run([cxx, "-O1", "-std=c++17", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(out), str(SOURCE)],
                   check=True)
    so = ctypes.CDLL(str(out))
    so.quasr_cuda_tiled_words.restype = I64
    so.quasr_cuda_tiled_words.argtypes = [I64, I64, ctypes.c_int]
    so.quasr_cuda_tile.argtypes = [P_U8, I64, I64, ctypes.c_int, P_U32]
    so.quasr_cuda_fragments.argtypes = [P_U32, I64, I64, ctypes.c_int, P_U32, P_U32]
    so.quasr_cuda_act_positions.argtypes = [P_I32]
    so.quasr_cuda_quantize_rows.argtypes = [P_F32, I64, I64, I64, I64, ctypes.c_int, ctypes.c_int, ctypes.c_float,
                                            ctypes.c_float, P_I8, P_F32, P_F32, P_I32]
    so.quasr_cuda_i8_emulate.argtypes = [P_U32, P_F32, P_I8, P_F32, P_F32, P_I32, I64, I64, I64, I64, ctypes.c_int,
                                         P_F32]
    return so


def tile(lib, packed: torch.Tensor, bits: int) -> np.ndarray:
    n, kp = packed.shape[0], packed.shape[1] * 8 // bits
    out = np.zeros(lib.quasr_cuda_tiled_words(n, kp, bits), dtype=np.uint32)
    lib.quasr_cuda_tile(np.ascontiguousarray(packed.numpy()), n, kp, bits, out)
    return out


def fragments(lib, words, n, kp, bits):
    tiles = -(-n // 32) * (kp // 32)
    f16 = np.zeros((tiles, 32, 16), dtype=np.uint32)
    i8 = np.zeros((tiles, 32, 8), dtype=np.uint32)
    assert lib.quasr_cuda_fragments(words, n, kp, bits, f16, i8) == 0
    return f16, i8


def padded_codes(codes: np.ndarray) -> np.ndarray:
    """[Np, Kp] with zero codes in the padding columns (what the tiling stores there)."""
    n, kp = codes.shape
    out = np.zeros((-(-n // 32) * 32, kp), dtype=np.int64)
    out[:n] = codes
    return out


def random_codes(bits, n, kp, seed):
    return torch.randint(0, 1 << bits, (n, kp), generator=torch.Generator().manual_seed(seed), dtype=torch.int32)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n,kp", [(32, 32), (40, 64), (96, 128), (7, 96)])
def test_fp16_fragments_hold_the_mma_b_layout(cuda_host_lib, bits, n, kp):
    """Register p of a lane is the mma.m16n8k16 B fragment (b0 b1 for r = 0, b2 b3 for r = 1) of
    k-tile p // 8 and n-tile (p // 2) % 4: b_i at row k = 2 (lane % 4) + (i % 2) + 8 (i // 2), column
    lane // 4 (PTX ISA, 'Matrix fragments for mma.m16n8k16'), as fp16 bits of 1024 + code."""
    codes = random_codes(bits, n, kp, bits * 100 + n)
    words = tile(cuda_host_lib, pack_codes(codes, bits), bits)
    assert words.size == -(-n // 32) * 32 * kp * bits // 32  # exactly b bits per (padded) weight
    f16, _ = fragments(cuda_host_lib, words, n, kp, bits)
    full = padded_codes(codes.numpy())
    ks = kp // 32
    tiles, lanes, regs = np.meshgrid(np.arange(f16.shape[0]), np.arange(32), np.arange(16), indexing="ij")
    kt, nt, r = regs // 8, (regs // 2) % 4, regs % 2
    col = tiles // ks * 32 + 8 * nt + lanes // 4
    k = tiles % ks * 32 + 16 * kt + 2 * (lanes % 4) + 8 * r
    assert np.array_equal(f16 & 0xFFFF, 0x6400 + full[col, k])
    assert np.array_equal(f16 >> 16, 0x6400 + full[col, k + 1])


def act_positions(lib) -> np.ndarray:
    out = np.zeros(32, dtype=np.int32)
    lib.quasr_cuda_act_positions(out)
    return out


def test_activation_order_is_a_permutation_within_each_k_half(cuda_host_lib):
    pos = act_positions(cuda_host_lib)
    assert sorted(pos[:16]) == list(range(16)) and sorted(pos[16:]) == list(range(16, 32))


@pytest.mark.parametrize("bits", BITS)
def test_int8_fragments_hold_the_mma_k32_b_layout(cuda_host_lib, bits):
    """Register (nt, j) byte i is B[k][n] of mma.m16n8k32 at position 16 j + 4 (lane % 4) + i, column
    lane // 4: the code of k = act_positions[position], the order the activations are stored in."""
    n, kp = 70, 96
    codes = random_codes(bits, n, kp, bits)
    words = tile(cuda_host_lib, pack_codes(codes, bits), bits)
    _, i8 = fragments(cuda_host_lib, words, n, kp, bits)
    full, perm, ks = padded_codes(codes.numpy()), act_positions(cuda_host_lib), kp // 32
    tiles, lanes, regs, byte = np.meshgrid(np.arange(i8.shape[0]), np.arange(32), np.arange(8), np.arange(4),
                                           indexing="ij")
    nt, j = regs // 2, regs % 2
    col = tiles // ks * 32 + 8 * nt + lanes // 4
    k = tiles % ks * 32 + perm[16 * j + 4 * (lanes % 4) + byte]
    got = (i8[..., None] >> (8 * np.arange(4, dtype=np.uint32))) & 0xFF
    assert np.array_equal(got, full[col, k])


def _quantize_rows(lib, x, kp, group, act: ActQuant):
    m, k = x.shape
    e = np.zeros((m, kp), dtype=np.int8)
    sx, c = np.zeros(m, dtype=np.float32), np.zeros(m, dtype=np.float32)
    esum = np.zeros((m, kp // group), dtype=np.int32)
    lib.quasr_cuda_quantize_rows(np.ascontiguousarray(x.numpy()), m, k, kp, group, act.bits, int(act.symmetric),
                                 act.scale, act.zero, e, sx, c, esum)
    return e, sx, c, esum


@pytest.mark.parametrize("act_bits,symmetric", [(8, False), (8, True), (6, False), (4, True)])
def test_activation_codes_match_fake_quant_tokens_bit_for_bit(cuda_host_lib, act_bits, symmetric):
    x = torch.randn(5, 200, generator=torch.Generator().manual_seed(act_bits)) * 3 + 0.5
    x[1] = x[1].abs()  # an all-positive row: the asymmetric range still holds 0
    kp = 224
    e, sx, c, _ = _quantize_rows(cuda_host_lib, x, kp, 32, ActQuant(act_bits, symmetric))
    perm = act_positions(cuda_host_lib)
    order = (np.arange(kp) // 32 * 32 + perm[np.arange(kp) % 32])
    # e[:, pos] holds x[:, order[pos]]
    dequant = (e.astype(np.float32) + c[:, None]) * sx[:, None]
    back = np.zeros((5, kp), dtype=np.float32)
    back[:, order] = dequant
    torch.testing.assert_close(torch.from_numpy(back[:, :200]), fake_quant_tokens(x, act_bits, symmetric),
                               rtol=1e-6, atol=1e-6)
    assert np.all(back[:, 200:] == 0)  # padding columns are x = 0, exactly


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("group,symmetric,act", [
    (32, False, ActQuant(8)), (64, True, ActQuant(8, symmetric=True)), (-1, False, ActQuant(8)),
    (128, False, ActQuant(8, scale=0.05, zero=128.0))])
def test_int8_gemm_math_matches_the_reference(cuda_host_lib, bits, group, symmetric, act):
    """The int8 kernel's arithmetic (fragments, activation order, per-group fold with the
    cuda_layout.i8_params parameters) against reference.qlinear with the same activation quant."""
    gen = torch.Generator().manual_seed(bits * 7 + (group if group > 0 else 3))
    n, k = 45, 200
    g, kp = resolve_group_size(group, k)
    codes = random_codes(bits, n, kp, bits)
    scales = (torch.rand(n, kp // g, generator=gen) * 0.02 + 0.001).half()
    zeros = None if symmetric else torch.randint(0, 1 << bits, (n, kp // g), generator=gen).half()
    pw = PackedWeight(pack_codes(codes, bits), scales, zeros, bits, g, k)
    x = torch.randn(3, k, generator=gen)
    words = tile(cuda_host_lib, pw.packed, bits)
    params = cuda_layout.i8_params(pw).numpy()
    e, sx, c, esum = _quantize_rows(cuda_host_lib, x, kp, g, act)
    y = np.zeros((3, n), dtype=np.float32)
    cuda_host_lib.quasr_cuda_i8_emulate(words, np.ascontiguousarray(params.reshape(-1)), e, sx, c, esum, 3, n, kp, g, bits, y)
    expect = reference.qlinear(x, pw, act=act)
    torch.testing.assert_close(torch.from_numpy(y), expect, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("symmetric,frac", [(True, False), (False, False), (False, True)])
def test_fp16_params_follow_the_lane_order(symmetric, frac):
    gen = torch.Generator().manual_seed(3)
    n, groups, bits = 40, 3, 4
    scales = torch.rand(n, groups, generator=gen).half()
    zeros = None if symmetric else (torch.randint(0, 16, (n, groups), generator=gen) + (0.25 if frac else 0)).half()
    pw = PackedWeight(torch.zeros(n, 96 * bits // 8, dtype=torch.uint8), scales, zeros, bits, 32, 96)
    params, got_frac = cuda_layout.f16_params(pw)
    assert got_frac == frac and params.shape == (2, groups, 8, 4, 2)
    z = cuda_layout.zero_points(pw)
    for col in range(64):
        ns, local = divmod(col, 32)
        s, zb = params[ns, :, local % 8, local // 8].float().unbind(-1)
        if col >= n:
            assert torch.all(s == 0)
            continue
        assert torch.equal(s, scales[col].float())
        assert torch.equal(zb, z[col] if frac else z[col] + 1024)


def test_static_activation_range_matches_fake_quant(cuda_host_lib):
    x = torch.randn(2, 64, generator=torch.Generator().manual_seed(9))
    act = ActQuant(8, scale=0.02, zero=120.0)
    e, sx, c, _ = _quantize_rows(cuda_host_lib, x, 64, 64, act)
    perm = act_positions(cuda_host_lib)
    order = np.arange(64) // 32 * 32 + perm[np.arange(64) % 32]
    back = np.zeros((2, 64), dtype=np.float32)
    back[:, order] = (e.astype(np.float32) + c[:, None]) * sx[:, None]
    torch.testing.assert_close(torch.from_numpy(back), fake_quant(x, 0.02, 120.0, 8), rtol=1e-6, atol=1e-7)


def test_the_build_says_why_the_cuda_kernels_are_skipped():
    """setup.py on a CPU torch: the CPU build goes on with a note; QUASR_BUILD_CUDA=1 makes it an error."""
    env = dict(os.environ, QUASR_BUILD_CUDA="auto")
    ok = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True, text=True)
    if torch.version.cuda is not None:
        pytest.skip("a CUDA build of torch: setup.py builds the kernels here")
    assert ok.returncode == 0 and "building without the CUDA kernels: torch here is a CPU build" in ok.stderr
    env["QUASR_BUILD_CUDA"] = "1"
    strict = subprocess.run([sys.executable, "setup.py", "--version"], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert strict.returncode != 0 and "QUASR_BUILD_CUDA=1 requires them" in strict.stderr
