// Int8 activations on integer tensor cores (W8A8, W4A8, ... every width): mma.m16n8k32 with signed
// int8 activation codes (act_quant.cu: e = code - 128, stored in act_position_k order) times the
// unsigned weight codes as they come out of the planes, int32 sums per weight group folded into
// float32 with the group's (s, s z, Wsum) (act_quant.cuh fold_group), the row's scale last. Same
// block tiling and pipeline as the fp16 GEMM (gemm_tiles.cuh), 128 K per stage.
#include "launch.h"
#include "qgemm_i8_kernel.cuh"

namespace quasr_cuda {

template <int BITS, int MT, typename OutT>
int launch_gemm_i8(const int8_t* e, const float* sx, const float* cz, const int32_t* esum, int m,
                   const uint32_t* words, const float* params, int n, int kp, int group_size, const float* bias,
                   OutT* out, cudaStream_t stream) {
  constexpr int smem = i8_gemm_smem(BITS, MT);
  auto kernel = gemm_i8_kernel<BITS, MT, OutT>;
  static bool configured = false;
  if (!configured) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess) return static_cast<int>(err);
    configured = true;
  }
  const dim3 grid = gemm_grid(m, n, MT);
  kernel<<<grid, kGemmThreads, smem, stream>>>(e, sx, cz, esum, m, words, params, n, kp, group_size, bias, out);
  return launch_status();
}

template <int BITS, typename OutT>
int gemm_i8_mt(int m_tiles, const int8_t* e, const float* sx, const float* cz, const int32_t* esum, int m,
               const uint32_t* words, const float* params, int n, int kp, int group_size, const float* bias, OutT* out,
               cudaStream_t stream) {
  if (m_tiles == 2)
    return launch_gemm_i8<BITS, 2>(e, sx, cz, esum, m, words, params, n, kp, group_size, bias, out, stream);
  if (m_tiles == 4)
    return launch_gemm_i8<BITS, 4>(e, sx, cz, esum, m, words, params, n, kp, group_size, bias, out, stream);
  return -1;
}

}  // namespace quasr_cuda

using namespace quasr_cuda;

extern "C" int quasr_cuda_gemm_i8(const int8_t* e, const float* sx, const float* c, const int32_t* esum, int m,
                                  const uint32_t* words, const float* params, int n, int kp, int group_size, int bits,
                                  const float* bias, void* out, int m_tiles, void* stream) {
  if (m < 1 || kp % kTileK || group_size % kTileK || kp % group_size || kp % 16) return -1;
  auto s = static_cast<cudaStream_t>(stream);
  QUASR_BITS_SWITCH(bits, B,
                    return gemm_i8_mt<B>(m_tiles, e, sx, c, esum, m, words, params, n, kp, group_size, bias,
                                           static_cast<half*>(out), s));
  return -1;
}
