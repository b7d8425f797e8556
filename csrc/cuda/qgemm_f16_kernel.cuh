// The fp16 tensor-core GEMM kernel (qgemm_f16.cu launches it; tests/simt_check.cpp runs it on the host).
#pragma once

#include "common.cuh"
#include "gemm_tiles.cuh"

namespace quasr_cuda {

template <int BITS, int MT>
struct F16Gemm {
  using Tiles = GemmTiles<BITS, MT, kF16TilesPerStage>;
  static constexpr int kParamBytes = kF16ParamBytesPerStage;
  static constexpr int kStageBytes = Tiles::kStageBytes + kParamBytes;
  static constexpr int kSmem = f16_gemm_smem(BITS, MT);
  static_assert(kSmem == kStages * kStageBytes, "gemm_config.h disagrees");
};

template <int BITS, int MT, typename OutT>
__global__ void __launch_bounds__(kGemmThreads)
    gemm_f16_kernel(const half* __restrict__ x, int m, const uint32_t* __restrict__ words,
                    const half2* __restrict__ params, int frac, int n, int kp, int group_size,
                    const float* __restrict__ bias, OutT* __restrict__ out) {
  using G = F16Gemm<BITS, MT>;
  using Tiles = typename G::Tiles;
  QUASR_DYNAMIC_SMEM(smem);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, wm = warp / 4, wn = warp % 4;
  const int ks_count = kp / kTileK, ns_count = (n + kTileN - 1) / kTileN, groups = kp / group_size;
  const int row0 = blockIdx.y * Tiles::kRows, ns0 = blockIdx.x * 4;
  const int k_steps = (ks_count + kF16TilesPerStage - 1) / kF16TilesPerStage;

  auto stage_a = [&](int s) { return smem + s * G::kStageBytes; };
  auto stage_b = [&](int s) { return reinterpret_cast<uint32_t*>(smem + s * G::kStageBytes + Tiles::kABytes); };
  auto stage_p = [&](int s) { return smem + s * G::kStageBytes + Tiles::kStageBytes; };

  auto load_stage = [&](int s, int step) {
    const int tile0 = step * kF16TilesPerStage;
    Tiles::load_a(stage_a(s), reinterpret_cast<const uint8_t*>(x), int64_t(kp) * 2, m, row0, int64_t(tile0) * 64);
    Tiles::load_b(stage_b(s), words, ns0, ns_count, tile0, ks_count);
    for (int i = threadIdx.x; i < G::kParamBytes / 16; i += kGemmThreads) {
      const int tile = tile0 + i / 32, nsl = i / 8 % 4, chunk = i % 8;
      const bool valid = tile < ks_count && ns0 + nsl < ns_count;
      const half2* src = valid ? params + f16_param_index(ns0 + nsl, tile * kTileK / group_size, groups, 0, 0) + chunk * 4
                               : params;
      cp_async16(smem_addr(stage_p(s) + i * 16), src, valid);
    }
  };

  float acc[MT][4][4] = {};
  run_pipeline(k_steps, load_stage, [&](int s, int step) {
#pragma unroll
    for (int tile = 0; tile < kF16TilesPerStage; ++tile) {
      uint32_t w[BITS];
      load_lane_words<BITS>(Tiles::b_tile(stage_b(s), wn, tile), lane, w);
      const uint4 pv = *reinterpret_cast<const uint4*>(stage_p(s) + ((tile * 4 + wn) * 8 + lane / 4) * 16);
      const uint32_t p4[4] = {pv.x, pv.y, pv.z, pv.w};
#pragma unroll
      for (int kt = 0; kt < 2; ++kt) {
        uint32_t a[MT][4];
#pragma unroll
        for (int mt = 0; mt < MT; ++mt) Tiles::a_fragment(a[mt], stage_a(s), (wm * MT + mt) * 16, tile * 4 + kt * 2);
#pragma unroll
        for (int nt = 0; nt < 4; ++nt) {
          uint32_t b0, b1;
          dequant_b<BITS>(w, kt, nt, __low2half2(as_half2(p4[nt])), __high2half2(as_half2(p4[nt])), frac != 0, b0,
                          b1);
#pragma unroll
          for (int mt = 0; mt < MT; ++mt) mma_f16(acc[mt][nt], a[mt], b0, b1);
        }
      }
    }
  });

  const int col0 = (ns0 + wn) * kTileN + 2 * (lane & 3);
#pragma unroll
  for (int mt = 0; mt < MT; ++mt)
#pragma unroll
    for (int nt = 0; nt < 4; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int r = row0 + (wm * MT + mt) * 16 + (lane >> 2) + (i >= 2 ? 8 : 0), c = col0 + 8 * nt + (i & 1);
        if (r < m && c < n) store_out(out + int64_t(r) * n + c, acc[mt][nt][i] + (bias ? bias[c] : 0.f));
      }
}

}  // namespace quasr_cuda
