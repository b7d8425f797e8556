// The GEMV kernel (qgemv.cu launches it; tests/simt_check.cpp runs it on the host).
#pragma once

#include "common.cuh"
#include "mma.cuh"

namespace quasr_cuda {

constexpr int kGemvWarps = 4;

template <int BITS, typename OutT>
__global__ void __launch_bounds__(kGemvWarps * 32)
    gemv_f16_kernel(const half* __restrict__ x, int m, const uint32_t* __restrict__ words,
                    const uint4* __restrict__ params, int frac, int n, int kp, int group_size,
                    const float* __restrict__ bias, OutT* __restrict__ out, float* __restrict__ workspace,
                    int tiles_per_split) {
  constexpr int kBatch = BITS <= 4 ? 4 : 2;  // super-tiles whose loads are in flight together
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = lane >> 2, t = lane & 3;
  const int ns = blockIdx.x, ks_count = kp / kTileK, groups = kp / group_size;
  const int split_begin = blockIdx.y * tiles_per_split;
  const int split_end = min(ks_count, split_begin + tiles_per_split);
  const int per_warp = (split_end - split_begin + kGemvWarps - 1) / kGemvWarps;
  const int begin = split_begin + warp * per_warp, end = min(split_end, begin + per_warp);
  const uint32_t* tiles = words + int64_t(ns) * ks_count * tile_words(BITS);
  const bool row_lo = row < m, row_hi = row + 8 < m;
  const half* x_lo = x + int64_t(row) * kp;
  const half* x_hi = x + int64_t(row + 8) * kp;

  float acc[4][4] = {};
  uint32_t cur[kBatch][BITS], nxt[kBatch][BITS];
#pragma unroll
  for (int u = 0; u < kBatch; ++u)
    if (begin + u < end) load_lane_words<BITS>(tiles + int64_t(begin + u) * tile_words(BITS), lane, cur[u]);

  int group = -1;
  half2 scale[4], zb[4];
  for (int ks0 = begin; ks0 < end; ks0 += kBatch) {
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
      if (ks0 + kBatch + u < end)
        load_lane_words<BITS>(tiles + int64_t(ks0 + kBatch + u) * tile_words(BITS), lane, nxt[u]);
#pragma unroll
    for (int u = 0; u < kBatch; ++u) {
      const int ks = ks0 + u;
      if (ks < end) {
        const int g = ks * kTileK / group_size;
        if (g != group) {  // a lane's four columns' (scale, zb) in one 16-byte load
          const uint4 v = params[f16_param_index(ns, g, groups, lane, 0) / 4];
          const uint32_t p4[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            scale[nt] = __low2half2(as_half2(p4[nt]));
            zb[nt] = __high2half2(as_half2(p4[nt]));
          }
          group = g;
        }
#pragma unroll
        for (int kt = 0; kt < 2; ++kt) {
          const int k = ks * kTileK + kt * 16 + 2 * t;
          uint32_t a[4];
          a[0] = row_lo ? *reinterpret_cast<const uint32_t*>(x_lo + k) : 0u;
          a[1] = row_hi ? *reinterpret_cast<const uint32_t*>(x_hi + k) : 0u;
          a[2] = row_lo ? *reinterpret_cast<const uint32_t*>(x_lo + k + 8) : 0u;
          a[3] = row_hi ? *reinterpret_cast<const uint32_t*>(x_hi + k + 8) : 0u;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt) {
            uint32_t b0, b1;
            dequant_b<BITS>(cur[u], kt, nt, scale[nt], zb[nt], frac != 0, b0, b1);
            mma_f16(acc[nt], a, b0, b1);
          }
        }
      }
    }
#pragma unroll
    for (int u = 0; u < kBatch; ++u)
#pragma unroll
      for (int i = 0; i < BITS; ++i) cur[u][i] = nxt[u][i];
  }

  // Accumulator (m16n8 C fragment): c0 c1 at row lane / 4, columns 2 t, 2 t + 1 of n-tile nt; c2 c3 at row + 8.
  __shared__ float partial[kGemvWarps][16][kTileN + 1];
#pragma unroll
  for (int nt = 0; nt < 4; ++nt) {
    partial[warp][row][8 * nt + 2 * t] = acc[nt][0];
    partial[warp][row][8 * nt + 2 * t + 1] = acc[nt][1];
    partial[warp][row + 8][8 * nt + 2 * t] = acc[nt][2];
    partial[warp][row + 8][8 * nt + 2 * t + 1] = acc[nt][3];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < m * kTileN; i += kGemvWarps * 32) {
    const int r = i / kTileN, col = i % kTileN, nc = ns * kTileN + col;
    if (nc >= n) continue;
    float v = 0.f;
#pragma unroll
    for (int w = 0; w < kGemvWarps; ++w) v += partial[w][r][col];
    if (workspace)
      atomicAdd(workspace + int64_t(r) * n + nc, v);
    else
      store_out(out + int64_t(r) * n + nc, v + (bias ? bias[nc] : 0.f));
  }
}

// The launch shape: one block per column super-tile and K slice of `per_split` super-tiles.
struct GemvShape {
  dim3 grid;
  int per_split;
};
inline GemvShape gemv_shape(int n, int kp, int splits) {
  const int ks_count = kp / kTileK, ns_count = (n + kTileN - 1) / kTileN;
  GemvShape s;
  s.per_split = (ks_count + splits - 1) / splits;
  s.grid.x = ns_count;
  s.grid.y = (ks_count + s.per_split - 1) / s.per_split;
  return s;
}

}  // namespace quasr_cuda
