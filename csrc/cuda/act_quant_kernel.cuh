// The activation kernels (act_quant.cu launches them; tests/simt_check.cpp runs them on the host).
#pragma once

#include "act_quant.cuh"
#include "common.cuh"

namespace quasr_cuda {

constexpr int kQuantThreads = 256;

__device__ __forceinline__ float to_float(half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

// The row's (scale, zero): the static pair, or this row's range (a block-wide min/max) turned into
// the grid's parameters. Every thread of the block calls it and gets the same pair.
template <typename Value>
__device__ __forceinline__ void row_qparams(const Value& value, int k, int bits, int symmetric, float static_scale,
                                            float static_zero, float* scale, float* zero) {
  __shared__ float range[2][kQuantThreads / 32];
  __shared__ float qparams[2];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (static_scale > 0.f) {
    if (threadIdx.x == 0) qparams[0] = static_scale, qparams[1] = static_zero;
  } else {
    float lo = INFINITY, hi = -INFINITY;
    for (int i = threadIdx.x; i < k; i += kQuantThreads) {
      const float v = value(i);
      lo = fminf(lo, v), hi = fmaxf(hi, v);
    }
#pragma unroll
    for (int off = 16; off; off >>= 1) {
      lo = fminf(lo, __shfl_xor_sync(0xffffffffu, lo, off));
      hi = fmaxf(hi, __shfl_xor_sync(0xffffffffu, hi, off));
    }
    if (lane == 0) range[0][warp] = lo, range[1][warp] = hi;
    __syncthreads();
    if (threadIdx.x == 0) {
      for (int w = 1; w < kQuantThreads / 32; ++w) lo = fminf(lo, range[0][w]), hi = fmaxf(hi, range[1][w]);
      range_qparams(lo, hi, bits, symmetric != 0, &qparams[0], &qparams[1]);
    }
  }
  __syncthreads();
  *scale = qparams[0], *zero = qparams[1];
}

template <typename T>
__global__ void __launch_bounds__(kQuantThreads)
    act_quant_kernel(const T* __restrict__ x, int64_t ldx, int k, int kp, int group_size,
                     const float* __restrict__ input_mul, int bits, int symmetric, float static_scale,
                     float static_zero, int8_t* __restrict__ e, float* __restrict__ sx, float* __restrict__ cz,
                     int32_t* __restrict__ esum) {
  const int m = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const T* row = x + m * ldx;
  auto value = [&](int i) { return input_mul ? to_float(row[i]) * input_mul[i] : to_float(row[i]); };
  float scale, zero;
  row_qparams(value, k, bits, symmetric, static_scale, static_zero, &scale, &zero);
  if (threadIdx.x == 0) sx[m] = scale, cz[m] = kActOffset - zero;

  const int groups = kp / group_size;
  for (int block = warp; block < kp / kTileK; block += kQuantThreads / 32) {
    const int src = block * kTileK + act_position_k(lane);
    int q = act_code(src < k ? value(src) : 0.f, scale, zero, bits) - kActOffset;
    e[int64_t(m) * kp + block * kTileK + lane] = static_cast<int8_t>(q);
#pragma unroll
    for (int off = 16; off; off >>= 1) q += __shfl_xor_sync(0xffffffffu, q, off);
    if (lane == 0) atomicAdd(esum + int64_t(m) * groups + block * kTileK / group_size, q);
  }
}

// The fp16 kernels' prologue: x times input_mul, fake-quantized when bits > 0 ((code - zero) *
// scale, the same float32 operations), as fp16 [m, kp] with zeros past k.
template <typename T>
__global__ void __launch_bounds__(kQuantThreads)
    act_prologue_kernel(const T* __restrict__ x, int64_t ldx, int k, int kp, const float* __restrict__ input_mul,
                        int bits, int symmetric, float static_scale, float static_zero, half* __restrict__ out) {
  const int m = blockIdx.x;
  const T* row = x + m * ldx;
  auto value = [&](int i) { return input_mul ? to_float(row[i]) * input_mul[i] : to_float(row[i]); };
  float scale = 1.f, zero = 0.f;
  if (bits > 0) row_qparams(value, k, bits, symmetric, static_scale, static_zero, &scale, &zero);
  for (int i = threadIdx.x; i < kp; i += kQuantThreads) {
    float v = i < k ? value(i) : 0.f;
    if (bits > 0) v = (static_cast<float>(act_code(v, scale, zero, bits)) - zero) * scale;
    out[int64_t(m) * kp + i] = __float2half_rn(v);
  }
}

}  // namespace quasr_cuda
