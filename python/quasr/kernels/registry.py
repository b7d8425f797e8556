"""The backends that implement the quasr ops, each saying what it supports. A new backend (Triton,
CUDA) is one class here with `available`, `supports`, `paths` and the op entry points; the
dispatcher (dispatch.py) chooses among those available."""

from __future__ import annotations

import torch

from ..format import SUPPORTED_BITS, PackedWeight
from . import reference
from .reference import ActQuant


class Backend:
    name: str
    description: str
    devices: tuple[str, ...]  # torch device types
    bits: tuple[int, ...] = SUPPORTED_BITS

    @property
    def paths(self) -> tuple[str, ...]:
        raise NotImplementedError

    def status(self) -> str:
        """'' when usable, else why not (shown by `quasr info`)."""
        return ""

    def available(self) -> bool:
        return not self.status()

    def supports(self, device_type: str, bits: int, group_size: int, n: int, k: int) -> bool:
        return self.available() and device_type in self.devices and bits in self.bits

    def qlinear(self, x: torch.Tensor, pw: PackedWeight, bias, input_mul, act: ActQuant | None, path: str):
        raise NotImplementedError

    def dequantize(self, pw: PackedWeight) -> torch.Tensor:
        raise NotImplementedError


class NativeCPU(Backend):
    """csrc/cpu (quasr._C): AVX2+FMA paths chosen at run time, a portable scalar path elsewhere."""

    name = "cpu"
    description = "native C++ CPU kernels (csrc/cpu)"
    devices = ("cpu",)
    PATH_IDS = {"gemv": 1, "gemm": 2, "scalar": 3, "blas": 4}  # the `kernel` argument of quasr::qlinear

    def __init__(self):
        try:  # registers the CPU kernels of torch.ops.quasr.* (TORCH_LIBRARY_IMPL in csrc/cpu/ops.cpp)
            from .. import _C  # noqa: F401

            self._error = ""
        except ImportError as exc:  # a source checkout that was never built
            self._error = f"native extension not built: {exc}"

    def status(self) -> str:
        return self._error

    def has_avx2(self) -> bool:
        return self.available() and bool(torch.ops.quasr_cpu.has_avx2())

    @property
    def paths(self) -> tuple[str, ...]:
        if not self.available():
            return ()
        return ("gemv", "gemm", "blas", "scalar") if self.has_avx2() else ("scalar",)

    def isa(self) -> str:
        return "avx2" if self.has_avx2() else "scalar"

    def qlinear(self, x, pw, bias, input_mul, act, path):
        return torch.ops.quasr.qlinear(
            x, pw.packed, pw.scales, pw.zeros, bias, pw.bits, pw.group_size, pw.in_features, self.PATH_IDS[path],
            input_mul, act.bits if act else 0, bool(act and act.symmetric), act.scale if act else 0.0,
            act.zero if act else 0.0)

    def dequantize(self, pw):
        return torch.ops.quasr.dequantize(pw.packed, pw.scales, pw.zeros, pw.bits, pw.group_size, pw.in_features)


class Reference(Backend):
    """Plain torch (reference.py): dequantize, then matmul; every device."""

    name = "reference"
    description = "plain-torch reference (dequantize + matmul)"
    devices = ("cpu", "cuda", "mps", "xpu", "meta")

    @property
    def paths(self) -> tuple[str, ...]:
        return ("dequant-matmul",)

    def qlinear(self, x, pw, bias, input_mul, act, path):
        return reference.qlinear(x, pw, bias, input_mul, act)

    def dequantize(self, pw):
        from ..format import dequantize

        return dequantize(pw)


BACKENDS: dict[str, Backend] = {b.name: b for b in (NativeCPU(), Reference())}


def available_backends() -> list[Backend]:
    return [b for b in BACKENDS.values() if b.available()]
