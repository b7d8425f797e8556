"""Online rotation of activation rows (QuaRot / SpinQuant) in Triton.

`rotate(x, signs, orders, dense, scale)` computes what `quasr.kernels.reference.rotate` does:
y = (x * signs) (F_0 kron F_1 kron ...) * scale along the last dim, float32 out, F_i the Sylvester
Hadamard matrix of order orders[i] (dense[i] None) or the dense float32 matrix dense[i].

One launch of `_axis_kernel` per factor axis. A row of length K is viewed as [outer, n, inner] for
the axis being applied (n its order), so the whole pass is one GEMM [M*K/n, n] @ F[n, n] whose rows
are the (row, outer, inner) positions, gathered with stride `inner` along the contraction:

* Sylvester axes build their +-1 tile in registers from the indices ((-1)^popcount(i & j)), nothing
  is loaded; orders above 64 are split into balanced Sylvester sub-axes of order <= 64
  (S_{2^(p+q)} = S_{2^p} kron S_{2^q}), so a 4096-wide row costs 2 x 64 multiply-adds per element.
* Dense axes (Paley cores, learned SpinQuant factors) load F in [BLOCK_K, BLOCK_N] tiles; any order.
* The signs multiply is fused into the first pass (which also reads the input dtype), the scale
  into the last; intermediate passes go through float32 buffers on x's device.
* tl.dot precision: a first Sylvester pass over fp16 input multiplies in fp16 (the +-1 tile and the
  signed inputs are exact there, fp32 accumulation); other Sylvester passes split the fp32 operand
  into a tf32 head and tail (two tf32 MMAs, the +-1 tile being exact in tf32), dense passes use
  "tf32x3": about fp32 accuracy on tensor cores either way. bf16 input is converted to fp32 on load
  and takes the fp32 route: the fp16 trick would be exact in bf16 on the GPU too, but Triton 3.9's
  interpreter gets bf16 arithmetic wrong (int -> bf16 casts, negation: it works on the raw 16-bit
  patterns), so CI could not test it.

Nothing is copied between host and device per call: signs and dense factors must already live on
x's device (callers cache them), and the launch plan is integer arithmetic on `orders`.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .aot import AOTVariant

# Largest Sylvester sub-axis one pass applies (larger orders are split into balanced sub-axes).
MAX_SYLVESTER_PASS = 64

# Shipped block configurations: name -> (BLOCK_R, BLOCK_N, BLOCK_K, num_warps, num_stages), picked by
# the axis order (<= 16, <= 32, larger: tiles of 64 outputs). The contraction runs in 16-deep steps
# with no software pipelining: 32/64-deep steps or num_stages > 1 held [64, 64] pointer and operand
# tiles live at once and spilled at 255 registers (bench/triton_compile.md); 16-deep ones stay at
# <= ~145 registers on sm_80 and sm_90. n64 takes 32 rows per program: with 64, ptxas 12.8 (Triton
# 3.7.1) held the fp32 dense pass at 128 registers and spilled 8 bytes on sm_80; 32 rows stay at
# <= ~125. Each pass is memory-bound; occupancy hides the load latency.
CONFIGS = {
    "n16": (64, 16, 16, 4, 1),
    "n32": (64, 32, 16, 4, 1),
    "n64": (32, 64, 16, 4, 1),
}

_TL_DTYPES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}


@triton.jit
def _axis_kernel(x_ptr, y_ptr, f_ptr, signs_ptr, scale, R, N, INNER, K,
                 HADAMARD: tl.constexpr, HAS_SIGNS: tl.constexpr, LOW_PRECISION_DOT: tl.constexpr,
                 BLOCK_R: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """y[r, b] = scale * sum_b' (x[r, b'] * sign) F[b', b] for the R = M*K/N rows of this axis: row r
    is (mo, t) = (r // INNER, r % INNER) and its element b' sits at mo*N*INNER + b'*INNER + t."""
    pid_r = tl.program_id(0)
    pid_n = tl.program_id(1)
    r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)  # R < 2^31 (checked by rotate)
    r_mask = r < R
    base = (r // INNER).to(tl.int64) * (N * INNER) + r % INNER  # element offset of each row's first entry
    x_rows = x_ptr + base  # 64-bit row pointers, 32-bit offsets within a row
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_mask = cols < N
    if HAS_SIGNS:  # the same positions within their row of K (a row of x holds K // N of these rows)
        sbase = (r % (K // N)) // INNER * (N * INNER) + r % INNER
    acc = tl.zeros((BLOCK_R, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, N, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        k_mask = kk < N
        m = r_mask[:, None] & k_mask[None, :]
        a = tl.load(x_rows[:, None] + (kk * INNER)[None, :], mask=m, other=0.0)
        if not LOW_PRECISION_DOT:
            a = a.to(tl.float32)
        if HAS_SIGNS:
            s = tl.load(signs_ptr + (sbase[:, None] + (kk * INNER)[None, :]), mask=m, other=0)
            a = tl.where(s < 0, -a, a)  # exact
        if HADAMARD:
            v = kk[:, None] & cols[None, :]
            v = v ^ (v >> 8)
            v = v ^ (v >> 4)
            v = v ^ (v >> 2)
            v = v ^ (v >> 1)
            f = (1 - 2 * (v & 1)).to(a.dtype)  # (-1)^popcount(i & j), exact in every dtype
            if LOW_PRECISION_DOT:
                acc = tl.dot(a, f, acc)
            else:  # f is exact in tf32: split a into a tf32 head and tail, two MMAs (~fp32 accuracy)
                a_hi = (a.to(tl.uint32, bitcast=True) & 0xFFFFE000).to(tl.float32, bitcast=True)
                acc = tl.dot(a_hi, f, acc, input_precision="tf32")
                acc = tl.dot(a - a_hi, f, acc, input_precision="tf32")
        else:
            f = tl.load(f_ptr + kk[:, None] * N + cols[None, :], mask=k_mask[:, None] & c_mask[None, :], other=0.0)
            acc = tl.dot(a, f, acc, input_precision="tf32x3")
    y_rows = y_ptr + base
    tl.store(y_rows[:, None] + (cols * INNER)[None, :], acc * scale, mask=r_mask[:, None] & c_mask[None, :])


def interpreted() -> bool:
    """Whether these kernels and triton.language both run under the interpreter (TRITON_INTERPRET=1
    when triton was first imported). A mix (the variable set after `import triton`) cannot run."""
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(_axis_kernel, InterpretedFunction) and isinstance(tl.cdiv, InterpretedFunction)


def _check_mode():
    from triton.runtime.interpreter import InterpretedFunction

    if isinstance(_axis_kernel, InterpretedFunction) != isinstance(tl.cdiv, InterpretedFunction):
        raise RuntimeError("TRITON_INTERPRET changed after triton was imported (it is read once, at import): set "
                           "TRITON_INTERPRET=1 before the first `import triton` to run the kernels on the CPU")


def config_for(order: int) -> str:
    return "n16" if order <= 16 else "n32" if order <= 32 else "n64"


def _split_sylvester(order: int) -> list[int]:
    """A Sylvester order 2^k as balanced sub-orders of at most MAX_SYLVESTER_PASS."""
    k = order.bit_length() - 1
    cap = MAX_SYLVESTER_PASS.bit_length() - 1
    passes = max(1, -(-k // cap))
    bits = [k // passes + (1 if i < k % passes else 0) for i in range(passes)]
    return [1 << b for b in bits]


def plan(orders: list[int], dense: list) -> list[tuple[int, int, int, object]]:
    """The passes for a row of K = prod(orders): (outer, order, inner, dense matrix or None), order-1
    Sylvester axes dropped and large Sylvester axes split. Pure integer arithmetic (no device work)."""
    k = math.prod(orders)
    axes: list[tuple[int, object]] = []
    for order, mat in zip(orders, dense):
        if mat is None:
            if order < 1 or order & (order - 1):
                raise ValueError(f"a Sylvester factor needs a power-of-two order, got {order}")
            if order > 1:
                axes.extend((o, None) for o in _split_sylvester(order))
        else:
            axes.append((order, mat))
    passes, outer = [], 1
    for order, mat in axes:
        inner = k // (outer * order)
        passes.append((outer, order, inner, mat))
        outer *= order
    return passes


def _check(x, signs, orders, dense):
    k = x.shape[-1]
    if len(orders) != len(dense) or not orders or math.prod(orders) != k:
        raise ValueError(f"rotation factors {list(orders)} do not multiply to the width {k}")
    if x.dtype not in _TL_DTYPES:
        raise TypeError(f"rotate: x must be float16, bfloat16 or float32, got {x.dtype}")
    if signs is not None and (signs.device != x.device or signs.numel() != k):
        raise ValueError(f"rotate: signs must be [{k}] on {x.device} (cache them there), got {list(signs.shape)} "
                         f"on {signs.device}")
    for i, (order, mat) in enumerate(zip(orders, dense)):
        if mat is not None and (tuple(mat.shape) != (order, order) or mat.device != x.device):
            raise ValueError(f"rotate: dense factor {i} must be [{order}, {order}] on {x.device}, got "
                             f"{list(mat.shape)} on {mat.device}")


def rotate(x: torch.Tensor, signs: torch.Tensor | None, orders, dense, scale: float) -> torch.Tensor:
    """(x * signs) (F_0 kron F_1 kron ...) * scale along the last dim, float32, on x's device."""
    orders, dense = [int(o) for o in orders], list(dense)
    _check(x, signs, orders, dense)
    k = x.shape[-1]
    lead = x.shape[:-1]
    xc = x.reshape(-1, k)
    if not xc.is_contiguous():
        xc = xc.contiguous()
    m = xc.shape[0]
    if signs is not None and signs.dtype != torch.int8:
        signs = signs.to(torch.int8)
    if signs is not None and not signs.is_contiguous():
        signs = signs.contiguous()
    passes = plan(orders, dense)
    _check_mode()
    if m == 0 or not passes:  # identity factors only (or no rows): signs and scale
        y = xc.to(torch.float32)
        if signs is not None:
            y = y * signs.to(torch.float32)
        return (y * scale).reshape(*lead, k).contiguous()
    bufs = [torch.empty((m, k), device=x.device, dtype=torch.float32)]
    if len(passes) > 1:
        bufs.append(torch.empty((m, k), device=x.device, dtype=torch.float32))
    src = xc
    for i, (outer, order, inner, mat) in enumerate(passes):
        first, last = i == 0, i == len(passes) - 1
        dst = bufs[i % 2]
        block_r, block_n, block_k, warps, stages = CONFIGS[config_for(order)]
        if mat is not None and (mat.dtype != torch.float32 or not mat.is_contiguous()):
            mat = mat.to(torch.float32).contiguous()
        rows = m * k // order
        if rows >= 2**31:
            raise ValueError(f"rotate: {rows} rows of order {order} are past the kernel's 32-bit row index; "
                             f"split the batch")
        grid = (triton.cdiv(rows, block_r), triton.cdiv(order, block_n))
        _axis_kernel[grid](
            src, dst, mat, signs if first else None,
            float(scale) if last else 1.0, rows, order, inner, k,
            HADAMARD=mat is None, HAS_SIGNS=first and signs is not None,
            LOW_PRECISION_DOT=mat is None and src.dtype == torch.float16,
            BLOCK_R=block_r, BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, num_stages=stages)
        src = dst
    return src.reshape(*lead, k)


def aot_variants() -> list[AOTVariant]:
    """Every configuration `rotate` launches: input dtype (fp16/bf16 for a first pass, fp32 for the
    rest and for fp32 input) x Sylvester/dense x block config x with/without the fused signs (36)."""
    out = []
    for dtype in ("fp16", "bf16", "fp32"):
        for hadamard in (True, False):
            for cfg, (block_r, block_n, block_k, warps, stages) in CONFIGS.items():
                for has_signs in (True, False):
                    low = hadamard and dtype == "fp16"
                    name = (f"hadamard_{'syl' if hadamard else 'dense'}_{cfg}_{dtype}"
                            f"{'_signs' if has_signs else ''}")
                    # unused pointers are passed as None (constexpr None), as rotate() does
                    sig = {"x_ptr": f"*{dtype}", "y_ptr": "*fp32", "f_ptr": "constexpr" if hadamard else "*fp32",
                           "signs_ptr": "*i8" if has_signs else "constexpr",
                           "scale": "fp32", "R": "i32", "N": "i32", "INNER": "i32", "K": "i32",
                           "HADAMARD": "constexpr", "HAS_SIGNS": "constexpr", "LOW_PRECISION_DOT": "constexpr",
                           "BLOCK_R": "constexpr", "BLOCK_N": "constexpr", "BLOCK_K": "constexpr"}
                    consts = {**({"f_ptr": None} if hadamard else {}), **({} if has_signs else {"signs_ptr": None}),
                              "HADAMARD": hadamard, "HAS_SIGNS": has_signs, "LOW_PRECISION_DOT": low,
                              "BLOCK_R": block_r, "BLOCK_N": block_n, "BLOCK_K": block_k}
                    # what the JIT sees at a typical launch: torch-allocated (aligned) pointers, K % 16 == 0
                    div16 = [n for n in ("x_ptr", "y_ptr", "f_ptr", "signs_ptr") if sig[n] != "constexpr"] + ["K"]
                    out.append(AOTVariant(name, _axis_kernel, sig, consts, warps, stages,
                                          {"kind": "sylvester" if hadamard else "dense", "config": cfg,
                                           "dtype": dtype, "signs": has_signs, "divisibility_16": div16}))
    return out
