// GEMV for small M (1-16) with fp16 activations: each warp streams a contiguous run of one column
// super-tile's K (tile_layout.cuh), its lane's codes in 16-byte loads, the next kBatch super-tiles
// in flight while the current ones are decoded in registers straight into mma.m16n8k16 B fragments
// (the exponent magic number, one shift and one mask per plane and pair) and multiplied on the
// tensor cores with fp32 accumulation (Marlin's choice: at M = 1 the 16-row A fragment wastes tensor
// throughput there is plenty of, and the decode stays the only per-weight ALU cost). The activations
// come straight from global memory (L1-resident: x is a few KB). The block's four warps split the
// block's K range, reduce through shared memory, and where N alone gives too few blocks (Whisper's
// 384- and 512-wide layers) the grid splits K further, adding fp32 partials atomically.
#include "launch.h"
#include "qgemv_kernel.cuh"

namespace quasr_cuda {

template <int BITS, typename OutT>
int launch_gemv(const void* x, int m, const uint32_t* words, const void* params, int frac, int n, int kp,
                int group_size, const float* bias, OutT* out, float* workspace, int splits, cudaStream_t stream) {
  const GemvShape shape = gemv_shape(n, kp, splits);
  gemv_f16_kernel<BITS, OutT><<<shape.grid, kGemvWarps * 32, 0, stream>>>(
      static_cast<const half*>(x), m, words, static_cast<const uint4*>(params), frac, n, kp, group_size, bias, out,
      splits > 1 ? workspace : nullptr, shape.per_split);
  return launch_status();
}

}  // namespace quasr_cuda

using namespace quasr_cuda;

extern "C" int quasr_cuda_gemv_f16(const void* x, int m, const uint32_t* words, const void* params, int frac, int n,
                                   int kp, int group_size, int bits, const float* bias, void* out,
                                   float* workspace, int splits, void* stream) {
  if (m < 1 || m > 16 || kp % kTileK || group_size % kTileK || kp % group_size || splits < 1 ||
      (splits > 1 && !workspace))
    return -1;
  auto s = static_cast<cudaStream_t>(stream);
  QUASR_BITS_SWITCH(bits, B,
                    return launch_gemv<B>(x, m, words, params, frac, n, kp, group_size, bias, static_cast<half*>(out),
                                           workspace, splits, s));
  return -1;
}
