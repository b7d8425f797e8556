"""Builds the native CPU extension quasr._C and, where a CUDA toolkit and a CUDA build of torch are both
present, the CUDA kernels quasr._C_cuda (csrc/cuda; see docs/DESIGN.md, Devices). The CPU wheel of torch
cannot build them: the CPU build is unchanged there, with a note saying why the CUDA kernels were skipped.

Environment: QUASR_BUILD_EXT=0 skips the CPU extension (a GPU image needs only the CUDA one);
QUASR_BUILD_CUDA=0 skips the CUDA kernels, =1 makes their absence an error; TORCH_CUDA_ARCH_LIST picks
the GPU targets (torch's default: the GPUs of the building machine)."""

import os
import sys

import torch
from setuptools import find_namespace_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension

CXX_FLAGS = ["-O3", "-std=c++17", "-fno-math-errno"]

cpu_ext = CppExtension(
    name="quasr._C",
    sources=["csrc/cpu/qgemm.cpp", "csrc/cpu/qgemm_i8.cpp", "csrc/cpu/rotate.cpp", "csrc/cpu/attention.cpp",
             "csrc/cpu/ops.cpp"],
    # -fopenmp: at::parallel_for is a header template whose `#pragma omp parallel` is compiled into
    # this extension; without the flag the pragma is dropped and every quasr kernel ran on one thread
    # (GOMP resolves to the libgomp.so.1 that torch ships and has already loaded).
    extra_compile_args={"cxx": CXX_FLAGS + ["-fopenmp"]},
    extra_link_args=["-fopenmp"],
)


def cuda_extension():
    """The CUDA extension, or None with the reason printed (QUASR_BUILD_CUDA=1: the reason is an error)."""
    wanted = os.environ.get("QUASR_BUILD_CUDA", "auto")
    if wanted == "0":
        return None
    reason = ("torch here is a CPU build (torch.version.cuda is None)" if torch.version.cuda is None
              else "no CUDA toolkit found (set CUDA_HOME)" if CUDA_HOME is None else "")
    if reason:
        message = f"quasr: building without the CUDA kernels: {reason}"
        if wanted == "1":
            sys.exit(message + " (QUASR_BUILD_CUDA=1 requires them)")
        print(message, file=sys.stderr)
        return None
    from torch.utils.cpp_extension import CUDAExtension

    sources = sorted(f"csrc/cuda/{f}" for f in os.listdir("csrc/cuda") if f.endswith(".cu")) + ["csrc/cuda/binding.cpp"]
    return CUDAExtension(name="quasr._C_cuda", sources=sources,
                         extra_compile_args={"cxx": CXX_FLAGS, "nvcc": ["-O3", "-Xptxas", "-v"]})


ext_modules = [] if os.environ.get("QUASR_BUILD_EXT", "1") == "0" else [cpu_ext]
cuda_ext = cuda_extension()
if cuda_ext is not None:
    ext_modules.append(cuda_ext)

# triton_kernels/ stays at the top of the repository (the layout) and ships inside the wheel as
# quasr.triton_kernels; importing it needs the `quasr[gpu]` extra (Triton).
setup(
    package_dir={"": "python", "quasr.triton_kernels": "triton_kernels"},
    packages=find_namespace_packages("python", include=["quasr", "quasr.*"]) + ["quasr.triton_kernels"],
    ext_modules=ext_modules,
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
