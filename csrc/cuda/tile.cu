// The offline re-tiling of a packed weight into the kernels' fragment order (tile_layout.cuh), the
// split-K epilogue, and device queries.
#include "launch.h"
#include "tile_kernel.cuh"

using namespace quasr_cuda;

// Asked per GEMV/GEMM call (split-K and tile choice): read once per device, then kept.
extern "C" int quasr_cuda_sm_count(void) {
  constexpr int kMaxDevices = 64;
  static int counts[kMaxDevices] = {};
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) return 0;
  if (device >= kMaxDevices || counts[device] == 0) {
    int count = 0;
    if (cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device) != cudaSuccess) return 0;
    if (device >= kMaxDevices) return count;
    counts[device] = count;
  }
  return counts[device];
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
