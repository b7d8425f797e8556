"""The backends that implement the quasr ops, each saying what it supports. A backend is
one class here with `available`, `supports`, `paths` and the op entry points; the dispatcher
(dispatch.py) chooses among those available.

The layout seam: `PackedWeight` is the canonical, saved form (docs/FORMAT.md). A backend may keep
its own runtime layout of a weight (`repack`, e.g. Triton's K-major words), made once per weight
and device and held by the packed module outside its state (nn.RuntimeCache): never saved, never
counted in the size. `qlinear` receives it as `layout` (None: the backend reads the canonical form,
or repacks for this one call when called without a module)."""

from __future__ import annotations

import functools
import importlib.util
import math
import os
from dataclasses import dataclass

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

    def needs_layout(self, act: ActQuant | None) -> bool:
        """Whether calls with these activations read the runtime layout (made and kept only then)."""
        return self.repacks()

    def qlinear(self, x: torch.Tensor, pw: PackedWeight, bias, input_mul, act: ActQuant | None, path: str,
                layout=None):
        raise NotImplementedError

    def dequantize(self, pw: PackedWeight) -> torch.Tensor:
        raise NotImplementedError

    def rotate(self, x: torch.Tensor, signs, orders: list[int], dense: list, scale: float) -> torch.Tensor:
        """The online rotation (reference.rotate); `dense` factors already on x's device."""
        raise NotImplementedError


@dataclass
class Int8Layout:
    """NativeCPU's runtime layout for the int8-activation kernels (csrc/cpu/qgemm_i8.h): the codes in
    16-column x 4-k steps split into 8/4/2/1-bit parts, and per group the scale, scale x zero and
    the group's weight sum."""

    codes: torch.Tensor  # uint8
    params: torch.Tensor  # float32


# The int8 kernels' instruction sets (quasr::Isa), best last; QUASR_CPU_ISA picks one by name.
CPU_ISAS = ("scalar", "avx2", "avx512bw", "avx512-vnni")
ISA_ENV = "QUASR_CPU_ISA"


