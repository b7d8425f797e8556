"""The backends that implement the quasr ops, each saying what it supports. A new backend (CUDA) is
one class here with `available`, `supports`, `paths` and the op entry points; the dispatcher
(dispatch.py) chooses among those available.

The layout seam: `PackedWeight` is the canonical, saved form (docs/FORMAT.md). A backend may keep
its own runtime layout of a weight (`repack`, e.g. Triton's K-major words), made once per weight
and device and held by the packed module outside its state (nn.RuntimeCache): never saved, never
counted in the size. `qlinear` receives it as `layout` (None: the backend reads the canonical form,
or repacks for this one call when called without a module)."""

from __future__ import annotations

import os

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

    def chosen_automatically(self, device_type: str) -> bool:
        """Whether tables and the default rule may pick this backend on this device (else only a
        forced() context or QUASR_KERNEL can)."""
        return device_type in self.devices

    def repacks(self) -> bool:
        """Whether this backend keeps a runtime layout of its own (see `repack`)."""
        return False

    def repack(self, pw: PackedWeight):
        """The backend's runtime layout of `pw` (on pw's device), or None to read `pw` as it is."""
        return None

    def qlinear(self, x: torch.Tensor, pw: PackedWeight, bias, input_mul, act: ActQuant | None, path: str,
                layout=None):
        raise NotImplementedError

    def dequantize(self, pw: PackedWeight) -> torch.Tensor:
        raise NotImplementedError

    def rotate(self, x: torch.Tensor, signs, orders: list[int], dense: list, scale: float) -> torch.Tensor:
        """The online rotation (reference.rotate); `dense` factors already on x's device."""
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

    def qlinear(self, x, pw, bias, input_mul, act, path, layout=None):
        return torch.ops.quasr.qlinear(
            x, pw.packed, pw.scales, pw.zeros, bias, pw.bits, pw.group_size, pw.in_features, self.PATH_IDS[path],
            input_mul, act.bits if act else 0, bool(act and act.symmetric), act.scale if act else 0.0,
            act.zero if act else 0.0)

    def dequantize(self, pw):
        return torch.ops.quasr.dequantize(pw.packed, pw.scales, pw.zeros, pw.bits, pw.group_size, pw.in_features)

    def rotate(self, x, signs, orders, dense, scale):
        return torch.ops.quasr.rotate(x, signs, orders, dense, scale)


class Triton(Backend):
    """triton_kernels (shipped as quasr.triton_kernels, the `quasr[gpu]` extra): fused
    decode-and-multiply over its K-major repack of the packed planes, a GEMV/split-K path for small M
    and a tl.dot GEMM for large M, input multiply and activation fake-quant fused into the tile
    load; the online rotation as Walsh-Hadamard / small-GEMM kernels. On CUDA devices; on the CPU
    only under the Triton interpreter (TRITON_INTERPRET=1), for tests."""

    name = "triton"
    description = "Triton GPU kernels (triton_kernels, quasr[gpu])"

    def __init__(self):
        self._module, self._error = None, None

    def _load(self):
        if self._module is None and self._error is None:
            try:
                from .. import triton_kernels

                if not triton_kernels.AVAILABLE:
                    raise ImportError(triton_kernels.STATUS)
                self._module, self._error = triton_kernels, ""
            except ImportError as exc:
                self._error = f"Triton not usable ({exc}); install the extra: pip install 'quasr[gpu]'"
        return self._module

    @staticmethod
    def interpreted() -> bool:
        return os.environ.get("TRITON_INTERPRET", "0") == "1"

    @property
    def devices(self) -> tuple[str, ...]:
        return ("cuda", "cpu") if self.interpreted() else ("cuda",)

    def chosen_automatically(self, device_type: str) -> bool:
        return device_type == "cuda"  # the interpreter on the CPU is for tests: forced only

    def status(self) -> str:
        self._load()
        if self._error:
            return self._error
        if not self.interpreted() and not torch.cuda.is_available():
            return "no CUDA device (the Triton kernels run on NVIDIA GPUs; TRITON_INTERPRET=1 runs them on the CPU)"
        return ""

    @property
    def paths(self) -> tuple[str, ...]:
        return ("gemv", "gemm") if self.available() else ()

    def repacks(self) -> bool:
        return True

    def repack(self, pw):
        return self._load().repack(pw)

    def qlinear(self, x, pw, bias, input_mul, act, path, layout=None):
        tk = self._load()
        if layout is None:
            layout = tk.repack(pw)
        act_bits = act.bits if act else 0
        qparams = None
        if act is not None and not act.dynamic:
            qparams = act.qparams if act.qparams is not None else torch.tensor(
                [act.scale, act.zero], dtype=torch.float32, device=x.device)
        return tk.qlinear(x, layout, bias, input_mul, act_bits, bool(act and act.symmetric), qparams, path)

    def dequantize(self, pw):
        return reference.dequantize_op(pw.packed, pw.scales, pw.zeros, pw.bits, pw.group_size, pw.in_features)

    def rotate(self, x, signs, orders, dense, scale):
        return self._load().rotate(x, signs, orders, dense, scale)


class Reference(Backend):
    """Plain torch (reference.py): dequantize, then matmul; every device."""

    name = "reference"
    description = "plain-torch reference (dequantize + matmul)"
    devices = ("cpu", "cuda", "mps", "xpu", "meta")

    @property
    def paths(self) -> tuple[str, ...]:
        return ("dequant-matmul",)

    def qlinear(self, x, pw, bias, input_mul, act, path, layout=None):
        return reference.qlinear(x, pw, bias, input_mul, act)

    def dequantize(self, pw):
        from ..format import dequantize

        return dequantize(pw)

    def rotate(self, x, signs, orders, dense, scale):
        return reference.rotate(x, signs, orders, dense, scale)


# Registry order is the default preference where no table decides: native kernels before the reference.
BACKENDS: dict[str, Backend] = {b.name: b for b in (NativeCPU(), Triton(), Reference())}


def available_backends() -> list[Backend]:
    return [b for b in BACKENDS.values() if b.available()]
