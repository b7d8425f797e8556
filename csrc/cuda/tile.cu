// The offline re-tiling of a packed weight into the kernels' fragment order (tile_layout.cuh), the
// split-K epilogue, and device queries.
#include "common.cuh"
#include "launch.h"
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

using namespace quasr_cuda;

extern "C" int quasr_cuda_sm_count(void) {
  int device = 0, count = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return 0;
  if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 0;
  return count;
}

extern "C" int quasr_cuda_tile(const uint8_t* packed, int64_t n, int64_t kp, int bits, uint32_t* words,
                               void* stream) {
  if (bits < 2 || bits > 8 || kp % kTileK || n <= 0) return -1;
  const int64_t total = tiled_words(n, kp, bits);
  const int blocks = static_cast<int>((total + 255) / 256 < 65535 ? (total + 255) / 256 : 65535);
  tile_kernel<<<blocks, 256, 0, static_cast<cudaStream_t>(stream)>>>(packed, n, kp, bits, words, total);
  return launch_status();
}

extern "C" int quasr_cuda_splitk_epilogue(const float* ws, const float* bias, void* out, int m, int n,
                                          void* stream) {
  const int64_t total = int64_t(m) * n;
  const int blocks = static_cast<int>((total + 255) / 256 < 4096 ? (total + 255) / 256 : 4096);
  auto s = static_cast<cudaStream_t>(stream);
  splitk_epilogue_kernel<<<blocks, 256, 0, s>>>(ws, bias, static_cast<half*>(out), total, n);
  return launch_status();
}