class NativeCPU(Backend):
    """csrc/cpu (quasr._C). Float activations: AVX2+FMA paths chosen at run time, a portable scalar
    path elsewhere. Quantized activations (a layer with `act`): the int8 path, which quantizes x to
    int8 codes in the kernel and sums code products in int32 (AVX-512 VNNI, AVX-512BW or AVX2, picked
    by CPU features at load; scalar elsewhere) over its own runtime layout of the weight."""

    name = "cpu"
    description = "native C++ CPU kernels (csrc/cpu)"
    devices = ("cpu",)
    PATH_IDS = {"gemv": 1, "gemm": 2, "scalar": 3, "blas": 4}  # the `kernel` argument of quasr::qlinear
    ACT_RANGES = {"token": 0, "tensor": 1, "group": 2}  # the `act_range` argument of quasr_cpu::qlinear_i8

    def __init__(self):
        self._isas = None
        try:  # registers the CPU kernels of torch.ops.quasr.* (TORCH_LIBRARY_IMPL in csrc/cpu/ops.cpp)
            from .. import _C  # noqa: F401

            self._error = ""
            _register_fakes()
        except ImportError as exc:  # a source checkout that was never built
            self._error = f"native extension not built: {exc}"

    def status(self) -> str:
        return self._error

    def has_avx2(self) -> bool:
        return self.available() and bool(torch.ops.quasr_cpu.has_avx2())

    def has_bf16_attention(self) -> bool:
        """Whether `quasr::attention` runs its AVX-512 BF16 path here (csrc/cpu/attention.h)."""
        return self.available() and bool(torch.ops.quasr_cpu.has_bf16_attention())

    @property
    def paths(self) -> tuple[str, ...]:
        if not self.available():
            return ()
        return ("gemv", "gemm", "blas", "scalar", "int8") if self.has_avx2() else ("scalar", "int8")

    def isa(self) -> str:
        """The float-activation kernels' instruction set (names the dispatch table: cpu-<isa>.json)."""
        return "avx2" if self.has_avx2() else "scalar"

    def int8_isas(self) -> tuple[str, ...]:
        """The int8 kernels' instruction sets this CPU runs, best last."""
        if not self.available():
            return ()
        if self._isas is None:
            self._isas = CPU_ISAS[: int(torch.ops.quasr_cpu.best_isa()) + 1]
        return self._isas

    def int8_isa(self) -> str:
        """The int8 kernels' instruction set in use: QUASR_CPU_ISA when set, else the best one."""
        return CPU_ISAS[self._isa_id(os.environ.get(ISA_ENV))]

    @functools.lru_cache(maxsize=8)
    def _isa_id(self, wanted: str | None) -> int:
        isas = self.int8_isas()
        if wanted:
            if wanted not in CPU_ISAS:
                raise ValueError(f"{ISA_ENV}={wanted!r}: choose one of {', '.join(CPU_ISAS)}")
            if wanted not in isas:
                raise ValueError(f"{ISA_ENV}={wanted!r}: this CPU runs only {', '.join(isas)}")
            return CPU_ISAS.index(wanted)
        return len(isas) - 1

    def repacks(self) -> bool:
        return True

    def needs_layout(self, act) -> bool:
        return act is not None

    def repack(self, pw):
        codes, params = torch.ops.quasr_cpu.repack_i8(pw.packed, pw.scales, pw.zeros, pw.bits, pw.group_size)
        return Int8Layout(codes, params)

    @staticmethod
    def int8_supported(pw, act) -> bool:
        """Whether the int8 path computes this call exactly as the fake-quant reference: int32 sums
        that cannot overflow, and a whole-number static zero (the padding columns' code)."""
        return (act is not None and pw.group_size <= 65536
                and (act.dynamic or (act.scale > 0 and float(act.zero).is_integer())))

    def qlinear(self, x, pw, bias, input_mul, act, path, layout=None):
        if path == "int8":
            if act is None:
                raise ValueError("the cpu int8 path quantizes activations: it needs a layer with act_bits "
                                 "(use gemv/gemm/blas for float activations)")
            if self.int8_supported(pw, act):
                return self.qlinear_int8(x, pw, bias, input_mul, act, layout)
            from .dispatch import _default_path  # the float path the dispatcher's default rule picks

            path = _default_path(self.name, x.numel() // max(x.shape[-1], 1))
        return torch.ops.quasr.qlinear(
            x, pw.packed, pw.scales, pw.zeros, bias, pw.bits, pw.group_size, pw.in_features, self.PATH_IDS[path],
            input_mul, act.bits if act else 0, bool(act and act.symmetric), act.scale if act else 0.0,
            act.zero if act else 0.0, bool(act and act.per_group))

    def qlinear_int8(self, x, pw, bias, input_mul, act, layout=None, isa: str | None = None):
        """The int8 path on `isa` (default: int8_isa())."""
        if layout is None:
            layout = self.repack(pw)
        isa_id = CPU_ISAS.index(isa) if isa else self._isa_id(os.environ.get(ISA_ENV))
        act_range = "tensor" if not act.dynamic else "group" if act.per_group else "token"
        return torch.ops.quasr_cpu.qlinear_i8(
            x, layout.codes, layout.params, bias, pw.bits, pw.group_size, pw.in_features, pw.out_features, input_mul,
            act.bits, self.ACT_RANGES[act_range], act.symmetric, act.scale, act.zero, isa_id)

    def bound_int8(self, pw, bias, input_mul, act, layout):
        """`x -> qlinear_int8(x, ...)` with the other arguments fixed (ops.bound_qlinear)."""
        isa_id = self._isa_id(os.environ.get(ISA_ENV))
        act_range = self.ACT_RANGES["tensor" if not act.dynamic else "group" if act.per_group else "token"]
        op, codes, params = torch.ops.quasr_cpu.qlinear_i8, layout.codes, layout.params
        k, n = pw.in_features, pw.out_features

        def call(x):
            return op(x, codes, params, bias, pw.bits, pw.group_size, k, n, input_mul, act.bits, act_range,
                      act.symmetric, act.scale, act.zero, isa_id)

        return call

    def dequantize(self, pw):
        return torch.ops.quasr.dequantize(pw.packed, pw.scales, pw.zeros, pw.bits, pw.group_size, pw.in_features)

    def rotate(self, x, signs, orders, dense, scale):
        return torch.ops.quasr.rotate(x, signs, orders, dense, scale)


_FAKES_REGISTERED = False


def _register_fakes() -> None:
    """Fake (meta) implementations of the CPU backend's own ops, for tracing and torch.compile."""
    global _FAKES_REGISTERED
    if _FAKES_REGISTERED:
        return
    _FAKES_REGISTERED = True

    @torch.library.register_fake("quasr_cpu::attention_pack")
    def _attention_pack_fake(k, v):
        b, h, t, d = k.shape
        return k.new_empty((b * h * torch.ops.quasr_cpu.attention_pack_bytes(t, d) + 64,), dtype=torch.uint8)

    @torch.library.register_fake("quasr_cpu::attention_packed")
    def _attention_packed_fake(q, pack, tk, scale):
        b, h, t, d = q.shape
        return q.new_empty((b, t, h, d), dtype=torch.float32).transpose(1, 2)

    @torch.library.register_fake("quasr_cpu::qlinear_i8")
    def _qlinear_i8_fake(x, codes, params, bias, bits, group_size, in_features, out_features, input_mul, act_bits,
                         act_range, act_symmetric, act_scale, act_zero, isa=-1):
        torch._check(x.shape[-1] == in_features)
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("quasr_cpu::repack_i8")
    def _repack_i8_fake(packed, scales, zeros, bits, group_size):
        n, kp = packed.shape[0], packed.shape[1] * 8 // bits
        padded = math.ceil(n / 64) * 64
        return (packed.new_empty(padded * kp * bits // 8),
                packed.new_empty(padded // 16 * (kp // group_size) * 48, dtype=torch.float32))


class NativeCUDA(Backend):
    """csrc/cuda (quasr._C_cuda, built where a CUDA toolkit and a CUDA build of torch exist): fp16
    tensor-core kernels over its fragment-order repack of the planes (cuda_layout.py): a GEMV with
    split-K for M <= 16 and an mma.sync GEMM above; layers that quantize their activations to int8
    run on integer tensor cores (per-token dynamic or static per-tensor ranges, quantized in a fused
    kernel in front) from M = 17; below, and for fractional static zeros, the same fused kernel
    fake-quantizes x for the fp16 GEMV. Per-group ranges are fake-quantized in torch first."""

    name = "cuda"
    description = "native CUDA kernels (csrc/cuda: tensor-core GEMV/GEMM, int8 mma)"
    devices = ("cuda",)
    PATH_IDS = {"gemv": 1, "gemm": 2}  # the `path` argument of quasr_cuda::qlinear_f16
    # Below this M the int8 path quantizes x in the fused prologue and runs the fp16 GEMV on the
    # fake-quantized values (the int8 GEMM's 64-row tiles would leave most multiprocessors idle).
    INT8_GEMM_MIN_M = 17

    def __init__(self):
        self._error = ""
        if importlib.util.find_spec(__package__.rpartition(".")[0] + "._C_cuda") is None:
            self._error = ("CUDA kernels not built (no quasr._C_cuda): they build where a CUDA toolkit (CUDA_HOME) "
                           "and a CUDA build of torch are present: pip install --no-build-isolation .")
            return
        try:  # registers torch.ops.quasr_cuda.* (TORCH_LIBRARY in csrc/cuda/binding.cpp)
            from .. import _C_cuda  # noqa: F401
        except ImportError as exc:  # built, but does not load here (e.g. another CUDA runtime)
            self._error = f"CUDA kernels do not load: {exc}"
            return
        _register_cuda_fakes()
        _register_seam_kernel(self)

    def status(self) -> str:
        if self._error:
            return self._error
        if not torch.cuda.is_available():
            return "no CUDA device"
        return ""

    @property
    def paths(self) -> tuple[str, ...]:
        return ("gemv", "gemm", "int8") if self.available() else ()

    def repacks(self) -> bool:
        return True

    def repack(self, pw):
        from .cuda_layout import CudaLayout, f16_params

        params, frac = f16_params(pw)
        words = torch.ops.quasr_cuda.tile(pw.packed.contiguous(), pw.bits)
        return CudaLayout(words, params, frac, None, pw.bits, pw.group_size, pw.in_features, pw.out_features)

    @staticmethod
    def int8_supported(pw, act) -> bool:
        """Whether the int8 path computes this call exactly as the fake-quant reference: per-token or
        static ranges (per-group ranges are not fused), a whole-number static zero, and int32 group
        sums that cannot overflow (|e| <= 128, code <= 255, at most 65536 terms)."""
        return (act is not None and not act.per_group and pw.group_size <= 65536
                and (act.dynamic or float(act.zero).is_integer()))

    def qlinear(self, x, pw, bias, input_mul, act, path, layout=None):
        if layout is None:
            layout = self.repack(pw)
        m = x.numel() // max(x.shape[-1], 1)
        if act is not None and path == "int8" and m >= self.INT8_GEMM_MIN_M and self.int8_supported(pw, act):
            return self.qlinear_int8(x, pw, bias, input_mul, act, layout)
        if act is not None and act.per_group:  # per-group ranges are not fused here: transform x first
            x = reference.input_transform(x, input_mul, act, pw.group_size).to(x.dtype)
        elif act is not None or input_mul is not None:  # fused prologue: multiply, fake-quant, fp16, padded
            scale, zero = _static_range(act)
            xq = torch.ops.quasr_cuda.act_prologue(x, input_mul, pw.padded_in_features, act.bits if act else 0,
                                                   bool(act and act.symmetric), scale, zero)
            y = self._f16(xq, pw, bias, path, layout)
            return y.view(*x.shape[:-1], pw.out_features).to(x.dtype)
        return self._f16(x, pw, bias, path, layout)

    def _f16(self, x, pw, bias, path, layout):
        return torch.ops.quasr_cuda.qlinear_f16(x, layout.words, layout.f16_params, layout.frac_zeros, bias, pw.bits,
                                                pw.group_size, pw.in_features, pw.out_features,
                                                self.PATH_IDS.get(path, 0), 0)

    def qlinear_int8(self, x, pw, bias, input_mul, act, layout):
        if layout.i8_params is None:  # made on the first int8 call only (float-activation layers never need it)
            from .cuda_layout import i8_params

            layout.i8_params = i8_params(pw)
        scale, zero = _static_range(act)
        return torch.ops.quasr_cuda.qlinear_i8(x, layout.words, layout.i8_params, bias, pw.bits, pw.group_size,
                                               pw.in_features, pw.out_features, input_mul, act.bits, act.symmetric,
                                               scale, zero)

    def dequantize(self, pw):
        return reference.dequantize_op(pw.packed, pw.scales, pw.zeros, pw.bits, pw.group_size, pw.in_features)

    def rotate(self, x, signs, orders, dense, scale):
        triton = BACKENDS.get("triton")
        if triton is not None and triton.available():
            return triton.rotate(x, signs, orders, dense, scale)
        return reference.rotate(x, signs, orders, dense, scale)


def _static_range(act: ActQuant | None) -> tuple[float, float]:
    """The (scale, zero) the CUDA kernels take: a static range, or (0, 0) for per-token ranges / none."""
    return (0.0, 0.0) if act is None or act.dynamic else (float(act.scale), float(act.zero))


_CUDA_REGISTERED = False


def _register_cuda_fakes() -> None:
    """Fake (meta) implementations of the CUDA backend's ops, for tracing and torch.compile."""
    global _CUDA_REGISTERED
    if _CUDA_REGISTERED:
        return
    _CUDA_REGISTERED = True

    @torch.library.register_fake("quasr_cuda::tile")
    def _tile_fake(packed, bits):
        n, kp = packed.shape[0], packed.shape[1] * 8 // bits
        return packed.new_empty(-(-n // 32) * 32 * kp * bits // 32, dtype=torch.int32)

    @torch.library.register_fake("quasr_cuda::qlinear_f16")
    def _qlinear_f16_fake(x, words, params, frac, bias, bits, group_size, in_features, out_features, path=0,
                          splits=0):
        torch._check(x.shape[-1] >= in_features)  # the layer's features, or padded ones (act_prologue)
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("quasr_cuda::qlinear_i8")
    def _qlinear_i8_fake(x, words, params, bias, bits, group_size, in_features, out_features, input_mul, act_bits,
                         act_symmetric, act_scale, act_zero):
        torch._check(x.shape[-1] == in_features)
        return x.new_empty((*x.shape[:-1], out_features))

    @torch.library.register_fake("quasr_cuda::act_prologue")
    def _act_prologue_fake(x, input_mul, kp, act_bits, act_symmetric, act_scale, act_zero):
        return x.new_empty((x.numel() // x.shape[-1], kp), dtype=torch.float16)

    @torch.library.register_fake("quasr_cuda::act_quant")
    def _act_quant_fake(x, input_mul, kp, group_size, act_bits, act_symmetric, act_scale, act_zero):
        m = x.numel() // x.shape[-1]
        return (x.new_empty((m, kp), dtype=torch.int8), x.new_empty((m,), dtype=torch.float32),
                x.new_empty((m,), dtype=torch.float32), x.new_empty((m, kp // group_size), dtype=torch.int32))


_SEAM_REGISTERED = False
_SEAM_PATHS = {1: "gemv", 2: "gemm"}  # quasr::qlinear's `kernel` argument, as the CPU kernels read it


def _register_seam_kernel(backend: NativeCUDA) -> None:
    """The CUDA kernel of the seam's own op (schemas.py: quasr::qlinear), so torch.ops.quasr.qlinear on
    CUDA tensors runs csrc/cuda instead of the reference. It repacks per call: packed modules go
    through ops.qlinear, which keeps the layout."""
    global _SEAM_REGISTERED
    if _SEAM_REGISTERED:
        return
    _SEAM_REGISTERED = True
    from .schemas import _LIB

    def qlinear_cuda(x, packed, scales, zeros, bias, bits, group_size, in_features, kernel=0, input_mul=None,
                     act_bits=0, act_symmetric=False, act_scale=0.0, act_zero=0.0, act_group=False):
        pw = PackedWeight(packed, scales, zeros, bits, group_size, in_features)
        act = ActQuant(act_bits, act_symmetric, act_scale, act_zero, per_group=act_group) if act_bits else None
        path = "int8" if act is not None else _SEAM_PATHS.get(kernel, "auto")
        return backend.qlinear(x, pw, bias, input_mul, act, path)

    _LIB.impl("qlinear", qlinear_cuda, "CUDA")


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
        if act is not None and act.per_group:  # per-group ranges are not fused here: quantize x first
            x, input_mul, act = reference.input_transform(x, input_mul, act, pw.group_size).to(x.dtype), None, None
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
BACKENDS: dict[str, Backend] = {b.name: b for b in (NativeCPU(), NativeCUDA(), Triton(), Reference())}


def available_backends() -> list[Backend]:
    return [b for b in BACKENDS.values() if b.available()]
