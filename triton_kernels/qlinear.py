"""Fused decode-and-multiply over the TritonLayout (layout.py): y = T(x) @ W^T + bias.

One kernel, `_qlinear_kernel`, reads the bit planes of the K-major int32 layout directly (no
dequantized weight in memory) and covers both paths by its constexpr BLOCK_M:

- GEMV / split-K ("gemv", decoder steps, M <= 16): BLOCK_M = 1 multiplies the decoded
  [BLOCK_K, BLOCK_N] weight tile by the x vector with FMAs into a [BLOCK_K, BLOCK_N] fp32 accumulator
  reduced once at the end; M = 2..16 uses a BLOCK_M = 16 tl.dot tile. The K tiles are split over a
  second grid axis (SPLIT_K programs per output tile) accumulating with fp32 atomics.
- GEMM ("gemm"): BLOCK_M >= 16 tiles with grouped program order; the weight tile is decoded into
  registers, dequantized in fp32, cast to x's dtype (fp16/bf16; fp32 x uses a tf32 tl.dot) and fed to
  tl.dot with the x tile.

Decoding: for the plane of width w starting at word `off`, code bits of element k are
(qweight[off + (k*w >> 5), n] >> ((k*w) & 31)) & (2^w - 1); the planes are OR-ed with their shifts
(low bits first). Each loaded word is reused by the 32/w consecutive k it holds (same address,
served by L1). A K tile never straddles a group (BLOCK_K divides the group size), so the scale and
zero of a tile are one [BLOCK_N] vector each: w = (code - zero) * scale in fp32, exactly the reference.

Prologue, applied to the x tile as it is loaded (fp32): x *= input_mul[k]; then the activation
fake-quant q = clamp(round_half_even(x / s + z), 0, maxq), x = (q - z) * s with (s, z) read from a
device tensor: `act_qparams` float32 [2] for a static per-tensor range (row stride 0) or the [M, 2]
per-token ranges written by `_act_range_kernel` (dynamic; one program per row over the full K), so
there is never a host sync. Division is IEEE (div_rn) and rounding is half-to-even by the 1.5*2^23
trick, so the transform agrees bit for bit with quasr.kernels.reference.input_transform on the CPU.
Columns k >= in_features are zero (masked loads): padded codes contribute nothing.
"""

from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from quasr.format import plane_widths

from . import configs as _configs
from .aot import AOTVariant
from .layout import TritonLayout

GEMV_MAX_M = 16
GROUP_M = 8
_MAGIC = 12582912.0  # 1.5 * 2^23: v + MAGIC - MAGIC rounds v (|v| < 2^22) to the nearest even integer


# ----------------------------------------------------------------------------------------- kernels --
@triton.jit
def _round_half_even(v):
    return (v + 12582912.0) - 12582912.0


@triton.jit
def _fake_quant(x, s, z, maxq):
    v = tl.math.div_rn(x, s) + z
    v = tl.minimum(tl.maximum(v, 0.0), maxq)  # clamp before rounding: same result, keeps |v| small
    return (_round_half_even(v) - z) * s


