"""Builds the native CPU extension quasr._C. CUDA kernels are built only where a CUDA toolkit and a
CUDA build of torch are present (see docs/DESIGN.md, Devices); the CPU wheel of torch cannot build them."""

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ext = CppExtension(
    name="quasr._C",
    sources=["csrc/cpu/qgemm.cpp", "csrc/cpu/rotate.cpp", "csrc/cpu/ops.cpp"],
    extra_compile_args={"cxx": ["-O3", "-std=c++17", "-fno-math-errno"]},
)

setup(ext_modules=[ext], cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)})
