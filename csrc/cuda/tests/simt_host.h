// Host stand-ins for the CUDA built-ins the kernels use, so their own code compiles with g++ and runs
// on the warp simulator of simt_check.cpp (one OS thread per CUDA thread, barriers for
// __syncthreads and for each warp-collective instruction). The collectives (mma, ldmatrix, shfl)
// are implemented in simt_check.cpp from the PTX ISA's fragment tables, independently of the
// kernels. Not for speed: tests/test_cuda_simt.py runs small shapes through every kernel.
#pragma once

#include <math.h>
#include <stdint.h>
#include <string.h>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time: a function's static is its block's shared array
#define QUASR_DYNAMIC_SMEM(name) uint8_t* name = ::quasr_sim::dynamic_smem()

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
struct uint4 {
  uint32_t x, y, z, w;
};
struct uint2 {
  uint32_t x, y;
};
struct float4 {
  float x, y, z, w;
};
using half = _Float16;
struct half2 {
  _Float16 x, y;
};
struct __nv_bfloat16 {
  uint16_t bits;
};

extern thread_local dim3 threadIdx, blockIdx;
extern dim3 blockDim, gridDim;

namespace quasr_sim {
uint8_t* dynamic_smem();
}

inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

inline half __float2half_rn(float f) { return static_cast<half>(f); }
inline float __half2float(half h) { return static_cast<float>(h); }
inline float __bfloat162float(__nv_bfloat16 b) {
  const uint32_t u = uint32_t(b.bits) << 16;
  float f;
  memcpy(&f, &u, 4);
  return f;
}
// fp16 arithmetic: each result rounded to fp16 once (float holds the exact difference / product).
inline half2 __hsub2(half2 a, half2 b) {
  return {static_cast<half>(float(a.x) - float(b.x)), static_cast<half>(float(a.y) - float(b.y))};
}
inline half2 __hmul2(half2 a, half2 b) {
  return {static_cast<half>(float(a.x) * float(b.x)), static_cast<half>(float(a.y) * float(b.y))};
}
inline half2 __low2half2(half2 a) { return {a.x, a.x}; }
inline half2 __high2half2(half2 a) { return {a.y, a.y}; }

void __syncthreads();
float __shfl_xor_sync(unsigned mask, float v, int lane_mask);
int __shfl_xor_sync(unsigned mask, int v, int lane_mask);
float atomicAdd(float* p, float v);
int atomicAdd(int* p, int v);

namespace quasr_cuda {
uint32_t smem_addr(const void* p);
void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void mma_s8u8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr);
void cp_async16(uint32_t dst, const void* src, bool valid);  // copies at once (stricter than async)
inline void cp_async_commit() {}
template <int N>
inline void cp_async_wait() {}
}  // namespace quasr_cuda
