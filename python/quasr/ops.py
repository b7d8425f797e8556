"""Custom ops: one place that declares them, their fake (meta) implementations, and the single
dispatch point between native kernels and the plain-torch reference.

`quasr::qlinear(x, packed, scales, zeros, bias, bits, group_size, in_features, kernel=0)` computes
`x @ dequant(W).T + bias` from the packed format (format.py). The CPU implementation lives in
csrc/cpu (quasr._C). `kernel` picks a path for tests and benchmarks: 0 auto (by M), 1 GEMV, 2 GEMM,
3 portable scalar, 4 dequantized tiles + torch's BLAS (large M).

`quasr::rotate(x, signs, orders, dense, scale, kernel=0)` is the online rotation of QuaRot/SpinQuant
layers, (x * signs) (F_0 kron F_1 ...) * scale along the last dim, each factor a fast Walsh-Hadamard
transform (dense[i] None) or a small dense matrix; rotation.Rotation.apply dispatches to it and
rotation.Rotation.reference_apply is its plain-torch reference (csrc/cpu/rotate.h).
"""

from __future__ import annotations

import os

import torch

from dataclasses import dataclass

from .format import PackedWeight, check_bits, dequantize

KERNELS = {"auto": 0, "gemv": 1, "gemm": 2, "scalar": 3, "blas": 4}

try:  # loading the library registers torch.ops.quasr.* (TORCH_LIBRARY in csrc/cpu/ops.cpp)
    from . import _C  # noqa: F401

    NATIVE_CPU = True
except ImportError as exc:  # a source checkout that was never built
    NATIVE_CPU = False
    _IMPORT_ERROR = exc

if NATIVE_CPU:

    @torch.library.register_fake("quasr::qlinear")
    def _qlinear_fake(x, packed, scales, zeros, bias, bits, group_size, in_features, kernel=0, input_mul=None,
                      act_bits=0, act_symmetric=False, act_scale=0.0, act_zero=0.0):
        torch._check(x.shape[-1] == in_features)
        return x.new_empty((*x.shape[:-1], packed.shape[0]))

    @torch.library.register_fake("quasr::rotate")
    def _rotate_fake(x, signs, orders, dense, scale, kernel=0):
        return x.new_empty(x.shape, dtype=torch.float32)

    @torch.library.register_fake("quasr::dequantize")
    def _dequantize_fake(packed, scales, zeros, bits, group_size, in_features):
        return packed.new_empty((packed.shape[0], in_features), dtype=torch.float32)


@dataclass(frozen=True)
class ActQuant:
    """Fake-quant of a layer's input activations: per-token dynamic ranges (scale <= 0) or one static
    per-tensor range (scale, zero) calibrated beforehand. Symmetric uses the signed grid."""

    bits: int
    symmetric: bool = False
    scale: float = 0.0
    zero: float = 0.0

    def __post_init__(self):
        check_bits(self.bits)

    @property
    def dynamic(self) -> bool:
        return self.scale <= 0


def reference_input_transform(x: torch.Tensor, input_mul: torch.Tensor | None, act: ActQuant | None) -> torch.Tensor:
    """What the kernels do to x before the GEMM, in plain float32 torch: the per-channel smoothing
    multiply, then the activation fake-quant."""
    from .ranges import fake_quant_activation, fake_quant_tokens

    x = x.to(torch.float32)
    if input_mul is not None:
        x = x * input_mul.to(x.device, torch.float32)
    if act is None:
        return x
    if act.dynamic:
        return fake_quant_tokens(x, act.bits, act.symmetric)
    return fake_quant_activation(x, act.scale, act.zero, act.bits)


def reference_qlinear(x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None = None,
                      input_mul: torch.Tensor | None = None, act: ActQuant | None = None) -> torch.Tensor:
    """Plain torch: transform the input, dequantize, then matmul in float32. Every kernel is tested
    against this."""
    w = dequantize(pw).to(x.device)
    y = reference_input_transform(x, input_mul, act) @ w.T
    if bias is not None:
        y = y + bias.to(torch.float32)
    return y.to(x.dtype)


def use_native() -> bool:
    """Native kernels unless QUASR_REFERENCE=1 (debugging) or the extension is missing."""
    return NATIVE_CPU and os.environ.get("QUASR_REFERENCE", "0") != "1"


def qlinear(
    x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None = None, kernel: str = "auto",
    input_mul: torch.Tensor | None = None, act: ActQuant | None = None,
) -> torch.Tensor:
    """y = fq(x * input_mul) @ dequant(W).T + bias, fq the activation fake-quant `act` (both optional,
    fused into the kernel's copy of x). The one dispatch point: native kernel or reference."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    if x.shape[-1] != pw.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the quantized layer expects {pw.in_features}")
    if x.device.type == "cpu" and use_native():
        return torch.ops.quasr.qlinear(
            x, pw.packed, pw.scales, pw.zeros, bias, pw.bits, pw.group_size, pw.in_features, KERNELS[kernel],
            input_mul, act.bits if act else 0, bool(act and act.symmetric), act.scale if act else 0.0,
            act.zero if act else 0.0,
        )
    if kernel != "auto" and x.device.type == "cpu":
        raise RuntimeError(f"kernel={kernel!r} needs the native kernels: {native_status()} (or QUASR_REFERENCE=1 is set)")
    return reference_qlinear(x, pw, bias, input_mul, act)


def dequantize_weight(pw: PackedWeight) -> torch.Tensor:
    """Dense float32 [N, in_features] weight: native when available, else the reference."""
    if pw.packed.device.type == "cpu" and use_native():
        return torch.ops.quasr.dequantize(pw.packed, pw.scales, pw.zeros, pw.bits, pw.group_size, pw.in_features)
    return dequantize(pw)


def native_status() -> str:
    if not NATIVE_CPU:
        return f"reference only (native extension not built: {_IMPORT_ERROR})"
    return "native CPU kernels: " + ("AVX2+FMA" if torch.ops.quasr.cpu_has_avx2() else "portable scalar (no AVX2)")
