// The block tiling both tensor-core GEMMs (qgemm_f16.cu, qgemm_i8.cu) share: 8 warps (2 along M x
// 4 along N), a block tile of (32 * MT) rows x 128 columns (four column super-tiles, one per warp
// column), and per pipeline stage kTilesPerStage super-tiles of K, copied with cp.async:
//   A: the activation rows, 128 bytes of each (64 fp16 or 128 int8 values), 16-byte chunks XOR-
//      swizzled by row (chunk c of row r at c ^ (r % 8)), so ldmatrix's eight row addresses fall
//      in eight different bank groups;
//   B: the four super-tiles' words as they lie in the tiled layout (already in fragment order: a
//      lane's 16-byte reads of one plane chunk are contiguous across the warp, conflict-free).
// Rows past M, chunks past Kp and super-tiles past N are zero-filled.
#pragma once

#include "gemm_config.h"
#include "mma.cuh"

namespace quasr_cuda {

template <int BITS, int MT, int TILES_PER_STAGE>
struct GemmTiles {
  static constexpr int kRows = 32 * MT;
  static constexpr int kABytes = kRows * kRowBytes;
  static constexpr int kBWords = 4 * TILES_PER_STAGE * static_cast<int>(tile_words(BITS));
  static constexpr int kStageBytes = kABytes + kBWords * 4;
  static_assert(kStageBytes == gemm_stage_bytes(BITS, MT, TILES_PER_STAGE), "gemm_config.h disagrees");

  // A rows [row0, row0 + kRows) of a [m, row_bytes] matrix, bytes [byte0, byte0 + 128) of each.
  __device__ __forceinline__ static void load_a(uint8_t* smem, const uint8_t* a, int64_t row_bytes, int m, int row0,
                                                int64_t byte0) {
    for (int i = threadIdx.x; i < kRows * 8; i += kGemmThreads) {
      const int r = i / 8, c = i % 8;
      const int64_t b = byte0 + c * 16;
      const bool valid = row0 + r < m && b < row_bytes;
      const uint8_t* src = valid ? a + (row0 + r) * row_bytes + b : a;
      cp_async16(smem_addr(smem + r * kRowBytes + ((c ^ (r & 7)) * 16)), src, valid);
    }
  }

  // Super-tiles [tile0, tile0 + TILES_PER_STAGE) of K for column super-tiles ns0 .. ns0 + 3.
  __device__ __forceinline__ static void load_b(uint32_t* smem, const uint32_t* words, int ns0, int ns_count,
                                                int tile0, int ks_count) {
    constexpr int kChunksPerTile = static_cast<int>(tile_words(BITS)) / 4;
    for (int i = threadIdx.x; i < 4 * TILES_PER_STAGE * kChunksPerTile; i += kGemmThreads) {
      const int nsl = i / (TILES_PER_STAGE * kChunksPerTile), rest = i % (TILES_PER_STAGE * kChunksPerTile);
      const int tile = tile0 + rest / kChunksPerTile;
      const bool valid = ns0 + nsl < ns_count && tile < ks_count;
      const uint32_t* src = valid ? words + (int64_t(ns0 + nsl) * ks_count + tile) * tile_words(BITS) +
                                        (rest % kChunksPerTile) * 4
                                  : words;
      cp_async16(smem_addr(smem + i * 4), src, valid);
    }
  }

  // The A fragment (ldmatrix.x4) of 16 rows from `row` and 16-byte chunks (chunk, chunk + 1): the
  // m16n8k16 fp16 fragment for 16 k, or the m16n8k32 int8 fragment for 32 k.
  __device__ __forceinline__ static void a_fragment(uint32_t (&a)[4], const uint8_t* smem, int row, int chunk) {
    const int lane = threadIdx.x & 31, r = row + (lane & 15), c = chunk + (lane >> 4);
    ldmatrix_x4(a, smem_addr(smem + r * kRowBytes + ((c ^ (r & 7)) * 16)));
  }

  // Where warp column wn's super-tile `tile` (of this stage) lies in the stage's B words.
  __device__ __forceinline__ static const uint32_t* b_tile(const uint32_t* smem, int wn, int tile) {
    return smem + (wn * TILES_PER_STAGE + tile) * tile_words(BITS);
  }
};

// The kStages-deep pipeline: load_stage(stage, step) issues a step's copies, compute(stage, step)
// consumes a step whose copies have landed. Before a stage is refilled every warp has passed the
// barrier after computing on it.
template <class Load, class Compute>
__device__ __forceinline__ void run_pipeline(int k_steps, const Load& load_stage, const Compute& compute) {
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) load_stage(s, s);
    cp_async_commit();
  }
  for (int step = 0; step < k_steps; ++step) {
    cp_async_wait<kStages - 2>();
    __syncthreads();  // the stage is in, and every warp is done with the one refilled below
    if (step + kStages - 1 < k_steps) load_stage((step + kStages - 1) % kStages, step + kStages - 1);
    cp_async_commit();
    compute(step % kStages, step);
  }
  cp_async_wait<0>();
}

// One block per 128 columns and 32 * mt rows.
inline dim3 gemm_grid(int m, int n, int mt) {
  dim3 grid;
  grid.x = (n + 4 * kTileN - 1) / (4 * kTileN);
  grid.y = (m + 32 * mt - 1) / (32 * mt);
  return grid;
}

}  // namespace quasr_cuda
