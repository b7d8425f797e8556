"""The entry points packed modules call: `qlinear`, `dequantize_weight` and `rotate`, each sent by the kernel
dispatcher (kernels/dispatch.py) to a backend (kernels/registry.py) for the call's device and shape.

`quasr::qlinear(x, packed, scales, zeros, bias, bits, group_size, in_features, kernel=0, ...)`
computes `fq(x * input_mul) @ dequant(W).T + bias` from the packed format (format.py);
`quasr::rotate(x, signs, orders, dense, scale, kernel=0)` is the online rotation of QuaRot/SpinQuant
layers, (x * signs) (F_0 kron F_1 ...) * scale along the last dim (rotation.Rotation.apply). Their
schemas, fake implementations and plain-torch references are in kernels/; the CPU kernels in
csrc/cpu (quasr._C). `kernel=` here forces one CPU path for tests and benchmarks ("auto" lets the
dispatcher choose).
"""

from __future__ import annotations

import torch

from .format import PackedWeight
from .kernels import BACKENDS, choose, forced
from .kernels.dispatch import backend_for, env_override
from .kernels.reference import ActQuant  # noqa: F401  (part of this module's API)
from .kernels.reference import input_transform as reference_input_transform  # noqa: F401
from .kernels.reference import qlinear as reference_qlinear  # noqa: F401

KERNELS = {"auto": 0, "gemv": 1, "gemm": 2, "scalar": 3, "blas": 4, "int8": 5}
NATIVE_CPU = BACKENDS["cpu"].available()


def use_native() -> bool:
    """Native CPU kernels unless QUASR_REFERENCE=1 or QUASR_KERNEL=reference (debugging), or the
    extension is missing."""
    return NATIVE_CPU and env_override() != "reference"


def qlinear(
    x: torch.Tensor, pw: PackedWeight, bias: torch.Tensor | None = None, kernel: str = "auto",
    input_mul: torch.Tensor | None = None, act: ActQuant | None = None, layout_for=None,
) -> torch.Tensor:
    """y = fq(x * input_mul) @ dequant(W).T + bias, fq the activation fake-quant `act` (both optional,
    fused into the kernel's copy of x), on the backend and path the dispatcher picks.

    `layout_for(backend, pw)` returns that backend's cached runtime layout of `pw` (packed modules
    pass their RuntimeCache); without it a repacking backend repacks for this call only."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {sorted(KERNELS)}, got {kernel!r}")
    if x.shape[-1] != pw.in_features:
        raise ValueError(f"input has {x.shape[-1]} features, the quantized layer expects {pw.in_features}")
    if kernel != "auto":
        if x.device.type != "cpu" or not use_native():
            raise RuntimeError(f"kernel={kernel!r} needs the native CPU kernels: {native_status()} "
                               f"(or QUASR_REFERENCE=1 / QUASR_KERNEL=reference is set)")
        with forced("cpu", kernel):
            return qlinear(x, pw, bias, "auto", input_mul, act, layout_for)
    m = x.numel() // max(x.shape[-1], 1)
    choice = choose(x.device, pw.bits, pw.group_size, m, pw.packed.shape[0], pw.in_features, act is not None)
    backend = BACKENDS[choice.backend]
    layout = layout_for(backend, pw) if layout_for is not None and backend.needs_layout(act) else None
    return backend.qlinear(x, pw, bias, input_mul, act, choice.path, layout)


def dequantize_weight(pw: PackedWeight) -> torch.Tensor:
    """Dense float32 [N, in_features] weight, on the backend the dispatcher picks for its device."""
    return BACKENDS[backend_for("dequantize", pw.packed.device)].dequantize(pw)


def rotate(x: torch.Tensor, signs: torch.Tensor | None, orders: list[int], dense: list, scale: float) -> torch.Tensor:
    """(x * signs) (F_0 kron F_1 ...) * scale along the last dim (float32), on the backend the
    dispatcher picks for x's device; `dense` factors must already be on that device."""
    return BACKENDS[backend_for("rotate", x.device)].rotate(x, signs, orders, dense, scale)


def native_status() -> str:
    cpu = BACKENDS["cpu"]
    if not cpu.available():
        return f"reference only ({cpu.status()})"
    floats = "AVX2+FMA" if cpu.has_avx2() else "portable scalar (no AVX2)"
    return f"native CPU kernels: {floats} (float activations), {cpu.int8_isa()} (int8 activations)"
