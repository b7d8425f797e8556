// Tensor-core GEMM for larger M with fp16 activations: mma.m16n8k16, fp32 accumulate, a kStages-deep
// cp.async pipeline of (activation rows, fragment-ordered weight words, group parameters) per
// 64-deep K step (gemm_tiles.cuh). Each warp owns (16 * MT) rows x one column super-tile: its lane
// reads its own words of the super-tile from shared memory and dequantizes them straight into B
// fragments (mma.cuh dequant_b), reused across the warp's MT row tiles.
#include "launch.h"
#include "qgemm_f16_kernel.cuh"

namespace quasr_cuda {

template <int BITS, int MT, typename OutT>
int launch_gemm_f16(const void* x, int m, const uint32_t* words, const void* params, int frac, int n, int kp,
                    int group_size, const float* bias, OutT* out, cudaStream_t stream) {
  constexpr int smem = F16Gemm<BITS, MT>::kSmem;
  auto kernel = gemm_f16_kernel<BITS, MT, OutT>;
  static bool configured = false;  // raise the dynamic shared-memory limit once per instantiation
  if (!configured) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
    configured = true;
  }
  const dim3 grid = gemm_grid(m, n, MT);
  kernel<<<grid, kGemmThreads, smem, stream>>>(static_cast<const half*>(x), m, words,
                                               static_cast<const half2*>(params), frac, n, kp, group_size, bias, out);
  return launch_status();
}

template <int BITS, typename OutT>
int gemm_f16_mt(int m_tiles, const void* x, int m, const uint32_t* words, const void* params, int frac, int n, int kp,
                int group_size, const float* bias, OutT* out, cudaStream_t stream) {
  if (m_tiles == 2) return launch_gemm_f16<BITS, 2>(x, m, words, params, frac, n, kp, group_size, bias, out, stream);
  if (m_tiles == 4) return launch_gemm_f16<BITS, 4>(x, m, words, params, frac, n, kp, group_size, bias, out, stream);
  return -1;
}

}  // namespace quasr_cuda

using namespace quasr_cuda;

extern "C" int quasr_cuda_gemm_f16(const void* x, int m, const uint32_t* words, const void* params, int frac, int n,
                                   int kp, int group_size, int bits, const float* bias, void* out,
                                   int m_tiles, void* stream) {
  if (m < 1 || kp % kTileK || group_size % kTileK || kp % group_size) return -1;
  auto s = static_cast<cudaStream_t>(stream);
  QUASR_BITS_SWITCH(bits, B,
                    return gemm_f16_mt<B>(m_tiles, x, m, words, params, frac, n, kp, group_size, bias,
                                            static_cast<half*>(out), s));
  return -1;
}
