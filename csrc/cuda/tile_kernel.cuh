// The re-tiling and split-K epilogue kernels (tile.cu launches them; tests/simt_check.cpp runs them on the host).
#pragma once

#include "common.cuh"
#include "tile_layout.cuh"

namespace quasr_cuda {

__global__ void tile_kernel(const uint8_t* __restrict__ packed, int64_t n, int64_t kp, int bits,
                            uint32_t* __restrict__ words, int64_t total) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    words[i] = tiled_word(packed, n, kp, bits, i);
}

template <typename OutT>
__global__ void splitk_epilogue_kernel(const float* __restrict__ ws, const float* __restrict__ bias,
                                       OutT* __restrict__ out, int64_t total, int n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x)
    store_out(out + i, ws[i] + (bias ? bias[i % n] : 0.f));
}

}  // namespace quasr_cuda
