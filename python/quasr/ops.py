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

import os

import torch

from .format import PackedWeight
from .kernels import BACKENDS, choose, forced
from .kernels.dispatch import _FORCED, ENV, backend_for, env_override
from .kernels.registry import ISA_ENV
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


def dispatch_state() -> tuple:
    """What a kernel choice depends on besides the call's shape: forced(), QUASR_KERNEL,
    QUASR_REFERENCE and QUASR_CPU_ISA (a bound call made under one state is valid only under it)."""
    env = os.environ
    return (_FORCED.get(), env.get(ENV), env.get("QUASR_REFERENCE"), env.get(ISA_ENV))


def bound_qlinear(pw: PackedWeight, bias, input_mul, act: ActQuant | None, layout_for, device: torch.device):
    """`x -> qlinear(x, pw, bias, input_mul=..., act=...)` with everything but x decided now, where
    the dispatcher's choice cannot depend on x's shape: the CPU's int8 path (one path for every M)
    with no override set. None otherwise (the caller goes through `qlinear`). A packed module keeps
    the result while its buffers and `dispatch_state()` stay the same: it saves the ~25 us of Python a
    call costs on the way to the kernel, which at batch 1 is more than a 384-wide kernel takes."""
    if device.type != "cpu" or act is None or any(v is not None for v in dispatch_state()[:3]):
        return None
    choice = choose(device, pw.bits, pw.group_size, 1, pw.packed.shape[0], pw.in_features, True)
    backend = BACKENDS[choice.backend]
    if (choice.backend, choice.path) != ("cpu", "int8") or not backend.int8_supported(pw, act):
        return None
    return backend.bound_int8(pw, bias, input_mul, act, layout_for(backend, pw))


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
    from .integrations import attention as attn

    mode, engine = attn.mode_from_env(), attn.bf16_engine()
    if engine is None:
        attention = "torch's float32 SDPA (no AVX-512 BF16)"
    elif mode == "exact":
        attention = f"torch's float32 SDPA ({attn.ENV}=exact)"
    elif mode == "auto" and not attn.auto_uses_bf16():
        attention = (f"torch's float32 SDPA (quasr's avx512-bf16 kernel was not measured faster than it on "
                     f"{attn.cpu_vendor() or 'these'} CPUs without AMX; {attn.ENV}=bf16 forces it)")
    elif engine == "sdpa-bf16":
        attention = f"torch's SDPA on bf16 operands (AMX-BF16; {attn.ENV}=exact for float32)"
    else:
        attention = f"avx512-bf16 (bf16 operands; {attn.ENV}=exact for torch's)"
    return (f"native CPU kernels: {floats} (float activations), {cpu.int8_isa()} (int8 activations); "
            f"encoder attention of quantized models: {attention}")