@triton.jit
def _plane(qw_ptr, word_off, k0, offs_n, n_ok, N, W: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """Codes (this plane's bits) of k0 .. k0+BLOCK_K-1 for the columns offs_n: [BLOCK_K, BLOCK_N] int32.
    Loads the R = BLOCK_K*W/32 words of each column once and expands each into its 32/W fields."""
    R: tl.constexpr = BLOCK_K * W // 32
    P: tl.constexpr = 32 // W
    rows = word_off + ((k0 * W) >> 5) + tl.arange(0, R)
    words = tl.load(qw_ptr + rows[:, None] * N + offs_n[None, :], mask=n_ok[None, :], other=0)  # [R, BLOCK_N]
    shifts = tl.arange(0, P) * W
    fields = (words[:, None, :] >> shifts[None, :, None]) & ((1 << W) - 1)  # [R, P, BLOCK_N], k = r*P + p
    return tl.reshape(fields, [BLOCK_K, BLOCK_N])


@triton.jit
def _decode(qw_ptr, off1, off2, k0, offs_n, n_ok, N, W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr,
            BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    q = _plane(qw_ptr, 0, k0, offs_n, n_ok, N, W0, BLOCK_K, BLOCK_N)
    if W1 > 0:
        q = q | (_plane(qw_ptr, off1, k0, offs_n, n_ok, N, W1, BLOCK_K, BLOCK_N) << W0)
    if W2 > 0:
        q = q | (_plane(qw_ptr, off2, k0, offs_n, n_ok, N, W2, BLOCK_K, BLOCK_N) << (W0 + W1))
    return q


@triton.jit
def _load_x(x_ptr, inmul_ptr, rows, cols, row_ok, col_ok, stride_xm, a_s, a_z, act_maxq,
            HAS_INMUL: tl.constexpr, HAS_ACT: tl.constexpr):
    """The transformed x tile, fp32, in the (broadcast) shape of rows x cols."""
    ok = row_ok & col_ok
    x = tl.load(x_ptr + rows * stride_xm + cols, mask=ok, other=0.0).to(tl.float32)
    if HAS_INMUL:
        x = x * tl.load(inmul_ptr + cols, mask=col_ok, other=0.0)
    if HAS_ACT:
        x = _fake_quant(x, a_s, a_z, act_maxq)
        x = tl.where(ok, x, 0.0)
    return x


@triton.jit
def _qlinear_kernel(
    x_ptr, qw_ptr, scales_ptr, zeros_ptr, bias_ptr, inmul_ptr, act_ptr, out_ptr,
    M, N, K, KP, GROUP, stride_xm, act_stride, act_maxq, tiles_per_split,
    W0: tl.constexpr, W1: tl.constexpr, W2: tl.constexpr, SYM: tl.constexpr,
    HAS_BIAS: tl.constexpr, HAS_INMUL: tl.constexpr, HAS_ACT: tl.constexpr, ATOMIC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_k = tl.program_id(1)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    if BLOCK_M == 1:
        pid_m = pid // num_pid_n
        pid_n = pid % num_pid_n
    else:  # grouped order: GROUP_M row tiles share the weight tiles they read, for L2 reuse
        num_pid_m = tl.cdiv(M, BLOCK_M)
        in_group = GROUP_M * num_pid_n
        first_m = (pid // in_group) * GROUP_M
        size_m = tl.minimum(num_pid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % in_group) % size_m
        pid_n = (pid % in_group) // size_m

    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = offs_n < N
    off1 = (KP * W0) >> 5
    off2 = (KP * (W0 + W1)) >> 5
    t0 = pid_k * tiles_per_split
    t1 = tl.minimum(t0 + tiles_per_split, KP // BLOCK_K)
    ZP: tl.constexpr = 1 << (W0 + W1 + W2 - 1)

    # rows: [BLOCK_M, 1] for the dot tiles; [1, 1] for the FMA GEMV, whose x tile is a [BLOCK_K, 1]
    # column (a 1-element block rather than a scalar, which the interpreter cannot mask with)
    if BLOCK_M == 1:
        rows = (pid_m + tl.arange(0, 1))[None, :]
    else:
        rows = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M))[:, None]
    row_ok = rows < M
    a_s = 1.0
    a_z = 0.0
    if HAS_ACT:
        a_s = tl.load(act_ptr + rows * act_stride, mask=row_ok, other=1.0)
        a_z = tl.load(act_ptr + rows * act_stride + 1, mask=row_ok, other=0.0)

    if BLOCK_M == 1:
        acc2 = tl.zeros([BLOCK_K, BLOCK_N], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for t in range(t0, t1):
        k0 = t * BLOCK_K
        offs_k = k0 + tl.arange(0, BLOCK_K)
        g = k0 // GROUP
        s = tl.load(scales_ptr + g * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
        q = _decode(qw_ptr, off1, off2, k0, offs_n, n_ok, N, W0, W1, W2, BLOCK_K, BLOCK_N).to(tl.float32)
        if SYM:
            w = (q - ZP) * s[None, :]
        else:
            z = tl.load(zeros_ptr + g * N + offs_n, mask=n_ok, other=0.0).to(tl.float32)
            w = (q - z[None, :]) * s[None, :]
        if BLOCK_M == 1:
            cols = offs_k[:, None]
            x = _load_x(x_ptr, inmul_ptr, rows, cols, row_ok, cols < K, stride_xm, a_s, a_z, act_maxq,
                        HAS_INMUL, HAS_ACT)
            acc2 += x * w
        else:
            cols = offs_k[None, :]
            x = _load_x(x_ptr, inmul_ptr, rows, cols, row_ok, cols < K, stride_xm, a_s, a_z, act_maxq,
                        HAS_INMUL, HAS_ACT)
            if x_ptr.dtype.element_ty == tl.float32:
                acc = tl.dot(x, w, acc, input_precision="tf32")
            else:
                acc = tl.dot(x.to(x_ptr.dtype.element_ty), w.to(x_ptr.dtype.element_ty), acc)

    if BLOCK_M == 1:
        acc = tl.sum(acc2, axis=0)[None, :]
    out_ptrs = out_ptr + rows * N + offs_n[None, :]
    out_ok = row_ok & n_ok[None, :]
    if HAS_BIAS:
        b = tl.load(bias_ptr + offs_n, mask=n_ok & ((offs_n * 0 + pid_k) == 0), other=0.0)  # split 0 adds it
        acc += b[None, :]
    if ATOMIC:
        tl.atomic_add(out_ptrs, acc, mask=out_ok, sem="relaxed")
    else:
        tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=out_ok)


@triton.jit
def _act_range_kernel(x_ptr, inmul_ptr, out_ptr, K, stride_xm, maxq,
                      SYM: tl.constexpr, HAS_INMUL: tl.constexpr, BLOCK_K: tl.constexpr):
    """Per-token (scale, zero) of quasr.grid.fake_quant_tokens over the transformed row, into
    out[row] (float32 [M, 2]). Masked columns read 0, which the range contains anyway."""
    row = tl.program_id(0)
    lo = tl.zeros([BLOCK_K], dtype=tl.float32)
    hi = tl.zeros([BLOCK_K], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        offs = k0 + tl.arange(0, BLOCK_K)
        ok = offs < K
        x = tl.load(x_ptr + row * stride_xm + offs, mask=ok, other=0.0).to(tl.float32)
        if HAS_INMUL:
            x = x * tl.load(inmul_ptr + offs, mask=ok, other=0.0)
        lo = tl.minimum(lo, x)
        hi = tl.maximum(hi, x)
    lo = tl.min(lo, axis=0)
    hi = tl.max(hi, axis=0)
    if SYM:
        half = (maxq + 1.0) * 0.5
        scale = tl.maximum(tl.math.div_rn(tl.maximum(-lo, hi), half - 1.0), 1e-12)
        zero = half
    else:
        scale = tl.maximum(tl.math.div_rn(hi - lo, maxq), 1e-12)
        zero = tl.minimum(tl.maximum(_round_half_even(tl.math.div_rn(-lo, scale)), 0.0), maxq)
    tl.store(out_ptr + row * 2, scale)
    tl.store(out_ptr + row * 2 + 1, zero)


# ---------------------------------------------------------------------------------------- the mode --
# Triton decides compiled (JITFunction) or interpreted (InterpretedFunction) once per process, when
# triton and this module are imported, from TRITON_INTERPRET (triton.language's own helpers such as
# tl.cdiv and tl.sum are decorated then too), so the two cannot be mixed in one process.


def interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_interpreted() -> bool:
    """Whether this process's kernels are the interpreter's (TRITON_INTERPRET=1 at import)."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_qlinear_kernel, InterpretedFunction)


def mode_consistent() -> bool:
    """Whether triton.language, these kernels and TRITON_INTERPRET agree (else nothing can run)."""
    from triton.runtime.interpreter import InterpretedFunction

    lang = isinstance(tl.cdiv, InterpretedFunction)
    return lang == kernels_interpreted() == interpreted()


def kernel(name: str):
    k = globals()[name]
    if not mode_consistent():
        raise RuntimeError(
            "TRITON_INTERPRET changed after triton was imported (it is read once, at import): set "
            "TRITON_INTERPRET=1 before the first `import triton` to run the kernels on the CPU")
    return k


# ------------------------------------------------------------------------------------------ launch --
_FLOAT = (torch.float16, torch.bfloat16, torch.float32)
_DUMMY: dict = {}


def _dummy(device) -> torch.Tensor:
    key = str(device)
    if key not in _DUMMY:
        _DUMMY[key] = torch.zeros(2, dtype=torch.float32, device=device)
    return _DUMMY[key]


def _sm_count(device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 132


def _planes_constexpr(bits: int) -> tuple[int, int, int]:
    w = tuple(plane_widths(bits)) + (0, 0)
    return w[0], w[1], w[2]


def _check_inputs(x, layout, bias, input_mul, act_bits, act_qparams, path):
    if not isinstance(layout, TritonLayout):
        raise ValueError(f"layout must be a TritonLayout (triton_kernels.repack(packed_weight)), got {type(layout).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() < 1:
        raise ValueError("x must be a tensor [..., in_features]")
    if x.dtype not in _FLOAT:
        raise ValueError(f"x must be float16, bfloat16 or float32, got {x.dtype}")
    if x.shape[-1] != layout.in_features:
        raise ValueError(f"x has {x.shape[-1]} features, the layer {layout.in_features}")
    if x.device != layout.qweight.device:
        raise ValueError(f"x is on {x.device}, the layout on {layout.qweight.device}")
    if x.device.type != "cuda" and not interpreted():
        raise ValueError(f"the Triton kernels run on CUDA devices (or under TRITON_INTERPRET=1), not {x.device}")
    if path not in ("auto", "gemv", "gemm"):
        raise ValueError(f"path must be 'auto', 'gemv' or 'gemm', got {path!r}")
    if bias is not None:
        if not isinstance(bias, torch.Tensor) or tuple(bias.shape) != (layout.n,) or not bias.is_floating_point():
            raise ValueError(f"bias must be a float tensor [{layout.n}], got {getattr(bias, 'shape', bias)}")
        if bias.device != x.device:
            raise ValueError(f"bias is on {bias.device}, x on {x.device}")
    if input_mul is not None:
        if (not isinstance(input_mul, torch.Tensor) or tuple(input_mul.shape) != (layout.in_features,)
                or not input_mul.is_floating_point()):
            raise ValueError(f"input_mul must be a float tensor [{layout.in_features}], got {getattr(input_mul, 'shape', input_mul)}")
        if input_mul.device != x.device:
            raise ValueError(f"input_mul is on {input_mul.device}, x on {x.device}")
    if not isinstance(act_bits, int) or isinstance(act_bits, bool) or not (act_bits == 0 or 2 <= act_bits <= 8):
        raise ValueError(f"act_bits must be 0 (off) or 2..8, got {act_bits!r}")
    if act_qparams is not None:
        if not act_bits:
            raise ValueError("act_qparams given without act_bits")
        if (not isinstance(act_qparams, torch.Tensor) or act_qparams.dtype != torch.float32
                or act_qparams.numel() != 2):
            raise ValueError("act_qparams must be a float32 tensor [2] = (scale, zero) on x's device")
        if act_qparams.device != x.device:
            raise ValueError(f"act_qparams is on {act_qparams.device}, x on {x.device}")


def resolve_config(path: str, m: int, layout: TritonLayout, dtype: torch.dtype, device, config=None) -> dict:
    if config is not None:
        return _configs.check_config(config)
    if (os.environ.get("QUASR_TRITON_AUTOTUNE", "0") == "1" and not interpreted()
            and getattr(device, "type", "") == "cuda"):
        return None  # the caller tunes
    return _configs.default_config(path, m, layout.bits)


def _plan(cfg: dict, m: int, layout: TritonLayout, device) -> dict:
    """Launch parameters for one call: effective BLOCK_K, split, grid."""
    block_k = math.gcd(cfg["BLOCK_K"], layout.group_size)
    n_tiles = layout.k_padded // block_k
    bm, bn = cfg["BLOCK_M"], cfg["BLOCK_N"]
    mn_programs = (m if bm == 1 else triton.cdiv(m, bm)) * triton.cdiv(layout.n, bn)
    split = cfg["SPLIT_K"]
    if split == 0:  # about two waves of programs, at most 16 splits
        split = max(1, min(16, triton.cdiv(2 * _sm_count(device), mn_programs)))
    split = max(1, min(split, n_tiles))
    per = triton.cdiv(n_tiles, split)
    split = triton.cdiv(n_tiles, per)
    return {"BLOCK_K": block_k, "split": split, "per": per, "grid": (mn_programs, split)}


def _launch(x2, layout, bias, input_mul, act_buf, act_stride, act_bits, cfg, out_dtype):
    m, k = x2.shape
    dev = x2.device
    p = _plan(cfg, m, layout, dev)
    atomic = p["split"] > 1
    out = torch.zeros(m, layout.n, dtype=torch.float32, device=dev) if atomic else \
        torch.empty(m, layout.n, dtype=out_dtype, device=dev)
    dummy = _dummy(dev)
    w0, w1, w2 = _planes_constexpr(layout.bits)
    kernel("_qlinear_kernel")[p["grid"]](
        x2, layout.qweight, layout.scales, layout.scales if layout.zeros is None else layout.zeros,
        dummy if bias is None else bias, dummy if input_mul is None else input_mul,
        dummy if act_buf is None else act_buf, out,
        m, layout.n, k, layout.k_padded, layout.group_size, x2.stride(0), act_stride,
        float((1 << act_bits) - 1) if act_bits else 1.0, p["per"],
        W0=w0, W1=w1, W2=w2, SYM=layout.zeros is None, HAS_BIAS=bias is not None,
        HAS_INMUL=input_mul is not None, HAS_ACT=act_buf is not None, ATOMIC=atomic,
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], BLOCK_K=p["BLOCK_K"], GROUP_M=GROUP_M,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )
    return out if out.dtype == out_dtype else out.to(out_dtype)


def act_ranges(x2: torch.Tensor, input_mul: torch.Tensor | None, bits: int, symmetric: bool) -> torch.Tensor:
    """Per-token (scale, zero) float32 [M, 2] of fake_quant_tokens(x2 * input_mul), on the device."""
    m, k = x2.shape
    out = torch.empty(m, 2, dtype=torch.float32, device=x2.device)
    if m:
        block = min(1024, max(32, triton.next_power_of_2(k)))
        kernel("_act_range_kernel")[(m,)](x2, _dummy(x2.device) if input_mul is None else input_mul, out, k, x2.stride(0),
                                float((1 << bits) - 1), SYM=bool(symmetric), HAS_INMUL=input_mul is not None,
                                BLOCK_K=block, num_warps=4)
    return out


def qlinear(x: torch.Tensor, layout: TritonLayout, bias: torch.Tensor | None = None,
            input_mul: torch.Tensor | None = None, act_bits: int = 0, act_symmetric: bool = False,
            act_qparams: torch.Tensor | None = None, path: str = "auto", config: dict | None = None) -> torch.Tensor:
    """y[..., N] = T(x) @ W^T + bias in x's dtype (fp32 accumulation), W the layout's weight.

    T: x * input_mul (float32 [K]), then, with act_bits, the activation fake-quant: static per-tensor
    with act_qparams (float32 [2] = scale, zero on x's device), else per-token dynamic (act_symmetric
    picks the signed grid). path: "gemv" (split-K, small M), "gemm" (tl.dot tiles), "auto" (gemv for
    M <= 16). config: a block config dict overriding configs.json (keys configs.CONFIG_KEYS).
    """
    _check_inputs(x, layout, bias, input_mul, act_bits, act_qparams, path)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m, k = x2.shape
    if m == 0:
        return x.new_empty(*lead, layout.n)
    if max(x2.numel(), m * layout.n, layout.qweight.numel()) >= 2**31:
        raise ValueError("tensor too large for the kernels' int32 indexing")
    if path == "auto":
        path = "gemv" if m <= GEMV_MAX_M else "gemm"
    if bias is not None and bias.dtype != torch.float32:
        bias = bias.to(torch.float32)
    if input_mul is not None:
        input_mul = input_mul.to(torch.float32).contiguous()
    act_buf, act_stride = None, 0
    if act_bits:
        if act_qparams is not None:
            act_buf = act_qparams.reshape(2).contiguous()
        else:
            act_buf, act_stride = act_ranges(x2, input_mul, act_bits, act_symmetric), 2
    cfg = resolve_config(path, m, layout, x.dtype, x.device, config)
    if cfg is None:
        cfg = _autotuned(path, x2, layout, bias, input_mul, act_buf, act_stride, act_bits)
    y = _launch(x2, layout, bias, input_mul, act_buf, act_stride, act_bits, cfg, x.dtype)
    return y.reshape(*lead, layout.n)


# ---------------------------------------------------------------------------------------- autotune --
_TUNED: dict = {}


def _autotuned(path, x2, layout, bias, input_mul, act_buf, act_stride, act_bits) -> dict:
    """Best config for this shape from the on-disk cache, else benchmark the candidates once
    (triton.testing.do_bench) and record the winner. Real GPUs only."""
    m, k = x2.shape
    key = _configs.autotune_key(path, m, layout.n, k, layout.bits, layout.group_size, layout.zeros is None,
                                str(x2.dtype).replace("torch.", ""), torch.cuda.get_device_name(x2.device))
    if key in _TUNED:
        return _TUNED[key]
    cached = _configs.load_cache().get(key)
    if cached is not None:
        try:
            _TUNED[key] = _configs.check_config(cached)
            return _TUNED[key]
        except ValueError:
            pass
    best, best_t = None, float("inf")
    cands = _configs.candidates(path, m) or [_configs.default_config(path, m, layout.bits)]
    for cfg in cands:
        try:
            t = triton.testing.do_bench(
                lambda: _launch(x2, layout, bias, input_mul, act_buf, act_stride, act_bits, cfg, x2.dtype),
                warmup=5, rep=20)
        except Exception:  # a candidate that does not compile/fit on this GPU (e.g. shared memory)
            continue
        if t < best_t:
            best, best_t = cfg, t
    if best is None:
        best = _configs.default_config(path, m, layout.bits)
    _TUNED[key] = best
    _configs.store_cache(key, best)
    return best


# ---------------------------------------------------------------------------------------------- AOT --
_DT = {"fp16": "*fp16", "bf16": "*bf16"}
# What the JIT sees at run time for ordinary layers (torch allocations are 16-byte aligned; N, K, the
# strides and group sizes are multiples of 16): it then adds tt.divisibility=16 to these arguments,
# which is what lets it vectorize loads. Compile the AOT variants with the same hints
# (ASTSource(..., attrs=compile_attrs(variant))) or the register counts are not the runtime ones.
_DIVISIBLE = ("x_ptr", "qw_ptr", "scales_ptr", "zeros_ptr", "bias_ptr", "inmul_ptr", "act_ptr", "out_ptr",
              "N", "K", "KP", "GROUP", "stride_xm")


def compile_attrs(variant) -> dict:
    """ASTSource attrs {(arg index,): [["tt.divisibility", 16]]} for a variant's divisible arguments."""
    names = list(variant.fn.arg_names)
    return {(names.index(a),): [["tt.divisibility", 16]] for a in variant.attrs.get("divisibility_16", ())}


def _qlinear_signature(dtype: str, atomic: bool) -> dict:
    sig = {"x_ptr": _DT[dtype], "qw_ptr": "*i32", "scales_ptr": "*fp16", "zeros_ptr": "*fp16", "bias_ptr": "*fp32",
           "inmul_ptr": "*fp32", "act_ptr": "*fp32", "out_ptr": "*fp32" if atomic else _DT[dtype]}
    for a in ("M", "N", "K", "KP", "GROUP", "stride_xm", "act_stride"):
        sig[a] = "i32"
    sig["act_maxq"] = "fp32"
    sig["tiles_per_split"] = "i32"
    for c in ("W0", "W1", "W2", "SYM", "HAS_BIAS", "HAS_INMUL", "HAS_ACT", "ATOMIC", "BLOCK_M", "BLOCK_N", "BLOCK_K",
              "GROUP_M"):
        sig[c] = "constexpr"
    return sig


def _rule_name(rule) -> str:
    lo, hi = rule["m"]
    return f"{rule['path']}_m{lo}-{'' if hi is None else hi}"


def aot_variants(full: bool = False) -> list[AOTVariant]:
    """The shipped configurations, for ahead-of-time compilation (sm_80/sm_90) and spill checks.

    Default list (144): every configs.json rule x bits 2..8 x sym/asym x fp16/bf16 with the plain
    prologue; the prologues (input_mul, act-quant, both) for every rule x dtype at 7-bit asymmetric
    (three planes plus zeros: the most registers); and the per-token range kernel (sym/asym x input_mul
    x dtype). full=True lists every prologue for every bits/sym/dtype (456). Compiled with
    HAS_BIAS=True (the bias only adds an epilogue load); group size is a runtime int (BLOCK_K is cut to
    gcd(BLOCK_K, group) at run time, so g32 runs BLOCK_K=32 builds of the 64-deep rules); gemv rules
    are compiled with ATOMIC (split-K), gemm rules without. Compile with attrs=compile_attrs(variant):
    the tt.divisibility=16 hints the JIT adds at run time for aligned tensors and N, K, strides and
    groups that are multiples of 16 (without them loads are not vectorized and registers differ).
    """
    if kernels_interpreted():
        raise RuntimeError("aot_variants() needs the compiled kernels: a process without TRITON_INTERPRET=1")
    out = []
    rules = _configs.shipped()["defaults"]
    prologues = {"none": (False, False), "inmul": (True, False), "act": (False, True), "inmul_act": (True, True)}
    for rule in rules:
        cfg = rule["config"]
        atomic = rule["path"] == "gemv" and cfg["SPLIT_K"] != 1
        for bits in range(2, 9):
            w0, w1, w2 = _planes_constexpr(bits)
            for sym in (True, False):
                for dtype in ("fp16", "bf16"):
                    for pname, (inmul, act) in prologues.items():
                        if not full and pname != "none" and not (bits == 7 and not sym):
                            continue
                        const = {"W0": w0, "W1": w1, "W2": w2, "SYM": sym, "HAS_BIAS": True, "HAS_INMUL": inmul,
                                 "HAS_ACT": act, "ATOMIC": atomic, "BLOCK_M": cfg["BLOCK_M"],
                                 "BLOCK_N": cfg["BLOCK_N"], "BLOCK_K": cfg["BLOCK_K"], "GROUP_M": GROUP_M}
                        name = (f"qlinear_{_rule_name(rule)}_b{bits}_{'sym' if sym else 'asym'}_{dtype}_{pname}")
                        out.append(AOTVariant(
                            name=name, fn=_qlinear_kernel, signature=_qlinear_signature(dtype, atomic), constexprs=const,
                            num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                            attrs={"kernel": "qlinear", "path": rule["path"], "m": list(rule["m"]), "bits": bits,
                                   "symmetric": sym, "dtype": dtype, "prologue": pname, "split_k": atomic,
                                   "config": dict(cfg), "group": "runtime",
                                   "divisibility_16": list(_DIVISIBLE)}))
    for dtype in ("fp16", "bf16"):
        for sym in (True, False):
            for inmul in (False, True):
                sig = {"x_ptr": _DT[dtype], "inmul_ptr": "*fp32", "out_ptr": "*fp32", "K": "i32", "stride_xm": "i32",
                       "maxq": "fp32", "SYM": "constexpr", "HAS_INMUL": "constexpr", "BLOCK_K": "constexpr"}
                out.append(AOTVariant(
                    name=f"act_range_{'sym' if sym else 'asym'}_{dtype}{'_inmul' if inmul else ''}",
                    fn=_act_range_kernel, signature=sig, constexprs={"SYM": sym, "HAS_INMUL": inmul, "BLOCK_K": 1024},
                    num_warps=4, num_stages=1,
                    attrs={"kernel": "act_range", "symmetric": sym, "dtype": dtype,
                           "prologue": "inmul" if inmul else "none",
                           "divisibility_16": ["x_ptr", "inmul_ptr", "out_ptr", "K", "stride_xm"]}))
    return out
