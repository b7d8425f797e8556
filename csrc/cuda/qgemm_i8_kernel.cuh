// The int8 tensor-core GEMM kernel (qgemm_i8.cu launches it; tests/simt_check.cpp runs it on the host).
#pragma once

#include "act_quant.cuh"
#include "common.cuh"
#include "gemm_tiles.cuh"

namespace quasr_cuda {

template <int BITS, int MT, typename OutT>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_i8_kernel(const int8_t* __restrict__ e, const float* __restrict__ sx, const float* __restrict__ cz,
                   const int32_t* __restrict__ esum, int m, const uint32_t* __restrict__ words,
                   const float* __restrict__ params, int n, int kp, int group_size, const float* __restrict__ bias,
                   OutT* __restrict__ out) {
  using Tiles = GemmTiles<BITS, MT, kI8TilesPerStage>;
  QUASR_DYNAMIC_SMEM(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp / 4, wn = warp % 4, t = lane & 3;
  const int ks_count = kp / kTileK, ns_count = (n + kTileN - 1) / kTileN, groups = kp / group_size;
  const int row0 = blockIdx.y * Tiles::kRows, ns0 = blockIdx.x * 4, ns = ns0 + wn;
  const int k_steps = (ks_count + kI8TilesPerStage - 1) / kI8TilesPerStage;

  auto stage_a = [&](int s) { return smem + s * Tiles::kStageBytes; };
  auto stage_b = [&](int s) { return reinterpret_cast<uint32_t*>(smem + s * Tiles::kStageBytes + Tiles::kABytes); };
  auto load_stage = [&](int s, int step) {
    const int tile0 = step * kI8TilesPerStage;
    Tiles::load_a(stage_a(s), reinterpret_cast<const uint8_t*>(e), kp, m, row0, int64_t(tile0) * kTileK);
    Tiles::load_b(stage_b(s), words, ns0, ns_count, tile0, ks_count);
  };

  // This lane's rows of each row tile (accumulator rows lane / 4 and + 8), and their c = 128 - zero.
  int rows[MT][2];
  float c_row[MT][2];
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      rows[mt][h] = row0 + (wm * MT + mt) * 16 + (lane >> 2) + 8 * h;
      c_row[mt][h] = rows[mt][h] < m ? cz[rows[mt][h]] : 0.f;
    }

  int32_t isum[MT][4][4] = {};
  float acc[MT][4][4] = {};
  run_pipeline(k_steps, load_stage, [&](int s, int step) {
#pragma unroll
    for (int tile = 0; tile < kI8TilesPerStage; ++tile) {
      const int ks = step * kI8TilesPerStage + tile;
      if (ks >= ks_count) break;
      uint32_t w[BITS];
      load_lane_words<BITS>(Tiles::b_tile(stage_b(s), wn, tile), lane, w);
      uint32_t a[MT][4];
#pragma unroll
      for (int mt = 0; mt < MT; ++mt) Tiles::a_fragment(a[mt], stage_a(s), (wm * MT + mt) * 16, tile * 2);
#pragma unroll
      for (int nt = 0; nt < 4; ++nt) {
        const uint32_t b0 = int8_register<BITS>(w, nt, 0), b1 = int8_register<BITS>(w, nt, 1);
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) mma_s8u8(isum[mt][nt], a[mt], b0, b1);
      }
      if (((ks + 1) * kTileK) % group_size == 0 && ns < ns_count) {  // the group ends: fold its int32 sums
        const int g = ks * kTileK / group_size;
        float p[3][8];
#pragma unroll
        for (int kind = 0; kind < 3; ++kind) {
          const float4* src = reinterpret_cast<const float4*>(params + i8_param_index(ns, g, groups, kind, 2 * t));
          const float4 lo = src[0], hi = src[1];  // columns 8 nt + 2 t + i at t * 8 + nt * 2 + i
          p[kind][0] = lo.x, p[kind][1] = lo.y, p[kind][2] = lo.z, p[kind][3] = lo.w;
          p[kind][4] = hi.x, p[kind][5] = hi.y, p[kind][6] = hi.z, p[kind][7] = hi.w;
        }
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) {
          const int32_t e0 = rows[mt][0] < m ? esum[int64_t(rows[mt][0]) * groups + g] : 0;
          const int32_t e1 = rows[mt][1] < m ? esum[int64_t(rows[mt][1]) * groups + g] : 0;
#pragma unroll
          for (int nt = 0; nt < 4; ++nt)
#pragma unroll
            for (int i = 0; i < 4; ++i) {
              const int j = nt * 2 + (i & 1), h = i >> 1;
              acc[mt][nt][i] = fold_group(acc[mt][nt][i], isum[mt][nt][i], p[0][j], p[1][j], p[2][j], h ? e1 : e0,
                                          c_row[mt][h]);
              isum[mt][nt][i] = 0;
            }
        }
      }
    }
  });

  const int col0 = ns * kTileN + 2 * t;
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int r = rows[mt][h];
      if (r >= m) continue;
      const float scale = sx[r];
#pragma unroll
      for (int nt = 0; nt < 4; ++nt)
#pragma unroll
        for (int i = 0; i < 2; ++i) {
          const int c = col0 + 8 * nt + i;
          if (c < n) store_out(out + int64_t(r) * n + c, scale * acc[mt][nt][2 * h + i] + (bias ? bias[c] : 0.f));
        }
    }
}

}  // namespace quasr_cuda
