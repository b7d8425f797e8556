// The CUDA kernels' layout and decode logic (tile_layout.cuh) built for the host with g++, as a
// small shared library that tests/test_cuda_host.py loads with ctypes and checks bit for bit
// against quasr.format and the PTX fragment layouts. Nothing here is CUDA: the same functions run
// inside every kernel.
#include <stdint.h>

#include "../tile_layout.cuh"

using namespace quasr_cuda;

template <int BITS>
static void fragments(const uint32_t* tiled, int64_t n, int64_t kp, uint32_t* f16, uint32_t* i8) {
  const int64_t tiles = padded_n(n) / kTileN * (kp / kTileK);
  for (int64_t t = 0; t < tiles; ++t) {
    const uint32_t* tile = tiled + t * tile_words(BITS);
    for (int lane = 0; lane < kLanes; ++lane) {
      uint32_t words[BITS];
      load_lane_words<BITS>(tile, lane, words);
      uint32_t* f = f16 + (t * kLanes + lane) * kPairs;
      for (int p = 0; p < kPairs; ++p) f[p] = pair_half2_biased<BITS>(words, p);
      uint32_t* r = i8 + (t * kLanes + lane) * 8;
      for (int nt = 0; nt < 4; ++nt)
        for (int j = 0; j < 2; ++j) r[nt * 2 + j] = int8_register<BITS>(words, nt, j);
    }
  }
}

extern "C" {

int64_t quasr_cuda_tiled_words(int64_t n, int64_t kp, int bits) { return tiled_words(n, kp, bits); }

// The tiled layout of a canonical [n, kp * bits / 8] packed weight.
void quasr_cuda_tile(const uint8_t* packed, int64_t n, int64_t kp, int bits, uint32_t* out) {
  const int64_t total = tiled_words(n, kp, bits);
  for (int64_t i = 0; i < total; ++i) out[i] = tiled_word(packed, n, kp, bits, i);
}

// Every lane's decoded registers, per super-tile: the 16 fp16 B-fragment registers (pair order) and
// the 8 int8 B-fragment registers (nt * 2 + j).
int quasr_cuda_fragments(const uint32_t* tiled, int64_t n, int64_t kp, int bits, uint32_t* f16, uint32_t* i8) {
  switch (bits) {
    case 2: fragments<2>(tiled, n, kp, f16, i8); return 0;
    case 3: fragments<3>(tiled, n, kp, f16, i8); return 0;
    case 4: fragments<4>(tiled, n, kp, f16, i8); return 0;
    case 5: fragments<5>(tiled, n, kp, f16, i8); return 0;
    case 6: fragments<6>(tiled, n, kp, f16, i8); return 0;
    case 7: fragments<7>(tiled, n, kp, f16, i8); return 0;
    case 8: fragments<8>(tiled, n, kp, f16, i8); return 0;
    default: return -1;
  }
}

void quasr_cuda_act_positions(int32_t* out) {
  for (int pos = 0; pos < kTileK; ++pos) out[pos] = act_position_k(pos);
}

}  // extern "C"

#include "../act_quant.cuh"

extern "C" {

// What act_quant.cu does per row: quantize x [M, K] (float32, already multiplied by input_mul) to
// e = code - 128, stored [M, Kp] in act_position_k order per 32-block (x = 0 past K), with the
// per-token scale, c = 128 - zero and the per-group sums of e. static_scale > 0: one static range.
void quasr_cuda_quantize_rows(const float* x, int64_t m_rows, int64_t k, int64_t kp, int64_t group_size, int bits,
                              int symmetric, float static_scale, float static_zero, int8_t* e, float* sx, float* c,
                              int32_t* esum) {
  const int64_t groups = kp / group_size;
  for (int64_t m = 0; m < m_rows; ++m) {
    const float* row = x + m * k;
    float s = static_scale, z = static_zero;
    if (static_scale <= 0.f) {
      float lo = row[0], hi = row[0];
      for (int64_t i = 1; i < k; ++i) lo = fminf(lo, row[i]), hi = fmaxf(hi, row[i]);
      range_qparams(lo, hi, bits, symmetric != 0, &s, &z);
    }
    sx[m] = s, c[m] = kActOffset - z;
    for (int64_t g = 0; g < groups; ++g) esum[m * groups + g] = 0;
    for (int64_t pos = 0; pos < kp; ++pos) {
      const int64_t src = pos / kTileK * kTileK + act_position_k(static_cast<int>(pos % kTileK));
      const int q = act_code(src < k ? row[src] : 0.f, s, z, bits) - kActOffset;
      e[m * kp + pos] = static_cast<int8_t>(q);
      esum[m * groups + pos / group_size] += q;
    }
  }
}

// The int8 GEMM as the kernel computes it, one lane register at a time: D per (row, column, group)
// from the mma.m16n8k32 fragments (B: lane's int8_register bytes at k positions 16 j + 4 t + i,
// column lane / 4 of n-tile nt), folded per group with fold_group, times the row's scale.
void quasr_cuda_i8_emulate(const uint32_t* tiled, const float* params, const int8_t* e, const float* sx,
                           const float* c, const int32_t* esum, int64_t m_rows, int64_t n, int64_t kp,
                           int64_t group_size, int bits, float* y) {
  const int64_t ns_count = padded_n(n) / kTileN, ks_count = kp / kTileK, groups = kp / group_size;
  uint32_t* regs = new uint32_t[ns_count * ks_count * kLanes * 8];
  uint32_t* f16 = new uint32_t[ns_count * ks_count * kLanes * kPairs];
  quasr_cuda_fragments(tiled, n, kp, bits, f16, regs);
  for (int64_t m = 0; m < m_rows; ++m)
    for (int64_t ns = 0; ns < ns_count; ++ns)
      for (int col = 0; col < kTileN; ++col) {
        if (ns * kTileN + col >= n) continue;
        float acc = 0.f;
        for (int64_t g = 0; g < groups; ++g) {
          int32_t d = 0;
          for (int64_t ks = g * group_size / kTileK; ks < (g + 1) * group_size / kTileK; ++ks)
            for (int lane = col % 8 * 4; lane < col % 8 * 4 + 4; ++lane)
              for (int j = 0; j < 2; ++j) {
                const uint32_t r = regs[((ns * ks_count + ks) * kLanes + lane) * 8 + (col / 8) * 2 + j];
                for (int i = 0; i < 4; ++i)
                  d += int32_t(e[m * kp + ks * kTileK + 16 * j + 4 * (lane % 4) + i]) * int32_t((r >> (8 * i)) & 0xff);
              }
          const float* p = params;
          acc = fold_group(acc, d, p[i8_param_index(ns, g, groups, 0, col)], p[i8_param_index(ns, g, groups, 1, col)],
                           p[i8_param_index(ns, g, groups, 2, col)], esum[m * groups + g], c[m]);
        }
        y[m * n + ns * kTileN + col] = sx[m] * acc;
      }
  delete[] regs;
  delete[] f16;
}

}  // extern "C"

#include "../gemm_config.h"

extern "C" {

// Dynamic shared memory of a GEMM instantiation (kind 0: fp16, 1: int8), for bench/cuda_check.py.
int quasr_cuda_gemm_smem(int kind, int bits, int m_tiles) {
  return kind == 0 ? f16_gemm_smem(bits, m_tiles) : i8_gemm_smem(bits, m_tiles);
}

}  // extern "C"
