// The tensor-core GEMMs' block shape and shared-memory budget as plain constants, so the host can
// read them too (bench/cuda_check.py checks each instantiation's shared memory against every
// target's limit; tests/test_cuda_host.py loads them through csrc/cuda/tests/host_check.cpp).
#pragma once

namespace quasr_cuda {

constexpr int kGemmThreads = 256;  // 8 warps: 2 along M x 4 along N
constexpr int kRowBytes = 128;     // bytes of each activation row per pipeline stage
constexpr int kStages = 3;         // cp.async pipeline depth
constexpr int kF16TilesPerStage = 2;  // 64 fp16 activations = 128 bytes
constexpr int kI8TilesPerStage = 4;   // 128 int8 activations = 128 bytes
constexpr int kF16ParamBytesPerStage = kF16TilesPerStage * 4 * 128;  // (super-tile, column super-tile): 32 half2

// One stage: the A rows (32 * mt of them) and four column super-tiles' words for tiles_per_stage K tiles.
constexpr int gemm_stage_bytes(int bits, int mt, int tiles_per_stage) {
  return 32 * mt * kRowBytes + 4 * tiles_per_stage * 32 * bits * 4;
}
constexpr int f16_gemm_smem(int bits, int mt) {
  return kStages * (gemm_stage_bytes(bits, mt, kF16TilesPerStage) + kF16ParamBytesPerStage);
}
constexpr int i8_gemm_smem(int bits, int mt) { return kStages * gemm_stage_bytes(bits, mt, kI8TilesPerStage); }

}  // namespace quasr_cuda
