"""Builds the native CPU extension quasr._C. CUDA kernels are built only where a CUDA toolkit and a
CUDA build of torch are present (see docs/DESIGN.md, Devices); the CPU wheel of torch cannot build them."""

import os

from setuptools import find_namespace_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ext = CppExtension(
    name="quasr._C",
    sources=["csrc/cpu/qgemm.cpp", "csrc/cpu/qgemm_i8.cpp", "csrc/cpu/rotate.cpp", "csrc/cpu/ops.cpp"],
    # -fopenmp: at::parallel_for is a header template whose `#pragma omp parallel` is compiled into
    # this extension; without the flag the pragma is dropped and every quasr kernel ran on one thread
    # (GOMP resolves to the libgomp.so.1 that torch ships and has already loaded).
    extra_compile_args={"cxx": ["-O3", "-std=c++17", "-fno-math-errno", "-fopenmp"]},
    extra_link_args=["-fopenmp"],
)

# triton_kernels/ stays at the top of the repository (the layout) and ships inside the wheel as
# quasr.triton_kernels; importing it needs the `quasr[gpu]` extra (Triton).
setup(
    package_dir={"": "python", "quasr.triton_kernels": "triton_kernels"},
    packages=find_namespace_packages("python", include=["quasr", "quasr.*"]) + ["quasr.triton_kernels"],
    # QUASR_BUILD_EXT=0 skips the CPU extension (bench/gpu_check.sh on a GPU image: nothing there needs it)
    ext_modules=[] if os.environ.get("QUASR_BUILD_EXT", "1") == "0" else [ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
