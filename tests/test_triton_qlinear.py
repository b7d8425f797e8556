"""triton_kernels qlinear against quasr.kernels.reference, on the CPU under the Triton interpreter
(TRITON_INTERPRET=1, set here when there is no CUDA device) or on a GPU.

The interpreter decides once per process, when triton is imported. If triton was already imported
in compiled mode by an earlier test module on a machine without CUDA, this file runs itself in a
subprocess with TRITON_INTERPRET=1 instead (test_in_subprocess).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
HAS_CUDA = torch.cuda.is_available()
if not HAS_CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")
_TRITON_WAS_IMPORTED = "triton" in sys.modules

triton = pytest.importorskip("triton")

try:  # the installed package ships it as quasr.triton_kernels; the repository keeps it at the top
    import quasr.triton_kernels as tk
except ImportError:
    sys.path.insert(0, str(ROOT))
    import triton_kernels as tk

from quasr.format import PackedWeight, pack_codes, resolve_group_size, unpack_codes  # noqa: E402
from quasr.kernels.reference import ActQuant, input_transform  # noqa: E402
from quasr.kernels.reference import qlinear as ref_qlinear  # noqa: E402
from quasr.quantize import rtn_quantize  # noqa: E402

import importlib  # noqa: E402

C = importlib.import_module(tk.__name__ + ".configs")
Q = sys.modules[tk.__name__ + ".qlinear"] if tk.AVAILABLE else None
DEV = "cuda" if HAS_CUDA else "cpu"
INTERP = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Wrong mode for this process (triton imported compiled, no GPU): rerun the file in a subprocess.
WRONG_MODE = tk.AVAILABLE and not Q.mode_consistent() or (not HAS_CUDA and not INTERP)
needs_mode = pytest.mark.skipif(WRONG_MODE, reason="triton imported in compiled mode without a GPU: see test_in_subprocess")


@pytest.mark.skipif(not WRONG_MODE or os.environ.get("_QUASR_TRITON_SUBPROCESS") == "1",
                    reason="this process runs the kernels directly")
def test_in_subprocess():
    env = dict(os.environ, TRITON_INTERPRET="1", _QUASR_TRITON_SUBPROCESS="1")
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", __file__],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


# ---------------------------------------------------------------------------------------- helpers --
def make(bits, group, sym, n, k, seed=0, dtype_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g) * dtype_scale
    pw = rtn_quantize(w, bits, group, symmetric=sym, clip="minmax")
    return pw, tk.repack(pw, device=DEV)


def rand_x(m, k, dtype=torch.float32, seed=1, lead=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*(lead or (m,)), k, generator=g)
    return x.to(DEV, dtype)


def act_of(act_bits, act_sym, static, x, input_mul):
    """(ActQuant for the reference, act_qparams for the kernel)."""
    if not act_bits:
        return None, None
    if not static:
        return ActQuant(act_bits, act_sym), None
    from quasr.grid import qparams

    xt = input_transform(x.cpu(), None if input_mul is None else input_mul.cpu(), None)
    s, z = qparams(float(xt.min()) * 0.8, float(xt.max()) * 0.8, act_bits, act_sym)  # some values clip
    s32 = float(torch.tensor(s, dtype=torch.float32))  # what a float32 device tensor holds
    return ActQuant(act_bits, act_sym, s32, z), torch.tensor([s32, z], dtype=torch.float32, device=DEV)


def check(y, x, pw, bias=None, input_mul=None, act=None, path=None):
    """y against the reference, with a bound from the magnitudes of the products: fp32 (interpreter
    exact up to summation order; a GPU tl.dot runs tf32), fp16 and bf16 (x and the weight tile rounded
    to the dot's dtype, the output to x's dtype). On a GPU the reference's division by a Python scalar
    is a reciprocal multiply, so a fake-quant code may flip on a tie: one flip per row is allowed."""
    assert y.dtype == x.dtype and y.shape == (*x.shape[:-1], pw.out_features)
    ref = ref_qlinear(x.cpu().float(), pw, None if bias is None else bias.cpu(),
                      None if input_mul is None else input_mul.cpu(), act).double()
    xt = input_transform(x.cpu(), None if input_mul is None else input_mul.cpu(), act)
    from quasr.format import dequantize

    mag = xt.abs().double().reshape(-1, xt.shape[-1]) @ dequantize(pw).abs().double().T
    mag = mag.reshape(ref.shape)
    eps = {torch.float32: 2e-3 if (HAS_CUDA and path == "gemm") else 1e-5, torch.float16: 3e-3,
           torch.bfloat16: 2e-2}[x.dtype]
    tol = eps * mag + eps * ref.abs() + 1e-5
    if act is not None and HAS_CUDA:
        wmax = dequantize(pw).abs().max().double()
        if act.dynamic:
            lo = xt.reshape(-1, xt.shape[-1]).amin(-1).clamp(max=0)
            hi = xt.reshape(-1, xt.shape[-1]).amax(-1).clamp(min=0)
            step = (hi - lo).double().reshape(*ref.shape[:-1], 1)
        else:
            step = torch.tensor(act.scale, dtype=torch.float64) * ((1 << act.bits) - 1)
        tol = tol + step / ((1 << act.bits) - 1) * wmax
    err = (y.cpu().double() - ref).abs()
    bad = err > tol
    assert not bad.any(), f"{int(bad.sum())} outputs off; max err {float(err.max()):.3g}, at tol {float(tol[bad][0]):.3g}"


# ------------------------------------------------------------------------------------------ layout --
@pytest.mark.parametrize("bits", range(2, 9))
def test_layout_roundtrip(bits):
    for group in (32, 64, 128, -1):
        for sym in (True, False):
            pw = rtn_quantize(torch.randn(9, 200), bits, group, symmetric=sym, clip="minmax")
            lay = tk.repack(pw)
            assert lay.qweight.dtype == torch.int32 and lay.qweight.shape == (lay.row_words, 9)
            assert lay.qweight.is_contiguous() and lay.scales.shape == (lay.groups, 9)
            assert torch.equal(tk.unpack_layout(lay), unpack_codes(pw.packed, bits))
            assert torch.equal(lay.scales.t(), pw.scales) and (lay.zeros is None) == sym
            assert tk.layout_nbytes(lay) == pw.nbytes
            assert lay.widths == tuple(w for w, _ in lay.planes) and sum(lay.widths) == bits


def test_layout_word_addressing():
    # element k of a width-w plane: word off + (k*w >> 5), bit (k*w) & 31, little-endian words
    codes = torch.randint(0, 8, (3, 64), dtype=torch.int32)
    pw = PackedWeight(pack_codes(codes, 3), torch.ones(3, 1, dtype=torch.float16), None, 3, 64, 64)
    lay = tk.repack(pw)
    assert lay.planes == ((2, 0), (1, 4))
    for n in range(3):
        for k in (0, 15, 16, 63):
            lo = (int(lay.qweight[(k * 2) >> 5, n]) >> ((k * 2) & 31)) & 3
            hi = (int(lay.qweight[4 + (k >> 5), n]) >> (k & 31)) & 1
            assert lo | hi << 2 == int(codes[n, k])


# --------------------------------------------------------------------------- widths x groups x sym --
@needs_mode
@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize("group", (32, 64, 128, -1))
def test_widths_groups(bits, group):
    """Every width x group x sym: gemv at M=1 (FMA) and gemm at M=17 (tl.dot), odd N, K=200 padded."""
    for sym in (True, False):
        pw, lay = make(bits, group, sym, 37, 200, seed=bits * 10 + group % 7)
        for m, path in ((1, "gemv"), (17, "gemm")):
            x = rand_x(m, 200, seed=m)
            check(tk.qlinear(x, lay, path=path), x, pw, path=path)


# ------------------------------------------------------------------------------------- prologues --
PROLOGUES = [  # (input_mul, act_bits, act_sym, static)
    (False, 0, False, False), (True, 0, False, False),
    (False, 8, False, True), (True, 4, True, True),
    (False, 8, False, False), (True, 3, False, False), (False, 4, True, False), (True, 2, True, False),
]


@needs_mode
@pytest.mark.parametrize("bits,group,sym", [(3, 64, False), (4, 128, True), (8, -1, False)])
@pytest.mark.parametrize("prologue", PROLOGUES, ids=lambda p: f"im{int(p[0])}_a{p[1]}{'s' if p[2] else 'a'}{'st' if p[3] else 'dyn'}")
def test_prologues(bits, group, sym, prologue):
    use_mul, act_bits, act_sym, static = prologue
    pw, lay = make(bits, group, sym, 48, 200, seed=bits)
    g = torch.Generator().manual_seed(7)
    input_mul = (torch.rand(200, generator=g) * 2 + 0.25).to(DEV) if use_mul else None
    bias = torch.randn(48, generator=g).to(DEV)
    for m, path in ((3, "gemv"), (40, "gemm")):
        x = rand_x(m, 200, seed=m + 5)
        act, qp = act_of(act_bits, act_sym, static, x, input_mul)
        y = tk.qlinear(x, lay, bias, input_mul, act_bits, act_sym, qp, path)
        check(y, x, pw, bias, input_mul, act, path)


def _identity_layer(k, bits, sym):
    """A layer whose dequantized weight is exactly the identity (codes z+1 on the diagonal, z off)."""
    _, kp = resolve_group_size(-1, k)
    zp = 1 << (bits - 1) if sym else 3
    codes = torch.full((k, kp), zp, dtype=torch.int32)
    codes[torch.arange(k), torch.arange(k)] = zp + 1
    zeros = None if sym else torch.full((k, 1), float(zp), dtype=torch.float16)
    pw = PackedWeight(pack_codes(codes, bits), torch.ones(k, 1, dtype=torch.float16), zeros, bits, kp, k)
    pw.validate()
    return pw


@needs_mode
@pytest.mark.parametrize("act_bits", [2, 3, 4, 5, 8])
def test_prologue_bit_exact(act_bits):
    """Through an identity weight, y is the transformed x itself: the fused input multiply and
    fake-quant (static and dynamic, sym and asym) agree with the reference bit for bit. Exact on the
    interpreter (fp32 throughout); on a GPU only the fp32 FMA GEMV is exact, and the reference divides
    by a Python scalar with a reciprocal there, so the static case is compared at one flip."""
    k = 72  # padded to 96
    pw = _identity_layer(k, 4, sym=act_bits % 2 == 0)
    lay = tk.repack(pw, device=DEV)
    g = torch.Generator().manual_seed(act_bits)
    x = (torch.randn(3, k, generator=g) * 3).to(DEV)
    x[1, :7] = torch.tensor([0.0, -0.0, 1e-9, -5.5, 5.5, 2.5, -2.5])  # zeros, tiny, ties of round()
    input_mul = (torch.rand(k, generator=g) + 0.5).to(DEV)
    paths = (("gemv", 1), ("gemm", 3)) if INTERP else (("gemv", 1),)
    for sym in (True, False):
        for static in (False, True):
            for mul in (None, input_mul):
                act, qp = act_of(act_bits, sym, static, x, mul)
                want = input_transform(x.cpu(), None if mul is None else mul.cpu(), act)
                for path, m in paths:
                    y = tk.qlinear(x[:m], lay, None, mul, act_bits, sym, qp, path).cpu()
                    if INTERP or not static:
                        assert torch.equal(y, want[:m]), (sym, static, mul is not None, path, (y - want[:m]).abs().max())
                    else:
                        assert ((y - want[:m]).abs() <= act.scale * 1.0001).all()
    # exact ties: a power-of-two scale and x / s + z on half-integers (round half to even, not away)
    maxq = (1 << act_bits) - 1
    for sym in (True, False):
        z = float(1 << (act_bits - 1)) if sym else 1.0
        v = torch.arange(k, dtype=torch.float32) % (maxq + 2) - 1.5  # -1.5, -0.5, 0.5, ... past maxq
        xt = ((v - z) * 0.25).reshape(1, k).to(DEV)
        act = ActQuant(act_bits, sym, 0.25, z)
        qp = torch.tensor([0.25, z], dtype=torch.float32, device=DEV)
        want = input_transform(xt.cpu(), None, act)
        y = tk.qlinear(xt, lay, None, None, act_bits, sym, qp, "gemv").cpu()
        assert torch.equal(y, want), (y - want).abs().max()
        assert not torch.equal(want, (torch.floor(v + 0.5).clamp(0, maxq) - z) * 0.25)  # ties do occur


@needs_mode
def test_act_ranges_match_reference():
    from quasr.grid import fake_quant_tokens

    x = rand_x(5, 200, seed=3)
    x[2] = x[2].abs()  # all positive: lo widened to 0
    x[3] = 0.0  # all zero: the 1e-12 floor
    for bits in (2, 4, 8):
        for sym in (True, False):
            r = tk.act_ranges(x, None, bits, sym).cpu()
            # (scale, zero) applied as the reference does reproduces fake_quant_tokens exactly
            q = torch.clamp(torch.round(x.cpu() / r[:, :1] + r[:, 1:]), 0, (1 << bits) - 1)
            assert torch.equal((q - r[:, 1:]) * r[:, :1], fake_quant_tokens(x.cpu(), bits, sym))
            assert (r[:, 0] > 0).all()
            if sym:
                assert (r[:, 1] == 1 << (bits - 1)).all()


# ------------------------------------------------------------------------------- M, dtypes, split --
@needs_mode
@pytest.mark.parametrize("m", [1, 3, 17, 40])
@pytest.mark.parametrize("path", ["gemv", "gemm"])
def test_m_and_paths(m, path):
    pw, lay = make(5, 32, False, 70, 96, seed=m)
    x = rand_x(m, 96, seed=m)
    bias = torch.randn(70).to(DEV)
    check(tk.qlinear(x, lay, bias, path=path), x, pw, bias, path=path)


@needs_mode
@pytest.mark.parametrize("bits,sym", [(2, True), (4, False), (7, False)])
def test_fp16(bits, sym):
    pw, lay = make(bits, 64, sym, 40, 200, seed=bits)
    input_mul = torch.linspace(0.5, 1.5, 200).to(DEV)
    for m, path in ((1, "gemv"), (5, "gemv"), (20, "gemm")):
        x = rand_x(m, 200, torch.float16, seed=m)
        y = tk.qlinear(x, lay, None, input_mul, path=path)
        check(y, x, pw, None, input_mul, path=path)
        act = ActQuant(8, False)
        y = tk.qlinear(x, lay, None, None, 8, False, None, path)
        check(y, x, pw, None, None, act, path)


@needs_mode
def test_bf16():
    """bf16 x. The interpreter's bf16 tl.dot is wrong, so there only the FMA GEMV (M=1) runs."""
    pw, lay = make(4, 128, False, 40, 200, seed=2)
    cases = ((1, "gemv"),) if INTERP else ((1, "gemv"), (5, "gemv"), (33, "gemm"))
    for m, path in cases:
        x = rand_x(m, 200, torch.bfloat16, seed=m)
        check(tk.qlinear(x, lay, path=path), x, pw, path=path)
        act = ActQuant(4, True)
        check(tk.qlinear(x, lay, None, None, 4, True, None, path), x, pw, None, None, act, path)


