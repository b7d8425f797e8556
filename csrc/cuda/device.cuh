// The CUDA headers on the device compiler; the host warp simulator's stand-ins under g++
// (tests/simt_host.h: tests/test_cuda_simt.py runs the kernels' own code on the host with it).
#pragma once

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
// The block's dynamic shared memory (sized at launch).
#define QUASR_DYNAMIC_SMEM(name) extern __shared__ __align__(16) uint8_t name[]
#else
#include "tests/simt_host.h"
#endif
