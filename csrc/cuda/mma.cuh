// Thin wrappers over the PTX the kernels use (sm_80+): tensor-core mma, ldmatrix, cp.async, and the
// fp16 dequantization of a fragment register. On the host (tests/simt_check.cpp) the same names
// come from the warp simulator (tests/simt_host.h), which implements them from the PTX ISA's
// fragment tables.
#pragma once

#include <stdint.h>
#include <string.h>

#include "device.cuh"
#include "tile_layout.cuh"

namespace quasr_cuda {

#if defined(__CUDACC__)

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// D += A (16x16 fp16, row) * B (16x8 fp16, col), fp32 accumulate.
__device__ __forceinline__ void mma_f16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// D += A (16x32 signed int8, row) * B (32x8 unsigned int8 codes, col), int32 accumulate.
__device__ __forceinline__ void mma_s8u8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.u8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8x8 b16 matrices from shared memory (lane l gives the address of row l % 8 of matrix l / 8).
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// 16 bytes global -> shared, asynchronously; zero-filled when !valid (rows past M, tiles past N).
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  const int bytes = valid ? 16 : 0;
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }
#endif  // __CUDACC__

__device__ __forceinline__ half2 as_half2(uint32_t v) {
  half2 h;
  memcpy(&h, &v, 4);
  return h;
}
__device__ __forceinline__ uint32_t as_u32(half2 v) {
  uint32_t u;
  memcpy(&u, &v, 4);
  return u;
}

// The two B-fragment registers (b0 b1, b2 b3) of k-tile kt and n-tile nt, dequantized:
// w = (code - zero) * scale in fp16. 1024 + code comes exact from the magic number; with integer
// zeros zb = 1024 + zero and the subtraction is exact too, so w has one rounding, as an fp16 weight.
template <int BITS>
__device__ __forceinline__ void dequant_b(const uint32_t* words, int kt, int nt, half2 scale, half2 zb, bool frac,
                                          uint32_t& b0, uint32_t& b1) {
  const int p = (kt * 4 + nt) * 2;
  half2 lo = as_half2(pair_half2_biased<BITS>(words, p)), hi = as_half2(pair_half2_biased<BITS>(words, p + 1));
  if (frac) {  // fractional zeros (HQQ): the code first, then code - zero
    const half2 bias = as_half2(0x64006400u);
    lo = __hsub2(lo, bias), hi = __hsub2(hi, bias);
  }
  b0 = as_u32(__hmul2(__hsub2(lo, zb), scale));
  b1 = as_u32(__hmul2(__hsub2(hi, zb), scale));
}

}  // namespace quasr_cuda