@needs_mode
def test_split_k_and_configs():
    pw, lay = make(6, 32, False, 50, 256, seed=4)
    bias = torch.randn(50).to(DEV)
    x = rand_x(2, 256, seed=9)
    for cfg in ({"BLOCK_M": 1, "BLOCK_N": 16, "BLOCK_K": 64, "SPLIT_K": 3, "num_warps": 1, "num_stages": 1},
                {"BLOCK_M": 16, "BLOCK_N": 32, "BLOCK_K": 32, "SPLIT_K": 5, "num_warps": 2, "num_stages": 2},
                {"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 128, "SPLIT_K": 1, "num_warps": 4, "num_stages": 2}):
        plan = Q._plan(cfg, 2, lay, x.device)
        assert plan["BLOCK_K"] == 32 and (plan["split"] > 1) == (cfg["SPLIT_K"] > 1)
        check(tk.qlinear(x, lay, bias, config=cfg), x, pw, bias)
        xh = x.half()
        check(tk.qlinear(xh, lay, bias, config=cfg), xh, pw, bias)  # fp32 atomics, then fp16 out


@needs_mode
def test_shapes_and_strides():
    pw, lay = make(4, 32, True, 24, 64, seed=1)
    x3 = rand_x(0, 64, lead=(2, 3))
    y = tk.qlinear(x3, lay)
    assert y.shape == (2, 3, 24)
    check(y, x3, pw)
    wide = rand_x(4, 80)
    xs = wide[:, 8:72]  # row stride 80, unit column stride
    check(tk.qlinear(xs, lay, path="gemm"), xs, pw, path="gemm")
    xt = rand_x(64, 4).t()  # column stride != 1: copied
    check(tk.qlinear(xt, lay), xt, pw)
    assert tk.qlinear(rand_x(0, 64), lay).shape == (0, 24)


@needs_mode
def test_errors():
    pw, lay = make(4, 32, False, 8, 64)
    x = rand_x(2, 64)
    with pytest.raises(ValueError, match="features"):
        tk.qlinear(rand_x(2, 63), lay)
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        tk.qlinear(x.to(torch.float64), lay)
    with pytest.raises(ValueError, match="TritonLayout"):
        tk.qlinear(x, pw)
    with pytest.raises(ValueError, match="bias"):
        tk.qlinear(x, lay, bias=torch.zeros(7, device=DEV))
    with pytest.raises(ValueError, match="input_mul"):
        tk.qlinear(x, lay, input_mul=torch.ones(65, device=DEV))
    with pytest.raises(ValueError, match="act_bits"):
        tk.qlinear(x, lay, act_bits=9)
    with pytest.raises(ValueError, match="act_qparams"):
        tk.qlinear(x, lay, act_bits=8, act_qparams=torch.ones(2, dtype=torch.float64, device=DEV))
    with pytest.raises(ValueError, match="path"):
        tk.qlinear(x, lay, path="blas")
    with pytest.raises(ValueError, match="BLOCK_M"):
        tk.qlinear(x, lay, config={"BLOCK_M": 8, "BLOCK_N": 16, "BLOCK_K": 32, "SPLIT_K": 1, "num_warps": 1,
                                   "num_stages": 1})
    if HAS_CUDA:
        with pytest.raises(ValueError, match="on"):
            tk.qlinear(x.cpu(), lay)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@needs_mode
@settings(max_examples=6, deadline=None, derandomize=True)
@given(n=st.integers(1, 70), k=st.integers(1, 150), m=st.integers(1, 20), bits=st.integers(2, 8),
       group=st.sampled_from([32, 64, 128, -1]), sym=st.booleans(), path=st.sampled_from(["gemv", "gemm"]),
       act=st.sampled_from([0, 3, 8]))
def test_random_shapes(n, k, m, bits, group, sym, path, act):
    pw, lay = make(bits, group, sym, n, k, seed=n * 1000 + k)
    x = rand_x(m, k, seed=m)
    a = ActQuant(act, sym) if act else None
    check(tk.qlinear(x, lay, None, None, act, sym, None, path), x, pw, None, None, a, path)


# ------------------------------------------------------------------------------ configs, autotune --
def test_shipped_configs():
    for path in ("gemv", "gemm"):
        for m in (1, 2, 16, 17, 64, 65, 5000):
            for bits in range(2, 9):
                cfg = C.default_config(path, m, bits)
                assert C.check_config(cfg) == cfg
    assert C.default_config("gemv", 1, 4)["BLOCK_M"] == 1
    assert C.default_config("gemm", 300, 4)["BLOCK_M"] >= 16
    with pytest.raises(ValueError):
        C.check_config({"BLOCK_M": 16})


def test_autotune_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("QUASR_CACHE", str(tmp_path))
    key = C.autotune_key("gemv", 3, 64, 128, 4, 32, True, "float16", "GPU")
    assert "m4" in key and C.load_cache() == {}
    cfg = C.default_config("gemv", 3, 4)
    C.store_cache(key, cfg)
    C.store_cache("other", cfg)
    assert C.load_cache()[key] == cfg and (tmp_path / "triton_autotune.json").exists()
    if tk.AVAILABLE and INTERP:  # never tunes under the interpreter
        monkeypatch.setenv("QUASR_TRITON_AUTOTUNE", "1")
        _, lay = make(4, 32, True, 8, 64)
        assert Q.resolve_config("gemv", 3, lay, torch.float32, torch.device("cpu")) == cfg


_AOT_CHECK = """
import sys
sys.path.insert(0, sys.argv[1])
import triton_kernels as tk
vs = tk.aot_variants()
assert len(vs) <= 150 and len({v.name for v in vs}) == len(vs), len(vs)
for v in vs:
    assert list(v.signature) == list(v.fn.arg_names), v.name
    assert {k for k, t in v.signature.items() if t == "constexpr"} == set(v.constexprs), v.name
    assert set(tk.compile_attrs(v)) <= {(i,) for i in range(len(v.fn.arg_names))}
names = {v.name for v in vs}
for bits in range(2, 9):
    for s in ("sym", "asym"):
        for d in ("fp16", "bf16"):
            for rule in ("gemv_m1-1", "gemv_m2-", "gemm_m1-64", "gemm_m65-"):
                assert f"qlinear_{rule}_b{bits}_{s}_{d}_none" in names, (rule, bits, s, d)
assert len(tk.aot_variants(full=True)) == 456
print(len(vs))
"""


@pytest.mark.skipif(not tk.AVAILABLE, reason="no triton")
def test_aot_variants_list():
    """The AOT list needs the compiled kernels: checked in a process without TRITON_INTERPRET."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", _AOT_CHECK, str(ROOT)], env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert int(r.stdout.split()[-1]) == 144
